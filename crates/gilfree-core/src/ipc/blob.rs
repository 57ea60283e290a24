//! `Blob`: one variable-size byte string in shared memory that any process may replace, append
//! to, or read (whole or from an offset), with a version number that changes on every change and
//! an epoch that changes on every replacement. Python's `SharedList` and `SharedDict` keep a log
//! of pickled operations in one: appends are O(item), and a reader that saw the log before
//! reads only what was appended since.
//!
//! # Layout ([`BlobBody`], `#[repr(C)]`, in an arena slot)
//! | offset | field        | meaning                                                       |
//! |--------|--------------|---------------------------------------------------------------|
//! | 0      | `mutex`      | robust pshared `pthread_mutex_t`; guards every field below    |
//! | 40     | `published`  | the current contents: `first_chunk << 32 \| len` (0: empty)    |
//! | 48     | `version`    | bumped after every publish and every recovery                 |
//! | 56     | `pending`    | first chunk of a chain being written (0: none)                |
//! | 60     | `retiring`   | first chunk of a replaced chain not yet freed (0: none)       |
//! | 64     | `recoveries` | times a dead holder's work was cleaned up (diagnostics)       |
//! | 72     | `epoch`      | bumped after every `store` and every recovery                 |
//!
//! The bytes live in a chain of [`Heap`] chunks (`next` links in the heap), `len` bytes from
//! the start of the first chunk on. Chunks linked after the one holding byte `len` are spare
//! (left by an `append` whose writer died before publishing); `append` reuses them, and they
//! are freed with the chain.
//!
//! # Who writes what
//! Every field, and the chunks of the `published`, `pending` and `retiring` chains, only under
//! `mutex`. `version` is also read without it (a cache check: a stale read only means one
//! more reload).
//!
//! # Protocol (`store(data)`, all under `mutex`)
//! 1. Lock (a dead holder is first cleaned up: "When a process dies").
//! 2. Allocate the first chunk, `pending` = it; write `data`, allocating each further chunk and
//!    linking it *before* writing into it. Heap full → free the `pending` chain, `pending = 0`,
//!    fail with the old contents intact.
//! 3. `retiring` = the old first chunk.
//! 4. Publish with one store: `published` = the new chain and length.
//! 5. `version += 1`; `pending = 0`.
//! 6. Free the old chain one chunk at a time, moving `retiring` to the next chunk *before*
//!    freeing the current one (so a chunk is never freed twice). Unlock.
//!
//! `append(data)`, under `mutex`: lock; if the blob is empty, steps 2, 4 and 5 of `store` (no
//! old chain); else write `data` from byte `len` on (walking the chain to it), reusing a spare
//! linked chunk or allocating one and linking it before writing into it; then publish with one
//! store of `published` (same first chunk, the new length), `version += 1`. Heap full → the
//! contents are unchanged (chunks it linked stay as spares).
//!
//! `read_from(epoch, offset)`: lock; if `epoch` is the current one and `offset <= len`, copy
//! bytes `offset..len`, else all of them; with `version` and `epoch`, one snapshot; unlock.
//!
//! # When a process dies
//! - Holding the lock, anywhere in `store`: the kernel marks the robust mutex; the next locker
//!   gets `EOWNERDEAD` and first frees the `pending` chain unless it is the published one
//!   (death after step 4), then the `retiring` chain unless it is the published one (death
//!   before step 4), and bumps `version` and `epoch` (death between steps 4 and 5). The contents are then
//!   either wholly the old bytes or wholly the new ones; a half-written string is never seen.
//!   A death inside step 6 leaks at most one chunk (address space in the heap, until the
//!   arena goes).
//! - Holding the lock in `append`: nothing was published, so the contents are the old ones;
//!   the bytes written past `len` are overwritten by the next append.
//! - When the last process holding the blob is gone (or reaped), the arena frees every chain
//!   ([`BlobBody::free_chunks`]).

use std::io;
use std::sync::Arc;

use crate::ipc::arena::{Arena, Handle, Kind, SlotBody, TypedSlot};
use crate::ipc::error::{Acquired, AttachError};
use crate::ipc::heap::{Heap, CHUNK_SIZE};
use crate::ipc::mutex::RawMutex;
use crate::sync::{AtomicU32, AtomicU64, Ordering::SeqCst};

