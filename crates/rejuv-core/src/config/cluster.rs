//! `[cluster]`: the cluster's name and its mode. The checks that depend on the mode (spares in
//! active-standby, none in active-active) belong to the servers they are about
//! ([`super::servers`]).

use crate::types::Mode;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(default = "default_cluster_name")]
    pub name: String,
    pub mode: Mode,
}

fn default_cluster_name() -> String {
    "rejuv".into()
}

/// Longest cluster name: it is an etcd key prefix, a metric label and an alert label.
const MAX_NAME: usize = 64;

impl ClusterConfig {
    pub(crate) fn validate(&self, errs: &mut super::field::Errors) {
        let plain = self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if self.name.is_empty() || self.name.len() > MAX_NAME || !plain {
            errs.add(
                "cluster.name",
                format!("must be 1 to {MAX_NAME} letters, digits, '-', '_' or '.'"),
            );
        }
    }
}
