//! `Queue`: a multi-producer, multi-consumer queue of byte strings (Python puts pickles in it),
//! shared by threads of any process: `queue.Queue`'s semantics (`maxsize`, blocking and
//! timeouts, `task_done`/`join`) on a robust mutex, three futex words, and a chain of chunks in
//! the arena's [`Heap`].
//!
//! # Layout ([`QueueBody`], `#[repr(C)]`, in an arena slot)
//! | offset | field              | meaning                                                 |
//! |--------|--------------------|---------------------------------------------------------|
//! | 0      | `mutex`            | robust pshared `pthread_mutex_t`; guards everything below |
//! | 40     | `head`             | position of the first frame: `chunk << 32 \| offset`      |
//! | 48     | `tail`             | position after the last *published* frame                |
//! | 56     | `items`            | frames between `head` and `tail`                         |
//! | 64     | `bytes`            | their bytes, frame headers included                      |
//! | 72     | `unfinished`       | `put`s not yet matched by `task_done`                    |
//! | 80     | `maxsize`          | `queue.Queue`'s `maxsize` (0: no item limit; read-only)  |
//! | 88     | `maxbytes`         | byte capacity (read-only; see "Full")                    |
//! | 96     | `saved_tail`       | `tail` when the `put` in progress began                   |
//! | 104    | `saved_unfinished` | `unfinished` when the `put` in progress began             |
//! | 112    | `not_empty`, `not_full`, `all_done` | futex words (sequence numbers)          |
//! | 124    | `get_waiters`, `put_waiters`, `join_waiters` | threads asleep on each word    |
//! | 136    | `put_pending`      | 1 while a `put` is between its first write and its end   |
//! | 140    | `recoveries`       | times a holder's death was cleaned up (diagnostics)      |
//!
//! The frames form one byte stream through a chain of heap chunks (`next` links in the heap):
//! each frame is the item's length as a little-endian `u64`, then its bytes, and may span
//! chunks. The chain runs from `head`'s chunk to `tail`'s chunk; chunks linked after `tail`'s
//! chunk belong to a `put` in progress (or to a dead putter). A position may point at the very
//! end of a chunk (offset [`CHUNK_SIZE`]); readers and writers move to the next chunk only when
//! they need another byte, so both describe the same point the same way.
//!
//! # Who writes what
//! Every field, and the chunks of the chain, only under `mutex`. Waiter counts are atomic
//! adds (a sleeper drops its count after it woke, without the lock). `maxsize` and `maxbytes`
//! are written once, before the slot is published.
//!
//! # Protocol (all steps under `mutex`; "sleep on W" = `W_waiters += 1`, read `W`, unlock,
//! futex-wait while `W` is unchanged, `W_waiters -= 1`, lock again; "notify W" =
//! if `W_waiters > 0`: `W += 1` and wake all sleepers of `W`)
//! `put(item)`:
//! 1. Lock (a dead holder is first cleaned up: "When a process dies").
//! 2. While full (below): non-blocking → `Full`; else sleep on `not_full` (deadline → `Full`).
//! 3. `saved_tail = tail`, `saved_unfinished = unfinished`, `put_pending = 1`.
//! 4. Write the frame from `tail` on, allocating each new chunk and linking it after the last
//!    one *before* writing into it. The heap runs out → free the chunks linked after `tail`'s
//!    chunk, `put_pending = 0`; with items in the queue this is "full" (step 2 again), in an
//!    empty queue the item can never fit: `TooLarge`.
//! 5. Publish with one store: `tail` = the end of the frame. Then `items += 1`,
//!    `bytes += 8 + len`, `unfinished += 1`, `put_pending = 0`; notify `not_empty`; unlock.
//!
//! `get`: lock; while `items == 0`: non-blocking → `Empty`, else sleep on `not_empty`. Read the
//! frame from `head` (into a `Vec`), then one store: `head` = its end; `items -= 1`,
//! `bytes -= 8 + len`; free the chunks the read passed; notify `not_full`; unlock.
//!
//! `task_done`: lock; `unfinished == 0` → `TooMany`; `unfinished -= 1`, at 0 notify
//! `all_done`. `join`: lock; sleep on `all_done` while `unfinished > 0`.
//!
//! No wake-up is lost: a sleeper reads its word under the lock, and every notify changes the
//! word under the lock after the state change, so the futex wait returns at once.
//!
//! # Full
//! `maxsize > 0` and `items == maxsize`, or the item's frame would take `bytes` above
//! `maxbytes`. `maxbytes` is a soft limit: an empty queue takes an item of any size (up to what
//! the heap can hold), so no item is refused for being larger than the capacity; with
//! `maxsize == 0` a full queue makes `put` block as if `maxsize` were reached.
//!
//! # When a process dies
//! - Inside `put`, holding the lock: the kernel marks the robust mutex; the next locker gets
//!   `EOWNERDEAD` and recovers before anything else: if `put_pending`, `unfinished =
//!   saved_unfinished + (tail != saved_tail)` (published or not, decided by step 5's single
//!   store); every chunk linked after `tail`'s chunk is freed (the half-written frame is
//!   discarded); `items` and `bytes` are recounted by walking the frames from `head` to
//!   `tail`; every sleeper is woken. No other item is lost or changed, and a half-written item
//!   is never seen.
//! - Inside `get`: `head` moves in one store, so the item is either still there or gone. Killed
//!   after that store, the chunks the read passed are leaked (heap address space, not data).
//! - Asleep: its waiter count stays raised, which only costs spurious wake-ups.
//! - When the last process holding the queue is gone (or reaped), the arena frees every chunk
//!   of the chain ([`QueueBody::free_chunks`]).

