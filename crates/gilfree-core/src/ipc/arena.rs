//! The arena: one memfd [`Segment`] of fixed-size slots, one process-shared primitive per
//! slot, shared by the parent and every worker process.
//!
//! The parent creates it ([`Arena::create`]); each worker inherits its fd at spawn (the
//! engine clears `FD_CLOEXEC` on it just around the fork, see
//! [`WorkerCommand::inherit_fds`](crate::pool::WorkerCommand::inherit_fds)) and maps it with
//! [`Arena::open_inherited`], the fd number coming in [`ARENA_FD_ENV`]. Beside it lives the
//! chunk [`Heap`] (its own lazily touched memfd, inherited the same way: the variable's value is
//! `"<arena fd>,<heap fd>"`) that holds the items of [`super::queue`]s. A primitive travels
//! between processes as a [`Handle`]: its slot index and the slot's generation, so that a
//! handle to a slot that was freed (and maybe reused) since is refused as stale.
//!
//! # Layout
//! [`ARENA_SIZE`] bytes, [`SLOT_SIZE`]-byte slots, 64-byte aligned. Slot 0 is the arena
//! header: `magic_version: u64` at 0, `free_head: u64` at 8 (the free list, below). Slots
//! `1..SLOT_COUNT` are primitives:
//!
//! | offset | field        | type              | meaning                                     |
//! |--------|--------------|-------------------|---------------------------------------------|
//! | 0      | `next_free`  | `u32`             | free-list link: next free index, 0 = end     |
//! | 4      | `generation` | `u32`             | bumped each time the slot is freed           |
//! | 8      | `kind`       | `u32`             | [`Kind`] while live, 0 while free            |
//! | 12     | `refs`       | `u32`             | attached handles, all processes together     |
//! | 16     | `meta`       | `pthread_mutex_t` | robust mutex guarding `kind`, `refs`, table |
//! | 64     | body         | 256 bytes         | the primitive's own words ([`BODY_SIZE`])    |
//! | 320    | table        | `[Entry; 58]`     | per process: `pid`, `refs`, `held`           |
//!
//! # Who writes what
//! - `next_free`: the process pushing the slot on the free list (it owns the slot then).
//! - `generation`, `kind`, `refs`, the table: under `meta`, by any process attaching,
//!   detaching or reaping; `kind` is set last on allocation and cleared first on free.
//! - A table entry's `held` (semaphore permits taken minus released, wrapping `i32`): by its
//!   own process, with atomic adds; by the reaper once that process is dead.
//! - The body: by the primitive's protocol (its module's doc).
//!
//! # Free list (lock-free, any process)
//! `free_head` is a Treiber stack head: the index of the first free slot in the low 32 bits
//! (0 = empty) and an ABA tag in the high 32 bits, bumped by every successful CAS, so a pop
//! that read a stale `next_free` (the slot was popped and pushed again meanwhile) fails its CAS.
//! 1. Pop: load the head `(tag, i)`; `i == 0` → arena full; read `slot[i].next_free`; CAS the
//!    head to `(tag + 1, next)`; retry on failure.
//! 2. Push `i`: load the head `(tag, h)`; store `slot[i].next_free = h`; CAS the head to
//!    `(tag + 1, i)`; retry on failure.
//!
//! The loom model `loom_arena_free_list` checks it ([`super::free_list`]).
//!
//! # Lifecycle of a slot (refcounts)
//! 1. Allocate: pop a slot, initialise its body, then under `meta`: `kind = K`, `refs = 1`, a
//!    table entry `(own pid, refs 1)`.
//! 2. Attach (unpickling a handle in any process): under `meta`, check `generation` and `kind`
//!    against the handle (else [`AttachError::Stale`]), then `refs += 1` and this pid's entry
//!    `refs += 1` (a free entry is claimed the first time; none left → `TableFull`).
//! 3. Detach (a [`Slot`] dropped): under `meta`, both counts `-= 1`; an entry at zero is
//!    released (its pid set to 0).
//! 4. When `refs` reaches 0 (3 or 5): a queue's heap chunks are freed, `kind = 0`,
//!    `generation += 1`, then push the slot.
//! 5. Reap `pid` (the engine calls [`Arena::reap`] for a worker process it knows is dead and
//!    has not yet reaped, so its pid cannot have been reused): for every live slot with an
//!    entry for `pid`, under `meta`: semaphores get that process's positive `held` back (never
//!    above their initial value) and wake their waiters; barriers are broken (waiters get
//!    `Broken`); then `refs -= entry.refs`, the entry is released, and step 4 applies.
//!
//! # When a process dies
//! - Holding a `Lock`/`RLock`: the kernel marks the robust mutex (see [`super::mutex`]).
//! - Holding semaphore permits, or attached to a barrier: step 5, when the engine reaps it.
//!   A process that is not an engine worker (the parent itself, or a process the user forked)
//!   is never reaped: its references leak until the arena goes away, which is harmless.
//! - Inside a `meta` critical section (a few instructions): the next locker gets
//!   `EOWNERDEAD`, makes the mutex consistent and goes on; a count may then be off by one,
//!   which leaks a slot at worst.
//!
//! The arena lives as long as any process maps it: memfd memory is freed by the kernel when
//! the last mapping and fd are gone, and nothing is ever created in `/dev/shm`.

