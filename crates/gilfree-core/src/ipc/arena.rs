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
//! | 4      | `generation` | `u32`             | bumped each time the slot is retired         |
//! | 8      | `kind`       | `u32`             | [`Kind`] live, 0 free, `u32::MAX` retired held |
//! | 12     | `refs`       | `u32`             | attached handles, all processes together     |
//! | 16     | `meta`       | `pthread_mutex_t` | robust mutex guarding everything but `held`  |
//! | 56     | `overflow`   | `u32`             | first overflow chunk of the table, 0 = none  |
//! | 64     | body         | 256 bytes         | the primitive's own words ([`BODY_SIZE`])    |
//! | 320    | table        | `[Entry; 58]`     | per process: `pid`, `refs`, `held`; pid 0 free |
//!
//! The process table has no fixed length: when its [`TABLE_LEN`] inline entries are taken, a
//! chunk of the [`Heap`] is linked in front of the `overflow` chain (`next: u32` at 0, then
//! [`OVERFLOW_LEN`] = 5456 entries from offset 64), so one primitive may be attached by as
//! many processes as the heap has room for (each chunk of 64 KiB adds 5456). An arena mapped
//! without its heap ([`Arena::open`]) cannot grow a table: the 59th process gets
//! [`AttachError::TableFull`].
//!
//! # Who writes what
//! - `next_free`: the process pushing the slot on the free list (it owns the slot then).
//! - `generation`, `kind`, `refs`, `overflow` and the table's `pid`/`refs`: under `meta`, by
//!   any process allocating, attaching, detaching, reaping or reclaiming; `kind` is set last
//!   on allocation and cleared first on retirement, so the unlocked `kind` check in `reap`
//!   only ever skips slots that are not live.
//! - A table entry's `held` (semaphore permits taken minus released, wrapping `i32`): by its
//!   own process, with atomic adds; by the reaper once that process is dead.
//! - The body: by the primitive's protocol (its module's doc); zeroed and initialised by the
//!   allocating process before `kind` makes the slot visible.
//!
//! Entries are keyed by the pid of the process that runs the operation, read at each call:
//! a `fork()` child attaches under its own pid. A [`Slot`] remembers the pid that attached it
//! and detaches only in that process, so the copy a fork child inherits (its parent's
//! reference) is never detached by the child: the child owns nothing its parent held.
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
//! # State machine of `kind`
//! ```text
//!   free (0, on the free list) --pop--> popped (0, private) --alloc--> live (K)
//!   live --last reference gone, body mutex unowned--> free (generation + 1, pushed)
//!   live --last reference gone, body mutex owned--> retired-held (u32::MAX, generation + 1)
//!   retired-held --owner thread gone (lock word TID 0): reclaim_retired--> free (pushed)
//! ```
//!
//! # Lifecycle of a slot (refcounts; the count steps are [`super::refcount`]'s)
//! Invariant: `refs >= Σ table[*].refs` at every step, so a dead process's entry never
//! subtracts more than it added. Each `(Step)` names a point where tests kill a process.
//! 1. Allocate: pop a slot `(AllocPopped)`, zero and initialise its body, then under `meta`:
//!    claim an entry for our pid `(AllocEntry)`, entry `refs = 1`, `refs = 1`
//!    `(AllocCounted)`, and last `kind = K`.
//! 2. Attach (unpickling a handle in any process): under `meta`, check `generation` and `kind`
//!    against the handle (else [`AttachError::Stale`]); claim this pid's entry (its own if it
//!    has one, else a free one, else a new overflow chunk); `refs += 1` `(AttachCounted)`;
//!    then the entry's `refs += 1`.
//! 3. Detach (a [`Slot`] dropped in the process that attached it): under `meta`, the entry's
//!    `refs -= 1`, the entry released at zero (pid 0) `(DetachEntry)`; then `refs -= 1`.
//! 4. Retire, when `refs` reaches 0 (3 or 5), under `meta`: release every entry and give
//!    the overflow chunks back. If the body starts with a robust mutex (its kind's
//!    [`SlotBody::BODY_STARTS_WITH_MUTEX`]: `Lock`, `Barrier`, `Queue`, blob) that a thread
//!    still owns (a `Lock` acquired and then dropped), that mutex is on
//!    the owner thread's robust list, which links through the mutex's own words: the slot is
//!    *retired held* (`kind = u32::MAX`, `generation += 1`, not pushed), because re-initialising
//!    it for a new primitive would corrupt that list. Otherwise: the kind's
//!    [`SlotBody::retired`] hook runs (a queue's heap chunks are freed), `kind = 0`
//!    `(RetireCleared)`, `generation += 1`, unlock `(RetireUnlocked)`, push.
//! 5. Reap `pid` (the engine calls [`Arena::reap`] for a worker process it knows is dead and
//!    has not yet reaped, so its pid cannot have been reused): for every live slot with an
//!    entry for `pid`, under `meta`: the kind's [`SlotBody::owner_died`] hook runs with that
//!    process's `held` (semaphores take its positive `held` back, never above their initial
//!    value, and wake their waiters; barriers break, waiters get `Broken`); then the entry is
//!    read and released `(ReapEntry)`, `refs -= entry.refs`
//!    (a `refs` below it would break the invariant: the slot is leaked, never freed), and
//!    step 4 applies at zero. Finally [`Arena::reclaim_retired`] runs.
//! 6. Reclaim ([`Arena::reclaim_retired`]; [`Arena::alloc`] runs it when the free list is
//!    empty, [`Arena::reap`] after every reap): a retired-held slot whose mutex's lock word
//!    has no owner TID any more is pushed on the free list. Nobody else can reach the slot,
//!    so the only way its owner lets go is by dying, when the kernel walks the dead thread's
//!    robust list, marks the mutex `FUTEX_OWNER_DIED` and clears the TID; after that no
//!    robust list references the mutex, and the next allocation re-initialises it. An owner
//!    that never exits keeps the slot (a leak of one slot, by choice).
//!
//! # When a process dies
//! A process may be SIGKILLed between any two steps above; what it leaves is at worst a
//! leak, never a slot freed while another process uses it (`ipc_arena_lifecycle` kills a
//! child at every step; `loom_arena_counts` models the counts):
//! - Between pop and `kind = K` (`AllocPopped`, `AllocEntry`, `AllocCounted`): the slot is
//!   off the free list with `kind = 0`: leaked.
//! - `AttachCounted`: `refs` counts one attachment no entry will ever give back: leaked.
//! - `DetachEntry`: as above, one count too many: leaked.
//! - `RetireCleared`, `RetireUnlocked`: the slot is neither live nor on the free list: leaked.
//! - `ReapEntry` (the reaper itself dies): the entry is gone, `refs` too high: leaked.
//! - Inside any `meta` critical section, the next locker gets `EOWNERDEAD`, makes the mutex
//!   consistent and goes on from whichever step boundary the dead process reached.
//! - Holding a `Lock`/`RLock`: the kernel marks the robust mutex (see [`super::mutex`]).
//! - Holding semaphore permits, or attached to a barrier: step 5, when the engine reaps it.
//!   A process that is not an engine worker (the parent itself, or a process the user forked)
//!   is never reaped: its references leak until the arena goes away, which is harmless.
//!
//! A fork child's inherited objects borrow the parent's references (the child holds none of
//! its own): they stay valid while the parent keeps them, as with threads; pickling them in
//! the child (or receiving them again) attaches the child under its own pid.
//!
//! The arena lives as long as any process maps it: memfd memory is freed by the kernel when
//! the last mapping and fd are gone, and nothing is ever created in `/dev/shm`.

