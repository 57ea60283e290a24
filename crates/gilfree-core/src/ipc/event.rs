//! `Event`: a flag that threads of any process can set, clear and wait for.
//!
//! # Layout ([`EventWord`], `#[repr(C)]`, 8 bytes)
//! | offset | field     | meaning                                                       |
//! |--------|-----------|---------------------------------------------------------------|
//! | 0      | `word`    | transition count: odd = set, even = clear; the futex word     |
//! | 4      | `waiters` | how many threads are between steps 2 and 4 of `wait`           |
//!
//! Any process attached to the event writes `word` (set/clear) and `waiters` (its waits).
//! `word` counts every clear→set and set→clear transition (wrapping), so its low bit is the
//! flag and a waiter can tell that a `set` happened while it slept even if a `clear`
//! followed before it woke: `threading.Event.wait` returns `True` then, and so does this.
//!
//! # Protocol
//! `set`: CAS `word` from an even `v` to `v + 1` (nothing to do if odd), then `fence(SeqCst)`
//! and load `waiters`; wake all sleepers if it is not 0.
//! `clear`: CAS `word` from an odd `v` to `v + 1` (nothing to do if even).
//! `wait`:
//! 1. Load `word` as `w`; odd → return `true`.
//! 2. `waiters += 1`, `fence(SeqCst)`, re-load `word`; `!= w` → `waiters -= 1`, return `true`
//!    (it can only have moved on by a `set`).
//! 3. Futex-wait while `word == w` (one slice, see [`super::futex`]).
//! 4. `waiters -= 1`; `word != w` → return `true` (a `set` happened since step 1, whatever
//!    came after it); on timeout return `false`; on interrupt stop; else go to 2 (same `w`).
//!
//! No wake-up is lost: steps 2 of `wait` and of `set` are each an RMW, a `fence(SeqCst)`, then a
//! load of the other's word (Dekker; the fences are what loom checks), so either the waiter
//! sees `word != w` or the setter sees `waiters > 0` and wakes; and the kernel checks
//! `word == w` atomically with sleeping. The one blind spot is a waiter that sleeps through
//! exactly 2^32 transitions (it sees `word == w` again): it keeps waiting, as if it had missed
//! that many set/clear pairs.
//!
//! # When a process dies
//! Nothing is held. A waiter that dies leaves `waiters` too high, which only costs later
//! `set` calls a needless wake system call. Every store to `word` is one CAS, so a setter
//! that dies leaves it either before or after its transition.

use crate::ipc::error::AcquireError;
use crate::ipc::futex::{Futex, LocalFutex};
use crate::ipc::notify::WaitError;
use crate::sync::{fence, AtomicU32, Ordering::SeqCst};
use crate::Wait;

/// The operations of `threading.Event`, for both twins.
pub trait Event: Sync {
    /// Sets the flag and wakes every waiter.
    fn set(&self);
    /// Clears the flag.
    fn clear(&self);
    /// Whether the flag is set.
    fn is_set(&self) -> bool;
    /// Waits until the flag is set: `Ok(true)`, or `Ok(false)` if the deadline passed first.
    fn wait(&self, wait: &mut Wait<'_>) -> Result<bool, AcquireError>;
}

/// The event's shared words and protocol (module doc), over any [`Futex`].
#[repr(C)]
#[derive(Default)]
pub struct EventWord {
    word: AtomicU32,
    waiters: AtomicU32,
}

/// The flag bit of [`EventWord::word`]: set when the transition count is odd.
fn is_set_word(w: u32) -> bool {
    w & 1 == 1
}

impl EventWord {
    /// A clear event with no waiters.
    pub fn new() -> EventWord {
        EventWord::default()
    }

    /// Moves `word` to its next value if its flag is not already `to_set`; `true` if it did.
    fn transition(&self, to_set: bool) -> bool {
        let mut w = self.word.load(SeqCst);
        while is_set_word(w) != to_set {
            match self
                .word
                .compare_exchange_weak(w, w.wrapping_add(1), SeqCst, SeqCst)
            {
                Ok(_) => return true,
                Err(now) => w = now,
            }
        }
        false
    }