/// The blob's shared words (layout and protocol in the module doc).
#[repr(C)]
pub struct BlobBody {
    mutex: RawMutex,
    published: AtomicU64,
    version: AtomicU64,
    pending: AtomicU32,
    retiring: AtomicU32,
    recoveries: AtomicU32,
    epoch: AtomicU64,
}

const _: () = {
    assert!(std::mem::size_of::<BlobBody>() <= super::arena::BODY_SIZE);
    assert!(std::mem::align_of::<BlobBody>() <= 64);
};

// SAFETY: `ShmBlob::new` initialises every Blob slot as a `BlobBody` (atomics and a
// process-shared mutex, within a slot body).
unsafe impl SlotBody for BlobBody {
    const KIND: Kind = Kind::new(8);
    // `BlobBody` is `#[repr(C)]` with its robust mutex first.
    const BODY_STARTS_WITH_MUTEX: bool = true;

    /// The published (and any half-written) value live in heap chunks: they go back with the
    /// slot.
    fn retired(&self, heap: Option<&Heap>) {
        if let Some(heap) = heap {
            self.free_chunks(heap);
        }
    }
}

fn split(p: u64) -> (u32, usize) {
    ((p >> 32) as u32, (p & 0xffff_ffff) as usize)
}

/// Where [`ShmBlob::abandon_store`] stops (tests of the recovery).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreStep {
    /// After step 2: the new chain is written, nothing published.
    Written,
    /// After step 4: published, `version` and `pending` not yet updated.
    Published,
    /// After step 5: only the old chain is left to free.
    Versioned,
}

/// Holds a blob's mutex; unlocks on drop.
struct Locked<'a>(&'a BlobBody);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = self.0.mutex.unlock();
    }
}

/// Why a [`ShmBlob::store`] failed.
#[derive(Debug)]
pub enum StoreError {
    /// The shared heap has no room for the new contents (the old ones are kept).
    HeapFull,
    /// Longer than a blob can describe (4 GiB).
    TooLarge,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::HeapFull => f.write_str("the shared heap is full"),
            StoreError::TooLarge => f.write_str("a shared container holds at most 4 GiB"),
        }
    }
}

impl std::error::Error for StoreError {}

impl BlobBody {
    /// Initialises an empty blob in place.
    ///
    /// # Safety
    /// `this` must be valid for writes and unused by any thread (as for [`RawMutex::init`]).
    pub unsafe fn init(this: *mut BlobBody) -> io::Result<()> {
        // SAFETY: the caller's contract; the other words are zero (the slot body is zeroed),
        // which is the empty blob.
        unsafe { RawMutex::init(&raw mut (*this).mutex) }
    }

