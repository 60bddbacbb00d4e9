//! `rejuv demo --hosts docker`: every server of the demo a host of its own, a container on a
//! private bridge network the demo makes, with its own address, network stack, memory limit
//! and processes. Its agent (`rejuv agent`) runs in it and starts the instances as processes
//! beside it; the controller(s) and the front end stay on this machine and reach the hosts at
//! their addresses on the bridge.
//!
//! - The image (`rejuv-host:HASH`) is this very binary `FROM scratch` with its shared
//!   libraries and `kill`, built once per binary (its tag carries the binary's hash).
//! - Each host container runs with `--init` (PID 1 is Docker's init, the agent its child),
//!   `--restart unless-stopped` and `--memory` [`HOST_MEMORY`]. Its agent's `restart-host`
//!   runs `kill -TERM 1`: the agent answers, stops, the container ends and its restart policy
//!   starts it again: fresh memory and processes, a new PID 1 and so a new boot identity (see
//!   `rejuv_agent::host`), the same address and disk (the agent's data directory is a bind
//!   mount from the state directory).
//! - Every container and the network carry the label [`LABEL`] (`rejuv.host=RUN`, one value
//!   per run): [`Hosts`] removes them when the demo ends, on SIGTERM too, and when dropped on
//!   an error. A forced exit (a second signal) leaves them: `docker rm -f $(docker ps -aq
//!   --filter label=rejuv.host)` and `docker network prune --filter label=rejuv.host` clean up.
//! - While the hosts run, the state directory holds `fleet.json`: `{"agents": ["HOST:PORT",
//!   ...]}`, the agents' API addresses.

use crate::demo::fleet::wait_http;
use crate::demo::host_layout::{Layout, KILL};
use crate::demo::plan::Plan;
use anyhow::Context;
use rejuv_core::cluster::EventKind;
use rejuv_core::wire::StoredEvent;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The label on every container and network of the hosts; its value names the run.
pub const LABEL: &str = "rejuv.host";
/// Memory limit of each host container: the host's memory, as its agent reads it.
pub const HOST_MEMORY: u64 = 640 * 1024 * 1024;
/// How long the hosts get to answer after their containers start.
const HOSTS_UP: Duration = Duration::from_secs(90);

/// The demo's host containers and their network; removed when stopped or dropped.
pub struct Hosts {
    layout: Layout,
    dir: PathBuf,
    /// (server id, container name), once started.
    containers: Vec<(String, String)>,
    stopped: bool,
}

fn run_id() -> String {
    (0..4)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// `docker ARGS`, its stdout; an error names the command and its stderr.
pub(crate) async fn docker(args: &[&str]) -> anyhow::Result<String> {
    run(
        "docker",
        args,
        "--hosts docker needs the docker command (Debian package docker.io)",
    )
    .await
}

/// `CMD ARGS`, its stdout; an error names the command and its stderr, or says `missing` when
/// the command cannot be started at all.
pub(crate) async fn run(cmd: &str, args: &[&str], missing: &str) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| missing.to_string())?;
    anyhow::ensure!(
        out.status.success(),
        "`{cmd} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The IPv4 routes of this machine as (network, mask), from `/proc/net/route`.
fn routes() -> Vec<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            // Little-endian in the file: byte-swap to the address's order.
            Some((u32::from_be(dest.to_le()), u32::from_be(mask.to_le())))
        })
        .filter(|(_, mask)| *mask != 0)
        .collect()
}

/// Whether `net/24` overlaps a route of this machine (the default route aside).
fn overlaps(net: Ipv4Addr, routes: &[(u32, u32)]) -> bool {
    let n = u32::from(net);
    let m = 0xffff_ff00u32;
    routes.iter().any(|(d, mask)| {
        let common = m & mask;
        n & common == d & common
    })
}

