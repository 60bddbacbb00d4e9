//! Operator commands against a running controller: `status`, `events`, `workflows`, `explain`,
//! `rejuvenate`, `maintenance`, `pause`, `resume`, `reload`, `server pending|approve|remove`.
//!
//! Tables for people, `--output json` for scripts: in JSON mode stdout carries the JSON alone
//! (one document, or one object per line for `events`) and every message goes to stderr. Each
//! action carries the caller's name in `x-rejuv-actor`, so the controller's event names who
//! asked. Answers are read as the [`rejuv_core::wire`] types; exit codes are those of
//! [`crate::conn`] (0 done).

use crate::conn::{report, Client, Conn, Fail, Output, EXIT_RUNTIME};
use crate::table::{bytes, clip, now_ms, render, secs, table, wall, Table};
use rejuv_core::cluster::Outcome;
use rejuv_core::wire::{
    Accepted, Explain, MaintenanceRequest, PendingJoin, ServersChanged, Status, StoredEvent,
    Workflow, Workflows,
};
use serde::Serialize;
use std::io::Write;
use std::time::Duration;

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

/// Writes to stdout, control characters escaped (event messages and reasons hold text that
/// came from agents and services); `false` once stdout is gone (`rejuv events -f | head`),
/// which is a normal way for a reader to stop, not an error.
fn emit(text: &str) -> bool {
    let text = rejuv_core::text::terminal_safe(text);
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
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

/// `v` as JSON with its keys sorted at every level, as these commands have always printed it.
fn json_value(v: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Prints `v` pretty on stdout (JSON mode) or `human(v)` (table mode).
fn show<T: Serialize>(conn: &Conn, v: &T, human: impl FnOnce(&T) -> String) -> i32 {
    let text = match conn.output {
        Output::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&json_value(v)).unwrap_or_default()
        ),
        Output::Table => human(v),
    };
    emit(&text);
    0
}

fn or_dash(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}

/// An outcome's name as the API writes it, and its reason.
fn outcome(o: Option<&Outcome>) -> (&'static str, Option<&str>) {
    match o {
        Some(Outcome::Completed) => ("completed", None),
        Some(Outcome::RolledBack { reason }) => ("rolled-back", Some(reason)),
        Some(Outcome::Failed { reason }) => ("failed", Some(reason)),
        None => ("?", None),
    }
}

pub fn status(conn: &Conn) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let v: Status = c.get(&["v1", "status"], "").await?;
        Ok(show(conn, &v, render_status))
    })
}

fn render_status(v: &Status) -> String {
    let mut out = format!(
        "cluster {} ({}), epoch {}{}; rejuvenations: {} completed, {} rolled back, {} failed\n",
        v.cluster,
        v.mode,
        v.epoch,
        if v.paused {
            ", PAUSED (no new workflow starts; `rejuv resume` to lift)"
        } else {
            ""
        },
        v.completed_total,
        v.rolled_back_total,
        v.failed_total,
    );
    if let Some(since) = v.store.failing_since_ms {
        out.push_str(&format!(
            "STORE FAILING since {} ({} commits failed): nothing is acted on until it takes commits again; last error: {}\n",
            wall(since),
            v.store.commit_failures_total,
            or_dash(v.store.last_error.as_deref()),
        ));
    }
    let mut t = table(&[
        "SERVER", "ROLE", "STATE", "LIST", "JUDGED", "MEMORY", "LOAD", "RUNNING", "WHY",
    ]);
    for s in &v.servers {
        let mut state = s.state.clone();
        if s.maintenance && state != "maintenance" {
            state.push_str(",maintenance");
        }
        if !s.reachable {
            state.push_str(",unreachable");
        }
        let rss = s.instances_rss_bytes;
        let memory = match s.memory_budget_bytes.filter(|b| *b > 0) {
            Some(b) => format!("{} {:.0}%", bytes(rss), rss as f64 * 100.0 / b as f64),
            None => bytes(rss),
        };
        let why = s
            .explanation
            .as_ref()
            .map(|e| e.message.as_str())
            .or(s.blocked_reason.as_deref())
            .unwrap_or("");
        t.add_row(vec![
            s.id.clone(),
            s.role.to_string(),
            state,
            if s.on_list { "yes" } else { "no" }.into(),
            s.judgement.to_string(),
            memory,
            s.load1.map_or("-".into(), |l| format!("{l:.2}")),
            s.running_time_s.map_or("-".into(), secs),
            why.into(),
        ]);
    }
    out.push_str(&render(&t));
    let running = workflow_table(&v.workflows, true);
    if !running.is_empty() {
        out.push_str("\nrunning workflows:\n");
        out.push_str(&render(&running));
    }
    out
}

