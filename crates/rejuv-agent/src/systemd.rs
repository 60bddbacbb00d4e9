//! systemd, as the agent's `systemd` backend sees it: an instance is a unit.
//!
//! Either an instance of a template unit the operator installed (`web@.service` runs port 8080
//! as `web@8080.service`), or a transient unit the agent makes from the service's command, as
//! `systemd-run` does (`rejuv-<scope>-<instance>.service`). The manager is driven with its own
//! clients, `systemctl` and `systemd-run`, which talk to it over its D-Bus socket
//! ([`SOCKET`]); every call has a deadline and keeps the client's stderr in its error.
//!
//! This layer knows nothing of instances or catalogs; the supervisor maps an instance onto a
//! unit name and a [`TransientUnit`].
//!
//! # Guarantees
//! [`Systemd::connect`] never hangs: a missing socket fails at once, a manager that does not
//! answer fails after the given timeout, and both errors name the socket.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// systemd's private D-Bus socket, which `systemctl` uses when run as root.
pub const SOCKET: &str = "/run/systemd/private";

/// How long one `systemctl` call may take (a start waits for its job).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a stopping unit is looked at.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("no systemd manager socket at {} (is systemd PID 1 on this host, and the agent root?)", .socket.display())]
    NoSocket { socket: PathBuf },
    #[error("systemd at unix:{} does not answer: {stderr}", .socket.display())]
    Unreachable { socket: PathBuf, stderr: String },
    #[error("systemd at unix:{} does not answer within {timeout:?}", .socket.display())]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("cannot run {program}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {args} failed: {stderr}")]
    Call {
        program: &'static str,
        args: String,
        stderr: String,
    },
    #[error("{program} {args} did not finish within {timeout:?}")]
    CallTimeout {
        program: &'static str,
        args: String,
        timeout: Duration,
    },
    #[error("unit {unit} is {state} right after its start ({result})")]
    NotActive {
        unit: String,
        state: String,
        result: String,
    },
    #[error("unit {unit} is still {state} after SIGKILL")]
    StopIncomplete { unit: String, state: String },
}

/// What a transient unit runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransientUnit {
    pub description: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment of the service.
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub workdir: Option<PathBuf>,
    /// Stdout and stderr are appended here.
    pub log: Option<PathBuf>,
    pub memory_max: Option<u64>,
    /// systemd's SIGTERM-to-SIGKILL time for its own stops.
    pub stop_timeout: Duration,
}

impl TransientUnit {
    /// `systemd-run`'s arguments for the unit `name`.
    pub fn run_args(&self, name: &str) -> Vec<String> {
        let mut a = vec![
            format!("--unit={name}"),
            "--quiet".into(),
            format!("--description={}", self.description),
            // Type=exec: a program that cannot be executed fails the start, not a later check.
            "--property=Type=exec".into(),
            "--property=KillMode=control-group".into(),
            "--property=MemoryAccounting=yes".into(),
            "--property=TasksAccounting=yes".into(),
            format!(
                "--property=TimeoutStopSec={}ms",
                self.stop_timeout.as_millis().max(1)
            ),
        ];
        if let Some(m) = self.memory_max {
            a.push(format!("--property=MemoryMax={m}"));
        }
        if let Some(log) = &self.log {
            a.push(format!(
                "--property=StandardOutput=append:{}",
                log.display()
            ));
            a.push(format!("--property=StandardError=append:{}", log.display()));
        }
        if let Some(u) = &self.user {
            a.push(format!("--uid={u}"));
        }
        if let Some(g) = &self.group {
            a.push(format!("--gid={g}"));
        }
        if let Some(w) = &self.workdir {
            a.push(format!("--working-directory={}", w.display()));
        }
        for (k, v) in &self.env {
            a.push(format!("--setenv={k}={v}"));
        }
        a.push("--".into());
        a.push(self.program.display().to_string());
        a.extend(self.args.iter().cloned());
        a
    }
}

