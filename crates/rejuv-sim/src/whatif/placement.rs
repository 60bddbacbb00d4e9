//! Where a rejuvenated server's copies go in the replay: the one place that decides it.
//!
//! A fleet with spares replays in `active-standby`: a spare takes the copies, and the
//! rejuvenated server rejoins as the new spare. A fleet of primaries alone would duplex each
//! server's instances *in place* (on the same server, another port); until the core can do
//! that, it replays in `active-active`: the primary with the most room takes the copies. So
//! that a peer always has room, every server's core capacity is its serving units times the
//! number of servers (each primary runs one instance of one unit, so any server can hold every
//! instance of the fleet); the capacity floor (`budget.min_available_capacity`, in serving
//! units) is scaled by the same factor, so it means what the operator wrote.
//!
//! When the core duplexes in place, [`Placement::for_fleet`] returns that placement for a
//! fleet of primaries and the scaling goes.

use super::input::Fleet;
use rejuv_core::types::{Mode, Role};

/// The cluster mode and the capacity scaling a fleet replays with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub mode: Mode,
    /// Core capacity units per serving unit.
    pub room: u32,
}

impl Placement {
    pub fn for_fleet(fleet: &Fleet) -> Self {
        if fleet.servers.iter().any(|s| s.role == Role::Spare) {
            Self {
                mode: Mode::ActiveStandby,
                room: 1,
            }
        } else {
            // Stand-in for in-place duplexing (see the module docs).
            Self {
                mode: Mode::ActiveActive,
                room: fleet.servers.len().max(1) as u32,
            }
        }
    }

    /// A server's capacity in the core, from its serving units (`None` if it does not fit).
    pub fn capacity(&self, units: u32) -> Option<u32> {
        units.checked_mul(self.room)
    }

    /// The capacity floor in the core's units, from serving units.
    pub fn floor(&self, units: u32) -> Option<u32> {
        units.checked_mul(self.room)
    }

    pub fn describe(&self) -> String {
        match self.mode {
            Mode::ActiveStandby => "active-standby: spares take the copies".into(),
            Mode::ActiveActive => "active-active: a primary with room takes the copies (stand-in for duplexing in place)".into(),
        }
    }
}
