//! Alerts, hooks and advisory mode with real processes: a webhook receiver in the test gets the
//! alert for a rollback; hooks run around the steps and their output is in the event log; a
//! smoke test that fails keeps the server out; `controller --dry-run` changes nothing while its
//! events say what it would have done.

use crate::harness::{wait_for, Harness, Load, Spec};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A webhook receiver on loopback: records every POST body (and its authorization header),
/// answers 200. Stops its thread when dropped.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<(String, Value)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(c) = conn {
                    if let Some(req) = read_request(c) {
                        g.lock().unwrap().push(req);
                    }
                }
            }
        });
        Self {
            addr,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/alerts", self.addr)
    }

    /// Alerts received so far, flattened: (alertname, the whole body, authorization).
    fn alerts(&self) -> Vec<(String, Value, String)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(auth, body)| {
                body["alerts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| {
                        (
                            a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                            body.clone(),
                            auth.clone(),
                        )
                    })
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one HTTP/1.1 request with a Content-Length body; answers 200 and closes.
fn read_request(mut c: TcpStream) -> Option<(String, Value)> {
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut r = BufReader::new(c.try_clone().ok()?);
    let mut len = 0usize;
    let mut auth = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
        if lower.starts_with("authorization:") {
            auth = line["authorization:".len()..].trim().to_string();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    Some((auth, serde_json::from_slice(&body).ok()?))
}

fn fast_aging() -> Spec {
    Spec {
        leak_per_second: 8 * 1024 * 1024,
        memory_budget: 64 * 1024 * 1024,
        ..Spec::default()
    }
}

fn events_of(h: &Harness, kind: &str) -> Vec<String> {
    h.events()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["message"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_rollback_reaches_the_alert_webhook_and_hooks_run_around_the_steps() {
    let rx = Receiver::start();
    let mut hook_token = tempfile::NamedTempFile::new().unwrap();
    writeln!(hook_token, "webhook-secret").unwrap();
    // s2 (127.0.0.3) is the first spare; its copies never serve: the first workflow rolls
    // back, the second (onto s3) completes through a smoke test that passes.
    let spec = Spec {
        primaries: 1,
        spares: 2,
        duplex_timeout: "3s",
        broken_address: Some("127.0.0.3".into()),
        extra_toml: format!(
            r#"
[alerts]
webhook = "{url}"
webhook_token_file = "{token_file}"
labels = {{ team = "sre" }}

[[hooks]]
name = "note"
step = "duplexing"
when = "before"
command = ["/bin/sh", "-c", "echo starting $REJUV_SERVER onto $REJUV_TARGET"]

[[hooks]]
name = "smoke"
step = "rejoin"
when = "before"
veto = true
command = ["/bin/sh", "-c", "echo smoke ok for $REJUV_SERVER"]
"#,
            url = rx.url(),
            token_file = hook_token.path().display(),
        ),
        ..fast_aging()
    };
    let mut h = Harness::new(&spec);
    h.start_controller(&[]);
    h.wait_serving();
    let load = Load::start(h.front, 50, Duration::from_secs(90));
    let alert = wait_for(
        "the rollback alert at the webhook",
        Duration::from_secs(60),
        || {
            rx.alerts()
                .into_iter()
                .find(|(name, _, _)| name == "RejuvWorkflowRolledBack")
        },
    );
    wait_for("a completed workflow", Duration::from_secs(60), || {
        (h.completed() >= 1).then_some(())
    });
    let report = load.finish();
    assert_eq!(report.requests_failed, 0, "{report:?}");

    let (_, body, auth) = alert;
    assert_eq!(auth, "Bearer webhook-secret", "the webhook token is sent");
    assert_eq!(body["version"], "4");
    assert_eq!(body["status"], "firing");
    let a = &body["alerts"][0];
    assert_eq!(a["labels"]["server"], "s1");
    assert_eq!(a["labels"]["team"], "sre");
    assert!(
        a["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("rolled back"),
        "{a}"
    );

    let hooks = events_of(&h, "hook");
    assert!(
        hooks
            .iter()
            .any(|m| m.contains("hook note (before duplexing) succeeded")
                && m.contains("starting s1 onto s2")),
        "{hooks:?}"
    );
    assert!(
        hooks
            .iter()
            .any(|m| m.contains("hook smoke (before rejoin) succeeded")
                && m.contains("smoke ok for s1")),
        "{hooks:?}"
    );
}

#[test]
fn a_failing_smoke_test_keeps_the_server_out_and_pages_a_person() {
    let rx = Receiver::start();
    let spec = Spec {
        primaries: 1,
        spares: 1,
        extra_toml: format!(
            r#"
[alerts]
webhook = "{url}"

[[hooks]]
name = "smoke"
step = "rejoin"
when = "before"
veto = true
command = ["/bin/sh", "-c", "echo checkout page broken on $REJUV_SERVER; exit 1"]
"#,
            url = rx.url()
        ),
        ..fast_aging()
    };
    let mut h = Harness::new(&spec);
    h.start_controller(&[]);
    h.wait_serving();
    let load = Load::start(h.front, 50, Duration::from_secs(90));
    let (_, body, _) = wait_for(
        "the failed-workflow alert at the webhook",
        Duration::from_secs(60),
        || {
            rx.alerts()
                .into_iter()
                .find(|(name, _, _)| name == "RejuvWorkflowFailed")
        },
    );
    let report = load.finish();
    assert_eq!(
        report.requests_failed, 0,
        "the copy on s2 served: {report:?}"
    );
    assert_eq!(body["alerts"][0]["labels"]["severity"], "critical");
    assert!(
        body["alerts"][0]["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("hook smoke vetoed rejoin"),
        "{body}"
    );
    let st = h.status();
    let s1 = st["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "s1")
        .unwrap()
        .clone();
    assert!(s1["state"].to_string().contains("failed"), "{s1}");
    let hooks = events_of(&h, "hook");
    assert!(
        hooks
            .iter()
            .any(|m| m.contains("failed: exit 1") && m.contains("checkout page broken on s1")),
        "{hooks:?}"
    );
}

#[test]
fn dry_run_changes_nothing_and_says_what_it_would_do() {
    let mut alice = tempfile::NamedTempFile::new().unwrap();
    writeln!(alice, "alice-secret").unwrap();
    let spec = Spec {
        primaries: 1,
        spares: 1,
        extra_toml: format!(
            "[[auth.operators]]\nname = \"alice\"\ntoken_file = \"{}\"\n",
            alice.path().display()
        ),
        ..fast_aging()
    };
    let mut h = Harness::new(&spec);
    // An acting controller places the instances (paused: it starts no workflow), then gives
    // way to an advisory one on the same store.
    h.start_controller_with(&["--paused"], &[]);
    h.wait_serving();
    h.kill_controller();
    let routes_before: Value = proxy_routes(&h);
    h.start_controller_with(&["--dry-run"], &[]);
    // The stored state is paused (the first controller's flag); the advisory run is resumed
    // by an operator like any other, here with her own token: the event names her.
    let resumed = reqwest::blocking::Client::new()
        .post(format!("http://{}/v1/resume", h.controller_addr))
        .bearer_auth("alice-secret")
        .send()
        .unwrap();
    assert!(resumed.status().is_success(), "{resumed:?}");
    let by_alice = events_of(&h, "operator");
    assert!(
        by_alice
            .iter()
            .any(|m| m.starts_with("alice (operator token alice)")),
        "{by_alice:?}"
    );
    let said = wait_for(
        "the advisory controller to say it would rejuvenate s1",
        Duration::from_secs(60),
        || {
            events_of(&h, "dry-run")
                .into_iter()
                .find(|m| m.contains("would rejuvenate s1"))
        },
    );
    assert!(said.contains("onto s2"), "{said}");
    assert!(said.contains("instance-rss"), "names the rule: {said}");
    // Everything a real workflow would have done in that same step did not happen.
    let st = h.status();
    assert!(st["workflows"].as_array().unwrap().is_empty(), "{st}");
    let s2 = st["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "s2")
        .unwrap()
        .clone();
    assert!(
        s2["instances"].as_array().unwrap().is_empty(),
        "nothing started on the spare: {s2}"
    );
    assert_eq!(proxy_routes(&h), routes_before, "the list did not change");
    let spare_log = h.log("agent-s2");
    assert!(
        !spare_log.contains("instance started"),
        "the spare's agent got no command: {spare_log}"
    );
    h.wait_serving();
}

/// The builtin proxy's table as it serves it: version, and each backend with its state.
fn proxy_routes(h: &Harness) -> Value {
    let resp = reqwest::blocking::Client::new()
        .get(format!("http://{}/v1/status", h.admin))
        .bearer_auth(&h.proxy_token)
        .send()
        .expect("proxy admin API");
    let v: Value = resp.json().expect("proxy status json");
    let backends: Vec<Value> = v["services"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|s| s["backends"].as_array().cloned().unwrap_or_default())
        .map(|b| serde_json::json!([b["id"], b["addr"], b["state"]]))
        .collect();
    serde_json::json!({ "version": v["version"], "backends": backends })
}
