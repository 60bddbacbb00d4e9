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
[rejuvenation]
in_place = false
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

fn check(text: &[u8]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(EXE)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const RUNS_FINE: &str = r#"
[cluster]
mode = "active-standby"
[controller]
listen = "127.0.0.1:7070"
[traffic]
admin = "127.0.0.1:7071"
listen = { web = "127.0.0.1:8080" }
[[servers]]
id = "s1"
address = "127.0.0.2"
agent = "127.0.0.2:7001"
role = "primary"
capacity = 8
port_range = [20000, 20010]
instances = ["web"]
[[servers]]
id = "s2"
address = "127.0.0.3"
agent = "127.0.0.3:7001"
role = "spare"
capacity = 4
port_range = [20000, 20010]
[services.web]
command = "/usr/bin/true"
health = { path = "/healthz" }
"#;

#[test]
fn config_check_refuses_configs_that_would_fail_at_run_time() {
    assert_eq!(check(RUNS_FINE.as_bytes()).0, Some(0));
    let cases: &[(&str, &str, &str)] = &[
        (
            "[controller]\n",
            "[controller]\nagent_timeout = \"0s\"\n",
            "controller.agent_timeout",
        ),
        (
            "health = { path = \"/healthz\" }",
            "health = { path = \"/healthz\", timeout = \"0s\" }",
            "services.web.health.timeout",
        ),
        (
            "[traffic]\n",
            "[retention]\nevents = 0\n[traffic]\n",
            "retention.events",
        ),
        (
            "[traffic]\n",
            "[rejuvenation]\nduplex_timeout = \"0s\"\n[traffic]\n",
            "rejuvenation.duplex_timeout",
        ),
        (
            "[traffic]\n",
            "[agent]\nsample_interval = \"0s\"\n[traffic]\n",
            "agent.sample_interval",
        ),
        (
            "[traffic]\n",
            "[agent]\nrestart_command = [\"reboot\"]\n[traffic]\n",
            "agent.restart_command[0]",
        ),
        (
            "[traffic]\n",
            "[budget]\nmin_available_capacity = 12\n[traffic]\n",
            "budget.min_available_capacity: 12 is more than the primaries' capacity (8",
        ),
        (
            "listen = { web = \"127.0.0.1:8080\" }",
            "listen = { web = \"127.0.0.2:7001\" }",
            "is also traffic.listen.web",
        ),
        (
            "port_range = [20000, 20010]\ninstances",
            "port_range = [7000, 7010]\ninstances",
            "holds port 7001 of servers[0].agent",
        ),
        (
            "listen = \"127.0.0.1:7070\"",
            "listen = \"127.0.0.1:7071\"",
            "traffic.admin: 127.0.0.1:7071 is also controller.listen",
        ),
        (
            "[traffic]\n",
            "[alerts]\nwebhook = \"https://hooks.example.com/x\"\n[traffic]\n",
            "alerts.webhook: https:// is not supported",
        ),
    ];
    for (from, to, field) in cases {
        assert!(RUNS_FINE.contains(from), "{from}");
        let (code, err) = check(RUNS_FINE.replacen(from, to, 1).as_bytes());
        assert_eq!(code, Some(2), "{field}: {err}");
        assert!(err.contains(field), "missing {field:?} in:\n{err}");
    }
    let huge_name = RUNS_FINE.replacen(
        "[cluster]\n",
        &format!("[cluster]\nname = \"{}\"\n", "n".repeat(10 << 20)),
        1,
    );
    let (code, err) = check(huge_name.as_bytes());
    assert_eq!(code, Some(2));
    assert!(
        err.contains("cluster.name: must be 1 to 64"),
        "{}",
        &err[..err.len().min(500)]
    );
    assert!(
        err.len() < 4096,
        "the name is not echoed: {} bytes",
        err.len()
    );
}

#[test]
fn config_check_clips_a_huge_bad_line_and_calls_a_binary_file_bad_input() {
    let (code, err) = check(format!("[cluster]\nmode = {}\n", "x".repeat(10 << 20)).as_bytes());
    assert_eq!(code, Some(2));
    assert!(
        err.contains("not valid TOML"),
        "{}",
        &err[..err.len().min(500)]
    );
    assert!(
        err.len() < 4096,
        "the bad line is clipped: {} bytes",
        err.len()
    );

    let (code, err) = check(&[0x7f, b'E', b'L', b'F', 0xff, 0xfe, 0, 1, 2]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a text file"), "{err}");
}

#[test]
fn a_missing_operator_token_file_stops_the_controller_before_the_store_is_made() {
    let h = Harness::new(&Spec {
        primaries: 1,
        spares: 1,
        ..Spec::default()
    });
    let text = std::fs::read_to_string(&h.config).unwrap();
    let missing = h.dir.path().join("nobody.token");
    let text = text.replacen(
        "[auth]\n",
        &format!(
            "[auth]\noperators = [{{ name = \"carol\", token_file = \"{}\" }}]\n",
            missing.display()
        ),
        1,
    );
    assert!(text.contains("carol"), "the harness config has [auth]");
    std::fs::write(&h.config, text).unwrap();
    let out = Command::new(EXE)
        .args(["controller", "--config"])
        .arg(&h.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the token of carol") && err.contains("nobody.token"),
        "{err}"
    );
    assert!(
        !h.dir.path().join("rejuv.db").exists(),
        "no store was made for a controller that cannot start"
    );
}

#[test]
fn the_controller_api_checks_the_token_first_and_refuses_odd_input() {
    let mut h = Harness::new(&Spec {
        primaries: 1,
        spares: 1,
        ..Spec::default()
    });
    h.start_controller(&[]);
    let http = reqwest::blocking::Client::new();
    let url = |p: &str| format!("http://{}{p}", h.controller_addr);

    // A bad query string without a token: 401, as JSON, before the query is looked at.
    let r = http.get(url("/v1/events?limit=x")).send().unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().expect("a JSON error");
    assert!(body["error"].as_str().unwrap().contains("token"));
    // With the token: 400, as JSON, naming the query.
    let r = http
        .get(url("/v1/events?limit=x"))
        .bearer_auth(&h.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().expect("a JSON error");
    assert!(
        body["error"].as_str().unwrap().starts_with("query string"),
        "{body}"
    );

    // A 2 MB body is answered from its headers alone (the server does not wait for the body):
    // 401 without a token, 413 with it.
    for (auth, want) in [
        (String::new(), "401"),
        (format!("Authorization: Bearer {}\r\n", h.token), "413"),
    ] {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(h.controller_addr).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            c,
            "POST /v1/servers/s1/maintenance HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n",
            2 << 20
        )
        .unwrap();
        // More than the 4 KiB limit, far less than the 2 MB announced.
        c.write_all(&[b' '; 8192]).unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).unwrap();
        assert_eq!(
            std::str::from_utf8(&head).unwrap(),
            format!("HTTP/1.1 {want}"),
            "answered before the body was sent"
        );
    }

    // `[true]` is not a maintenance request.
    let r = http
        .post(url("/v1/servers/s1/maintenance"))
        .bearer_auth(&h.token)
        .header("content-type", "application/json")
        .body("[true]")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("not a JSON object"));
    assert_eq!(h.status()["servers"][0]["maintenance"], false);

    // An actor that would pass for a named operator's token is refused, and nothing is logged.
    let r = http
        .post(url("/v1/pause"))
        .bearer_auth(&h.token)
        .header("x-rejuv-actor", "alice (operator token alice)")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("x-rejuv-actor"));
    assert_eq!(h.status()["paused"], false);
    let r = http
        .post(url("/v1/pause"))
        .bearer_auth(&h.token)
        .header("x-rejuv-actor", "alice")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(h
        .events()
        .iter()
        .any(|e| e["message"].as_str().unwrap().contains("alice (api token)")));
}