use std::io;
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::ipc::error::AttachError;
use crate::ipc::heap::{Heap, CHUNK_SIZE};
use crate::ipc::mutex::RawMutex;
use crate::ipc::refcount::{self, Step};
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
/// Process entries inside a slot; more attached processes spill into overflow chunks.
pub const TABLE_LEN: usize = (SLOT_SIZE - 64 - BODY_SIZE) / ENTRY_SIZE;
/// Process entries in one overflow chunk of the [`Heap`] (after its 64-byte header).
pub const OVERFLOW_LEN: usize = (CHUNK_SIZE - 64) / ENTRY_SIZE;
const ENTRY_SIZE: usize = std::mem::size_of::<Entry>();

/// `kind` of a slot retired while a thread still owned its robust mutex: not on the free
/// list until that owner is gone ([`Arena::reclaim_retired`]).
const KIND_RETIRED_HELD: u32 = u32::MAX;

const MAGIC_VERSION: u64 = (u32::from_be_bytes(*b"GFAR") as u64) << 32 | 2;

/// Test hook: the [`Step`] at which this process SIGKILLs itself (0: none).
static CRASH_AT: AtomicU32 = AtomicU32::new(0);

/// Test hook (crash tests only): makes this process SIGKILL itself when it reaches `step` of
/// a slot's lifecycle, so a test can check what a process dying exactly there leaves behind.
#[doc(hidden)]
pub fn crash_at(step: Option<Step>) {
    CRASH_AT.store(step.map_or(0, |s| s as u32), Ordering::Relaxed);
}

