//! Bad input gets a clear error naming what is wrong, and nothing is done.

use crate::harness::{Harness, Spec, EXE};
use std::process::Command;

#[test]
fn config_check_names_every_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[cluster]
mode = "active-standby"
[traffic]
admin = "127.0.0.1:7071"
[agent]
allowed_roots = ["/var/tmp/rejuv"]
scratch_dirs = ["/etc"]
[[servers]]
id = "s1"
address = "127.0.0.2"
agent = "127.0.0.2:7001"
role = "primary"
port_range = [30000, 20000]
instances = ["db"]
[services.web]
command = "relative/path"
health = { path = "healthz" }
"#,
    )
    .unwrap();
    let out = Command::new(EXE)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for field in [
        "servers[0].port_range",
        "servers[0].instances[0]",
        "services.web.command",
        "services.web.health.path",
        "agent.scratch_dirs[0]",
        "servers: active-standby needs at least one server",
    ] {
        assert!(err.contains(field), "missing {field:?} in:\n{err}");
    }
    assert!(err.contains("outside agent.allowed_roots"), "{err}");
}

#[test]
fn config_check_names_an_unknown_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[cluster]\nmode = \"active-standby\"\nmood = 3\n").unwrap();
    let out = Command::new(EXE)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mood"));
}

#[test]
fn requests_without_the_token_are_refused_and_change_nothing() {
    let mut h = Harness::new(&Spec {
        primaries: 1,
        spares: 1,
        ..Spec::default()
    });
    h.start_controller(&[]);
    h.wait_serving();
    let http = reqwest::blocking::Client::new();
    // Controller API.
    let r = http
        .post(format!("http://{}/v1/pause", h.controller_addr))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(format!("http://{}/v1/pause", h.controller_addr))
        .bearer_auth("wrong-token")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().unwrap().contains("token"));
    assert_eq!(
        h.status()["paused"],
        false,
        "an unauthorized pause changed nothing"
    );
    // Agent API: a start without the token starts nothing.
    let agent = h.servers[1].agent;
    let r = http
        .put(format!("http://{agent}/v1/instances/web-intruder"))
        .json(&serde_json::json!({"epoch": 999, "service": "web"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let st: serde_json::Value = http
        .get(format!("http://{agent}/v1/state"))
        .bearer_auth(&h.token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(st["instances"].as_array().unwrap().is_empty(), "{st}");
    assert!(
        st["epoch"].as_u64().unwrap() < 999,
        "the epoch was not raised by the intruder"
    );
    // Proxy admin API.
    let r = http
        .get(format!("http://{}/v1/status", h.admin))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    // /healthz needs no token.
    assert!(http
        .get(format!("http://{agent}/healthz"))
        .send()
        .unwrap()
        .status()
        .is_success());
}

#[test]
fn an_operator_request_that_does_not_fit_is_refused() {
    let mut h = Harness::new(&Spec {
        primaries: 1,
        spares: 1,
        ..Spec::default()
    });
    h.start_controller(&[]);
    let r = h.api(reqwest::Method::POST, "/v1/servers/nope/rejuvenate");
    assert_eq!(r.status(), 409);
    assert!(r.text().unwrap().contains("no server named 'nope'"));
    let r = h.api(reqwest::Method::POST, "/v1/servers/s2/rejuvenate");
    assert_eq!(r.status(), 409, "s2 is a spare");
}

#[test]
fn the_example_fleet_config_is_valid() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/rejuv.example.toml"
    );
    let out = Command::new(EXE)
        .args(["config", "check", path])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (active-standby cluster, 4 servers"));
}
