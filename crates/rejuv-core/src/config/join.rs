//! `[join]`: servers that join the cluster by asking instead of being listed in
//! `[[servers]]`. An agent started with `--join` announces its facts ([`JoinRequest`]) with the
//! join token; [`check_join`] turns them into the [`ServerConfig`] the cluster then holds like
//! a listed one, or says what is wrong with them, each fact by its name.

use super::field::{is_plain_name, Errors, FieldError};
use super::servers::ServerConfig;
use super::Config;
use crate::types::Role;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Join requests the controller holds at once, waiting for an operator; more are refused
/// until some are approved or removed.
pub const MAX_PENDING: usize = 256;

/// Longest server id a joining agent may claim.
pub const MAX_ID_LEN: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// The join token agents present on `POST /v1/join` (one line; a file its group or
    /// others can read is refused). It lets an agent ask, not act: unless `auto_approve`, an
    /// operator approves each request.
    pub token_file: PathBuf,
    /// Take every valid request at once, without an operator's approval (a trusted bootstrap
    /// token on a private network).
    #[serde(default)]
    pub auto_approve: bool,
}

/// What a joining agent says about its server (`POST /v1/join`). Role and capacity are read
/// loosely (a string, a signed number) so that a wrong one is answered by its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The server id; with TLS on, the agent's certificate must name it.
    pub id: String,
    /// `primary` or `spare`.
    pub role: String,
    /// Capacity in units, at least 1.
    pub capacity: i64,
    /// The services of the agent's catalog: every service of the controller's `[services]`,
    /// and no other (any server may be the target of any instance).
    pub services: Vec<String>,
    /// The agent's API address, which the controller polls.
    pub agent: SocketAddr,
    /// Where the server's instances listen (default: the agent's IP).
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// Inclusive range of ports the agent allocates to instances.
    pub port_range: [u16; 2],
    /// As `servers[].memory_budget_bytes`.
    #[serde(default)]
    pub memory_budget_bytes: Option<u64>,
    /// The instances it starts with once it is in, as `servers[].instances` (services by
    /// name; a spare none).
    #[serde(default)]
    pub instances: Vec<String>,
}

/// Why a join request is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    /// Facts that are wrong in themselves, each by its name (answered `400`).
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// Facts that clash with the cluster: an id or agent address another server has
    /// (answered `409`).
    #[error("{0}")]
    Conflict(String),
}

