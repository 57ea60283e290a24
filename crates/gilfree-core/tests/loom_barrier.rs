//! Loom models of the barrier's state machine (`threading.Barrier`'s algorithm: a count and
//! `FILLING`/`DRAINING`/`RESETTING`/`BROKEN` under a mutex) in its in-process twin
//! [`LocalBarrier`], built on `crate::sync`'s mutex and condvar. A lost wake-up shows up as a
//! deadlock. Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     CARGO_TARGET_DIR=target/loom cargo test -p gilfree-core --release loom_
//! ```
//!
//! The `Shm*` barrier runs the same steps on a robust pthread mutex and a kernel futex, which
//! loom cannot see into; the conformance suite runs both twins against one set of tests.
#![cfg(loom)]

use gilfree_core::ipc::barrier::{Barrier, LocalBarrier};
use gilfree_core::ipc::error::BarrierError;
use gilfree_core::Wait;
use loom::sync::Arc;
use loom::thread;

/// Two parties pass the barrier twice. The thread that finishes the first round may arrive
/// for the second while the other is still draining the first: it must wait for the drain,
/// and be woken when the barrier refills. Each round hands out the indices 0 and 1 once.
#[test]
fn loom_barrier_two_rounds() {
    loom::model(|| {
        let b = Arc::new(LocalBarrier::new(2));
        let b2 = b.clone();
        let other = thread::spawn(move || {
            let first = b2.pass(&mut Wait::forever()).unwrap();
            let second = b2.pass(&mut Wait::forever()).unwrap();
            (first, second)
        });
        let first = b.pass(&mut Wait::forever()).unwrap();
        let second = b.pass(&mut Wait::forever()).unwrap();
        let (o1, o2) = other.join().unwrap();
        let mut round1 = [first, o1];
        let mut round2 = [second, o2];
        round1.sort_unstable();
        round2.sort_unstable();
        assert_eq!(round1, [0, 1], "each arrival index once per round");
        assert_eq!(round2, [0, 1], "each arrival index once per round");
        assert_eq!(b.n_waiting(), 0);
        assert!(!b.broken());
    });
}

/// A party waits for a partner that never comes while another thread aborts: the waiter is
/// always woken with `Broken` (whether it arrived before or after the abort).
#[test]
fn loom_barrier_abort_wakes_waiter() {
    loom::model(|| {
        let b = Arc::new(LocalBarrier::new(2));
        let b2 = b.clone();
        let waiter = thread::spawn(move || b2.pass(&mut Wait::forever()));
        b.abort();
        assert!(matches!(waiter.join().unwrap(), Err(BarrierError::Broken)));
        assert!(b.broken());
    });
}

/// `reset` while a party waits: the waiter is woken with `Broken`, and once it has left, the
/// barrier is usable again (the last to leave a resetting barrier refills it): the waiter's
/// second try and this thread's one pass meet.
#[test]
fn loom_barrier_reset_wakes_waiter_and_refills() {
    loom::model(|| {
        let b = Arc::new(LocalBarrier::new(2));
        let b2 = b.clone();
        let waiter = thread::spawn(move || match b2.pass(&mut Wait::forever()) {
            Ok(i) => i,
            // The reset came while it waited: try once more.
            Err(BarrierError::Broken) => b2.pass(&mut Wait::forever()).unwrap(),
            Err(e) => panic!("{e:?}"),
        });
        b.reset();
        let mine = b.pass(&mut Wait::forever()).unwrap();
        let theirs = waiter.join().unwrap();
        assert_eq!(mine + theirs, 1, "indices 0 and 1");
        assert!(!b.broken());
    });
}
