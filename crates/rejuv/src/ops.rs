//! Operator commands against a running controller: `status`, `events`, `workflows`, `explain`,
//! `rejuvenate`, `maintenance`, `pause`, `resume`.
//!
//! Tables for people, `--output json` for scripts: in JSON mode stdout carries the JSON alone
//! (one document, or one object per line for `events`) and every message goes to stderr. Each
//! action carries the caller's name in `x-rejuv-actor`, so the controller's event names who
//! asked. Exit codes (documented in `docs/cli.md`): 0 done, 1 runtime failure (controller
//! unreachable, 5xx), 2 bad usage (unreadable token file, a request the controller calls
//! malformed), 3 refused (does not fit the current state, or no such server), 4 unauthorized
//! (no token, or a wrong one).

use crate::table::{bytes, clip, now_ms, secs, wall, Table};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_REFUSED: i32 = 3;
pub const EXIT_UNAUTHORIZED: i32 = 4;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum Output {
    /// Aligned tables for people.
    Table,
    /// JSON alone on stdout, for scripts.
    Json,
}

/// How to reach the controller, who is asking, and how to print the answer.
#[derive(Args, Clone, Debug)]
pub struct Conn {
    /// Controller API URL.
    #[arg(
        long,
        env = "REJUV_CONTROLLER",
        default_value = "http://127.0.0.1:7070",
        value_name = "URL"
    )]
    pub controller: String,
    /// File holding the API token (else the token itself in REJUV_TOKEN).
    #[arg(long, env = "REJUV_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Your name in the controller's events for the actions you take (default: $USER).
    #[arg(long, env = "REJUV_ACTOR", value_name = "NAME")]
    pub actor: Option<String>,
    /// `table` for people, `json` for scripts (JSON alone on stdout, messages on stderr).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Give up on a request after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// What `rejuv events` prints.
pub struct EventsOptions {
    pub follow: bool,
    pub limit: u32,
    pub after: Option<i64>,
    pub interval: Duration,
}

/// `--interval` of `events --follow`: bounded, so a typo neither hammers the controller nor
/// looks like a hang.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(60) {
        return Err("must be between 100ms and 60s".into());
    }
    Ok(d)
}

/// A request that did not succeed, with the exit code it maps to.
#[derive(Debug)]
struct Fail {
    code: i32,
    msg: String,
}

impl Fail {
    fn new(code: i32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
        }
    }
}

/// Prints the failure on stderr and gives its exit code.
fn report(f: Fail) -> i32 {
    eprintln!("rejuv: {}", f.msg);
    f.code
}

