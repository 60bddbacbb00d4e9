//! Starting, counting, crashing and stopping instances.

use crate::common::*;
use rejuv_core::api::InstanceState;
use reqwest::StatusCode;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_is_idempotent_and_stop_ends_the_process() {
    let h = Harness::new();
    let agent = h.start(h.config()).await;

    let first = agent.put_instance("web-1", "web", 1).await.instance();
    assert_eq!(first.service, "web");
    let pid = first.pid.expect("a pid") as i32;
    let running = agent.wait_running("web-1").await;
    assert!(running.healthy);
    // The same id again: same process, no second one.
    let again = agent.put_instance("web-1", "web", 1).await.instance();
    assert_eq!(again.pid, first.pid);
    assert_eq!(again.addr, first.addr);
    assert_eq!(
        tagged_pids(&h.tag),
        vec![pid],
        "exactly one service process"
    );
    // The same id with another service is a conflict, and changes nothing.
    let conflict = agent.put_instance("web-1", "plain", 1).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT, "{}", conflict.body);
    assert!(
        conflict.error().contains("web") && conflict.error().contains("plain"),
        "{}",
        conflict.error()
    );
    assert_eq!(tagged_pids(&h.tag), vec![pid]);

    // The instance's output goes to its log.
    assert!(h.data_dir().join("logs/web-1.log").exists());

    let stopped = agent.delete_instance("web-1", 1).await.instance();
    assert_eq!(stopped.state, InstanceState::Stopped);
    assert!(!alive(pid), "DELETE answered while the process still lives");
    assert!(tagged_pids(&h.tag).is_empty());
    // Again: idempotent, the id is unknown now.
    let absent = agent.delete_instance("web-1", 1).await.instance();
    assert_eq!(absent.state, InstanceState::Absent);
    assert!(agent.state().await.instances.is_empty());
    assert_eq!(agent.shut_down().await, rejuv_agent::Exit::Shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_of_one_service_get_different_ports() {
    let h = Harness::new();
    // Someone else holds the first port of the range: the agent must skip it.
    let squatter = std::net::TcpListener::bind((h.address, h.port_range[0])).unwrap();
    let agent = h.start(h.config()).await;
    let a = agent.put_instance("web-a", "web", 1).await.instance();
    let b = agent.put_instance("web-b", "web", 1).await.instance();
    let (pa, pb) = (a.addr.unwrap().port(), b.addr.unwrap().port());
    assert_ne!(pa, pb);
    for p in [pa, pb] {
        assert!(
            p > h.port_range[0] && p <= h.port_range[1],
            "port {p} outside range or the held one"
        );
        assert_eq!(a.addr.unwrap().ip(), h.address);
    }
    agent.wait_running("web-a").await;
    agent.wait_running("web-b").await;
    // Each answers on its own port, as its own process.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for s in [&a, &b] {
        let pid: u32 = client
            .get(format!("http://{}/pid", s.addr.unwrap()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(Some(pid), s.pid);
    }
    drop(squatter);
    assert_eq!(agent.shut_down().await, rejuv_agent::Exit::Shutdown);
    assert!(
        tagged_pids(&h.tag).is_empty(),
        "shutdown must stop every instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setsid_children_are_counted_and_stopped() {
    let h = Harness::new();
    let agent = h.start(h.config()).await;
    let st = agent.put_instance("fork-1", "forker", 1).await.instance();
    let root = st.pid.unwrap() as i32;
    agent.wait_running("fork-1").await;
    let direct = wait_for(
        "the setsid child's pid file",
        Duration::from_secs(10),
        || async { read_pid_file(&h.path("marks/fork-1.direct")) },
    )
    .await;
    let orphan = wait_for("the orphan's pid file", Duration::from_secs(10), || async {
        read_pid_file(&h.path("marks/fork-1.orphan"))
    })
    .await;
    assert!(alive(direct) && alive(orphan));
    // The direct child left the group (setsid) but descends from the root; the orphan was
    // reparented away and can only be found through the instance's cgroup.
    let in_cgroup = std::fs::read_to_string(format!("/proc/{root}/cgroup"))
        .unwrap()
        .contains("/rejuv/");
    let expected = if in_cgroup { 3 } else { 2 };
    if !in_cgroup {
        eprintln!("note: no writable cgroup here; the reparented orphan cannot be tracked");
    }
    let sample = wait_for(
        "a sample counting the setsid processes",
        Duration::from_secs(10),
        || async {
            let s = agent.state().await.sample;
            s.instances
                .get("fork-1")
                .filter(|i| i.processes == expected)
                .cloned()
        },
    )
    .await;
    assert!(
        sample.rss_bytes > 0 && sample.threads >= expected && sample.fds > 0,
        "{sample:?}"
    );

    agent.delete_instance("fork-1", 1).await.instance();
    assert!(!alive(root), "root survived");
    assert!(!alive(direct), "the setsid child survived the stop");
    if in_cgroup {
        assert!(
            !alive(orphan),
            "the reparented setsid grandchild survived the stop"
        );
    }
    assert_eq!(agent.shut_down().await, rejuv_agent::Exit::Shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_are_counted_persisted_and_restarted_on_the_same_port() {
    let h = Harness::new();
    let agent = h.start(h.config()).await;
    // The first run exits with status 3; the restart serves.
    let st = agent.put_instance("crashy-1", "crashy", 1).await.instance();
    let port = st.addr.unwrap().port();
    let running = agent.wait_running("crashy-1").await;
    assert_eq!(running.crashes, 1);
    assert_eq!(running.last_exit.as_deref(), Some("exited with status 3"));
    assert_eq!(running.addr.unwrap().port(), port);
    assert_eq!(agent.state().await.crashes_total, 1);

    // Killed from outside: another crash, a new process on the same port.
    let old_pid = running.pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let back = wait_for(
        "the killed instance to be restarted",
        Duration::from_secs(20),
        || async {
            agent
                .instance("crashy-1")
                .await
                .filter(|i| i.crashes == 2 && i.state == InstanceState::Running)
        },
    )
    .await;
    assert_ne!(back.pid, Some(old_pid));
    assert_eq!(back.addr.unwrap().port(), port);
    assert!(back.last_exit.unwrap().contains("SIGKILL"));
    let state = agent.state().await;
    assert_eq!(state.crashes_total, 2);
    let metrics = agent
        .send(reqwest::Method::GET, "/metrics", None, Some(TOKEN))
        .await;
    assert!(
        metrics
            .body
            .as_str()
            .unwrap()
            .contains("rejuv_agent_crashes_total 2"),
        "{}",
        metrics.body
    );

    // A stop asked for is not a crash; the total survives a restart of the agent.
    agent.delete_instance("crashy-1", 1).await.instance();
    assert_eq!(agent.shut_down().await, rejuv_agent::Exit::Shutdown);
    let agent = h.start(h.config()).await;
    assert_eq!(agent.state().await.crashes_total, 2);
    agent.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace() {
    let h = Harness::new();
    let agent = h.start(h.config()).await;
    let st = agent.put_instance("stub-1", "stubborn", 1).await.instance();
    agent.wait_running("stub-1").await;
    let begun = std::time::Instant::now();
    let stopped = agent.delete_instance("stub-1", 1).await.instance();
    let took = begun.elapsed();
    assert_eq!(stopped.state, InstanceState::Stopped);
    assert!(!alive(st.pid.unwrap() as i32));
    // stop_grace is 500 ms: SIGTERM was ignored, SIGKILL came after the grace.
    assert!(
        took >= Duration::from_millis(450),
        "stopped after {took:?}, before the grace ended"
    );
    assert!(stopped.last_exit.unwrap_or_default().contains("SIGKILL"));
    agent.shut_down().await;
}