use std::collections::VecDeque;
use std::time::Duration;

use crate::ipc::error::{AcquireError, GetError, PutError, TaskDoneError};
use crate::Wait;

#[cfg(not(loom))]
use crate::ipc::error::Acquired;
#[cfg(not(loom))]
use crate::ipc::futex::Futex;
#[cfg(not(loom))]
use crate::ipc::heap::{Heap, CHUNK_SIZE};
#[cfg(not(loom))]
use crate::ipc::notify::WaitError;
#[cfg(not(loom))]
use crate::sync::{AtomicU32, AtomicU64, Ordering::SeqCst};

/// The operations of `queue.Queue` on byte strings, for both twins.
pub trait ByteQueue: Sync {
    /// Appends `item`; waits while full if `block` (as long as `wait` allows).
    fn put(&self, item: &[u8], block: bool, wait: &mut Wait<'_>) -> Result<(), PutError>;
    /// Takes the oldest item; waits while empty if `block` (as long as `wait` allows).
    fn get(&self, block: bool, wait: &mut Wait<'_>) -> Result<Vec<u8>, GetError>;
    /// Marks one item as processed (`queue.Queue.task_done`).
    fn task_done(&self) -> Result<(), TaskDoneError>;
    /// Waits until every item put has been marked done (`queue.Queue.join`).
    fn join(&self, wait: &mut Wait<'_>) -> Result<(), AcquireError>;
    /// Items in the queue right now.
    fn len(&self) -> usize;
    /// Whether the queue holds no item right now.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `maxsize` (0: no item limit).
    fn maxsize(&self) -> usize;
    /// Simulates a putter that dies after writing `written` bytes of `item`'s frame, holding
    /// the queue's lock (iceoryx2's "abandon"). For the shared-memory queue, call it on a
    /// thread that then exits: the kernel then marks the robust mutex, as for a dead process.
    fn abandon_put(&self, item: &[u8], written: usize);
}

#[cfg(not(loom))]
fn wait_error(e: WaitError) -> AcquireError {
    match e {
        WaitError::Timeout => AcquireError::Timeout,
        WaitError::Interrupted => AcquireError::Interrupted,
        WaitError::Io(e) => AcquireError::Io(e),
        // A futex wait has no peer process.
        WaitError::PeerGone => AcquireError::Io(std::io::Error::other("unexpected peer")),
    }
}

fn put_error(e: AcquireError) -> PutError {
    match e {
        AcquireError::Timeout => PutError::Full,
        AcquireError::Interrupted => PutError::Interrupted,
        AcquireError::Io(e) => PutError::Io(e),
    }
}

fn get_error(e: AcquireError) -> GetError {
    match e {
        AcquireError::Timeout => GetError::Empty,
        AcquireError::Interrupted => GetError::Interrupted,
        AcquireError::Io(e) => GetError::Io(e),
    }
}

// ---- the in-process twin ---------------------------------------------------------------

/// The in-process twin: a `VecDeque` under a std mutex, with condvars.
pub struct LocalQueue {
    state: crate::sync::Mutex<LocalState>,
    changed: crate::sync::Condvar,
    maxsize: usize,
    maxbytes: usize,
}

#[derive(Default)]
struct LocalState {
    items: VecDeque<Vec<u8>>,
    bytes: usize,
    unfinished: u64,
}

impl LocalQueue {
    /// An empty queue (`maxsize` 0: no item limit; `maxbytes`: the byte capacity).
    pub fn new(maxsize: usize, maxbytes: usize) -> LocalQueue {
        LocalQueue {
            state: crate::sync::Mutex::default(),
            changed: crate::sync::Condvar::new(),
            maxsize,
            maxbytes,
        }
    }

    fn state(&self) -> crate::sync::MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps one slice on the condvar; `Err` on deadline or interrupt.
    fn sleep<'a>(
        &'a self,
        st: crate::sync::MutexGuard<'a, LocalState>,
        wait: &mut Wait<'_>,
    ) -> Result<crate::sync::MutexGuard<'a, LocalState>, AcquireError> {
        let slice = wait.slice()?.unwrap_or(Duration::from_secs(3600));
        let (st, slept) = self
            .changed
            .wait_timeout(st, slice)
            .unwrap_or_else(|e| e.into_inner());
        if !slept.timed_out() {
            return Ok(st);
        }
        drop(st);
        wait.after_slice()?;
        Ok(self.state())
    }
}

impl ByteQueue for LocalQueue {
    fn put(&self, item: &[u8], block: bool, wait: &mut Wait<'_>) -> Result<(), PutError> {
        let need = 8 + item.len();
        let mut st = self.state();
        while (self.maxsize > 0 && st.items.len() >= self.maxsize)
            || (st.bytes > 0 && st.bytes + need > self.maxbytes)
        {
            if !block {
                return Err(PutError::Full);
            }
            st = self.sleep(st, wait).map_err(put_error)?;
        }
        st.items.push_back(item.to_vec());
        st.bytes += need;
        st.unfinished += 1;
        self.changed.notify_all();
        Ok(())
    }

