//! `Semaphore` and `BoundedSemaphore`: a permit counter shared by threads of any process.
//!
//! # Layout ([`SemWord`], `#[repr(C)]`, 16 bytes)
//! | offset | field     | meaning                                                      |
//! |--------|-----------|--------------------------------------------------------------|
//! | 0      | `count`   | free permits; the futex word waiters sleep on (while 0)      |
//! | 4      | `waiters` | threads between steps 3 and 5 of `acquire`                    |
//! | 8      | `initial` | the value it was created with (read-only)                    |
//! | 12     | `bounded` | 1 for a `BoundedSemaphore` (read-only)                       |
//!
//! Beside the word, each process has a `held` counter (its arena table entry, see
//! [`super::arena`]): permits it took minus permits it gave, so that the engine can give back
//! what a dead process held.
//!
//! # Protocol
//! `acquire`:
//! 1. Load `count`; 0 → go to 3.
//! 2. `held += 1`, then CAS `count` to `count - 1`; success → done. On failure re-load: still
//!    above 0 → retry the CAS; 0 → `held -= 1` and go to 3.
//! 3. `waiters += 1` (SeqCst), re-load `count`: above 0 → `waiters -= 1`, go to 1.
//! 4. Futex-wait while `count == 0` (one slice).
//! 5. `waiters -= 1`; timeout → one last try (1–2) and return its result; interrupt → stop;
//!    else go to 1.
//!
//! `release(n)`: bounded → CAS `count` to `count + n`, refused with `TooMany` above `initial`;
//! else `fetch_add(n)`. Then `held -= n`, and if `waiters > 0` (SeqCst load after the SeqCst
//! RMW: Dekker with step 3) wake `n` sleepers.
//!
//! # When a process dies
//! `held` is incremented before the permit is taken (step 2), so a process killed between the
//! two gives back one permit it never took, rather than losing one that a waiter needs: a
//! semaphore wait never blocks forever because of a death. On reap
//! ([`super::arena::Arena::reap`]), the dead process's positive `held` is added back to
//! `count` ([`SemWord::give_back`]), but never above `initial`: permits of a semaphore used
//! as a signal (released by one process, acquired by another, started at 0) are not owned by
//! their acquirer, and are not handed back.

use crate::ipc::error::{AcquireError, ReleaseError};
use crate::ipc::futex::{Futex, LocalFutex};
use crate::ipc::notify::WaitError;
use crate::sync::{fence, AtomicU32, Ordering::SeqCst};
use crate::Wait;

/// The operations of `threading.Semaphore` / `BoundedSemaphore`, for both twins.
pub trait Semaphore: Sync {
    /// Takes a permit if one is free, without waiting.
    fn try_acquire(&self) -> bool;
    /// Takes a permit, waiting as `wait` allows: `Ok(false)` if the deadline passed first.
    fn acquire(&self, wait: &mut Wait<'_>) -> Result<bool, AcquireError>;
    /// Gives `n` permits back (a bounded semaphore refuses to exceed its initial value).
    fn release(&self, n: u32) -> Result<(), ReleaseError>;
    /// Free permits right now.
    fn value(&self) -> u32;
}

/// The semaphore's shared words and protocol (module doc), over any [`Futex`].
#[repr(C)]
pub struct SemWord {
    count: AtomicU32,
    waiters: AtomicU32,
    initial: AtomicU32,
    bounded: AtomicU32,
}

impl SemWord {
    /// A semaphore with `value` permits; `bounded` refuses releases above `value`.
    pub fn new(value: u32, bounded: bool) -> SemWord {
        SemWord {
            count: AtomicU32::new(value),
            waiters: AtomicU32::new(0),
            initial: AtomicU32::new(value),
            bounded: AtomicU32::new(bounded as u32),
        }
    }

    /// Steps 1–2; `held` is the caller's per-process counter.
    pub fn try_acquire(&self, held: &AtomicU32) -> bool {
        let mut c = self.count.load(SeqCst);
        if c == 0 {
            return false;
        }
        held.fetch_add(1, SeqCst);
        loop {
            match self.count.compare_exchange_weak(c, c - 1, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(0) => {
                    held.fetch_sub(1, SeqCst);
                    return false;
                }
                Err(now) => c = now,
            }
        }
    }

    /// Steps 1–5.
    pub fn acquire(
        &self,
        held: &AtomicU32,
        futex: &impl Futex,
        wait: &mut Wait<'_>,
    ) -> Result<bool, AcquireError> {
        loop {
            if self.try_acquire(held) {
                return Ok(true);
            }
            self.waiters.fetch_add(1, SeqCst);
            fence(SeqCst);
            if self.count.load(SeqCst) != 0 {
                self.waiters.fetch_sub(1, SeqCst);
                continue;
            }
            let slept = futex.wait(&self.count, 0, wait);
            self.waiters.fetch_sub(1, SeqCst);
            match slept {
                Ok(()) => {}
                Err(WaitError::Timeout) => return Ok(self.try_acquire(held)),
                Err(WaitError::Interrupted | WaitError::PeerGone) => {
                    return Err(AcquireError::Interrupted)
                }
                Err(WaitError::Io(e)) => return Err(AcquireError::Io(e)),
            }
        }
    }