/// A unit's properties the backend uses (`systemctl show`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    /// `loaded`, `not-found`, ...
    pub load_state: String,
    /// `active`, `activating`, `deactivating`, `inactive`, `failed`.
    pub active_state: String,
    pub sub_state: String,
    /// 0 when it has none.
    pub main_pid: u32,
    /// `success`, `exit-code`, `signal`, `oom-kill`, ...
    pub result: String,
    pub exec_main_status: i32,
}

impl UnitState {
    /// Parses `systemctl show -p ...` output (`Key=value` lines).
    pub fn parse(text: &str) -> UnitState {
        let mut s = UnitState::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "LoadState" => s.load_state = v.into(),
                "ActiveState" => s.active_state = v.into(),
                "SubState" => s.sub_state = v.into(),
                "MainPID" => s.main_pid = v.parse().unwrap_or(0),
                "Result" => s.result = v.into(),
                "ExecMainStatus" => s.exec_main_status = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        s
    }

    /// Running or on its way (a stop or an automatic restart is not).
    pub fn is_running(&self) -> bool {
        matches!(self.active_state.as_str(), "active" | "reloading")
            || (self.active_state == "activating" && self.sub_state != "auto-restart")
    }

    /// Nothing of the unit runs any more.
    pub fn is_down(&self) -> bool {
        matches!(self.active_state.as_str(), "inactive" | "failed" | "")
            || self.load_state == "not-found"
    }

    /// How the unit ended, in the words the other backends use.
    pub fn describe_end(&self) -> String {
        match self.result.as_str() {
            "exit-code" => format!("exited with status {}", self.exec_main_status),
            "signal" | "core-dump" => {
                match nix::sys::signal::Signal::try_from(self.exec_main_status) {
                    Ok(sig) => format!("killed by signal {} ({sig})", self.exec_main_status),
                    Err(_) => format!("killed by signal {}", self.exec_main_status),
                }
            }
            "oom-kill" => "killed by the OOM killer at its memory limit".into(),
            "" | "success" => format!("ended ({} {})", self.active_state, self.sub_state),
            other => format!("ended: {other} ({} {})", self.active_state, self.sub_state),
        }
    }
}

/// A unit name made from a template (`web@.service` or `web@{port}.service`) and a port.
pub fn template_instance(template: &str, port: u16) -> String {
    let base = template
        .strip_suffix("@.service")
        .or_else(|| template.strip_suffix("@{port}.service"))
        .unwrap_or(template);
    format!("{base}@{port}.service")
}

/// The manager, reached through `systemctl` and `systemd-run`.
#[derive(Debug, Clone)]
pub struct Systemd {
    socket: PathBuf,
}