use std::io;
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::ipc::error::AttachError;
use crate::ipc::heap::Heap;
use crate::ipc::mutex::RawMutex;
use crate::shm::segment::Segment;
use crate::sync::{AtomicU32, AtomicU64, Ordering, UnsafeCell};

use super::free_list;

/// Environment variable that carries the arena's inherited fd number to a worker.
pub const ARENA_FD_ENV: &str = "GILFREE_ARENA_FD";
/// Size of the arena segment in bytes.
pub const ARENA_SIZE: usize = 2 << 20;
/// Size of one slot in bytes.
pub const SLOT_SIZE: usize = 1024;
/// Number of slots, the header slot 0 included (so `SLOT_COUNT - 1` primitives at most).
pub const SLOT_COUNT: u32 = (ARENA_SIZE / SLOT_SIZE) as u32;
/// Bytes of a slot available to the primitive's own words.
pub const BODY_SIZE: usize = 256;
/// How many processes may hold one primitive at once.
pub const TABLE_LEN: usize = (SLOT_SIZE - 64 - BODY_SIZE) / 12;

const MAGIC_VERSION: u64 = (u32::from_be_bytes(*b"GFAR") as u64) << 32 | 1;

/// What a slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// A `Lock` or `RLock` ([`super::lock`]).
    Lock = 1,
    /// An `Event` ([`super::event`]).
    Event = 2,
    /// A `Semaphore` or `BoundedSemaphore` ([`super::semaphore`]).
    Semaphore = 3,
    /// A `Condition`'s wait word ([`super::condition`]).
    Condition = 4,
    /// A `Barrier` ([`super::barrier`]).
    Barrier = 5,
    /// A plain 8-byte cell (a `Value`'s storage).
    Cell = 6,
    /// A `Queue` ([`super::queue`]): its chunks in the [`Heap`] are freed with the slot.
    Queue = 7,
}

#[repr(C)]
struct Entry {
    pid: AtomicU32,
    refs: AtomicU32,
    held: AtomicU32,
}

#[repr(C, align(64))]
struct SlotHeader {
    next_free: AtomicU32,
    generation: AtomicU32,
    kind: AtomicU32,
    refs: AtomicU32,
    meta: RawMutex,
}

#[repr(C)]
struct SlotLayout {
    header: SlotHeader,
    body: UnsafeCell<[u8; BODY_SIZE]>,
    table: [Entry; TABLE_LEN],
}

#[repr(C)]
struct ArenaHeader {
    magic_version: AtomicU64,
    free_head: AtomicU64,
}

const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<SlotHeader>() == 64);
    assert!(offset_of!(SlotLayout, body) == 64);
    assert!(offset_of!(SlotLayout, table) == 64 + BODY_SIZE);
    assert!(size_of::<SlotLayout>() <= SLOT_SIZE);
    assert!(align_of::<SlotLayout>() <= 64);
    assert!(size_of::<ArenaHeader>() <= SLOT_SIZE);
};

/// A primitive's handle: `generation << 32 | index`. Plain data, safe to send anywhere.
pub type Handle = u64;

/// The shared-primitive arena of this process tree (see the module doc).
#[derive(Debug)]
pub struct Arena {
    seg: Segment,
    pid: u32,
    heap: Option<Heap>,
}