/// The server `req` describes, checked against the config in force (`cfg`, joined servers
/// included): its own fields as `[[servers]]` checks them, then what it must not share with
/// the servers already there. A server of that id that joined before with the same facts is
/// no conflict (an agent that restarted asks again).
///
/// # Errors
/// [`JoinRefused::Invalid`] names every wrong fact; [`JoinRefused::Conflict`] an id or
/// address taken.
pub fn check_join(cfg: &Config, req: &JoinRequest) -> Result<ServerConfig, JoinRefused> {
    let mut errs = Errors::default();
    if !is_plain_name(&req.id) || req.id.len() > MAX_ID_LEN {
        errs.add(
            "id",
            format!("must be 1 to {MAX_ID_LEN} letters, digits, '-' and '_'"),
        );
    }
    let role = match req.role.as_str() {
        "primary" => Role::Primary,
        "spare" => Role::Spare,
        other => {
            errs.add(
                "role",
                format!(
                    "must be \"primary\" or \"spare\", not \"{}\"",
                    crate::text::clean(other, 32)
                ),
            );
            Role::Primary
        }
    };
    let capacity = match u32::try_from(req.capacity) {
        Ok(c) if c >= 1 => c,
        _ => {
            errs.add(
                "capacity",
                format!(
                    "must be a whole number of units, at least 1, not {}",
                    req.capacity
                ),
            );
            1
        }
    };
    for (i, svc) in req.services.iter().enumerate() {
        if !cfg.services.contains_key(svc) {
            errs.add(
                format!("services[{i}]"),
                format!(
                    "'{}' is not a service of the controller's [services]",
                    crate::text::clean(svc, 64)
                ),
            );
        }
    }
    let missing: Vec<&str> = cfg
        .services
        .keys()
        .filter(|s| !req.services.contains(s))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        errs.add(
            "services",
            format!(
                "lacks {} of the controller's [services]: a server of the cluster must run every service (it may take any server's instances)",
                missing.join(", ")
            ),
        );
    }
    let server = ServerConfig {
        id: req.id.clone(),
        address: req.address.unwrap_or(req.agent.ip()),
        agent: req.agent,
        role,
        capacity,
        port_range: req.port_range,
        memory_budget_bytes: req.memory_budget_bytes,
        instances: req.instances.clone(),
        data_dir: None,
        joined: true,
        shard: None,
    };
    // The checks `[[servers]]` makes of one server, renamed to the request's fields.
    let mut own = Errors::default();
    server.validate(0, cfg.cluster.mode, &cfg.services, &mut own);
    for e in own.into_vec() {
        let field = e.field.strip_prefix("servers[0].").unwrap_or(&e.field);
        errs.add(field, e.reason);
    }
    let errs = errs.into_vec();
    if !errs.is_empty() {
        return Err(JoinRefused::Invalid(errs));
    }
    for other in &cfg.servers {
        if other.id == server.id {
            if !other.joined {
                return Err(JoinRefused::Conflict(format!(
                    "server id '{}' is listed in the controller's [[servers]]: a listed server does not join",
                    server.id
                )));
            }
            if *other != server {
                return Err(JoinRefused::Conflict(format!(
                    "server '{}' joined before with other facts (agent {}, {} with {} units, ports {}-{}): remove it first (`rejuv server remove {}`)",
                    server.id,
                    other.agent,
                    other.role,
                    other.capacity,
                    other.port_range[0],
                    other.port_range[1],
                    server.id
                )));
            }
            continue;
        }
        if other.agent == server.agent {
            return Err(JoinRefused::Conflict(format!(
                "agent address {} is server '{}''s",
                server.agent, other.id
            )));
        }
        if other.address == server.address
            && other.port_range[0] <= server.port_range[1]
            && server.port_range[0] <= other.port_range[1]
        {
            return Err(JoinRefused::Conflict(format!(
                "port_range {}-{} overlaps the port range of server '{}' on {}",
                server.port_range[0], server.port_range[1], other.id, server.address
            )));
        }
    }
    Ok(server)
}