impl Systemd {
    /// Checks that the manager on `socket` answers, within `timeout`.
    ///
    /// # Errors
    /// [`SystemdError::NoSocket`], [`SystemdError::Unreachable`] or [`SystemdError::Timeout`],
    /// each naming the socket.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Systemd, SystemdError> {
        if !socket.exists() {
            return Err(SystemdError::NoSocket {
                socket: socket.to_path_buf(),
            });
        }
        let me = Systemd {
            socket: socket.to_path_buf(),
        };
        match me
            .call_within("systemctl", &["show", "--property=Version"], timeout)
            .await
        {
            Ok(_) => Ok(me),
            Err(SystemdError::CallTimeout { .. }) => Err(SystemdError::Timeout {
                socket: socket.to_path_buf(),
                timeout,
            }),
            Err(e) => Err(SystemdError::Unreachable {
                socket: socket.to_path_buf(),
                stderr: e.to_string(),
            }),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn call(&self, program: &'static str, args: &[&str]) -> Result<String, SystemdError> {
        self.call_within(program, args, CALL_TIMEOUT).await
    }

    /// Runs `program args`; its stdout, or its stderr in the error.
    async fn call_within(
        &self,
        program: &'static str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<String, SystemdError> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            // Never a pager or a password prompt: this is a daemon.
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let joined = args.join(" ");
        let out = match tokio::time::timeout(timeout, cmd.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(source)) => return Err(SystemdError::Spawn { program, source }),
            Err(_) => {
                return Err(SystemdError::CallTimeout {
                    program,
                    args: joined,
                    timeout,
                })
            }
        };
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if stderr.is_empty() {
                stderr = format!("{}", out.status);
            }
            Err(SystemdError::Call {
                program,
                args: joined,
                stderr,
            })
        }
    }

    /// The unit's state; a unit systemd does not know reads `not-found`, inactive.
    pub async fn show(&self, unit: &str) -> Result<UnitState, SystemdError> {
        let out = self
            .call(
                "systemctl",
                &[
                    "show",
                    "--property=LoadState,ActiveState,SubState,MainPID,Result,ExecMainStatus",
                    "--",
                    unit,
                ],
            )
            .await?;
        Ok(UnitState::parse(&out))
    }

    /// Starts a transient unit `name` (a failed one of that name is reset first).
    pub async fn start_transient(
        &self,
        name: &str,
        unit: &TransientUnit,
    ) -> Result<UnitState, SystemdError> {
        let _ = self.call("systemctl", &["reset-failed", "--", name]).await;
        let args = unit.run_args(name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.call("systemd-run", &args).await?;
        self.started(name).await
    }

    /// Starts an installed unit (an instance of a template).
    pub async fn start_unit(&self, name: &str) -> Result<UnitState, SystemdError> {
        let _ = self.call("systemctl", &["reset-failed", "--", name]).await;
        self.call("systemctl", &["start", "--", name]).await?;
        self.started(name).await
    }

    async fn started(&self, name: &str) -> Result<UnitState, SystemdError> {
        let state = self.show(name).await?;
        if state.is_running() {
            Ok(state)
        } else {
            Err(SystemdError::NotActive {
                unit: name.into(),
                state: format!("{} ({})", state.active_state, state.sub_state),
                result: state.describe_end(),
            })
        }
    }

    /// Stops the unit: systemd's stop (the unit's stop command or SIGTERM to its cgroup), and
    /// SIGKILL to every process of the unit if it is not down after `grace`; then forgets a
    /// failed result so the name can start again. A unit already down or unknown is fine.
    pub async fn stop(&self, name: &str, grace: Duration) -> Result<(), SystemdError> {
        if self.show(name).await?.is_down() {
            let _ = self.call("systemctl", &["reset-failed", "--", name]).await;
            return Ok(());
        }
        self.call("systemctl", &["stop", "--no-block", "--", name])
            .await?;
        let begun = Instant::now();
        let mut killed = false;
        loop {
            let state = self.show(name).await?;
            if state.is_down() {
                break;
            }
            let waited = begun.elapsed();
            if !killed && waited >= grace {
                killed = true;
                let _ = self
                    .call(
                        "systemctl",
                        &["kill", "--kill-whom=all", "--signal=SIGKILL", "--", name],
                    )
                    .await;
            }
            if waited >= grace + Duration::from_secs(10) {
                return Err(SystemdError::StopIncomplete {
                    unit: name.into(),
                    state: format!("{} ({})", state.active_state, state.sub_state),
                });
            }
            tokio::time::sleep(POLL).await;
        }
        let _ = self.call("systemctl", &["reset-failed", "--", name]).await;
        Ok(())
    }

    /// Loaded units whose names match the glob `pattern`, running or not.
    pub async fn list(&self, pattern: &str) -> Result<Vec<String>, SystemdError> {
        let out = self
            .call(
                "systemctl",
                &[
                    "list-units",
                    "--all",
                    "--plain",
                    "--no-legend",
                    "--no-pager",
                    "--",
                    pattern,
                ],
            )
            .await?;
        Ok(out
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .find(|w| w.ends_with(".service"))
                    .map(str::to_string)
            })
            .collect())
    }
}

