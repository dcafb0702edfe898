//! Slots of the in-kernel drop counters (`DROPS`, a per-CPU array).
//!
//! An event that cannot be delivered is counted, never silently lost: by
//! reason (ring buffer full, a map full) and by the program's source and
//! operation. User space sums the per-CPU values, shows them live and
//! stores them with the session.

/// The ring buffer had no room for the record.
pub const REASON_RING_FULL: u32 = 0;
/// A per-call, per-thread or per-request map had no room, so the pair
/// (entry/return, switch-out/in, issue/complete) could not be matched.
pub const REASON_MAP_FULL: u32 = 1;

/// Number of drop reasons (`REASON_*` constants).
pub const REASONS: u32 = 2;
const SOURCES: u32 = 8;
const OPS: u32 = 64;

/// Number of slots in the `DROPS` array.
pub const SLOTS: u32 = REASONS * SOURCES * OPS;

/// The slot counting drops of `(source, op)` for `reason`.
#[must_use]
pub const fn slot(reason: u32, source: u8, op: u8) -> u32 {
    reason * SOURCES * OPS + (source as u32 % SOURCES) * OPS + (op as u32 % OPS)
}

/// `(reason, source, op)` of a slot.
#[must_use]
pub const fn split_slot(slot: u32) -> (u32, u8, u8) {
    (
        slot / (SOURCES * OPS),
        ((slot / OPS) % SOURCES) as u8,
        (slot % OPS) as u8,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::OPS as CATALOG;

    #[test]
    fn every_catalogued_op_has_its_own_slot() {
        for reason in 0..REASONS {
            for o in CATALOG {
                let s = slot(reason, o.source, o.op);
                assert!(s < SLOTS);
                assert_eq!(split_slot(s), (reason, o.source, o.op));
            }
        }
    }
}
