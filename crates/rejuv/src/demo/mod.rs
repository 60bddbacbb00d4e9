//! `rejuv demo`: a whole cluster on this machine, in one command.
//!
//! Real processes: one agent per server (each on its own loopback address 127.0.0.x), the
//! controller, the builtin proxy as the front end on `--listen`, and an aging sample service
//! placed on the primaries. A fixed-rate load (GETs and counter POSTs) runs against the front
//! end while the demo shows what rejuv sees and does (a live view on a terminal, see
//! [`crate::view`]); at the end (or on SIGTERM) it stops everything it started and writes a
//! summary.
//!
//! [`args`]: the command line; [`plan`]: ports and config files; [`fleet`]: starting the
//! processes; [`live`]: progress while the load runs; [`summary`]: counting at the end. This
//! module runs them in order and uses what they export; they do not use it.
//!
//! With `--store etcd` the demo also runs etcd from PATH and `--controllers N` controllers on
//! it, one leading; `--chaos` SIGKILLs the leader at random moments and restarts it (see
//! [`crate::chaos`]). The front end is its own process either way, so a controller's death
//! drops no client connection. Every run has an invariant watcher outside the controllers;
//! its count is in the summary.
//!
//! With `--hosts docker` every server is a container host of its own on a private network (see
//! [`hosts`]); the controllers and the front end stay on this machine.
//!
//! On one machine every agent sees the same host, so the demo judges each server by its own
//! instances' RSS against a per-server memory budget (`instance-rss`), as a per-service policy
//! would on a real fleet.

pub mod args;
pub mod faults;
pub mod fleet;
pub mod host_layout;
pub mod hosts;
pub mod live;
pub mod plan;
pub mod summary;

pub use args::DemoArgs;

