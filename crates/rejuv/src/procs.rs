//! Child processes started by the demo, and what they need from the machine (a free port, a
//! log file).

use anyhow::Context;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child in its own process group; dropping it ends the whole group.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {name}: {e}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM to the group, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pg = Pid::from_raw(self.pid());
        let _ = killpg(pg, Signal::SIGTERM);
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(name = %self.name, "did not stop within {grace:?}; killing its process group");
        let _ = killpg(pg, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop(Duration::from_secs(10));
        }
    }
}

/// A free TCP port on `ip`, never one handed out before in this process.
pub fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    rejuv_net::free_port(ip).with_context(|| format!("finding a free port on {ip}"))
}

/// `dir/logs/NAME.log`, opened for appending, as a child's stdout and stderr.
pub fn log_file(dir: &Path, name: &str) -> anyhow::Result<(Stdio, Stdio)> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("logs").join(format!("{name}.log")))?;
    Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
}
