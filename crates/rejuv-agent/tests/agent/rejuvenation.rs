//! Rejuvenation actions: scratch safety, host actions, idempotency, restart-agent.

use crate::common::*;
use rejuv_core::api::{ActionOutcome, RejuvenationReport};
use rejuv_core::config::Action;
use reqwest::StatusCode;
use std::os::unix::fs::symlink;

fn report(a: &Answer) -> RejuvenationReport {
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    serde_json::from_value(a.body.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_scratch_removes_contents_and_links_but_never_their_targets() {
    let h = Harness::new();
    let root = h.path("scratch-root");
    let scratch = root.join("cache");
    std::fs::create_dir_all(scratch.join("sub/deeper")).unwrap();
    std::fs::write(scratch.join("sub/deeper/blob"), vec![7u8; 4096]).unwrap();
    std::fs::write(scratch.join("top.tmp"), "x").unwrap();
    let outside = h.path("precious");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), "keep me").unwrap();
    symlink(&outside, scratch.join("link-to-precious-dir")).unwrap();
    symlink(outside.join("victim"), scratch.join("sub/link-to-victim")).unwrap();

    let mut config = h.config();
    config.agent.allowed_roots = vec![root.clone()];
    config.agent.scratch_dirs = vec![scratch.clone(), root.join("not-there-yet")];
    let agent = h.start(config).await;
    let r = report(&agent.rejuvenate("clear-1", &["clear-scratch"], 1).await);
    assert_eq!(r.actions.len(), 1);
    let a = &r.actions[0];
    assert_eq!(a.outcome, ActionOutcome::Done, "{}", a.detail);
    // sub, sub/deeper, sub/deeper/blob, sub/link-to-victim, top.tmp, link-to-precious-dir
    assert!(a.detail.starts_with("6 entries removed"), "{}", a.detail);
    assert!(a.detail.contains("absent"), "{}", a.detail);
    assert!(scratch.is_dir(), "the scratch dir itself stays");
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_to_string(outside.join("victim")).unwrap(),
        "keep me"
    );
    agent.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_dirs_outside_the_roots_or_behind_symlinks_are_refused() {
    let h = Harness::new();
    let root = h.path("scratch-root");
    std::fs::create_dir_all(&root).unwrap();
    let outside = h.path("precious");
    std::fs::create_dir_all(outside.join("inner")).unwrap();
    std::fs::write(outside.join("victim"), "keep me").unwrap();
    std::fs::write(outside.join("inner/victim"), "keep me too").unwrap();
    // Inside the root by name, elsewhere in fact.
    symlink(&outside, root.join("cache")).unwrap();
    symlink(&outside, root.join("via")).unwrap();

    let cases = [
        (outside.clone(), "outside"), // config validation would catch it; the agent checks again
        (root.join("cache"), "symlink"), // the scratch dir is a symlink
        (root.join("via/inner"), "symlink"), // an ancestor is a symlink
    ];
    for (i, (dir, why)) in cases.iter().enumerate() {
        let mut config = h.config();
        config.agent.allowed_roots = vec![root.clone()];
        config.agent.scratch_dirs = vec![dir.clone()];
        let agent = h.start(config).await;
        let origin = agent.state().await.running_since_ms;
        let r = report(
            &agent
                .rejuvenate(&format!("bad-{i}"), &["clear-scratch", "drop-caches"], 1)
                .await,
        );
        let a = &r.actions[0];
        assert_eq!(
            a.outcome,
            ActionOutcome::Failed,
            "{}: {}",
            dir.display(),
            a.detail
        );
        assert!(
            a.detail.contains(why) && a.detail.contains("refused"),
            "{}: {}",
            dir.display(),
            a.detail
        );
        assert_eq!(
            r.actions[1].outcome,
            ActionOutcome::Skipped,
            "nothing runs after a failure"
        );
        assert!(
            r.actions[1].detail.contains("clear-scratch failed"),
            "{}",
            r.actions[1].detail
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).unwrap(),
            "keep me"
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("inner/victim")).unwrap(),
            "keep me too"
        );
        assert!(root.join("cache").is_symlink());
        // A failed run does not reset the running time.
        assert_eq!(agent.state().await.running_since_ms, origin);
        agent.shut_down().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_id_is_carried_out_once() {
    let h = Harness::new();
    let root = h.path("scratch-root");
    let scratch = root.join("tmp");
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::write(scratch.join("a"), "1").unwrap();
    let mut config = h.config();
    config.agent.allowed_roots = vec![root.clone()];
    config.agent.scratch_dirs = vec![scratch.clone()];
    let agent = h.start(config.clone()).await;
    agent.put_instance("web-1", "web", 2).await.instance();
    agent.wait_running("web-1").await;

    let first = report(
        &agent
            .rejuvenate("run-42", &["stop-instances", "clear-scratch"], 2)
            .await,
    );
    assert!(first.failed().is_none(), "{first:?}");
    assert!(
        first.actions[0].detail.contains("stopped 1"),
        "{}",
        first.actions[0].detail
    );
    assert!(agent.state().await.instances.is_empty());
    let state = agent.state().await;
    assert_eq!(
        state.running_since_ms, first.finished_at_ms,
        "a completed run resets the running time"
    );
    assert_eq!(state.last_rejuvenation.as_ref(), Some(&first));

    // New work appears; the same run id again must not touch it.
    std::fs::write(scratch.join("b"), "2").unwrap();
    agent.put_instance("web-2", "web", 2).await.instance();
    let again = report(
        &agent
            .rejuvenate("run-42", &["stop-instances", "clear-scratch"], 2)
            .await,
    );
    assert_eq!(again, first);
    assert!(
        scratch.join("b").exists(),
        "a replayed run id ran clear-scratch again"
    );
    assert!(
        agent.instance("web-2").await.is_some(),
        "a replayed run id stopped instances again"
    );
    agent.shut_down().await;

    // Replays survive an agent restart too.
    let agent = h.start(config).await;
    let after = report(&agent.rejuvenate("run-42", &["clear-scratch"], 2).await);
    assert_eq!(after, first);
    assert!(scratch.join("b").exists());
    agent.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_reports_carry_the_hosts_boot_identity() {
    let h = Harness::new();
    let agent = h.start(h.config()).await;
    let boot = agent.state().await.boot_id;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert!(
        boot.starts_with(kernel.trim()),
        "{boot} is not of this boot"
    );
    let r = report(&agent.rejuvenate("b1", &["stop-instances"], 1).await);
    assert_eq!(r.boot_id.as_deref(), Some(boot.as_str()));
    agent.shut_down().await;
    // The same host: the running time is not started again by an agent restart.
    let agent = h.start(h.config()).await;
    let st = agent.state().await;
    assert_eq!(st.boot_id, boot);
    assert_eq!(st.running_since_ms, r.finished_at_ms);
    agent.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_actions_run_only_where_enabled_and_keep_stderr() {
    let h = Harness::new();
    let agent = h.start(h.config()).await;
    let r = report(
        &agent
            .rejuvenate("h1", &["drop-caches", "compact-memory", "restart-host"], 1)
            .await,
    );
    for a in &r.actions {
        assert_eq!(a.outcome, ActionOutcome::Skipped, "{a:?}");
        assert!(a.detail.contains("host_actions"), "{}", a.detail);
    }
    agent.shut_down().await;

    let mut config = h.config();
    config.agent.host_actions = true;
    config.agent.restart_command = vec![
        "/bin/sh".into(),
        "-c".into(),
        "echo 'reboot: permission denied' >&2; exit 4".into(),
    ];
    let agent = h.start(config).await;
    // compact-memory writes /proc/sys/vm/compact_memory (harmless; needs root).
    let r = report(
        &agent
            .rejuvenate(
                "h2",
                &["compact-memory", "restart-host", "stop-instances"],
                1,
            )
            .await,
    );
    let is_root = nix::unistd::Uid::effective().is_root();
    let want = if is_root {
        ActionOutcome::Done
    } else {
        ActionOutcome::Failed
    };
    assert_eq!(r.actions[0].outcome, want, "{}", r.actions[0].detail);
    if is_root {
        let a = &r.actions[1];
        assert_eq!(
            (a.action, a.outcome),
            (Action::RestartHost, ActionOutcome::Failed)
        );
        assert!(
            a.detail.contains("reboot: permission denied") && a.detail.contains('4'),
            "{}",
            a.detail
        );
        assert_eq!(r.actions[2].outcome, ActionOutcome::Skipped);
    }
    agent.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_agent_stops_instances_resets_running_time_and_returns_restart() {
    let h = Harness::new();
    let mut agent = h.start(h.config()).await;
    let st = agent.put_instance("web-1", "web", 3).await.instance();
    agent.wait_running("web-1").await;
    let before = agent.state().await.running_since_ms;
    // Make sure a reset is visible in milliseconds.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;

    let r = report(&agent.rejuvenate("restart-1", &["restart-agent"], 3).await);
    assert_eq!(
        r.actions[0].outcome,
        ActionOutcome::Done,
        "{}",
        r.actions[0].detail
    );
    // run() returns Restart by itself, after the answer above was written.
    let exit = agent.join().await.unwrap();
    assert_eq!(exit, rejuv_agent::Exit::Restart);
    assert!(
        !alive(st.pid.unwrap() as i32),
        "instances are stopped before the agent restarts"
    );
    assert!(tagged_pids(&h.tag).is_empty());

    // The new running-time origin is on disk: the re-executed agent reports it.
    let agent = h.start(h.config()).await;
    let state = agent.state().await;
    assert!(
        state.running_since_ms > before,
        "running time was not reset"
    );
    assert_eq!(state.running_since_ms, r.finished_at_ms);
    assert!(state.instances.is_empty());
    assert_eq!(state.epoch, 3);
    // Replaying the run id does not restart the agent again.
    let again = report(&agent.rejuvenate("restart-1", &["restart-agent"], 3).await);
    assert_eq!(again, r);
    // Had the replay run restart-agent, run() would now return Restart.
    assert_eq!(agent.shut_down().await, rejuv_agent::Exit::Shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejuvenate_request_with_too_many_actions_is_refused() {
    let h = Harness::new();
    let agent = h.start(h.config()).await;
    // 110,000 actions (1.6 MB): answered 413 from the announced length, before the body is
    // read (so the test sends its start only, and reads the answer).
    let body = serde_json::json!({
        "epoch": 2, "run_id": "run-big", "actions": vec!["drop-caches"; 110_000]
    })
    .to_string();
    let addr = agent.url.trim_start_matches("http://").to_string();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            c,
            "POST /v1/rejuvenate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        let _ = c.write_all(&body.as_bytes()[..100_000]);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.windows(17).any(|w| w == b"at most 65536 byt") {
                break;
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("at most 65536 bytes"), "{answer}");
    let some = vec!["drop-caches"; 40];
    let a = agent.rejuvenate("run-40", &some, 2).await;
    assert_eq!(a.status, 400);
    assert!(a.error().contains("at most 32"), "{}", a.error());
    let a = agent
        .rejuvenate(&"r".repeat(200), &["drop-caches"], 2)
        .await;
    assert_eq!(a.status, 400);
    assert!(a.error().contains("run_id"), "{}", a.error());
    let st = agent.state().await;
    assert!(st.last_rejuvenation.is_none(), "nothing was run or kept");
    assert_eq!(st.epoch, 0, "a refused request does not move the fence");
    let state_file = std::fs::metadata(h.data_dir().join("agent-state.json"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(state_file < 4096, "state file of {state_file} bytes");
    agent.shut_down().await;
}