/// Writes to stdout; `false` once stdout is gone (`rejuv events -f | head`), which is a normal
/// way for a reader to stop, not an error.
fn emit(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

use rejuv_core::error_chain;

/// The name sent in `x-rejuv-actor`: printable, short, never empty (the controller keeps at
/// most 64 characters and adds which token was used).
fn actor_name(explicit: Option<&str>) -> String {
    let raw = explicit
        .map(str::to_string)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_default();
    let clean: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.@+".contains(*c))
        .take(48)
        .collect();
    if clean.is_empty() {
        "operator".into()
    } else {
        clean
    }
}

struct Client {
    http: reqwest::Client,
    base: reqwest::Url,
    token: String,
    actor: String,
}

impl Client {
    fn new(conn: &Conn) -> Result<Self, Fail> {
        let token = match &conn.token_file {
            Some(f) => {
                crate::cli::read_token(f).map_err(|e| Fail::new(EXIT_USAGE, format!("{e:#}")))?
            }
            None => match std::env::var("REJUV_TOKEN") {
                Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
                _ => {
                    return Err(Fail::new(
                        EXIT_UNAUTHORIZED,
                        "no API token: pass --token-file PATH or set REJUV_TOKEN",
                    ))
                }
            },
        };
        let mut base = reqwest::Url::parse(&conn.controller).map_err(|e| {
            Fail::new(
                EXIT_USAGE,
                format!("--controller {:?} is not a URL: {e}", conn.controller),
            )
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Fail::new(
                EXIT_USAGE,
                format!(
                    "--controller {:?} must be an http:// or https:// URL",
                    conn.controller
                ),
            ));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let http = reqwest::Client::builder()
            .timeout(conn.timeout)
            .connect_timeout(conn.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| Fail::new(EXIT_RUNTIME, error_chain(&e)))?;
        Ok(Self {
            http,
            base,
            token,
            actor: actor_name(conn.actor.as_deref()),
        })
    }

    /// `segments` are joined as path segments (so a server id is escaped), `query` appended.
    fn url(&self, segments: &[&str], query: &str) -> reqwest::Url {
        let mut u = self.base.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            u.set_query(Some(query));
        }
        u
    }

    async fn call(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        body: Option<Value>,
    ) -> Result<Value, Fail> {
        let mut req = self
            .http
            .request(method, url.clone())
            .bearer_auth(&self.token)
            .header("x-rejuv-actor", &self.actor);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            Fail::new(
                EXIT_RUNTIME,
                format!(
                    "cannot reach the controller at {url}: {}",
                    error_chain(&e.without_url())
                ),
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| {
            Fail::new(
                EXIT_RUNTIME,
                format!("reading the controller's answer: {}", error_chain(&e)),
            )
        })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(value);
        }
        let msg = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.as_str().map_or(value.to_string(), str::to_string));
        Err(match status.as_u16() {
            401 | 403 => Fail::new(
                EXIT_UNAUTHORIZED,
                format!("unauthorized: {msg} (check --token-file or REJUV_TOKEN)"),
            ),
            404 | 409 => Fail::new(EXIT_REFUSED, format!("refused: {msg}")),
            400 | 422 => Fail::new(EXIT_USAGE, format!("bad request: {msg}")),
            _ => Fail::new(EXIT_RUNTIME, format!("controller answered {status}: {msg}")),
        })
    }

    async fn get(&self, segments: &[&str], query: &str) -> Result<Value, Fail> {
        self.call(reqwest::Method::GET, self.url(segments, query), None)
            .await
    }
}

/// Runs `f` with a client on a small runtime and maps a failure to its exit code.
fn with_client<F, Fut>(conn: &Conn, f: F) -> anyhow::Result<i32>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<i32, Fail>>,
{
    let client = match Client::new(conn) {
        Ok(c) => c,
        Err(e) => return Ok(report(e)),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(f(client)).unwrap_or_else(report))
}

/// Prints `v` pretty on stdout (JSON mode) or `human(v)` (table mode).
fn show(conn: &Conn, v: &Value, human: impl FnOnce(&Value) -> String) -> i32 {
    let text = match conn.output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default()),
        Output::Table => human(v),
    };
    emit(&text);
    0
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("-")
}

/// A server state as the API shows it: a name, or an object tagged `state`.
fn state_name(v: &Value) -> &str {
    v.as_str().or_else(|| v["state"].as_str()).unwrap_or("?")
}

pub fn status(conn: &Conn) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let v = c.get(&["v1", "status"], "").await?;
        Ok(show(conn, &v, render_status))
    })
}

