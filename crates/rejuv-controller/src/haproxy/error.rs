//! The adapter's errors: one variant per step that can fail (checking an argument, reaching
//! the runtime API, HAProxy's answer, leadership).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    #[error("{what} {value:?} refused before sending: {reason}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("cannot connect to the HAProxy runtime API at {socket}")]
    Connect {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HAProxy runtime API at {socket}: `{command}` failed")]
    Io {
        socket: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "HAProxy runtime API at {socket}: no complete answer to `{command}` within {timeout:?}"
    )]
    Timeout {
        socket: String,
        command: String,
        timeout: Duration,
    },
    #[error("HAProxy refused `{command}`: {answer}")]
    Refused { command: String, answer: String },
    #[error("cannot parse HAProxy's answer to `{command}`: {reason} (in {line:?})")]
    Parse {
        command: String,
        line: String,
        reason: String,
    },
    #[error("not the leader (or its lease lapsed): HAProxy is left alone")]
    NotLeader,
}
