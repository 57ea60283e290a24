//! `Barrier`: `threading.Barrier`'s algorithm (a count and a four-state machine under a
//! mutex, with a condition variable) on a robust mutex and a futex word in an arena slot.
//!
//! # Layout ([`BarrierBody`], `#[repr(C)]`)
//! | offset | field     | meaning                                                     |
//! |--------|-----------|-------------------------------------------------------------|
//! | 0      | `mutex`   | robust pshared `pthread_mutex_t` guarding the words below    |
//! | 40     | `parties` | threads needed to trip the barrier (read-only)               |
//! | 44     | `count`   | threads inside `wait` (arrived and not yet gone)              |
//! | 48     | `state`   | `FILLING` 0, `DRAINING` 1, `RESETTING` 2, `BROKEN` 3,         |
//! |        |           | `TRIPPING` 4 (the last arrival runs the action)               |
//! | 52     | `seq`     | bumped by every state change; the futex word waiters sleep on |
//!
//! Every process attached to the barrier writes these, under `mutex`.
//!
//! # Protocol (as `threading.Barrier`; "sleep" = read `seq`, unlock, futex-wait while `seq`
//! is unchanged, lock again; "notify" = `seq += 1`, wake all)
//! `wait`:
//! 1. Lock. While `DRAINING`, `RESETTING` or `TRIPPING`: sleep, with no deadline (as
//!    `threading`'s `_enter`; an interrupt still breaks the barrier). `BROKEN` → unlock,
//!    `Broken`.
//! 2. `index = count`, `count += 1`. The last arrival (`count == parties`) sets `TRIPPING`,
//!    unlocks and returns [`Arrival::Last`]: its caller runs the barrier's action outside the
//!    mutex, then calls [`BarrierBody::finish`] (`TRIPPING` → `DRAINING` if `ok`, else
//!    `BROKEN`; notify; then step 4). `TRIPPING` stands for `threading`'s holding the lock
//!    through the action: whoever arrives meanwhile waits for the next generation.
//! 3. Others sleep while `FILLING` or `TRIPPING`; a timeout or interrupt while `FILLING`
//!    breaks the barrier (state `BROKEN`, notify). A timeout while `TRIPPING` keeps sleeping
//!    with no deadline (in `threading` such a waiter is blocked on the lock the action holds,
//!    and then sees the barrier drained). `BROKEN` or `RESETTING` → `Broken`.
//! 4. Leave: `count -= 1`; at 0, a `DRAINING` or `RESETTING` barrier is `FILLING` again
//!    (notify). Unlock.
//!
//! `reset`: `count > 0` → `RESETTING` (waiters get `Broken`, the last to leave refills);
//! else `FILLING`; while `TRIPPING` nothing changes (in `threading` the reset would wait for
//! the action and find the barrier draining, which a reset leaves alone). `abort`: `BROKEN`
//! (a `finish` after that leaves it `BROKEN`). Both notify.
//!
//! [`LocalBarrier`] is the in-process twin: the same state machine under a std mutex and
//! condvar; both implement [`Barrier`].
//!
//! # When a process dies
//! A process that dies attached to the barrier breaks it ([`BarrierBody::break_barrier`], from
//! the arena's reap): it may have been one of the parties, so waiting for it could last
//! forever. Its death inside the mutex's critical section is seen by the next locker
//! (`EOWNERDEAD`), which carries on: every step leaves the words consistent before it sleeps.

use crate::ipc::error::BarrierError;
#[cfg(not(loom))]
use crate::ipc::futex::{Futex, ShmFutex};
#[cfg(not(loom))]
use crate::ipc::mutex::RawMutex;
use crate::ipc::notify::WaitError;
#[cfg(not(loom))]
use crate::sync::{AtomicU32, Ordering::SeqCst};
use crate::Wait;

const FILLING: u32 = 0;
const DRAINING: u32 = 1;
const RESETTING: u32 = 2;
const BROKEN: u32 = 3;
const TRIPPING: u32 = 4;

/// How a thread got through step 2 of `wait`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Released with this arrival index.
    Index(u32),
    /// The last arrival, with this index: run the action, then call `finish`.
    Last(u32),
}

