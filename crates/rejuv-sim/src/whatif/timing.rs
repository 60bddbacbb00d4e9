//! How long the simulated world takes: the agents' answers, a copy turning healthy, the load
//! balancer, the rejuvenation actions. The replay's clock is the recording's; these durations
//! are what a workflow costs on it (about two minutes end to end, of which a server is off the
//! list for about one), and what a baseline's restart costs.
//!
//! They are typical of a service that starts in half a minute and restarts in one; on series
//! spanning days they matter only for leaks that run out within minutes.

/// An agent answers a start, a stop or a state transfer this long after it was sent.
pub const REPLY_MS: u64 = 1_000;
/// A started copy passes its health check this long after the start.
pub const COPY_HEALTHY_MS: u64 = 30_000;
/// The load balancer applies a new route table this long after the core changed it.
pub const PROXY_APPLY_MS: u64 = 1_000;
/// Requests in flight on a drained backend end this long after the table that drains it.
pub const DRAIN_MS: u64 = 5_000;
/// The rejuvenation actions take this long (the agent's answer comes then); the series is
/// reset when they begin (stopping the instances frees what they held).
pub const REJUVENATE_MS: u64 = 60_000;
/// A baseline's restart (`fixed:`, `threshold:`) takes the server out of service this long.
pub const RESTART_MS: u64 = REJUVENATE_MS;
/// Agents of servers in a workflow are polled this often (the others when they have a new
/// sample).
pub const BUSY_POLL_MS: u64 = 2_000;
/// The core is ticked this often while workflows or commands are under way...
pub const TICK_BUSY_MS: u64 = 1_000;
/// ...and this often otherwise (every new sample is a step of its own as well).
pub const TICK_IDLE_MS: u64 = 10_000;
