//! `[alerts]`: where alerts for a person go, and the checks of the webhook.

use super::field::Errors;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The alert sink: a webhook that receives a JSON body in the shape of Alertmanager's webhook
/// receiver (`version` 4, `status`, `alerts[]` with `labels` and `annotations`), so whatever
/// already takes Alertmanager's notifications (or Alertmanager itself, through a relay) can
/// take rejuv's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// `http://host:port/path` that receives a POST per alert.
    pub webhook: Option<String>,
    /// A bearer token sent with each POST (file holding one line).
    pub webhook_token_file: Option<PathBuf>,
    /// How long one delivery attempt may take.
    #[serde(with = "humantime_serde", default = "default_alert_timeout")]
    pub timeout: Duration,
    /// Labels added to every alert (e.g. `team = "sre"`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where a person can look (the dashboard's URL), sent as `externalURL`.
    pub external_url: Option<String>,
}

fn default_alert_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            webhook_token_file: None,
            timeout: default_alert_timeout(),
            labels: BTreeMap::new(),
            external_url: None,
        }
    }
}

impl AlertsConfig {
    pub(crate) fn validate(&self, errs: &mut Errors) {
        if let Some(url) = &self.webhook {
            if url.starts_with("https://") {
                errs.add(
                    "alerts.webhook",
                    "https:// is not supported yet (this build has no TLS client): use an http:// receiver, e.g. an Alertmanager or relay on the same host",
                );
            } else if !url.starts_with("http://") {
                errs.add("alerts.webhook", "must be an http:// URL");
            }
        }
        if self.timeout.is_zero() {
            errs.add("alerts.timeout", "must be greater than 0");
        }
    }
}