/// Dies here if a test asked for it ([`crash_at`]); otherwise a single relaxed load.
fn crash_point(step: Step) -> bool {
    if CRASH_AT.load(Ordering::Relaxed) == step as u32 {
        // SAFETY: `kill` and `getpid` take plain integers and touch no memory of ours.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        // SIGKILL cannot be caught: the process is gone before `kill` returns.
        unreachable!("SIGKILL returned");
    }
    false
}

/// A slot kind's id, as the slot header stores it: never 0 (free) nor `u32::MAX` (retired
/// held). Each primitive picks its own in its [`SlotBody`] impl; the table an arena is made with
/// ([`Arena::create_with`]) refuses two kinds with one id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kind(u32);

impl Kind {
    /// The kind with id `id` (not 0, not `u32::MAX`: checked at compile time in a `const`).
    pub const fn new(id: u32) -> Kind {
        assert!(
            id != 0 && id != KIND_RETIRED_HELD,
            "kind ids 0 and u32::MAX are reserved"
        );
        Kind(id)
    }

    /// The id stored in the slot header.
    pub const fn id(self) -> u32 {
        self.0
    }
}

/// What the arena must do, for one kind of slot, at the two moments only the kind knows about:
/// a process attached to the slot died (step 5), and the slot's last reference went (step 4).
/// The type-erased form of a [`SlotBody`] impl ([`SlotKind::of`]); an arena is made with a
/// table of them and dispatches on the slot header's kind id, so it never names a primitive.
#[derive(Clone, Copy)]
pub struct SlotKind {
    kind: Kind,
    body_mutex: bool,
    name: fn() -> &'static str,
    owner_died: unsafe fn(*const u8, i32),
    retired: for<'h> unsafe fn(*const u8, Option<&'h Heap>),
}

impl std::fmt::Debug for SlotKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotKind")
            .field("kind", &self.kind)
            .field("body", &(self.name)())
            .finish()
    }
}

impl SlotKind {
    /// The hooks of `T`'s kind.
    pub const fn of<T: SlotBody>() -> SlotKind {
        SlotKind {
            kind: T::KIND,
            body_mutex: T::BODY_STARTS_WITH_MUTEX,
            name: std::any::type_name::<T>,
            owner_died: owner_died_of::<T>,
            retired: retired_of::<T>,
        }
    }

    /// The kind these hooks are for.
    pub const fn kind(&self) -> Kind {
        self.kind
    }
}

/// # Safety
/// `body` points at a live slot body of `T::KIND`, initialised as a `T` (`SlotBody`'s contract).
unsafe fn owner_died_of<T: SlotBody>(body: *const u8, held: i32) {
    // SAFETY: the caller's contract; shared access is fine, `T` is made of shared words.
    unsafe { &*body.cast::<T>() }.owner_died(held);
}

/// # Safety
/// As [`owner_died_of`].
unsafe fn retired_of<T: SlotBody>(body: *const u8, heap: Option<&Heap>) {
    // SAFETY: the caller's contract.
    unsafe { &*body.cast::<T>() }.retired(heap);
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
    /// First overflow chunk of the process table (a [`Heap`] chunk), 0 = none.
    overflow: AtomicU32,
}

#[repr(C)]
struct SlotLayout {
    header: SlotHeader,
    body: UnsafeCell<[u8; BODY_SIZE]>,
    table: [Entry; TABLE_LEN],
}

/// An overflow chunk of a slot's process table.
#[repr(C)]
struct Overflow {
    next: AtomicU32,
    _pad: [u8; 60],
    table: [Entry; OVERFLOW_LEN],
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
    assert!(offset_of!(Overflow, table) == 64);
    assert!(size_of::<Overflow>() <= CHUNK_SIZE);
    assert!(ENTRY_SIZE == 12);
};