use crate::demo::args::{check_args, DemoBackend, DemoHosts, DemoMode, Lb, StoreKind};
use crate::demo::fleet::{leader_within, start_agents, start_front, wait_http};
use crate::demo::live::Sources;
use crate::demo::plan::write_config;
use crate::demo::summary::{
    counter_total, crashes_total, settle, summary_line, Counter, Latency, Summary,
};
use anyhow::Context;
use rejuv_core::types::Mode;
use rejuv_core::wire::Status;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: DemoArgs) -> anyhow::Result<i32> {
    check_args(&args)?;
    // Faults across hosts (with `--chaos`) need tools of this machine: checked first.
    let host_chaos = args.chaos && args.hosts == DemoHosts::Docker;
    if host_chaos {
        faults::check_tools()?;
    }
    let shutdown = crate::signals::shutdown_on_signal();
    let mode = match args.mode {
        DemoMode::ActiveStandby => Mode::ActiveStandby,
        DemoMode::ActiveActive => Mode::ActiveActive,
    };
    // The state directory holds the token: by default a new one with a name nobody can
    // guess, made 0700 at once (it is kept after the run, for its logs).
    let dir = match &args.state_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => tempfile::Builder::new()
            .prefix("rejuv-demo-")
            .tempdir()
            .context("making the demo's state directory")?
            .keep(),
    };
    {
        // Before anything secret is written in it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("logs"))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut p = crate::view::Progress::new(&mode.to_string());
    p.line(&format!("state directory: {}", dir.display()));
    // Declared first, so dropped (stopped) last: the controllers revoke their leases on a
    // clean stop, which needs etcd.
    let etcd = match args.store {
        StoreKind::Etcd => {
            let e = crate::chaos::start_etcd(&dir, &http).await?;
            p.line(&format!("etcd up at {} (log: logs/etcd.log)", e.endpoint));
            Some(e)
        }
        StoreKind::Sqlite => None,
    };
    let image = match args.backend {
        DemoBackend::Process => None,
        DemoBackend::Docker => Some(docker_image(&mut p).await?),
    };
    // Host containers and their network: removed when the demo ends (declared before the
    // processes, so dropped after them).
    let mut hosts = match args.hosts {
        DemoHosts::Local => None,
        DemoHosts::Docker => Some(hosts::Hosts::prepare(&mut p, &dir).await?),
    };
    let plan = write_config(
        &args,
        &dir,
        mode,
        etcd.as_ref().map(|e| e.endpoint.as_str()),
        image.as_deref(),
        hosts.as_ref().map(|h| h.layout()),
    )?;
    // Whatever happens below, no container of this demo outlives it.
    let _containers = image.as_ref().map(|_| ContainerSweep::of(&plan));
    let exe = std::env::current_exe()?;
    p.line(&format!(
        "{mode} cluster: {} servers; config {}",
        plan.servers.len(),
        plan.config_path.display()
    ));

    // With faults across hosts each controller reaches etcd through a relay of its own, that
    // chaos can cut: its own config names its relay as the etcd endpoint.
    let relay_stop = CancellationToken::new();
    let _relays_end = relay_stop.clone().drop_guard();
    let mut relays = Vec::new();
    let mut configs = vec![plan.config_path.clone()];
    if let (true, Some(e)) = (host_chaos, etcd.as_ref()) {
        let to: std::net::SocketAddr = e
            .endpoint
            .trim_start_matches("http://")
            .parse()
            .context("etcd's endpoint")?;
        let text = std::fs::read_to_string(&plan.config_path)?;
        configs.clear();
        for (i, c) in plan.controllers.iter().enumerate() {
            let relay = faults::Relay::start(to, relay_stop.clone()).await?;
            let path = dir.join(format!("rejuv-controller-{}.toml", i + 1));
            std::fs::write(
                &path,
                text.replace(&e.endpoint, &format!("http://{}", relay.addr)),
            )?;
            configs.push(path);
            relays.push((*c, relay));
        }
    }

    // Processes, dropped (and so stopped) in reverse order: controller, proxy, agents.
    let mut agents = match hosts.as_mut() {
        None => start_agents(&exe, &plan, &dir).await?,
        Some(h) => {
            h.start(&plan).await?;
            p.line(&format!(
                "{} host containers up on {} (agents listed in fleet.json)",
                plan.servers.len(),
                h.layout().network
            ));
            Vec::new()
        }
    };
    let mut proxy = start_front(&exe, &plan, &args, &dir).await?;
    let controllers = crate::chaos::Controllers::start(
        &exe,
        &configs,
        &dir,
        &plan.controllers,
        args.no_rejuvenation,
    )?;
    for c in &plan.controllers {
        wait_http(
            &plan.api.http,
            &plan.api.url(*c, "/healthz"),
            "controller",
            Duration::from_secs(30),
        )
        .await?;
    }
    // The leader, as the supervisor sees it (with SQLite: the one controller, always).
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(match args.store {
        StoreKind::Sqlite => Some(plan.controllers[0]),
        StoreKind::Etcd => None,
    });
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let background = CancellationToken::new();
    // Chaos stops when the load ends, so the summary is read from a settled cluster.
    let chaos_stop = background.child_token();
    let chaos_seed = args
        .chaos
        .then(|| args.chaos_seed.unwrap_or_else(rand::random));
    let mut sqlite_controllers = None;
    let supervisor = match args.store {
        StoreKind::Etcd => Some(tokio::spawn(crate::chaos::supervise(
            controllers,
            plan.api.clone(),
            chaos_seed,
            chaos_stop.clone(),
            leader_tx,
            lines_tx.clone(),
            background.clone(),
        ))),
        StoreKind::Sqlite => {
            sqlite_controllers = Some(controllers);
            None
        }
    };
    let watcher = tokio::spawn(crate::chaos::watch_invariants(
        plan.config.clone(),
        (
            plan.controllers.clone(),
            plan.api.clone(),
            plan.token.clone(),
        ),
        (args.lb == Lb::Builtin).then(|| (plan.admin, plan.parts.clone())),
        plan.proxy_token.clone(),
        lines_tx.clone(),
        background.clone(),
    ));
    let host_faults = match (host_chaos, chaos_seed, hosts.as_ref()) {
        (true, Some(seed), Some(h)) => Some(tokio::spawn(faults::inject(
            faults::Targets {
                hosts: h.containers(),
                relays,
                api: plan.api.clone(),
                token: plan.token.clone(),
            },
            seed,
            leader_rx.clone(),
            lines_tx.clone(),
            chaos_stop.clone(),
        ))),
        _ => None,
    };
    drop(lines_tx);
    let first_leader = leader_within(&leader_rx, Duration::from_secs(30))
        .await
        .context("no controller became the leader within 30 s; see logs/controller*.log")?;
    p.line(&format!(
        "agents, proxy and controller up; waiting for the front end {} to serve",
        args.listen
    ));
    wait_http(
        &http,
        &format!("http://{}/", args.listen),
        "front end",
        Duration::from_secs(60),
    )
    .await?;

    p.raw(&format!(
        "dashboard: {}",
        plan.api
            .url(first_leader, &format!("/ui#code={}", plan.session_code))
    ));
    if plan.controllers.len() > 1 {
        let others: Vec<String> = plan
            .controllers
            .iter()
            .filter(|c| **c != first_leader)
            .map(|c| c.to_string())
            .collect();
        p.line(&format!(
            "{} controllers: {first_leader} leads now, also {}; a follower answers 503 with x-rejuv-leader naming the leader",
            plan.controllers.len(),
            others.join(", ")
        ));
    }
    p.raw(&format!("token file: {}", plan.token_path.display()));
    if let Some(seed) = chaos_seed {
        p.line(&format!(
            "chaos on (seed {seed}): the leader is SIGKILLed every 12-25 s and restarted"
        ));
        if host_faults.is_some() {
            p.line(&format!(
                "faults across hosts: {} in turn, one every 6-12 s",
                faults::KINDS.join(", ")
            ));
        }
    }
    p.line(&format!(
        "front end serving; load {} req/s for {:?}{}",
        args.load_rps,
        args.duration,
        if args.no_rejuvenation {
            " (control run: rejuvenation off)"
        } else {
            ""
        }
    ));

    let load_opts = rejuv_sample::loadgen::LoadOptions {
        target: args.listen,
        rps: args.load_rps,
        duration: args.duration,
        connections: 8,
        post_every: 10,
        timeout: Duration::from_secs(5),
    };
    let load_stop = shutdown.child_token();
    let stats = rejuv_sample::loadgen::LiveStats::new();
    let load = tokio::spawn(rejuv_sample::loadgen::run_with_stats(
        load_opts,
        load_stop.clone(),
        stats.clone(),
    ));

    let sources = Sources {
        api: &plan.api,
        token: &plan.token,
        leader: &leader_rx,
        lines: &mut lines_rx,
        stats: &stats,
    };
    let load_started = std::time::Instant::now();
    live::follow(&mut p, sources, &args, &load, &shutdown, &load_stop).await;
    chaos_stop.cancel();
    // The fault under way, if any, is healed before anything is counted.
    let injected = match host_faults {
        Some(t) => t.await.context("fault injection task")?,
        None => Default::default(),
    };
    p.finish();
    let report = load.await.context("load generator task")??;
    p.line(&format!(
        "load done: {} requests, {} failed, {} POSTs ok",
        report.requests_total, report.requests_failed, report.posts_ok
    ));

    // The last kill may have left no leader yet: wait for one (the lease TTL and a bit).
    let controller = leader_within(&leader_rx, Duration::from_secs(30))
        .await
        .context("no controller leads 30 s after the load ended; see logs/controller*.log")?;
    // Let running workflows finish before counting, so no state is mid-move.
    if !args.no_rejuvenation {
        p.line("pausing new workflows; letting running ones finish (up to 40s) before counting");
        settle(&plan.api, controller, &plan.token, &shutdown).await;
    }
    let status: Status = plan
        .api
        .http
        .get(plan.api.url(controller, "/v1/status"))
        .bearer_auth(&plan.token)
        .send()
        .await?
        .json()
        .await?;
    let actual = counter_total(&http, &status).await;
    let crashes = crashes_total(&plan.parts, &plan.servers, &plan.token).await;
    let host_restarts = hosts::host_restarts(&plan.api, controller, &plan.token).await;

    background.cancel();
    let watched = watcher.await.context("invariant watcher task")?;
    let (mut controllers, supervised) = match supervisor {
        Some(s) => {
            let (c, r) = s.await.context("controller supervisor task")?;
            (c, Some(r))
        }
        None => (sqlite_controllers.context("the SQLite controller")?, None),
    };
    while let Ok(l) = lines_rx.try_recv() {
        p.line(&l);
    }

    let summary = Summary {
        mode: mode.to_string(),
        duration_s: load_started.elapsed().as_secs_f64(),
        requests_total: report.requests_total,
        requests_failed: report.requests_failed,
        rejuvenations_completed: status.completed_total,
        rejuvenations_aborted: status.rolled_back_total + status.failed_total,
        crashes,
        latency_ms: Latency {
            p50: report.latency_ms_p50,
            p99: report.latency_ms_p99,
            max: report.latency_ms_max,
        },
        counter: Counter {
            expected: report.posts_ok,
            actual,
        },
        workflows: status.history,
        backend: match args.backend {
            DemoBackend::Process => "process".into(),
            DemoBackend::Docker => "docker".into(),
        },
        state_dir: dir.clone(),
        store: match args.store {
            StoreKind::Sqlite => "sqlite".into(),
            StoreKind::Etcd => "etcd".into(),
        },
        controllers: args.controllers,
        invariant_violations: watched.violations,
        invariant_details: watched.details,
        invariant_polls: watched.polls,
        leader_changes: supervised.as_ref().map_or(0, |r| r.leader_changes),
        controller_kills: supervised.as_ref().map(|r| r.controller_kills),
        controller_exits: supervised.as_ref().map(|r| r.controller_exits),
        handover_ms: supervised.as_ref().map(|r| r.handover_ms.clone()),
        chaos_seed,
        faults_injected: chaos_seed.map(|_| {
            let mut m = injected.clone();
            m.insert(
                "controller-kill".into(),
                supervised.as_ref().map_or(0, |r| r.controller_kills),
            );
            m
        }),
        hosts: match args.hosts {
            DemoHosts::Local => "local".into(),
            DemoHosts::Docker => "docker".into(),
        },
        host_restarts,
        tls: plan.config.tls.as_ref().is_some_and(|t| !t.insecure),
    };

    controllers.stop(Duration::from_secs(10));
    proxy.stop(Duration::from_secs(10));
    for a in agents.iter_mut() {
        a.stop(Duration::from_secs(15));
    }
    if let Some(h) = hosts.as_mut() {
        h.stop();
    }
    drop(etcd);

    let json = serde_json::to_string_pretty(&summary)?;
    if let Some(path) = &args.summary_json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    p.raw(&summary_line(&summary));
    Ok(0)
}

