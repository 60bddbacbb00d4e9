//! Test fixtures: controller answers written as the few fields a test is about, the rest
//! filled with plain defaults, read as the [`rejuv_core::wire`] types.

use rejuv_core::api::ProxyStatus;
use rejuv_core::wire::{Explain, Status};
use serde_json::{json, Value};

/// Adds to `v` (an object) every field of `defaults` it lacks.
fn fill(v: &mut Value, defaults: Value) {
    if let (Some(o), Value::Object(d)) = (v.as_object_mut(), defaults) {
        for (k, val) in d {
            o.entry(k).or_insert(val);
        }
    }
}

fn fill_explanation(v: &mut Value) {
    if v["explanation"].is_object() {
        fill(
            &mut v["explanation"],
            json!({"resource": "instance-rss", "rule": "trend", "value": 0.0, "limit": 1.0,
                   "message": ""}),
        );
    }
}

fn fill_workflow(w: &mut Value) {
    fill(
        w,
        json!({"id": 1, "server": "s1", "target": "s2", "reason": "", "phase": "duplexing",
               "started_at_ms": 0, "phase_since_ms": 0, "pairs": [], "run_id": "run",
               "steps": [], "forced": false}),
    );
    fill_explanation(w);
}

/// A `/v1/status` answer from the fields given.
pub fn status(mut v: Value) -> Status {
    fill(
        &mut v,
        json!({"cluster": "demo", "mode": "active-standby", "epoch": 1, "paused": false,
               "available_capacity": 0, "servers": [], "workflows": [], "history": [],
               "routes": {"version": 0, "services": {}}, "completed_total": 0,
               "rolled_back_total": 0, "failed_total": 0,
               "store": {"commit_failures_total": 0}}),
    );
    for s in v["servers"].as_array_mut().into_iter().flatten() {
        let on_list = s["state"].as_str().is_none_or(|st| st == "in-service");
        fill(
            s,
            json!({"role": "primary", "state": "in-service", "on_list": on_list,
                   "maintenance": false, "reachable": true, "judgement": "stable",
                   "capacity": 4, "instances_rss_bytes": 0, "crashes_total": 0,
                   "instances": []}),
        );
        fill_explanation(s);
        for i in s["instances"].as_array_mut().into_iter().flatten() {
            fill(
                i,
                json!({"service": "web", "healthy": true, "traffic": "serving"}),
            );
        }
    }
    for k in ["workflows", "history"] {
        for w in v[k].as_array_mut().into_iter().flatten() {
            fill_workflow(w);
        }
    }
    serde_json::from_value(v).unwrap_or_else(|e| panic!("a status fixture: {e}"))
}

/// A `/v1/servers/{id}/explain` answer from the fields given.
pub fn explain(mut v: Value) -> Explain {
    fill(
        &mut v,
        json!({"id": "s1", "role": "primary", "state": {"state": "in-service"},
               "judgement": "stable"}),
    );
    fill_explanation(&mut v);
    for k in ["workflow", "last_workflow"] {
        if v[k].is_object() {
            fill_workflow(&mut v[k]);
        }
    }
    serde_json::from_value(v).unwrap_or_else(|e| panic!("an explain fixture: {e}"))
}

/// A builtin proxy's `/v1/status` from the fields given.
pub fn proxy(mut v: Value) -> ProxyStatus {
    for st in v["services"]
        .as_object_mut()
        .into_iter()
        .flat_map(|m| m.values_mut())
    {
        fill(
            st,
            json!({"listen": "127.0.0.1:8080", "backends": [], "held": 0, "requests_total": 0,
                   "failed_total": 0}),
        );
        for b in st["backends"].as_array_mut().into_iter().flatten() {
            fill(
                b,
                json!({"in_flight": 0, "requests_total": 0, "errors_total": 0}),
            );
        }
    }
    serde_json::from_value(v).unwrap_or_else(|e| panic!("a proxy status fixture: {e}"))
}
