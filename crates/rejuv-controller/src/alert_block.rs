//! `[alert_block]`: asks Prometheus, every `interval`, an instant query that must be empty for
//! planned workflows to start (firing alerts, as kured's `--prometheus-url` does) and tells
//! the engine when its answer changes. A Prometheus that does not answer blocks too (fail
//! closed): planned work waits until it is known to be safe; failovers and operators' requests
//! never wait for it.

use crate::engine::Msg;
use rejuv_core::config::AlertBlockConfig;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest answer read from Prometheus.
const MAX_ANSWER: usize = 1 << 20;
/// Series named in a blocking reason (the rest are counted).
const NAMED: usize = 3;

/// What the query's answer says: `None` when it is empty, else the series it returned.
pub fn blocking(answer: &serde_json::Value) -> Result<Option<String>, String> {
    if answer["status"] != "success" {
        return Err(format!(
            "Prometheus answered {}: {}",
            answer["errorType"].as_str().unwrap_or("an error"),
            answer["error"].as_str().unwrap_or("(no message)")
        ));
    }
    let result = answer["data"]["result"]
        .as_array()
        .ok_or("the answer has no data.result list")?;
    if result.is_empty() {
        return Ok(None);
    }
    let mut names: Vec<String> = result
        .iter()
        .take(NAMED)
        .map(|s| {
            let m = &s["metric"];
            let name = m["alertname"]
                .as_str()
                .or(m["__name__"].as_str())
                .unwrap_or("series");
            let labels: Vec<String> = m
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| !matches!(k.as_str(), "alertname" | "__name__" | "alertstate"))
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
                .collect();
            format!("{name}{{{}}}", labels.join(","))
        })
        .collect();
    if result.len() > NAMED {
        names.push(format!("and {} more", result.len() - NAMED));
    }
    Ok(Some(
        rejuv_core::text::terminal_safe(&names.join(", ")).into_owned(),
    ))
}

/// The innermost cause of an error (the URL with its query string is said once, by the caller).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

async fn ask(http: &reqwest::Client, cfg: &AlertBlockConfig) -> Result<Option<String>, String> {
    let url = format!("{}/api/v1/query", cfg.url.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .query(&[("query", cfg.query.as_str())])
        .send()
        .await
        .map_err(|e| format!("{}: {}", cfg.url, root_cause(&e)))?;
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| format!("{}: {}", cfg.url, root_cause(&e)))?;
    if bytes.len() > MAX_ANSWER {
        return Err(format!("{url}: answer over {MAX_ANSWER} bytes"));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{url}: not JSON: {e}"))?;
    blocking(&v).map_err(|e| format!("{url}: {e}"))
}

/// Runs until `local` is cancelled.
pub async fn watch(cfg: AlertBlockConfig, tx: mpsc::Sender<Msg>, local: CancellationToken) {
    let http = reqwest::Client::builder()
        .timeout(cfg.interval.min(Duration::from_secs(10)))
        .build()
        .expect("http client");
    let mut last: Option<Option<String>> = None;
    loop {
        let now = match ask(&http, &cfg).await {
            Ok(v) => v,
            Err(e) => Some(format!("the alert query could not be read: {e}")),
        };
        if last.as_ref() != Some(&now) {
            match &now {
                Some(why) => tracing::warn!("alert_block: planned workflows wait: {why}"),
                None => tracing::info!("alert_block: nothing blocks planned workflows"),
            }
            if tx.send(Msg::AlertsBlocking(now.clone())).await.is_err() {
                return;
            }
            last = Some(now);
        }
        tokio::select! {
            _ = local.cancelled() => return,
            _ = tokio::time::sleep(cfg.interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_empty_answer_blocks_nothing_and_alerts_are_named() {
        let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert_eq!(blocking(&empty), Ok(None));
        let firing = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"__name__": "ALERTS", "alertname": "DiskFull", "alertstate": "firing", "instance": "db1"}, "value": [1, "1"]},
            {"metric": {"__name__": "ALERTS", "alertname": "A"}, "value": [1, "1"]},
            {"metric": {"__name__": "ALERTS", "alertname": "B"}, "value": [1, "1"]},
            {"metric": {"__name__": "ALERTS", "alertname": "C"}, "value": [1, "1"]}
        ]}});
        assert_eq!(
            blocking(&firing),
            Ok(Some("DiskFull{instance=db1}, A{}, B{}, and 1 more".into()))
        );
        let bad = json!({"status": "error", "errorType": "bad_data", "error": "parse error"});
        assert_eq!(
            blocking(&bad),
            Err("Prometheus answered bad_data: parse error".into())
        );
    }
}
