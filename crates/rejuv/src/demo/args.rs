//! `rejuv demo`'s command line and the usage rules checked before anything starts.

use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum DemoMode {
    ActiveStandby,
    ActiveActive,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum Lb {
    /// The builtin proxy (its own process).
    Builtin,
    /// A real HAProxy from PATH, driven through its runtime API.
    Haproxy,
}

/// How the demo's instances run.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum DemoBackend {
    /// Processes the agents start.
    Process,
    /// Containers of an image the demo builds from its own binary (FROM scratch), through
    /// the Docker Engine.
    Docker,
}

/// Where the demo's servers run.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum DemoHosts {
    /// On this machine, each server's agent on its own loopback address.
    Local,
    /// Each server a container of its own on a private Docker network (needs a Docker
    /// Engine): its own address, memory limit and restarts.
    Docker,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum StoreKind {
    /// One controller with a SQLite file in the state directory.
    Sqlite,
    /// etcd from PATH (Debian etcd-server); needs a binary built with --features etcd.
    Etcd,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where the controllers keep the cluster state.
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// Controllers (more than one needs --store etcd: one leads, the others follow).
    #[arg(long, default_value_t = 1)]
    pub controllers: u32,
    /// SIGKILL the leading controller at random moments (every 12-25 s) and restart it;
    /// needs --store etcd and --controllers 2 or more.
    #[arg(long)]
    pub chaos: bool,
    /// Seed of the chaos schedule (default: random, printed).
    #[arg(long)]
    pub chaos_seed: Option<u64>,
    /// The load balancer in front of the cluster.
    #[arg(long, value_enum, default_value_t = Lb::Builtin)]
    pub lb: Lb,
    #[arg(long, value_enum, default_value_t = DemoMode::ActiveStandby)]
    pub mode: DemoMode,
    /// How long the load runs, counted from the moment the front end serves.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Primaries (default: 3 in active-standby, 4 in active-active).
    #[arg(long)]
    pub servers: Option<u32>,
    /// Spares (default: 1 in active-standby; active-active has none). With 0, workflows
    /// duplex in place: the copies start on the same server on other ports.
    #[arg(long)]
    pub spares: Option<u32>,
    /// How instances run: processes, or containers (needs a Docker Engine).
    #[arg(long, value_enum, default_value_t = DemoBackend::Process)]
    pub backend: DemoBackend,
    /// Where the servers run: on this machine, or each a container host of its own on a
    /// private Docker network (its agent inside, its instances as processes beside it).
    #[arg(long, value_enum, default_value_t = DemoHosts::Local)]
    pub hosts: DemoHosts,
    /// Instances of the sample service on each primary (at most 4, a server's capacity).
    #[arg(long, default_value_t = 1)]
    pub instances: u32,
    /// How many of each primary's instances age (default: all). The others serve without
    /// leaking; an aging one is rejuvenated alone (instance scope) while they go on.
    #[arg(long)]
    pub aging: Option<u32>,
    /// The front end clients use.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Requests per second of the demo's own load (every 10th a POST).
    #[arg(long, default_value_t = 300)]
    pub load_rps: u32,
    /// Control run: the same cluster, with the controller never starting a workflow.
    #[arg(long)]
    pub no_rejuvenation: bool,
    /// Write the summary as JSON here.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// State directory (default: a fresh one under the temp dir).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Bytes each request leaks in the sample service.
    #[arg(long, default_value_t = 10 * 1024)]
    pub leak_per_request: u64,
    /// Bytes the sample service leaks per second.
    #[arg(long, default_value_t = 400 * 1024)]
    pub leak_per_second: u64,
    /// Leaked bytes past which the sample service dies like an OOM kill.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    pub leak_limit: u64,
    /// Memory budget of each server's instances; the detector's instance-rss rule uses it.
    #[arg(long, default_value_t = 112 * 1024 * 1024)]
    pub memory_budget: u64,
}

/// The usage rules of `--store`, `--controllers` and `--chaos`, checked before anything starts.
pub fn check_args(args: &DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=4).contains(&args.instances),
        "--instances must be 1 to 4 (a demo server has 4 units of capacity)"
    );
    anyhow::ensure!(
        args.aging.is_none_or(|k| k <= args.instances),
        "--aging {} is more than --instances {}",
        args.aging.unwrap_or(0),
        args.instances
    );
    anyhow::ensure!(
        !(args.hosts == DemoHosts::Docker && args.backend == DemoBackend::Docker),
        "--hosts docker --backend docker: a host container runs its instances as processes; \
         containers inside the host containers are not supported (use one or the other)"
    );
    anyhow::ensure!(args.controllers >= 1, "--controllers must be at least 1");
    anyhow::ensure!(args.controllers <= 9, "--controllers: at most 9 in a demo");
    if args.store == StoreKind::Sqlite {
        anyhow::ensure!(
            args.controllers == 1,
            "--controllers {} needs --store etcd: controllers share the cluster state through etcd (SQLite serves one controller)",
            args.controllers
        );
        anyhow::ensure!(
            !args.chaos,
            "--chaos needs --store etcd and --controllers 2 or more"
        );
    }
    anyhow::ensure!(
        !args.chaos || args.controllers >= 2,
        "--chaos needs --controllers 2 or more (it kills the leader; another must take over)"
    );
    anyhow::ensure!(
        args.store != StoreKind::Etcd || cfg!(feature = "etcd"),
        "--store etcd: this binary was built without etcd support; build with --features etcd"
    );
    Ok(())
}