/// The operations of `threading.Barrier`, for both twins. The action runs in the caller,
/// between [`Barrier::wait`] returning [`Arrival::Last`] and [`Barrier::finish`].
pub trait Barrier: Sync {
    /// Arrives and waits for the others (steps 1–4 of the module doc). A timeout or an
    /// interrupt breaks the barrier for every party.
    fn wait(&self, wait: &mut Wait<'_>) -> Result<Arrival, BarrierError>;
    /// The last arrival's second half: release the others (`ok`) or break the barrier.
    fn finish(&self, ok: bool);
    /// `threading.Barrier.reset`: waiters get [`BarrierError::Broken`]; the barrier is then
    /// usable again.
    fn reset(&self);
    /// `threading.Barrier.abort`: breaks the barrier.
    fn abort(&self);
    /// Threads waiting for the barrier to fill.
    fn n_waiting(&self) -> u32;
    /// The number of parties.
    fn parties(&self) -> u32;
    /// Whether the barrier is broken.
    fn broken(&self) -> bool;

    /// `wait` with no action: the last arrival calls `finish(true)` itself. Returns the
    /// arrival index (`0..parties`).
    fn pass(&self, wait: &mut Wait<'_>) -> Result<u32, BarrierError> {
        match self.wait(wait)? {
            Arrival::Index(i) => Ok(i),
            Arrival::Last(i) => {
                self.finish(true);
                Ok(i)
            }
        }
    }
}

/// The barrier's shared words and protocol (module doc).
#[cfg(not(loom))]
#[repr(C)]
pub struct BarrierBody {
    mutex: RawMutex,
    parties: AtomicU32,
    count: AtomicU32,
    state: AtomicU32,
    seq: AtomicU32,
}

#[cfg(not(loom))]
struct Held<'a>(&'a BarrierBody);

#[cfg(not(loom))]
impl Drop for Held<'_> {
    fn drop(&mut self) {
        let _ = self.0.mutex.unlock();
    }
}