/// Running workflows show their phase and how long they have been in it; finished ones their
/// outcome and how long they took.
fn workflow_table(ws: &[Workflow], running: bool) -> Table {
    let now = now_ms();
    let mut t = table(&[
        "ID",
        "SERVER",
        "TARGET",
        if running { "PHASE" } else { "OUTCOME" },
        if running { "IN PHASE" } else { "TOOK" },
        "STARTED",
        "REASON",
    ]);
    for w in ws {
        let started = w.started_at_ms;
        let (what, span) = if running {
            (
                w.phase.to_string(),
                secs(now.saturating_sub(w.phase_since_ms) as f64 / 1000.0),
            )
        } else {
            let (name, reason) = outcome(w.outcome.as_ref());
            let o = match reason {
                Some(r) => format!("{name}: {}", clip(r, 40)),
                None => name.to_string(),
            };
            let end = w.steps.last().map_or(started, |s| s.at_ms);
            (o, secs(end.saturating_sub(started) as f64 / 1000.0))
        };
        let mut reason = w.reason.clone();
        if w.forced {
            reason.push_str(" (forced)");
        }
        t.add_row(vec![
            w.id.to_string(),
            w.server.clone(),
            w.target.clone(),
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
        let status: Status = c.get(&["v1", "status"], "").await?;
        let finished: Vec<Workflow> = c.get(&["v1", "workflows"], "").await?;
        let v = Workflows {
            running: status.workflows,
            finished,
        };
        Ok(show(conn, &v, |v| {
            let mut out = String::new();
            let running = workflow_table(&v.running, true);
            if running.is_empty() {
                out.push_str("running: none\n");
            } else {
                out.push_str("running:\n");
                out.push_str(&render(&running));
            }
            let done = workflow_table(&v.finished, false);
            if done.is_empty() {
                out.push_str("finished: none\n");
            } else {
                out.push_str("finished (newest first):\n");
                out.push_str(&render(&done));
            }
            out
        }))
    })
}

fn event_line(e: &StoredEvent) -> String {
    format!(
        "{:>6}  {}  {:<18}  {:<4}  {}\n",
        e.seq,
        wall(e.event.at_ms),
        e.event.kind.to_string(),
        or_dash(e.event.server.as_deref()),
        e.event.message
    )
}

/// Prints a batch of events; returns the last sequence number seen and whether stdout is
/// still open.
fn print_events(conn: &Conn, events: &[StoredEvent], mut last: i64) -> (i64, bool) {
    let mut text = String::new();
    for e in events {
        last = last.max(e.seq);
        match conn.output {
            // One object per line (JSON Lines), so `--follow` can stream.
            Output::Json => {
                text.push_str(&json_value(e).to_string());
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
        let query = match opts.after {
            Some(a) => format!("after={a}&limit={}", opts.limit),
            None => format!("limit={}", opts.limit),
        };
        let first: Vec<StoredEvent> = c.get(&["v1", "events"], &query).await?;
        if conn.output == Output::Table && !opts.follow && first.is_empty() {
            eprintln!("rejuv: no events");
        }
        let (mut last, open) = print_events(conn, &first, opts.after.unwrap_or(0));
        if !opts.follow || !open {
            return Ok(0);
        }
        if last == 0 {
            // Nothing yet: start from the newest event, whatever its number.
            let newest: Vec<StoredEvent> = c.get(&["v1", "events"], "limit=1").await?;
            last = newest.last().map_or(0, |e| e.seq);
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
                    .get::<Vec<StoredEvent>>(&["v1", "events"], &format!("after={last}&limit=1000"))
                    .await
                {
                    Ok(v) => {
                        if unreachable {
                            eprintln!("rejuv: controller reachable again");
                            unreachable = false;
                        }
                        let (l, open) = print_events(conn, &v, last);
                        last = l;
                        if !open {
                            return Ok(0);
                        }
                        if v.len() < 1000 {
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
        let v: Explain = c.get(&["v1", "servers", server, "explain"], "").await?;
        Ok(show(conn, &v, |v| render_explain(server, v)))
    })
}

fn render_explain(server: &str, v: &Explain) -> String {
    let mut out = format!(
        "{server}: {} ({}, {})\n",
        v.judgement,
        v.state.name(),
        v.role,
    );
    let mut kv = |k: &str, val: String| out.push_str(&format!("  {k:<10}{val}\n"));
    // A server being rejuvenated is judged afresh; what started its workflow is kept on it.
    let own_workflow = v.workflow.as_ref().filter(|w| w.server == server);
    let from_workflow =
        v.explanation.is_none() && own_workflow.is_some_and(|w| w.explanation.is_some());
    if from_workflow {
        kv("judged:", "when its workflow started:".into());
    }
    let explanation = if from_workflow {
        own_workflow.and_then(|w| w.explanation.as_ref())
    } else {
        v.explanation.as_ref()
    };
    match explanation {
        Some(e) => {
            kv("rule:", format!("{} on {}", e.rule, e.resource));
            kv("why:", e.message.clone());
            // Fractions (memory, swap, instance RSS against the budget) read as percents.
            let value = if e.limit <= 1.0 {
                format!("{:.1}% (limit {:.1}%)", e.value * 100.0, e.limit * 100.0)
            } else {
                format!("{:.1} (limit {:.1})", e.value, e.limit)
            };
            kv("value:", value);
            match e.tte_s {
                Some(t) => {
                    let at = now_ms() + (t.max(0.0) * 1000.0) as u64;
                    let mut f = format!("exhausted in about {} (around {})", secs(t), wall(at));
                    if let Some(c) = e.confidence {
                        f.push_str(&format!(
                            ", confidence {:.0}%",
                            (c * 100.0).floor().min(99.0)
                        ));
                    }
                    if let Some(s) = e.slope_per_s {
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
        None => match own_workflow {
            Some(w) => kv("why:", format!("its workflow started: {}", w.reason)),
            None => kv("rule:", "none fired".into()),
        },
    }
    if let Some(b) = &v.blocked_reason {
        kv("waiting:", b.trim_start_matches("waiting: ").to_string());
    }
    if let Some(w) = &v.workflow {
        kv(
            "workflow:",
            format!("{} {} -> {}, {}", w.id, w.server, w.target, w.phase),
        );
    }
    if let Some(w) = &v.last_workflow {
        kv(
            "last:",
            format!(
                "workflow {} -> {}, {} (started {})",
                w.id,
                w.target,
                outcome(w.outcome.as_ref()).0,
                wall(w.started_at_ms)
            ),
        );
    }
    out
}

/// What an action prints in JSON mode: the action, its server and flag, the controller's
/// answer and who asked.
#[derive(Serialize)]
struct ActionRecord<'a> {
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    force: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on: Option<bool>,
    #[serde(flatten)]
    answer: Accepted,
    actor: &'a str,
}

/// What an action is, for the request and for its record.
struct Action<'a> {
    name: &'static str,
    server: Option<&'a str>,
    force: Option<bool>,
    on: Option<bool>,
}

/// Sends an action and prints what was accepted: `done` for people, the [`ActionRecord`] in
/// JSON mode.
async fn act(
    c: &Client,
    conn: &Conn,
    url: reqwest::Url,
    body: Option<MaintenanceRequest>,
    action: Action<'_>,
    done: String,
) -> Result<i32, Fail> {
    let answer: Accepted = c.call(reqwest::Method::POST, url, body.as_ref()).await?;
    let record = ActionRecord {
        action: action.name,
        server: action.server,
        force: action.force,
        on: action.on,
        answer,
        actor: &c.actor,
    };
    Ok(show(conn, &record, |_| format!("{done}\n")))
}

pub fn rejuvenate(conn: &Conn, server: &str, force: bool) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let url = c.url(
            &["v1", "servers", server, "rejuvenate"],
            &format!("force={force}"),
        );
        let action = Action {
            name: "rejuvenate",
            server: Some(server),
            force: Some(force),
            on: None,
        };
        let done = format!(
            "rejuvenation of {server} requested{}; follow it with `rejuv events --follow`",
            if force {
                " (force: budget ignored)"
            } else {
                ""
            }
        );
        act(&c, conn, url, None, action, done).await
    })
}

pub fn maintenance(conn: &Conn, server: &str, on: bool) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let url = c.url(&["v1", "servers", server, "maintenance"], "");
        let action = Action {
            name: "maintenance",
            server: Some(server),
            force: None,
            on: Some(on),
        };
        let done = if on {
            format!("{server} is in maintenance: out of service and left alone until `rejuv maintenance {server} off`")
        } else {
            format!("{server} released from maintenance")
        };
        act(&c, conn, url, Some(MaintenanceRequest { on }), action, done).await
    })
}

/// `pause` or `resume`: no server, no flag.
fn cluster_action(conn: &Conn, name: &'static str, done: &'static str) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let url = c.url(&["v1", name], "");
        let action = Action {
            name,
            server: None,
            force: None,
            on: None,
        };
        act(&c, conn, url, None, action, done.into()).await
    })
}

