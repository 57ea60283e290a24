//! A slot kind defined outside the engine's `ipc` module: the arena runs its hooks for owner
//! death and retirement from the table it was made with, so a new primitive needs no edit of
//! `ipc::arena` (only a `SlotBody` impl and a line in its arena's table).
#![cfg(not(loom))]
// Implementing `SlotBody` (an unsafe trait: the body layout contract) is what this test is about.
#![allow(unsafe_code)]

use std::sync::{Arc, OnceLock};

use gilfree_core::ipc::arena::{Arena, Kind, SlotBody, SlotKind, TypedSlot};
use gilfree_core::ipc::error::AttachError;
use gilfree_core::ipc::heap::Heap;
use gilfree_core::ipc::kinds;
use gilfree_core::sync::{AtomicU32, Ordering};

/// A pid no live process has (above the kernel's `pid_max` limit of 2^22).
const FAKE_PID: u32 = 1 << 23;

/// A body that records what the arena told it, in the shared body itself (deaths) and in a
/// heap chunk it owns (retirement gives the chunk back).
#[repr(C)]
struct Probe {
    deaths: AtomicU32,
    last_held: AtomicU32,
    chunk: AtomicU32,
}

// SAFETY: every slot of `PROBE` is initialised as a `Probe` (atomics only, 12 bytes).
unsafe impl SlotBody for Probe {
    const KIND: Kind = Kind::new(0x7e57);

    fn owner_died(&self, held: i32) {
        self.deaths.fetch_add(1, Ordering::SeqCst);
        self.last_held.store(held as u32, Ordering::SeqCst);
    }

    fn retired(&self, heap: Option<&Heap>) {
        if let Some(heap) = heap {
            heap.free(self.chunk.swap(0, Ordering::SeqCst));
        }
    }
}

/// The engine's kinds plus `Probe`.
fn with_probe() -> &'static [SlotKind] {
    static TABLE: OnceLock<Vec<SlotKind>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = kinds::ALL.to_vec();
        t.push(SlotKind::of::<Probe>());
        t
    })
}

fn probe(arena: &Arc<Arena>) -> TypedSlot<Probe> {
    let chunk = arena.heap().unwrap().alloc().expect("a heap chunk");
    TypedSlot::new(
        arena,
        Probe {
            deaths: AtomicU32::new(0),
            last_held: AtomicU32::new(0),
            chunk: AtomicU32::new(chunk),
        },
    )
    .unwrap()
}

#[test]
fn a_new_kind_gets_its_owner_death_hook() {
    let arena = Arena::create_with(with_probe()).unwrap();
    let ours = probe(&arena);
    let h = ours.handle();
    let theirs = arena.attach_as(h, Probe::KIND, FAKE_PID).unwrap();
    // The other process took two "permits" and died without detaching.
    theirs.held().fetch_add(2, Ordering::SeqCst);
    std::mem::forget(theirs);
    arena.reap(FAKE_PID);
    assert_eq!(ours.body().deaths.load(Ordering::SeqCst), 1);
    assert_eq!(ours.body().last_held.load(Ordering::SeqCst), 2);
    // A process without an entry in the slot is not this slot's business.
    arena.reap(FAKE_PID + 1);
    assert_eq!(ours.body().deaths.load(Ordering::SeqCst), 1);
}

#[test]
fn a_new_kind_gets_its_retirement_hook() {
    let arena = Arena::create_with(with_probe()).unwrap();
    let heap = arena.heap().unwrap();
    let ours = probe(&arena);
    assert_eq!(heap.chunks_in_use(), 1);
    let h = ours.handle();
    drop(ours);
    assert_eq!(
        heap.chunks_in_use(),
        0,
        "retirement gave the body's chunk back"
    );
    assert!(matches!(
        arena.attach(h, Probe::KIND),
        Err(AttachError::Stale)
    ));
}

#[test]
#[should_panic(expected = "not in this arena's table")]
fn a_kind_missing_from_the_table_is_refused() {
    let arena = Arena::create().unwrap();
    let _ = probe(&arena);
}

#[test]
#[should_panic(expected = "share the id")]
fn two_kinds_with_one_id_are_refused() {
    /// Claims `Probe`'s id.
    struct Twin;
    // SAFETY: never allocated (the table is refused first).
    unsafe impl SlotBody for Twin {
        const KIND: Kind = Probe::KIND;
    }
    static TABLE: [SlotKind; 2] = [SlotKind::of::<Probe>(), SlotKind::of::<Twin>()];
    let _ = Arena::create_with(&TABLE);
}
