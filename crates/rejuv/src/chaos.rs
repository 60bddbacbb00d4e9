//! The demo's high-availability side: etcd, several controllers, the chaos loop and an
//! invariant watcher that lives outside the controllers.
//!
//! - [`start_etcd`] runs one etcd member from PATH (Debian `etcd-server`) on free loopback
//!   ports, in its own process group, its data in the demo's state directory.
//! - [`Controllers`] are the demo's controller processes, each on its own API port.
//! - [`supervise`] is one loop, every [`SUPERVISE_EVERY`]: it asks every controller's
//!   `/healthz` for its role (`x-rejuv-role`), publishes the current leader's address for the
//!   rest of the demo, counts leader changes, restarts any controller that exited on its own
//!   (a deposed leader exits with status 1, as under systemd's `Restart=always`), and, with
//!   chaos on, SIGKILLs the leader's process group at random (seeded) moments and restarts it
//!   once another controller leads (so it comes back as a follower).
//! - [`watch_invariants`] polls, every [`WATCH_EVERY`], the status of whichever controller
//!   answers `/v1/status` (only the leader does: followers answer 503) and the builtin proxy's
//!   admin status, and counts broken invariants (listed on [`watch_invariants`]).
//!
//! Leader identity is (controller slot, start number): a controller killed and restarted that
//! wins again is a new term, so it counts as a change. The first election is not a change.

use crate::demo::plan::Parts;
use crate::procs::Proc;
use rand::{Rng, SeedableRng};
use rejuv_core::api::{BackendState, ProxyStatus};
use rejuv_core::cluster::Traffic;
use rejuv_core::config::Config;
use rejuv_core::types::Role;
use rejuv_core::wire::Status;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the supervisor asks every controller for its role.
pub const SUPERVISE_EVERY: Duration = Duration::from_millis(200);
/// How often the invariant watcher polls the leader and the proxy.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);
/// Chaos waits a random time in this range (seconds) between two kills.
const KILL_EVERY_S: (u64, u64) = (12, 25);
/// A killed controller is restarted once another leads (so it comes back as a follower and
/// every kill moves leadership to another controller), or after this long without a leader.
const HANDOVER_PATIENCE: Duration = Duration::from_secs(10);

/// The etcd the demo runs; dropping it kills its process group.
pub struct Etcd {
    _proc: Proc,
    pub endpoint: String,
}

impl Etcd {
    /// The etcd process's id.
    pub fn pid(&self) -> i32 {
        self._proc.pid()
    }
}

/// Starts etcd from PATH with its data under `dir/etcd` and its log in `dir/logs/etcd.log`,
/// and waits (up to 30 s) until it answers `/health`.
///
/// # Errors
/// `etcd` is not on PATH (the message names the Debian package); it does not become healthy.
pub async fn start_etcd(dir: &Path, http: &reqwest::Client) -> anyhow::Result<Etcd> {
    anyhow::ensure!(
        rejuv_controller::etcd_member::on_path(),
        "--store etcd runs etcd from PATH, and `etcd` was not found (Debian: apt-get install etcd-server)"
    );
    let lo: std::net::IpAddr = "127.0.0.1".parse()?;
    let client = SocketAddr::new(lo, crate::procs::free_port(lo)?);
    let peer = SocketAddr::new(lo, crate::procs::free_port(lo)?);
    let (out, err) = crate::procs::log_file(dir, "etcd")?;
    let mut cmd = rejuv_controller::etcd_member::command("demo", &dir.join("etcd"), client, peer);
    cmd.stdout(out).stderr(err).stdin(Stdio::null());
    let proc = Proc::spawn("etcd", cmd)?;
    let endpoint = format!("http://{client}");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let healthy = match http.get(format!("{endpoint}/health")).send().await {
            Ok(r) => r
                .text()
                .await
                .is_ok_and(|t| t.contains("\"health\":\"true\"")),
            Err(_) => false,
        };
        if healthy {
            break;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "etcd did not become healthy at {endpoint} within 30 s; see logs/etcd.log in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Etcd {
        _proc: proc,
        endpoint,
    })
}

/// One controller of the demo: its API address and its current process.
struct Slot {
    addr: SocketAddr,
    proc: Option<Proc>,
    /// How many times this slot was started (the process's term number, for identities).
    starts: u64,
}

/// The demo's controllers, each on its own API port.
pub struct Controllers {
    slots: Vec<Slot>,
    exe: PathBuf,
    /// Each controller's config (one for all, or one per controller).
    configs: Vec<PathBuf>,
    dir: PathBuf,
    paused: bool,
}