    fn lock(&self, heap: &Heap) -> Locked<'_> {
        let got = self.mutex.lock_uninterruptible();
        let guard = Locked(self);
        if got == Acquired::OwnerDied {
            self.recover(heap);
        }
        guard
    }

    /// Cleans up after a holder that died ("When a process dies"); the caller holds the lock.
    fn recover(&self, heap: &Heap) {
        let (current, _) = split(self.published.load(SeqCst));
        let pending = self.pending.swap(0, SeqCst);
        if pending != 0 && pending != current {
            free_chain(heap, pending);
        }
        let retiring = self.retiring.swap(0, SeqCst);
        if retiring != 0 && retiring != current {
            free_chain(heap, retiring);
        }
        self.version.fetch_add(1, SeqCst);
        self.epoch.fetch_add(1, SeqCst);
        self.recoveries.fetch_add(1, SeqCst);
    }

    fn store(&self, heap: &Heap, data: &[u8], stop: Option<StoreStep>) -> Result<(), StoreError> {
        let guard = self.lock(heap);
        self.store_locked(heap, data, stop, guard)
    }

    /// `store`'s steps 2 to 6, with the lock that `guard` holds.
    fn store_locked(
        &self,
        heap: &Heap,
        data: &[u8],
        stop: Option<StoreStep>,
        guard: Locked<'_>,
    ) -> Result<(), StoreError> {
        let len = u32::try_from(data.len()).map_err(|_| StoreError::TooLarge)?;
        // Step 2.
        let first = if data.is_empty() {
            0
        } else {
            let first = heap.alloc().ok_or(StoreError::HeapFull)?;
            self.pending.store(first, SeqCst);
            if !write_chain(heap, first, data) {
                self.pending.store(0, SeqCst);
                free_chain(heap, first);
                return Err(StoreError::HeapFull);
            }
            first
        };
        if stop == Some(StoreStep::Written) {
            std::mem::forget(guard);
            return Ok(());
        }
        // Steps 3 and 4.
        let (old, _) = split(self.published.load(SeqCst));
        self.retiring.store(old, SeqCst);
        self.published
            .store((first as u64) << 32 | len as u64, SeqCst);
        if stop == Some(StoreStep::Published) {
            std::mem::forget(guard);
            return Ok(());
        }
        // Step 5.
        self.version.fetch_add(1, SeqCst);
        self.epoch.fetch_add(1, SeqCst);
        self.pending.store(0, SeqCst);
        if stop == Some(StoreStep::Versioned) {
            std::mem::forget(guard);
            return Ok(());
        }
        // Step 6.
        let mut chunk = old;
        while chunk != 0 {
            let next = heap.next(chunk).load(SeqCst);
            self.retiring.store(next, SeqCst);
            heap.free(chunk);
            chunk = next;
        }
        drop(guard);
        Ok(())
    }

    fn append(&self, heap: &Heap, data: &[u8], publish: bool) -> Result<(), StoreError> {
        let guard = self.lock(heap);
        let (first, len) = split(self.published.load(SeqCst));
        if first == 0 {
            return self.store_locked(heap, data, None, guard);
        }
        let new_len = u32::try_from(len + data.len()).map_err(|_| StoreError::TooLarge)?;
        let mut chunk = first;
        for _ in 0..len / CHUNK_SIZE {
            chunk = next_or_alloc(heap, chunk).ok_or(StoreError::HeapFull)?;
        }
        let mut off = len % CHUNK_SIZE;
        let mut done = 0;
        while done < data.len() {
            if off == CHUNK_SIZE {
                chunk = next_or_alloc(heap, chunk).ok_or(StoreError::HeapFull)?;
                off = 0;
            }
            let n = (CHUNK_SIZE - off).min(data.len() - done);
            // SAFETY: the chunk is in the blob's chain and the bytes from `len` on are
            // unpublished, so only the lock holder touches them; `off + n <= CHUNK_SIZE`.
            unsafe {
                let dst = heap.chunk(chunk).add(off);
                std::ptr::copy_nonoverlapping(data[done..].as_ptr(), dst, n);
            }
            off += n;
            done += n;
        }
        if !publish {
            std::mem::forget(guard);
            return Ok(());
        }
        self.published
            .store((first as u64) << 32 | new_len as u64, SeqCst);
        self.version.fetch_add(1, SeqCst);
        drop(guard);
        Ok(())
    }

    fn read_from(&self, heap: &Heap, epoch: u64, offset: usize) -> Snapshot {
        let _guard = self.lock(heap);
        let (first, len) = split(self.published.load(SeqCst));
        let current = self.epoch.load(SeqCst);
        let start = if epoch == current && offset <= len {
            offset
        } else {
            0
        };
        let mut out = vec![0u8; len - start];
        let mut chunk = first;
        for _ in 0..start / CHUNK_SIZE {
            chunk = heap.next(chunk).load(SeqCst);
        }
        let mut off = start % CHUNK_SIZE;
        let mut done = 0;
        while done < out.len() {
            if off == CHUNK_SIZE {
                chunk = heap.next(chunk).load(SeqCst);
                off = 0;
            }
            assert!(chunk != 0, "blob chain shorter than its length");
            let n = (CHUNK_SIZE - off).min(out.len() - done);
            // SAFETY: the chunk is in the published chain, which the lock gives us ("Who
            // writes what"); `off + n <= CHUNK_SIZE`, and `out` is a distinct Rust buffer.
            unsafe {
                let src = heap.chunk(chunk).add(off);
                std::ptr::copy_nonoverlapping(src, out[done..].as_mut_ptr(), n);
            }
            off += n;
            done += n;
        }
        Snapshot {
            version: self.version.load(SeqCst),
            epoch: current,
            start,
            data: out,
        }
    }

    /// Gives every chain back to the heap (the arena calls this when the slot is freed: no
    /// process uses the blob any more).
    pub fn free_chunks(&self, heap: &Heap) {
        let (current, _) = split(self.published.load(SeqCst));
        for other in [self.pending.load(SeqCst), self.retiring.load(SeqCst)] {
            if other != 0 && other != current {
                free_chain(heap, other);
            }
        }
        free_chain(heap, current);
    }
}