#[test]
fn a_session_code_opens_the_dashboard_once() {
    let mut h = Harness::new(&Spec {
        primaries: 1,
        spares: 1,
        ..Spec::default()
    });
    let code_file = h.dir.path().join("dashboard.code");
    std::fs::write(&code_file, "c0de").unwrap();
    h.start_controller_with(&["--session-code-file", code_file.to_str().unwrap()], &[]);
    let http = reqwest::blocking::Client::new();
    let url = format!("http://{}/v1/session", h.controller_addr);
    let wrong = http.post(&url).body(r#"{"code": "c0dX"}"#).send().unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(code_file.exists(), "a wrong code uses nothing up");
    let r = http.post(&url).body(r#"{"code": "c0de"}"#).send().unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["token"], h.token.as_str());
    assert!(!code_file.exists());
    let again = http.post(&url).body(r#"{"code": "c0de"}"#).send().unwrap();
    assert_eq!(again.status(), 401, "a code opens one session");
}

#[test]
fn an_epoch_no_controller_could_hold_locks_no_agent_out() {
    let mut h = Harness::new(&Spec {
        primaries: 1,
        spares: 1,
        ..Spec::default()
    });
    h.start_controller(&[]);
    h.wait_serving();
    let http = reqwest::blocking::Client::new();
    let agent = h.servers[0].agent;
    let r = http
        .delete(format!("http://{agent}/v1/instances/x?epoch={}", u64::MAX))
        .bearer_auth(&h.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("no controller could hold it"));
    let st: serde_json::Value = http
        .get(format!("http://{agent}/v1/state"))
        .bearer_auth(&h.token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(st["epoch"].as_u64().unwrap() < 1000, "not persisted: {st}");
    // The controller still commands the agent: a workflow runs end to end.
    let r = h.api(reqwest::Method::POST, "/v1/servers/s1/rejuvenate");
    assert!(r.status().is_success());
    crate::harness::wait_for("the workflow", std::time::Duration::from_secs(60), || {
        (h.completed() >= 1).then_some(())
    });
}