impl Controllers {
    /// Starts one controller per address, each with its own config of `configs` (or all
    /// with the one config given).
    ///
    /// # Errors
    /// A process cannot be started.
    pub fn start(
        exe: &Path,
        configs: &[PathBuf],
        dir: &Path,
        addrs: &[SocketAddr],
        paused: bool,
    ) -> anyhow::Result<Self> {
        let mut c = Self {
            slots: addrs
                .iter()
                .map(|&addr| Slot {
                    addr,
                    proc: None,
                    starts: 0,
                })
                .collect(),
            exe: exe.to_path_buf(),
            configs: configs.to_vec(),
            dir: dir.to_path_buf(),
            paused,
        };
        for i in 0..c.slots.len() {
            c.spawn(i)?;
        }
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        // The first controller logs to controller.log, as with one controller.
        let log = if i == 0 {
            "controller".to_string()
        } else {
            format!("controller-{}", i + 1)
        };
        let (out, err) = crate::procs::log_file(&self.dir, &log)?;
        let mut cmd = Command::new(&self.exe);
        let config = self.configs.get(i).or(self.configs.first());
        cmd.args(["controller", "--config"])
            .arg(config.ok_or_else(|| anyhow::anyhow!("a controller without a config"))?)
            .arg("--listen")
            .arg(self.slots[i].addr.to_string())
            .arg("--session-code-file")
            .arg(self.dir.join(crate::demo::plan::SESSION_CODE_FILE));
        if self.paused {
            cmd.arg("--paused");
        }
        cmd.stdout(out).stderr(err).stdin(Stdio::null());
        let slot = &mut self.slots[i];
        slot.proc = Some(Proc::spawn(&format!("controller {}", slot.addr), cmd)?);
        slot.starts += 1;
        Ok(())
    }

    /// SIGKILLs controller `i`'s process group and reaps it.
    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.slots[i].proc.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(p.pid()),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = p.child.wait();
        }
    }

    /// Stops every controller (SIGTERM, then SIGKILL after `grace`).
    pub fn stop(&mut self, grace: Duration) {
        for s in &mut self.slots {
            if let Some(p) = s.proc.as_mut() {
                p.stop(grace);
            }
        }
    }
}

/// What the supervisor saw and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SuperviseReport {
    /// Changes of leader identity after the first election.
    pub leader_changes: u64,
    /// SIGKILLs sent by chaos.
    pub controller_kills: u64,
    /// Controllers that exited on their own (a deposed leader exits 1) and were restarted.
    pub controller_exits: u64,
    /// Per kill: from the SIGKILL until another term's leader answered `/healthz`.
    pub handover_ms: Vec<u64>,
}

/// Progress lines the supervisor wants printed.
pub type Lines = tokio::sync::mpsc::UnboundedSender<String>;