    /// `set` of the protocol.
    pub fn set(&self, futex: &impl Futex) {
        if !self.transition(true) {
            return;
        }
        fence(SeqCst);
        if self.waiters.load(SeqCst) != 0 {
            futex.wake(&self.word, u32::MAX);
        }
    }

    /// `clear` of the protocol.
    pub fn clear(&self) {
        self.transition(false);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        is_set_word(self.word.load(SeqCst))
    }

    /// Threads inside `wait` right now (between its steps 2 and 4), for tests and diagnostics.
    pub fn waiters(&self) -> u32 {
        self.waiters.load(SeqCst)
    }

    /// `wait` of the protocol.
    pub fn wait(&self, futex: &impl Futex, wait: &mut Wait<'_>) -> Result<bool, AcquireError> {
        let w = self.word.load(SeqCst);
        if is_set_word(w) {
            return Ok(true);
        }
        loop {
            self.waiters.fetch_add(1, SeqCst);
            fence(SeqCst);
            if self.word.load(SeqCst) != w {
                self.waiters.fetch_sub(1, SeqCst);
                return Ok(true);
            }
            let slept = futex.wait(&self.word, w, wait);
            self.waiters.fetch_sub(1, SeqCst);
            if self.word.load(SeqCst) != w {
                return Ok(true);
            }
            match slept {
                Ok(()) => {}
                Err(WaitError::Timeout) => return Ok(false),
                Err(WaitError::Interrupted | WaitError::PeerGone) => {
                    return Err(AcquireError::Interrupted)
                }
                Err(WaitError::Io(e)) => return Err(AcquireError::Io(e)),
            }
        }
    }
}

/// The in-process twin: an [`EventWord`] on the heap with a [`LocalFutex`].
#[derive(Default)]
pub struct LocalEvent {
    word: EventWord,
    futex: LocalFutex,
}

impl LocalEvent {
    /// A clear event.
    pub fn new() -> LocalEvent {
        LocalEvent::default()
    }
}

impl Event for LocalEvent {
    fn set(&self) {
        self.word.set(&self.futex);
    }
    fn clear(&self) {
        self.word.clear();
    }
    fn is_set(&self) -> bool {
        self.word.is_set()
    }
    fn wait(&self, wait: &mut Wait<'_>) -> Result<bool, AcquireError> {
        self.word.wait(&self.futex, wait)
    }
}

/// The shared-memory event: an [`EventWord`] in an arena slot, with the kernel futex.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct ShmEvent {
    slot: super::arena::TypedSlot<EventWord>,
}

// SAFETY: `ShmEvent::new` initialises every Event slot as an `EventWord`: atomics only, far
// smaller than a slot body.
#[cfg(not(loom))]
unsafe impl super::arena::SlotBody for EventWord {
    const KIND: super::arena::Kind = super::arena::Kind::new(2);
}

#[cfg(not(loom))]
impl ShmEvent {
    /// Allocates a clear event in `arena`.
    pub fn new(
        arena: &std::sync::Arc<super::arena::Arena>,
    ) -> Result<ShmEvent, super::error::AttachError> {
        Ok(ShmEvent {
            slot: super::arena::TypedSlot::new(arena, EventWord::new())?,
        })
    }

    /// Attaches to the event `handle` names.
    pub fn attach(
        arena: &std::sync::Arc<super::arena::Arena>,
        handle: super::arena::Handle,
    ) -> Result<ShmEvent, super::error::AttachError> {
        Ok(ShmEvent {
            slot: super::arena::TypedSlot::attach(arena, handle)?,
        })
    }

    /// The handle to send to another process.
    pub fn handle(&self) -> super::arena::Handle {
        self.slot.handle()
    }

    fn word(&self) -> &EventWord {
        self.slot.body()
    }

    /// Threads of any process inside `wait` right now (tests, diagnostics).
    pub fn waiters(&self) -> u32 {
        self.word().waiters()
    }
}

#[cfg(not(loom))]
impl Event for ShmEvent {
    fn set(&self) {
        self.word().set(&super::futex::ShmFutex);
    }
    fn clear(&self) {
        self.word().clear();
    }
    fn is_set(&self) -> bool {
        self.word().is_set()
    }
    fn wait(&self, wait: &mut Wait<'_>) -> Result<bool, AcquireError> {
        self.word().wait(&super::futex::ShmFutex, wait)
    }
}