impl Hosts {
    /// Builds (or finds) the image and makes the private network.
    pub async fn prepare(p: &mut crate::view::Progress, dir: &Path) -> anyhow::Result<Self> {
        let image = host_image(p).await?;
        let run = run_id();
        let network = format!("rejuv-hosts-{run}");
        let routes = routes();
        let mut last_error = None;
        for _ in 0..20 {
            let subnet = Ipv4Addr::new(10, 200 + rand::random::<u8>() % 55, rand::random(), 0);
            if overlaps(subnet, &routes) {
                continue;
            }
            let label = format!("{LABEL}={run}");
            let cidr = format!("{subnet}/24");
            match docker(&[
                "network", "create", "--driver", "bridge", "--label", &label, "--subnet", &cidr,
                &network,
            ])
            .await
            {
                Ok(_) => {
                    p.line(&format!("private network {network} ({cidr})"));
                    let binary = format!("/app/{}", exe_name()?);
                    return Ok(Self {
                        layout: Layout {
                            run,
                            network,
                            image,
                            binary,
                            subnet,
                        },
                        dir: dir.to_path_buf(),
                        containers: Vec::new(),
                        stopped: false,
                    });
                }
                // Another network holds that subnet: try another.
                Err(e) if e.to_string().contains("overlap") => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("every subnet tried overlaps a route"))
            .context("no free private subnet for the hosts' network (10.200.0.0-10.254.255.0)"))
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// (server id, container name) of every host started.
    pub fn containers(&self) -> Vec<(String, String)> {
        self.containers.clone()
    }

    /// Starts one host container per server of `plan`, waits until every agent answers from
    /// this machine, and writes `fleet.json`.
    pub async fn start(&mut self, plan: &Plan) -> anyhow::Result<()> {
        let mut runs = Vec::new();
        for (id, _) in &plan.servers {
            let server = plan
                .config
                .servers
                .iter()
                .find(|s| &s.id == id)
                .context("a planned server is not in the config")?;
            let data = server
                .data_dir
                .clone()
                .context("the demo gives every server a data directory")?;
            std::fs::create_dir_all(&data)?;
            let name = format!("rejuv-host-{}-{id}", self.layout.run);
            self.containers.push((id.clone(), name.clone()));
            let args = self.run_args(&name, id, server.address, plan, &data);
            runs.push(tokio::spawn(async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                docker(&args).await
            }));
        }
        for r in runs {
            r.await?.context("starting a host container")?;
        }
        for (id, addr) in &plan.servers {
            wait_http(
                &plan.parts.http,
                &plan.parts.url(*addr, "/healthz"),
                &format!("host {id}'s agent"),
                HOSTS_UP,
            )
            .await?;
        }
        let agents: Vec<String> = plan.servers.iter().map(|(_, a)| a.to_string()).collect();
        std::fs::write(
            self.dir.join("fleet.json"),
            serde_json::to_string_pretty(&serde_json::json!({ "agents": agents }))?,
        )?;
        Ok(())
    }

