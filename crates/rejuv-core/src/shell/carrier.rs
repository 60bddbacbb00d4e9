//! Carrying out the outbox: which command may go now, retries with backoff, deadlines.
//!
//! A command is carried out until it is answered or its deadline passes (then it ends as
//! [`CommandResult::Failed`], which the core handles like any other answer). Commands for one
//! instance go one after another, so a stop never overtakes its start. A command already under
//! way is not started twice (a re-sent outbox after a store outage, say).
//!
//! # Guarantees
//! - Every command handed to [`Carrier::dispatch`] ends in exactly one result, fed back by the
//!   shell, unless the process dies first (then the outbox is re-sent by the next one).

use super::effects::{Attempt, Effects};
use crate::cluster::{Command, CommandKind, CommandResult};
use crate::types::InstanceId;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// First wait before a retry; doubled after each failure up to [`MAX_BACKOFF_MS`].
const FIRST_BACKOFF_MS: u64 = 200;
const MAX_BACKOFF_MS: u64 = 3_000;

/// One command being carried out.
#[derive(Debug, Clone)]
struct Inflight {
    command: Command,
    /// Monotonic deadline.
    until_mono_ms: u64,
    deadline: Duration,
    backoff_ms: u64,
    attempt: u32,
}

/// How long a command is retried before it fails for good.
pub fn deadline(kind: &CommandKind, rejuvenate: Duration) -> Duration {
    match kind {
        CommandKind::Rejuvenate { .. } => rejuvenate,
        CommandKind::StopInstance { .. } => Duration::from_secs(90),
        CommandKind::Alert { .. } => Duration::from_secs(60),
        // A hook's run is its result: it is not run twice.
        CommandKind::RunHook { .. } => Duration::ZERO,
        _ => Duration::from_secs(30),
    }
}

/// The commands under way (memory only: a new process re-sends the outbox).
#[derive(Debug, Default)]
pub struct Carrier {
    running: BTreeSet<u64>,
    /// The instance each running start or stop holds, and what waits behind it.
    holds: BTreeMap<u64, InstanceId>,
    queued: BTreeMap<InstanceId, VecDeque<Command>>,
    inflight: BTreeMap<u64, Inflight>,
    /// Deadline of a command of kind `Rejuvenate` (the config's verify timeout).
    rejuvenate_deadline: Duration,
}

impl Carrier {
    pub fn new(rejuvenate_deadline: Duration) -> Self {
        Self {
            rejuvenate_deadline,
            ..Self::default()
        }
    }

    /// Whether the command is being carried out (or waits behind another for its instance).
    pub fn is_running(&self, id: u64) -> bool {
        self.running.contains(&id)
    }

    /// Commands being carried out, for the simulator's end-of-run checks.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Starts carrying out `command` (a no-op when it is already under way).
    pub fn dispatch(&mut self, command: Command, now_mono_ms: u64, fx: &mut dyn Effects) {
        if !self.running.insert(command.id) {
            return;
        }
        match &command.kind {
            CommandKind::StartInstance { instance, .. }
            | CommandKind::StopInstance { instance, .. } => {
                let key = instance.clone();
                if self.holds.values().any(|k| k == &key) {
                    self.queued.entry(key).or_default().push_back(command);
                } else {
                    self.holds.insert(command.id, key);
                    self.begin(command, now_mono_ms, fx);
                }
            }
            _ => self.begin(command, now_mono_ms, fx),
        }
    }

    fn begin(&mut self, command: Command, now_mono_ms: u64, fx: &mut dyn Effects) {
        let deadline = deadline(&command.kind, self.rejuvenate_deadline);
        let id = command.id;
        let f = Inflight {
            command,
            until_mono_ms: now_mono_ms + deadline.as_millis() as u64,
            deadline,
            backoff_ms: FIRST_BACKOFF_MS,
            attempt: 0,
        };
        fx.carry_out(&f.command, 0);
        self.inflight.insert(id, f);
    }

    /// An attempt ended: the command's result, or `None` while it is retried (or when the
    /// attempt was not the current one: a late answer to an attempt given up on).
    pub fn attempted(
        &mut self,
        id: u64,
        attempt: u32,
        outcome: Attempt,
        now_mono_ms: u64,
        fx: &mut dyn Effects,
    ) -> Option<CommandResult> {
        let f = self
            .inflight
            .get_mut(&id)
            .filter(|f| f.attempt == attempt)?;
        let result = match outcome {
            Attempt::Answered(r) => r,
            Attempt::Failed { error, permanent } if permanent => CommandResult::Failed { error },
            Attempt::Failed { error, .. } => {
                if now_mono_ms + f.backoff_ms > f.until_mono_ms {
                    CommandResult::Failed {
                        error: format!("gave up after {:?}: {error}", f.deadline),
                    }
                } else {
                    fx.wake_at(now_mono_ms + f.backoff_ms, id, attempt + 1);
                    f.backoff_ms = (f.backoff_ms * 2).min(MAX_BACKOFF_MS);
                    f.attempt += 1;
                    return None;
                }
            }
        };
        self.inflight.remove(&id);
        Some(result)
    }

    /// A retry's wait is over: the next attempt goes.
    pub fn wake(&mut self, id: u64, attempt: u32, fx: &mut dyn Effects) {
        if let Some(f) = self.inflight.get(&id).filter(|f| f.attempt == attempt) {
            fx.carry_out(&f.command, attempt);
        }
    }

    /// The command's result reached the core: the next command for its instance may go.
    pub fn done(&mut self, id: u64, now_mono_ms: u64, fx: &mut dyn Effects) {
        self.running.remove(&id);
        self.inflight.remove(&id);
        let Some(key) = self.holds.remove(&id) else {
            return;
        };
        let next = self.queued.get_mut(&key).and_then(|q| q.pop_front());
        if self.queued.get(&key).is_some_and(|q| q.is_empty()) {
            self.queued.remove(&key);
        }
        if let Some(command) = next {
            self.holds.insert(command.id, key);
            self.begin(command, now_mono_ms, fx);
        }
    }
}
