//! The controller does not trust its agents' replies: a 30 MB state reply is dropped after the
//! client's limit (not read whole), and an error body of 500 KB full of terminal escape codes
//! reaches the event log, the status and `rejuv events` clipped and escaped. (A 4xx answer:
//! the controller gives up on the command at once and logs why.)

use crate::harness::{wait_for, Harness, Spec, EXE};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const HUGE_STATE: usize = 30 << 20;

/// What the hostile agent saw.
#[derive(Default)]
struct Seen {
    /// Bytes of the 30 MB reply the controller took before it hung up.
    huge_taken: AtomicUsize,
    huge_sent: AtomicBool,
    starts: AtomicUsize,
    stop: AtomicBool,
}

fn evil_text(len: usize) -> String {
    let unit = "\u{1b}[2J\u{1b}]0;owned\u{7}\r\u{9b}31m";
    unit.repeat(len / unit.len() + 1)
}

fn state_json(server: &str) -> String {
    serde_json::json!({
        "server_id": server,
        "agent_started_at_ms": 1,
        "running_since_ms": 1,
        "epoch": 0,
        "sample": rejuv_core::types::Sample::default(),
        "instances": [],
        "crashes_total": 0,
        "last_rejuvenation": null,
        "version": evil_text(100_000),
    })
    .to_string()
}

fn respond(c: &mut TcpStream, status: &str, body: &[u8]) {
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = c.write_all(body);
}

fn serve_one(mut c: TcpStream, server: &str, seen: &Seen) {
    c.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    let _ = r.read_exact(&mut body);
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    if line.starts_with("GET /v1/state") && !seen.huge_sent.swap(true, Ordering::SeqCst) {
        // Announced and streamed: the client must stop reading at its limit.
        let _ = write!(
            c,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let chunk = vec![b' '; 64 << 10];
        let mut sent = 0;
        while sent < HUGE_STATE {
            let head = format!("{:x}\r\n", chunk.len());
            if c.write_all(head.as_bytes()).is_err()
                || c.write_all(&chunk).is_err()
                || c.write_all(b"\r\n").is_err()
            {
                break;
            }
            sent += chunk.len();
        }
        seen.huge_taken.store(sent, Ordering::SeqCst);
    } else if line.starts_with("GET /v1/state") {
        respond(&mut c, "200 OK", state_json(server).as_bytes());
    } else if line.starts_with("GET /v1/samples") {
        respond(&mut c, "200 OK", b"[]");
    } else if line.starts_with("PUT /v1/instances/") || line.starts_with("DELETE") {
        seen.starts.fetch_add(1, Ordering::SeqCst);
        let body = serde_json::json!({ "error": evil_text(500_000) }).to_string();
        respond(&mut c, "400 Bad Request", body.as_bytes());
    } else if path == "/healthz" {
        respond(&mut c, "200 OK", b"ok");
    } else {
        respond(&mut c, "404 Not Found", b"{\"error\":\"no such route\"}");
    }
}

fn hostile_agent(addr: SocketAddr, server: &'static str) -> Arc<Seen> {
    let l = TcpListener::bind(addr).expect("binding the hostile agent on the agent's address");
    l.set_nonblocking(true).unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    std::thread::spawn(move || {
        while !s.stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((c, _)) => {
                    c.set_nonblocking(false).unwrap();
                    let s = s.clone();
                    std::thread::spawn(move || serve_one(c, server, &s));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    seen
}

fn has_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control() && c != '\n')
}

#[test]
fn hostile_agent_replies_are_bounded_and_escaped() {
    let mut h = Harness::new(&Spec {
        primaries: 1,
        spares: 1,
        duplex_timeout: "5s",
        ..Spec::default()
    });
    // The spare's real agent gives way to a hostile one on the same address.
    let mut agent = h.servers[1].proc.take().expect("agent running");
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = agent.wait();
    wait_for("the spare's address free", Duration::from_secs(10), || {
        std::net::TcpListener::bind(h.servers[1].agent)
            .ok()
            .map(drop)
    });
    let seen = hostile_agent(h.servers[1].agent, "s2");
    h.start_controller(&[]);
    h.wait_serving();

    wait_for("the huge reply offered", Duration::from_secs(30), || {
        (seen.huge_taken.load(Ordering::SeqCst) > 0).then_some(())
    });
    let taken = seen.huge_taken.load(Ordering::SeqCst);
    assert!(
        taken < HUGE_STATE,
        "the controller hung up on a 30 MB reply after {taken} bytes"
    );

    // A workflow onto the hostile spare: its 500 KB escape-laden errors come back.
    let r = h.api(reqwest::Method::POST, "/v1/servers/s1/rejuvenate");
    assert!(r.status().is_success(), "{:?}", r.text());
    let events = wait_for(
        "an event quoting the hostile agent's error",
        Duration::from_secs(60),
        || {
            let ev = h.events();
            ev.iter()
                .any(|e| e["message"].as_str().unwrap().contains("owned"))
                .then_some(ev)
        },
    );
    assert!(seen.starts.load(Ordering::SeqCst) > 0);
    for e in &events {
        let m = e["message"].as_str().unwrap();
        assert!(m.len() <= 2100 * 6, "{} bytes stored", m.len());
        assert!(!has_control(m), "control characters stored: {m:?}");
    }
    let st = h.status();
    let text = st.to_string();
    assert!(text.len() < 200_000, "status of {} bytes", text.len());
    let st_text = serde_json::to_string(&st).unwrap();
    let back: serde_json::Value = serde_json::from_str(&st_text).unwrap();
    for s in back["servers"].as_array().unwrap() {
        if let Some(r) = s["blocked_reason"].as_str() {
            assert!(!has_control(r), "{r:?}");
        }
    }

    // `rejuv events` prints no control character, whatever the agents said.
    let out = std::process::Command::new(EXE)
        .args(["events", "--controller"])
        .arg(format!("http://{}", h.controller_addr))
        .arg("--token-file")
        .arg(h.dir.path().join("token"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("owned"), "{printed}");
    assert!(!has_control(&printed), "raw control characters printed");
    seen.stop.store(true, Ordering::SeqCst);
}
