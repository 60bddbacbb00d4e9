//! Graceful shutdown: stop accepting, let the in-flight request finish, return.

use crate::support::*;
use std::time::Duration;

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_in_flight_requests_finish() {
    within("graceful shutdown", async {
        let a = TestBackend::start("a").await;
        let mut proxy = TestProxy::start(&["web"]).await;
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
            .wait_status("the slow request to be in flight", |s| {
                s.services["web"].backends[0].in_flight == 1
            })
            .await;

        let task = proxy.take_task();
        proxy.shutdown.cancel();
        let web = proxy.services["web"];
        wait_for("the proxy to stop accepting connections", || async move {
            tokio::net::TcpStream::connect(web)
                .await
                .is_err()
                .then_some(())
        })
        .await;
        assert!(
            !task.is_finished(),
            "run returned with a request still in flight"
        );

        a.release_slow();
        assert_eq!(slow.await.unwrap(), (200, "a".to_string()));
        let result = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("run did not return after its last request ended")
            .unwrap();
        result.unwrap();
    })
    .await;
}