/// The image the demo's containers run: this very binary `FROM scratch`, built once per binary
/// (its tag carries the binary's hash). No Docker Engine is an error at once.
async fn docker_image(p: &mut crate::view::Progress) -> anyhow::Result<String> {
    use rejuv_agent::docker::{build_scratch_image, scratch_image_tag, Docker, DEFAULT_SOCKET};
    let socket = std::path::Path::new(DEFAULT_SOCKET);
    let docker = Docker::connect(socket, Duration::from_secs(5))
        .await
        .with_context(|| "--backend docker needs a Docker Engine")?;
    let exe = std::env::current_exe()?;
    let tag = {
        let exe = exe.clone();
        tokio::task::spawn_blocking(move || scratch_image_tag("rejuv-demo", &exe)).await??
    };
    if docker.image_exists(&tag).await? {
        p.line(&format!("image {tag} (built before)"));
    } else {
        p.line(&format!("building image {tag} from {}", exe.display()));
        build_scratch_image(&docker, &tag, &exe, &[]).await?;
    }
    Ok(tag)
}

/// Removes, when dropped, every container the demo's agents may have left (their label names
/// the agent); the agents remove their own on a clean stop, this is the net under that.
struct ContainerSweep {
    scopes: Vec<String>,
}

impl ContainerSweep {
    fn of(plan: &plan::Plan) -> Self {
        let scopes = plan
            .config
            .servers
            .iter()
            .filter_map(|s| {
                let dir = s.data_dir.as_ref()?;
                Some(rejuv_agent::cgroup::scope(&s.id, dir))
            })
            .collect();
        Self { scopes }
    }
}

impl Drop for ContainerSweep {
    fn drop(&mut self) {
        for scope in &self.scopes {
            let filter = format!("label={}={scope}", rejuv_agent::supervisor::LABEL_AGENT);
            let Ok(out) = std::process::Command::new("docker")
                .args(["ps", "-aq", "--filter", &filter])
                .output()
            else {
                return;
            };
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
    }
}
