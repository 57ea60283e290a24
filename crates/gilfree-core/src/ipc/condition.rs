//! `Condition`: a wait word next to a [`RawLock`] (a `Lock` or `RLock` slot of its own).
//!
//! # Layout ([`CondWord`], `#[repr(C)]`, 16 bytes)
//! | offset | field   | meaning                                                             |
//! |--------|---------|---------------------------------------------------------------------|
//! | 0      | `seq`   | bumped by every notify; the futex word waiters sleep on             |
//! | 8      | `state` | `waiters << 32 | tokens`: threads waiting, and notifications for them |
//!
//! Invariant: `tokens <= waiters`, kept by every CAS of `state`.
//!
//! # Protocol (the caller holds the lock for `wait` and `notify`)
//! `wait`:
//! 1. `waiters += 1`; read `seq` into `s`; release the lock completely (`release_save`).
//! 2. Claim a token: CAS `(w, t)` to `(w - 1, t - 1)` if `t > 0` → notified, go to 5.
//! 3. Futex-wait while `seq == s` (one slice); then `s = seq`, go to 2.
//! 4. Timeout: leave with `(w - 1, t - 1)` if a token is there (notified after all) or
//!    `(w - 1, t)`; interrupt: leave with `(w - 1, min(t, w - 1))`.
//! 5. Re-take the lock at its old depth (`acquire_restore`, uninterruptible).
//!
//! `notify(n)`: CAS `(w, t)` to `(w, min(t + n, w))`, then `seq += 1` and wake every sleeper
//! (they race for the tokens; the losers sleep again). A waiter that arrives after a notify
//! may take its token before an older waiter: `notify(n)` wakes `n` waiters, not necessarily
//! the longest-waiting ones.
//!
//! No wake-up is lost: `s` is read while the lock is held, and `notify` runs under the lock,
//! so a notify after the waiter released the lock changes `seq` and the futex wait returns.
//!
//! # When a process dies
//! The lock is robust (see [`super::lock`]). A waiter that dies stays counted in `waiters`, so
//! a later notify may hand it a token nobody claims: `notify(n)` then wakes fewer than `n`.

use crate::ipc::error::CondWaitError;
use crate::ipc::futex::{Futex, LocalFutex};
use crate::ipc::lock::RawLock;
use crate::ipc::notify::WaitError;
use crate::sync::{AtomicU32, AtomicU64, Ordering::SeqCst};
use crate::Wait;

/// The operations of a `threading.Condition`'s wait word, for both twins. The lock is passed
/// to every `wait` (it is a separate primitive, any [`RawLock`]); `notify_all` is
/// `notify(u32::MAX)`.
pub trait Condition: Sync {
    /// Releases `lock` completely, waits for a notify or the deadline, takes `lock` again at
    /// its old depth: `Ok(true)` if notified, `Ok(false)` on timeout. The lock is held again
    /// whenever this returns, except for [`CondWaitError::NotOwner`].
    fn wait(&self, lock: &impl RawLock, wait: &mut Wait<'_>) -> Result<bool, CondWaitError>;
    /// Wakes at most `n` of the threads waiting now. The caller holds the lock.
    fn notify(&self, n: u32);
    /// Threads waiting right now (not yet notified or gone).
    fn waiters(&self) -> u32;
}

/// The condition's shared words and protocol (module doc), over any [`Futex`].
#[repr(C)]
#[derive(Default)]
pub struct CondWord {
    seq: AtomicU32,
    _pad: AtomicU32,
    state: AtomicU64,
}

fn split(state: u64) -> (u64, u64) {
    (state >> 32, state & 0xffff_ffff)
}

impl CondWord {
    /// A condition with no waiters.
    pub fn new() -> CondWord {
        CondWord::default()
    }

