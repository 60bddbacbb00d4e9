//! Operator hooks: programs run by the controller before and after workflow steps (see
//! [`rejuv_core::config::HookConfig`]). Each runs in its own process group with a timeout
//! (the whole group is killed when it runs over), no shell, stdin closed; the end of its
//! output goes to the event log.

use rejuv_core::cluster::CommandResult;
use rejuv_core::config::{HookConfig, HookWhen};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Instant;
use tokio::io::AsyncReadExt;

/// Output kept for the event log, from the end.
const OUTPUT_KEPT: usize = 1024;

/// Which workflow step a hook runs for.
#[derive(Debug, Clone)]
pub struct HookCall<'a> {
    pub cluster: &'a str,
    pub workflow: u64,
    pub step: &'a str,
    pub when: HookWhen,
    pub server: &'a str,
    pub target: &'a str,
}

/// Runs `hook` to its end (or its timeout) and says how it went.
pub async fn run(hook: &HookConfig, call: &HookCall<'_>) -> CommandResult {
    let Some((program, args)) = hook.command.split_first() else {
        return CommandResult::Failed {
            error: format!("hook {} has no command", hook.name),
        };
    };
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("REJUV_HOOK", &hook.name)
        .env("REJUV_STEP", call.step)
        .env("REJUV_WHEN", call.when.to_string())
        .env("REJUV_WORKFLOW", call.workflow.to_string())
        .env("REJUV_SERVER", call.server)
        .env("REJUV_TARGET", call.target)
        .env("REJUV_CLUSTER", call.cluster)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return CommandResult::HookRan {
                ok: false,
                detail: format!("could not start {program}: {e}"),
            }
        }
    };
    let pgid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let collect = async {
        let (mut out, err) = tokio::join!(last_bytes(&mut stdout), last_bytes(&mut stderr));
        out.extend_from_slice(&err);
        out
    };
    let waited = tokio::time::timeout(hook.timeout, async {
        let output = collect.await;
        (child.wait().await, output)
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    match waited {
        Err(_) => {
            if let Some(pg) = pgid {
                let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
            }
            CommandResult::HookRan {
                ok: false,
                detail: format!(
                    "timed out after {:?}; its process group was killed",
                    hook.timeout
                ),
            }
        }
        Ok((Err(e), _)) => CommandResult::HookRan {
            ok: false,
            detail: format!("waiting for it failed: {e}"),
        },
        Ok((Ok(status), output)) => {
            let text = tail(&output);
            let how = match (status.code(), status.signal()) {
                (Some(c), _) => format!("exit {c}"),
                (None, Some(s)) => format!("killed by signal {s}"),
                _ => "ended".to_string(),
            };
            CommandResult::HookRan {
                ok: status.success(),
                detail: if text.is_empty() {
                    format!("{how} in {secs:.1}s")
                } else {
                    format!("{how} in {secs:.1}s: {text}")
                },
            }
        }
    }
}

/// Reads `r` to its end, keeping only its last [`OUTPUT_KEPT`] bytes (a hook that prints
/// without end costs no memory).
async fn last_bytes(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut kept = std::collections::VecDeque::with_capacity(OUTPUT_KEPT);
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend(&buf[..n]);
        let over = kept.len().saturating_sub(OUTPUT_KEPT);
        kept.drain(..over);
    }
    kept.into()
}

/// The last [`OUTPUT_KEPT`] bytes of `output` as one line of text, control characters escaped.
fn tail(output: &[u8]) -> String {
    let from = output.len().saturating_sub(OUTPUT_KEPT);
    let line = String::from_utf8_lossy(&output[from..])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    rejuv_core::text::escape_control(&line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hook(command: &[&str], timeout_ms: u64) -> HookConfig {
        HookConfig {
            name: "t".into(),
            step: "rejoin".into(),
            when: HookWhen::Before,
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_millis(timeout_ms),
            veto: true,
        }
    }

    fn call() -> HookCall<'static> {
        HookCall {
            cluster: "c",
            workflow: 7,
            step: "rejoin",
            when: HookWhen::Before,
            server: "s1",
            target: "s2",
        }
    }

    #[tokio::test]
    async fn a_hook_sees_its_step_and_its_output_is_kept() {
        let r = run(
            &hook(&["/bin/sh", "-c", "echo \"$REJUV_WHEN $REJUV_STEP $REJUV_SERVER $REJUV_WORKFLOW\"; echo oops >&2; exit 3"], 5000),
            &call(),
        )
        .await;
        match r {
            CommandResult::HookRan { ok, detail } => {
                assert!(!ok);
                assert!(detail.starts_with("exit 3 in "), "{detail}");
                assert!(detail.contains("before rejoin s1 7"), "{detail}");
                assert!(detail.contains("oops"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_hook_that_runs_over_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let r = run(&hook(&["/bin/sh", "-c", &script], 300), &call()).await;
        match r {
            CommandResult::HookRan { ok, detail } => {
                assert!(!ok);
                assert!(detail.contains("timed out"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild was in the hook's process group: it is gone (or a zombie being
        // reaped by init) shortly after the kill.
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            if stat.is_empty() || state == Some("Z") {
                break;
            }
            assert!(
                Instant::now() < until,
                "the hook's child {pid} still runs: {stat}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_missing_program_is_a_failure_that_says_so() {
        let r = run(&hook(&["/nonexistent/smoke"], 1000), &call()).await;
        assert!(
            matches!(&r, CommandResult::HookRan { ok: false, detail } if detail.contains("could not start /nonexistent/smoke")),
            "{r:?}"
        );
    }
}