impl Arena {
    /// Creates a fresh arena: every slot free, every bookkeeping mutex initialised.
    pub fn create() -> io::Result<Arc<Arena>> {
        let arena = Arena {
            seg: Segment::create(ARENA_SIZE)?,
            pid: std::process::id(),
            heap: Some(Heap::create()?),
        };
        for i in 1..SLOT_COUNT {
            // SAFETY: the segment is fresh and not shared yet: nobody else uses this mutex.
            unsafe { RawMutex::init(&raw mut (*arena.slot_ptr(i)).header.meta)? };
        }
        let head = arena.header();
        // Push every slot, highest first, so low indices are handed out first.
        for i in (1..SLOT_COUNT).rev() {
            free_list::push(&head.free_head, i, |j| &arena.slot(j).header.next_free);
        }
        head.magic_version.store(MAGIC_VERSION, Ordering::Release);
        Ok(Arc::new(arena))
    }

    /// Maps an arena another process created, from its memfd (without its heap: queues are
    /// unavailable, see [`Self::open_with_heap`]).
    pub fn open(fd: OwnedFd) -> io::Result<Arc<Arena>> {
        Self::open_parts(fd, None)
    }

    /// Maps an arena and its chunk heap, from their memfds.
    pub fn open_with_heap(fd: OwnedFd, heap: OwnedFd) -> io::Result<Arc<Arena>> {
        Self::open_parts(fd, Some(heap))
    }

