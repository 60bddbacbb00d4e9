//! The three levels of a judgement, `stable` < `suspect` < `unstable`, that the threshold
//! rule, the trend rule and the per-server detector all speak.

use serde::{Deserialize, Serialize};

/// How a server (or one series of it) is judged; the higher level wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    Stable,
    Suspect,
    Unstable,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Stable => "stable",
            Level::Suspect => "suspect",
            Level::Unstable => "unstable",
        })
    }
}
