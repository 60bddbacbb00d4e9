//! Faults across hosts, for `rejuv demo --hosts docker --store etcd --chaos`: besides the
//! leader kills of [`crate::chaos`], the demo crashes, hangs and cuts off its host containers
//! and cuts the leading controller off etcd, one fault at a time, in a fixed rotation:
//!
//! - `host-pause`: `docker pause` of a random host for [`PAUSE`], then `docker unpause` (a
//!   hung host: its agent and its instances stop answering, connections stay open);
//! - `host-partition`: every packet in and out of a random host's network stack dropped
//!   (iptables rules in the container's own network namespace, by `nsenter`) for
//!   [`PARTITION`], then the rules removed;
//! - `etcd-partition`: the leading controller's connections to etcd cut (each controller
//!   reaches etcd through a [`Relay`] of its own that the demo can cut) for [`ETCD_CUT`],
//!   longer than the lease, so that it must step down;
//! - `host-kill`: `docker kill` of a host that carries no instance and is no workflow's
//!   target (a spare between workflows), kept down [`KILL_DOWN`], then started again.
//!
//! The short hangs and cuts outlast the controller's agent timeout (it sees the host
//! unreachable and must take no unsafe action) but not the load's request timeout, so the
//! requests in flight to an instance on that host finish once it is back. A crash loses the
//! requests in flight on the crashed host: only a host that serves none is crashed. The
//! invariant watcher of [`crate::chaos`] runs throughout.

use crate::demo::hosts::{docker, run};
use crate::demo::plan::Parts;
use anyhow::Context;
use rand::{Rng, SeedableRng};
use rejuv_core::wire::Status;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a paused host stays paused.
pub const PAUSE: Duration = Duration::from_secs(3);
/// How long a host's packets are dropped.
pub const PARTITION: Duration = Duration::from_millis(2500);
/// How long the leader is cut off etcd: longer than the demo's lease (3 s).
pub const ETCD_CUT: Duration = Duration::from_secs(6);
/// How long a crashed host stays down before it is started again.
pub const KILL_DOWN: Duration = Duration::from_secs(8);
/// The wait between two faults (seconds), after the last one healed.
const GAP_S: (u64, u64) = (6, 12);
/// The kinds, in the order they are injected.
pub const KINDS: [&str; 4] = [
    "host-pause",
    "host-partition",
    "etcd-partition",
    "host-kill",
];

/// A TCP relay from a loopback port to `to`, that the demo can cut: while cut, every relayed
/// connection is closed and new ones are closed at once.
#[derive(Clone)]
pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
}

impl Relay {
    /// Listens on a free loopback port and relays each connection to `to` until `stop`.
    pub async fn start(to: SocketAddr, stop: CancellationToken) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("a relay's port")?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                if *rx.borrow() {
                    continue; // dropped: closed at once
                }
                let mut cut = rx.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect(to).await else {
                        return;
                    };
                    let (mut a, mut b) = (client, upstream);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        // The relay outlives the one who cuts it: a dropped switch never cuts.
                        Ok(_) = cut.wait_for(|c| *c) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            cut: Arc::new(tx),
        })
    }

    /// Cuts (`true`) or heals (`false`) the relay.
    pub fn set_cut(&self, on: bool) {
        self.cut.send_replace(on);
    }
}

/// What the fault driver needs to reach.
pub struct Targets {
    /// (server id, container name) of every host.
    pub hosts: Vec<(String, String)>,
    /// Each controller's API address and its relay to etcd.
    pub relays: Vec<(SocketAddr, Relay)>,
    pub api: Parts,
    pub token: String,
}

/// Whether this machine can inject every kind: `nsenter` and `iptables` for partitions, as
/// root.
pub fn check_tools() -> anyhow::Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "--hosts docker --chaos cuts hosts off with iptables in their network namespaces: run it as root"
    );
    for tool in ["nsenter", "iptables"] {
        anyhow::ensure!(
            std::process::Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "--hosts docker --chaos needs `{tool}` (Debian packages util-linux and iptables)"
        );
    }
    Ok(())
}

/// The iptables rules that drop a host's packets (in its own namespace; `lo` untouched).
const DROP_RULES: [[&str; 5]; 2] = [
    ["INPUT", "!", "-i", "lo", "-j"],
    ["OUTPUT", "!", "-o", "lo", "-j"],
];

async fn partition(pid: &str, on: bool) -> anyhow::Result<()> {
    for rule in DROP_RULES {
        let mut args = vec!["-t", pid, "-n", "iptables", if on { "-I" } else { "-D" }];
        args.extend(rule);
        args.push("DROP");
        run("nsenter", &args, "running nsenter").await?;
    }
    Ok(())
}