/// Where a process's entry lives: `chunk == 0` is the slot's own table, else that overflow
/// chunk's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntryAt {
    chunk: u32,
    at: u32,
}

/// A primitive's handle: `generation << 32 | index`. Plain data, safe to send anywhere.
pub type Handle = u64;

/// The shared-primitive arena of this process tree (see the module doc).
#[derive(Debug)]
pub struct Arena {
    seg: Segment,
    heap: Option<Heap>,
    /// The slot kinds this arena's processes use, with their hooks (every process of one tree
    /// must be given the same table).
    kinds: &'static [SlotKind],
}

/// This process's pid, cached: 0 until first read, reset in every `fork()` child.
static PID: AtomicU32 = AtomicU32::new(0);

extern "C" fn forget_pid_in_child() {
    // Runs in the child right after `fork()`: an atomic store is async-signal-safe.
    PID.store(0, Ordering::Relaxed);
}

/// The calling process's pid (a relaxed load once cached): a `fork()` child never acts
/// under its parent's pid, since glibc runs the `pthread_atfork` child handler registered
/// here before `fork()` returns in the child.
fn current_pid() -> u32 {
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // SAFETY: the handler is a plain `extern "C" fn` with no captured state that only
        // does an atomic store, which is allowed in a fork child; registration itself has
        // no other precondition.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(forget_pid_in_child)) };
        assert_eq!(rc, 0, "pthread_atfork failed");
    });
    let pid = std::process::id();
    PID.store(pid, Ordering::Relaxed);
    pid
}

impl Arena {
    /// Creates a fresh arena for slots of the `kinds` given (the engine's table is
    /// [`crate::ipc::kinds::ALL`], which [`Arena::create`] passes): every slot free, every
    /// bookkeeping mutex initialised.
    ///
    /// # Panics
    /// If two entries of `kinds` share one kind id: a broken table is a bug.
    pub fn create_with(kinds: &'static [SlotKind]) -> io::Result<Arc<Arena>> {
        check_kinds(kinds);
        let arena = Arena {
            seg: Segment::create(ARENA_SIZE)?,
            heap: Some(Heap::create()?),
            kinds,
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

    /// Maps an arena another process created, from its memfd and, if given, its chunk heap's
    /// (without the heap, queues are unavailable), for slots of the `kinds` given (the table
    /// the creator used).
    ///
    /// # Panics
    /// As [`Self::create_with`].
    pub fn open_with(
        kinds: &'static [SlotKind],
        fd: OwnedFd,
        heap: Option<OwnedFd>,
    ) -> io::Result<Arc<Arena>> {
        check_kinds(kinds);
        let seg = Segment::open(fd)?;
        let arena = Arena {
            seg,
            heap: heap.map(Heap::open).transpose()?,
            kinds,
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
    /// [`ARENA_FD_ENV`]), and makes that fd close-on-exec again. [`Self::from_env_with`] is the
    /// safe way to do this.
    ///
    /// # Safety
    /// `fd` must be an open fd that nothing else in this process owns or will close: this call
    /// takes ownership of it (a second owner would close it under the first).
    pub unsafe fn open_inherited_with(
        kinds: &'static [SlotKind],
        fd: RawFd,
    ) -> io::Result<Arc<Arena>> {
        // SAFETY: the caller's contract is exactly `claim_inherited`'s.
        Self::open_with(kinds, unsafe { Self::claim_inherited(fd) }?, None)
    }

    /// Takes ownership of an inherited fd number (checked to be open), close-on-exec again.
    ///
    /// # Safety
    /// As [`Self::open_inherited`]: nothing else in this process owns `fd`.
    unsafe fn claim_inherited(fd: RawFd) -> io::Result<OwnedFd> {
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
        // SAFETY: open (checked above), and owned by nobody else in this process (the
        // caller's contract).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
        Ok(owned)
    }

    /// The arena this process inherited, if [`ARENA_FD_ENV`] names one (`None` when unset),
    /// for slots of the `kinds` given. Succeeds once per process: the fds are owned by the
    /// arena afterwards, and a second call is refused (`AlreadyExists`) rather than making a
    /// second owner of them.
    pub fn from_env_with(kinds: &'static [SlotKind]) -> io::Result<Option<Arc<Arena>>> {
        let Some(value) = std::env::var_os(ARENA_FD_ENV) else {
            return Ok(None);
        };
        // Not a model-checked flag: it guards fd ownership across the whole process.
        static CLAIMED: crate::sync::unmodelled::AtomicBool =
            crate::sync::unmodelled::AtomicBool::new(false);
        if CLAIMED.swap(true, Ordering::AcqRel) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the inherited arena was already claimed in this process",
            ));
        }
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
        // SAFETY: these numbers came to us in the environment from the parent that spawned
        // us, for us alone; `CLAIMED` makes this the one place in the process that takes them.
        let fd = unsafe { Self::claim_inherited(fd) }?;
        let heap = match heap {
            // SAFETY: as above.
            Some(h) => Some(unsafe { Self::claim_inherited(h) }?),
            None => None,
        };
        Self::open_with(kinds, fd, heap).map(Some)
    }

    /// The fds a worker must inherit to use this arena (the arena's, then the heap's).
    pub fn inherit_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = vec![self.seg.fd()];
        fds.extend(self.heap.as_ref().map(|h| h.fd()));
        fds
    }