impl Config {
    /// This config with the joined servers `joined` added after the listed ones (those whose
    /// id is listed are left out: the list wins).
    pub fn with_joined<'a>(&self, joined: impl IntoIterator<Item = &'a ServerConfig>) -> Config {
        let mut cfg = self.clone();
        for s in joined {
            if cfg.server(&s.id).is_none() {
                cfg.servers.push(ServerConfig {
                    joined: true,
                    ..s.clone()
                });
            }
        }
        cfg
    }

    /// The servers of this config that joined (not listed in the file).
    pub fn joined_servers(&self) -> impl Iterator<Item = &ServerConfig> {
        self.servers.iter().filter(|s| s.joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let text = format!(
            "{}\n[join]\ntoken_file = \"/etc/rejuv/join.token\"\n",
            crate::config::tests::EXAMPLE
        );
        Config::from_toml(&text).unwrap()
    }

    fn request() -> JoinRequest {
        JoinRequest {
            id: "s3".into(),
            role: "spare".into(),
            capacity: 4,
            services: vec!["web".into()],
            agent: "127.0.0.4:7001".parse().unwrap(),
            address: None,
            port_range: [20000, 20010],
            memory_budget_bytes: None,
            instances: Vec::new(),
        }
    }

    fn fields(r: Result<ServerConfig, JoinRefused>) -> Vec<String> {
        match r {
            Err(JoinRefused::Invalid(errs)) => errs.into_iter().map(|e| e.field).collect(),
            other => panic!("expected invalid facts, got {other:?}"),
        }
    }

    #[test]
    fn a_good_request_becomes_a_joined_server() {
        let c = cfg();
        let s = check_join(&c, &request()).unwrap();
        assert!(s.joined);
        assert_eq!(s.address, "127.0.0.4".parse::<IpAddr>().unwrap());
        assert_eq!((s.role, s.capacity), (Role::Spare, 4));
        // The same facts again (an agent that restarted) are no conflict once joined.
        let with = c.with_joined([&s]);
        assert_eq!(with.joined_servers().count(), 1);
        assert_eq!(check_join(&with, &request()).unwrap(), s);
    }

    #[test]
    fn a_joining_primary_starts_with_its_instances_and_a_spare_with_none() {
        let c = cfg();
        let primary = JoinRequest {
            role: "primary".into(),
            instances: vec!["web".into()],
            ..request()
        };
        assert_eq!(check_join(&c, &primary).unwrap().instances, ["web"]);
        let spare_with = JoinRequest {
            instances: vec!["web".into()],
            ..request()
        };
        assert_eq!(fields(check_join(&c, &spare_with)), ["instances"]);
        let unknown = JoinRequest {
            role: "primary".into(),
            instances: vec!["db".into()],
            ..request()
        };
        assert_eq!(fields(check_join(&c, &unknown)), ["instances[0]"]);
    }

    #[test]
    fn every_wrong_fact_is_named() {
        let c = cfg();
        let bad = JoinRequest {
            id: "s 3".into(),
            role: "boss".into(),
            capacity: 0,
            services: vec!["web".into(), "cache".into()],
            port_range: [20010, 20000],
            ..request()
        };
        assert_eq!(
            fields(check_join(&c, &bad)),
            ["id", "role", "capacity", "services[1]", "port_range"]
        );
        let r = check_join(
            &c,
            &JoinRequest {
                role: "boss".into(),
                ..request()
            },
        );
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("role: must be \"primary\" or \"spare\", not \"boss\""));
        let negative = JoinRequest {
            capacity: -3,
            ..request()
        };
        assert_eq!(fields(check_join(&c, &negative)), ["capacity"]);
        let lacking = JoinRequest {
            services: vec![],
            ..request()
        };
        let e = check_join(&c, &lacking).unwrap_err().to_string();
        assert!(e.starts_with("services: lacks web"), "{e}");
        let active = Config::from_toml(
            &crate::config::tests::EXAMPLE
                .replace("active-standby", "active-active")
                .replace("role = \"spare\"", "role = \"primary\""),
        )
        .unwrap();
        assert_eq!(fields(check_join(&active, &request())), ["role"]);
    }

    #[test]
    fn a_listed_id_an_agent_address_or_overlapping_ports_are_conflicts() {
        let c = cfg();
        let listed = JoinRequest {
            id: "s1".into(),
            ..request()
        };
        let Err(JoinRefused::Conflict(why)) = check_join(&c, &listed) else {
            panic!("a listed id joined")
        };
        assert!(why.contains("'s1' is listed"), "{why}");
        let same_agent = JoinRequest {
            agent: "127.0.0.2:7001".parse().unwrap(),
            ..request()
        };
        assert!(
            matches!(check_join(&c, &same_agent), Err(JoinRefused::Conflict(w)) if w.contains("'s1'"))
        );
        let overlap = JoinRequest {
            address: Some("127.0.0.3".parse().unwrap()),
            port_range: [20005, 20020],
            ..request()
        };
        assert!(
            matches!(check_join(&c, &overlap), Err(JoinRefused::Conflict(w)) if w.contains("'s2'"))
        );
        // Joined with other facts: the operator removes it first.
        let s = check_join(&c, &request()).unwrap();
        let with = c.with_joined([&s]);
        let bigger = JoinRequest {
            capacity: 8,
            ..request()
        };
        assert!(
            matches!(check_join(&with, &bigger), Err(JoinRefused::Conflict(w)) if w.contains("remove it first"))
        );
    }

    #[test]
    fn the_list_wins_over_a_joined_server_of_the_same_id() {
        let c = cfg();
        let mut s = check_join(&c, &request()).unwrap();
        s.id = "s1".into();
        let with = c.with_joined([&s]);
        assert_eq!(with.servers.len(), 2);
        assert!(!with.server("s1").unwrap().joined);
    }
}
