//! What the shell asks of the world, and what the world answers.
//!
//! The controller implements [`Effects`] with a store, HTTP calls to agents and tokio timers;
//! the simulator with a simulated store, simulated agents and a simulated clock. Everything
//! between them (what to commit, when to retry, which command may go now) is the shell's.

use crate::cluster::{Cluster, Command, CommandResult, Event, LogEvent, Workflow};
use std::sync::Arc;

/// How the store has been taking commits (the status answer carries it as it is).
pub use crate::wire::StoreHealth;

/// One committed (or skipped) step, as the shell hands it on.
pub struct Step<'a> {
    /// The events the core applied in this step, in order (a sample is an observation and,
    /// when the detector judged it, a judgement; a local acknowledgement rides along).
    pub applied: &'a [Event],
    /// The state after the step.
    pub cluster: &'a Arc<Cluster>,
    /// Events for the log, as committed.
    pub events: &'a [LogEvent],
    /// Commands the step added to the outbox that will now be carried out.
    pub commands: &'a [Command],
    /// Whether the step was written to the store; a step that changed only readings
    /// (observations, explanations) is not.
    pub committed: bool,
}

/// How one attempt at a command ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// The other side answered: this is the command's result.
    Answered(CommandResult),
    /// It did not work; `permanent` when retrying cannot help (the agent refused it).
    Failed { error: String, permanent: bool },
}

/// The world around the shell.
pub trait Effects {
    /// Writes the new state, its events and the workflows that finished in this step, in one
    /// transaction. An error drops the step: nothing of it is acted on.
    fn commit(
        &mut self,
        cluster: &Cluster,
        events: &[LogEvent],
        finished: &[Workflow],
    ) -> Result<(), String>;

    /// Makes attempt `attempt` (0 first) at a command; its end comes back through
    /// [`crate::shell::Shell::attempted`].
    fn carry_out(&mut self, command: &Command, attempt: u32);

    /// Calls [`crate::shell::Shell::wake`] for `command`'s attempt `attempt` once the
    /// monotonic clock reads `at_mono_ms`.
    fn wake_at(&mut self, at_mono_ms: u64, command: u64, attempt: u32);

    /// A step is done (committed, or skipped as readings only), before any of its commands
    /// is carried out: publish it.
    fn stepped(&mut self, step: &Step<'_>);
}
