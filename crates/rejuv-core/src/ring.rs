//! A bounded ring of recent readings that grows in small exact steps.
//!
//! A `VecDeque` doubles its capacity when it is full, so a ring that stops at `max` holds up
//! to twice the memory its readings need (a controller keeps one or two such rings per
//! server: an hour of readings at 10 s is 360, held in a capacity of 512). [`push_bounded`]
//! grows the capacity by an eighth at a time (at least 8), never past `max`, and drops the
//! oldest reading once `max` are held: at most an eighth more than the readings need, and
//! the copies of growing amortized over many pushes.

use std::collections::VecDeque;

/// Appends `value`, dropping the oldest when `max` are held already.
pub fn push_bounded<T>(ring: &mut VecDeque<T>, value: T, max: usize) {
    let max = max.max(1);
    while ring.len() >= max {
        ring.pop_front();
    }
    if ring.len() == ring.capacity() {
        let step = (ring.len() / 8).max(8).min(max - ring.len());
        ring.reserve_exact(step);
    }
    ring.push_back(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_the_newest_max_and_little_more_room_than_it_needs() {
        let mut ring = VecDeque::new();
        for i in 0..1000u32 {
            push_bounded(&mut ring, i, 360);
            let needed = ring.len();
            assert!(
                ring.capacity() <= needed + (needed / 8).max(8),
                "{} readings in a capacity of {}",
                needed,
                ring.capacity()
            );
        }
        assert_eq!(ring.len(), 360);
        assert_eq!(ring.front(), Some(&640));
        assert_eq!(ring.back(), Some(&999));
        assert!(ring.capacity() < 360 + 45, "capacity {}", ring.capacity());
        // A plain VecDeque would have doubled to 512.
    }

    #[test]
    fn a_ring_of_one_keeps_the_latest() {
        let mut ring = VecDeque::new();
        for i in 0..5 {
            push_bounded(&mut ring, i, 1);
        }
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), vec![4]);
        push_bounded(&mut ring, 9, 0);
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), vec![9]);
    }
}
