//! A container's life: start labelled, seen on the host, listed, stopped with a grace period,
//! removed; idempotent start by name; limits; failures that must say what happened.

use crate::common::{alive, eventually, within, Harness, TEST_LABEL};
use rejuv_agent::docker::{cgroup_dir, DockerError, ExitReason, LABEL_INSTANCE};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_labelled_container_runs_on_the_host_is_listed_and_stops_on_sigterm() {
    let h = Harness::new().await;
    within(LIMIT, "start, list, stop", async {
        let image = h.sleep_image().await;
        let mut spec = h.spec("i1", &image);
        spec.args = vec!["1000".into()];
        // docker-init as PID 1 passes SIGTERM on to sleep, which dies of it.
        spec.init = true;
        let c = h.docker.create_and_start(&spec).await.unwrap();
        assert_eq!(c.name, spec.name);
        assert!(
            alive(c.pid),
            "pid {} is not alive in the host's /proc",
            c.pid
        );

        let dir = cgroup_dir(c.pid).expect("the container's cgroup dir");
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        let pids: Vec<u32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
        assert!(pids.contains(&c.pid), "{pids:?} lacks {}", c.pid);
        assert!(pids.len() >= 2, "init and sleep: {pids:?}");

        let test = format!("{TEST_LABEL}={}", h.id);
        let listed = h
            .docker
            .list_labelled(&[&test, &format!("{LABEL_INSTANCE}=i1")])
            .await
            .unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].id, c.id);
        assert_eq!(listed[0].name, spec.name);
        assert!(listed[0].running);
        assert_eq!(
            listed[0].labels.get(LABEL_INSTANCE).map(String::as_str),
            Some("i1")
        );
        let state = h.docker.inspect(&c.id).await.unwrap().unwrap();
        assert!(state.running);
        assert_eq!(state.pid, Some(c.pid));

        let waiter = {
            let (docker, id) = (h.docker.clone(), c.id.clone());
            tokio::spawn(async move { docker.wait(&id).await })
        };
        let started = Instant::now();
        h.docker
            .stop_and_remove(&c.id, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a container that obeys SIGTERM waited out its grace: {:?}",
            started.elapsed()
        );
        let reason = waiter.await.unwrap().unwrap();
        assert_eq!(reason, ExitReason::Signalled(15), "{reason}");
        assert!(h.docker.inspect(&c.id).await.unwrap().is_none());
        assert!(h.docker.list_labelled(&[&test]).await.unwrap().is_empty());
        eventually(Duration::from_secs(10), "the init process gone", || {
            !alive(c.pid)
        })
        .await;
        // Gone already is fine.
        h.docker
            .stop_and_remove(&c.id, Duration::from_secs(1))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_container_that_ignores_sigterm_is_killed_after_the_grace() {
    let h = Harness::new().await;
    within(LIMIT, "stop with grace", async {
        let image = h.sleep_image().await;
        let mut spec = h.spec("stubborn", &image);
        // sleep as PID 1 has no SIGTERM handler: the kernel drops the signal.
        spec.args = vec!["1000".into()];
        let c = h.docker.create_and_start(&spec).await.unwrap();
        let waiter = {
            let (docker, id) = (h.docker.clone(), c.id.clone());
            tokio::spawn(async move { docker.wait(&id).await })
        };
        let grace = Duration::from_secs(2);
        let started = Instant::now();
        h.docker.stop_and_remove(&c.id, grace).await.unwrap();
        let took = started.elapsed();
        assert!(took >= grace, "killed before its grace ended: {took:?}");
        assert!(took < grace + Duration::from_secs(15), "took {took:?}");
        let reason = waiter.await.unwrap().unwrap();
        assert_eq!(reason, ExitReason::Signalled(9), "{reason}");
        assert_eq!(reason.to_string(), "killed by signal 9 (SIGKILL)");
        assert!(h.docker.inspect(&spec.name).await.unwrap().is_none());
        eventually(Duration::from_secs(10), "the process gone", || {
            !alive(c.pid)
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn start_is_idempotent_by_name() {
    let h = Harness::new().await;
    within(LIMIT, "idempotent start", async {
        let image = h.sleep_image().await;
        let mut spec = h.spec("idem", &image);
        spec.args = vec!["1000".into()];
        let first = h.docker.create_and_start(&spec).await.unwrap();
        let again = h.docker.create_and_start(&spec).await.unwrap();
        assert_eq!(first, again, "a running container is returned as it is");

        let mut other = spec.clone();
        other
            .labels
            .insert(LABEL_INSTANCE.to_string(), "someone-else".to_string());
        match h.docker.create_and_start(&other).await {
            Err(DockerError::NameTaken { name }) => assert_eq!(name, spec.name),
            r => panic!("a container with other labels must not be touched: {r:?}"),
        }
        assert!(h.docker.inspect(&first.id).await.unwrap().unwrap().running);
        h.docker
            .stop_and_remove(&first.id, Duration::ZERO)
            .await
            .unwrap();

        // One that ended on its own is replaced.
        spec.args = vec!["1".into()];
        let short = h.docker.create_and_start(&spec).await.unwrap();
        let reason = h.docker.wait(&short.id).await.unwrap();
        assert_eq!(reason, ExitReason::Exited(0), "{reason}");
        assert_eq!(reason.to_string(), "exited with status 0");
        let stopped = h.docker.inspect(&short.id).await.unwrap().unwrap();
        assert!(!stopped.running);
        assert_eq!(stopped.exit_code, Some(0));
        spec.args = vec!["1000".into()];
        let renewed = h.docker.create_and_start(&spec).await.unwrap();
        assert_ne!(renewed.id, short.id);
        assert!(h.docker.inspect(&short.id).await.unwrap().is_none());
        assert!(alive(renewed.pid));
        h.docker
            .stop_and_remove(&renewed.id, Duration::ZERO)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_memory_limit_is_applied() {
    let h = Harness::new().await;
    within(LIMIT, "memory limit", async {
        let image = h.sleep_image().await;
        let mut spec = h.spec("mem", &image);
        spec.args = vec!["1000".into()];
        spec.memory_limit = Some(64 << 20);
        let c = h.docker.create_and_start(&spec).await.unwrap();
        let state = h.docker.inspect(&c.id).await.unwrap().unwrap();
        assert_eq!(state.memory_limit, Some(64 << 20));
        let dir = cgroup_dir(c.pid).unwrap();
        let in_kernel = ["memory.limit_in_bytes", "memory.max"]
            .iter()
            .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
            .expect("a memory limit file in the container's cgroup");
        assert_eq!(in_kernel.trim(), (64u64 << 20).to_string());
        h.docker
            .stop_and_remove(&c.id, Duration::ZERO)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_container_that_exits_at_once_says_why() {
    let h = Harness::new().await;
    within(LIMIT, "exit at start", async {
        let image = h.sleep_image().await;
        let mut spec = h.spec("bad-args", &image);
        spec.args = vec!["not-a-number".into()];
        match h.docker.create_and_start(&spec).await {
            Err(DockerError::ExitedAtStart { reason, logs, .. }) => {
                assert_eq!(reason, ExitReason::Exited(1));
                assert!(logs.contains("invalid time interval"), "{logs}");
                assert!(h.docker.inspect(&spec.name).await.unwrap().is_none());
            }
            // It may still be running when first inspected.
            Ok(c) => assert_eq!(h.docker.wait(&c.id).await.unwrap(), ExitReason::Exited(1)),
            Err(e) => panic!("{e:#}"),
        }
    })
    .await;
}

#[tokio::test]
async fn errors_name_what_is_missing() {
    let h = Harness::new().await;
    within(LIMIT, "missing things", async {
        let name = format!("rejuv-test-no-such-image-{}:0", h.id);
        let spec = h.spec("noimg", &name);
        match h.docker.create_and_start(&spec).await {
            Err(e @ DockerError::ImageMissing { .. }) => {
                assert!(e.to_string().contains(&name), "{e}")
            }
            r => panic!("expected ImageMissing, got {r:?}"),
        }
        let gone = format!("{}-never-was", h.id);
        assert_eq!(h.docker.wait(&gone).await.unwrap(), ExitReason::Removed);
        assert!(h.docker.inspect(&gone).await.unwrap().is_none());
        h.docker
            .stop_and_remove(&gone, Duration::from_secs(1))
            .await
            .unwrap();
    })
    .await;
}