    /// The value of [`ARENA_FD_ENV`] that tells a worker the numbers of [`Self::inherit_fds`].
    pub fn env_value(&self) -> String {
        use std::os::fd::AsRawFd;
        let fds: Vec<String> = self
            .inherit_fds()
            .iter()
            .map(|f| f.as_raw_fd().to_string())
            .collect();
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
        self.hooks(kind.id())
            .unwrap_or_else(|| panic!("slot kind {kind:?} is not in this arena's table"));
        let pid = current_pid();
        let index = match self.pop_free() {
            Some(i) => i,
            // Slots retired while their mutex was held may be free by now.
            None if self.reclaim_retired() > 0 => self.pop_free().ok_or(AttachError::Full)?,
            None => return Err(AttachError::Full),
        };
        crash_point(Step::AllocPopped);
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
        let meta = MetaGuard::lock(&slot.header.meta);
        let Some(entry) = self.claim_entry(slot, pid) else {
            drop(meta);
            self.push_free(index);
            return Err(AttachError::TableFull);
        };
        crash_point(Step::AllocEntry);
        self.entry(index, entry).refs.store(1, Ordering::Relaxed);
        slot.header.refs.store(1, Ordering::Relaxed);
        crash_point(Step::AllocCounted);
        // Last: until `kind` is set, reap and attach ignore the slot.
        slot.header.kind.store(kind.id(), Ordering::Release);
        Ok(Slot {
            arena: Arc::clone(self),
            index,
            generation: slot.header.generation.load(Ordering::Relaxed),
            entry,
            pid,
        })
    }

    /// Attaches this process to the primitive `handle` names, which must be of `kind`.
    pub fn attach(self: &Arc<Self>, handle: Handle, kind: Kind) -> Result<Slot, AttachError> {
        self.attach_as(handle, kind, current_pid())
    }

