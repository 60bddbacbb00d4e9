//! What an instance gets from its agent (issue 16 item 6): only its own environment and a
//! standard PATH, never the agent's (which holds its secrets); the user and group its service
//! names; and health checks beyond HTTP (a TCP connect, a command).

use crate::common::*;
use std::time::Duration;

/// The environment of a live process, `KEY=VALUE` each.
fn environ(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Real uid of a live process.
fn uid_of(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_do_not_inherit_the_agents_environment() {
    // A variable only the agent's process has: were the environment inherited, the service
    // would see it (the agent's token file path, its credentials, travel the same way).
    std::env::set_var("REJUV_AGENT_ONLY_SECRET", "hunter2");
    let h = Harness::new();
    let agent = h.start(h.config()).await;
    let pid = agent
        .put_instance("web-1", "web", 1)
        .await
        .instance()
        .pid
        .unwrap() as i32;
    agent.wait_running("web-1").await;
    let env = environ(pid);
    assert!(
        !env.iter()
            .any(|v| v.starts_with("REJUV_AGENT_ONLY_SECRET=")),
        "the agent's environment leaked: {env:?}"
    );
    assert!(
        env.iter()
            .any(|v| v == &format!("REJUV_TEST_TAG={}", h.tag)),
        "{env:?}"
    );
    assert!(
        env.iter().any(|v| v.starts_with("PATH=/usr/local/sbin:")),
        "{env:?}"
    );
    // A shell in the service's command line adds its own PWD; nothing else may be there.
    let others: Vec<&String> = env
        .iter()
        .filter(|v| {
            ["PATH=", "PWD=", "REJUV_TEST_TAG="]
                .iter()
                .all(|k| !v.starts_with(k))
        })
        .collect();
    assert!(
        others.is_empty(),
        "only PATH and the service's own env: {env:?}"
    );
    agent.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_runs_as_its_services_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let h = Harness::new();
    let mut config = h.config();
    let svc = config.services.get_mut("plain").unwrap();
    svc.user = Some("nobody".into());
    let agent = h.start(config).await;
    let pid = agent
        .put_instance("p-1", "plain", 1)
        .await
        .instance()
        .pid
        .unwrap() as i32;
    agent.wait_running("p-1").await;
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    assert_eq!(uid_of(pid), nobody);
    // As nobody, the agent's state file (0600, in a 0700 directory, root's) cannot be read.
    let state = h.data_dir().join("agent-state.json");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o600);
        assert_eq!(mode(&h.data_dir()), 0o700);
        assert_eq!(mode(&h.data_dir().join("logs")), 0o700);
    }
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            &nobody.to_string(),
            "--regid",
            &nobody.to_string(),
            "--clear-groups",
            "cat",
        ])
        .arg(&state)
        .output();
    if let Ok(out) = out {
        assert!(!out.status.success(), "nobody read the agent's state file");
    }
    agent.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_is_refused_before_the_agent_serves() {
    let h = Harness::new();
    let mut config = h.config();
    config.services.get_mut("plain").unwrap().user = Some("no-such-user-rejuv".into());
    let err = h.try_start(config).await.err().expect("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("services.plain") && text.contains("no user 'no-such-user-rejuv'"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_command_health_checks_judge_an_instance() {
    let h = Harness::new();
    let mut config = h.config();
    let mut tcp = config.services["plain"].clone();
    tcp.health = rejuv_core::config::HealthConfig {
        path: None,
        tcp: true,
        command: vec![],
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
    };
    config.services.insert("tcp".into(), tcp);
    let mut cmd = config.services["plain"].clone();
    // Healthy only once a mark file exists: the check's verdict, not the port's.
    let mark = h.path("marks/healthy-now");
    cmd.health = rejuv_core::config::HealthConfig {
        path: None,
        tcp: false,
        command: vec![
            "/usr/bin/test".into(),
            "-e".into(),
            mark.display().to_string(),
        ],
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
    };
    config.services.insert("cmd".into(), cmd);
    let agent = h.start(config).await;
    agent.put_instance("t-1", "tcp", 1).await;
    assert!(
        agent.wait_running("t-1").await.healthy,
        "a TCP connect is healthy"
    );
    agent.put_instance("c-1", "cmd", 1).await;
    // Listening, but the command says no: once a check has answered (its latency is in a
    // sample), the instance is not healthy.
    wait_for(
        "a health command of c-1 to answer",
        Duration::from_secs(10),
        || async {
            let s = agent.state().await;
            s.sample
                .instances
                .get("c-1")
                .and_then(|i| i.health_latency_ms)
                .map(|_| ())
        },
    )
    .await;
    assert!(!agent.instance("c-1").await.unwrap().healthy);
    std::fs::write(&mark, "").unwrap();
    assert!(
        agent.wait_running("c-1").await.healthy,
        "the command now exits 0"
    );
    agent.shut_down().await;
}
