//! What of the cluster state is durable, and what is a reading.
//!
//! Observations (what an agent said last) and explanations (the numbers behind a judgement)
//! change with every sample; they are rebuilt from the next poll, so a step that changed only
//! those is not written to the store. Writes then grow with what changes (a judgement, a role,
//! a workflow), not with the fleet and its sampling rate.

use crate::cluster::{Cluster, Server};

/// Whether `a` and `b` differ at most in readings. Every field is named on purpose: a new
/// field must be sorted into durable or reading here before this compiles.
pub fn same_but_readings(a: &Cluster, b: &Cluster) -> bool {
    let Cluster {
        mode,
        servers,
        instances,
        workflows,
        history,
        pending,
        paused,
        routes_version,
        routes,
        next_id,
        completed_total,
        rolled_back_total,
        failed_total,
        last_completed_at_ms,
        advisory,
        quorum_lost,
        exhausted_total,
        forgotten,
        unknown_reported,
        incarnation,
        alerts_blocking,
        joined,
        ..
    } = a;
    *mode == b.mode
        && *paused == b.paused
        && *routes_version == b.routes_version
        && *next_id == b.next_id
        && *completed_total == b.completed_total
        && *rolled_back_total == b.rolled_back_total
        && *failed_total == b.failed_total
        && *last_completed_at_ms == b.last_completed_at_ms
        && *advisory == b.advisory
        && *quorum_lost == b.quorum_lost
        && *exhausted_total == b.exhausted_total
        && *forgotten == b.forgotten
        && *unknown_reported == b.unknown_reported
        && *incarnation == b.incarnation
        && *alerts_blocking == b.alerts_blocking
        && *joined == b.joined
        && *pending == b.pending
        && *instances == b.instances
        && *workflows == b.workflows
        && history.len() == b.history.len()
        && *routes == b.routes
        && servers.len() == b.servers.len()
        && servers
            .iter()
            .zip(b.servers.iter())
            .all(|((ka, sa), (kb, sb))| ka == kb && server_same_but_readings(sa, sb))
        && *history == b.history
}

/// Whether two states of a server differ at most in their readings.
pub fn server_same_but_readings(a: &Server, b: &Server) -> bool {
    let Server {
        id,
        role,
        state,
        capacity,
        reserved_by,
        judgement,
        explanation: _,
        observation: _,
        maintenance,
        avoid_as_target_until_ms,
        manual_request,
        blocked_reason,
        level,
        last_rejuvenated_at_ms,
        unreachable_since_ms,
        host_judgement,
        unstable_instances,
        instance_rejuvenations_ms,
        removing,
    } = a;
    *id == b.id
        && *role == b.role
        && *state == b.state
        && *capacity == b.capacity
        && *reserved_by == b.reserved_by
        && *judgement == b.judgement
        && *maintenance == b.maintenance
        && *avoid_as_target_until_ms == b.avoid_as_target_until_ms
        && *manual_request == b.manual_request
        && *blocked_reason == b.blocked_reason
        && *level == b.level
        && *last_rejuvenated_at_ms == b.last_rejuvenated_at_ms
        && *unreachable_since_ms == b.unreachable_since_ms
        && *host_judgement == b.host_judgement
        && *unstable_instances == b.unstable_instances
        && *instance_rejuvenations_ms == b.instance_rejuvenations_ms
        && *removing == b.removing
}

/// Makes `to` equal to `from` when [`same_but_readings`] holds for them: the servers'
/// observations and explanations are all that is left to copy (for the rest, the check
/// compared every field), without copying the whole cluster.
pub fn copy_readings(to: &mut Cluster, from: &Cluster) {
    for (t, f) in to.servers.values_mut().zip(from.servers.values()) {
        if t.observation != f.observation {
            t.observation.clone_from(&f.observation);
        }
        if t.explanation != f.explanation {
            t.explanation.clone_from(&f.explanation);
        }
    }
}

/// Drops the readings of a state read back from the store: they are as old as its last
/// durable change, and the first poll of each agent brings them anew. Until then a server
/// counts as not yet seen (no quorum is claimed on stale answers).
pub fn forget_readings(cluster: &mut Cluster) {
    for s in cluster.servers.values_mut() {
        s.observation = None;
    }
}