/// Writes `data` from the start of chunk `first` on, allocating and linking further chunks;
/// `false` when the heap is full (the chunks written stay linked after `first`).
fn write_chain(heap: &Heap, first: u32, data: &[u8]) -> bool {
    let mut chunk = first;
    for (i, piece) in data.chunks(CHUNK_SIZE).enumerate() {
        if i > 0 {
            let Some(next) = heap.alloc() else {
                return false;
            };
            // Linked before it is written: a death from here on leaves it reachable.
            heap.next(chunk).store(next, SeqCst);
            chunk = next;
        }
        // SAFETY: the chunk is in the `pending` chain, which only the lock holder touches;
        // `piece.len() <= CHUNK_SIZE`.
        unsafe { std::ptr::copy_nonoverlapping(piece.as_ptr(), heap.chunk(chunk), piece.len()) };
    }
    true
}

/// The chunk linked after `chunk`, or a new one linked there; `None` when the heap is full.
fn next_or_alloc(heap: &Heap, chunk: u32) -> Option<u32> {
    let next = heap.next(chunk).load(SeqCst);
    if next != 0 {
        return Some(next);
    }
    let next = heap.alloc()?;
    // Linked before it is written: a death from here on leaves it reachable.
    heap.next(chunk).store(next, SeqCst);
    Some(next)
}

/// What [`ShmBlob::read_from`] returns: one consistent view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The version of these contents.
    pub version: u64,
    /// Their epoch (changes on every `store`).
    pub epoch: u64,
    /// The offset of `data` in the contents: the offset asked for, or 0 for all of them.
    pub start: usize,
    /// The bytes from `start` to the end.
    pub data: Vec<u8>,
}

/// Frees `first` and every chunk linked after it.
fn free_chain(heap: &Heap, mut chunk: u32) {
    while chunk != 0 {
        let next = heap.next(chunk).load(SeqCst);
        heap.free(chunk);
        chunk = next;
    }
}

/// A byte string in an arena slot, its bytes in the arena's heap (see the module doc).
#[derive(Debug)]
pub struct ShmBlob {
    slot: TypedSlot<BlobBody>,
}

impl ShmBlob {
    /// Allocates an empty blob in `arena`.
    pub fn new(arena: &Arc<Arena>) -> Result<ShmBlob, AttachError> {
        arena.heap().ok_or_else(no_heap)?;
        let slot = TypedSlot::alloc(arena, |body| {
            // SAFETY: `alloc` hands us the slot's unshared, zeroed, 64-aligned body.
            unsafe { BlobBody::init(body) }
        })?;
        Ok(ShmBlob { slot })
    }

    /// Attaches to the blob `handle` names.
    pub fn attach(arena: &Arc<Arena>, handle: Handle) -> Result<ShmBlob, AttachError> {
        arena.heap().ok_or_else(no_heap)?;
        Ok(ShmBlob {
            slot: TypedSlot::attach(arena, handle)?,
        })
    }

    /// The handle to send to another process.
    pub fn handle(&self) -> Handle {
        self.slot.handle()
    }

    fn heap(&self) -> &Heap {
        // `new` and `attach` refuse an arena without a heap.
        self.slot.arena().heap().expect("blob arena has a heap")
    }

    /// Replaces the contents with `data` (the protocol in the module doc).
    pub fn store(&self, data: &[u8]) -> Result<(), StoreError> {
        self.slot.body().store(self.heap(), data, None)
    }

    /// Appends `data` to the contents (the protocol in the module doc).
    pub fn append(&self, data: &[u8]) -> Result<(), StoreError> {
        self.slot.body().append(self.heap(), data, true)
    }

    /// The contents and their version, as one snapshot.
    pub fn read(&self) -> (u64, Vec<u8>) {
        let snap = self.read_from(0, usize::MAX);
        (snap.version, snap.data)
    }