fn render_status(v: &Value) -> String {
    let mut out = format!(
        "cluster {} ({}), epoch {}{}; rejuvenations: {} completed, {} rolled back, {} failed\n",
        str_of(v, "cluster"),
        str_of(v, "mode"),
        v["epoch"],
        if v["paused"].as_bool() == Some(true) {
            ", PAUSED (no new workflow starts; `rejuv resume` to lift)"
        } else {
            ""
        },
        v["completed_total"].as_u64().unwrap_or(0),
        v["rolled_back_total"].as_u64().unwrap_or(0),
        v["failed_total"].as_u64().unwrap_or(0),
    );
    if let Some(since) = v["store"]["failing_since_ms"].as_u64() {
        out.push_str(&format!(
            "STORE FAILING since {} ({} commits failed): nothing is acted on until it takes commits again; last error: {}\n",
            wall(since),
            v["store"]["commit_failures_total"],
            str_of(&v["store"], "last_error"),
        ));
    }
    let mut t = Table::new(&[
        "SERVER", "ROLE", "STATE", "LIST", "JUDGED", "MEMORY", "LOAD", "RUNNING", "WHY",
    ]);
    for s in v["servers"].as_array().into_iter().flatten() {
        let mut state = state_name(&s["state"]).to_string();
        if s["maintenance"].as_bool() == Some(true) {
            state.push_str(",maintenance");
        }
        if s["reachable"].as_bool() == Some(false) {
            state.push_str(",unreachable");
        }
        let rss = s["instances_rss_bytes"].as_u64().unwrap_or(0);
        let memory = match s["memory_budget_bytes"].as_u64().filter(|b| *b > 0) {
            Some(b) => format!("{} {:.0}%", bytes(rss), rss as f64 * 100.0 / b as f64),
            None => bytes(rss),
        };
        let why = s["explanation"]["message"]
            .as_str()
            .or(s["blocked_reason"].as_str())
            .unwrap_or("");
        t.row(vec![
            str_of(s, "id").into(),
            str_of(s, "role").into(),
            state,
            if s["on_list"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            }
            .into(),
            str_of(s, "judgement").into(),
            memory,
            s["load1"]
                .as_f64()
                .map_or("-".into(), |l| format!("{l:.2}")),
            s["running_time_s"].as_f64().map_or("-".into(), secs),
            why.into(),
        ]);
    }
    out.push_str(&t.render());
    let running = workflow_table(v["workflows"].as_array().into_iter().flatten(), true);
    if !running.is_empty() {
        out.push_str("\nrunning workflows:\n");
        out.push_str(&running.render());
    }
    out
}

/// Running workflows show their phase and how long they have been in it; finished ones their
/// outcome and how long they took.
fn workflow_table<'a>(ws: impl Iterator<Item = &'a Value>, running: bool) -> Table {
    let now = now_ms();
    let mut t = Table::new(&[
        "ID",
        "SERVER",
        "TARGET",
        if running { "PHASE" } else { "OUTCOME" },
        if running { "IN PHASE" } else { "TOOK" },
        "STARTED",
        "REASON",
    ]);
    for w in ws {
        let started = w["started_at_ms"].as_u64().unwrap_or(0);
        let (what, span) = if running {
            let since = w["phase_since_ms"].as_u64().unwrap_or(started);
            (
                str_of(w, "phase").to_string(),
                secs(now.saturating_sub(since) as f64 / 1000.0),
            )
        } else {
            let outcome = &w["outcome"];
            let mut o = outcome["outcome"].as_str().unwrap_or("?").to_string();
            if let Some(r) = outcome["reason"].as_str() {
                o = format!("{o}: {}", clip(r, 40));
            }
            let end = w["steps"]
                .as_array()
                .and_then(|s| s.last())
                .and_then(|s| s["at_ms"].as_u64())
                .unwrap_or(started);
            (o, secs(end.saturating_sub(started) as f64 / 1000.0))
        };
        let mut reason = str_of(w, "reason").to_string();
        if w["forced"].as_bool() == Some(true) {
            reason.push_str(" (forced)");
        }
        t.row(vec![
            w["id"].to_string(),
            str_of(w, "server").into(),
            str_of(w, "target").into(),
            what,
            span,
            if started > 0 {
                wall(started)
            } else {
                "-".into()
            },
            reason,
        ]);
    }
    t
}

pub fn workflows(conn: &Conn) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let status = c.get(&["v1", "status"], "").await?;
        let finished = c.get(&["v1", "workflows"], "").await?;
        let v = json!({
            "running": status["workflows"].clone(),
            "finished": finished,
        });
        Ok(show(conn, &v, |v| {
            let mut out = String::new();
            let running = workflow_table(v["running"].as_array().into_iter().flatten(), true);
            if running.is_empty() {
                out.push_str("running: none\n");
            } else {
                out.push_str("running:\n");
                out.push_str(&running.render());
            }
            let done = workflow_table(v["finished"].as_array().into_iter().flatten(), false);
            if done.is_empty() {
                out.push_str("finished: none\n");
            } else {
                out.push_str("finished (newest first):\n");
                out.push_str(&done.render());
            }
            out
        }))
    })
}

