//! What HAProxy reports, parsed: a backend's servers (`show servers state` joined with the
//! session counters of `show stat`), the admin and check state bits they carry, and which
//! HAProxy process answered (`show info`).

use super::error::HaproxyError;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// `srv_admin_state` bits (HAProxy `enum srv_admin`, include/haproxy/server-t.h).
pub mod admin {
    /// Forced into maintenance: CLI `state maint` / `disable server`, and every new dynamic
    /// server until `enable server`.
    pub const FMAINT: u8 = 0x01;
    /// Maintenance inherited from a tracked server.
    pub const IMAINT: u8 = 0x02;
    /// `disabled` in the configuration (a sticky marker, kept after `enable server`).
    pub const CMAINT: u8 = 0x04;
    /// Forced into drain: CLI `state drain`.
    pub const FDRAIN: u8 = 0x08;
    /// Drain inherited from a tracked server.
    pub const IDRAIN: u8 = 0x10;
    /// Down because its address could not be resolved.
    pub const RMAINT: u8 = 0x20;
    /// Any flag that keeps the server in maintenance.
    pub const MAINT: u8 = FMAINT | IMAINT | RMAINT;
    /// Any drain flag.
    pub const DRAIN: u8 = FDRAIN | IDRAIN;
}

/// `srv_check_state` bits (HAProxy `CHK_ST_*`).
pub(super) mod check_state {
    pub const CONFIGURED: u8 = 0x02;
    pub const ENABLED: u8 = 0x04;
}

/// One server of a backend as HAProxy reports it (`show servers state` joined with the
/// session counters of `show stat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub backend_id: u32,
    pub backend: String,
    pub id: u32,
    pub name: String,
    /// `None` when HAProxy has no address (`-`, an unresolved FQDN).
    pub addr: Option<IpAddr>,
    pub port: u16,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u8,
    /// `srv_admin_state`, see [`admin`].
    pub admin_state: u8,
    /// `srv_check_state` (0 when the column is absent).
    pub check_state: u8,
    /// Current sessions on the server (`scur`).
    pub sessions: u64,
    /// Requests queued for this server (`qcur`).
    pub queued: u64,
}

impl ServerState {
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.addr.map(|ip| SocketAddr::new(ip, self.port))
    }
    /// In maintenance for any reason (forced, inherited, resolution).
    pub fn in_maint(&self) -> bool {
        self.admin_state & admin::MAINT != 0
    }
    /// In maintenance forced through the CLI (or freshly added and not yet enabled).
    pub fn forced_maint(&self) -> bool {
        self.admin_state & admin::FMAINT != 0
    }
    pub fn draining(&self) -> bool {
        self.admin_state & admin::DRAIN != 0
    }
    /// Sessions in progress plus requests waiting for this server.
    pub fn in_flight(&self) -> u64 {
        self.sessions + self.queued
    }
}

/// Which HAProxy process the adapter last talked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Incarnation {
    pub(super) pid: u64,
    pub(super) start_time_sec: u64,
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").to_string()
}

/// Parses `show info`: the process's `Pid` and `Start_time_sec`.
pub(super) fn parse_info(command: &str, text: &str) -> Result<Incarnation, HaproxyError> {
    let field = |key: &str| -> Result<u64, HaproxyError> {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))
            .ok_or_else(|| HaproxyError::Parse {
                command: command.to_string(),
                line: first_line(text),
                reason: format!("no {key} field"),
            })?
            .trim()
            .parse()
            .map_err(|e| HaproxyError::Parse {
                command: command.to_string(),
                line: key.to_string(),
                reason: format!("{e}"),
            })
    };
    Ok(Incarnation {
        pid: field("Pid")?,
        start_time_sec: field("Start_time_sec")?,
    })
}

/// Parses `show servers state <backend>` (format version 1): the columns are found by the
/// header's names, so added columns do not break it.
pub(super) fn parse_servers_state(
    command: &str,
    text: &str,
) -> Result<Vec<ServerState>, HaproxyError> {
    let err = |line: &str, reason: String| HaproxyError::Parse {
        command: command.to_string(),
        line: line.to_string(),
        reason,
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let version = lines.next().unwrap_or("");
    if version.trim() != "1" {
        // Not a state dump: HAProxy's error message (e.g. "Can't find backend.").
        return Err(HaproxyError::Refused {
            command: command.to_string(),
            answer: text.trim().to_string(),
        });
    }
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix('#'))
        .ok_or_else(|| err(version, "no header line".into()))?;
    let cols: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or_else(|| err(header, format!("no column {name}")))
    };
    let (be_id, be_name, srv_id, srv_name) = (
        col("be_id")?,
        col("be_name")?,
        col("srv_id")?,
        col("srv_name")?,
    );
    let (srv_addr, op, adm, port) = (
        col("srv_addr")?,
        col("srv_op_state")?,
        col("srv_admin_state")?,
        col("srv_port")?,
    );
    let chk = cols.iter().position(|c| *c == "srv_check_state");
    let mut out = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < cols.len() {
            return Err(err(
                line,
                format!("{} fields, expected {}", f.len(), cols.len()),
            ));
        }
        fn num<T: std::str::FromStr>(f: &[&str], i: usize, name: &str) -> Result<T, String> {
            f[i].parse()
                .map_err(|_| format!("{name} is not a number: {:?}", f[i]))
        }
        let parsed = (|| -> Result<ServerState, String> {
            Ok(ServerState {
                backend_id: num(&f, be_id, "be_id")?,
                backend: f[be_name].to_string(),
                id: num(&f, srv_id, "srv_id")?,
                name: f[srv_name].to_string(),
                addr: match f[srv_addr] {
                    "-" => None,
                    a => Some(
                        a.parse()
                            .map_err(|_| format!("srv_addr is not an address: {a:?}"))?,
                    ),
                },
                port: num(&f, port, "srv_port")?,
                op_state: num(&f, op, "srv_op_state")?,
                admin_state: num(&f, adm, "srv_admin_state")?,
                check_state: match chk {
                    Some(i) => num(&f, i, "srv_check_state")?,
                    None => 0,
                },
                sessions: 0,
                queued: 0,
            })
        })();
        out.push(parsed.map_err(|reason| err(line, reason))?);
    }
    Ok(out)
}

/// Parses `show stat <backend> 4 -1` (CSV): server name → (`scur`, `qcur`).
pub(super) fn parse_stat_sessions(
    command: &str,
    text: &str,
) -> Result<BTreeMap<String, (u64, u64)>, HaproxyError> {
    let err = |line: &str, reason: String| HaproxyError::Parse {
        command: command.to_string(),
        line: line.to_string(),
        reason,
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next().and_then(|l| l.strip_prefix("# ")) else {
        return Err(HaproxyError::Refused {
            command: command.to_string(),
            answer: text.trim().to_string(),
        });
    };
    let cols: Vec<&str> = header.split(',').collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or_else(|| err(header, format!("no column {name}")))
    };
    let (sv, scur, qcur) = (col("svname")?, col("scur")?, col("qcur")?);
    let mut out = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let get = |i: usize| -> Result<u64, HaproxyError> {
            let v = f.get(i).copied().unwrap_or("");
            if v.is_empty() {
                return Ok(0);
            }
            v.parse()
                .map_err(|_| err(line, format!("column {} is not a number: {v:?}", cols[i])))
        };
        let name = f
            .get(sv)
            .ok_or_else(|| err(line, "no svname".into()))?
            .to_string();
        out.insert(name, (get(scur)?, get(qcur)?));
    }
    Ok(out)
}
