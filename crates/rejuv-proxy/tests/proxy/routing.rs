//! Backend choice per request, and client connections that outlive table changes.

use crate::support::*;

#[tokio::test]
async fn round_robin_over_two_serving_backends() {
    within("round robin", async {
        let a = TestBackend::start("a").await;
        let b = TestBackend::start("b").await;
        let proxy = TestProxy::start(&["web"]).await;
        proxy
            .apply(&table(1, "web", vec![serving(&a), serving(&b)]))
            .await;

        let mut answers = Vec::new();
        for _ in 0..10 {
            let response = proxy
                .client
                .get(proxy.url("web", "/"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(
                response.headers()["x-seen-xff"],
                "127.0.0.1",
                "x-forwarded-for added"
            );
            answers.push(response.text().await.unwrap());
        }
        for pair in answers.windows(2) {
            assert_ne!(pair[0], pair[1], "round robin alternates: {answers:?}");
        }
        assert_eq!((a.hits(), b.hits()), (5, 5));
        // Upstream connections are pooled: sequential requests reuse them.
        for x in [&a, &b] {
            let open = x.open_connections.load(std::sync::atomic::Ordering::SeqCst);
            assert!(
                open <= 2,
                "{open} connections to {} for 5 sequential requests",
                x.name
            );
        }
        let status = proxy.status().await;
        let web = &status.services["web"];
        assert_eq!(web.requests_total, 10);
        assert_eq!(web.failed_total, 0);
        assert_eq!(web.listen, proxy.services["web"]);
        for backend in &web.backends {
            assert_eq!(backend.requests_total, 5, "{backend:?}");
            assert_eq!(backend.errors_total, 0);
        }
        // The client's idle keep-alive connection does not hold shutdown up.
        proxy.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn keep_alive_client_connection_survives_a_move_from_a_to_b() {
    within("keep-alive across a table change", async {
        let a = TestBackend::start("a").await;
        let b = TestBackend::start("b").await;
        let proxy = TestProxy::start(&["web"]).await;
        proxy.apply(&table(1, "web", vec![serving(&a)])).await;

        let mut conn = RawConnection::open(proxy.services["web"]).await;
        let first = conn.get("/").await;
        assert_eq!((first.status, first.body.as_str()), (200, "a"));

        // A slow request keeps A busy on another client connection while the table moves.
        let slow = {
            let client = proxy.client.clone();
            let url = proxy.url("web", "/slow");
            AbortOnDrop(tokio::spawn(async move {
                client.get(url).send().await.unwrap().text().await.unwrap()
            }))
        };
        proxy
            .wait_status("A to have the slow request in flight", |s| {
                s.services["web"].backends[0].in_flight == 1
            })
            .await;
        // While the slow request holds one upstream connection, this one opens another, which
        // then sits idle in the pool.
        assert_eq!(proxy.get("web", "/").await, (200, "a".to_string()));
        assert!(a.open_connections.load(std::sync::atomic::Ordering::SeqCst) >= 2);

        proxy
            .apply(&table(2, "web", vec![draining(&a), serving(&b)]))
            .await;
        let second = conn.get("/").await;
        assert_eq!(
            (second.status, second.body.as_str()),
            (200, "b"),
            "same client connection, new backend"
        );

        a.release_slow();
        assert_eq!(slow.await.unwrap(), "a");
        proxy
            .wait_status("A's in-flight count to reach 0", |s| {
                s.services["web"].backends[0].in_flight == 0
            })
            .await;
        // Idle pooled connections do not pin the draining backend.
        wait_for(
            "the proxy to close its connections to draining A",
            || async {
                (a.open_connections.load(std::sync::atomic::Ordering::SeqCst) == 0).then_some(())
            },
        )
        .await;

        let third = conn.get("/").await;
        assert_eq!(
            (third.status, third.body.as_str()),
            (200, "b"),
            "the client connection is still open"
        );
    })
    .await;
}

#[tokio::test]
async fn a_service_without_a_route_answers_503_at_once() {
    within("no route", async {
        let proxy = TestProxy::start(&["web", "api"]).await;
        let a = TestBackend::start("a").await;
        proxy.apply(&table(1, "web", vec![serving(&a)])).await;
        let (code, body) = proxy.get("api", "/").await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("no route for service api"), "{body}");
        let (code, body) = proxy.get("web", "/").await;
        assert_eq!((code, body.as_str()), (200, "a"));
    })
    .await;
}
