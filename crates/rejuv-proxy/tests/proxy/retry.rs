//! Retries: requests that never reached a backend, or that a backend did not apply, go to
//! another one; a request that may have been applied is never sent twice.

use crate::support::*;
use rejuv_core::api::BackendState;

#[tokio::test]
async fn a_refused_connection_is_retried_on_the_other_backend() {
    within("connect refused", async {
        let dead = dead_addr().await;
        let b = TestBackend::start("b").await;
        let proxy = TestProxy::start(&["web"]).await;
        proxy
            .apply(&table(
                1,
                "web",
                vec![backend("dead", dead, BackendState::Serving), serving(&b)],
            ))
            .await;
        for i in 0..3 {
            assert_eq!(proxy.get("web", "/").await, (200, "b".to_string()));
            let body = format!("order {i}");
            assert_eq!(
                proxy.post("web", "/echo", &body).await,
                (200, body),
                "POST is safe to retry when it was never sent"
            );
        }
        let status = proxy.status().await;
        let web = &status.services["web"];
        assert_eq!(web.failed_total, 0);
        let dead_status = web.backends.iter().find(|x| x.id == "dead").unwrap();
        assert!(dead_status.errors_total >= 1, "{dead_status:?}");
        assert_eq!(dead_status.in_flight, 0);
        assert_eq!(b.hits(), 6);
    })
    .await;
}

#[tokio::test]
async fn a_not_applied_answer_is_retried_on_another_backend() {
    within("not applied", async {
        let a = TestBackend::start("a").await;
        let b = TestBackend::start("b").await;
        a.not_applied
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let proxy = TestProxy::start(&["web"]).await;
        proxy
            .apply(&table(1, "web", vec![serving(&a), serving(&b)]))
            .await;
        for i in 0..4 {
            let body = format!("transfer {i}");
            assert_eq!(proxy.post("web", "/echo", &body).await, (200, body));
        }
        assert!(a.hits() >= 1, "A was never tried");
        assert_eq!(b.hits(), 4);
        let status = proxy.status().await;
        assert_eq!(status.services["web"].failed_total, 0);
    })
    .await;
}

#[tokio::test]
async fn a_not_applied_answer_waits_for_the_next_backend_to_serve() {
    within("not applied, then switchover", async {
        let a = TestBackend::start("a").await;
        let b = TestBackend::start("b").await;
        a.not_applied
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let proxy = TestProxy::start(&["web"]).await;
        let mut only_a = table(1, "web", vec![serving(&a), draining(&b)]);
        only_a.services.get_mut("web").unwrap().max_hold_ms = 20_000;
        proxy.apply(&only_a).await;
        let request = {
            let client = proxy.client.clone();
            let url = proxy.url("web", "/echo");
            AbortOnDrop(tokio::spawn(async move {
                client
                    .post(url)
                    .body("x")
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            }))
        };
        proxy
            .wait_status("the refused request to wait", |s| {
                s.services["web"].held == 1
            })
            .await;
        assert_eq!(a.hits(), 1);
        proxy
            .apply(&table(2, "web", vec![draining(&a), serving(&b)]))
            .await;
        assert_eq!(request.await.unwrap(), "x");
    })
    .await;
}

#[tokio::test]
async fn a_post_that_failed_after_it_was_sent_is_a_502_and_not_resent() {
    within("POST failed after sending", async {
        let broken = BrokenBackend::start().await;
        let b = TestBackend::start("b").await;
        let proxy = TestProxy::start(&["web"]).await;
        proxy
            .apply(&table(
                1,
                "web",
                vec![
                    backend("broken", broken.addr, BackendState::Serving),
                    serving(&b),
                ],
            ))
            .await;
        // Round robin starts at the first backend.
        let (code, body) = proxy.post("web", "/echo", "pay once").await;
        assert_eq!(code, 502, "{body}");
        assert_eq!(broken.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(
            b.hits(),
            0,
            "a POST that may have been applied was sent again"
        );
        let status = proxy.status().await;
        assert_eq!(status.services["web"].failed_total, 1);
    })
    .await;
}

#[tokio::test]
async fn a_get_that_failed_before_its_answer_is_retried_once() {
    within("GET retried after failure", async {
        let broken = BrokenBackend::start().await;
        let b = TestBackend::start("b").await;
        let proxy = TestProxy::start(&["web"]).await;
        proxy
            .apply(&table(
                1,
                "web",
                vec![
                    backend("broken", broken.addr, BackendState::Serving),
                    serving(&b),
                ],
            ))
            .await;
        for _ in 0..4 {
            assert_eq!(proxy.get("web", "/").await, (200, "b".to_string()));
        }
        assert!(broken.hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);

        // With no other backend, the one retry allowed goes nowhere: 502.
        let broken2 = BrokenBackend::start().await;
        proxy
            .apply(&table(
                2,
                "web",
                vec![
                    backend("broken", broken.addr, BackendState::Serving),
                    backend("broken2", broken2.addr, BackendState::Serving),
                ],
            ))
            .await;
        let before = broken.hits.load(std::sync::atomic::Ordering::SeqCst)
            + broken2.hits.load(std::sync::atomic::Ordering::SeqCst);
        let (code, body) = proxy.get("web", "/").await;
        assert_eq!(code, 502, "{body}");
        let after = broken.hits.load(std::sync::atomic::Ordering::SeqCst)
            + broken2.hits.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(after - before, 2, "a GET is sent at most twice");
    })
    .await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    within("body limit", async {
        let a = TestBackend::start("a").await;
        let proxy = TestProxy::start(&["web"]).await;
        proxy.apply(&table(1, "web", vec![serving(&a)])).await;
        let big = "x".repeat(rejuv_proxy::forward::BODY_LIMIT + 1);
        let (code, _) = proxy.post("web", "/echo", &big).await;
        assert_eq!(code, 413);
        assert_eq!(a.hits(), 0);
        let fits = "y".repeat(rejuv_proxy::forward::BODY_LIMIT);
        let (code, body) = proxy.post("web", "/echo", &fits).await;
        assert_eq!(code, 200);
        assert_eq!(body.len(), fits.len());
    })
    .await;
}