fn event_line(e: &Value) -> String {
    format!(
        "{:>6}  {}  {:<18}  {:<4}  {}\n",
        e["seq"].as_i64().unwrap_or(0),
        wall(e["at_ms"].as_u64().unwrap_or(0)),
        str_of(e, "kind"),
        e["server"].as_str().unwrap_or("-"),
        str_of(e, "message")
    )
}

/// Prints a batch of events; returns the last sequence number seen and whether stdout is
/// still open.
fn print_events(conn: &Conn, v: &Value, mut last: i64) -> (i64, bool) {
    let mut text = String::new();
    for e in v.as_array().into_iter().flatten() {
        last = last.max(e["seq"].as_i64().unwrap_or(last));
        match conn.output {
            // One object per line (JSON Lines), so `--follow` can stream.
            Output::Json => {
                text.push_str(&e.to_string());
                text.push('\n');
            }
            Output::Table => text.push_str(&event_line(e)),
        }
    }
    let open = text.is_empty() || emit(&text);
    (last, open)
}

pub fn events(conn: &Conn, opts: &EventsOptions) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let first = match opts.after {
            Some(a) => {
                c.get(
                    &["v1", "events"],
                    &format!("after={a}&limit={}", opts.limit),
                )
                .await?
            }
            None => {
                c.get(&["v1", "events"], &format!("limit={}", opts.limit))
                    .await?
            }
        };
        if conn.output == Output::Table
            && !opts.follow
            && first.as_array().is_some_and(|a| a.is_empty())
        {
            eprintln!("rejuv: no events");
        }
        let (mut last, open) = print_events(conn, &first, opts.after.unwrap_or(0));
        if !opts.follow || !open {
            return Ok(0);
        }
        if last == 0 {
            // Nothing yet: start from the newest event, whatever its number.
            last = c
                .get(&["v1", "events"], "limit=1")
                .await?
                .as_array()
                .and_then(|a| a.last())
                .and_then(|e| e["seq"].as_i64())
                .unwrap_or(0);
        }
        let mut unreachable = false;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                _ = &mut ctrl_c => return Ok(0),
                _ = tokio::time::sleep(opts.interval) => {}
            }
            // Drain a backlog in pages before sleeping again.
            loop {
                match c
                    .get(&["v1", "events"], &format!("after={last}&limit=1000"))
                    .await
                {
                    Ok(v) => {
                        if unreachable {
                            eprintln!("rejuv: controller reachable again");
                            unreachable = false;
                        }
                        let n = v.as_array().map_or(0, Vec::len);
                        let (l, open) = print_events(conn, &v, last);
                        last = l;
                        if !open {
                            return Ok(0);
                        }
                        if n < 1000 {
                            break;
                        }
                    }
                    // A controller restarting is normal while following: say so once, retry.
                    Err(f) if f.code == EXIT_RUNTIME => {
                        if !unreachable {
                            eprintln!("rejuv: {}; retrying every {:?}", f.msg, opts.interval);
                            unreachable = true;
                        }
                        break;
                    }
                    Err(f) => return Err(f),
                }
            }
        }
    })
}

pub fn explain(conn: &Conn, server: &str) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let v = c.get(&["v1", "servers", server, "explain"], "").await?;
        Ok(show(conn, &v, |v| render_explain(server, v)))
    })
}

