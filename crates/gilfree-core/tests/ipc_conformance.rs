//! One conformance suite per process-shared primitive, run against both the shared-memory
//! implementation (`Shm*`, in an arena slot) and its in-process twin (`Local*`), iceoryx2
//! style; plus the arena's own bookkeeping (refcounts, stale handles, reaping).
#![cfg(not(loom))]

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use gilfree_core::ipc::arena::{Arena, Kind};
use gilfree_core::ipc::error::{Acquired, AttachError, ReleaseError};
use gilfree_core::ipc::event::{Event, LocalEvent, ShmEvent};
use gilfree_core::ipc::lock::{LocalLock, RawLock, ShmLock};
use gilfree_core::ipc::semaphore::{LocalSemaphore, Semaphore, ShmSemaphore};
use gilfree_core::Wait;

/// Generous bound for any wait that must succeed (a hang guard, never asserted).
const STEP: Duration = Duration::from_secs(60);

fn step() -> Wait<'static> {
    Wait::timeout(Some(STEP))
}

fn short() -> Wait<'static> {
    Wait::timeout(Some(Duration::from_millis(10)))
}

fn arena() -> Arc<Arena> {
    Arena::create().expect("arena")
}

// ---- Lock / RLock ------------------------------------------------------------------------

fn lock_basics(lock: &impl RawLock) {
    assert!(!lock.locked());
    assert_eq!(lock.release(), Err(ReleaseError::Unlocked));
    assert_eq!(lock.acquire(&mut step()).unwrap(), Acquired::Clean);
    assert!(lock.locked() && lock.is_owned());
    assert!(lock.try_acquire().unwrap().is_none());
    assert!(lock.acquire(&mut short()).is_err());
    thread::scope(|s| {
        s.spawn(|| {
            assert!(!lock.is_owned());
            assert!(lock.try_acquire().unwrap().is_none());
            assert_eq!(lock.release(), Err(ReleaseError::NotOwner));
        });
    });
    lock.release().unwrap();
    assert!(!lock.locked());
}

fn lock_hand_off(lock: &impl RawLock) {
    let mut counter = 0u64;
    let counter_ptr = std::sync::Mutex::new(&mut counter);
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..500 {
                    lock.acquire(&mut step()).unwrap();
                    **counter_ptr.lock().unwrap() += 1;
                    lock.release().unwrap();
                }
            });
        }
    });
    assert_eq!(counter, 2000);
}

fn rlock_recursion(lock: &impl RawLock) {
    lock.acquire(&mut step()).unwrap();
    lock.acquire(&mut step()).unwrap();
    assert!(lock.try_acquire().unwrap().is_some());
    assert_eq!(lock.release_save().unwrap(), 3);
    assert!(!lock.locked());
    lock.acquire_restore(3);
    for _ in 0..3 {
        lock.release().unwrap();
    }
    assert!(!lock.locked());
    assert_eq!(lock.release(), Err(ReleaseError::Unlocked));
}

#[test]
fn lock_local() {
    lock_basics(&LocalLock::new(false));
    lock_hand_off(&LocalLock::new(false));
    rlock_recursion(&LocalLock::new(true));
}

#[test]
fn lock_shm() {
    let a = arena();
    lock_basics(&ShmLock::new(&a, false).unwrap());
    lock_hand_off(&ShmLock::new(&a, false).unwrap());
    rlock_recursion(&ShmLock::new(&a, true).unwrap());
}

#[test]
fn lock_owner_death_local() {
    let lock = LocalLock::new(false);
    lock.acquire(&mut step()).unwrap();
    lock.abandon();
    assert_eq!(lock.acquire(&mut step()).unwrap(), Acquired::OwnerDied);
    lock.release().unwrap();
    assert_eq!(lock.acquire(&mut step()).unwrap(), Acquired::Clean);
}

#[test]
fn lock_owner_death_shm() {
    // A thread that exits holding a robust mutex is a dead owner to the kernel.
    let a = arena();
    let lock = ShmLock::new(&a, false).unwrap();
    thread::scope(|s| {
        s.spawn(|| lock.acquire(&mut step()).unwrap());
    });
    assert!(!lock.locked());
    assert_eq!(lock.acquire(&mut step()).unwrap(), Acquired::OwnerDied);
    lock.release().unwrap();
    assert_eq!(lock.acquire(&mut step()).unwrap(), Acquired::Clean);
    lock.release().unwrap();
}