#[cfg(not(loom))]
impl BarrierBody {
    /// Initialises a barrier for `parties` threads in place.
    ///
    /// # Safety
    /// `this` must be valid for writes and unused by any thread (as for [`RawMutex::init`]).
    pub unsafe fn init(this: *mut BarrierBody, parties: u32) -> std::io::Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe {
            RawMutex::init(&raw mut (*this).mutex)?;
            (&raw mut (*this).parties).write(AtomicU32::new(parties));
            (&raw mut (*this).count).write(AtomicU32::new(0));
            (&raw mut (*this).state).write(AtomicU32::new(FILLING));
            (&raw mut (*this).seq).write(AtomicU32::new(0));
        }
        Ok(())
    }

    fn lock(&self) -> Held<'_> {
        // OwnerDied: see "When a process dies".
        let _ = self.mutex.lock_uninterruptible();
        Held(self)
    }

    fn notify(&self) {
        self.seq.fetch_add(1, SeqCst);
        ShmFutex.wake(&self.seq, u32::MAX);
    }

    /// One sleep: unlock, futex-wait while `seq` is unchanged, lock again.
    fn sleep<'a>(
        &'a self,
        held: Held<'a>,
        wait: &mut Wait<'_>,
    ) -> (Held<'a>, Result<(), WaitError>) {
        let s = self.seq.load(SeqCst);
        drop(held);
        let r = ShmFutex.wait(&self.seq, s, wait);
        (self.lock(), r)
    }

    /// Steps 1–4 of `wait`.
    pub fn wait(&self, wait: &mut Wait<'_>) -> Result<Arrival, BarrierError> {
        let mut held = self.lock();
        loop {
            match self.state.load(SeqCst) {
                DRAINING | RESETTING | TRIPPING => {
                    let (h, r) = without_deadline(wait, |w| self.sleep(held, w));
                    held = h;
                    if let Err(e) = r {
                        return Err(self.fail(e));
                    }
                }
                BROKEN => return Err(BarrierError::Broken),
                _ => break,
            }
        }
        let index = self.count.fetch_add(1, SeqCst);
        if index + 1 == self.parties.load(SeqCst) {
            self.state.store(TRIPPING, SeqCst);
            return Ok(Arrival::Last(index));
        }
        loop {
            let (h, r) = match self.state.load(SeqCst) {
                FILLING => self.sleep(held, wait),
                TRIPPING => without_deadline(wait, |w| self.sleep(held, w)),
                _ => break,
            };
            held = h;
            match r {
                Err(WaitError::Timeout) if self.state.load(SeqCst) == TRIPPING => {}
                Err(e) => {
                    let err = self.fail(e);
                    self.leave();
                    return Err(err);
                }
                Ok(()) => {}
            }
        }
        let state = self.state.load(SeqCst);
        self.leave();
        drop(held);
        if state == DRAINING || state == FILLING {
            Ok(Arrival::Index(index))
        } else {
            Err(BarrierError::Broken)
        }
    }

    /// Breaks the barrier for a failed wait (under the mutex) and says why.
    fn fail(&self, e: WaitError) -> BarrierError {
        self.state.store(BROKEN, SeqCst);
        self.notify();
        match e {
            WaitError::Io(e) => BarrierError::Io(e),
            WaitError::Timeout => BarrierError::Broken,
            _ => BarrierError::Interrupted,
        }
    }

    /// Step 4, under the mutex.
    fn leave(&self) {
        if self.count.fetch_sub(1, SeqCst) == 1 {
            let s = self.state.load(SeqCst);
            if s == DRAINING || s == RESETTING {
                self.state.store(FILLING, SeqCst);
                self.notify();
            }
        }
    }

    /// The last arrival's second half: release the others (`ok`) or break the barrier.
    pub fn finish(&self, ok: bool) {
        let _held = self.lock();
        if self.state.load(SeqCst) == TRIPPING {
            self.state.store(if ok { DRAINING } else { BROKEN }, SeqCst);
        }
        self.notify();
        self.leave();
    }

    /// `threading.Barrier.reset`.
    pub fn reset(&self) {
        let _held = self.lock();
        if self.state.load(SeqCst) == TRIPPING {
            return;
        }
        if self.count.load(SeqCst) > 0 {
            let s = self.state.load(SeqCst);
            if s == FILLING || s == BROKEN {
                self.state.store(RESETTING, SeqCst);
            }
        } else {
            self.state.store(FILLING, SeqCst);
        }
        self.notify();
    }

    /// `threading.Barrier.abort`; also what the arena's reap does for a dead process.
    pub fn break_barrier(&self) {
        let _held = self.lock();
        self.state.store(BROKEN, SeqCst);
        self.notify();
    }

    /// Threads waiting for the barrier to fill.
    pub fn n_waiting(&self) -> u32 {
        let _held = self.lock();
        if self.state.load(SeqCst) == FILLING {
            self.count.load(SeqCst)
        } else {
            0
        }
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> bool {
        self.state.load(SeqCst) == BROKEN
    }

    /// The number of parties.
    pub fn parties(&self) -> u32 {
        self.parties.load(SeqCst)
    }
}

/// Runs `f` with `wait`'s deadline lifted (its signal check and peer stay).
fn without_deadline<'w, T>(wait: &mut Wait<'w>, f: impl FnOnce(&mut Wait<'w>) -> T) -> T {
    let deadline = wait.deadline.take();
    let out = f(wait);
    wait.deadline = deadline;
    out
}

/// The shared-memory barrier: a [`BarrierBody`] in an arena slot.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct ShmBarrier {
    slot: super::arena::TypedSlot<BarrierBody>,
}

#[cfg(not(loom))]
// SAFETY: `ShmBarrier::new` initialises every Barrier slot as a `BarrierBody` (atomics and a
// process-shared mutex, within a slot body).
unsafe impl super::arena::SlotBody for BarrierBody {
    const KIND: super::arena::Kind = super::arena::Kind::new(5);
    // `BarrierBody` is `#[repr(C)]` with its robust mutex first.
    const BODY_STARTS_WITH_MUTEX: bool = true;

    /// A party died: the barrier can never fill, so it breaks (waiters get `Broken`).
    fn owner_died(&self, _held: i32) {
        self.break_barrier();
    }
}