fn render_explain(server: &str, v: &Value) -> String {
    let mut out = format!(
        "{server}: {} ({}, {})\n",
        str_of(v, "judgement"),
        state_name(&v["state"]),
        str_of(v, "role"),
    );
    let mut kv = |k: &str, val: String| out.push_str(&format!("  {k:<10}{val}\n"));
    // A server being rejuvenated is judged afresh; what started its workflow is kept on it.
    let own_workflow = Some(&v["workflow"]).filter(|w| w["server"].as_str() == Some(server));
    let from_workflow =
        v["explanation"].is_null() && own_workflow.is_some_and(|w| w["explanation"].is_object());
    if from_workflow {
        kv("judged:", "when its workflow started:".into());
    }
    let explanation = if from_workflow {
        own_workflow.and_then(|w| w["explanation"].as_object())
    } else {
        v["explanation"].as_object()
    };
    match explanation {
        Some(e) => {
            let get = |k: &str| e.get(k).cloned().unwrap_or(Value::Null);
            kv(
                "rule:",
                format!(
                    "{} on {}",
                    get("rule").as_str().unwrap_or("?"),
                    get("resource").as_str().unwrap_or("?")
                ),
            );
            kv("why:", get("message").as_str().unwrap_or("").to_string());
            if let (Some(val), Some(lim)) = (get("value").as_f64(), get("limit").as_f64()) {
                // Fractions (memory, swap, instance RSS against the budget) read as percents.
                let v = if lim <= 1.0 {
                    format!("{:.1}% (limit {:.1}%)", val * 100.0, lim * 100.0)
                } else {
                    format!("{val:.1} (limit {lim:.1})")
                };
                kv("value:", v);
            }
            match get("tte_s").as_f64() {
                Some(t) => {
                    let at = now_ms() + (t.max(0.0) * 1000.0) as u64;
                    let mut f = format!("exhausted in about {} (around {})", secs(t), wall(at));
                    if let Some(c) = get("confidence").as_f64() {
                        f.push_str(&format!(
                            ", confidence {:.0}%",
                            (c * 100.0).floor().min(99.0)
                        ));
                    }
                    if let Some(s) = get("slope_per_s").as_f64() {
                        f.push_str(&format!(", trend {s:+.3e}/s"));
                    }
                    kv("forecast:", f);
                }
                None => kv(
                    "forecast:",
                    "none (a threshold rule fired; no trend was estimated)".into(),
                ),
            }
        }
        None => match own_workflow.and_then(|w| w["reason"].as_str()) {
            Some(reason) => kv("why:", format!("its workflow started: {reason}")),
            None => kv("rule:", "none fired".into()),
        },
    }
    if let Some(b) = v["blocked_reason"].as_str() {
        kv("waiting:", b.trim_start_matches("waiting: ").to_string());
    }
    if v["workflow"].is_object() {
        let w = &v["workflow"];
        kv(
            "workflow:",
            format!(
                "{} {} -> {}, {}",
                w["id"],
                str_of(w, "server"),
                str_of(w, "target"),
                str_of(w, "phase")
            ),
        );
    }
    if v["last_workflow"].is_object() {
        let w = &v["last_workflow"];
        kv(
            "last:",
            format!(
                "workflow {} -> {}, {} (started {})",
                w["id"],
                str_of(w, "target"),
                w["outcome"]["outcome"].as_str().unwrap_or("?"),
                wall(w["started_at_ms"].as_u64().unwrap_or(0))
            ),
        );
    }
    out
}

/// Sends an action and prints what was accepted: in JSON mode the controller's answer with the
/// action, server and actor added.
async fn act(
    c: &Client,
    conn: &Conn,
    url: reqwest::Url,
    body: Option<Value>,
    mut record: Value,
    done: String,
) -> Result<i32, Fail> {
    let v = c.call(reqwest::Method::POST, url, body).await?;
    if let (Some(r), Some(ans)) = (record.as_object_mut(), v.as_object()) {
        for (k, val) in ans {
            r.insert(k.clone(), val.clone());
        }
        r.insert("actor".into(), Value::String(c.actor.clone()));
    }
    Ok(show(conn, &record, |_| format!("{done}\n")))
}