// ---- Event -------------------------------------------------------------------------------

fn event_suite(ev: &impl Event) {
    assert!(!ev.is_set());
    assert!(!ev.wait(&mut short()).unwrap());
    thread::scope(|s| {
        let waiter = s.spawn(|| ev.wait(&mut step()).unwrap());
        ev.set();
        assert!(waiter.join().unwrap());
    });
    assert!(ev.is_set() && ev.wait(&mut short()).unwrap());
    ev.clear();
    assert!(!ev.is_set());
}

#[test]
fn event_local() {
    event_suite(&LocalEvent::new());
}

#[test]
fn event_shm() {
    event_suite(&ShmEvent::new(&arena()).unwrap());
}

// ---- Semaphore ---------------------------------------------------------------------------

fn semaphore_suite(sem: &impl Semaphore, bounded: bool) {
    assert_eq!(sem.value(), 2);
    assert!(sem.try_acquire() && sem.try_acquire() && !sem.try_acquire());
    assert!(!sem.acquire(&mut short()).unwrap());
    thread::scope(|s| {
        let waiter = s.spawn(|| sem.acquire(&mut step()).unwrap());
        sem.release(1).unwrap();
        assert!(waiter.join().unwrap());
    });
    sem.release(2).unwrap();
    assert_eq!(sem.value(), 2);
    if bounded {
        assert_eq!(sem.release(1), Err(ReleaseError::TooMany));
    } else {
        sem.release(1).unwrap();
        assert_eq!(sem.value(), 3);
    }
}

#[test]
fn semaphore_local() {
    semaphore_suite(&LocalSemaphore::new(2, false), false);
    semaphore_suite(&LocalSemaphore::new(2, true), true);
}

#[test]
fn semaphore_shm() {
    let a = arena();
    semaphore_suite(&ShmSemaphore::new(&a, 2, false).unwrap(), false);
    semaphore_suite(&ShmSemaphore::new(&a, 2, true).unwrap(), true);
}

#[test]
fn semaphore_permits_of_the_dead_come_back_local() {
    let sem = LocalSemaphore::new(1, true);
    assert!(sem.try_acquire());
    sem.abandon();
    assert!(sem.try_acquire());
}

// ---- Arena -------------------------------------------------------------------------------

#[test]
fn arena_refcounts_and_stale_handles() {
    let a = arena();
    let ev = ShmEvent::new(&a).unwrap();
    let handle = ev.handle();
    let again = ShmEvent::attach(&a, handle).unwrap();
    assert_eq!(a.live_slots(), 1);
    drop(ev);
    assert_eq!(a.live_slots(), 1);
    again.set();
    drop(again);
    assert_eq!(a.live_slots(), 0);
    assert!(matches!(
        ShmEvent::attach(&a, handle),
        Err(AttachError::Stale)
    ));
    // The slot is reused with a new generation; the old handle stays stale.
    let reused = ShmEvent::new(&a).unwrap();
    assert_eq!(reused.handle() as u32, handle as u32);
    assert_ne!(reused.handle(), handle);
    assert!(!reused.is_set());
    // The wrong kind is refused too.
    assert!(matches!(
        ShmSemaphore::attach(&a, reused.handle()),
        Err(AttachError::Stale)
    ));
}

#[test]
fn arena_fills_up_and_frees() {
    let a = arena();
    let mut all = Vec::new();
    loop {
        match ShmEvent::new(&a) {
            Ok(e) => all.push(e),
            Err(AttachError::Full) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(all.len(), gilfree_core::ipc::arena::SLOT_COUNT as usize - 1);
    all.clear();
    assert_eq!(a.live_slots(), 0);
    assert!(ShmEvent::new(&a).is_ok());
}

#[test]
fn arena_reap_drops_refs_of_a_dead_pid() {
    // Another process's attachment, simulated by a second mapping that claims a fake pid is
    // not possible from here; reaping our own pid must free what only we held.
    let a = arena();
    let sem = ShmSemaphore::new(&a, 1, true).unwrap();
    assert!(sem.try_acquire());
    let handle = sem.handle();
    std::mem::forget(sem); // abandoned: as if this process died
    a.reap(std::process::id());
    assert_eq!(a.live_slots(), 0);
    assert!(matches!(
        a.attach(handle, Kind::Semaphore),
        Err(AttachError::Stale)
    ));
}
