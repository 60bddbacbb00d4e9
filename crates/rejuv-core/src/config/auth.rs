//! `[auth]`: the bearer tokens of agents and operators, and its check that operator names are
//! unique and loggable.

use super::field::Errors;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// Bearer tokens. A token file holds one line; leading and trailing white space is dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Token the controller presents to agents, and agents require.
    pub agent_token_file: Option<PathBuf>,
    /// Token operators present to the controller API.
    pub api_token_file: Option<PathBuf>,
    /// Token the controller presents to the builtin proxy's admin API, and the proxy
    /// requires: whoever holds it decides where all traffic goes. Without it, the API token
    /// serves (and `config check` warns).
    #[serde(default)]
    pub proxy_token_file: Option<PathBuf>,
    /// Named operator tokens for the controller API: an action taken with one is logged as
    /// that operator's (the shared `api_token_file` logs the `x-rejuv-actor` header's name).
    #[serde(default)]
    pub operators: Vec<OperatorToken>,
}

/// A named operator and the file holding their token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorToken {
    pub name: String,
    pub token_file: PathBuf,
    /// `read` (status, events, explain, workflows, logs, metrics, dashboard) or `operate`
    /// (also rejuvenate, maintenance, pause, resume, cancel, reload).
    #[serde(default)]
    pub role: TokenRole,
}

/// What a token may do on the controller API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenRole {
    Read,
    #[default]
    Operate,
}

impl std::fmt::Display for TokenRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenRole::Read => "read",
            TokenRole::Operate => "operate",
        })
    }
}

impl AuthConfig {
    /// Operator names are unique and short, of characters a log line can carry as they are.
    pub(crate) fn validate(&self, errs: &mut Errors) {
        let mut names = BTreeSet::new();
        for (i, o) in self.operators.iter().enumerate() {
            let loggable = o
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
            if o.name.is_empty() || o.name.len() > 64 || !loggable || !names.insert(o.name.clone())
            {
                errs.add(
                    format!("auth.operators[{i}].name"),
                    "must be unique, at most 64 letters, digits, '-', '_', '.' or '@'",
                );
            }
        }
    }
}
