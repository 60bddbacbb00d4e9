//! The alert sink: a webhook that receives what needs a person (no target, a rollback, a
//! failed workflow, escalation exhausted, no quorum) as JSON in the shape of Alertmanager's
//! webhook receiver, version 4: `{version, groupKey, status, receiver, groupLabels,
//! commonLabels, commonAnnotations, externalURL, alerts: [{status, labels, annotations,
//! startsAt, endsAt, generatorURL, fingerprint}]}`. Receivers written for Alertmanager take it
//! as it is. Alerts are commands in the outbox, so one recorded before a crash is still sent
//! after the restart; a receiver may see an alert twice and can drop the repeat by its
//! `fingerprint`.

use rejuv_core::config::AlertsConfig;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("reading the alert webhook token file {path}")]
    Token {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("posting the alert to {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the alert webhook {url} answered {status}")]
    Status { url: String, status: u16 },
}

impl AlertError {
    /// A 4xx answer will not change by sending again.
    pub fn is_permanent(&self) -> bool {
        matches!(self, AlertError::Status { status, .. } if (400..500).contains(status) && *status != 408 && *status != 429)
    }
}

/// One alert, as the state machine raised it.
#[derive(Debug, Clone)]
pub struct Alert<'a> {
    pub name: &'a str,
    pub server: Option<&'a str>,
    pub summary: &'a str,
    /// Wall time it was raised (Unix milliseconds).
    pub at_ms: u64,
}

#[derive(Clone)]
pub struct AlertSink {
    url: Option<String>,
    token: Option<String>,
    cluster: String,
    labels: BTreeMap<String, String>,
    external_url: String,
    http: reqwest::Client,
}

impl AlertSink {
    /// # Errors
    /// The webhook token file cannot be read.
    pub fn new(cfg: &AlertsConfig, cluster: &str) -> Result<Self, AlertError> {
        let token = match &cfg.webhook_token_file {
            Some(p) => Some(
                rejuv_core::secret::check_private(p)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))
                    .and_then(|()| std::fs::read_to_string(p))
                    .map_err(|source| AlertError::Token {
                        path: p.display().to_string(),
                        source,
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        Ok(Self {
            url: cfg.webhook.clone(),
            token,
            cluster: cluster.to_string(),
            labels: cfg.labels.clone(),
            external_url: cfg.external_url.clone().unwrap_or_default(),
            http: reqwest::Client::builder()
                .timeout(cfg.timeout)
                .build()
                .expect("a reqwest client with a timeout builds"),
        })
    }

    /// Whether a webhook is configured.
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// The webhook body for one alert.
    pub fn body(&self, alert: &Alert<'_>) -> Value {
        let name = if alert.name.is_empty() {
            "RejuvAlert"
        } else {
            alert.name
        };
        let mut labels = Map::new();
        for (k, v) in &self.labels {
            labels.insert(k.clone(), json!(v));
        }
        labels.insert("alertname".into(), json!(name));
        labels.insert("cluster".into(), json!(self.cluster));
        labels.insert("severity".into(), json!(severity(name)));
        if let Some(s) = alert.server {
            labels.insert("server".into(), json!(s));
        }
        let annotations = json!({ "summary": alert.summary, "description": alert.summary });
        let starts_at =
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(alert.at_ms))
                .to_string();
        let fingerprint = format!(
            "{:016x}",
            rejuv_core::digest::fnv1a64(
                format!(
                    "{name}|{}|{}|{}",
                    self.cluster,
                    alert.server.unwrap_or(""),
                    alert.at_ms
                )
                .as_bytes()
            )
        );
        let group_labels = json!({ "alertname": name });
        json!({
            "version": "4",
            "groupKey": format!("{{}}:{{alertname=\"{name}\"}}"),
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "rejuv",
            "groupLabels": group_labels,
            "commonLabels": Value::Object(labels.clone()),
            "commonAnnotations": annotations.clone(),
            "externalURL": self.external_url,
            "alerts": [{
                "status": "firing",
                "labels": Value::Object(labels),
                "annotations": annotations,
                "startsAt": starts_at,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": self.external_url,
                "fingerprint": fingerprint,
            }],
        })
    }

    /// Posts one alert (once; the caller retries what a retry can fix).
    ///
    /// # Errors
    /// Transport errors and non-2xx answers.
    pub async fn send(&self, alert: &Alert<'_>) -> Result<(), AlertError> {
        let Some(url) = &self.url else {
            return Ok(());
        };
        let mut req = self.http.post(url).json(&self.body(alert));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|source| AlertError::Transport {
            url: url.clone(),
            source,
        })?;
        if !resp.status().is_success() {
            return Err(AlertError::Status {
                url: url.clone(),
                status: resp.status().as_u16(),
            });
        }
        Ok(())
    }
}

/// Alerts that mean a server is out of service or the controller is blind are critical; the
/// rest ask for a look.
fn severity(name: &str) -> &'static str {
    match name {
        "RejuvWorkflowFailed" | "RejuvEscalationExhausted" | "RejuvNoQuorum" => "critical",
        _ => "warning",
    }
}

/// Wall-clock now in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_alertmanagers_webhook_shape() {
        let mut cfg = AlertsConfig::default();
        cfg.labels.insert("team".into(), "sre".into());
        cfg.external_url = Some("http://127.0.0.1:7070/ui".into());
        let sink = AlertSink::new(&cfg, "prod").unwrap();
        let b = sink.body(&Alert {
            name: "RejuvWorkflowRolledBack",
            server: Some("web-3"),
            summary: "workflow 4 for web-3 rolled back: copies never became healthy",
            at_ms: 1_700_000_000_123,
        });
        assert_eq!(b["version"], "4");
        assert_eq!(b["status"], "firing");
        let a = &b["alerts"][0];
        assert_eq!(a["labels"]["alertname"], "RejuvWorkflowRolledBack");
        assert_eq!(a["labels"]["server"], "web-3");
        assert_eq!(a["labels"]["cluster"], "prod");
        assert_eq!(a["labels"]["team"], "sre");
        assert_eq!(a["labels"]["severity"], "warning");
        assert_eq!(a["startsAt"], "2023-11-14T22:13:20.123Z");
        assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
        assert!(a["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("rolled back"));
        assert_eq!(a["fingerprint"].as_str().unwrap().len(), 16);
        assert_eq!(b["externalURL"], "http://127.0.0.1:7070/ui");
    }
}
