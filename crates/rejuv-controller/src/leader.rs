//! Leadership as the rest of the controller sees it: one cheap, shared [`LeaderGuard`].
//!
//! With the SQLite store there is one controller and it always leads ([`LeaderGuard::always`]).
//! With etcd ([`crate::etcd_store`]) the guard holds the monotonic instant until which this
//! controller's lease is known to be alive (the send time of the last acknowledged keep-alive
//! plus the TTL, less a safety margin), and a token cancelled the moment leadership is known
//! to be lost (a fenced write failed, the lease is gone, or that instant has passed).
//!
//! Writes that etcd fences by itself (the store's transactions) do not need the guard. The
//! load balancer cannot check an epoch, so the traffic adapters ask
//! [`LeaderGuard::still_leader`] right before every write; a write that raced a lost lease is
//! corrected by the next leader's reconcile.
//!
//! # Guarantees
//! - `still_leader()` turns false no later than the lease could expire on the etcd side, as
//!   long as the local monotonic clock does not run slower than etcd's (the margin covers
//!   ordinary drift).
//! - Once lost, a guard never becomes valid again: a deposed controller steps down for good.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct LeaderGuard {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: always the leader (single controller, SQLite).
    base: Option<Instant>,
    /// Nanoseconds after `base` until which the lease is known alive.
    valid_until_ns: AtomicU64,
    /// Set when the campaign is won; before that the guard is a follower's.
    leading: AtomicBool,
    lost: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl LeaderGuard {
    /// The guard of the only controller (SQLite store): always the leader.
    pub fn always() -> Self {
        let g = Self::new_inner(None);
        g.inner.leading.store(true, Ordering::SeqCst);
        g
    }

    /// A guard for a lease that is known alive until `valid_until`; not leading yet.
    pub fn with_lease(valid_until: Instant) -> Self {
        let base = Instant::now()
            .checked_sub(Duration::from_secs(1))
            .unwrap_or_else(Instant::now);
        let g = Self::new_inner(Some(base));
        g.extend(valid_until);
        g
    }

    fn new_inner(base: Option<Instant>) -> Self {
        Self {
            inner: Arc::new(Inner {
                base,
                valid_until_ns: AtomicU64::new(0),
                leading: AtomicBool::new(false),
                lost: CancellationToken::new(),
                reason: Mutex::new(None),
            }),
        }
    }

    /// True while this controller leads and its lease is known alive (monotonic clock).
    pub fn still_leader(&self) -> bool {
        self.inner.leading.load(Ordering::SeqCst) && self.lease_alive()
    }

    /// True while the lease is known alive, leading or not.
    pub fn lease_alive(&self) -> bool {
        if self.inner.lost.is_cancelled() {
            return false;
        }
        let Some(base) = self.inner.base else {
            return true;
        };
        let now = base.elapsed().as_nanos() as u64;
        now < self.inner.valid_until_ns.load(Ordering::SeqCst)
    }

    /// The monotonic instant until which the lease is known alive (`None`: no lease).
    pub fn valid_until(&self) -> Option<Instant> {
        let base = self.inner.base?;
        Some(base + Duration::from_nanos(self.inner.valid_until_ns.load(Ordering::SeqCst)))
    }

    /// Records a later known-alive instant (never moves it back).
    pub fn extend(&self, until: Instant) {
        if let Some(base) = self.inner.base {
            let ns = until.saturating_duration_since(base).as_nanos() as u64;
            self.inner.valid_until_ns.fetch_max(ns, Ordering::SeqCst);
        }
    }

    /// Marks the campaign won.
    pub fn set_leading(&self) {
        self.inner.leading.store(true, Ordering::SeqCst);
    }

    /// Leadership (or the lease) is lost for good; `reason` is kept for the logs.
    pub fn lose(&self, reason: impl Into<String>) {
        let mut r = self.inner.reason.lock().expect("leader reason lock");
        if r.is_none() {
            *r = Some(reason.into());
        }
        drop(r);
        self.inner.lost.cancel();
    }

    /// Why the guard was lost, once it is.
    pub fn lost_reason(&self) -> Option<String> {
        self.inner
            .reason
            .lock()
            .expect("leader reason lock")
            .clone()
    }

    /// Cancelled when leadership is known lost.
    pub fn lost(&self) -> CancellationToken {
        self.inner.lost.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_only_controller_always_leads() {
        assert!(LeaderGuard::always().still_leader());
    }

    #[test]
    fn a_lease_lapses_on_the_monotonic_clock() {
        let g = LeaderGuard::with_lease(Instant::now() + Duration::from_millis(50));
        assert!(!g.still_leader(), "not leading before the campaign is won");
        g.set_leading();
        assert!(g.still_leader());
        g.extend(Instant::now()); // never moves back
        assert!(g.still_leader());
        std::thread::sleep(Duration::from_millis(80));
        assert!(!g.still_leader(), "the lease lapsed");
        g.extend(Instant::now() + Duration::from_secs(5));
        assert!(g.still_leader(), "a late acknowledgement extends it again");
        g.lose("test");
        assert!(!g.still_leader());
        assert_eq!(g.lost_reason().as_deref(), Some("test"));
        g.extend(Instant::now() + Duration::from_secs(50));
        assert!(!g.still_leader(), "a lost guard stays lost");
    }
}
