//! The dashboard in a real headless Chromium (Debian's `chromium`), driven over the Chrome
//! DevTools Protocol: `/ui` loads, lists every server, opens each server's chart with the
//! readings the controller held before the page opened (`GET /v1/servers/ID/history`),
//! updates by itself when workflows run (no reload), draws the trend and the forecast to
//! exhaustion of an aging server; a
//! screenshot is kept as a test artifact (`$REJUV_TEST_ARTIFACTS/dashboard.png`, else
//! `target/test-artifacts/dashboard.png`).

use crate::harness::{wait_for, Harness, Spec};
use base64::Engine;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The predictive rule scaled for services that age within a minute (as in `rejuv demo`), and
/// allowed to forecast further ahead than it has watched so that it fires early: the workflows
/// then run while the aging servers still carry a trend explanation.
const TREND: &str = r#"
[policy.trend]
window = "48s"
min_window = "8s"
horizon = "60s"
min_persistence = "2s"
max_extrapolation = 4.0
resources = ["instance-rss"]
"#;

/// Headless Chromium with a fresh profile, in its own process group, killed with its whole
/// group on drop (even when the test fails).
struct Browser {
    child: Child,
    port: u16,
}

fn find_chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium not found on PATH: this test needs a real headless browser; install \
                 the Debian package `chromium` (apt-get install chromium)"
            )
        })
}

impl Browser {
    fn start(dir: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        let exe = find_chromium();
        let profile = dir.join("chromium-profile");
        let log = std::fs::File::create(dir.join("logs/chromium.log")).unwrap();
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
            "--window-size=1300,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        let mut b = Browser { child, port: 0 };
        // Chromium picks its DevTools port itself (port 0) and writes it into the profile.
        let file = profile.join("DevToolsActivePort");
        b.port = wait_for(
            "chromium to write DevToolsActivePort",
            Duration::from_secs(30),
            || {
                if let Some(status) = b.child.try_wait().unwrap() {
                    panic!("chromium exited early ({status}); see logs/chromium.log");
                }
                std::fs::read_to_string(&file)
                    .ok()?
                    .lines()
                    .next()?
                    .trim()
                    .parse()
                    .ok()
            },
        );
        b
    }

    /// A DevTools session on the browser's page (tab).
    fn page(&self) -> Cdp {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{}/json/list", self.port);
        let ws = wait_for(
            "chromium to list its page target",
            Duration::from_secs(20),
            || {
                let targets: Value = http.get(&url).send().ok()?.json().ok()?;
                targets.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                    .as_str()
                    .map(String::from)
            },
        );
        Cdp::connect(&ws)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

/// A minimal Chrome DevTools Protocol client: one request at a time, events skipped.
struct Cdp {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Cdp {
    fn connect(url: &str) -> Self {
        let host = url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("unexpected DevTools url {url}"));
        let stream = TcpStream::connect(host).expect("connecting to DevTools");
        // A browser that stops answering fails the test instead of hanging it.
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (ws, _) = tungstenite::client(url, stream)
            .unwrap_or_else(|e| panic!("DevTools websocket handshake with {url}: {e}"));
        Cdp { ws, next_id: 0 }
    }

    /// Sends one command and returns its result, or the protocol's error message.
    fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(tungstenite::Message::text(msg))
            .map_err(|e| format!("sending {method}: {e}"))?;
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            let msg = self
                .ws
                .read()
                .map_err(|e| format!("reading the answer to {method}: {e}"))?;
            let tungstenite::Message::Text(text) = msg else {
                continue;
            };
            let v: Value = serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
            if v["id"] == id {
                return match v.get("error") {
                    Some(e) => Err(format!("{method}: {e}")),
                    None => Ok(v["result"].clone()),
                };
            }
        }
        Err(format!("no answer to {method} within 30 s"))
    }

    /// Evaluates `expr` in the page and returns its value (JSON).
    fn eval(&mut self, expr: &str) -> Result<Value, String> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        )?;
        match r.get("exceptionDetails") {
            Some(e) => Err(format!("page script failed: {e}")),
            None => Ok(r["result"]["value"].clone()),
        }
    }
}

