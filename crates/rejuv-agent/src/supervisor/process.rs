//! One process of an instance: how it is started (its own process group, its log file, its
//! cgroup), how its end is described, and the health checks while it runs.

use super::error::SupervisorError;
use super::instance::Instance;
use nix::sys::signal::Signal;
use rejuv_core::config::{HealthCheck, ServiceConfig};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Instant;
use tokio::process::{Child, Command};

pub(super) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn describe_exit(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(name) => format!("killed by signal {sig} ({name})"),
                Err(_) => format!("killed by signal {sig}"),
            },
            _ => format!("ended: {s}"),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}

/// `PATH` of every instance (systemd's default): the agent's own environment is not passed on.
pub(super) const INSTANCE_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Shell prologue of an instance that gets a cgroup: it waits on stdin until the agent has
/// moved it into the cgroup (which only the agent may do when the instance runs as another
/// user), then becomes the service with stdin closed. Joining before `exec` leaves no window
/// in which the service could fork a child outside its cgroup.
const GATE_SCRIPT: &str = r#"read -r _; exec "$@" </dev/null"#;

/// The uid and gid an instance runs as, from the service's `user` and `group` (names or
/// numbers); `None` for the agent's own.
pub(super) fn credentials(
    spec: &ServiceConfig,
) -> Result<Option<(nix::unistd::Uid, nix::unistd::Gid)>, String> {
    use nix::unistd::{Gid, Group, Uid, User};
    let Some(user) = &spec.user else {
        return match &spec.group {
            None => Ok(None),
            Some(_) => Err("services.*.group needs a user too".into()),
        };
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(n) => (
            Uid::from_raw(n),
            User::from_uid(Uid::from_raw(n))
                .ok()
                .flatten()
                .map(|u| u.gid),
        ),
        Err(_) => match User::from_name(user) {
            Ok(Some(u)) => (u.uid, Some(u.gid)),
            Ok(None) => return Err(format!("no user '{user}' on this host")),
            Err(e) => return Err(format!("looking up user '{user}': {e}")),
        },
    };
    let gid = match &spec.group {
        None => primary.ok_or_else(|| format!("user '{user}' has no primary group; set group"))?,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => match Group::from_name(g) {
                Ok(Some(gr)) => gr.gid,
                Ok(None) => return Err(format!("no group '{g}' on this host")),
                Err(e) => return Err(format!("looking up group '{g}': {e}")),
            },
        },
    };
    Ok(Some((uid, gid)))
}

/// Starts one process of an instance: its own process group, output appended to
/// `logs/<id>.log`, placeholders substituted, a cleared environment (a standard `PATH` and the
/// service's own `env`), the service's user and group, and in its cgroup before `exec` if it
/// has one.
pub(super) fn spawn_process(
    logs_dir: &Path,
    id: &str,
    service: &str,
    spec: &ServiceConfig,
    addr: SocketAddr,
    cgroup: Option<&Path>,
) -> Result<Child, SupervisorError> {
    let program = spec.command.clone().unwrap_or_default();
    let command = program.display().to_string();
    let serr = |source: std::io::Error| SupervisorError::Spawn {
        id: id.into(),
        command: command.clone(),
        source,
    };
    // Checked here so that a missing program is a start error, not a crash loop (with the
    // cgroup prologue the exec happens in the shell, past `spawn`).
    let meta = std::fs::metadata(&program).map_err(serr)?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(serr(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "not an executable file",
        )));
    }
    let creds = credentials(spec)
        .map_err(|e| serr(std::io::Error::new(std::io::ErrorKind::NotFound, e)))?;
    let port = addr.port().to_string();
    let address = addr.ip().to_string();
    let subst = |s: &str| {
        s.replace("{port}", &port)
            .replace("{address}", &address)
            .replace("{instance}", id)
    };

    let log_path = logs_dir.join(format!("{id}.log"));
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(serr)?;
    {
        use std::io::Write;
        let _ = writeln!(
            log,
            "--- rejuv-agent: starting service '{service}' as instance '{id}' on {addr} at {} ms",
            wall_ms()
        );
    }
    let log_err = log.try_clone().map_err(serr)?;

    let mut cmd = match cgroup {
        Some(_) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(GATE_SCRIPT)
                .arg("rejuv-instance")
                .arg(&program)
                .stdin(Stdio::piped());
            c
        }
        None => {
            let mut c = Command::new(&program);
            c.stdin(Stdio::null());
            c
        }
    };
    cmd.args(spec.args.iter().map(|a| subst(a)))
        .env_clear()
        .env("PATH", INSTANCE_PATH)
        .envs(spec.env.iter().map(|(k, v)| (k, subst(v))))
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0)
        // The keeper decides when an instance ends, never a dropped handle.
        .kill_on_drop(false);
    if let Some((uid, gid)) = creds {
        cmd.uid(uid.as_raw()).gid(gid.as_raw());
    }
    if let Some(dir) = &spec.workdir {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(serr)?;
    if let (Some(dir), Some(gate)) = (cgroup, child.stdin.take()) {
        if let Some(pid) = child.id() {
            // Best effort, as every cgroup here: a failed move leaves the process group and
            // the parent links to find the tree.
            if let Err(e) = std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
                tracing::warn!(cgroup = %dir.display(), error = %e, "cannot move the instance into its cgroup");
            }
        }
        // A few bytes into an empty pipe never block; closing it is what lets the shell go on
        // even if the write failed.
        let _ = nix::unistd::write(&gate, b"go\n");
        drop(gate);
    }
    Ok(child)
}

