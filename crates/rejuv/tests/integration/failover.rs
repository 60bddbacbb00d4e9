//! Reactive failover with real processes: a primary dies outright (its agent and its
//! instances SIGKILLed), the controller starts its instances on the spare once the agent has
//! been silent for `policy.failover_after`, and when the agent comes back the server is
//! rejuvenated before it rejoins as the new spare.

use crate::harness::{wait_for, Harness, Spec};
use rejuv_sample::loadgen::{LiveSnapshot, LiveStats, LoadOptions, LoadReport};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Short enough for a test, above the harness's `controller.agent_timeout` (2 s) as the
/// config requires.
const FAILOVER_AFTER: Duration = Duration::from_secs(5);
/// Load connections: also the most requests that can be on the wire when a backend dies.
const CONNECTIONS: u32 = 4;

/// A bounded background load whose counters can be read while it runs, so failures can be
/// placed in time (before the failover completed or after).
struct LiveLoad {
    handle: Option<std::thread::JoinHandle<LoadReport>>,
    stop: tokio_util::sync::CancellationToken,
    stats: Arc<LiveStats>,
}

impl LiveLoad {
    fn start(target: std::net::SocketAddr, rps: u32, limit: Duration) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let stats = LiveStats::new();
        let (s, st) = (stop.clone(), stats.clone());
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(rejuv_sample::loadgen::run_with_stats(
                LoadOptions {
                    target,
                    rps,
                    duration: limit,
                    connections: CONNECTIONS,
                    post_every: 5,
                    timeout: Duration::from_secs(5),
                },
                s,
                st,
            ))
            .expect("load generator")
        });
        Self {
            handle: Some(handle),
            stop,
            stats,
        }
    }

    fn snapshot(&self) -> LiveSnapshot {
        self.stats.snapshot()
    }

    fn finish(mut self) -> LoadReport {
        self.stop.cancel();
        self.handle.take().unwrap().join().expect("load thread")
    }
}

impl Drop for LiveLoad {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Pids of this harness's instance processes that listen on `address` (the agent substitutes
/// the address into the service's command line; the tag in their environment says whose).
fn instance_pids(h: &Harness, address: &str) -> Vec<i32> {
    let listen = format!("{address}:");
    crate::harness::procs::pids_with_env(&h.tag_env())
        .into_iter()
        .filter(|pid| {
            let there = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&listen));
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            there && !zombie
        })
        .collect()
}

/// SIGKILLs server `i` outright: its agent's process group, then every instance process group
/// on its address (instances run in their own groups, so the agent's death alone leaves them
/// serving). Waits until none of them is left.
fn kill_server(h: &mut Harness, i: usize, address: &str) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::{getpgid, Pid};
    let instances = instance_pids(h, address);
    assert!(
        !instances.is_empty(),
        "{address} runs instances before the kill"
    );
    let mut agent = h.servers[i].proc.take().expect("agent running");
    // The agent first, so that it cannot restart the instances killed next.
    let _ = killpg(Pid::from_raw(agent.id() as i32), Signal::SIGKILL);
    let _ = agent.wait();
    for pid in instance_pids(h, address) {
        if let Ok(group) = getpgid(Some(Pid::from_raw(pid))) {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
    wait_for(
        "the killed server's instance processes to be gone",
        Duration::from_secs(10),
        || instance_pids(h, address).is_empty().then_some(()),
    );
}

/// Sets `policy.failover_after` to [`FAILOVER_AFTER`] in the written config. `[policy]` is
/// written by the harness; `extra_toml` comes after `[services.web]` and cannot reopen it, so
/// the config is edited before the controller reads it.
fn set_failover_after(h: &Harness) {
    let toml = std::fs::read_to_string(&h.config).unwrap();
    assert!(toml.contains("\n[policy]\n") && toml.contains("agent_timeout = \"2s\""));
    let toml = toml.replacen(
        "\n[policy]\n",
        &format!(
            "\n[policy]\nfailover_after = \"{}s\"\n",
            FAILOVER_AFTER.as_secs()
        ),
        1,
    );
    std::fs::write(&h.config, toml).unwrap();
}

fn server<'a>(st: &'a Value, id: &str) -> &'a Value {
    st["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no server {id} in {st}"))
}

