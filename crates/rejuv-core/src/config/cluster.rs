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