    /// `docker run` arguments of server `id`'s host.
    fn run_args(&self, name: &str, id: &str, ip: IpAddr, plan: &Plan, data: &Path) -> Vec<String> {
        let l = &self.layout;
        let mut a: Vec<String> = [
            "run",
            "-d",
            "--name",
            name,
            "--hostname",
            id,
            "--label",
            &format!("{LABEL}={}", l.run),
            "--network",
            &l.network,
            "--ip",
            &ip.to_string(),
            "--memory",
            &HOST_MEMORY.to_string(),
            "--memory-swap",
            &HOST_MEMORY.to_string(),
            "--init",
            "--restart",
            "unless-stopped",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (from, to, mode) in mounts(plan, id, data) {
            a.push("--volume".into());
            a.push(format!("{}:{}:{mode}", from.display(), to.display()));
        }
        a.push(l.image.clone());
        a.extend(
            [
                "agent",
                "--config",
                &plan.config_path.display().to_string(),
                "--server",
                id,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        a
    }

    /// Saves each host's log to `logs/agent-ID.log`, then removes the containers and the
    /// network (and `fleet.json`). Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ = std::fs::remove_file(self.dir.join("fleet.json"));
        for (id, name) in &self.containers {
            let path = self.dir.join("logs").join(format!("agent-{id}.log"));
            if let Ok(f) = std::fs::File::create(&path) {
                let err = f.try_clone().map(Stdio::from).unwrap_or(Stdio::null());
                let _ = std::process::Command::new("docker")
                    .args(["logs", name])
                    .stdout(f)
                    .stderr(err)
                    .status();
            }
        }
        let filter = format!("label={LABEL}={}", self.layout.run);
        let ids = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let removed = std::process::Command::new("docker")
            .args(["network", "rm", &self.layout.network])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !removed {
            tracing::warn!(network = %self.layout.network, "could not remove the hosts' network");
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a host container mounts from this machine, each at the same path inside: the config
/// and the agent token read-only, the agent's data directory (its disk) read-write.
fn mounts(plan: &Plan, id: &str, data: &Path) -> Vec<(PathBuf, PathBuf, &'static str)> {
    let mut m = vec![
        (plan.config_path.clone(), plan.config_path.clone(), "ro"),
        (plan.token_path.clone(), plan.token_path.clone(), "ro"),
        (data.to_path_buf(), data.to_path_buf(), "rw"),
    ];
    // The parts talk mutual TLS: the fleet's CA and this host's own certificate and key, at
    // the paths the config names (each host gets only its own key).
    if let Some(tls) = &plan.config.tls {
        let own = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| PathBuf::from(p.display().to_string().replace("{name}", id)))
        };
        for path in [tls.ca.clone(), own(&tls.cert), own(&tls.key)]
            .into_iter()
            .flatten()
        {
            m.push((path.clone(), path, "ro"));
        }
    }
    m
}

fn exe_name() -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    exe.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .context("the rejuv executable has no UTF-8 file name")
}

/// The hosts' image: this very binary and `kill` `FROM scratch`, built once per binary.
async fn host_image(p: &mut crate::view::Progress) -> anyhow::Result<String> {
    use rejuv_agent::docker::{
        build_scratch_image_with, scratch_image_tag, Docker, DEFAULT_SOCKET,
    };
    let socket = Path::new(DEFAULT_SOCKET);
    let docker = Docker::connect(socket, Duration::from_secs(5))
        .await
        .context("--hosts docker needs a Docker Engine")?;
    let exe = std::env::current_exe()?;
    let tag = {
        let exe = exe.clone();
        tokio::task::spawn_blocking(move || scratch_image_tag("rejuv-host", &exe)).await??
    };
    if docker.image_exists(&tag).await? {
        p.line(&format!("host image {tag} (built before)"));
        return Ok(tag);
    }
    let kill = ["/usr/bin/kill", "/bin/kill"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("--hosts docker puts `kill` in the host image for the hosts' restart command: install procps")?;
    p.line(&format!("building host image {tag} from {}", exe.display()));
    build_scratch_image_with(&docker, &tag, &exe, &[(kill, KILL.to_string())], &[]).await?;
    Ok(tag)
}

/// Host restarts the controller saw: its `host-restart` events.
pub async fn host_restarts(
    api: &crate::demo::plan::Parts,
    controller: SocketAddr,
    token: &str,
) -> u64 {
    let mut after = 0i64;
    let mut count = 0;
    loop {
        let url = api.url(controller, &format!("/v1/events?after={after}&limit=1000"));
        let Some(events) = crate::demo::live::get::<Vec<StoredEvent>>(&api.http, url, token).await
        else {
            return count;
        };
        let Some(last) = events.last() else {
            return count;
        };
        after = last.seq;
        count += events
            .iter()
            .filter(|e| e.event.kind == EventKind::HostRestart)
            .count() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::host_layout::PORT_RANGE;

    #[test]
    fn subnets_that_a_route_holds_are_skipped() {
        let routes = vec![
            (u32::from(Ipv4Addr::new(172, 17, 0, 0)), 0xffff_0000),
            (u32::from(Ipv4Addr::new(10, 0, 0, 0)), 0xff00_0000),
        ];
        assert!(overlaps(Ipv4Addr::new(172, 17, 3, 0), &routes));
        assert!(overlaps(Ipv4Addr::new(10, 213, 7, 0), &routes));
        assert!(!overlaps(Ipv4Addr::new(192, 168, 9, 0), &routes));
        // This machine's table reads, and holds its own routes.
        let here = super::routes();
        assert!(here.iter().all(|(_, m)| *m != 0));
    }

    #[test]
    fn hosts_are_numbered_from_two() {
        let l = Layout {
            run: "ab".into(),
            network: "n".into(),
            image: "i".into(),
            binary: "/app/rejuv".into(),
            subnet: Ipv4Addr::new(10, 210, 4, 0),
        };
        let (ip, agent, range) = l.server(0).unwrap();
        assert_eq!(ip.to_string(), "10.210.4.2");
        assert_eq!(agent.to_string(), "10.210.4.2:7070");
        assert_eq!(range, PORT_RANGE);
        assert!(l.server(250).is_err());
        assert!(l
            .restart_command()
            .contains("\"/bin/kill\", \"-TERM\", \"1\""));
    }
}