    /// `release(n)` of the protocol.
    pub fn release(
        &self,
        n: u32,
        held: &AtomicU32,
        futex: &impl Futex,
    ) -> Result<(), ReleaseError> {
        if self.bounded.load(SeqCst) == 1 {
            let initial = self.initial.load(SeqCst);
            let mut c = self.count.load(SeqCst);
            loop {
                if c.checked_add(n).is_none_or(|v| v > initial) {
                    return Err(ReleaseError::TooMany);
                }
                match self.count.compare_exchange_weak(c, c + n, SeqCst, SeqCst) {
                    Ok(_) => break,
                    Err(now) => c = now,
                }
            }
        } else {
            self.count.fetch_add(n, SeqCst);
        }
        held.fetch_sub(n, SeqCst);
        fence(SeqCst);
        if self.waiters.load(SeqCst) != 0 {
            futex.wake(&self.count, n);
        }
        Ok(())
    }

    /// Gives back up to `n` permits of a dead process, never above `initial`, and wakes
    /// waiters (see "When a process dies").
    pub fn give_back(&self, n: u32, futex: &impl Futex) {
        if n == 0 {
            return;
        }
        let initial = self.initial.load(SeqCst);
        let mut c = self.count.load(SeqCst);
        loop {
            let add = n.min(initial.saturating_sub(c));
            if add == 0 {
                return;
            }
            match self.count.compare_exchange_weak(c, c + add, SeqCst, SeqCst) {
                Ok(_) => break,
                Err(now) => c = now,
            }
        }
        futex.wake(&self.count, u32::MAX);
    }

    /// Free permits right now.
    pub fn value(&self) -> u32 {
        self.count.load(SeqCst)
    }

    /// The value the semaphore was created with.
    pub fn initial(&self) -> u32 {
        self.initial.load(SeqCst)
    }
}

/// The in-process twin: a [`SemWord`] on the heap with a [`LocalFutex`].
pub struct LocalSemaphore {
    word: SemWord,
    held: AtomicU32,
    futex: LocalFutex,
}

impl LocalSemaphore {
    /// A semaphore with `value` permits (`bounded`: a `BoundedSemaphore`).
    pub fn new(value: u32, bounded: bool) -> LocalSemaphore {
        LocalSemaphore {
            word: SemWord::new(value, bounded),
            held: AtomicU32::new(0),
            futex: LocalFutex::new(),
        }
    }

    /// Simulates the death of the process that holds this handle: gives back its permits, as
    /// the arena's reap does.
    pub fn abandon(&self) {
        let held = self.held.swap(0, SeqCst) as i32;
        self.word.give_back(held.max(0) as u32, &self.futex);
    }
}

impl Semaphore for LocalSemaphore {
    fn try_acquire(&self) -> bool {
        self.word.try_acquire(&self.held)
    }
    fn acquire(&self, wait: &mut Wait<'_>) -> Result<bool, AcquireError> {
        self.word.acquire(&self.held, &self.futex, wait)
    }
    fn release(&self, n: u32) -> Result<(), ReleaseError> {
        self.word.release(n, &self.held, &self.futex)
    }
    fn value(&self) -> u32 {
        self.word.value()
    }
}

/// The shared-memory semaphore: a [`SemWord`] in an arena slot, with the kernel futex.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct ShmSemaphore {
    slot: super::arena::TypedSlot<SemWord>,
}

// SAFETY: `ShmSemaphore::new` initialises every Semaphore slot as a `SemWord`: atomics only,
// far smaller than a slot body.
#[cfg(not(loom))]
unsafe impl super::arena::SlotBody for SemWord {
    const KIND: super::arena::Kind = super::arena::Kind::new(3);

    /// A dead process's positive `held` permits come back, never above `initial`, and the
    /// waiters wake (module doc, "When a process dies").
    fn owner_died(&self, held: i32) {
        self.give_back(held.max(0) as u32, &super::futex::ShmFutex);
    }
}

#[cfg(not(loom))]
impl ShmSemaphore {
    /// Allocates a semaphore with `value` permits in `arena`.
    pub fn new(
        arena: &std::sync::Arc<super::arena::Arena>,
        value: u32,
        bounded: bool,
    ) -> Result<ShmSemaphore, super::error::AttachError> {
        Ok(ShmSemaphore {
            slot: super::arena::TypedSlot::new(arena, SemWord::new(value, bounded))?,
        })
    }

    /// Attaches to the semaphore `handle` names.
    pub fn attach(
        arena: &std::sync::Arc<super::arena::Arena>,
        handle: super::arena::Handle,
    ) -> Result<ShmSemaphore, super::error::AttachError> {
        Ok(ShmSemaphore {
            slot: super::arena::TypedSlot::attach(arena, handle)?,
        })
    }

    /// The handle to send to another process.
    pub fn handle(&self) -> super::arena::Handle {
        self.slot.handle()
    }

    fn word(&self) -> &SemWord {
        self.slot.body()
    }

    /// The value the semaphore was created with (a `BoundedSemaphore`'s limit).
    pub fn initial(&self) -> u32 {
        self.word().initial()
    }
}

#[cfg(not(loom))]
impl Semaphore for ShmSemaphore {
    fn try_acquire(&self) -> bool {
        self.word().try_acquire(self.slot.held())
    }
    fn acquire(&self, wait: &mut Wait<'_>) -> Result<bool, AcquireError> {
        self.word()
            .acquire(self.slot.held(), &super::futex::ShmFutex, wait)
    }
    fn release(&self, n: u32) -> Result<(), ReleaseError> {
        self.word()
            .release(n, self.slot.held(), &super::futex::ShmFutex)
    }
    fn value(&self) -> u32 {
        self.word().value()
    }
}