    fn get(&self, block: bool, wait: &mut Wait<'_>) -> Result<Vec<u8>, GetError> {
        let mut st = self.state();
        loop {
            if let Some(item) = st.items.pop_front() {
                st.bytes -= 8 + item.len();
                self.changed.notify_all();
                return Ok(item);
            }
            if !block {
                return Err(GetError::Empty);
            }
            st = self.sleep(st, wait).map_err(get_error)?;
        }
    }

    fn task_done(&self) -> Result<(), TaskDoneError> {
        let mut st = self.state();
        if st.unfinished == 0 {
            return Err(TaskDoneError::TooMany);
        }
        st.unfinished -= 1;
        if st.unfinished == 0 {
            self.changed.notify_all();
        }
        Ok(())
    }

    fn join(&self, wait: &mut Wait<'_>) -> Result<(), AcquireError> {
        let mut st = self.state();
        while st.unfinished > 0 {
            st = self.sleep(st, wait)?;
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.state().items.len()
    }

    fn maxsize(&self) -> usize {
        self.maxsize
    }

    fn abandon_put(&self, _item: &[u8], _written: usize) {
        // A put that dies before publishing leaves nothing behind: the twin never shows it.
    }
}

// ---- the shared-memory queue -----------------------------------------------------------

/// The queue's shared words (layout and protocol in the module doc).
#[cfg(not(loom))]
#[repr(C)]
pub struct QueueBody {
    mutex: super::mutex::RawMutex,
    head: AtomicU64,
    tail: AtomicU64,
    items: AtomicU64,
    bytes: AtomicU64,
    unfinished: AtomicU64,
    maxsize: AtomicU64,
    maxbytes: AtomicU64,
    saved_tail: AtomicU64,
    saved_unfinished: AtomicU64,
    not_empty: AtomicU32,
    not_full: AtomicU32,
    all_done: AtomicU32,
    get_waiters: AtomicU32,
    put_waiters: AtomicU32,
    join_waiters: AtomicU32,
    put_pending: AtomicU32,
    recoveries: AtomicU32,
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<QueueBody>() <= super::arena::BODY_SIZE);
    assert!(std::mem::align_of::<QueueBody>() <= 64);
};

#[cfg(not(loom))]
fn pos(chunk: u32, off: usize) -> u64 {
    (chunk as u64) << 32 | off as u64
}

#[cfg(not(loom))]
fn split(p: u64) -> (u32, usize) {
    ((p >> 32) as u32, (p & 0xffff_ffff) as usize)
}

/// A position in the chunk chain, moved by reads and writes (the caller holds the lock).
#[cfg(not(loom))]
struct Cursor<'h> {
    heap: &'h Heap,
    chunk: u32,
    off: usize,
}

