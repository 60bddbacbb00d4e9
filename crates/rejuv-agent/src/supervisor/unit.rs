//! The systemd backend: an instance is a unit. Its name, its start (a template's instance or
//! a transient unit), the wait for its end, its stop, and finding the units an earlier agent
//! left.
//!
//! Readings need nothing of their own: the unit's main process is the instance's root and the
//! unit's cgroup lists its members, as for the other backends.

use super::error::SupervisorError;
use super::instance::Instance;
use super::process::{credentials, INSTANCE_PATH};
use super::run::Run;
use super::table::Supervisor;
use crate::systemd::{template_instance, unit_cgroup_dir, Systemd, TransientUnit};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

/// How often a unit's main process is looked for in `/proc`.
const MAIN_POLL: Duration = Duration::from_millis(200);
/// How often a unit without a main process is asked about.
const SHOW_POLL: Duration = Duration::from_millis(500);

impl Supervisor {
    fn systemd(&self) -> Result<&Systemd, String> {
        self.systemd
            .as_ref()
            .ok_or_else(|| "systemd is not connected".to_string())
    }

    /// The unit an instance runs as: the template's instance named by its port, or the
    /// agent's transient unit `rejuv-<scope>-<instance>.service`.
    pub(super) fn unit_name(&self, inst: &Instance) -> String {
        match &inst.spec.unit {
            Some(t) => template_instance(t, inst.addr.port()),
            None => self.transient_unit_name(&inst.id),
        }
    }

    fn transient_unit_name(&self, id: &str) -> String {
        format!("{}{id}.service", self.unit_prefix())
    }

    /// What every transient unit of this agent is named with.
    fn unit_prefix(&self) -> String {
        format!("rejuv-{}-", self.scope)
    }

    /// Starts the instance's unit; its run, main pid and cgroup.
    pub(super) async fn start_unit_run(
        &self,
        inst: &Instance,
    ) -> Result<(Run, Option<u32>, Option<PathBuf>), SupervisorError> {
        let berr = |reason: String| SupervisorError::Backend {
            id: inst.id.clone(),
            reason,
        };
        let systemd = self.systemd().map_err(berr)?;
        let name = self.unit_name(inst);
        let state = match &inst.spec.unit {
            Some(_) => systemd.start_unit(&name).await,
            None => {
                let unit = self.transient_unit(inst).map_err(berr)?;
                systemd.start_transient(&name, &unit).await
            }
        }
        .map_err(|e| berr(rejuv_core::error_chain(&e)))?;
        let (main, cgroup) = main_process(state.main_pid);
        let pid = main.map(|(p, _)| p as u32);
        Ok((Run::Unit { name, main }, pid, cgroup))
    }

    /// The transient unit of an instance: the service's command, arguments, environment,
    /// user, group, working directory, memory limit and grace, output to its log file.
    fn transient_unit(&self, inst: &Instance) -> Result<TransientUnit, String> {
        let spec = &inst.spec;
        let program = spec
            .command
            .clone()
            .ok_or("the service has neither unit nor command")?;
        // Names are checked here so a typo is this start's error, not a unit that fails.
        credentials(spec)?;
        let port = inst.addr.port().to_string();
        let address = inst.addr.ip().to_string();
        let subst = |s: &str| {
            s.replace("{port}", &port)
                .replace("{address}", &address)
                .replace("{instance}", &inst.id)
        };
        let mut env = vec![("PATH".to_string(), INSTANCE_PATH.to_string())];
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), subst(v))));
        Ok(TransientUnit {
            description: format!(
                "rejuv instance {} of service {} on {}",
                inst.id, inst.service, inst.addr
            ),
            program,
            args: spec.args.iter().map(|a| subst(a)).collect(),
            env,
            user: spec.user.clone(),
            group: spec.group.clone(),
            workdir: spec.workdir.clone(),
            log: Some(self.logs_dir.join(format!("{}.log", inst.id))),
            memory_max: spec.memory_limit,
            stop_timeout: spec.stop_grace,
        })
    }

    /// Waits until the unit's run ends: its main process is gone (seen in `/proc`), or, with
    /// none known, systemd says it is not running.
    pub(super) async fn wait_unit(&self, name: &str, main: Option<(i32, u64)>) -> String {
        let Ok(systemd) = self.systemd() else {
            return "systemd is not connected".into();
        };
        if let Some((pid, starttime)) = main {
            while crate::procfs::same_process(pid, starttime) {
                tokio::time::sleep(MAIN_POLL).await;
            }
        }
        loop {
            match systemd.show(name).await {
                Ok(s) if s.is_running() && main.is_none() => {}
                // A new main process under a running unit is systemd's own restart: this run
                // ended all the same.
                Ok(s) => return format!("unit {name} {}", s.describe_end()),
                Err(e) => return format!("unit {name}: {}", rejuv_core::error_chain(&e)),
            }
            tokio::time::sleep(SHOW_POLL).await;
        }
    }

    /// Stops a unit with `grace` before SIGKILL.
    pub(super) async fn stop_unit(&self, name: &str, grace: Duration) -> Result<(), String> {
        self.systemd()?
            .stop(name, grace)
            .await
            .map_err(|e| rejuv_core::error_chain(&e))
    }

    /// Transient units named with this agent's prefix (an earlier agent's).
    pub(super) async fn left_units(&self) -> HashSet<String> {
        let Ok(systemd) = self.systemd() else {
            return HashSet::new();
        };
        let pattern = format!("{}*", self.unit_prefix());
        match systemd.list(&pattern).await {
            Ok(units) => units.into_iter().collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot list the units an earlier agent left");
                HashSet::new()
            }
        }
    }

    /// A handed-over unit that still runs as this agent would name it.
    pub(super) async fn live_unit(&self, inst: &Instance, name: &str) -> Result<Run, String> {
        if self.unit_name(inst) != name {
            return Err(format!(
                "unit {name} is not the one this instance runs as ({})",
                self.unit_name(inst)
            ));
        }
        let state = self
            .systemd()?
            .show(name)
            .await
            .map_err(|e| rejuv_core::error_chain(&e))?;
        if !state.is_running() {
            return Err(format!("its unit {name} is not running"));
        }
        let (main, cgroup) = main_process(state.main_pid);
        let mut s = inst.lock();
        s.pid = main.map(|(p, _)| p as u32);
        s.run_cgroup = cgroup;
        Ok(Run::Unit {
            name: name.to_string(),
            main,
        })
    }
}

/// The unit's main process (pid and start time) and its cgroup, when it has one.
fn main_process(pid: u32) -> (Option<(i32, u64)>, Option<PathBuf>) {
    if pid == 0 {
        return (None, None);
    }
    let main = crate::procfs::process_stat(pid as i32)
        .filter(|p| !p.is_gone())
        .map(|p| (p.pid, p.starttime));
    (main, unit_cgroup_dir(pid))
}
