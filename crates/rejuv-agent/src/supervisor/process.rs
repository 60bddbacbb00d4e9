//! One process of an instance: how it is started (its own process group, its log file, its
//! cgroup), how its end is described, and the health checks while it runs.

use super::error::SupervisorError;
use super::instance::Instance;
use crate::cgroup::JOIN_SCRIPT;
use nix::sys::signal::Signal;
use rejuv_core::config::ServiceConfig;
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

/// Starts one process of an instance: its own process group, output appended to
/// `logs/<id>.log`, placeholders substituted, joined to its cgroup before `exec` if it has one.
pub(super) fn spawn_process(
    logs_dir: &Path,
    id: &str,
    service: &str,
    spec: &ServiceConfig,
    addr: SocketAddr,
    cgroup: Option<&Path>,
) -> Result<Child, SupervisorError> {
    let command = spec.command.display().to_string();
    let serr = |source: std::io::Error| SupervisorError::Spawn {
        id: id.into(),
        command: command.clone(),
        source,
    };
    // Checked here so that a missing program is a start error, not a crash loop (with the
    // cgroup prologue the exec happens in the shell, past `spawn`).
    let meta = std::fs::metadata(&spec.command).map_err(serr)?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(serr(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "not an executable file",
        )));
    }
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
        Some(dir) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(JOIN_SCRIPT)
                .arg(dir.join("cgroup.procs"))
                .arg(&spec.command);
            c
        }
        None => Command::new(&spec.command),
    };
    cmd.args(spec.args.iter().map(|a| subst(a)))
        .envs(spec.env.iter().map(|(k, v)| (k, subst(v))))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0)
        // The keeper decides when an instance ends, never a dropped handle.
        .kill_on_drop(false);
    if let Some(dir) = &spec.workdir {
        cmd.current_dir(dir);
    }
    cmd.spawn().map_err(serr)
}

/// Checks health every `health.interval` while one process of the instance runs.
pub(super) async fn health_loop(http: reqwest::Client, inst: Arc<Instance>) {
    let health = &inst.spec.health;
    let url = format!("http://{}{}", inst.addr, health.path);
    loop {
        let begun = Instant::now();
        let result = http.get(&url).timeout(health.timeout).send().await;
        let elapsed_ms = begun.elapsed().as_secs_f64() * 1000.0;
        let (ok, latency) = match result {
            Ok(resp) => (resp.status().is_success(), Some(elapsed_ms)),
            // A timeout is the slowest answer there is: it counts as latency.
            Err(e) if e.is_timeout() => (false, Some(elapsed_ms)),
            // Refused while starting: no latency to report.
            Err(_) => (false, None),
        };
        inst.health_result(ok, latency);
        tokio::time::sleep(health.interval).await;
    }
}