#[cfg(not(loom))]
impl<'h> Cursor<'h> {
    fn at(heap: &'h Heap, p: u64) -> Cursor<'h> {
        let (chunk, off) = split(p);
        Cursor { heap, chunk, off }
    }

    fn pos(&self) -> u64 {
        pos(self.chunk, self.off)
    }

    /// At the end of a chunk, moves to the next one in the chain (the one left behind goes to
    /// `passed`); `false` if the chain ends there.
    fn step_if_at_end(&mut self, passed: &mut Vec<u32>) -> bool {
        if self.off < CHUNK_SIZE {
            return true;
        }
        let next = self.heap.next(self.chunk).load(SeqCst);
        if next == 0 {
            return false;
        }
        passed.push(self.chunk);
        self.chunk = next;
        self.off = 0;
        true
    }

    /// Copies `out.len()` bytes out, following `next` links; each chunk left behind goes to
    /// `passed`. `false` if the chain ends first (a broken invariant, or recovery's recount).
    fn read(&mut self, out: &mut [u8], passed: &mut Vec<u32>) -> bool {
        let mut done = 0;
        while done < out.len() {
            if !self.step_if_at_end(passed) {
                return false;
            }
            let n = (CHUNK_SIZE - self.off).min(out.len() - done);
            // SAFETY: the chunk is in the queue's chain, which the caller's lock gives it
            // (QueueBody "Who writes what"); `off + n <= CHUNK_SIZE` stays inside the chunk,
            // and `out` is a distinct Rust buffer.
            unsafe {
                let src = self.heap.chunk(self.chunk).add(self.off);
                std::ptr::copy_nonoverlapping(src, out[done..].as_mut_ptr(), n);
            }
            self.off += n;
            done += n;
        }
        true
    }

    /// Skips `n` bytes (recovery's recount); `false` if the chain ends first.
    fn skip(&mut self, mut n: u64, passed: &mut Vec<u32>) -> bool {
        while n > 0 {
            if !self.step_if_at_end(passed) {
                return false;
            }
            let step = ((CHUNK_SIZE - self.off) as u64).min(n);
            self.off += step as usize;
            n -= step;
        }
        true
    }

    /// Appends `data`, allocating and linking chunks as needed (protocol step 4); `false`
    /// when the heap is full.
    fn write(&mut self, data: &[u8]) -> bool {
        let mut done = 0;
        while done < data.len() {
            if self.off == CHUNK_SIZE {
                let Some(next) = self.heap.alloc() else {
                    return false;
                };
                // Linked before it is written: a death from here on leaves it reachable.
                self.heap.next(self.chunk).store(next, SeqCst);
                self.chunk = next;
                self.off = 0;
            }
            let n = (CHUNK_SIZE - self.off).min(data.len() - done);
            // SAFETY: the chunk is the chain's last, linked under the caller's lock (or its
            // tail chunk), so nobody else reads or writes it; `off + n <= CHUNK_SIZE`.
            unsafe {
                let dst = self.heap.chunk(self.chunk).add(self.off);
                std::ptr::copy_nonoverlapping(data[done..].as_ptr(), dst, n);
            }
            self.off += n;
            done += n;
        }
        true
    }
}

/// Holds a queue's mutex; unlocks on drop.
#[cfg(not(loom))]
struct Locked<'a>(&'a QueueBody);

#[cfg(not(loom))]
impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = self.0.mutex.unlock();
    }
}

#[cfg(not(loom))]
impl QueueBody {
    /// Initialises a queue in place, with its first (empty) chunk.
    ///
    /// # Safety
    /// `this` must be valid for writes and unused by any thread (as for
    /// [`RawMutex::init`](super::mutex::RawMutex::init)).
    pub unsafe fn init(
        this: *mut QueueBody,
        heap: &Heap,
        maxsize: u64,
        maxbytes: u64,
    ) -> std::io::Result<()> {
        let first = heap
            .alloc()
            .ok_or_else(|| std::io::Error::other("the shared heap is full"))?;
        // SAFETY: the caller's contract: `this` is ours alone; the words are plain atomics.
        unsafe {
            if let Err(e) = super::mutex::RawMutex::init(&raw mut (*this).mutex) {
                heap.free(first);
                return Err(e);
            }
            (*this).head.store(pos(first, 0), SeqCst);
            (*this).tail.store(pos(first, 0), SeqCst);
            (*this).maxsize.store(maxsize, SeqCst);
            (*this).maxbytes.store(maxbytes, SeqCst);
        }
        Ok(())
    }

