//! Lines for the simulation's event log (whose digest pins a schedule): each event the core
//! applied, each command and event it produced, in a few words.
//!
//! A judgement is described from its serialized form: the simulator only ever sees one go
//! by, since judgements come from the production detector inside the shell.

use rejuv_core::cluster::{Command, CommandKind, CommandResult, Event, LogEvent};
use std::fmt::Write;

pub fn short_command(c: &Command) -> String {
    match &c.kind {
        CommandKind::StartInstance {
            server, instance, ..
        } => format!("start {instance}@{server}"),
        CommandKind::StopInstance { server, instance } => format!("stop {instance}@{server}"),
        CommandKind::TransferState { from, to, .. } => format!("transfer {from}->{to}"),
        CommandKind::Rejuvenate { server, run_id, .. } => format!("rejuvenate {server} {run_id}"),
        CommandKind::ResetDetector { server } => format!("reset {server}"),
        CommandKind::Alert { server, .. } => {
            format!("alert {}", server.as_deref().unwrap_or("-"))
        }
        CommandKind::RunHook { hook, .. } => format!("hook {hook}"),
    }
}

fn short_result(result: &CommandResult) -> String {
    match result {
        CommandResult::Started { .. } => "started".to_string(),
        CommandResult::Stopped => "stopped".into(),
        CommandResult::Transferred => "transferred".into(),
        CommandResult::Rejuvenated { report } => match report.failed() {
            Some(a) => format!("rejuvenated, {} failed", a.action),
            None => "rejuvenated".into(),
        },
        CommandResult::Done => "done".into(),
        CommandResult::Failed { error } => format!("FAILED ({error})"),
        CommandResult::HookRan { ok, .. } => format!("hook ok={ok}"),
    }
}

pub fn short_event(e: &Event) -> String {
    match e {
        Event::Observed {
            server,
            observation: o,
        } => {
            if o.reachable {
                let healthy = o.instances.values().filter(|i| i.healthy).count();
                // Whole numbers only: formatting floats is most of the log's cost.
                format!(
                    "observed {server} load {} run {}s {}/{} healthy",
                    if o.load1 > 2.0 { "high" } else { "low" },
                    o.running_time_s as u64,
                    healthy,
                    o.instances.len()
                )
            } else {
                format!("observed {server} unreachable")
            }
        }
        Event::Tick => "tick".into(),
        Event::CommandDone { id, result } => format!("done {id}: {}", short_result(result)),
        Event::TrafficSynced { version, in_flight } => format!(
            "synced v{version} busy {}",
            in_flight.values().filter(|n| **n > 0).count()
        ),
        Event::Operator { command, .. } => format!("operator {command:?}"),
        Event::Reconfigured { by } => format!("reconfigured by {by}"),
        Event::AlertsBlocking { firing } => format!("alerts blocking: {firing:?}"),
        other => from_serialized(other),
    }
}

/// Any other event, by its serialized tag, server and level (a judgement).
fn from_serialized(e: &Event) -> String {
    let v = serde_json::to_value(e).unwrap_or_default();
    let tag = v["event"].as_str().unwrap_or("?");
    let server = v["server"].as_str().unwrap_or("-");
    match v.pointer("/judgement/level").and_then(|l| l.as_str()) {
        Some(level) => format!("{tag} {server} {level}"),
        None => format!("{tag} {server}"),
    }
}

/// The events of one step, in the order applied.
pub fn short_applied(events: &[Event]) -> String {
    let parts: Vec<String> = events.iter().map(short_event).collect();
    parts.join(" + ")
}

pub fn short_output(commands: &[Command], events: &[LogEvent]) -> String {
    let mut s = String::new();
    for c in commands {
        let _ = write!(s, "[{} {}] ", c.id, short_command(c));
    }
    for e in events {
        let _ = write!(s, "<{}> ", e.kind);
    }
    s
}

/// Where two JSON values differ, floats compared with a relative tolerance of 1e-12.
pub fn json_difference(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) if x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()) => None,
            _ if x == y => None,
            _ => Some(format!("{path}: {x} vs {y}")),
        },
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path}: {} vs {} items", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (x, y))| json_difference(x, y, &format!("{path}[{i}]")))
        }
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() || x.keys().zip(y.keys()).any(|(a, b)| a != b) {
                return Some(format!("{path}: different keys"));
            }
            x.iter()
                .zip(y.values())
                .find_map(|((k, x), y)| json_difference(x, y, &format!("{path}.{k}")))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}