    fn open_parts(fd: OwnedFd, heap: Option<OwnedFd>) -> io::Result<Arc<Arena>> {
        let seg = Segment::open(fd)?;
        let arena = Arena {
            seg,
            pid: std::process::id(),
            heap: heap.map(Heap::open).transpose()?,
        };
        if arena.seg.len() != ARENA_SIZE
            || arena.header().magic_version.load(Ordering::Acquire) != MAGIC_VERSION
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a gilfree arena (or another version)",
            ));
        }
        Ok(Arc::new(arena))
    }

    /// Maps the arena whose fd this process inherited (the number comes from
    /// [`ARENA_FD_ENV`]), and makes that fd close-on-exec again.
    pub fn open_inherited(fd: RawFd) -> io::Result<Arc<Arena>> {
        Self::open(Self::claim_inherited(fd)?)
    }

    /// Takes ownership of an inherited fd number (checked to be open), close-on-exec again.
    fn claim_inherited(fd: RawFd) -> io::Result<OwnedFd> {
        // Refuse numbers that name no open file before claiming ownership.
        if fd < 0
            || rustix::io::fcntl_getfd(
                // SAFETY: only used for this one `fcntl` call while the number is checked.
                unsafe { BorrowedFd::borrow_raw(fd) },
            )
            .is_err()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the inherited arena fd is not open",
            ));
        }
        // SAFETY: the parent put this fd number in our environment for us alone: it was
        // inherited across exec, is open (checked above), and nothing else in this process
        // claims it (the caller takes it from the environment once).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
        Ok(owned)
    }

    /// The arena this process inherited, if [`ARENA_FD_ENV`] names one (`None` when unset).
    /// Call once per process: the fd is owned by the arena afterwards.
    pub fn from_env() -> io::Result<Option<Arc<Arena>>> {
        let Some(value) = std::env::var_os(ARENA_FD_ENV) else {
            return Ok(None);
        };
        let bad = || io::Error::new(io::ErrorKind::InvalidInput, "bad GILFREE_ARENA_FD");
        let value = value.to_str().ok_or_else(bad)?;
        let mut parts = value.split(',');
        let fd = parts
            .next()
            .and_then(|v| v.parse::<RawFd>().ok())
            .ok_or_else(bad)?;
        let heap = match parts.next() {
            Some(h) => Some(h.parse::<RawFd>().map_err(|_| bad())?),
            None => None,
        };
        let fd = Self::claim_inherited(fd)?;
        match heap {
            Some(h) => Self::open_with_heap(fd, Self::claim_inherited(h)?),
            None => Self::open(fd),
        }
        .map(Some)
    }

    /// The fds a worker must inherit to use this arena (the arena's, then the heap's).
    pub fn inherit_fds(&self) -> Vec<RawFd> {
        use std::os::fd::AsRawFd;
        let mut fds = vec![self.seg.fd().as_raw_fd()];
        fds.extend(self.heap.as_ref().map(|h| h.fd().as_raw_fd()));
        fds
    }

    /// The value of [`ARENA_FD_ENV`] that tells a worker the numbers of [`Self::inherit_fds`].
    pub fn env_value(&self) -> String {
        let fds: Vec<String> = self.inherit_fds().iter().map(|f| f.to_string()).collect();
        fds.join(",")
    }

    /// The chunk heap, if this process mapped one.
    pub fn heap(&self) -> Option<&Heap> {
        self.heap.as_ref()
    }

    /// The arena's memfd (to hand to a worker process).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.seg.fd()
    }

    fn header(&self) -> &ArenaHeader {
        // SAFETY: slot 0 of the live mapping holds the header, all atomics (any bytes are a
        // valid value), aligned to the page.
        unsafe { &*self.seg.as_ptr().cast::<ArenaHeader>() }
    }

    fn slot_ptr(&self, index: u32) -> *mut SlotLayout {
        assert!(index > 0 && index < SLOT_COUNT, "slot index out of range");
        // SAFETY: `index < SLOT_COUNT`, so the slot is inside the mapping.
        unsafe { self.seg.as_ptr().add(index as usize * SLOT_SIZE).cast() }
    }

    fn slot(&self, index: u32) -> &SlotLayout {
        // SAFETY: the slot is inside the live mapping, 64-aligned, and made of atomics and a
        // process-shared mutex (initialised in `create`), all of which are shared by design.
        unsafe { &*self.slot_ptr(index) }
    }

    /// Allocates a slot of `kind`, initialising its body with `init` (which gets a pointer to
    /// the zeroed, 64-aligned [`BODY_SIZE`] bytes, not yet visible to anybody else), and
    /// attaches it for this process.
    pub fn alloc(
        self: &Arc<Self>,
        kind: Kind,
        init: impl FnOnce(*mut u8) -> io::Result<()>,
    ) -> Result<Slot, AttachError> {
        let index = free_list::pop(&self.header().free_head, |j| &self.slot(j).header.next_free)
            .ok_or(AttachError::Full)?;
        // SAFETY: we popped the slot, so no other process uses it (it is free and its old
        // handles are stale): we may write its body.
        let body = unsafe { (*self.slot_ptr(index)).body.get().cast::<u8>() };
        // SAFETY: as above; `body` is BODY_SIZE writable bytes.
        unsafe { std::ptr::write_bytes(body, 0, BODY_SIZE) };
        if let Err(e) = init(body) {
            self.push_free(index);
            return Err(e.into());
        }
        let slot = self.slot(index);
        let _meta = MetaGuard::lock(&slot.header.meta);
        let entry = claim_entry(slot, self.pid).ok_or(AttachError::TableFull)?;
        slot.table[entry].refs.store(1, Ordering::Relaxed);
        slot.header.refs.store(1, Ordering::Relaxed);
        slot.header.kind.store(kind as u32, Ordering::Release);
        Ok(Slot {
            arena: Arc::clone(self),
            index,
            generation: slot.header.generation.load(Ordering::Relaxed),
            entry,
        })
    }

    /// Attaches this process to the primitive `handle` names, which must be of `kind`.
    pub fn attach(self: &Arc<Self>, handle: Handle, kind: Kind) -> Result<Slot, AttachError> {
        let (index, generation) = (handle as u32, (handle >> 32) as u32);
        if index == 0 || index >= SLOT_COUNT {
            return Err(AttachError::Stale);
        }
        let slot = self.slot(index);
        let _meta = MetaGuard::lock(&slot.header.meta);
        if slot.header.generation.load(Ordering::Relaxed) != generation
            || slot.header.kind.load(Ordering::Relaxed) != kind as u32
        {
            return Err(AttachError::Stale);
        }
        let entry = claim_entry(slot, self.pid).ok_or(AttachError::TableFull)?;
        slot.table[entry].refs.fetch_add(1, Ordering::Relaxed);
        slot.header.refs.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            arena: Arc::clone(self),
            index,
            generation,
            entry,
        })
    }

    /// Step 5 of the module doc: gives back what the dead process `pid` held. Call only once
    /// `pid` is dead and before it is reaped (so the pid cannot name another process yet).
    pub fn reap(&self, pid: u32) {
        if pid == 0 {
            return;
        }
        for index in 1..SLOT_COUNT {
            let slot = self.slot(index);
            if slot.header.kind.load(Ordering::Acquire) == 0 {
                continue;
            }
            let meta = MetaGuard::lock(&slot.header.meta);
            let kind = slot.header.kind.load(Ordering::Relaxed);
            let Some(e) = slot
                .table
                .iter()
                .position(|e| e.pid.load(Ordering::Relaxed) == pid)
            else {
                continue;
            };
            let entry = &slot.table[e];
            let body = slot.body.get().cast::<u8>().cast_const();
            if kind == Kind::Semaphore as u32 {
                let held = entry.held.load(Ordering::Acquire) as i32;
                // SAFETY: a live semaphore slot's body holds an initialised `SemWord`.
                let word = unsafe { &*body.cast::<super::semaphore::SemWord>() };
                word.give_back(held.max(0) as u32, &super::futex::ShmFutex);
            } else if kind == Kind::Barrier as u32 {
                // SAFETY: a live barrier slot's body holds an initialised `BarrierBody`.
                let barrier = unsafe { &*body.cast::<super::barrier::BarrierBody>() };
                barrier.break_barrier();
            }
            let refs = entry.refs.load(Ordering::Relaxed);
            entry.refs.store(0, Ordering::Relaxed);
            entry.held.store(0, Ordering::Relaxed);
            entry.pid.store(0, Ordering::Relaxed);
            let left = slot
                .header
                .refs
                .load(Ordering::Relaxed)
                .saturating_sub(refs);
            slot.header.refs.store(left, Ordering::Relaxed);
            if left == 0 {
                self.retire(index, meta);
            }
        }
    }

    /// How many slots are live (allocated and not yet freed). For tests and diagnostics.
    pub fn live_slots(&self) -> usize {
        (1..SLOT_COUNT)
            .filter(|&i| self.slot(i).header.kind.load(Ordering::Acquire) != 0)
            .count()
    }

    /// Step 4: called with `meta` held and `refs == 0`.
    fn retire(&self, index: u32, meta: MetaGuard<'_>) {
        let slot = self.slot(index);
        let header = &slot.header;
        if header.kind.load(Ordering::Relaxed) == Kind::Queue as u32 {
            if let Some(heap) = &self.heap {
                // SAFETY: a live queue slot's body holds an initialised `QueueBody`; with
                // `refs == 0` no process can use it any more.
                let body = unsafe { &*slot.body.get().cast::<super::queue::QueueBody>() };
                body.free_chunks(heap);
            }
        }
        header.kind.store(0, Ordering::Release);
        header.generation.fetch_add(1, Ordering::Relaxed);
        drop(meta);
        self.push_free(index);
    }

    fn push_free(&self, index: u32) {
        free_list::push(&self.header().free_head, index, |j| {
            &self.slot(j).header.next_free
        });
    }

    fn detach(&self, index: u32, entry: usize) {
        let slot = self.slot(index);
        let meta = MetaGuard::lock(&slot.header.meta);
        let e = &slot.table[entry];
        if e.refs.fetch_sub(1, Ordering::Relaxed) == 1 {
            e.held.store(0, Ordering::Relaxed);
            e.pid.store(0, Ordering::Relaxed);
        }
        if slot.header.refs.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.retire(index, meta);
        }
    }
}

