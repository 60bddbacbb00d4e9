//! rejuv agent: /proc collector, instance supervisor, rejuvenation actions, agent HTTP API.
//!
//! One agent runs on each server. It samples the host and its instances (the detector's input),
//! starts and stops instances of services from its local catalog on the controller's command
//! (duplexing and draining), proxies state hand-off, and carries out rejuvenation actions.
//! Everything it must not forget across restarts (epoch fence, running-time origin, crash
//! count, rejuvenation reports) is in `data_dir/agent-state.json`.
//!
//! - [`procfs`]: `/proc` parsing and process-tree membership.
//! - [`collector`]: the periodic sample.
//! - [`supervisor`]: instances: start, health, crash restart, whole-tree stop, adoption.
//! - [`docker`], [`systemd`]: the container and unit backends.
//! - [`handover`]: the instance table an agent stopped with `keep_instances_on_exit` leaves
//!   to the next one.
//! - [`cgroup`]: best-effort per-instance cgroups.
//! - [`host`]: the host's boot identity and, in a container, its own memory.
//! - [`scratch`]: symlink-safe clearing of scratch directories.
//! - [`actions`]: rejuvenation runs.
//! - [`persist`]: the durable state file.
//! - [`http`]: the API; [`metrics`]: `/metrics`.
//! - [`join`]: asking a controller to let this server join (`rejuv agent --join`).
//!
//! The binary calls [`run`] with a bound listener, so tests start agents on port 0.

pub mod actions;
pub mod cgroup;
pub mod collector;
pub mod docker;
pub mod handover;
pub mod host;
pub mod http;
pub mod join;
pub mod metrics;
pub mod persist;
pub mod procfs;
pub mod scratch;
pub mod shared;
pub mod supervisor;
pub mod systemd;

use collector::Collector;
use metrics::Metrics;
use persist::Store;
use rejuv_core::config::Config;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use supervisor::Supervisor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub(crate) use shared::wall_ms;
pub use shared::Agent;

/// What the agent needs to run.
pub struct AgentOptions {
    /// The whole cluster config; this agent uses its own `[[servers]]` entry, the `[services]`
    /// catalog and the `[agent]` settings.
    pub config: Config,
    pub server_id: String,
    /// Bearer token required on every route but `/healthz`.
    pub token: String,
    /// Persisted state and instance logs.
    pub data_dir: PathBuf,
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The shutdown token was cancelled.
    Shutdown,
    /// A `restart-agent` action ran: the caller re-executes the agent.
    Restart,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("server '{0}' is not in the config's [[servers]]")]
    UnknownServer(String),
    #[error("the agent token is empty: refusing to serve an API anyone could call")]
    EmptyToken,
    #[error("cannot create data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] persist::StoreError),
    #[error("cannot build the HTTP client for health checks")]
    HttpClient(#[source] reqwest::Error),
    #[error("services.{service}.backend = \"systemd\": cannot use systemd")]
    Systemd {
        service: String,
        #[source]
        source: systemd::SystemdError,
    },
    #[error("services.{service}: {reason}")]
    Credentials { service: String, reason: String },
    #[error("services.{service}.backend = \"docker\": cannot use the Docker Engine")]
    Docker {
        service: String,
        #[source]
        source: docker::DockerError,
    },
}