pub fn rejuvenate(conn: &Conn, server: &str, force: bool) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let url = c.url(
            &["v1", "servers", server, "rejuvenate"],
            &format!("force={force}"),
        );
        let record = json!({"action": "rejuvenate", "server": server, "force": force});
        let done = format!(
            "rejuvenation of {server} requested{}; follow it with `rejuv events --follow`",
            if force {
                " (force: budget ignored)"
            } else {
                ""
            }
        );
        act(&c, conn, url, None, record, done).await
    })
}

pub fn maintenance(conn: &Conn, server: &str, on: bool) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let url = c.url(&["v1", "servers", server, "maintenance"], "");
        let record = json!({"action": "maintenance", "server": server, "on": on});
        let done = if on {
            format!("{server} is in maintenance: out of service and left alone until `rejuv maintenance {server} off`")
        } else {
            format!("{server} released from maintenance")
        };
        act(&c, conn, url, Some(json!({"on": on})), record, done).await
    })
}

pub fn pause(conn: &Conn) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let url = c.url(&["v1", "pause"], "");
        let done = "paused: no new workflow starts (running ones finish); `rejuv resume` to lift";
        act(&c, conn, url, None, json!({"action": "pause"}), done.into()).await
    })
}

pub fn resume(conn: &Conn) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let url = c.url(&["v1", "resume"], "");
        let done = "resumed: workflows may start again";
        act(
            &c,
            conn,
            url,
            None,
            json!({"action": "resume"}),
            done.into(),
        )
        .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actor_name_is_short_and_printable() {
        assert_eq!(actor_name(Some("alice")), "alice");
        assert_eq!(actor_name(Some("bob smith\n")), "bobsmith");
        assert_eq!(actor_name(Some("   ")), "operator");
        assert_eq!(actor_name(Some(&"x".repeat(100))).len(), 48);
    }

    #[test]
    fn the_follow_interval_is_bounded() {
        assert!(parse_interval("1s").is_ok());
        assert!(parse_interval("10ms").is_err());
        assert!(parse_interval("2m").is_err());
    }

    #[test]
    fn status_table_shows_every_server_and_marks_maintenance() {
        let v = json!({
            "cluster": "c", "mode": "active-standby", "epoch": 3, "paused": true,
            "servers": [
                {"id": "s1", "role": "primary", "state": "in-service", "on_list": true,
                 "maintenance": false, "reachable": true, "judgement": "unstable",
                 "explanation": {"message": "instance-rss will be exhausted in about 2m"},
                 "instances_rss_bytes": 50_000_000u64, "memory_budget_bytes": 100_000_000u64,
                 "load1": 0.5, "running_time_s": 75.0},
                {"id": "s2", "role": "spare", "state": "in-service", "on_list": false,
                 "maintenance": true, "reachable": true, "judgement": "stable",
                 "instances_rss_bytes": 0}
            ],
            "workflows": []
        });
        let t = render_status(&v);
        assert!(t.contains("PAUSED"), "{t}");
        let s1 = t.lines().find(|l| l.starts_with("s1 ")).unwrap();
        assert!(
            s1.contains("50MB 50%") && s1.contains("1m15s") && s1.contains("exhausted"),
            "{t}"
        );
        let s2 = t.lines().find(|l| l.starts_with("s2 ")).unwrap();
        assert!(s2.contains("in-service,maintenance"), "{t}");
        assert!(!t.contains("running workflows"), "{t}");
    }

    #[test]
    fn explain_names_the_rule_and_the_forecast() {
        let v = json!({
            "id": "s1", "role": "primary", "state": {"state": "in-service"},
            "judgement": "unstable",
            "explanation": {"resource": "instance-rss", "rule": "trend", "value": 0.4,
                            "limit": 1.0, "tte_s": 125.0, "confidence": 0.999,
                            "slope_per_s": 0.004, "message": "instance-rss will be exhausted"}
        });
        let t = render_explain("s1", &v);
        assert!(t.contains("rule:     trend on instance-rss"), "{t}");
        assert!(t.contains("forecast: exhausted in about 2m05s"), "{t}");
        assert!(t.contains("confidence 99%"), "{t}");
    }
}