/// Checks what must hold at every moment: each server in one known state, and the list never
/// empty of primaries; with `routed`, the route table never empty of serving backends either
/// (not true while the only primary is dead and not yet failed over).
fn check_invariants(st: &Value, routed: bool) {
    let servers = st["servers"].as_array().unwrap();
    for s in servers {
        let state = s["state"].as_str().unwrap();
        assert!(
            ["in-service", "rejuvenating", "failed", "maintenance"].contains(&state),
            "{s}"
        );
        assert_eq!(
            s["on_list"].as_bool().unwrap(),
            state == "in-service" && !s["maintenance"].as_bool().unwrap(),
            "on the list exactly when in service: {s}"
        );
    }
    assert!(
        servers
            .iter()
            .any(|s| s["on_list"] == true && s["role"] == "primary"),
        "the available list has a primary: {st}"
    );
    let serving = st["routes"]["services"]["web"]["backends"]
        .as_array()
        .map_or(0, |b| b.iter().filter(|b| b["state"] == "serving").count());
    assert!(
        !routed || serving >= 1,
        "the route table has a serving backend: {st}"
    );
}

/// Requests the proxy has sent to the backend at `addr`, from its admin status.
fn proxy_requests_to(h: &Harness, addr: &str) -> u64 {
    let v: Value = reqwest::blocking::Client::new()
        .get(format!("http://{}/v1/status", h.admin))
        .bearer_auth(&h.proxy_token)
        .timeout(Duration::from_secs(5))
        .send()
        .expect("proxy admin status")
        .json()
        .expect("proxy status json");
    v["services"]["web"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["addr"] == addr)
        .map(|b| b["requests_total"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_dead_primary_fails_over_to_the_spare_while_another_primary_serves() {
    dead_primary_fails_over_and_rejoins_rejuvenated(2, 1);
}

/// Three servers, not two: with two, the survivor alone is no majority of agents, and the
/// no-quorum rule (docs/operations.md) lets no workflow start, a failover included.
#[test]
fn the_only_primary_dead_fails_over_to_a_spare() {
    dead_primary_fails_over_and_rejoins_rejuvenated(1, 2);
}

/// s1 (a primary) dies, the first spare takes over, s1 comes back as a spare after its
/// rejuvenation.
fn dead_primary_fails_over_and_rejoins_rejuvenated(primaries: u32, spares: u32) {
    // No leak: nothing ages, so only the death starts a workflow.
    let spec = Spec {
        primaries,
        spares,
        ..Spec::default()
    };
    let mut h = Harness::new(&spec);
    set_failover_after(&h);
    h.start_controller(&[]);
    h.wait_serving();
    let load = LiveLoad::start(h.front, 50, Duration::from_secs(120));

    let spare = format!("s{}", primaries + 1);
    let spare = spare.as_str();
    let others: Vec<String> = (2..=primaries).map(|i| format!("s{i}")).collect();
    let idle: Vec<String> = (primaries + 2..=primaries + spares)
        .map(|i| format!("s{i}"))
        .collect();
    // Another primary keeps the route table non-empty while s1 is dead.
    let routed_while_dead = primaries >= 2;

    // 1. Serving: the primaries carry the traffic, the spare waits empty.
    wait_for(
        "the primaries serving and the spare ready",
        Duration::from_secs(30),
        || {
            let st = h.try_status()?;
            let serving = |id: &str| {
                server(&st, id)["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|i| i["traffic"] == "serving" && i["healthy"] == true)
            };
            (serving("s1")
                && others.iter().all(|o| serving(o))
                && server(&st, spare)["instances"].as_array()?.is_empty()
                && server(&st, spare)["on_list"] == true
                && load.snapshot().requests >= 50)
                .then_some(())
        },
    );
    let before = load.snapshot();
    assert_eq!(before.failed, 0, "a healthy cluster fails nothing");
    let st = h.status();
    check_invariants(&st, true);
    let s1_instances = server(&st, "s1")["instances"].as_array().unwrap().len();

    // 2. s1 dies: agent and instances.
    let s1_address = "127.0.0.2";
    kill_server(&mut h, 0, s1_address);
    let killed = Instant::now();
    let killed_ms = wall_ms();
    let at_kill = load.snapshot();

    // 3. The spare takes over within failover_after and a margin.
    let copies = wait_for(
        "the spare to serve copies of the dead server's instances",
        FAILOVER_AFTER + Duration::from_secs(15),
        || {
            let st = h.try_status()?;
            check_invariants(&st, routed_while_dead);
            let t = server(&st, spare);
            let copies: Vec<String> = t["instances"]
                .as_array()?
                .iter()
                .filter(|i| i["traffic"] == "serving" && i["healthy"] == true)
                .map(|i| i["addr"].as_str().unwrap().to_string())
                .collect();
            (copies.len() == s1_instances
                && t["on_list"] == true
                && t["role"] == "primary"
                && server(&st, "s1")["on_list"] == false)
                .then_some(copies)
        },
    );
    let to_failover = killed.elapsed();
    let at_failover = load.snapshot();
    println!(
        "[{primaries}+{spares}] kill -> spare's copies serving: {:.2}s (failover_after {:?}); failed requests in the \
         window: {} of {}",
        to_failover.as_secs_f64(),
        FAILOVER_AFTER,
        at_failover.failed - at_kill.failed,
        at_failover.requests - at_kill.requests,
    );
    assert!(
        to_failover >= FAILOVER_AFTER,
        "no failover before failover_after: {to_failover:?}"
    );
    let st = h.status();
    let w = st["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["server"] == "s1")
        .unwrap_or_else(|| panic!("a workflow for s1: {st}"))
        .clone();
    assert_eq!(w["failover"], true, "{w}");
    assert_eq!(w["target"], spare, "{w}");
    assert_eq!(server(&st, "s1")["state"], "rejuvenating", "{st}");
    // The proxy sends the spare's copies real traffic.
    let copy = copies[0].clone();
    let sent = proxy_requests_to(&h, &copy);
    wait_for(
        "the proxy to send requests to the spare's copy",
        Duration::from_secs(10),
        || (proxy_requests_to(&h, &copy) > sent + 10).then_some(()),
    );
    let window_failed = at_failover.failed - at_kill.failed;
    if routed_while_dead {
        // Another primary served: the proxy resends a request whose connection to s1 was
        // refused, and only requests already on the wire to s1 when it died can fail.
        assert!(
            window_failed <= u64::from(CONNECTIONS),
            "at most the requests on the wire to s1 at its death fail: {at_failover:?} vs {at_kill:?}"
        );
    } else {
        // Nothing served between the death and the failover: the proxy held requests for the
        // service's hold time (3 s, shorter than failover_after) and then failed them.
        assert!(
            window_failed > 0,
            "with its only primary dead, the cluster failed requests until the failover: \
             {at_failover:?} vs {at_kill:?}"
        );
    }

    // 4. s1's agent comes back (no instances of its own: it was killed with them).
    let serving_for = Duration::from_secs(3);
    let until = Instant::now() + serving_for;
    wait_for(
        "a few seconds of load on the new layout",
        serving_for * 2,
        || {
            check_invariants(&h.status(), true);
            (Instant::now() >= until).then_some(())
        },
    );
    h.start_agent(0);
    let restarted_ms = wall_ms();
    wait_for(
        "the failover workflow to complete once s1 answers",
        Duration::from_secs(60),
        || {
            let st = h.try_status()?;
            check_invariants(&st, true);
            (st["completed_total"].as_u64()? >= 1).then_some(())
        },
    );
    let to_rejoin = killed.elapsed();
    let report = load.finish();
    println!(
        "[{primaries}+{spares}] kill -> s1 rejoined: {:.2}s (agent restarted {:.2}s after the kill); load: {report:?}",
        to_rejoin.as_secs_f64(),
        (restarted_ms - killed_ms) as f64 / 1000.0
    );
    assert_eq!(
        report.requests_failed, at_failover.failed,
        "no request failed once the failover was done: {report:?}"
    );

    let st = h.status();
    check_invariants(&st, true);
    let history = st["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "one workflow: the failover: {history:?}");
    let w = &history[0];
    assert_eq!(w["outcome"]["outcome"], "completed", "{w}");
    assert_eq!(w["failover"], true, "{w}");
    assert!(st["workflows"].as_array().unwrap().is_empty(), "{st}");
    let mut roles = vec![("s1", "spare"), (spare, "primary")];
    roles.extend(others.iter().map(|o| (o.as_str(), "primary")));
    roles.extend(idle.iter().map(|o| (o.as_str(), "spare")));
    for (id, role) in roles {
        let s = server(&st, id);
        assert_eq!(s["state"], "in-service", "{s}");
        assert_eq!(s["role"], role, "{s}");
        assert_eq!(s["on_list"], true, "{s}");
    }
    assert!(
        server(&st, "s1")["instances"]
            .as_array()
            .unwrap()
            .is_empty(),
        "the new spare runs nothing: {st}"
    );

    // The order, from the event log: s1 answered again, then was rejuvenated, then rejoined.
    let events = h.events();
    let of_s1 = |pred: &dyn Fn(&Value) -> bool| {
        events
            .iter()
            .find(|e| e["server"] == "s1" && e["at_ms"].as_u64().unwrap() >= killed_ms && pred(e))
            .and_then(|e| e["at_ms"].as_u64())
    };
    let msg = |e: &Value| e["message"].as_str().unwrap_or_default().to_string();
    // The sample service hands its state off; the dead source has none to give, so its copy
    // served at once instead of waiting for an export that could not come.
    let skipped = of_s1(&|e| e["kind"] == "handoff-skipped")
        .unwrap_or_else(|| panic!("the lost state is said: {events:#?}"));
    assert!(skipped < restarted_ms, "skipped before s1 came back");
    let back = of_s1(&|e| msg(e) == "agent reachable again")
        .unwrap_or_else(|| panic!("s1 seen answering again: {events:#?}"));
    let rejuvenated = of_s1(&|e| msg(e).starts_with("rejuvenated ("))
        .unwrap_or_else(|| panic!("s1 rejuvenated: {events:#?}"));
    let rejoined = of_s1(&|e| msg(e).contains("back on the list as spare"))
        .unwrap_or_else(|| panic!("s1 rejoined as a spare: {events:#?}"));
    assert!(
        restarted_ms <= back && back <= rejuvenated && rejuvenated <= rejoined,
        "restarted {restarted_ms}, back {back}, rejuvenated {rejuvenated}, rejoined {rejoined}"
    );
    // The agent itself ran the rejuvenation, after it was restarted.
    let agent: Value = reqwest::blocking::Client::new()
        .get(format!("http://{}/v1/state", h.servers[0].agent))
        .bearer_auth(&h.token)
        .timeout(Duration::from_secs(5))
        .send()
        .expect("agent state")
        .json()
        .expect("agent state json");
    let last = &agent["last_rejuvenation"];
    assert!(
        last["started_at_ms"].as_u64().unwrap_or(0) >= restarted_ms,
        "the agent reports a rejuvenation after its restart: {agent}"
    );
}

/// An agent SIGKILLed alone leaves its instances running (they have their own process
/// groups); the next agent of that server ends them when it starts, so what it reports, and
/// what a later rejuvenation stops, is all that runs there.
#[test]
fn an_agent_restarted_after_a_kill_ends_the_instances_its_predecessor_left() {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let mut h = Harness::new(&Spec {
        primaries: 1,
        spares: 1,
        ..Spec::default()
    });
    h.start_controller(&[]);
    h.wait_serving();
    // The harness gives server i the address 127.0.0.(i + 2).
    let address = "127.0.0.2";
    let before = instance_pids(&h, address);
    assert!(!before.is_empty(), "s1 runs instances");
    let in_cgroup = before.iter().all(|p| {
        std::fs::read_to_string(format!("/proc/{p}/cgroup")).is_ok_and(|c| c.contains("/rejuv/"))
    });
    if !in_cgroup {
        eprintln!("note: no writable cgroup here; a dead agent's instances cannot be found");
        return;
    }
    let mut agent = h.servers[0].proc.take().expect("agent running");
    let _ = killpg(Pid::from_raw(agent.id() as i32), Signal::SIGKILL);
    let _ = agent.wait();
    assert_eq!(
        instance_pids(&h, address),
        before,
        "the instances outlive their agent"
    );
    h.start_agent(0);
    wait_for(
        "the restarted agent to end its predecessor's instances",
        Duration::from_secs(20),
        || {
            before
                .iter()
                .all(|p| !instance_pids(&h, address).contains(p))
                .then_some(())
        },
    );
    // The line is written once the processes are ended: wait for it as well.
    wait_for(
        "the agent to say what it ended",
        Duration::from_secs(10),
        || {
            h.log("agent-s1")
                .contains("ended processes an earlier agent of this server left running")
                .then_some(())
        },
    );
}

/// Benchmark (`bench/failover/cooldown.sh`): a primary dies while the only spare is in
/// `failed_target_cooldown` after a copy failed on it; the time from the kill to the spare's
/// copy serving, over `REJUV_COOLDOWN_RUNS` runs (default 5). Goal: within `failover_after` +
/// one health interval + 1 s.
#[test]
#[ignore = "benchmark: run by bench/failover/cooldown.sh"]
fn failover_time_with_the_spare_in_cooldown() {
    let runs: usize = std::env::var("REJUV_COOLDOWN_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    for run in 1..=runs {
        let spec = Spec {
            primaries: 2,
            spares: 1,
            in_place: false,
            // The spare (s3, on 127.0.0.4) fails its first copy, which puts it in cooldown.
            crash_address: Some("127.0.0.4".into()),
            ..Spec::default()
        };
        let mut h = Harness::new(&spec);
        set_failover_after(&h);
        h.start_controller(&[]);
        h.wait_serving();
        let load = LiveLoad::start(h.front, 50, Duration::from_secs(120));
        assert_eq!(
            h.api(reqwest::Method::POST, "/v1/servers/s1/rejuvenate")
                .status(),
            202
        );
        wait_for(
            "the copy on s3 to fail and put it in cooldown",
            Duration::from_secs(40),
            || {
                let st = h.try_status()?;
                st["history"]
                    .as_array()?
                    .iter()
                    .any(|w| w["outcome"]["outcome"] == "rolled-back")
                    .then_some(())
            },
        );
        std::fs::remove_file(crate::harness::crash_marker(h.dir.path(), "127.0.0.4")).unwrap();
        // s2 dies; the spare is in cooldown for another ~50 s.
        kill_server(&mut h, 1, "127.0.0.3");
        let killed = Instant::now();
        let at_kill = load.snapshot();
        wait_for(
            "the spare to serve a copy of s2's instance",
            FAILOVER_AFTER + Duration::from_secs(30),
            || {
                let st = h.try_status()?;
                let t = server(&st, "s3");
                (t["instances"]
                    .as_array()?
                    .iter()
                    .any(|i| i["traffic"] == "serving" && i["healthy"] == true)
                    && server(&st, "s2")["on_list"] == false)
                    .then_some(())
            },
        );
        let took = killed.elapsed();
        let after = load.snapshot();
        println!(
            "run {run}: kill -> spare (in cooldown) serving: {:.2}s (failover_after {:?}, goal <= {:.1}s); failed requests in the window: {} of {}",
            took.as_secs_f64(),
            FAILOVER_AFTER,
            FAILOVER_AFTER.as_secs_f64() + 0.2 + 1.0,
            after.failed - at_kill.failed,
            after.requests - at_kill.requests,
        );
    }
}
