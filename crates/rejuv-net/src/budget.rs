//! The file descriptors the process's listeners may spend on connections, so that a flood of
//! connections is refused before the process runs out of descriptors: an agent that cannot
//! open `/proc`, a controller that cannot reach its agents or its store, a proxy that cannot
//! reach a backend would each fail at their real work.
//!
//! Listeners' caps are per listener and their sum may exceed what the process can open; the
//! budget is the process-wide bound behind them. It is a share of the soft `RLIMIT_NOFILE`
//! read at first use: the rest is left for the part's own files and outbound connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The process's descriptors kept for everything but served connections: a quarter of the
/// limit, and at least this many.
const MIN_RESERVE: usize = 64;
/// Used when the limit cannot be read: the usual soft limit.
const FALLBACK_LIMIT: usize = 1024;

/// File descriptors that connections may hold, shared by listeners.
#[derive(Debug)]
pub struct FdBudget {
    capacity: usize,
    used: AtomicUsize,
}

impl FdBudget {
    /// A budget of `capacity` descriptors (tests; a process uses [`FdBudget::process`]).
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            used: AtomicUsize::new(0),
        })
    }

    /// The process's budget: its soft descriptor limit less a quarter (at least
    /// [`MIN_RESERVE`]), the same object for every listener.
    pub fn process() -> Arc<Self> {
        static PROCESS: OnceLock<Arc<FdBudget>> = OnceLock::new();
        PROCESS
            .get_or_init(|| FdBudget::new(connection_share(soft_fd_limit())))
            .clone()
    }

    /// Descriptors connections may hold in all.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Descriptors not taken yet.
    pub fn left(&self) -> usize {
        self.capacity
            .saturating_sub(self.used.load(Ordering::Relaxed))
    }

    /// Takes `n` descriptors, or `None` if fewer are left; they are given back when the
    /// returned [`Taken`] is dropped.
    pub(crate) fn take(self: &Arc<Self>, n: usize) -> Option<Taken> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|after| *after <= self.capacity)
            })
            .ok()?;
        Some(Taken {
            budget: self.clone(),
            n,
        })
    }
}

/// Descriptors taken from a budget for one connection.
#[derive(Debug)]
pub(crate) struct Taken {
    budget: Arc<FdBudget>,
    n: usize,
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// What connections may use of a descriptor limit.
fn connection_share(limit: usize) -> usize {
    let reserve = (limit / 4).max(MIN_RESERVE);
    limit.saturating_sub(reserve)
}

fn soft_fd_limit() -> usize {
    use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft == RLIM_INFINITY => usize::MAX / 2,
        Ok((soft, _)) => usize::try_from(soft).unwrap_or(usize::MAX / 2),
        Err(e) => {
            tracing::warn!(error = %e, fallback = FALLBACK_LIMIT, "cannot read the file descriptor limit");
            FALLBACK_LIMIT
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_of_the_limit_is_kept_for_the_part_itself() {
        assert_eq!(connection_share(1024), 768);
        assert_eq!(connection_share(65536), 49152);
        assert_eq!(connection_share(100), 36);
        assert_eq!(connection_share(10), 0);
    }

    #[test]
    fn taking_stops_at_the_capacity_and_dropping_gives_back() {
        let budget = FdBudget::new(5);
        let a = budget.take(2).unwrap();
        let b = budget.take(2).unwrap();
        assert!(budget.take(2).is_none());
        let c = budget.take(1).unwrap();
        assert_eq!(budget.left(), 0);
        drop(a);
        assert_eq!(budget.left(), 2);
        drop((b, c));
        assert_eq!(budget.left(), 5);
    }

    #[test]
    fn the_process_budget_is_below_the_descriptor_limit() {
        let limit = soft_fd_limit();
        let budget = FdBudget::process();
        assert!(budget.capacity() < limit, "{} < {limit}", budget.capacity());
        assert!(Arc::ptr_eq(&budget, &FdBudget::process()));
    }
}
