//! Draining and removed backends: no new requests, in-flight ones finish and are counted.

use crate::support::*;

#[tokio::test]
async fn a_draining_backend_gets_no_new_request_while_its_slow_one_completes() {
    within("drain", async {
        let a = TestBackend::start("a").await;
        let b = TestBackend::start("b").await;
        let proxy = TestProxy::start(&["web"]).await;
        proxy.apply(&table(1, "web", vec![serving(&a)])).await;

        let slow = {
            let client = proxy.client.clone();
            let url = proxy.url("web", "/slow");
            AbortOnDrop(tokio::spawn(async move {
                let r = client.get(url).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }))
        };
        proxy
            .wait_status("A to have 1 request in flight", |s| {
                s.services["web"].backends[0].in_flight == 1
            })
            .await;

        let status = proxy
            .apply(&table(2, "web", vec![draining(&a), serving(&b)]))
            .await;
        assert_eq!(status.services["web"].backends[0].in_flight, 1);
        for _ in 0..6 {
            assert_eq!(proxy.get("web", "/").await, (200, "b".to_string()));
        }
        assert_eq!(a.hits(), 1, "draining A got a new request");

        let a_status = proxy.backend_status("web", "a").await.unwrap();
        assert_eq!(
            a_status.state,
            Some(rejuv_core::api::BackendState::Draining)
        );
        assert_eq!(a_status.in_flight, 1);

        a.release_slow();
        assert_eq!(slow.await.unwrap(), (200, "a".to_string()));
        proxy
            .wait_status("A's in-flight count to go back to 0", |s| {
                s.services["web"].backends[0].in_flight == 0
            })
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_removed_backend_is_reported_until_its_last_request_ends_then_forgotten() {
    within("removal", async {
        let a = TestBackend::start("a").await;
        let b = TestBackend::start("b").await;
        let proxy = TestProxy::start(&["web"]).await;
        proxy.apply(&table(1, "web", vec![serving(&a)])).await;

        let slow = {
            let client = proxy.client.clone();
            let url = proxy.url("web", "/slow");
            AbortOnDrop(tokio::spawn(async move {
                client.get(url).send().await.unwrap().status().as_u16()
            }))
        };
        proxy
            .wait_status("A to have 1 request in flight", |s| {
                s.services["web"].backends[0].in_flight == 1
            })
            .await;

        let status = proxy.apply(&table(2, "web", vec![serving(&b)])).await;
        let removed = status.services["web"]
            .backends
            .iter()
            .find(|x| x.id == "a")
            .expect("A still reported");
        assert_eq!((removed.state, removed.in_flight), (None, 1));
        assert_eq!(proxy.get("web", "/").await, (200, "b".to_string()));

        a.release_slow();
        assert_eq!(slow.await.unwrap(), 200);
        let status = proxy
            .wait_status("A to be forgotten", |s| {
                s.services["web"].backends.iter().all(|x| x.id != "a")
            })
            .await;
        assert_eq!(status.services["web"].backends.len(), 1);
        assert_eq!(a.hits(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_client_that_goes_away_mid_response_is_not_counted_in_flight() {
    within("client disconnect", async {
        let a = TestBackend::start("a").await;
        let b = TestBackend::start("b").await;
        let proxy = TestProxy::start(&["web"]).await;
        proxy.apply(&table(1, "web", vec![serving(&a)])).await;
        let client = reqwest::Client::new();
        let mut response = client
            .get(proxy.url("web", "/stream"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let first = response.chunk().await.unwrap().expect("a first part");
        assert_eq!(&first[..], b"first ");
        let a_status = proxy.backend_status("web", "a").await.unwrap();
        assert_eq!(a_status.in_flight, 1, "a streaming response is in flight");

        // The client leaves while the backend still has more to send (the gate stays shut).
        drop(response);
        drop(client);
        proxy
            .wait_status("in-flight back to 0 after the client left", |s| {
                s.services["web"].backends[0].in_flight == 0
            })
            .await;

        // That broken upstream connection was not pooled: the next request works.
        proxy
            .apply(&table(2, "web", vec![serving(&a), serving(&b)]))
            .await;
        for _ in 0..4 {
            assert_eq!(proxy.get("web", "/").await.0, 200);
        }
        assert_eq!(proxy.status().await.services["web"].failed_total, 0);
    })
    .await;
}