    fn lock(&self, heap: &Heap, wait: &mut Wait<'_>) -> Result<Locked<'_>, AcquireError> {
        let got = self.mutex.lock(wait)?;
        let guard = Locked(self);
        if got == Acquired::OwnerDied {
            self.recover(heap);
        }
        Ok(guard)
    }

    fn lock_uninterruptible(&self, heap: &Heap) -> Locked<'_> {
        let got = self.mutex.lock_uninterruptible();
        let guard = Locked(self);
        if got == Acquired::OwnerDied {
            self.recover(heap);
        }
        guard
    }

    /// "When a process dies": clean up after a holder that died (lock held).
    fn recover(&self, heap: &Heap) {
        let tail = self.tail.load(SeqCst);
        if self.put_pending.swap(0, SeqCst) == 1 {
            let published = tail != self.saved_tail.load(SeqCst);
            self.unfinished.store(
                self.saved_unfinished.load(SeqCst) + published as u64,
                SeqCst,
            );
        }
        let (tail_chunk, _) = split(tail);
        free_chain(heap, heap.next(tail_chunk).swap(0, SeqCst));
        let mut c = Cursor::at(heap, self.head.load(SeqCst));
        let (mut items, mut bytes) = (0u64, 0u64);
        let mut passed = Vec::new();
        while c.pos() != tail {
            let mut len = [0u8; 8];
            if !c.read(&mut len, &mut passed) {
                break;
            }
            let len = u64::from_le_bytes(len);
            if !c.skip(len, &mut passed) {
                break;
            }
            items += 1;
            bytes += 8 + len;
        }
        self.items.store(items, SeqCst);
        self.bytes.store(bytes, SeqCst);
        self.recoveries.fetch_add(1, SeqCst);
        for word in [&self.not_empty, &self.not_full, &self.all_done] {
            word.fetch_add(1, SeqCst);
            super::futex::ShmFutex.wake(word, u32::MAX);
        }
    }

