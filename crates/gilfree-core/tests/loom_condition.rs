//! Loom models of the condition's word protocol ([`CondWord`] over a [`LocalFutex`], through
//! `crate::sync`): a notify after the waiter released the lock is never lost (a lost wake-up
//! shows up as a deadlock), and tokens are neither lost nor handed out twice. Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     CARGO_TARGET_DIR=target/loom cargo test -p gilfree-core --release loom_
//! ```
//!
//! The lock beside the word is [`ModelLock`], a plain loom mutex with an owner: the `Shm*`
//! lock is a robust pthread mutex loom cannot see into, and the protocol only needs the
//! [`RawLock`] contract from it.
#![cfg(loom)]

use gilfree_core::ipc::condition::{Condition, LocalCondition};
use gilfree_core::ipc::error::{AcquireError, Acquired, ReleaseError};
use gilfree_core::ipc::lock::RawLock;
use gilfree_core::Wait;
use loom::sync::atomic::AtomicU32;
use loom::sync::atomic::Ordering::Relaxed;
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread::{self, ThreadId};

/// A non-recursive lock with an owner, enough for the [`RawLock`] contract the condition uses.
#[derive(Default)]
struct ModelLock {
    owner: Mutex<Option<ThreadId>>,
    freed: Condvar,
}

impl ModelLock {
    fn me() -> Option<ThreadId> {
        Some(thread::current().id())
    }
}

impl RawLock for ModelLock {
    fn acquire(&self, _wait: &mut Wait<'_>) -> Result<Acquired, AcquireError> {
        let mut owner = self.owner.lock().unwrap();
        while owner.is_some() {
            owner = self.freed.wait(owner).unwrap();
        }
        *owner = Self::me();
        Ok(Acquired::Clean)
    }
    fn try_acquire(&self) -> Result<Option<Acquired>, AcquireError> {
        let mut owner = self.owner.lock().unwrap();
        if owner.is_some() {
            return Ok(None);
        }
        *owner = Self::me();
        Ok(Some(Acquired::Clean))
    }
    fn release(&self) -> Result<(), ReleaseError> {
        self.release_save().map(|_| ())
    }
    fn locked(&self) -> bool {
        self.owner.lock().unwrap().is_some()
    }
    fn is_owned(&self) -> bool {
        *self.owner.lock().unwrap() == Self::me()
    }
    fn release_save(&self) -> Result<u32, ReleaseError> {
        let mut owner = self.owner.lock().unwrap();
        match *owner {
            None => Err(ReleaseError::Unlocked),
            o if o != Self::me() => Err(ReleaseError::NotOwner),
            _ => {
                *owner = None;
                self.freed.notify_one();
                Ok(1)
            }
        }
    }
    fn acquire_restore(&self, _depth: u32) -> Acquired {
        self.acquire(&mut Wait::forever()).unwrap()
    }
}

/// A `threading.Condition` as Python code uses it: the lock, the condition word, and a
/// predicate (`tickets`) that only the lock holder touches. Its accesses are `Relaxed`: only
/// the lock orders them, so a waiter that returned from `wait` without the lock's hand-off
/// could read a stale count.
#[derive(Default)]
struct Cond {
    lock: ModelLock,
    cond: LocalCondition,
    tickets: AtomicU32,
}

impl Cond {
    /// With the lock held: `f(tickets)`.
    fn with_tickets<R>(&self, f: impl FnOnce(&mut u32) -> R) -> R {
        assert!(self.lock.is_owned());
        let mut t = self.tickets.load(Relaxed);
        let r = f(&mut t);
        self.tickets.store(t, Relaxed);
        r
    }

    /// `with cond: cond.wait_for(lambda: tickets > 0); tickets -= 1`.
    fn take_ticket(&self) {
        self.lock.acquire(&mut Wait::forever()).unwrap();
        while self.with_tickets(|t| *t == 0) {
            assert!(self.cond.wait(&self.lock, &mut Wait::forever()).unwrap());
        }
        self.with_tickets(|t| *t -= 1);
        self.lock.release().unwrap();
    }

    /// `with cond: tickets += n; cond.notify(n)`.
    fn give_tickets(&self, n: u32) {
        self.lock.acquire(&mut Wait::forever()).unwrap();
        self.with_tickets(|t| *t += n);
        self.cond.notify(n);
        self.lock.release().unwrap();
    }
}

/// A waiter and a notifier: whatever the interleaving, the waiter wakes (step 1 reads `seq`
/// before the lock is released, so a notify that follows the release changes it).
#[test]
fn loom_condition_notify_wakes_waiter() {
    loom::model(|| {
        let c = Arc::new(Cond::default());
        let c2 = c.clone();
        let waiter = thread::spawn(move || c2.take_ticket());
        c.give_tickets(1);
        waiter.join().unwrap();
        assert_eq!(c.cond.waiters(), 0);
    });
}

/// Two waiters and two `notify(1)`s: both waiters wake (no token is lost, even when the
/// second waiter arrives after the first notify, or a woken waiter loses the race for a token).
#[test]
fn loom_condition_notify_one_each() {
    loom::model(|| {
        let c = Arc::new(Cond::default());
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let c = c.clone();
                thread::spawn(move || c.take_ticket())
            })
            .collect();
        c.give_tickets(1);
        c.give_tickets(1);
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(c.cond.waiters(), 0);
        c.lock.acquire(&mut Wait::forever()).unwrap();
        assert_eq!(c.with_tickets(|t| *t), 0);
        c.lock.release().unwrap();
    });
}

/// `notify_all` (`notify(u32::MAX)`) with two waiters: both wake, and no token is left over
/// for a later waiter (tokens never exceed waiters).
#[test]
fn loom_condition_notify_all() {
    loom::model(|| {
        let c = Arc::new(Cond::default());
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let c = c.clone();
                thread::spawn(move || c.take_ticket())
            })
            .collect();
        c.lock.acquire(&mut Wait::forever()).unwrap();
        c.with_tickets(|t| *t += 2);
        c.cond.notify(u32::MAX);
        c.lock.release().unwrap();
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(c.cond.waiters(), 0);
    });
}