/// Runs until `stop`, injecting one fault after another; returns how many of each kind were
/// injected (a kind with no fitting target at its turn is skipped, not counted).
pub async fn inject(
    targets: Targets,
    seed: u64,
    leader: watch::Receiver<Option<SocketAddr>>,
    lines: crate::chaos::Lines,
    stop: CancellationToken,
) -> BTreeMap<String, u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x6661_756c_7473);
    let mut counts: BTreeMap<String, u64> = KINDS.iter().map(|k| (k.to_string(), 0)).collect();
    let mut turn = 0usize;
    loop {
        let gap = Duration::from_secs(rng.gen_range(GAP_S.0..=GAP_S.1));
        tokio::select! {
            _ = stop.cancelled() => return counts,
            _ = tokio::time::sleep(gap) => {}
        }
        let kind = KINDS[turn % KINDS.len()];
        turn += 1;
        match one(kind, &targets, &mut rng, &leader, &lines).await {
            Ok(true) => *counts.entry(kind.to_string()).or_default() += 1,
            Ok(false) => {}
            Err(e) => {
                let _ = lines.send(format!("chaos: {kind} failed: {e:#}"));
            }
        }
    }
}

/// One fault of `kind`, held and healed; `Ok(false)` when nothing fits it now.
async fn one(
    kind: &str,
    t: &Targets,
    rng: &mut rand::rngs::StdRng,
    leader: &watch::Receiver<Option<SocketAddr>>,
    lines: &crate::chaos::Lines,
) -> anyhow::Result<bool> {
    let say = |m: String| {
        let _ = lines.send(format!("chaos: {m}"));
    };
    match kind {
        "host-pause" => {
            let (id, name) = &t.hosts[rng.gen_range(0..t.hosts.len())];
            say(format!("pausing host {id} for {PAUSE:?}"));
            docker(&["pause", name]).await?;
            tokio::time::sleep(PAUSE).await;
            docker(&["unpause", name]).await?;
        }
        "host-partition" => {
            let (id, name) = &t.hosts[rng.gen_range(0..t.hosts.len())];
            let pid = docker(&["inspect", "-f", "{{.State.Pid}}", name]).await?;
            say(format!("dropping host {id}'s packets for {PARTITION:?}"));
            partition(&pid, true).await?;
            tokio::time::sleep(PARTITION).await;
            partition(&pid, false).await?;
        }
        "etcd-partition" => {
            let Some(addr) = *leader.borrow() else {
                return Ok(false);
            };
            let Some((_, relay)) = t.relays.iter().find(|(a, _)| *a == addr) else {
                return Ok(false);
            };
            say(format!(
                "cutting the leader {addr} off etcd for {ETCD_CUT:?}"
            ));
            relay.set_cut(true);
            tokio::time::sleep(ETCD_CUT).await;
            relay.set_cut(false);
        }
        "host-kill" => {
            // An idle host, looked for once a second for a while: between workflows there
            // is one, but a leader may be changing or a spare busy at the moment of the turn.
            let mut found = None;
            for _ in 0..KILL_LOOK {
                if let Some(v) = idle_host(t, rng, leader).await {
                    found = Some(v);
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let Some((id, name)) = found else {
                return Ok(false);
            };
            say(format!("killing host {id} (down {KILL_DOWN:?})"));
            docker(&["kill", &name]).await?;
            tokio::time::sleep(KILL_DOWN).await;
            let running = docker(&["inspect", "-f", "{{.State.Running}}", &name]).await?;
            if running != "true" {
                docker(&["start", &name]).await?;
            }
        }
        other => anyhow::bail!("unknown fault kind {other}"),
    }
    Ok(true)
}

/// How many times (a second apart) a host-kill looks for an idle host before it is skipped.
const KILL_LOOK: usize = 15;

/// A host that serves nothing and that no workflow counts on, as the leader sees it now:
/// (server id, container name).
async fn idle_host(
    t: &Targets,
    rng: &mut rand::rngs::StdRng,
    leader: &watch::Receiver<Option<SocketAddr>>,
) -> Option<(String, String)> {
    let addr = (*leader.borrow())?;
    let status =
        crate::demo::live::get::<Status>(&t.api.http, t.api.url(addr, "/v1/status"), &t.token)
            .await?;
    let idle: Vec<&String> = status
        .servers
        .iter()
        .filter(|s| {
            s.instances.is_empty()
                && s.reserved_by.is_none()
                && s.reachable
                && s.state == "in-service"
                && !status.workflows.iter().any(|w| w.server == s.id)
        })
        .map(|s| &s.id)
        .collect();
    let id = idle.get(rng.gen_range(0..idle.len().max(1)))?;
    t.hosts.iter().find(|(h, _)| h == *id).cloned()
}
