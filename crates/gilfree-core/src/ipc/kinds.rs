//! The slot kinds of the engine's arena: the one list that names every primitive living in an
//! [`Arena`] slot, and the constructors that make an arena with it.
//!
//! [`super::arena`] dispatches owner death and retirement on a slot's kind id through the
//! [`SlotKind`] hooks it is given, so it names no primitive; each primitive implements
//! [`SlotBody`] in its own file. A new kind is one `SlotBody` impl
//! there and one line in [`ALL`] here. Every process of one tree must use the same table: the
//! parent's [`Arena::create`] and the workers' [`Arena::from_env`] both take [`ALL`].

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;

use super::arena::{Arena, Kind, SlotBody, SlotKind};
use super::barrier::BarrierBody;
use super::blob::BlobBody;
use super::condition::CondWord;
use super::event::EventWord;
use super::lock::LockBody;
use super::queue::QueueBody;
use super::semaphore::SemWord;
use crate::sync::AtomicU64;

/// Every kind of slot the engine allocates, with its hooks.
pub static ALL: &[SlotKind] = &[
    SlotKind::of::<LockBody>(),
    SlotKind::of::<EventWord>(),
    SlotKind::of::<SemWord>(),
    SlotKind::of::<CondWord>(),
    SlotKind::of::<BarrierBody>(),
    SlotKind::of::<AtomicU64>(),
    SlotKind::of::<QueueBody>(),
    SlotKind::of::<BlobBody>(),
];

/// A `Lock` or `RLock` ([`super::lock`]).
pub const LOCK: Kind = LockBody::KIND;
/// An `Event` ([`super::event`]).
pub const EVENT: Kind = EventWord::KIND;
/// A `Semaphore` or `BoundedSemaphore` ([`super::semaphore`]).
pub const SEMAPHORE: Kind = SemWord::KIND;
/// A `Condition`'s wait word ([`super::condition`]).
pub const CONDITION: Kind = CondWord::KIND;
/// A `Barrier` ([`super::barrier`]).
pub const BARRIER: Kind = BarrierBody::KIND;
/// A plain 8-byte cell (a `Value`'s storage).
pub const CELL: Kind = <AtomicU64 as SlotBody>::KIND;
/// A `Queue` ([`super::queue`]).
pub const QUEUE: Kind = QueueBody::KIND;
/// A byte string ([`super::blob`]).
pub const BLOB: Kind = BlobBody::KIND;

impl Arena {
    /// Creates a fresh arena for the engine's slot kinds ([`ALL`]).
    pub fn create() -> io::Result<Arc<Arena>> {
        Arena::create_with(ALL)
    }

    /// Maps an arena another process created, from its memfd (without its heap: queues are
    /// unavailable, see [`Self::open_with_heap`]).
    pub fn open(fd: OwnedFd) -> io::Result<Arc<Arena>> {
        Arena::open_with(ALL, fd, None)
    }

    /// Maps an arena and its chunk heap, from their memfds.
    pub fn open_with_heap(fd: OwnedFd, heap: OwnedFd) -> io::Result<Arc<Arena>> {
        Arena::open_with(ALL, fd, Some(heap))
    }

    /// [`Arena::open_inherited_with`] the engine's slot kinds.
    ///
    /// # Safety
    /// As [`Arena::open_inherited_with`]: nothing else in this process owns `fd`.
    pub unsafe fn open_inherited(fd: RawFd) -> io::Result<Arc<Arena>> {
        // SAFETY: the caller's contract is the callee's.
        unsafe { Arena::open_inherited_with(ALL, fd) }
    }

    /// [`Arena::from_env_with`] the engine's slot kinds.
    pub fn from_env() -> io::Result<Option<Arc<Arena>>> {
        Arena::from_env_with(ALL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_one_entry_per_kind() {
        let mut ids: Vec<u32> = ALL.iter().map(|k| k.kind().id()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), ALL.len());
        for k in [
            LOCK, EVENT, SEMAPHORE, CONDITION, BARRIER, CELL, QUEUE, BLOB,
        ] {
            assert!(ALL.iter().any(|s| s.kind() == k), "{k:?} missing from ALL");
        }
    }
}