    fn update(&self, mut f: impl FnMut(u64, u64) -> Option<(u64, u64)>) -> bool {
        let mut cur = self.state.load(SeqCst);
        loop {
            let (w, t) = split(cur);
            let Some((w2, t2)) = f(w, t) else {
                return false;
            };
            match self
                .state
                .compare_exchange_weak(cur, w2 << 32 | t2, SeqCst, SeqCst)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// `wait` of the protocol: `Ok(true)` if notified, `Ok(false)` on timeout. The lock is
    /// held again whenever this returns, except for `NotOwner`.
    pub fn wait(
        &self,
        lock: &impl RawLock,
        futex: &impl Futex,
        wait: &mut Wait<'_>,
    ) -> Result<bool, CondWaitError> {
        if !lock.is_owned() {
            return Err(CondWaitError::NotOwner);
        }
        self.update(|w, t| Some((w + 1, t)));
        let mut s = self.seq.load(SeqCst);
        let Ok(depth) = lock.release_save() else {
            self.update(|w, t| Some((w - 1, t.min(w - 1))));
            return Err(CondWaitError::NotOwner);
        };
        let claim = |w: u64, t: u64| (t > 0).then(|| (w - 1, t - 1));
        let outcome = loop {
            if self.update(claim) {
                break Ok(true);
            }
            match futex.wait(&self.seq, s, wait) {
                Ok(()) => s = self.seq.load(SeqCst),
                Err(WaitError::Timeout) => {
                    let mut notified = false;
                    self.update(|w, t| {
                        notified = t > 0;
                        Some(if t > 0 { (w - 1, t - 1) } else { (w - 1, t) })
                    });
                    break Ok(notified);
                }
                Err(e) => {
                    self.update(|w, t| Some((w - 1, t.min(w - 1))));
                    break Err(match e {
                        WaitError::Io(e) => CondWaitError::Io(e),
                        _ => CondWaitError::Interrupted,
                    });
                }
            }
        };
        lock.acquire_restore(depth);
        outcome
    }

    /// `notify(n)` of the protocol. The caller holds the lock.
    pub fn notify(&self, n: u32, futex: &impl Futex) {
        let mut granted = false;
        self.update(|w, t| {
            let t2 = (t + n as u64).min(w);
            granted = t2 > t;
            Some((w, t2))
        });
        if granted {
            self.seq.fetch_add(1, SeqCst);
            futex.wake(&self.seq, u32::MAX);
        }
    }

    /// Threads waiting right now (not yet notified or gone).
    pub fn waiters(&self) -> u32 {
        let (w, t) = split(self.state.load(SeqCst));
        (w - t) as u32
    }
}

/// The in-process twin: a [`CondWord`] with a [`LocalFutex`].
#[derive(Default)]
pub struct LocalCondition {
    word: CondWord,
    futex: LocalFutex,
}

impl LocalCondition {
    /// A condition with no waiters.
    pub fn new() -> LocalCondition {
        LocalCondition::default()
    }
}

impl Condition for LocalCondition {
    fn wait(&self, lock: &impl RawLock, wait: &mut Wait<'_>) -> Result<bool, CondWaitError> {
        self.word.wait(lock, &self.futex, wait)
    }
    fn notify(&self, n: u32) {
        self.word.notify(n, &self.futex);
    }
    fn waiters(&self) -> u32 {
        self.word.waiters()
    }
}

/// The shared-memory condition word: a [`CondWord`] in an arena slot. Its lock is a separate
/// [`ShmLock`](super::lock::ShmLock), passed to every `wait`.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct ShmCondition {
    slot: super::arena::TypedSlot<CondWord>,
}

// SAFETY: `ShmCondition::new` initialises every Condition slot as a `CondWord`: atomics only,
// far smaller than a slot body.
#[cfg(not(loom))]
unsafe impl super::arena::SlotBody for CondWord {
    const KIND: super::arena::Kind = super::arena::Kind::new(4);
}

#[cfg(not(loom))]
impl ShmCondition {
    /// Allocates a condition word in `arena`.
    pub fn new(
        arena: &std::sync::Arc<super::arena::Arena>,
    ) -> Result<ShmCondition, super::error::AttachError> {
        Ok(ShmCondition {
            slot: super::arena::TypedSlot::new(arena, CondWord::new())?,
        })
    }

    /// Attaches to the condition `handle` names.
    pub fn attach(
        arena: &std::sync::Arc<super::arena::Arena>,
        handle: super::arena::Handle,
    ) -> Result<ShmCondition, super::error::AttachError> {
        Ok(ShmCondition {
            slot: super::arena::TypedSlot::attach(arena, handle)?,
        })
    }

    /// The handle to send to another process.
    pub fn handle(&self) -> super::arena::Handle {
        self.slot.handle()
    }

    fn word(&self) -> &CondWord {
        self.slot.body()
    }
}

#[cfg(not(loom))]
impl Condition for ShmCondition {
    fn wait(&self, lock: &impl RawLock, wait: &mut Wait<'_>) -> Result<bool, CondWaitError> {
        self.word().wait(lock, &super::futex::ShmFutex, wait)
    }
    fn notify(&self, n: u32) {
        self.word().notify(n, &super::futex::ShmFutex);
    }
    fn waiters(&self) -> u32 {
        self.word().waiters()
    }
}
