//! Roles on the controller API: a `read` token sees everything and changes nothing (403 naming
//! the role); every request that changes something is an `audit` event with who, from where,
//! what and the answer.

use crate::harness::{wait_for, write_secret, Harness, Spec};
use std::time::Duration;

#[test]
fn a_read_token_reads_and_is_refused_changes_and_every_change_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let read_token = "read-token-0123456789abcdef";
    let path = dir.path().join("viewer.token");
    write_secret(&path, read_token);
    let spec = Spec {
        extra_toml: format!(
            "\n[[auth.operators]]\nname = \"viewer\"\ntoken_file = \"{}\"\nrole = \"read\"\n",
            path.display()
        ),
        ..Spec::default()
    };
    let mut h = Harness::new(&spec);
    h.start_controller(&[]);
    let http = reqwest::blocking::Client::new();
    let url = |p: &str| format!("http://{}{p}", h.controller_addr);
    let get = http
        .get(url("/v1/status"))
        .bearer_auth(read_token)
        .send()
        .unwrap();
    assert_eq!(get.status(), 200);
    let post = http
        .post(url("/v1/pause"))
        .bearer_auth(read_token)
        .send()
        .unwrap();
    assert_eq!(post.status(), 403);
    let body = post.text().unwrap();
    assert!(
        body.contains("viewer has the read role") && body.contains("needs the operate role"),
        "{body}"
    );
    assert_eq!(h.status()["paused"], false, "nothing changed");
    // The shared API token operates.
    assert_eq!(h.api(reqwest::Method::POST, "/v1/pause").status(), 202);
    let audit = wait_for("both requests audited", Duration::from_secs(10), || {
        let said: Vec<String> = h
            .events()
            .iter()
            .filter(|e| e["kind"] == "audit")
            .map(|e| e["message"].as_str().unwrap().to_string())
            .collect();
        (said.len() >= 2).then_some(said)
    });
    assert!(
        audit.iter().any(
            |m| m.starts_with("viewer (operator token viewer) from 127.0.0.1:")
                && m.ends_with("POST /v1/pause -> 403")
        ),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|m| m.contains("(api token) from 127.0.0.1:")
                && m.ends_with("POST /v1/pause -> 202")),
        "{audit:?}"
    );
    // No token appears in the event log.
    let all = serde_json::to_string(&h.events()).unwrap();
    assert!(!all.contains(read_token) && !all.contains(&h.token));
}