/// The cgroup directory of a unit's process `pid`, for membership: systemd gives every unit
/// its own cgroup in its own hierarchy (v2: the unified one; v1: `name=systemd`).
pub fn unit_cgroup_dir(pid: u32) -> Option<PathBuf> {
    let lines = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    candidates(&lines, Path::new("/sys/fs/cgroup"))
        .into_iter()
        .find(|d| d.join("cgroup.procs").exists())
}

fn candidates(proc_cgroup: &str, root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if id == "0" && ctl.is_empty() {
            out.push(root.join(rel));
            out.push(root.join("unified").join(rel));
        } else if ctl == "name=systemd" {
            out.push(root.join("systemd").join(rel));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_output_parses() {
        let s = UnitState::parse(
            "LoadState=loaded\nActiveState=failed\nSubState=failed\nMainPID=0\nResult=exit-code\nExecMainStatus=3\n",
        );
        assert!(s.is_down() && !s.is_running());
        assert_eq!(s.describe_end(), "exited with status 3");
        let s = UnitState::parse("ActiveState=activating\nSubState=auto-restart\nMainPID=0\n");
        assert!(!s.is_running() && !s.is_down());
        let s = UnitState::parse(
            "LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=42\nResult=success\n",
        );
        assert!(s.is_running());
        assert_eq!(s.main_pid, 42);
        let s = UnitState::parse("LoadState=not-found\nActiveState=inactive\n");
        assert!(s.is_down());
        let s = UnitState::parse("Result=signal\nExecMainStatus=9\nActiveState=failed\n");
        assert_eq!(s.describe_end(), "killed by signal 9 (SIGKILL)");
    }

    #[test]
    fn template_instances_are_named_by_port() {
        assert_eq!(template_instance("web@.service", 8080), "web@8080.service");
        assert_eq!(
            template_instance("web@{port}.service", 8080),
            "web@8080.service"
        );
    }

    #[test]
    fn transient_units_carry_the_spec() {
        let u = TransientUnit {
            description: "rejuv instance i1".into(),
            program: "/usr/bin/app".into(),
            args: vec!["--port".into(), "21000".into()],
            env: vec![("PATH".into(), "/bin".into()), ("A".into(), "b c".into())],
            user: Some("nobody".into()),
            group: None,
            workdir: None,
            log: Some("/var/lib/rejuv/logs/i1.log".into()),
            memory_max: Some(64 << 20),
            stop_timeout: Duration::from_millis(1500),
        };
        let a = u.run_args("rejuv-s1-0-i1.service");
        let pos = |x: &str| {
            a.iter()
                .position(|y| y == x)
                .unwrap_or_else(|| panic!("{x} in {a:?}"))
        };
        assert!(pos("--unit=rejuv-s1-0-i1.service") < pos("--"));
        pos("--property=TimeoutStopSec=1500ms");
        pos("--property=MemoryMax=67108864");
        pos("--property=StandardOutput=append:/var/lib/rejuv/logs/i1.log");
        pos("--uid=nobody");
        pos("--setenv=A=b c");
        assert_eq!(&a[pos("--") + 1..], ["/usr/bin/app", "--port", "21000"]);
    }

    #[test]
    fn cgroup_candidates_per_hierarchy() {
        let v1 = "12:memory:/system.slice/x.service\n1:name=systemd:/system.slice/x.service\n0::/system.slice/x.service\n";
        let c = candidates(v1, Path::new("/r"));
        assert!(c.contains(&PathBuf::from("/r/systemd/system.slice/x.service")));
        assert!(c.contains(&PathBuf::from("/r/unified/system.slice/x.service")));
        assert!(!c.iter().any(|p| p.starts_with("/r/memory")));
    }
}