/// What the page shows, read from its DOM in one go.
const SNAPSHOT: &str = r#"(() => {
  const all = s => [...document.querySelectorAll(s)];
  return {
    rows: all('#servers tr[data-server]').map(r => ({id: r.dataset.server, judgement: r.dataset.judgement})),
    workflows: all('#workflows .wf').map(w => ({id: w.dataset.workflow, server: w.dataset.server,
      state: w.dataset.state, steps: w.querySelectorAll('.step').length})),
    charts: all('#charts [data-server]').map(c => ({id: c.dataset.server,
      from: Number(c.dataset.from), points: Number(c.dataset.points)})),
    forecasts: all('#charts [data-server]').filter(c => c.querySelector('.forecast')).map(c => ({
      id: c.dataset.server, label: c.querySelector('.forecast text').textContent,
      trend: !!c.querySelector('.trend'), series: !!c.querySelector('.series')})),
    events: all('#events tbody tr').length,
    live: document.querySelector('#live').className,
    not_reloaded: window.__testMarker === true,
  };
})()"#;

/// Polls the page until `done` holds for its snapshot; on timeout, fails showing the last one.
fn wait_page(cdp: &mut Cdp, what: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + limit;
    loop {
        let last = match cdp.eval(SNAPSHOT) {
            Ok(v) if done(&v) => return v,
            Ok(v) => v,
            // While the page is still loading there may be no context to evaluate in.
            Err(e) => json!({ "error": e }),
        };
        assert!(
            Instant::now() < until,
            "timed out after {limit:?} waiting for the dashboard to show {what}; it shows: {last:#}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map_or(&[], |a| a.as_slice())
}

fn artifact_path() -> PathBuf {
    let dir = match std::env::var_os("REJUV_TEST_ARTIFACTS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts"),
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap().join("dashboard.png")
}

#[test]
fn dashboard_in_headless_chromium_shows_servers_forecasts_and_live_workflows() {
    let spec = Spec {
        mode: "active-standby",
        primaries: 2,
        spares: 1,
        capacity: 2,
        leak_per_second: 2 * 1024 * 1024,
        limit: 400 * 1024 * 1024,
        memory_budget: 128 * 1024 * 1024,
        // A safety net far above where the trend rule fires.
        above: 0.95,
        extra_toml: TREND.into(),
        ..Spec::default()
    };
    let mut h = Harness::new(&spec);
    // The page opens from a link with a one-time code, as the demo prints it.
    let code_file = h.dir.path().join("dashboard.code");
    std::fs::write(&code_file, "0123456789abcdef0123456789abcdef").unwrap();
    h.start_controller_with(&["--session-code-file", code_file.to_str().unwrap()], &[]);
    // Paused, no workflow can start before the page has shown the cluster without one, so
    // a workflow on the page later can only have come by the page's own updates.
    assert_eq!(h.api(reqwest::Method::POST, "/v1/pause").status(), 202);
    let status = h.status();
    assert!(
        status["workflows"].as_array().unwrap().is_empty()
            && status["history"].as_array().unwrap().is_empty(),
        "a workflow ran before the page opened: {status}"
    );
    let mut ids: Vec<String> = status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["s1", "s2", "s3"]);
    // The controller holds a few readings of every server before the page opens: the charts
    // must start with them, not with the page.
    let held = wait_for(
        "the controller to hold three readings of every server",
        Duration::from_secs(60),
        || {
            let mut oldest = Vec::new();
            for id in &ids {
                let v: Value = h
                    .api(reqwest::Method::GET, &format!("/v1/servers/{id}/history"))
                    .json()
                    .ok()?;
                let points = v["points"].as_array()?;
                if points.len() < 3 {
                    return None;
                }
                assert!(
                    points
                        .windows(2)
                        .all(|w| w[0]["at_ms"].as_u64() < w[1]["at_ms"].as_u64()),
                    "history of {id} not in time order: {v}"
                );
                oldest.push(points[0]["at_ms"].as_u64()?);
            }
            Some(oldest)
        },
    );
    let opened_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    let browser = Browser::start(h.dir.path());
    let mut cdp = browser.page();
    let url = format!(
        "http://{}/ui#code=0123456789abcdef0123456789abcdef",
        h.controller_addr
    );
    cdp.call("Page.navigate", json!({ "url": url }))
        .expect("navigating to /ui");

    let first = wait_page(&mut cdp, "every server", Duration::from_secs(30), |v| {
        let mut shown: Vec<&str> = list(v, "rows")
            .iter()
            .filter_map(|r| r["id"].as_str())
            .collect();
        shown.sort();
        shown == ids
    });
    assert!(
        list(&first, "workflows").is_empty(),
        "no workflow can be shown yet: {first:#}"
    );
    // Charted from what the controller held: the first reading drawn is older than the
    // page, and there are several of them at the first drawing already.
    let charts = list(&first, "charts");
    assert_eq!(charts.len(), ids.len(), "a chart per server: {first:#}");
    for c in charts {
        let k = ids.iter().position(|id| c["id"] == id.as_str()).unwrap();
        let oldest = &held[k];
        let from = c["from"].as_u64().unwrap_or(u64::MAX);
        assert!(
            from <= *oldest && from + 5_000 < opened_ms && c["points"].as_u64() >= Some(3),
            "{} is charted only from when the page opened (first reading at {from}, page opened at {opened_ms}, the controller held readings from {oldest}): {first:#}",
            c["id"]
        );
    }
    assert!(!code_file.exists(), "the one-time code was used up");
    let kept = cdp
        .eval("[location.hash, localStorage.getItem('rejuv-token'), sessionStorage.getItem('rejuv-token') !== null]")
        .unwrap();
    assert_eq!(
        kept,
        json!(["", null, true]),
        "the code left the address bar, the token is kept for the tab only"
    );
    cdp.eval("window.__testMarker = true").unwrap();
    assert_eq!(h.api(reqwest::Method::POST, "/v1/resume").status(), 202);

    // The page was opened with no workflow: one showing up now came by its own updates.
    let first_wf = wait_page(
        &mut cdp,
        "a running or finished workflow",
        Duration::from_secs(90),
        |v| !list(v, "workflows").is_empty(),
    );
    assert_eq!(first_wf["not_reloaded"], true, "the page was reloaded");

    // Workflows here last about a second, so the moment kept is not tied to one: a workflow
    // on the page and an aging server (both primaries leak) with its trend and forecast.
    let shot = wait_page(
        &mut cdp,
        "a workflow and a forecast chart for an aging server",
        Duration::from_secs(90),
        |v| !list(v, "workflows").is_empty() && !list(v, "forecasts").is_empty(),
    );
    assert_eq!(
        shot["not_reloaded"], true,
        "the page was reloaded: {shot:#}"
    );
    assert_eq!(shot["live"], "ok", "{shot:#}");
    assert!(shot["events"].as_u64().unwrap() > 0, "no events: {shot:#}");
    for f in list(&shot, "forecasts") {
        let row = list(&shot, "rows")
            .iter()
            .find(|r| r["id"] == f["id"])
            .unwrap();
        assert!(
            row["judgement"] == "suspect" || row["judgement"] == "unstable",
            "a forecast drawn for a server not judged aging: {shot:#}"
        );
        assert!(
            f["label"].as_str().unwrap().contains("exhausted in ~"),
            "{f}"
        );
        assert_eq!(f["trend"], true, "forecast without its trend line: {f}");
        assert_eq!(f["series"], true, "forecast without readings: {f}");
    }
    for w in list(&shot, "workflows") {
        assert!(
            w["steps"].as_u64().unwrap() >= 1,
            "a workflow without its steps: {w}"
        );
    }

    let metrics = cdp.call("Page.getLayoutMetrics", json!({})).unwrap();
    let size = &metrics["cssContentSize"];
    let png = cdp
        .call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": {
                    "x": 0, "y": 0, "scale": 1,
                    "width": size["width"].as_f64().unwrap_or(1300.0),
                    "height": size["height"].as_f64().unwrap_or(1400.0).min(4000.0),
                },
            }),
        )
        .expect("capturing a screenshot");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(png["data"].as_str().expect("screenshot data"))
        .expect("screenshot is base64");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
        "not a real screenshot ({} bytes)",
        bytes.len()
    );
    let path = artifact_path();
    std::fs::write(&path, &bytes).unwrap();
    println!("dashboard screenshot: {}", path.display());
    drop(cdp);
    drop(browser);
}