async fn role(api: &Parts, addr: SocketAddr) -> Option<String> {
    let r = api
        .http
        .get(api.url(addr, "/healthz"))
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .ok()?;
    r.headers()
        .get("x-rejuv-role")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn restart(ctl: &mut Controllers, i: usize, lines: &Lines) {
    if let Err(e) = ctl.spawn(i) {
        let _ = lines.send(format!("restarting a controller failed: {e:#}"));
    }
}

/// Runs until `stop`: tracks the leader (published on `leader`), restarts controllers that
/// exited, and with `chaos` (a seed) kills the leader every 12–25 s until `chaos_off`,
/// restarting it once another controller leads. Returns the controllers
/// (still running, for the caller to stop) and the report.
pub async fn supervise(
    mut ctl: Controllers,
    // How to reach the controllers' API.
    api: Parts,
    chaos: Option<u64>,
    chaos_off: CancellationToken,
    leader: watch::Sender<Option<SocketAddr>>,
    lines: Lines,
    stop: CancellationToken,
) -> (Controllers, SuperviseReport) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(chaos.unwrap_or(0));
    let next_kill = |rng: &mut rand::rngs::StdRng| {
        Instant::now() + Duration::from_secs(rng.gen_range(KILL_EVERY_S.0..=KILL_EVERY_S.1))
    };
    let mut kill_at = chaos.map(|_| next_kill(&mut rng));
    let mut report = SuperviseReport::default();
    // The identity (slot, start number) of the last leader seen.
    let mut last: Option<(usize, u64)> = None;
    // A kill whose handover is not measured yet: when, and whom.
    let mut pending: Option<(Instant, (usize, u64))> = None;
    while !stop.is_cancelled() {
        // Restart whatever exited on its own.
        for i in 0..ctl.slots.len() {
            let exited = match ctl.slots[i].proc.as_mut() {
                Some(p) => p.child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                report.controller_exits += 1;
                let _ = lines.send(format!(
                    "controller {} exited ({status}); restarting it",
                    ctl.slots[i].addr
                ));
                ctl.slots[i].proc = None;
                restart(&mut ctl, i, &lines);
            }
        }
        // Who leads? With two answering "leader" (a deposed one not yet stepped down), the
        // newest term is taken: it is the one whose writes etcd accepts.
        let mut now_leader: Option<(usize, u64)> = None;
        for i in 0..ctl.slots.len() {
            if ctl.slots[i].proc.is_none() {
                continue;
            }
            if role(&api, ctl.slots[i].addr).await.as_deref() == Some("leader") {
                let id = (i, ctl.slots[i].starts);
                if now_leader.is_none() || last == now_leader {
                    now_leader = Some(id);
                }
            }
        }
        if let Some(id) = now_leader {
            if last.is_some_and(|l| l != id) {
                report.leader_changes += 1;
            }
            if last != Some(id) {
                let _ = lines.send(format!(
                    "controller {} leads (start {} of it)",
                    ctl.slots[id.0].addr, id.1
                ));
            }
            last = Some(id);
            if let Some((at, killed)) = pending {
                if killed != id {
                    let ms = at.elapsed().as_millis() as u64;
                    report.handover_ms.push(ms);
                    pending = None;
                    let _ = lines.send(format!(
                        "chaos: leadership moved {ms} ms after the kill; restarting {} as a follower",
                        ctl.slots[killed.0].addr
                    ));
                    restart(&mut ctl, killed.0, &lines);
                }
            }
        }
        // A handover that takes too long: bring the killed controller back anyway (it may
        // be the one to lead next).
        if let Some((at, killed)) = pending {
            if at.elapsed() > HANDOVER_PATIENCE && ctl.slots[killed.0].proc.is_none() {
                let _ = lines.send(format!(
                    "chaos: no new leader {HANDOVER_PATIENCE:?} after the kill; restarting {}",
                    ctl.slots[killed.0].addr
                ));
                restart(&mut ctl, killed.0, &lines);
            }
        }
        leader.send_replace(now_leader.map(|(i, _)| ctl.slots[i].addr));
        // Chaos: kill the leader when it is time and the last kill's handover is done.
        if let (Some(at), Some(id)) = (kill_at, now_leader) {
            if Instant::now() >= at && pending.is_none() && !chaos_off.is_cancelled() {
                let addr = ctl.slots[id.0].addr;
                let _ = lines.send(format!("chaos: SIGKILL the leader {addr}"));
                ctl.kill(id.0);
                report.controller_kills += 1;
                pending = Some((Instant::now(), id));
                leader.send_replace(None);
                kill_at = Some(next_kill(&mut rng));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
        }
    }
    (ctl, report)
}

/// What the invariant watcher saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct WatchReport {
    /// Polls that reached a leader.
    pub polls: u64,
    /// Broken invariants that persisted across two consecutive polls (each episode once).
    pub violations: u64,
    /// The first few, described.
    pub details: Vec<String>,
}

