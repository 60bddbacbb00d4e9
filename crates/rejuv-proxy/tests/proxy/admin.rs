//! The admin API: versions, validation, authentication.

use crate::support::*;
use hyper::StatusCode;
use rejuv_core::api::{ApiError, ServiceRoutes};

#[tokio::test]
async fn an_older_table_is_ignored() {
    within("stale version", async {
        let a = TestBackend::start("a").await;
        let b = TestBackend::start("b").await;
        let proxy = TestProxy::start(&["web"]).await;
        proxy.apply(&table(5, "web", vec![serving(&a)])).await;
        let (code, body) = proxy.put_routes(&table(3, "web", vec![serving(&b)])).await;
        assert_eq!(code, StatusCode::OK);
        let status: rejuv_core::api::ProxyStatus = serde_json::from_value(body).unwrap();
        assert_eq!(status.version, 5);
        assert_eq!(status.services["web"].backends[0].id, "a");
        assert_eq!(proxy.get("web", "/").await, (200, "a".to_string()));
        // The same version again is applied (a controller re-pushing its table is harmless).
        proxy.apply(&table(5, "web", vec![serving(&b)])).await;
        assert_eq!(proxy.get("web", "/").await, (200, "b".to_string()));
    })
    .await;
}

#[tokio::test]
async fn a_bad_table_is_refused_with_400_naming_the_field_and_changes_nothing() {
    within("bad table", async {
        let a = TestBackend::start("a").await;
        let b = TestBackend::start("b").await;
        let proxy = TestProxy::start(&["web"]).await;
        proxy.apply(&table(1, "web", vec![serving(&a)])).await;

        let mut unknown = table(2, "web", vec![serving(&b)]);
        unknown.services.insert(
            "nope".into(),
            ServiceRoutes {
                backends: vec![],
                hold: false,
                max_hold_ms: 0,
            },
        );
        let mut too_long = table(2, "web", vec![serving(&b)]);
        too_long.services.get_mut("web").unwrap().max_hold_ms = 60_001;
        let cases = [
            (unknown, "services.nope"),
            (
                table(2, "web", vec![serving(&b), serving(&b)]),
                "services.web.backends[1].id: duplicate backend id",
            ),
            (too_long, "services.web.max_hold_ms"),
        ];
        for (bad, field) in cases {
            let (code, body) = proxy.put_routes(&bad).await;
            assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
            let error: ApiError = serde_json::from_value(body).unwrap();
            assert!(
                error.error.contains(field),
                "{:?} does not name {field}",
                error.error
            );
        }
        let response = proxy
            .client
            .put(proxy.admin_url("/v1/routes"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(r#"{"version": 9}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let error: ApiError = response.json().await.unwrap();
        assert!(error.error.contains("services"), "{error:?}");

        let status = proxy.status().await;
        assert_eq!(status.version, 1);
        assert_eq!(status.services["web"].backends.len(), 1);
        assert_eq!(proxy.get("web", "/").await, (200, "a".to_string()));
        assert_eq!(b.hits(), 0);
    })
    .await;
}

#[tokio::test]
async fn the_admin_api_needs_the_token_except_healthz() {
    within("auth", async {
        let proxy = TestProxy::start(&["web"]).await;
        let put = serde_json::to_string(&table(1, "web", vec![])).unwrap();
        let requests = [
            proxy.client.get(proxy.admin_url("/v1/status")),
            proxy
                .client
                .get(proxy.admin_url("/v1/status"))
                .bearer_auth("wrong"),
            proxy
                .client
                .get(proxy.admin_url("/v1/status"))
                .bearer_auth(format!("{TOKEN}x")),
            proxy
                .client
                .put(proxy.admin_url("/v1/routes"))
                .body(put.clone()),
            proxy
                .client
                .put(proxy.admin_url("/v1/routes"))
                .header("authorization", TOKEN)
                .body(put),
        ];
        for request in requests {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401);
            let error: ApiError = response.json().await.unwrap();
            assert!(error.error.contains("token"), "{error:?}");
        }
        assert_eq!(
            proxy.status().await.version,
            0,
            "an unauthenticated PUT changed the table"
        );
        let health = proxy
            .client
            .get(proxy.admin_url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(health.text().await.unwrap(), "ok");
    })
    .await;
}