    /// The bytes from `offset` on if `epoch` is still the current one, else all of them.
    pub fn read_from(&self, epoch: u64, offset: usize) -> Snapshot {
        self.slot.body().read_from(self.heap(), epoch, offset)
    }

    /// The current version (no lock taken): it changes whenever the contents may have.
    pub fn version(&self) -> u64 {
        self.slot.body().version.load(SeqCst)
    }

    /// The length of the contents in bytes (no lock taken).
    pub fn len(&self) -> usize {
        split(self.slot.body().published.load(SeqCst)).1
    }

    /// Whether the contents are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times a dead holder's work was cleaned up.
    pub fn recoveries(&self) -> u32 {
        self.slot.body().recoveries.load(SeqCst)
    }

    /// Runs `store(data)` up to `step` and returns with the lock still held, as a process
    /// killed there would leave it (tests: the calling thread must then exit, so that the
    /// kernel marks the robust mutex).
    pub fn abandon_store(&self, data: &[u8], step: StoreStep) -> Result<(), StoreError> {
        self.slot.body().store(self.heap(), data, Some(step))
    }

    /// Runs `append(data)` up to its publish and returns with the lock still held (as
    /// [`abandon_store`](Self::abandon_store)).
    pub fn abandon_append(&self, data: &[u8]) -> Result<(), StoreError> {
        self.slot.body().append(self.heap(), data, false)
    }
}