pub fn pause(conn: &Conn) -> anyhow::Result<i32> {
    cluster_action(
        conn,
        "pause",
        "paused: no new workflow starts (running ones finish); `rejuv resume` to lift",
    )
}

pub fn resume(conn: &Conn) -> anyhow::Result<i32> {
    cluster_action(conn, "resume", "resumed: workflows may start again")
}

/// `rejuv logs INSTANCE [--follow]`: an instance's output through the controller and its
/// agent; `--follow` keeps printing what it writes until Ctrl-C (or the instance goes away).
pub fn logs(
    conn: &Conn,
    id: &str,
    tail: u64,
    follow: bool,
    interval: Duration,
) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let path = ["v1", "instances", id, "logs"];
        let first: rejuv_core::api::LogChunk = c.get(&path, &format!("tail={tail}")).await?;
        if !emit(&first.text) {
            return Ok(0);
        }
        if !follow {
            return Ok(0);
        }
        let mut next = first.next;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                _ = &mut ctrl_c => return Ok(0),
                _ = tokio::time::sleep(interval) => {}
            }
            let chunk: rejuv_core::api::LogChunk = c.get(&path, &format!("offset={next}")).await?;
            if chunk.offset < next {
                eprintln!("rejuv: the log of {id} started over (the instance restarted)");
            }
            if !emit(&chunk.text) {
                return Ok(0);
            }
            next = chunk.next;
        }
    })
}