/// The table entry of `pid` in `slot`, claiming a free one if it has none. Under `meta`.
fn claim_entry(slot: &SlotLayout, pid: u32) -> Option<usize> {
    let table = &slot.table;
    if let Some(i) = table
        .iter()
        .position(|e| e.pid.load(Ordering::Relaxed) == pid)
    {
        return Some(i);
    }
    let i = table
        .iter()
        .position(|e| e.pid.load(Ordering::Relaxed) == 0)?;
    table[i].refs.store(0, Ordering::Relaxed);
    table[i].held.store(0, Ordering::Relaxed);
    table[i].pid.store(pid, Ordering::Relaxed);
    Some(i)
}

/// Holds a slot's `meta` mutex.
struct MetaGuard<'a>(&'a RawMutex);

impl<'a> MetaGuard<'a> {
    fn lock(m: &'a RawMutex) -> MetaGuard<'a> {
        // OwnerDied: a process died inside a few-instruction critical section; the counts are
        // at worst off by one (module doc), so going on is the right recovery.
        let _ = m.lock_uninterruptible();
        MetaGuard(m)
    }
}

impl Drop for MetaGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// One attachment of this process to an arena slot; detaches on drop.
#[derive(Debug)]
pub struct Slot {
    arena: Arc<Arena>,
    index: u32,
    generation: u32,
    entry: usize,
}

/// The type that every slot of one [`Kind`] holds in its body.
///
/// # Safety
/// Implement it only for the one body type of `KIND`: every slot of that kind must be
/// initialised as `Self` (through [`TypedSlot::new`] or [`TypedSlot::alloc`]), and `Self` must
/// fit in [`BODY_SIZE`] bytes, need at most 64-byte alignment, and be safe to share between
/// processes (atomics and process-shared mutexes only).
pub unsafe trait SlotBody {
    /// The kind of slot whose body is a `Self`.
    const KIND: Kind;
}

/// A slot whose body is a `T`: the allocate / attach / body plumbing every shared-memory
/// primitive needs, written once. Derefs to the untyped [`Slot`] (handle, permits, arena).
pub struct TypedSlot<T: SlotBody> {
    slot: Slot,
    _body: PhantomData<fn() -> T>,
}

impl<T: SlotBody> TypedSlot<T> {
    /// Allocates a slot of `T::KIND`; `init` must leave a valid `T` at the pointer it gets
    /// (the slot's zeroed, 64-aligned body, which nobody else can see yet).
    pub fn alloc(
        arena: &Arc<Arena>,
        init: impl FnOnce(*mut T) -> io::Result<()>,
    ) -> Result<Self, AttachError> {
        let slot = arena.alloc(T::KIND, |body| init(body.cast()))?;
        Ok(TypedSlot {
            slot,
            _body: PhantomData,
        })
    }