fn no_heap() -> AttachError {
    AttachError::Io(io::Error::other(
        "this process has no shared heap (the arena was opened without it)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arena() -> Arc<Arena> {
        Arena::create().unwrap()
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn store_then_read_round_trips_every_size() {
        let arena = arena();
        let blob = ShmBlob::new(&arena).unwrap();
        assert_eq!(blob.read().1, Vec::<u8>::new());
        let mut last = blob.version();
        for n in [
            1,
            100,
            CHUNK_SIZE - 1,
            CHUNK_SIZE,
            CHUNK_SIZE + 1,
            3 * CHUNK_SIZE + 7,
            0,
        ] {
            let data = pattern(n, n as u8);
            blob.store(&data).unwrap();
            let (version, got) = blob.read();
            assert_eq!(got, data, "size {n}");
            assert!(version > last);
            last = version;
            assert_eq!(blob.len(), n);
        }
    }

    #[test]
    fn replaced_chains_go_back_to_the_heap() {
        let arena = arena();
        let heap = arena.heap().unwrap();
        let before = heap.chunks_in_use();
        let blob = ShmBlob::new(&arena).unwrap();
        for i in 0..50 {
            blob.store(&pattern(2 * CHUNK_SIZE + i, i as u8)).unwrap();
        }
        assert_eq!(heap.chunks_in_use(), before + 3);
        drop(blob);
        assert_eq!(heap.chunks_in_use(), before);
    }

    #[test]
    fn attached_handles_see_each_others_writes() {
        let arena = arena();
        let a = ShmBlob::new(&arena).unwrap();
        let b = ShmBlob::attach(&arena, a.handle()).unwrap();
        a.store(b"hello").unwrap();
        assert_eq!(b.read().1, b"hello");
        assert_eq!(a.version(), b.version());
    }

    /// A holder that dies at each step of `store` leaves either the old or the new contents,
    /// a version that differs from every version seen before, and no chunk leaked.
    #[test]
    fn a_dead_storer_leaves_old_or_new_contents_and_no_leak() {
        let old = pattern(2 * CHUNK_SIZE + 5, 1);
        let new = pattern(CHUNK_SIZE + 9, 2);
        for (step, expect_new) in [
            (StoreStep::Written, false),
            (StoreStep::Published, true),
            (StoreStep::Versioned, true),
        ] {
            let arena = arena();
            let heap = arena.heap().unwrap();
            let before = heap.chunks_in_use();
            let blob = ShmBlob::new(&arena).unwrap();
            blob.store(&old).unwrap();
            let (seen, _) = blob.read();
            // The thread exits holding the robust mutex: the kernel marks it owner-died.
            std::thread::scope(|s| {
                s.spawn(|| blob.abandon_store(&new, step).unwrap());
            });
            let (version, got) = blob.read();
            assert_eq!(blob.recoveries(), 1, "{step:?}");
            assert_eq!(&got, if expect_new { &new } else { &old }, "{step:?}");
            assert!(version > seen, "{step:?}");
            let chunks = if expect_new { 2 } else { 3 };
            assert_eq!(heap.chunks_in_use(), before + chunks, "{step:?}");
            drop(blob);
            assert_eq!(heap.chunks_in_use(), before, "{step:?}");
        }
    }

    #[test]
    fn appends_extend_the_contents_and_read_from_returns_only_the_new_bytes() {
        let arena = arena();
        let blob = ShmBlob::new(&arena).unwrap();
        let mut expect = Vec::new();
        blob.append(b"ab").unwrap(); // an empty blob: becomes a store
        expect.extend_from_slice(b"ab");
        let seen = blob.read_from(0, 0);
        for (i, n) in [1, CHUNK_SIZE - 3, 2, CHUNK_SIZE, 5, 2 * CHUNK_SIZE + 1]
            .into_iter()
            .enumerate()
        {
            let piece = pattern(n, i as u8);
            blob.append(&piece).unwrap();
            expect.extend_from_slice(&piece);
            assert_eq!(blob.read().1, expect, "after {i}");
        }
        let since = blob.read_from(seen.epoch, 2);
        assert_eq!((since.start, &since.data[..]), (2, &expect[2..]));
        assert!(since.version > seen.version);
        blob.store(b"new").unwrap(); // a new epoch: the whole contents again
        let all = blob.read_from(since.epoch, since.start + since.data.len());
        assert_eq!((all.start, &all.data[..]), (0, &b"new"[..]));
        assert!(all.epoch > since.epoch);
    }

    #[test]
    fn a_dead_appender_leaves_the_old_contents_and_its_chunks_are_reused() {
        let arena = arena();
        let heap = arena.heap().unwrap();
        let before = heap.chunks_in_use();
        let blob = ShmBlob::new(&arena).unwrap();
        let old = pattern(CHUNK_SIZE - 10, 3);
        blob.store(&old).unwrap();
        let seen = blob.read_from(0, 0);
        std::thread::scope(|s| {
            s.spawn(|| blob.abandon_append(&pattern(CHUNK_SIZE, 4)).unwrap());
        });
        let after = blob.read_from(seen.epoch, old.len());
        assert_eq!(blob.recoveries(), 1);
        assert_eq!(
            (after.start, &after.data[..]),
            (0, &old[..]),
            "recovery starts an epoch"
        );
        assert_eq!(
            heap.chunks_in_use(),
            before + 2,
            "the spare chunk stays linked"
        );
        let piece = pattern(100, 5);
        blob.append(&piece).unwrap();
        assert_eq!(heap.chunks_in_use(), before + 2, "and is reused");
        assert_eq!(blob.read().1, [old, piece].concat());
        drop(blob);
        assert_eq!(heap.chunks_in_use(), before);
    }

    /// Writers and readers on several threads: every read is one whole stored string, and
    /// versions never go back.
    #[test]
    fn stress_concurrent_stores_and_reads_see_whole_strings() {
        let arena = arena();
        let blob = ShmBlob::new(&arena).unwrap();
        let strings: Vec<Vec<u8>> = (0..4)
            .map(|i| pattern(i * CHUNK_SIZE / 2 + 3, i as u8))
            .collect();
        std::thread::scope(|s| {
            for w in 0..2 {
                let (blob, strings) = (&blob, &strings);
                s.spawn(move || {
                    for i in 0..300 {
                        blob.store(&strings[(i + w) % strings.len()]).unwrap();
                    }
                });
            }
            {
                let blob = &blob;
                s.spawn(move || {
                    for _ in 0..300 {
                        blob.append(b"").unwrap();
                    }
                });
            }
            for _ in 0..2 {
                let (blob, strings) = (&blob, &strings);
                s.spawn(move || {
                    let mut last = 0;
                    for _ in 0..300 {
                        let (version, got) = blob.read();
                        assert!(version >= last);
                        last = version;
                        assert!(got.is_empty() || strings.contains(&got));
                    }
                });
            }
        });
        assert_eq!(blob.version(), 900);
    }
}