    /// [`Self::attach`] on behalf of process `pid`: for tests that need many distinct
    /// attachers without as many processes. The returned `Slot` detaches as `pid` only in the
    /// process that called this.
    #[doc(hidden)]
    pub fn attach_as(
        self: &Arc<Self>,
        handle: Handle,
        kind: Kind,
        pid: u32,
    ) -> Result<Slot, AttachError> {
        let (index, generation) = (handle as u32, (handle >> 32) as u32);
        if index == 0 || index >= SLOT_COUNT || pid == 0 {
            return Err(AttachError::Stale);
        }
        let slot = self.slot(index);
        let _meta = MetaGuard::lock(&slot.header.meta);
        if slot.header.generation.load(Ordering::Relaxed) != generation
            || slot.header.kind.load(Ordering::Relaxed) != kind.id()
        {
            return Err(AttachError::Stale);
        }
        let entry = self.claim_entry(slot, pid).ok_or(AttachError::TableFull)?;
        let _ = refcount::attach(
            &slot.header.refs,
            &self.entry(index, entry).refs,
            crash_point,
        );
        Ok(Slot {
            arena: Arc::clone(self),
            index,
            generation,
            entry,
            pid: current_pid(),
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
            let kind = slot.header.kind.load(Ordering::Acquire);
            if kind == 0 || kind == KIND_RETIRED_HELD {
                continue;
            }
            let meta = MetaGuard::lock(&slot.header.meta);
            let kind = slot.header.kind.load(Ordering::Relaxed);
            if kind == 0 || kind == KIND_RETIRED_HELD {
                continue;
            }
            let Some(at) = self.find_entry(slot, pid) else {
                continue;
            };
            let entry = self.entry(index, at);
            if let Some(hooks) = self.hooks(kind) {
                let held = entry.held.load(Ordering::Acquire) as i32;
                let body = slot.body.get().cast::<u8>().cast_const();
                // SAFETY: the slot is live with this kind (checked under `meta`), so its body
                // was initialised as the type these hooks were made for (`SlotBody`).
                unsafe { (hooks.owner_died)(body, held) };
            }
            let release = || release_entry(entry);
            if refcount::reap(&slot.header.refs, &entry.refs, release, crash_point) == Ok(true) {
                self.retire(index, meta);
            }
        }
        // The dead process's threads no longer own any mutex: its retired slots are free.
        self.reclaim_retired();
    }

    /// How many slots are live (allocated and not yet freed or retired). For tests and
    /// diagnostics.
    pub fn live_slots(&self) -> usize {
        (1..SLOT_COUNT)
            .filter(|&i| {
                let k = self.slot(i).header.kind.load(Ordering::Acquire);
                k != 0 && k != KIND_RETIRED_HELD
            })
            .count()
    }

    /// How many slots wait, retired, for the owner of their mutex to let go of it (module doc,
    /// step 4). For tests and diagnostics.
    pub fn retired_held_slots(&self) -> usize {
        (1..SLOT_COUNT)
            .filter(|&i| self.slot(i).header.kind.load(Ordering::Acquire) == KIND_RETIRED_HELD)
            .count()
    }

    /// Puts back on the free list every slot retired with a held mutex whose owner thread has
    /// since let go of it (only by dying: nobody else can reach the slot). Returns how many.
    /// [`Self::alloc`] calls it when the free list is empty, [`Self::reap`] after each reap.
    pub fn reclaim_retired(&self) -> usize {
        let mut freed = 0;
        for index in 1..SLOT_COUNT {
            let slot = self.slot(index);
            if slot.header.kind.load(Ordering::Acquire) != KIND_RETIRED_HELD {
                continue;
            }
            let meta = MetaGuard::lock(&slot.header.meta);
            if slot.header.kind.load(Ordering::Relaxed) != KIND_RETIRED_HELD
                || self.body_mutex(index).owner() != 0
            {
                continue;
            }
            slot.header.kind.store(0, Ordering::Release);
            drop(meta);
            self.push_free(index);
            freed += 1;
        }
        freed
    }

    /// The robust mutex at the start of a slot's body (for kinds whose [`SlotKind`] says the
    /// body starts with one, and for slots retired held, which only such kinds become).
    fn body_mutex(&self, index: u32) -> &RawMutex {
        // SAFETY: the caller checked the kind: the body starts with an initialised RawMutex
        // (`SlotBody::BODY_STARTS_WITH_MUTEX`'s contract), which is shared by design; the body
        // is 64-aligned.
        unsafe { &*self.slot(index).body.get().cast::<RawMutex>() }
    }

    /// Step 4: called with `meta` held and `refs == 0`.
    fn retire(&self, index: u32, meta: MetaGuard<'_>) {
        let slot = self.slot(index);
        let header = &slot.header;
        let kind = header.kind.load(Ordering::Relaxed);
        self.clear_table(slot);
        // A mutex still owned by a live thread is on that thread's robust list, which links
        // through the mutex's own words: re-initialising it for a new primitive would corrupt
        // the list. Keep the slot out of use until the owner lets go (by dying).
        let hooks = self.hooks(kind);
        if hooks.is_some_and(|h| h.body_mutex) && self.body_mutex(index).owner() != 0 {
            header.kind.store(KIND_RETIRED_HELD, Ordering::Release);
            header.generation.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(hooks) = hooks {
            let body = slot.body.get().cast::<u8>().cast_const();
            // SAFETY: the slot is still live with this kind (we hold `meta`, `kind` not yet
            // cleared), so its body is the hooks' type (`SlotBody`); with `refs == 0` no
            // process can use it any more.
            unsafe { (hooks.retired)(body, self.heap.as_ref()) };
        }
        header.kind.store(0, Ordering::Release);
        crash_point(Step::RetireCleared);
        header.generation.fetch_add(1, Ordering::Relaxed);
        drop(meta);
        crash_point(Step::RetireUnlocked);
        self.push_free(index);
    }

    /// The hooks of the kind with id `kind`, if this arena's table has it. A live slot of a
    /// kind missing from the table (made by a process given a larger table) gets no hooks.
    fn hooks(&self, kind: u32) -> Option<&'static SlotKind> {
        self.kinds.iter().find(|k| k.kind.id() == kind)
    }

    fn pop_free(&self) -> Option<u32> {
        free_list::pop(&self.header().free_head, |j| &self.slot(j).header.next_free)
    }

    fn push_free(&self, index: u32) {
        free_list::push(&self.header().free_head, index, |j| {
            &self.slot(j).header.next_free
        });
    }

    fn detach(&self, index: u32, at: EntryAt) {
        let slot = self.slot(index);
        let meta = MetaGuard::lock(&slot.header.meta);
        let e = self.entry(index, at);
        let zero = refcount::detach(&slot.header.refs, &e.refs, || release_entry(e), crash_point);
        if zero == Ok(true) {
            self.retire(index, meta);
        }
    }

    /// The overflow chunk `chunk` of some slot's table.
    fn overflow(&self, chunk: u32) -> &Overflow {
        let heap = self
            .heap
            .as_ref()
            .expect("overflow chunks exist only with a heap");
        // SAFETY: `chunk` is linked into a slot's overflow chain (the caller got it from
        // there), so it is a data chunk that stays allocated while the slot has attachers;
        // `Overflow` is made of atomics and padding and fits in a chunk (const assertion).
        unsafe { &*heap.chunk(chunk).cast::<Overflow>() }
    }

    fn entry(&self, index: u32, at: EntryAt) -> &Entry {
        self.entry_of(self.slot(index), at)
    }

    /// Every entry of `slot`'s table, overflow chunks included. Under `meta`.
    fn entries<'a>(&'a self, slot: &'a SlotLayout) -> impl Iterator<Item = (EntryAt, &'a Entry)> {
        let inline = slot.table.iter().enumerate().map(|(i, e)| {
            let at = EntryAt {
                chunk: 0,
                at: i as u32,
            };
            (at, e)
        });
        let mut chunk = slot.header.overflow.load(Ordering::Relaxed);
        let chunks = std::iter::from_fn(move || {
            if chunk == 0 {
                return None;
            }
            let c = chunk;
            chunk = self.overflow(c).next.load(Ordering::Relaxed);
            Some(c)
        });
        let spilled = chunks.flat_map(move |c| {
            self.overflow(c)
                .table
                .iter()
                .enumerate()
                .map(move |(i, e)| {
                    let at = EntryAt {
                        chunk: c,
                        at: i as u32,
                    };
                    (at, e)
                })
        });
        inline.chain(spilled)
    }

