//! The network between controller and agents fails: one agent cut off by an iptables DROP in
//! the middle of a drain, then random packet loss on every agent's API port. Client traffic
//! to the front end and to the instances is untouched (other ports), so the rule "no request
//! fails while a healthy copy exists" applies throughout. Each scenario runs in its own
//! network and mount namespaces.

use crate::common::{aging_spec, finished, in_namespaces, iptables, outcome, server_index};
use crate::harness::{wait_for, Harness, Load};
use crate::invariants::{settle_and_assert, Checker};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The iptables rule matching TCP traffic to an agent's API port on loopback.
fn agent_rule(agent: SocketAddr) -> Vec<String> {
    [
        "INPUT",
        "-i",
        "lo",
        "-p",
        "tcp",
        "-d",
        &agent.ip().to_string(),
        "--dport",
        &agent.port().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn rule_args<'a>(op: &'a str, rule: &'a [String], tail: &'a [&'a str]) -> Vec<&'a str> {
    let mut v = vec![op];
    v.extend(rule.iter().map(String::as_str));
    v.extend_from_slice(tail);
    v
}

/// Packets dropped so far by the INPUT chain's DROP rules.
fn dropped() -> u64 {
    let out = std::process::Command::new("iptables")
        .args(["-L", "INPUT", "-v", "-n", "-x"])
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .output()
        .expect("iptables -L");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("DROP"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn reachable(h: &Harness, id: &str) -> Option<bool> {
    let st = h.try_status()?;
    let s = st["servers"].as_array()?.iter().find(|s| s["id"] == id)?;
    Some(s["reachable"] == true)
}

#[test]
fn agent_cut_off_during_drain_and_healed() {
    if !in_namespaces(
        "network::agent_cut_off_during_drain_and_healed",
        Duration::from_secs(150),
    ) {
        return;
    }
    let mut h = Harness::new(&aging_spec());
    // A drain with nothing in flight ends within one poll, too quick to act in by watching
    // the status: the controller's test-only failpoint stops it right after it committed
    // the first workflow's draining step, the agent is cut off then, and the controller is
    // started again to resume that drain with the source agent out of reach.
    h.start_controller(&[("REJUV_FAILPOINT_CRASH_AT", "draining")]);
    h.wait_serving();
    let checker = Checker::start(&h);
    let load = Load::start(h.front, 50, Duration::from_secs(100));
    let exit = h.wait_controller_exit(Duration::from_secs(60));
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit.signal(), Some(9), "stopped at the failpoint");
    }
    let stored =
        rejuv_controller::store::SqliteStore::open(&h.dir.path().join("rejuv.db"), 1000, 100)
            .expect("the store opens")
            .load()
            .expect("the stored state loads")
            .expect("a stored state");
    let w = stored
        .workflows
        .values()
        .find(|w| w.phase.to_string() == "draining")
        .expect("a workflow stored in draining");
    let id = w.id;
    let src = w.server.clone();
    let rule = agent_rule(h.servers[server_index(&h, &src)].agent);
    let cut_at = Instant::now();
    iptables(&rule_args("-A", &rule, &["-j", "DROP"]));
    h.start_controller(&[]);
    wait_for(
        "the controller to see the cut-off agent as unreachable",
        Duration::from_secs(10),
        || (reachable(&h, &src) == Some(false)).then_some(()),
    );
    // Keep it cut off for about 5 s in all (shorter than failover_after, 15 s).
    std::thread::sleep(Duration::from_secs(5).saturating_sub(cut_at.elapsed()));
    iptables(&rule_args("-D", &rule, &["-j", "DROP"]));
    let cut_for = cut_at.elapsed();

    let done = wait_for(
        "the cut-off workflow to end after healing",
        Duration::from_secs(60),
        || finished(&h, id),
    );
    let report = load.finish();
    let obs = checker.finish();
    let st = settle_and_assert(&h, &obs, &[]);
    eprintln!(
        "cut off {src} for {cut_for:?}; workflow {id} {}: phases {:?}; load {report:?}",
        outcome(&done),
        obs.phases.get(&id)
    );
    assert_eq!(
        st["history"][0]["id"], id,
        "the cut hit the first workflow: {st}"
    );
    // Once the switch is done (draining), a short loss of contact delays the workflow; the
    // agent answers again well before failover_after, so it finishes the loop.
    assert_eq!(outcome(&done), "completed", "{done}");
    let s = st["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == src.as_str())
        .unwrap();
    assert_eq!(s["reachable"], true, "{s}");
    assert_eq!(s["state"], "in-service", "rejuvenated and back: {s}");
    assert!(report.requests_total > 300, "too little load: {report:?}");
    assert_eq!(report.requests_failed, 0, "{report:?}");
}

#[test]
fn packet_loss_5_and_50_percent_on_agent_traffic() {
    if !in_namespaces(
        "network::packet_loss_5_and_50_percent_on_agent_traffic",
        Duration::from_secs(180),
    ) {
        return;
    }
    let mut h = Harness::new(&aging_spec());
    h.start_controller(&[]);
    h.wait_serving();
    let checker = Checker::start(&h);
    let load = Load::start(h.front, 50, Duration::from_secs(150));
    let rules: Vec<Vec<String>> = h.servers.iter().map(|s| agent_rule(s.agent)).collect();
    let loss = |p: &str| {
        for r in &rules {
            iptables(&rule_args(
                "-A",
                r,
                &[
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    p,
                    "-j",
                    "DROP",
                ],
            ));
        }
    };

    loss("0.05");
    let t = Instant::now();
    wait_for(
        "a completed workflow under 5% loss",
        Duration::from_secs(60),
        || (h.completed() >= 1).then_some(()),
    );
    let at5 = t.elapsed();
    let dropped5 = dropped();
    assert!(dropped5 > 0, "the 5% rules dropped nothing");

    iptables(&["-F", "INPUT"]);
    loss("0.5");
    // A workflow that starts under 50% loss (not one already under way) must end.
    let st = h.status();
    let before = st["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .chain(st["history"].as_array().unwrap())
        .filter_map(|w| w["id"].as_u64())
        .max()
        .unwrap_or(0);
    let t = Instant::now();
    let w50 = wait_for(
        "a workflow started under 50% loss to end",
        Duration::from_secs(75),
        || {
            h.try_status()?["history"]
                .as_array()?
                .iter()
                .find(|w| w["id"].as_u64() > Some(before))
                .cloned()
        },
    );
    let at50 = t.elapsed();
    let dropped50 = dropped();
    assert!(dropped50 > 0, "the 50% rules dropped nothing");
    iptables(&["-F", "INPUT"]);

    let report = load.finish();
    let obs = checker.finish();
    let st = settle_and_assert(&h, &obs, &[]);
    eprintln!(
        "5%: first completion after {at5:?} ({dropped5} packets dropped); \
         50% ({dropped50} packets dropped): workflow {} started and ended {} after {at50:?}; \
         history {:?}; load {report:?}",
        w50["id"],
        outcome(&w50),
        st["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["id"].clone(), w["outcome"]["outcome"].clone()))
            .collect::<Vec<_>>()
    );
    assert!(report.requests_total > 300, "too little load: {report:?}");
    assert_eq!(report.requests_failed, 0, "{report:?}");
}
