//! `Barrier`: `threading.Barrier`'s algorithm (a count and a four-state machine under a
//! mutex, with a condition variable) on a robust mutex and a futex word in an arena slot.
//!
//! # Layout ([`BarrierBody`], `#[repr(C)]`)
//! | offset | field     | meaning                                                     |
//! |--------|-----------|-------------------------------------------------------------|
//! | 0      | `mutex`   | robust pshared `pthread_mutex_t` guarding the words below    |
//! | 40     | `parties` | threads needed to trip the barrier (read-only)               |
//! | 44     | `count`   | threads inside `wait` (arrived and not yet gone)              |
//! | 48     | `state`   | `FILLING` 0, `DRAINING` 1, `RESETTING` 2, `BROKEN` 3          |
//! | 52     | `seq`     | bumped by every state change; the futex word waiters sleep on |
//!
//! Every process attached to the barrier writes these, under `mutex`.
//!
//! # Protocol (as `threading.Barrier`; "sleep" = read `seq`, unlock, futex-wait while `seq`
//! is unchanged, lock again; "notify" = `seq += 1`, wake all)
//! `wait`:
//! 1. Lock. While `DRAINING` or `RESETTING`: sleep. `BROKEN` → unlock, `Broken`.
//! 2. `index = count`, `count += 1`. The last arrival (`count == parties`) unlocks and returns
//!    [`Arrival::Last`]: its caller runs the barrier's action, then calls
//!    [`BarrierBody::finish`] (`ok`: state `DRAINING`; else `BROKEN`; notify; then step 4).
//! 3. Others sleep while `FILLING`; a timeout or interrupt breaks the barrier (state
//!    `BROKEN`, notify). `BROKEN` or `RESETTING` → `Broken`.
//! 4. Leave: `count -= 1`; at 0, a `DRAINING` or `RESETTING` barrier is `FILLING` again
//!    (notify). Unlock.
//!
//! `reset`: `count > 0` → `RESETTING` (waiters get `Broken`, the last to leave refills);
//! else `FILLING`. `abort`: `BROKEN`. Both notify.
//!
//! # When a process dies
//! A process that dies attached to the barrier breaks it ([`BarrierBody::break_barrier`], from
//! the arena's reap): it may have been one of the parties, so waiting for it could last
//! forever. Its death inside the mutex's critical section is seen by the next locker
//! (`EOWNERDEAD`), which carries on: every step leaves the words consistent before it sleeps.

use crate::ipc::error::BarrierError;
use crate::ipc::futex::{Futex, ShmFutex};
use crate::ipc::mutex::RawMutex;
use crate::ipc::notify::WaitError;
use crate::sync::{AtomicU32, Ordering::SeqCst};
use crate::Wait;

const FILLING: u32 = 0;
const DRAINING: u32 = 1;
const RESETTING: u32 = 2;
const BROKEN: u32 = 3;

/// How a thread got through step 2 of `wait`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Released with this arrival index.
    Index(u32),
    /// The last arrival, with this index: run the action, then call `finish`.
    Last(u32),
}

/// The barrier's shared words and protocol (module doc).
#[repr(C)]
pub struct BarrierBody {
    mutex: RawMutex,
    parties: AtomicU32,
    count: AtomicU32,
    state: AtomicU32,
    seq: AtomicU32,
}

struct Held<'a>(&'a BarrierBody);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let _ = self.0.mutex.unlock();
    }
}

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
                DRAINING | RESETTING => {
                    let (h, r) = self.sleep(held, wait);
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
            return Ok(Arrival::Last(index));
        }
        while self.state.load(SeqCst) == FILLING {
            let (h, r) = self.sleep(held, wait);
            held = h;
            if let Err(e) = r {
                let err = self.fail(e);
                self.leave();
                return Err(err);
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
        self.state.store(if ok { DRAINING } else { BROKEN }, SeqCst);
        self.notify();
        self.leave();
    }

    /// `threading.Barrier.reset`.
    pub fn reset(&self) {
        let _held = self.lock();
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

/// The shared-memory barrier: a [`BarrierBody`] in an arena slot.
#[derive(Debug)]
pub struct ShmBarrier {
    slot: super::arena::TypedSlot<BarrierBody>,
}

// SAFETY: `ShmBarrier::new` initialises every Barrier slot as a `BarrierBody` (atomics and a
// process-shared mutex, within a slot body).
unsafe impl super::arena::SlotBody for BarrierBody {
    const KIND: super::arena::Kind = super::arena::Kind::Barrier;
}

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

/// A plain 8-byte cell in an arena slot: the storage of a `Value` (its lock is a separate
/// `RLock`). Loads and stores are atomic, so a reader never sees a torn value.
#[derive(Debug)]
pub struct ShmCell {
    slot: super::arena::TypedSlot<crate::sync::AtomicU64>,
}

// SAFETY: `ShmCell::new` initialises every Cell slot as an `AtomicU64`.
unsafe impl super::arena::SlotBody for crate::sync::AtomicU64 {
    const KIND: super::arena::Kind = super::arena::Kind::Cell;
}

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
