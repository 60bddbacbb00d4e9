//! Agents' replies as the controller keeps them: the text in them clipped and escaped
//! ([`crate::text`]), since it reaches the event log, the status and operators' terminals.
//! The controller's client calls these on every reply it decodes.

use crate::api::{AgentState, InstanceStatus, RejuvenationReport};
use crate::text::{clean, MAX_REMOTE_TEXT};

/// Longest short text field kept from a reply (the agent's version, a run id).
pub const MAX_SHORT_TEXT: usize = 64;

/// A state reply's text clipped and escaped.
pub fn sanitize_state(state: &mut AgentState) {
    state.version = clean(&state.version, MAX_SHORT_TEXT);
    for i in &mut state.instances {
        sanitize_instance(i);
    }
    if let Some(r) = state.last_rejuvenation.as_mut() {
        sanitize_report(r);
    }
}

/// An instance's exit status text clipped and escaped.
pub fn sanitize_instance(i: &mut InstanceStatus) {
    if let Some(e) = i.last_exit.as_mut() {
        *e = clean(e, MAX_REMOTE_TEXT);
    }
}

/// A rejuvenation report's run id and action details clipped and escaped.
pub fn sanitize_report(report: &mut RejuvenationReport) {
    report.run_id = clean(&report.run_id, MAX_SHORT_TEXT);
    for a in &mut report.actions {
        a.detail = clean(&a.detail, MAX_REMOTE_TEXT);
    }
}

/// A state reply decoded and sanitized, as the controller takes it.
///
/// # Errors
/// The bytes are not an agent state.
pub fn decode_state(bytes: &[u8]) -> Result<AgentState, serde_json::Error> {
    let mut state: AgentState = serde_json::from_slice(bytes)?;
    sanitize_state(&mut state);
    Ok(state)
}