    fn find_entry(&self, slot: &SlotLayout, pid: u32) -> Option<EntryAt> {
        self.entries(slot)
            .find(|(_, e)| e.pid.load(Ordering::Relaxed) == pid)
            .map(|(at, _)| at)
    }

    /// The table entry of `pid` in `slot`, claiming a free one (growing the table by an
    /// overflow chunk if needed) if it has none; `None` only when the heap is full or absent.
    /// Under `meta`.
    fn claim_entry(&self, slot: &SlotLayout, pid: u32) -> Option<EntryAt> {
        let mut free = None;
        for (at, e) in self.entries(slot) {
            match e.pid.load(Ordering::Relaxed) {
                p if p == pid => return Some(at),
                0 if free.is_none() => free = Some(at),
                _ => {}
            }
        }
        let at = match free {
            Some(at) => at,
            None => {
                let heap = self.heap.as_ref()?;
                let chunk = heap.alloc()?;
                // SAFETY: we just allocated the chunk: nobody else can see it until we link
                // it below, so we may zero it (all-zero is a valid `Overflow`: free entries).
                unsafe { std::ptr::write_bytes(heap.chunk(chunk), 0, CHUNK_SIZE) };
                let head = &slot.header.overflow;
                self.overflow(chunk)
                    .next
                    .store(head.load(Ordering::Relaxed), Ordering::Relaxed);
                head.store(chunk, Ordering::Relaxed);
                EntryAt { chunk, at: 0 }
            }
        };
        let e = self.entry_of(slot, at);
        e.refs.store(0, Ordering::Relaxed);
        e.held.store(0, Ordering::Relaxed);
        e.pid.store(pid, Ordering::Relaxed);
        Some(at)
    }