/// `rejuv cancel ID`: a queued request (server id) or an unswitched workflow (its id).
pub fn cancel(conn: &Conn, id: &str) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let url = c.url(&["v1", "cancel", id], "");
        let action = Action {
            name: "cancel",
            server: Some(id),
            force: None,
            on: None,
        };
        let done = format!("cancelled {id}; `rejuv events` says what was withdrawn");
        act(&c, conn, url, None, action, done).await
    })
}

/// What `POST /v1/reload` answers.
#[derive(serde::Serialize, serde::Deserialize)]
struct Reloaded {
    changes: Vec<String>,
}

/// `rejuv reload`: the controller reads its config file again.
pub fn reload(conn: &Conn) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let url = c.url(&["v1", "reload"], "");
        let answer: Reloaded = c.call(reqwest::Method::POST, url, None::<&()>).await?;
        Ok(show(conn, &answer, |a| {
            if a.changes.is_empty() {
                "config reloaded: nothing changed\n".to_string()
            } else {
                let mut t = String::from("config reloaded:\n");
                for line in &a.changes {
                    t += &format!("  {line}\n");
                }
                t
            }
        }))
    })
}

/// `rejuv server pending`: the join requests waiting for an operator.
pub fn pending(conn: &Conn) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let list: Vec<PendingJoin> = c.get(&["v1", "servers", "pending"], "").await?;
        Ok(show(conn, &list, |l| render_pending(l, now_ms())))
    })
}

