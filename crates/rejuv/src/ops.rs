//! Operator commands against a running controller: tables for people, `--output json` for
//! scripts (JSON alone on stdout).

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Args, Clone)]
pub struct Conn {
    /// Controller API URL.
    #[arg(
        long,
        env = "REJUV_CONTROLLER",
        default_value = "http://127.0.0.1:7070"
    )]
    pub controller: String,
    /// File holding the API token (or set REJUV_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl Conn {
    fn token(&self) -> anyhow::Result<String> {
        if let Some(f) = &self.token_file {
            return crate::cli::read_token(f);
        }
        std::env::var("REJUV_TOKEN").context("no token: pass --token-file or set REJUV_TOKEN")
    }
}

/// Exit code 3: refused (409); 4: unauthorized (401).
struct Refused(i32, String);

fn request(
    conn: &Conn,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Result<Value, Refused>> {
    let token = conn.token()?;
    let url = format!("{}{}", conn.controller.trim_end_matches('/'), path);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut req = client.request(method, &url).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("reaching the controller at {url}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(Ok(value));
        }
        let msg = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or(value.to_string());
        match status.as_u16() {
            401 => Ok(Err(Refused(4, format!("unauthorized: {msg}")))),
            404 | 409 => Ok(Err(Refused(3, msg))),
            _ => anyhow::bail!("controller answered {status}: {msg}"),
        }
    })
}

fn finish(
    r: Result<Value, Refused>,
    conn: &Conn,
    human: impl FnOnce(&Value),
) -> anyhow::Result<i32> {
    match r {
        Ok(v) => {
            if conn.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                human(&v);
            }
            Ok(0)
        }
        Err(Refused(code, msg)) => {
            eprintln!("rejuv: {msg}");
            Ok(code)
        }
    }
}

fn mb(v: &Value) -> String {
    v.as_u64()
        .map_or("-".into(), |b| format!("{:.0}MB", b as f64 / 1e6))
}

pub fn status(conn: &Conn) -> anyhow::Result<i32> {
    let r = request(conn, reqwest::Method::GET, "/v1/status", None)?;
    finish(r, conn, |v| {
        println!(
            "cluster {} ({}), epoch {}{}",
            v["cluster"].as_str().unwrap_or("?"),
            v["mode"].as_str().unwrap_or("?"),
            v["epoch"],
            if v["paused"].as_bool() == Some(true) {
                ", PAUSED"
            } else {
                ""
            }
        );
        println!(
            "{:<10} {:<8} {:<13} {:<9} {:>8} {:>9} {:>6}  WHY",
            "SERVER", "ROLE", "STATE", "JUDGED", "RSS", "RUNNING", "LOAD"
        );
        for s in v["servers"].as_array().into_iter().flatten() {
            let running = s["running_time_s"]
                .as_f64()
                .map_or("-".into(), |t| format!("{t:.0}s"));
            let load = s["load1"]
                .as_f64()
                .map_or("-".into(), |t| format!("{t:.2}"));
            let why = s["explanation"]["message"]
                .as_str()
                .or(s["blocked_reason"].as_str())
                .unwrap_or("");
            println!(
                "{:<10} {:<8} {:<13} {:<9} {:>8} {:>9} {:>6}  {}",
                s["id"].as_str().unwrap_or("?"),
                s["role"].as_str().unwrap_or("?"),
                format!(
                    "{}{}",
                    s["state"].as_str().unwrap_or("?"),
                    if s["maintenance"].as_bool() == Some(true) {
                        "*"
                    } else {
                        ""
                    }
                ),
                s["judgement"].as_str().unwrap_or("?"),
                mb(&s["instances_rss_bytes"]),
                running,
                load,
                why
            );
        }
        for w in v["workflows"].as_array().into_iter().flatten() {
            println!(
                "workflow {}: {} -> {} {} ({})",
                w["id"],
                w["server"].as_str().unwrap_or("?"),
                w["target"].as_str().unwrap_or("?"),
                w["phase"].as_str().unwrap_or("?"),
                w["reason"].as_str().unwrap_or("")
            );
        }
    })
}

