//! `Event`: a flag that threads of any process can set, clear and wait for.
//!
//! # Layout ([`EventWord`], `#[repr(C)]`, 8 bytes)
//! | offset | field     | meaning                                                 |
//! |--------|-----------|---------------------------------------------------------|
//! | 0      | `flag`    | 0 = clear, 1 = set; the futex word waiters sleep on      |
//! | 4      | `waiters` | how many threads are between steps 2 and 4 of `wait`     |
//!
//! Any process attached to the event writes `flag` (set/clear) and `waiters` (its waits).
//!
//! # Protocol
//! `set`: swap `flag` to 1 (SeqCst), then load `waiters`; wake all sleepers if it is not 0.
//! `clear`: store `flag = 0`.
//! `wait`:
//! 1. `flag == 1` → return `true`.
//! 2. `waiters += 1` (SeqCst), then re-load `flag`; 1 → `waiters -= 1`, return `true`.
//! 3. Futex-wait while `flag == 0` (one slice, see [`super::futex`]).
//! 4. `waiters -= 1`; on timeout return the flag; on interrupt stop; else go to 1.
//!
//! No wake-up is lost: steps 2 of `wait` and of `set` are each an RMW, a `fence(SeqCst)`, then a
//! load of the other's word (Dekker; the fences are what loom checks), so either the waiter sees `flag == 1` or the setter sees
//! `waiters > 0` and wakes; and the kernel checks `flag == 0` atomically with sleeping.
//!
//! # When a process dies
//! Nothing is held. A waiter that dies leaves `waiters` too high, which only costs later
//! `set` calls a needless wake system call.

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
    flag: AtomicU32,
    waiters: AtomicU32,
}

impl EventWord {
    /// A clear event with no waiters.
    pub fn new() -> EventWord {
        EventWord::default()
    }

    /// `set` of the protocol.
    pub fn set(&self, futex: &impl Futex) {
        self.flag.swap(1, SeqCst);
        fence(SeqCst);
        if self.waiters.load(SeqCst) != 0 {
            futex.wake(&self.flag, u32::MAX);
        }
    }

    /// `clear` of the protocol.
    pub fn clear(&self) {
        self.flag.store(0, SeqCst);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.flag.load(SeqCst) == 1
    }

    /// `wait` of the protocol.
    pub fn wait(&self, futex: &impl Futex, wait: &mut Wait<'_>) -> Result<bool, AcquireError> {
        loop {
            if self.is_set() {
                return Ok(true);
            }
            self.waiters.fetch_add(1, SeqCst);
            fence(SeqCst);
            if self.is_set() {
                self.waiters.fetch_sub(1, SeqCst);
                return Ok(true);
            }
            let slept = futex.wait(&self.flag, 0, wait);
            self.waiters.fetch_sub(1, SeqCst);
            match slept {
                Ok(()) => {}
                Err(WaitError::Timeout) => return Ok(self.is_set()),
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
    const KIND: super::arena::Kind = super::arena::Kind::Event;
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
