//! Starting the demo's processes: agents, the front end's load balancer, and waiting until
//! each answers.

use crate::demo::args::{DemoArgs, Lb};
use crate::demo::plan::{haproxy_config, Plan};
use crate::procs::{log_file, Proc};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Waits until `url` answers a success, for up to `limit`.
pub async fn wait_http(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    loop {
        if let Ok(r) = client.get(url).timeout(Duration::from_secs(1)).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < until,
            "{what} did not answer at {url} within {limit:?}; see the logs in the state directory"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts one agent per server of `plan` and waits until each answers.
pub async fn start_agents(exe: &Path, plan: &Plan, dir: &Path) -> anyhow::Result<Vec<Proc>> {
    let mut agents = Vec::new();
    for (id, _) in &plan.servers {
        let (out, err) = log_file(dir, &format!("agent-{id}"))?;
        let mut cmd = Command::new(exe);
        cmd.args(["agent", "--config"])
            .arg(&plan.config_path)
            .args(["--server", id]);
        cmd.stdout(out).stderr(err).stdin(Stdio::null());
        agents.push(Proc::spawn(&format!("agent {id}"), cmd)?);
    }
    for (id, addr) in &plan.servers {
        wait_http(
            &plan.parts.http,
            &plan.parts.url(*addr, "/healthz"),
            &format!("agent {id}"),
            Duration::from_secs(30),
        )
        .await?;
    }
    Ok(agents)
}

/// Starts the load balancer in front (the builtin proxy, or HAProxy from PATH) and waits
/// until it answers.
pub async fn start_front(
    exe: &Path,
    plan: &Plan,
    args: &DemoArgs,
    dir: &Path,
) -> anyhow::Result<Proc> {
    Ok(match args.lb {
        Lb::Builtin => {
            let (out, err) = log_file(dir, "proxy")?;
            let mut cmd = Command::new(exe);
            cmd.args(["proxy", "--config"]).arg(&plan.config_path);
            cmd.stdout(out).stderr(err).stdin(Stdio::null());
            let p = Proc::spawn("proxy", cmd)?;
            wait_http(
                &plan.parts.http,
                &plan.parts.url(plan.admin, "/healthz"),
                "proxy",
                Duration::from_secs(30),
            )
            .await?;
            p
        }
        Lb::Haproxy => {
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(&cfg, haproxy_config(dir, args.listen))?;
            let (out, err) = log_file(dir, "haproxy")?;
            let mut cmd = Command::new("haproxy");
            cmd.args(["-db", "-f"]).arg(&cfg);
            cmd.stdout(out).stderr(err).stdin(Stdio::null());
            let p = Proc::spawn("haproxy", cmd)
                .context("starting haproxy from PATH (Debian package haproxy)")?;
            let sock = dir.join("haproxy.sock");
            let until = Instant::now() + Duration::from_secs(30);
            while std::os::unix::net::UnixStream::connect(&sock).is_err() {
                anyhow::ensure!(
                    Instant::now() < until,
                    "haproxy did not open {}; see logs/haproxy.log",
                    sock.display()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            p
        }
    })
}

/// The controller to talk to: the leader the supervisor saw last, waiting up to `limit` for
/// one.
pub async fn leader_within(
    rx: &tokio::sync::watch::Receiver<Option<SocketAddr>>,
    limit: Duration,
) -> Option<SocketAddr> {
    let until = Instant::now() + limit;
    loop {
        if let Some(a) = *rx.borrow() {
            return Some(a);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