#[cfg(not(loom))]
impl ShmBarrier {
    /// Allocates a barrier for `parties` threads in `arena`.
    pub fn new(
        arena: &std::sync::Arc<super::arena::Arena>,
        parties: u32,
    ) -> Result<ShmBarrier, super::error::AttachError> {
        let slot = super::arena::TypedSlot::alloc(arena, |body| {
            // SAFETY: `alloc` hands us the slot's unshared, 64-aligned body.
            unsafe { BarrierBody::init(body, parties) }
        })?;
        Ok(ShmBarrier { slot })
    }

    /// Attaches to the barrier `handle` names.
    pub fn attach(
        arena: &std::sync::Arc<super::arena::Arena>,
        handle: super::arena::Handle,
    ) -> Result<ShmBarrier, super::error::AttachError> {
        Ok(ShmBarrier {
            slot: super::arena::TypedSlot::attach(arena, handle)?,
        })
    }

    /// The handle to send to another process.
    pub fn handle(&self) -> super::arena::Handle {
        self.slot.handle()
    }

    /// The barrier's words and operations.
    pub fn body(&self) -> &BarrierBody {
        self.slot.body()
    }
}

#[cfg(not(loom))]
impl Barrier for ShmBarrier {
    fn wait(&self, wait: &mut Wait<'_>) -> Result<Arrival, BarrierError> {
        self.body().wait(wait)
    }
    fn finish(&self, ok: bool) {
        self.body().finish(ok);
    }
    fn reset(&self) {
        self.body().reset();
    }
    fn abort(&self) {
        self.body().break_barrier();
    }
    fn n_waiting(&self) -> u32 {
        self.body().n_waiting()
    }
    fn parties(&self) -> u32 {
        self.body().parties()
    }
    fn broken(&self) -> bool {
        self.body().broken()
    }
}

/// The in-process twin: the same state machine ([`BarrierBody`]'s protocol) under a std
/// mutex, with a condvar for the sleeps.
pub struct LocalBarrier {
    state: crate::sync::Mutex<LocalBarrierState>,
    cond: crate::sync::Condvar,
    parties: u32,
}

/// The words `BarrierBody` keeps beside its mutex.
struct LocalBarrierState {
    count: u32,
    state: u32,
}

type LocalHeld<'a> = crate::sync::MutexGuard<'a, LocalBarrierState>;

impl LocalBarrier {
    /// A barrier for `parties` threads.
    pub fn new(parties: u32) -> LocalBarrier {
        LocalBarrier {
            state: crate::sync::Mutex::new(LocalBarrierState {
                count: 0,
                state: FILLING,
            }),
            cond: crate::sync::Condvar::new(),
            parties,
        }
    }

    fn lock(&self) -> LocalHeld<'_> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One sleep (may be spurious): the deadline and signal check are looked at when a slice
    /// ends without a notify, as [`Futex::wait`] does.
    fn sleep<'a>(
        &'a self,
        held: LocalHeld<'a>,
        wait: &mut Wait<'_>,
    ) -> (LocalHeld<'a>, Result<(), WaitError>) {
        let slice = match wait.slice() {
            Ok(slice) => slice,
            Err(ended) => return (held, Err(ended.into())),
        };
        let Some(slice) = slice else {
            let held = self.cond.wait(held).unwrap_or_else(|e| e.into_inner());
            return (held, Ok(()));
        };
        let (held, result) = self
            .cond
            .wait_timeout(held, slice)
            .unwrap_or_else(|e| e.into_inner());
        if !result.timed_out() {
            return (held, Ok(()));
        }
        drop(held);
        let r = wait.after_slice().map_err(WaitError::from);
        (self.lock(), r)
    }

    /// Breaks the barrier for a failed wait (under the mutex) and says why.
    fn fail(&self, st: &mut LocalBarrierState, e: WaitError) -> BarrierError {
        st.state = BROKEN;
        self.cond.notify_all();
        match e {
            WaitError::Io(e) => BarrierError::Io(e),
            WaitError::Timeout => BarrierError::Broken,
            _ => BarrierError::Interrupted,
        }
    }

    /// Step 4, under the mutex.
    fn leave(&self, st: &mut LocalBarrierState) {
        st.count -= 1;
        if st.count == 0 && (st.state == DRAINING || st.state == RESETTING) {
            st.state = FILLING;
            self.cond.notify_all();
        }
    }
}