fn render_pending(list: &[PendingJoin], now: u64) -> String {
    if list.is_empty() {
        return "no join request is waiting\n".into();
    }
    let mut t = table(&[
        "SERVER", "ROLE", "CAPACITY", "AGENT", "PORTS", "FROM", "WAITING",
    ]);
    for p in list {
        let r = &p.request;
        t.add_row(vec![
            clip(&r.id, 64),
            clip(&r.role, 16),
            r.capacity.to_string(),
            r.agent.to_string(),
            format!("{}-{}", r.port_range[0], r.port_range[1]),
            p.from.clone(),
            secs(now.saturating_sub(p.requested_at_ms) as f64 / 1000.0),
        ]);
    }
    render(&t)
}

/// `rejuv server approve ID`.
pub fn approve(conn: &Conn, server: &str) -> anyhow::Result<i32> {
    servers_changed(conn, server, "approve")
}

/// `rejuv server remove ID`.
pub fn remove(conn: &Conn, server: &str) -> anyhow::Result<i32> {
    servers_changed(conn, server, "remove")
}

fn servers_changed(conn: &Conn, server: &str, action: &'static str) -> anyhow::Result<i32> {
    with_client(conn, |c| async move {
        let url = c.url(&["v1", "servers", server, action], "");
        let answer: ServersChanged = c.call(reqwest::Method::POST, url, None::<&()>).await?;
        Ok(show(conn, &answer, |a| {
            let mut t = format!("{action} {server}:\n");
            for line in &a.changes {
                t += &format!("  {line}\n");
            }
            t
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;
    use serde_json::json;

    #[test]
    fn the_follow_interval_is_bounded() {
        assert!(parse_interval("1s").is_ok());
        assert!(parse_interval("10ms").is_err());
        assert!(parse_interval("2m").is_err());
    }

    #[test]
    fn status_table_shows_every_server_and_marks_maintenance() {
        let v = testdata::status(json!({
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
        }));
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
        let v = testdata::explain(json!({
            "id": "s1", "role": "primary", "state": {"state": "in-service"},
            "judgement": "unstable",
            "explanation": {"resource": "instance-rss", "rule": "trend", "value": 0.4,
                            "limit": 1.0, "tte_s": 125.0, "confidence": 0.999,
                            "slope_per_s": 0.004, "message": "instance-rss will be exhausted"}
        }));
        let t = render_explain("s1", &v);
        assert!(t.contains("rule:     trend on instance-rss"), "{t}");
        assert!(t.contains("forecast: exhausted in about 2m05s"), "{t}");
        assert!(t.contains("confidence 99%"), "{t}");
    }

    #[test]
    fn pending_requests_print_one_row_each() {
        let p: Vec<PendingJoin> = serde_json::from_value(json!([{
            "request": {"id": "s7", "role": "spare", "capacity": 8, "services": ["web"],
                        "agent": "10.0.0.17:7001", "port_range": [20000, 20999]},
            "from": "10.0.0.17:50312", "requested_at_ms": 1_000, "last_asked_at_ms": 61_000
        }]))
        .unwrap();
        let text = render_pending(&p, 91_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("SERVER"), "{text}");
        for cell in ["s7", "spare", "8", "10.0.0.17:7001", "20000-20999", "1m30s"] {
            assert!(lines[1].contains(cell), "{cell} missing: {text}");
        }
        assert_eq!(render_pending(&[], 0), "no join request is waiting\n");
    }
}
