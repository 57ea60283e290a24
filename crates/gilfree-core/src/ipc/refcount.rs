//! The reference-count steps of an arena slot ([`super::arena`]), written once so that the arena
//! runs them on its shared words and the loom model `loom_arena_counts` runs them on the heap.
//!
//! Each slot has a global count (`refs`: attachments, all processes together) and, per
//! attached process, an entry count (that process's attachments). The arena runs every
//! function here under the slot's robust `meta` mutex, so the steps never interleave with
//! each other; what this module fixes is their *order*, which decides what a process that
//! dies between two steps leaves behind.
//!
//! # Invariant
//! For every slot, `refs >= Σ entry counts` at every step boundary. A process's entry never
//! counts more than it added to `refs`, so reaping a dead process (subtracting its entry)
//! can leave `refs` too high (a leaked slot) but never too low (a slot freed while another
//! process still uses it).
//!
//! # Protocol (each step ends at a [`Step`] where a process may die)
//! 1. Attach: `refs += 1` ([`Step::AttachCounted`]), then `entry += 1`.
//! 2. Detach: `entry -= 1`, the entry released at zero ([`Step::DetachEntry`]), then
//!    `refs -= 1`; at zero the caller retires the slot.
//! 3. Reap a dead process: read its entry and release it ([`Step::ReapEntry`]), then
//!    `refs -= entry`. A `refs` smaller than the entry would mean the invariant broke: the slot
//!    is then leaked, never freed.

use crate::sync::{AtomicU32, Ordering};

/// A point between two steps of a slot's lifecycle where a process may die. Tests make a
/// process SIGKILL itself at one of them ([`super::arena::crash_at`]); the loom model
/// abandons a thread's work there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    /// Allocation: the slot is popped off the free list, nothing else done.
    AllocPopped = 1,
    /// Allocation: the table entry is claimed, no count set yet (under `meta`).
    AllocEntry = 2,
    /// Allocation: both counts are 1, `kind` not yet set (under `meta`).
    AllocCounted = 3,
    /// Attach: `refs` raised, the entry not yet (under `meta`).
    AttachCounted = 4,
    /// Detach: the entry lowered (maybe released), `refs` not yet (under `meta`).
    DetachEntry = 5,
    /// Retire: `kind` cleared, generation not yet bumped (under `meta`).
    RetireCleared = 6,
    /// Retire: `meta` unlocked, the slot not yet pushed on the free list.
    RetireUnlocked = 7,
    /// Reap: the dead process's entry released, `refs` not yet lowered (under `meta`).
    ReapEntry = 8,
}

impl Step {
    /// Every step, in protocol order.
    pub const ALL: [Step; 8] = [
        Step::AllocPopped,
        Step::AllocEntry,
        Step::AllocCounted,
        Step::AttachCounted,
        Step::DetachEntry,
        Step::RetireCleared,
        Step::RetireUnlocked,
        Step::ReapEntry,
    ];

    /// The step whose number is `n`, if any.
    pub fn from_u32(n: u32) -> Option<Step> {
        Self::ALL.into_iter().find(|s| *s as u32 == n)
    }
}

/// The process died at a step (only the loom model and tests see this: a real process is
/// gone).
#[derive(Debug, PartialEq, Eq)]
pub struct Died;

/// Protocol step 1. `die(step)` returns `true` when the process dies there.
pub fn attach(refs: &AtomicU32, entry: &AtomicU32, die: impl Fn(Step) -> bool) -> Result<(), Died> {
    refs.fetch_add(1, Ordering::Relaxed);
    if die(Step::AttachCounted) {
        return Err(Died);
    }
    entry.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Protocol step 2: `release` frees the entry when it reaches zero. `Ok(true)`: `refs` reached
/// zero and the caller retires the slot.
pub fn detach(
    refs: &AtomicU32,
    entry: &AtomicU32,
    release: impl FnOnce(),
    die: impl Fn(Step) -> bool,
) -> Result<bool, Died> {
    if entry.fetch_sub(1, Ordering::Relaxed) == 1 {
        release();
    }
    if die(Step::DetachEntry) {
        return Err(Died);
    }
    Ok(refs.fetch_sub(1, Ordering::Relaxed) == 1)
}

/// Protocol step 3 for a dead process's entry: `release` frees it (its count included).
/// `Ok(true)`: `refs` reached zero and the caller retires the slot.
pub fn reap(
    refs: &AtomicU32,
    entry: &AtomicU32,
    release: impl FnOnce(),
    die: impl Fn(Step) -> bool,
) -> Result<bool, Died> {
    let held = entry.load(Ordering::Relaxed);
    release();
    if die(Step::ReapEntry) {
        return Err(Died);
    }
    let total = refs.load(Ordering::Relaxed);
    match total.checked_sub(held) {
        Some(left) => {
            refs.store(left, Ordering::Relaxed);
            Ok(left == 0)
        }
        // The invariant broke (it cannot under this protocol): leak rather than free a slot
        // someone may still use.
        None => Ok(false),
    }
}
