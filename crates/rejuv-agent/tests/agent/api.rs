//! Authentication, validation, epoch fencing, hand-off proxying, metrics, persisted state.

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_token_are_refused_and_change_nothing() {
    let h = Harness::new();
    let agent = h.start(h.config()).await;
    let start = json!({ "epoch": 9, "service": "web" });
    for token in [None, Some("wrong"), Some("test-token-012345678"), Some("")] {
        let a = agent
            .send(
                Method::PUT,
                "/v1/instances/web-1",
                Some(start.clone()),
                token,
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::UNAUTHORIZED,
            "token {token:?}: {}",
            a.body
        );
        assert!(
            !a.error().is_empty(),
            "401 must carry an ApiError: {}",
            a.body
        );
        let r = json!({ "epoch": 9, "run_id": "r1", "actions": ["stop-instances"] });
        let a = agent
            .send(Method::POST, "/v1/rejuvenate", Some(r), token)
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        for path in ["/v1/state", "/metrics", "/v1/instances/web-1/state"] {
            assert_eq!(
                agent.send(Method::GET, path, None, token).await.status,
                StatusCode::UNAUTHORIZED,
                "{path}"
            );
        }
    }
    // The scheme is case-insensitive.
    let lower = agent
        .client
        .get(format!("{}/v1/state", agent.url))
        .header("authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), StatusCode::OK);
    // /healthz needs none.
    assert_eq!(
        agent.send(Method::GET, "/healthz", None, None).await.status,
        StatusCode::OK
    );
    // Nothing was done: no instance, no process, the epoch untouched, no report.
    let state = agent.state().await;
    assert!(state.instances.is_empty());
    assert_eq!(state.epoch, 0);
    assert!(state.last_rejuvenation.is_none());
    assert!(tagged_pids(&h.tag).is_empty());
    agent.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_is_a_400_and_starts_nothing() {
    let h = Harness::new();
    let agent = h.start(h.config()).await;
    let a = agent.put_instance("x-1", "no-such-service", 3).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("no-such-service"), "{}", a.error());
    let bad_id = agent.put_instance("../escape", "web", 3).await;
    assert!(
        bad_id.status.is_client_error(),
        "{} {}",
        bad_id.status,
        bad_id.body
    );
    let garbage = agent
        .send(
            Method::PUT,
            "/v1/instances/x-1",
            Some(json!({"service": 1})),
            Some(TOKEN),
        )
        .await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
    assert!(!garbage.error().is_empty());
    let state = agent.state().await;
    assert!(state.instances.is_empty());
    assert_eq!(state.epoch, 0, "a refused request must not move the epoch");
    agent.shut_down().await;

    // A catalog entry whose program is missing: a start error naming it, not a crash loop.
    let mut config = h.config();
    config.services.get_mut("plain").unwrap().command = Some("/nonexistent/bin/service".into());
    let agent = h.start(config).await;
    let a = agent.put_instance("p-1", "plain", 3).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", a.body);
    assert!(
        a.error().contains("/nonexistent/bin/service"),
        "{}",
        a.error()
    );
    assert!(agent.state().await.instances.is_empty());
    assert!(tagged_pids(&h.tag).is_empty());
    assert!(!h.data_dir().join("logs/x-1.log").exists());
    agent.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epochs_are_refused_and_the_fence_survives_a_restart() {
    let h = Harness::new();
    let agent = h.start(h.config()).await;
    agent.put_instance("web-1", "web", 5).await.instance();
    let pid = agent.wait_running("web-1").await.pid.unwrap() as i32;

    let stale = agent.delete_instance("web-1", 4).await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert!(
        stale.error().contains('4') && stale.error().contains('5'),
        "{}",
        stale.error()
    );
    assert!(alive(pid), "a fenced request must do nothing");
    let stale = agent.rejuvenate("r-old", &["stop-instances"], 3).await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.body);
    assert!(alive(pid));
    let stale = agent.put_instance("web-2", "web", 2).await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    let stale = agent
        .send(
            Method::PUT,
            "/v1/instances/web-1/state?epoch=1",
            None,
            Some(TOKEN),
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    let missing = agent
        .send(Method::DELETE, "/v1/instances/web-1", None, Some(TOKEN))
        .await;
    assert_eq!(
        missing.status,
        StatusCode::BAD_REQUEST,
        "DELETE without an epoch"
    );

    // A higher epoch is accepted and persisted.
    agent.delete_instance("web-1", 7).await.instance();
    assert_eq!(agent.state().await.epoch, 7);
    agent.shut_down().await;

    let agent = h.start(h.config()).await;
    assert_eq!(agent.state().await.epoch, 7);
    assert_eq!(
        agent.put_instance("web-3", "web", 6).await.status,
        StatusCode::CONFLICT
    );
    assert!(agent.state().await.instances.is_empty());
    agent.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_hand_off_is_proxied() {
    let h = Harness::new();
    let agent = h.start(h.config()).await;
    let old = agent.put_instance("web-old", "web", 1).await.instance();
    agent.put_instance("web-new", "web", 1).await.instance();
    agent.put_instance("plain-1", "plain", 1).await.instance();
    agent.wait_running("web-old").await;
    agent.wait_running("web-new").await;
    agent.wait_running("plain-1").await;

    // Give the old instance some state directly, then move it through the agent.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let payload = "counter=41;\u{e9}t\u{e9}".as_bytes().to_vec();
    let r = client
        .put(format!("http://{}/state", old.addr.unwrap()))
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let exported = agent
        .client
        .get(format!("{}/v1/instances/web-old/state", agent.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(exported.status(), StatusCode::OK);
    let bytes = exported.bytes().await.unwrap();
    assert_eq!(bytes.as_ref(), payload.as_slice());
    let imported = agent
        .client
        .put(format!("{}/v1/instances/web-new/state?epoch=1", agent.url))
        .bearer_auth(TOKEN)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(imported.status(), StatusCode::NO_CONTENT);
    let new = agent.instance("web-new").await.unwrap();
    let direct = client
        .get(format!("http://{}/state", new.addr.unwrap()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        direct.as_ref(),
        payload.as_slice(),
        "the new instance holds the moved state"
    );

    // A service without hand-off, and an unknown instance.
    let a = agent
        .send(
            Method::GET,
            "/v1/instances/plain-1/state",
            None,
            Some(TOKEN),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("hand-off"), "{}", a.error());
    let a = agent
        .send(
            Method::PUT,
            "/v1/instances/plain-1/state?epoch=1",
            None,
            Some(TOKEN),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = agent
        .send(Method::GET, "/v1/instances/nobody/state", None, Some(TOKEN))
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    agent.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_declared_metric_is_exported_and_set() {
    let h = Harness::new();
    let agent = h.start(h.config()).await;
    agent.put_instance("web-1", "web", 1).await.instance();
    agent.wait_running("web-1").await;
    assert_eq!(
        agent.rejuvenate("m1", &["drop-caches"], 1).await.status,
        StatusCode::OK
    );
    let text = wait_for(
        "metrics showing the running instance",
        std::time::Duration::from_secs(10),
        || async {
            let m = agent.send(Method::GET, "/metrics", None, Some(TOKEN)).await;
            let t = m.body.as_str().unwrap_or_default().to_string();
            t.contains("rejuv_agent_instances{state=\"running\"} 1")
                .then_some(t)
        },
    )
    .await;
    let value = |prefix: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("rejuv_agent_collection_seconds ") > 0.0);
    assert!(value("rejuv_agent_load1 ") >= 0.0);
    assert!(value("rejuv_agent_mem_used_bytes ") > 0.0);
    assert!(value("rejuv_agent_running_time_seconds ") >= 0.0);
    assert!(value("rejuv_agent_instance_rss_bytes{instance=\"web-1\"} ") > 0.0);
    assert_eq!(value("rejuv_agent_crashes_total "), 0.0);
    assert_eq!(
        value("rejuv_agent_rejuvenations_total{outcome=\"completed\"} "),
        1.0
    );
    // The host-wide sample is there as well.
    let s = agent.state().await.sample;
    assert!(
        s.mem_total_bytes > 0
            && s.mem_available_bytes > 0
            && s.max_fds > 0
            && s.threads > 0
            && s.open_fds > 0
    );
    let i = &s.instances["web-1"];
    assert!(
        i.processes == 1 && i.rss_bytes > 0 && i.fds > 0 && i.threads >= 1 && i.healthy,
        "{i:?}"
    );
    assert!(i.health_latency_ms.is_some());
    agent.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_a_clear_error() {
    let h = Harness::new();
    let agent = h.start(h.config()).await;
    agent.put_instance("web-1", "web", 4).await.instance();
    agent.shut_down().await;
    let path = h.data_dir().join("agent-state.json");
    let good = std::fs::read_to_string(&path).unwrap();
    assert!(
        good.contains("\"version\"") && good.contains("fnv1a64:"),
        "{good}"
    );

    // Tampered: the epoch lowered by hand.
    std::fs::write(&path, good.replace("\"epoch\": 4", "\"epoch\": 0")).unwrap();
    let e = format!(
        "{:#}",
        h.try_start(h.config())
            .await
            .err()
            .expect("must refuse a tampered file")
    );
    assert!(
        e.contains("corrupt") && e.contains("checksum") && e.contains("agent-state.json"),
        "{e}"
    );
    // Truncated.
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let e = format!(
        "{:#}",
        h.try_start(h.config())
            .await
            .err()
            .expect("must refuse a torn file")
    );
    assert!(e.contains("corrupt"), "{e}");
    // The refused file is left as it was for the operator to inspect.
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        &good[..good.len() / 2]
    );
    // Restored, the agent starts with its fence intact.
    std::fs::write(&path, &good).unwrap();
    let agent = h.start(h.config()).await;
    assert_eq!(agent.state().await.epoch, 4);
    agent.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_samples_are_served_oldest_first_after_a_time() {
    let h = Harness::new();
    let agent = h.start(h.config()).await;
    let samples = wait_for(
        "three kept samples",
        std::time::Duration::from_secs(20),
        || async {
            let a = agent
                .send(Method::GET, "/v1/samples", None, Some(TOKEN))
                .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            let v = a.body.as_array().cloned().unwrap_or_default();
            (v.len() >= 3).then_some(v)
        },
    )
    .await;
    let times: Vec<u64> = samples
        .iter()
        .map(|s| s["taken_at_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    let after = times[times.len() - 2];
    let a = agent
        .send(
            Method::GET,
            &format!("/v1/samples?after_ms={after}"),
            None,
            Some(TOKEN),
        )
        .await;
    let newer: Vec<u64> = a
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["taken_at_ms"].as_u64().unwrap())
        .collect();
    assert!(
        !newer.is_empty() && newer.iter().all(|t| *t > after),
        "{newer:?}"
    );
    let bad = agent
        .send(
            Method::GET,
            "/v1/samples?after_ms=yesterday",
            None,
            Some(TOKEN),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    let anon = agent.send(Method::GET, "/v1/samples", None, None).await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
    agent.shut_down().await;
}
