//! Holding requests: while a service is on hold, or has no serving backend, requests wait (up
//! to `max_hold_ms`) instead of failing.

use crate::support::*;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test]
async fn a_held_request_is_answered_once_the_hold_is_released() {
    within("hold then release", async {
        let a = TestBackend::start("a").await;
        let proxy = TestProxy::start(&["web"]).await;
        let mut held = table(1, "web", vec![serving(&a)]);
        held.services.get_mut("web").unwrap().hold = true;
        held.services.get_mut("web").unwrap().max_hold_ms = 20_000;
        proxy.apply(&held).await;

        let request = {
            let client = proxy.client.clone();
            let url = proxy.url("web", "/");
            AbortOnDrop(tokio::spawn(async move {
                let r = client.get(url).send().await.unwrap();
                let done = Instant::now();
                (r.status().as_u16(), r.text().await.unwrap(), done)
            }))
        };
        proxy
            .wait_status("the request to be held", |s| s.services["web"].held == 1)
            .await;
        assert!(!request.0.is_finished(), "a held request was answered");
        assert_eq!(a.hits(), 0, "a held request reached the backend");

        let released = Instant::now();
        let mut release = table(2, "web", vec![serving(&a)]);
        release.services.get_mut("web").unwrap().max_hold_ms = 20_000;
        proxy.apply(&release).await;
        let (code, body, done) = request.await.unwrap();
        assert_eq!((code, body.as_str()), (200, "a"));
        assert!(done >= released, "answered before the release");
        assert_eq!(a.hits(), 1);
        proxy
            .wait_status("held back to 0", |s| s.services["web"].held == 0)
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_hold_never_released_ends_in_503_after_max_hold_ms() {
    within("hold timeout", async {
        let a = TestBackend::start("a").await;
        let proxy = TestProxy::start(&["web"]).await;
        let mut held = table(1, "web", vec![serving(&a)]);
        held.services.get_mut("web").unwrap().hold = true;
        held.services.get_mut("web").unwrap().max_hold_ms = 300;
        proxy.apply(&held).await;

        let started = Instant::now();
        let (code, body) = proxy.get("web", "/").await;
        let waited = started.elapsed();
        assert_eq!(code, 503, "{body}");
        assert!(
            waited >= Duration::from_millis(300),
            "answered after {waited:?}, before max_hold_ms"
        );
        assert_eq!(a.hits(), 0);
        let status = proxy.status().await;
        assert_eq!(status.services["web"].held, 0);
        assert_eq!(status.services["web"].failed_total, 1);
    })
    .await;
}

#[tokio::test]
async fn a_request_with_no_serving_backend_waits_for_one() {
    within("wait for a serving backend", async {
        let a = TestBackend::start("a").await;
        let b = TestBackend::start("b").await;
        let proxy = TestProxy::start(&["web"]).await;
        let mut only_draining = table(1, "web", vec![draining(&a)]);
        only_draining.services.get_mut("web").unwrap().max_hold_ms = 20_000;
        proxy.apply(&only_draining).await;

        let request = {
            let client = proxy.client.clone();
            let url = proxy.url("web", "/");
            AbortOnDrop(tokio::spawn(async move {
                client.get(url).send().await.unwrap().text().await.unwrap()
            }))
        };
        proxy
            .wait_status("the request to wait", |s| s.services["web"].held == 1)
            .await;
        proxy
            .apply(&table(2, "web", vec![draining(&a), serving(&b)]))
            .await;
        assert_eq!(request.await.unwrap(), "b");
        assert_eq!(a.hits(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_held_client_that_goes_away_is_no_longer_counted_as_held() {
    within("held client leaves", async {
        let a = TestBackend::start("a").await;
        let proxy = TestProxy::start(&["web"]).await;
        let mut held = table(1, "web", vec![serving(&a)]);
        held.services.get_mut("web").unwrap().hold = true;
        held.services.get_mut("web").unwrap().max_hold_ms = 60_000;
        proxy.apply(&held).await;
        let mut conn = RawConnection::open(proxy.services["web"]).await;
        let request = AbortOnDrop(tokio::spawn(async move { conn.get("/").await.status }));
        proxy
            .wait_status("the request to be held", |s| s.services["web"].held == 1)
            .await;
        drop(request);
        proxy
            .wait_status("held back to 0 once the client left", |s| {
                s.services["web"].held == 0
            })
            .await;
        assert_eq!(a.hits(), 0);
    })
    .await;
}