fn print_event(e: &Value) {
    let at = e["at_ms"].as_u64().unwrap_or(0);
    let secs = at / 1000;
    println!(
        "{:02}:{:02}:{:02}.{:03} {:<20} {:<6} {}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        at % 1000,
        e["kind"].as_str().unwrap_or("?"),
        e["server"].as_str().unwrap_or("-"),
        e["message"].as_str().unwrap_or("")
    );
}

pub fn events(conn: &Conn, follow: bool) -> anyhow::Result<i32> {
    let r = request(conn, reqwest::Method::GET, "/v1/events?limit=100", None)?;
    let mut last = 0i64;
    let code = finish(
        r.inspect(|v| {
            last = v
                .as_array()
                .and_then(|a| a.last())
                .and_then(|e| e["seq"].as_i64())
                .unwrap_or(0);
        }),
        conn,
        |v| v.as_array().into_iter().flatten().for_each(print_event),
    )?;
    if !follow || code != 0 {
        return Ok(code);
    }
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let r = request(
            conn,
            reqwest::Method::GET,
            &format!("/v1/events?after={last}&limit=500"),
            None,
        )?;
        let Ok(v) = r else { return Ok(1) };
        for e in v.as_array().into_iter().flatten() {
            last = e["seq"].as_i64().unwrap_or(last);
            if conn.output == Output::Json {
                println!("{e}");
            } else {
                print_event(e);
            }
        }
    }
}

pub fn explain(conn: &Conn, server: &str) -> anyhow::Result<i32> {
    let r = request(
        conn,
        reqwest::Method::GET,
        &format!("/v1/servers/{server}/explain"),
        None,
    )?;
    finish(r, conn, |v| {
        println!(
            "{server}: {} ({})",
            v["judgement"].as_str().unwrap_or("?"),
            v["state"]["state"].as_str().unwrap_or("?")
        );
        if let Some(e) = v["explanation"].as_object() {
            println!(
                "  rule:     {} on {}",
                e["rule"].as_str().unwrap_or("?"),
                e["resource"].as_str().unwrap_or("?")
            );
            println!("  why:      {}", e["message"].as_str().unwrap_or(""));
            if let Some(t) = e["tte_s"].as_f64() {
                println!("  forecast: exhausted in about {t:.0}s");
            }
        }
        if let Some(b) = v["blocked_reason"].as_str() {
            println!("  waiting:  {b}");
        }
        if v["workflow"].is_object() {
            let w = &v["workflow"];
            println!(
                "  workflow {}: {} -> {}, {}",
                w["id"],
                w["server"].as_str().unwrap_or("?"),
                w["target"].as_str().unwrap_or("?"),
                w["phase"].as_str().unwrap_or("?")
            );
        }
    })
}

pub fn rejuvenate(conn: &Conn, server: &str, force: bool) -> anyhow::Result<i32> {
    let r = request(
        conn,
        reqwest::Method::POST,
        &format!("/v1/servers/{server}/rejuvenate?force={force}"),
        None,
    )?;
    finish(r, conn, |_| println!("rejuvenation of {server} requested"))
}

pub fn maintenance(conn: &Conn, server: &str, on: bool) -> anyhow::Result<i32> {
    let r = request(
        conn,
        reqwest::Method::POST,
        &format!("/v1/servers/{server}/maintenance"),
        Some(serde_json::json!({"on": on})),
    )?;
    finish(r, conn, |_| {
        println!("maintenance {} for {server}", if on { "on" } else { "off" })
    })
}

pub fn post_simple(conn: &Conn, path: &str, done: &str) -> anyhow::Result<i32> {
    let r = request(conn, reqwest::Method::POST, path, None)?;
    finish(r, conn, |_| println!("{done}"))
}