/// Runs an agent on `listener` until `shutdown` is cancelled (→ [`Exit::Shutdown`]) or a
/// `restart-agent` action has been answered (→ [`Exit::Restart`]). Every instance is stopped
/// (whole process trees) before it returns, except on a shutdown with
/// `[agent] keep_instances_on_exit`: then the instances keep running and their table is left
/// in `data_dir/instances.json` for the next agent, which adopts them.
///
/// # Errors
/// Before serving: the server id is not in the config, the token is empty, the data dir cannot
/// be created, or the state file is unreadable or corrupt (never silently reset).
pub async fn run(
    listener: tokio::net::TcpListener,
    opts: AgentOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<Exit> {
    let span = tracing::info_span!("agent", server = %opts.server_id);
    run_inner(listener, opts, shutdown).instrument(span).await
}

async fn run_inner(
    listener: tokio::net::TcpListener,
    opts: AgentOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<Exit> {
    let AgentOptions {
        config,
        server_id,
        token,
        data_dir,
    } = opts;
    let server = config
        .server(&server_id)
        .cloned()
        .ok_or_else(|| StartError::UnknownServer(server_id.clone()))?;
    if token.trim().is_empty() {
        return Err(StartError::EmptyToken.into());
    }
    check_catalog(&config)?;
    // The certificate is checked before anything starts: a bad one stops the agent here.
    let tls = match config.tls_files(&server_id) {
        Some(files) => {
            Some(rejuv_net::tls::Tls::load(files).map_err(|e| anyhow::anyhow!("[tls]: {e}"))?)
        }
        None => {
            if !config.tls.as_ref().is_some_and(|t| t.insecure) {
                tracing::warn!("no [tls] in the config: the agent API is plain HTTP, its token readable on the network path (set [tls] insecure = true if that is on purpose)");
            }
            None
        }
    };
    let logs_dir = data_dir.join("logs");
    std::fs::create_dir_all(&logs_dir).map_err(|source| StartError::DataDir {
        path: logs_dir.clone(),
        source,
    })?;
    // The agent's files are its own: services it runs as other users cannot read its state
    // or other instances' output.
    {
        use std::os::unix::fs::PermissionsExt;
        for dir in [&data_dir, &logs_dir] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
                |source| StartError::DataDir {
                    path: dir.clone(),
                    source,
                },
            )?;
        }
    }
    let started_at_ms = wall_ms();
    let store = Arc::new(Store::open(&data_dir, started_at_ms).map_err(StartError::Store)?);
    // A new boot identity: the host restarted, and nothing on it has been running since.
    let boot_id = host::boot_id();
    if store
        .note_boot(&boot_id, started_at_ms)
        .await
        .map_err(StartError::Store)?
    {
        tracing::info!(%boot_id, "the host restarted since this agent last ran: its running time starts again");
    }
    let metrics = Arc::new(Metrics::new(store.crashes_total()));
    let scope = cgroup::scope(&server_id, &data_dir);
    // What an earlier agent handed over: its cgroups are not swept, its instances are adopted
    // (or ended) below.
    let handed_over = match handover::take(&data_dir) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %rejuv_core::error_chain(&e), "ignoring the handed-over instance table: what it names is ended as left-overs");
            None
        }
    };
    let cgroups = cgroup::Cgroups::detect(
        &scope,
        &Supervisor::handed_over_cgroups(handed_over.as_ref()),
    );
    let left_on = |b: rejuv_core::config::Backend| {
        handed_over
            .iter()
            .flat_map(|h| &h.instances)
            .any(|r| r.backend == b)
    };
    let docker = match connect_docker(&config).await? {
        // Only to end what an earlier agent left in containers.
        None if left_on(rejuv_core::config::Backend::Docker) => {
            docker::Docker::connect(&config.agent.docker_socket, Duration::from_secs(5))
                .await
                .inspect_err(|e| tracing::error!(error = %rejuv_core::error_chain(e), "cannot end the containers an earlier agent handed over"))
                .ok()
        }
        d => d,
    };
    let systemd = match connect_systemd(&config).await? {
        None if left_on(rejuv_core::config::Backend::Systemd) => {
            systemd::Systemd::connect(std::path::Path::new(systemd::SOCKET), Duration::from_secs(5))
                .await
                .inspect_err(|e| tracing::error!(error = %rejuv_core::error_chain(e), "cannot end the units an earlier agent handed over"))
                .ok()
        }
        s => s,
    };
    let sup = Arc::new(
        Supervisor::new(
            server,
            config.services.clone(),
            logs_dir,
            store.clone(),
            metrics.clone(),
            cgroups,
            docker,
            scope,
        )
        .map_err(StartError::HttpClient)?
        .with_systemd(systemd),
    );
    let collector = Arc::new(
        Collector::new(procfs::ProcFs::default(), sup.self_pid())
            .with_history(collector::history_len(&config))
            .with_own_memory(host::OwnMemory::detect()),
    );
    let sample_interval = config.agent.sample_interval.max(Duration::from_millis(10));
    // The longest a stop can take: the server gets that long to finish in-flight requests.
    let longest_stop = config
        .services
        .values()
        .map(|s| s.stop_grace)
        .max()
        .unwrap_or_default()
        + Duration::from_secs(10);
    let agent = Arc::new(Agent {
        server_id: server_id.clone(),
        token: token.trim().to_string(),
        config,
        started_at_ms,
        boot_id,
        store: store.clone(),
        sup: sup.clone(),
        collector: collector.clone(),
        metrics: metrics.clone(),
        rejuvenation_lock: tokio::sync::Mutex::new(()),
        restart_requested: AtomicBool::new(false),
        stop_serving: CancellationToken::new(),
        tls: tls.clone(),
    });

    let adoption = sup.adopt(handed_over).await;
    if !adoption.adopted.is_empty() || !adoption.ended.is_empty() {
        tracing::info!(
            adopted = ?adoption.adopted,
            ended = ?adoption.ended,
            "took over what an earlier agent of this server left"
        );
    }
    // A first sample before serving, so /v1/state never shows an empty one.
    collect_once(&agent).await;
    let background = CancellationToken::new();
    let sampler = tokio::spawn(
        sample_loop(agent.clone(), sample_interval, background.clone()).in_current_span(),
    );

    let addr = listener.local_addr().ok();
    tracing::info!(?addr, data_dir = %data_dir.display(), "agent serving");
    let stop_serving = agent.stop_serving.clone();
    let signal = {
        let (a, b) = (shutdown.clone(), stop_serving.clone());
        async move {
            tokio::select! {
                _ = a.cancelled() => {}
                _ = b.cancelled() => {}
            }
        }
    };
    let mut server =
        rejuv_net::Server::new(listener, "agent API", agent.config.agent.listener_limits())
            .with_stats(metrics.api_connections.clone());
    if let Some(tls) = &tls {
        tls.watch(background.clone());
        tracing::info!(cert = %tls.own(), "agent API on HTTPS: only a controller of the fleet is served");
        server = server.with_tls(tls.clone(), Some(rejuv_net::tls::Role::Controller));
    }
    let server = server.serve_router(http::router(agent.clone()), signal);
    let forced = async {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = stop_serving.cancelled() => {}
        }
        tokio::time::sleep(longest_stop).await;
    };
    tokio::select! {
        () = server => {}
        _ = forced => tracing::warn!("in-flight requests did not finish in time; closing anyway"),
    }

    let exit = if agent
        .restart_requested
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        Exit::Restart
    } else {
        Exit::Shutdown
    };
    // A restart-agent action restarts the services too; a stop keeps them if asked to.
    let keep = exit == Exit::Shutdown && agent.config.agent.keep_instances_on_exit;
    let mut handed = false;
    if keep {
        let table = sup.hand_over().await;
        tracing::info!(
            instances = table.instances.len(),
            "leaving the instances running for the next agent of this server"
        );
        match handover::save(&data_dir, &table) {
            Ok(()) => handed = !table.instances.is_empty(),
            Err(e) => {
                tracing::error!(error = %rejuv_core::error_chain(&e), "cannot hand the instances over; the next agent will end them")
            }
        }
    } else {
        tracing::info!("stopping every instance");
        if let Err(errors) = sup.stop_all().await {
            for e in errors {
                tracing::error!(error = %e, "instance not fully stopped");
            }
        }
    }
    background.cancel();
    let _ = sampler.await;
    if let Some(c) = sup.cgroups() {
        // Handed-over instances still live in it.
        if !handed {
            c.remove_base();
        }
    }
    tracing::info!(?exit, "agent stopped");
    Ok(exit)
}