    /// Allocates a slot of `T::KIND` holding `value`.
    pub fn new(arena: &Arc<Arena>, value: T) -> Result<Self, AttachError> {
        Self::alloc(arena, |body| {
            // SAFETY: `alloc` hands us the slot's unshared body, which `SlotBody` promises is
            // large and aligned enough for a `T`.
            unsafe { body.write(value) };
            Ok(())
        })
    }

    /// Attaches this process to the slot `handle` names, which must be of `T::KIND`.
    pub fn attach(arena: &Arc<Arena>, handle: Handle) -> Result<Self, AttachError> {
        Ok(TypedSlot {
            slot: arena.attach(handle, T::KIND)?,
            _body: PhantomData,
        })
    }

    /// The `T` in the slot's body.
    pub fn body(&self) -> &T {
        // SAFETY: the slot is of `T::KIND` (checked by `attach`, set by `alloc`), and every
        // slot of that kind was initialised as a `T` (`SlotBody`'s contract).
        unsafe { self.slot.body() }
    }
}

impl<T: SlotBody> std::fmt::Debug for TypedSlot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.slot.fmt(f)
    }
}

impl<T: SlotBody> Deref for TypedSlot<T> {
    type Target = Slot;

    fn deref(&self) -> &Slot {
        &self.slot
    }
}

impl Slot {
    /// The handle to send to another process, which attaches with [`Arena::attach`].
    pub fn handle(&self) -> Handle {
        (self.generation as u64) << 32 | self.index as u64
    }

    /// The arena this slot lives in.
    pub fn arena(&self) -> &Arc<Arena> {
        &self.arena
    }

    /// The slot's body, as the `T` its kind's `init` wrote there.
    ///
    /// # Safety
    /// `T` must be the type the body was initialised with for this slot's kind, at most
    /// [`BODY_SIZE`] bytes and at most 64-aligned.
    pub(crate) unsafe fn body<T>(&self) -> &T {
        debug_assert!(std::mem::size_of::<T>() <= BODY_SIZE && std::mem::align_of::<T>() <= 64);
        // SAFETY: the slot is live while we are attached (refs > 0), and the caller vouches
        // for `T`; shared access is fine because `T` is made of atomics and shared mutexes.
        unsafe { &*self.arena.slot(self.index).body.get().cast::<T>() }
    }

    /// This process's net count of semaphore permits taken through the slot (wrapping `i32`).
    pub fn held(&self) -> &AtomicU32 {
        &self.arena.slot(self.index).table[self.entry].held
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.arena.detach(self.index, self.entry);
    }
}

impl AsFd for Arena {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.seg.fd()
    }
}