/// The invariants broken in one pair of observations (leader status, proxy status), each as
/// a stable description (the same break gives the same string in the next poll).
///
/// 1. Budget: workflows not forced by an operator ≤ `budget.max_concurrent`.
/// 2. One state per server: every configured server appears exactly once in the status, with
///    a known state (`in-service`, `rejuvenating`, `failed`, `maintenance`), on the list exactly when
///    in service; no server is the source or target of two workflows.
/// 3. Capacity floor: the capacity of in-service primaries ≥ `budget.min_available_capacity`,
///    checked only while every server is reachable (an unreachable server is a failure the
///    floor cannot promise anything about).
/// 4. Routing: every backend the proxy has as `serving` is an instance the leader's status
///    shows with traffic `serving` and healthy (builtin proxy only).
pub fn broken(cfg: &Config, status: &Status, proxy: Option<&ProxyStatus>) -> BTreeSet<String> {
    let mut bad = BTreeSet::new();
    let workflows = &status.workflows;
    let unforced = workflows.iter().filter(|w| !w.forced).count() as u32;
    if unforced > cfg.budget.max_concurrent {
        bad.insert(format!(
            "{unforced} workflows running, budget.max_concurrent {}",
            cfg.budget.max_concurrent
        ));
    }
    let servers = &status.servers;
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    for s in servers {
        let id = s.id.as_str();
        *seen.entry(id).or_default() += 1;
        let state = s.state.as_str();
        if !matches!(
            state,
            "in-service" | "rejuvenating" | "failed" | "maintenance"
        ) {
            bad.insert(format!("server {id} is in an unknown state {state:?}"));
        }
        if s.on_list != (state == "in-service") {
            bad.insert(format!(
                "server {id} is {state} but on_list is {}",
                s.on_list
            ));
        }
    }
    for sc in &cfg.servers {
        match seen.get(sc.id.as_str()) {
            Some(1) => {}
            Some(n) => {
                bad.insert(format!("server {} appears {n} times", sc.id));
            }
            None => {
                bad.insert(format!("server {} is missing from the status", sc.id));
            }
        }
    }
    let mut in_workflow: BTreeMap<&str, u32> = BTreeMap::new();
    for w in workflows {
        // In place, a workflow's copies run on its source: one server, one workflow.
        let ids: &[&String] = if w.server == w.target {
            &[&w.server]
        } else {
            &[&w.server, &w.target]
        };
        for id in ids {
            *in_workflow.entry(id.as_str()).or_default() += 1;
        }
    }
    for (id, n) in in_workflow {
        if n > 1 {
            bad.insert(format!("server {id} is part of {n} workflows"));
        }
    }
    if servers.iter().all(|s| s.reachable) {
        let capacity: u64 = servers
            .iter()
            .filter(|s| s.state == "in-service" && s.role == Role::Primary)
            .map(|s| u64::from(s.capacity))
            .sum();
        if capacity < u64::from(cfg.budget.min_available_capacity) {
            bad.insert(format!(
                "in-service primaries hold {capacity} units, below budget.min_available_capacity {}",
                cfg.budget.min_available_capacity
            ));
        }
    }
    if let Some(proxy) = proxy {
        let good: BTreeSet<(&str, SocketAddr)> = servers
            .iter()
            .flat_map(|s| &s.instances)
            .filter(|i| i.traffic == Traffic::Serving && i.healthy)
            .filter_map(|i| Some((i.id.as_str(), i.addr?)))
            .collect();
        for (service, st) in &proxy.services {
            for b in &st.backends {
                if b.state != Some(BackendState::Serving) {
                    continue;
                }
                if !good.contains(&(b.id.as_str(), b.addr)) {
                    bad.insert(format!(
                        "the proxy sends new {service} requests to {} at {}, which the leader does not have serving and healthy",
                        b.id, b.addr
                    ));
                }
            }
        }
    }
    bad
}

/// `GET url` with the token, read as `T`; `None` when it cannot be had (no answer, an error
/// status such as a follower's 503, or a body of another shape).
async fn get_json<T: DeserializeOwned>(
    http: &reqwest::Client,
    url: String,
    token: &str,
) -> Option<T> {
    let r = http
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json::<T>().await.ok()
}