    /// Sleeps on `word` (module doc); returns with the lock held again.
    fn sleep<'a>(
        &'a self,
        heap: &Heap,
        guard: Locked<'a>,
        word: &AtomicU32,
        waiters: &AtomicU32,
        wait: &mut Wait<'_>,
    ) -> Result<Locked<'a>, AcquireError> {
        waiters.fetch_add(1, SeqCst);
        let seen = word.load(SeqCst);
        drop(guard);
        let slept = super::futex::ShmFutex.wait(word, seen, wait);
        waiters.fetch_sub(1, SeqCst);
        slept.map_err(wait_error)?;
        self.lock(heap, wait)
    }

    fn notify(word: &AtomicU32, waiters: &AtomicU32) {
        if waiters.load(SeqCst) > 0 {
            word.fetch_add(1, SeqCst);
            super::futex::ShmFutex.wake(word, u32::MAX);
        }
    }

    fn full(&self, need: u64) -> bool {
        let maxsize = self.maxsize.load(SeqCst);
        let bytes = self.bytes.load(SeqCst);
        (maxsize > 0 && self.items.load(SeqCst) >= maxsize)
            || (bytes > 0 && bytes + need > self.maxbytes.load(SeqCst))
    }

    /// Frees everything after the tail chunk: the frame being written (step 4's failure).
    fn roll_back(&self, heap: &Heap) {
        let (tail_chunk, _) = split(self.tail.load(SeqCst));
        free_chain(heap, heap.next(tail_chunk).swap(0, SeqCst));
        self.put_pending.store(0, SeqCst);
    }

    /// `put` of the protocol; `stop_after` (for [`ByteQueue::abandon_put`]) stops after that
    /// many bytes of the frame and returns with the lock still held.
    fn put(
        &self,
        heap: &Heap,
        item: &[u8],
        block: bool,
        wait: &mut Wait<'_>,
        stop_after: Option<usize>,
    ) -> Result<(), PutError> {
        let need = 8 + item.len() as u64;
        let mut guard = self.lock(heap, wait).map_err(put_error)?;
        loop {
            while self.full(need) {
                if !block {
                    return Err(PutError::Full);
                }
                guard = self
                    .sleep(heap, guard, &self.not_full, &self.put_waiters, wait)
                    .map_err(put_error)?;
            }
            let tail = self.tail.load(SeqCst);
            self.saved_tail.store(tail, SeqCst);
            self.saved_unfinished
                .store(self.unfinished.load(SeqCst), SeqCst);
            self.put_pending.store(1, SeqCst);
            let mut c = Cursor::at(heap, tail);
            let len = (item.len() as u64).to_le_bytes();
            if let Some(n) = stop_after {
                let frame: Vec<u8> = len.iter().chain(item).copied().take(n).collect();
                c.write(&frame);
                std::mem::forget(guard);
                return Ok(());
            }
            if c.write(&len) && c.write(item) {
                // Step 5: the one store that publishes the item.
                self.tail.store(c.pos(), SeqCst);
                self.items.fetch_add(1, SeqCst);
                self.bytes.fetch_add(need, SeqCst);
                self.unfinished.fetch_add(1, SeqCst);
                self.put_pending.store(0, SeqCst);
                Self::notify(&self.not_empty, &self.get_waiters);
                return Ok(());
            }
            self.roll_back(heap);
            if self.items.load(SeqCst) == 0 {
                return Err(PutError::TooLarge);
            }
            if !block {
                return Err(PutError::Full);
            }
            // The heap is full: wait for a consumer to free chunks, then try again.
            guard = self
                .sleep(heap, guard, &self.not_full, &self.put_waiters, wait)
                .map_err(put_error)?;
        }
    }

    fn get(&self, heap: &Heap, block: bool, wait: &mut Wait<'_>) -> Result<Vec<u8>, GetError> {
        let mut guard = self.lock(heap, wait).map_err(get_error)?;
        while self.items.load(SeqCst) == 0 {
            if !block {
                return Err(GetError::Empty);
            }
            guard = self
                .sleep(heap, guard, &self.not_empty, &self.get_waiters, wait)
                .map_err(get_error)?;
        }
        let mut c = Cursor::at(heap, self.head.load(SeqCst));
        let mut passed = Vec::new();
        let mut len = [0u8; 8];
        assert!(c.read(&mut len, &mut passed), "queue chain broken");
        let len = u64::from_le_bytes(len);
        assert!(len + 8 <= self.bytes.load(SeqCst), "queue frame corrupt");
        let mut item = vec![0u8; len as usize];
        assert!(c.read(&mut item, &mut passed), "queue chain broken");
        self.head.store(c.pos(), SeqCst);
        self.items.fetch_sub(1, SeqCst);
        self.bytes.fetch_sub(8 + len, SeqCst);
        for chunk in passed {
            heap.free(chunk);
        }
        Self::notify(&self.not_full, &self.put_waiters);
        drop(guard);
        Ok(item)
    }

    fn task_done(&self, heap: &Heap) -> Result<(), TaskDoneError> {
        let _guard = self.lock_uninterruptible(heap);
        let left = self.unfinished.load(SeqCst);
        if left == 0 {
            return Err(TaskDoneError::TooMany);
        }
        self.unfinished.store(left - 1, SeqCst);
        if left == 1 {
            Self::notify(&self.all_done, &self.join_waiters);
        }
        Ok(())
    }

    fn join(&self, heap: &Heap, wait: &mut Wait<'_>) -> Result<(), AcquireError> {
        let mut guard = self.lock(heap, wait)?;
        while self.unfinished.load(SeqCst) > 0 {
            guard = self.sleep(heap, guard, &self.all_done, &self.join_waiters, wait)?;
        }
        drop(guard);
        Ok(())
    }

    /// Gives every chunk of the chain back to the heap (the arena calls this when the slot
    /// is freed: no process uses the queue any more).
    pub fn free_chunks(&self, heap: &Heap) {
        let (head_chunk, _) = split(self.head.load(SeqCst));
        free_chain(heap, head_chunk);
    }
}

/// Frees `first` and every chunk linked after it.
#[cfg(not(loom))]
fn free_chain(heap: &Heap, mut chunk: u32) {
    while chunk != 0 {
        let next = heap.next(chunk).load(SeqCst);
        heap.free(chunk);
        chunk = next;
    }
}