impl Barrier for LocalBarrier {
    fn wait(&self, wait: &mut Wait<'_>) -> Result<Arrival, BarrierError> {
        let mut held = self.lock();
        loop {
            match held.state {
                DRAINING | RESETTING | TRIPPING => {
                    let (h, r) = without_deadline(wait, |w| self.sleep(held, w));
                    held = h;
                    if let Err(e) = r {
                        return Err(self.fail(&mut held, e));
                    }
                }
                BROKEN => return Err(BarrierError::Broken),
                _ => break,
            }
        }
        let index = held.count;
        held.count += 1;
        if index + 1 == self.parties {
            held.state = TRIPPING;
            return Ok(Arrival::Last(index));
        }
        loop {
            let (h, r) = match held.state {
                FILLING => self.sleep(held, wait),
                TRIPPING => without_deadline(wait, |w| self.sleep(held, w)),
                _ => break,
            };
            held = h;
            match r {
                Err(WaitError::Timeout) if held.state == TRIPPING => {}
                Err(e) => {
                    let err = self.fail(&mut held, e);
                    self.leave(&mut held);
                    return Err(err);
                }
                Ok(()) => {}
            }
        }
        let state = held.state;
        self.leave(&mut held);
        if state == DRAINING || state == FILLING {
            Ok(Arrival::Index(index))
        } else {
            Err(BarrierError::Broken)
        }
    }

    fn finish(&self, ok: bool) {
        let mut held = self.lock();
        if held.state == TRIPPING {
            held.state = if ok { DRAINING } else { BROKEN };
        }
        self.cond.notify_all();
        self.leave(&mut held);
    }

    fn reset(&self) {
        let mut held = self.lock();
        if held.state == TRIPPING {
            return;
        }
        if held.count > 0 {
            if held.state == FILLING || held.state == BROKEN {
                held.state = RESETTING;
            }
        } else {
            held.state = FILLING;
        }
        self.cond.notify_all();
    }

    fn abort(&self) {
        self.lock().state = BROKEN;
        self.cond.notify_all();
    }

    fn n_waiting(&self) -> u32 {
        let held = self.lock();
        if held.state == FILLING {
            held.count
        } else {
            0
        }
    }

    fn parties(&self) -> u32 {
        self.parties
    }

    fn broken(&self) -> bool {
        self.lock().state == BROKEN
    }
}

/// A plain 8-byte cell in an arena slot: the storage of a `Value` (its lock is a separate
/// `RLock`). Loads and stores are atomic, so a reader never sees a torn value.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct ShmCell {
    slot: super::arena::TypedSlot<crate::sync::AtomicU64>,
}

#[cfg(not(loom))]
// SAFETY: `ShmCell::new` initialises every Cell slot as an `AtomicU64`.
unsafe impl super::arena::SlotBody for crate::sync::AtomicU64 {
    const KIND: super::arena::Kind = super::arena::Kind::new(6);
}

#[cfg(not(loom))]
impl ShmCell {
    /// Allocates a cell holding `bits` in `arena`.
    pub fn new(
        arena: &std::sync::Arc<super::arena::Arena>,
        bits: u64,
    ) -> Result<ShmCell, super::error::AttachError> {
        Ok(ShmCell {
            slot: super::arena::TypedSlot::new(arena, crate::sync::AtomicU64::new(bits))?,
        })
    }

    /// Attaches to the cell `handle` names.
    pub fn attach(
        arena: &std::sync::Arc<super::arena::Arena>,
        handle: super::arena::Handle,
    ) -> Result<ShmCell, super::error::AttachError> {
        Ok(ShmCell {
            slot: super::arena::TypedSlot::attach(arena, handle)?,
        })
    }

    /// The handle to send to another process.
    pub fn handle(&self) -> super::arena::Handle {
        self.slot.handle()
    }

    fn word(&self) -> &crate::sync::AtomicU64 {
        self.slot.body()
    }

    /// The stored bits.
    pub fn load(&self) -> u64 {
        self.word().load(SeqCst)
    }

    /// Replaces the stored bits.
    pub fn store(&self, bits: u64) {
        self.word().store(bits, SeqCst);
    }
}