/// Checks health every `health.interval` while one process of the instance runs: an HTTP GET
/// answered 2xx, a TCP connection accepted, or a command that exits 0, each within
/// `health.timeout`.
pub(super) async fn health_loop(http: reqwest::Client, inst: Arc<Instance>) {
    loop {
        let (ok, latency) = check_health(&http, &inst).await;
        inst.health_result(ok, latency);
        tokio::time::sleep(inst.spec.health.interval).await;
    }
}

/// One health check of the instance: whether it passed, and its latency when the check came
/// to an end worth timing.
pub(super) async fn check_health(http: &reqwest::Client, inst: &Instance) -> (bool, Option<f64>) {
    let health = &inst.spec.health;
    let begun = Instant::now();
    // `answered`: the check came to an end that took time worth reporting (an answer,
    // good or bad, or a timeout, the slowest answer there is); refused while starting did
    // not.
    let (ok, answered) = match health.check() {
        HealthCheck::Http(path) => {
            let url = format!("http://{}{}", inst.addr, path);
            match http.get(&url).timeout(health.timeout).send().await {
                Ok(resp) => (resp.status().is_success(), true),
                Err(e) => (false, e.is_timeout()),
            }
        }
        HealthCheck::Tcp => {
            match tokio::time::timeout(health.timeout, tokio::net::TcpStream::connect(inst.addr))
                .await
            {
                Ok(Ok(_)) => (true, true),
                Ok(Err(_)) => (false, false),
                Err(_) => (false, true),
            }
        }
        HealthCheck::Command(argv) => check_command(inst, argv, health.timeout).await,
    };
    let elapsed_ms = begun.elapsed().as_secs_f64() * 1000.0;
    (ok, answered.then_some(elapsed_ms))
}

/// Runs a health command as the service's user, with its environment; `(ok, answered)`.
async fn check_command(
    inst: &Instance,
    argv: &[String],
    timeout: std::time::Duration,
) -> (bool, bool) {
    let Some((program, args)) = argv.split_first() else {
        return (false, false);
    };
    let port = inst.addr.port().to_string();
    let address = inst.addr.ip().to_string();
    let subst = |s: &str| {
        s.replace("{port}", &port)
            .replace("{address}", &address)
            .replace("{instance}", &inst.id)
    };
    let mut cmd = Command::new(program);
    cmd.args(args.iter().map(|a| subst(a)))
        .env_clear()
        .env("PATH", INSTANCE_PATH)
        .envs(inst.spec.env.iter().map(|(k, v)| (k, subst(v))))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Ok(Some((uid, gid))) = credentials(&inst.spec) {
        cmd.uid(uid.as_raw()).gid(gid.as_raw());
    }
    match tokio::time::timeout(timeout, cmd.status()).await {
        Ok(Ok(status)) => (status.success(), true),
        Ok(Err(_)) => (false, false),
        Err(_) => (false, true),
    }
}