    fn entry_of<'a>(&'a self, slot: &'a SlotLayout, at: EntryAt) -> &'a Entry {
        if at.chunk == 0 {
            &slot.table[at.at as usize]
        } else {
            &self.overflow(at.chunk).table[at.at as usize]
        }
    }

    /// Releases every entry and gives the overflow chunks back. Under `meta`, `refs == 0`.
    fn clear_table(&self, slot: &SlotLayout) {
        for e in &slot.table {
            release_entry(e);
        }
        let mut chunk = slot.header.overflow.swap(0, Ordering::Relaxed);
        while chunk != 0 {
            let next = self.overflow(chunk).next.load(Ordering::Relaxed);
            if let Some(heap) = &self.heap {
                heap.free(chunk);
            }
            chunk = next;
        }
    }
}

/// Refuses a table with two hooks for one kind id (which would make the arena run the wrong
/// type's hooks on a body).
fn check_kinds(kinds: &[SlotKind]) {
    for (i, k) in kinds.iter().enumerate() {
        if let Some(twin) = kinds[..i].iter().find(|o| o.kind == k.kind) {
            panic!(
                "slot kinds {} and {} share the id {}",
                (twin.name)(),
                (k.name)(),
                k.kind.id()
            );
        }
    }
}

fn release_entry(e: &Entry) {
    e.refs.store(0, Ordering::Relaxed);
    e.held.store(0, Ordering::Relaxed);
    e.pid.store(0, Ordering::Relaxed);
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
    entry: EntryAt,
    /// The process that attached: a `fork()` child's copy of the `Slot` is its parent's
    /// reference, which the child must not detach.
    pid: u32,
}

/// The type that every slot of one [`Kind`] holds in its body, with what the arena must do
/// with such a body when an attached process dies or the last reference goes. A new primitive
/// implements this in its own module and is listed in the table its arena is made with
/// ([`crate::ipc::kinds`] for the engine's); the arena itself needs no edit.
///
/// # Safety
/// Implement it only for the one body type of `KIND`: every slot of that kind must be
/// initialised as `Self` (through [`TypedSlot::new`] or [`TypedSlot::alloc`]), and `Self` must
/// fit in [`BODY_SIZE`] bytes, need at most 64-byte alignment, and be safe to share between
/// processes (atomics and process-shared mutexes only). If [`Self::BODY_STARTS_WITH_MUTEX`] is
/// true, `Self` is `#[repr(C)]` with an initialised robust [`RawMutex`] as its first field.
pub unsafe trait SlotBody: Sized {
    /// The kind of slot whose body is a `Self`.
    const KIND: Kind;

    /// Whether the body starts with a robust [`RawMutex`] that a thread may still own when the
    /// last reference goes: such a slot is retired held until the owner is gone (module doc,
    /// steps 4 and 6), since the owner's robust list links through the mutex's words.
    const BODY_STARTS_WITH_MUTEX: bool = false;

    /// Step 5: a process attached to this slot died, holding `held` (its net count of permits
    /// taken through [`Slot::held`], wrapping). Runs under the slot's bookkeeping mutex, in the
    /// process that reaps, which may never have attached the slot itself.
    fn owner_died(&self, held: i32) {
        let _ = held;
    }

    /// Step 4: the last reference is gone and the slot is about to be freed; give back what
    /// the body owns outside the slot (`heap`: the arena's chunk heap, if this process mapped
    /// it). Not called for a slot retired held.
    fn retired(&self, heap: Option<&Heap>) {
        let _ = heap;
    }
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
    /// In a `fork()` child using its parent's `Slot`, a counter that nothing reads: the
    /// parent's entry must not count the child's permits, and the child, never an engine
    /// worker, is never reaped.
    pub fn held(&self) -> &AtomicU32 {
        static UNTRACKED: AtomicU32 = AtomicU32::new(0);
        if self.pid != current_pid() {
            return &UNTRACKED;
        }
        &self.arena.entry(self.index, self.entry).held
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.pid == current_pid() {
            self.arena.detach(self.index, self.entry);
        }
    }
}

impl AsFd for Arena {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.seg.fd()
    }
}