/// Polls until `stop` and counts the broken invariants of [`broken`] that persist across two
/// consecutive polls (about [`WATCH_EVERY`] apart, both reaching a leader): one poll alone can
/// catch the proxy between a table change and its push, or two reads of moving state.
pub async fn watch_invariants(
    cfg: Config,
    // The controllers' API addresses, how to reach them, and the API token.
    (controllers, api, token): (Vec<SocketAddr>, Parts, String),
    // The proxy's admin API, how to reach it (TLS with the demo's certificate), its token.
    proxy_admin: Option<(SocketAddr, Parts)>,
    proxy_token: String,
    lines: Lines,
    stop: CancellationToken,
) -> WatchReport {
    let mut report = WatchReport::default();
    let mut previous: BTreeSet<String> = BTreeSet::new();
    let mut counted: BTreeSet<String> = BTreeSet::new();
    while !stop.is_cancelled() {
        let mut status = None;
        for c in &controllers {
            if let Some(v) = get_json::<Status>(&api.http, api.url(*c, "/v1/status"), &token).await
            {
                status = Some(v);
                break;
            }
        }
        let proxy = match &proxy_admin {
            Some((a, parts)) => {
                get_json::<ProxyStatus>(&parts.http, parts.url(*a, "/v1/status"), &proxy_token)
                    .await
            }
            None => None,
        };
        match status {
            // No leader (or no proxy status): no observation, so no consecutive pair either.
            None => previous.clear(),
            Some(_) if proxy_admin.is_some() && proxy.is_none() => previous.clear(),
            Some(status) => {
                report.polls += 1;
                let now = broken(&cfg, &status, proxy.as_ref());
                for b in now.intersection(&previous) {
                    if counted.insert(b.clone()) {
                        report.violations += 1;
                        let _ = lines.send(format!("invariant broken: {b}"));
                        if report.details.len() < 20 {
                            report.details.push(b.clone());
                        }
                    }
                }
                counted.retain(|b| now.contains(b));
                previous = now;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Two servers of 4 units (s1 primary, s2 spare); the floor is 4 units.
    fn cfg() -> Config {
        let text = r#"
[cluster]
mode = "active-standby"
[budget]
max_concurrent = 1
min_available_capacity = 4
[traffic]
admin = "127.0.0.1:7071"
listen = { web = "127.0.0.1:8080" }
[[servers]]
id = "s1"
address = "127.0.0.2"
agent = "127.0.0.2:7001"
role = "primary"
capacity = 4
port_range = [20000, 20010]
instances = ["web"]
[[servers]]
id = "s2"
address = "127.0.0.3"
agent = "127.0.0.3:7001"
role = "spare"
capacity = 4
port_range = [20000, 20010]
[services.web]
command = "/usr/bin/true"
health = { path = "/healthz" }
"#;
        Config::from_toml(text).unwrap_or_else(|e| panic!("test config: {e}"))
    }

    /// [`broken`] on fixtures written as JSON.
    fn broken_in(cfg: &Config, status: &Value, proxy: Option<&Value>) -> BTreeSet<String> {
        let proxy = proxy.map(|p| crate::testdata::proxy(p.clone()));
        broken(
            cfg,
            &crate::testdata::status(status.clone()),
            proxy.as_ref(),
        )
    }

    fn server(id: &str, role: &str, state: &str, instances: Value) -> Value {
        json!({"id": id, "role": role, "state": state, "on_list": state == "in-service",
               "reachable": true, "capacity": 4, "instances": instances})
    }

    fn healthy_status() -> Value {
        json!({
            "workflows": [],
            "servers": [
                server("s1", "primary", "in-service",
                       json!([{"id": "i1", "addr": "127.0.0.2:20000", "traffic": "serving", "healthy": true}])),
                server("s2", "spare", "in-service", json!([])),
            ]
        })
    }

    fn proxy(id: &str, addr: &str, state: &str) -> Value {
        json!({"version": 3, "services": {"web": {"backends": [{"id": id, "addr": addr, "state": state}]}}})
    }

    #[test]
    fn a_healthy_cluster_breaks_nothing() {
        let p = proxy("i1", "127.0.0.2:20000", "serving");
        assert_eq!(
            broken_in(&cfg(), &healthy_status(), Some(&p)),
            BTreeSet::new()
        );
    }

    #[test]
    fn each_invariant_is_detected() {
        let c = cfg();
        let wf = |id: u64, s: &str, t: &str| json!({"id": id, "server": s, "target": t, "forced": false});

        let mut st = healthy_status();
        st["workflows"] = json!([wf(1, "s1", "s2"), wf(2, "s2", "s1")]);
        let b = broken_in(&c, &st, None);
        assert!(b.iter().any(|x| x.contains("2 workflows running")), "{b:?}");
        assert!(b.iter().any(|x| x.contains("part of 2 workflows")), "{b:?}");
        // In place, a server is its workflow's source and target at once: one workflow.
        let mut st = healthy_status();
        st["workflows"] = json!([wf(1, "s1", "s1")]);
        assert_eq!(broken_in(&c, &st, None), BTreeSet::new());

        let mut st = healthy_status();
        st["servers"][1]["on_list"] = json!(false);
        let dup = st["servers"][0].clone();
        st["servers"].as_array_mut().unwrap().push(dup);
        let b = broken_in(&c, &st, None);
        assert!(
            b.iter().any(|x| x.contains("s2 is in-service but on_list")),
            "{b:?}"
        );
        assert!(b.iter().any(|x| x.contains("s1 appears 2 times")), "{b:?}");

        let mut st = healthy_status();
        st["servers"][0]["state"] = json!("rejuvenating");
        st["servers"][0]["on_list"] = json!(false);
        let b = broken_in(&c, &st, None);
        assert!(b.iter().any(|x| x.contains("hold 0 units")), "{b:?}");
        // ... but not while a server is unreachable.
        st["servers"][1]["reachable"] = json!(false);
        assert_eq!(broken_in(&c, &st, None), BTreeSet::new());

        let p = proxy("i9", "127.0.0.2:20001", "serving");
        let b = broken_in(&c, &healthy_status(), Some(&p));
        assert!(b.iter().any(|x| x.contains("i9")), "{b:?}");
        // A draining backend takes no new requests: fine.
        let p = proxy("i9", "127.0.0.2:20001", "draining");
        assert_eq!(broken_in(&c, &healthy_status(), Some(&p)), BTreeSet::new());
    }
}