// SAFETY: `ShmQueue::new` initialises every Queue slot as a `QueueBody` (atomics, a
// process-shared mutex and chunk indices, within a slot body).
#[cfg(not(loom))]
unsafe impl super::arena::SlotBody for QueueBody {
    const KIND: super::arena::Kind = super::arena::Kind::new(7);
    // `QueueBody` is `#[repr(C)]` with its robust mutex first.
    const BODY_STARTS_WITH_MUTEX: bool = true;

    /// The items still queued live in heap chunks: they go back with the slot.
    fn retired(&self, heap: Option<&Heap>) {
        if let Some(heap) = heap {
            self.free_chunks(heap);
        }
    }
}

/// The shared-memory queue: a [`QueueBody`] in an arena slot, items in the arena's heap.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct ShmQueue {
    slot: super::arena::TypedSlot<QueueBody>,
}

#[cfg(not(loom))]
impl ShmQueue {
    /// Allocates an empty queue in `arena` (`maxsize` 0: no item limit; `maxbytes`: the byte
    /// capacity, see "Full" in the module doc).
    pub fn new(
        arena: &std::sync::Arc<super::arena::Arena>,
        maxsize: usize,
        maxbytes: usize,
    ) -> Result<ShmQueue, super::error::AttachError> {
        let heap = arena.heap().ok_or_else(no_heap)?;
        let slot = super::arena::TypedSlot::alloc(arena, |body| {
            // SAFETY: `alloc` hands us the slot's unshared, zeroed, 64-aligned body.
            unsafe { QueueBody::init(body, heap, maxsize as u64, maxbytes as u64) }
        })?;
        Ok(ShmQueue { slot })
    }

    /// Attaches to the queue `handle` names.
    pub fn attach(
        arena: &std::sync::Arc<super::arena::Arena>,
        handle: super::arena::Handle,
    ) -> Result<ShmQueue, super::error::AttachError> {
        arena.heap().ok_or_else(no_heap)?;
        Ok(ShmQueue {
            slot: super::arena::TypedSlot::attach(arena, handle)?,
        })
    }

    /// The handle to send to another process.
    pub fn handle(&self) -> super::arena::Handle {
        self.slot.handle()
    }

    fn body(&self) -> &QueueBody {
        self.slot.body()
    }

    fn heap(&self) -> &Heap {
        // `new` and `attach` refuse an arena without a heap.
        self.slot.arena().heap().expect("queue arena has a heap")
    }

    /// The TID of the thread holding the queue's lock (0: free). For tests that must act
    /// while a `put` is in progress.
    pub fn lock_owner(&self) -> u32 {
        self.body().mutex.owner()
    }

    /// How many times a dead holder's work was cleaned up ("When a process dies").
    pub fn recoveries(&self) -> u32 {
        self.body().recoveries.load(SeqCst)
    }

    /// `task_done`s still owed (`queue.Queue.unfinished_tasks`).
    pub fn unfinished(&self) -> u64 {
        self.body().unfinished.load(SeqCst)
    }
}

#[cfg(not(loom))]
fn no_heap() -> super::error::AttachError {
    super::error::AttachError::Io(std::io::Error::other(
        "this process has no shared heap (the arena was opened without it)",
    ))
}

#[cfg(not(loom))]
impl ByteQueue for ShmQueue {
    fn put(&self, item: &[u8], block: bool, wait: &mut Wait<'_>) -> Result<(), PutError> {
        self.body().put(self.heap(), item, block, wait, None)
    }
    fn get(&self, block: bool, wait: &mut Wait<'_>) -> Result<Vec<u8>, GetError> {
        self.body().get(self.heap(), block, wait)
    }
    fn task_done(&self) -> Result<(), TaskDoneError> {
        self.body().task_done(self.heap())
    }
    fn join(&self, wait: &mut Wait<'_>) -> Result<(), AcquireError> {
        self.body().join(self.heap(), wait)
    }
    fn len(&self) -> usize {
        self.body().items.load(SeqCst) as usize
    }
    fn maxsize(&self) -> usize {
        self.body().maxsize.load(SeqCst) as usize
    }
    fn abandon_put(&self, item: &[u8], written: usize) {
        let _ = self
            .body()
            .put(self.heap(), item, true, &mut Wait::forever(), Some(written));
    }
}