/// The Docker Engine, when a service of the catalog runs in containers: one that does not
/// answer within seconds is a start error naming its socket, never a hang.
async fn connect_docker(config: &Config) -> Result<Option<docker::Docker>, StartError> {
    let Some((name, _)) = config
        .services
        .iter()
        .find(|(_, s)| s.backend == rejuv_core::config::Backend::Docker)
    else {
        return Ok(None);
    };
    docker::Docker::connect(&config.agent.docker_socket, Duration::from_secs(5))
        .await
        .map(Some)
        .map_err(|source| StartError::Docker {
            service: name.clone(),
            source,
        })
}

/// systemd, when a service of the catalog runs as units: one that does not answer within
/// seconds is a start error naming its socket, never a hang.
async fn connect_systemd(config: &Config) -> Result<Option<systemd::Systemd>, StartError> {
    let Some((name, _)) = config
        .services
        .iter()
        .find(|(_, s)| s.backend == rejuv_core::config::Backend::Systemd)
    else {
        return Ok(None);
    };
    systemd::Systemd::connect(
        std::path::Path::new(systemd::SOCKET),
        Duration::from_secs(5),
    )
    .await
    .map(Some)
    .map_err(|source| StartError::Systemd {
        service: name.clone(),
        source,
    })
}

/// What of the catalog this agent can run, checked before it serves: every backend is
/// available, every user and group exists. Services that would run as root with the agent's
/// privileges are named in a warning.
fn check_catalog(config: &Config) -> Result<(), StartError> {
    let root = nix::unistd::geteuid().is_root();
    for (name, spec) in &config.services {
        supervisor::check_credentials(spec).map_err(|reason| StartError::Credentials {
            service: name.clone(),
            reason,
        })?;
        if root && spec.user.is_none() {
            tracing::warn!(
                service = %name,
                "instances of this service run as root, as the agent does: set services.{name}.user"
            );
        }
    }
    Ok(())
}

async fn collect_once(agent: &Arc<Agent>) {
    let a = agent.clone();
    let result = tokio::task::spawn_blocking(move || {
        a.collector
            .collect(wall_ms(), a.store.running_since_ms(), &a.sup.all())
    })
    .await;
    match result {
        Ok(Ok(c)) => agent
            .metrics
            .observe(&c.sample, &c.states, c.took.as_secs_f64()),
        Ok(Err(e)) => {
            agent.metrics.collection_failed();
            tracing::warn!(error = %e, "sample failed")
        }
        Err(e) => {
            agent.metrics.collection_failed();
            tracing::warn!(error = %e, "sample task failed")
        }
    }
}

async fn sample_loop(agent: Arc<Agent>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => collect_once(&agent).await,
        }
    }
}
