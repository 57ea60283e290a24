//! Loom models of the queue's blocking protocol (`queue.Queue`'s: `put` sleeps while full,
//! `get` while empty, `join` until every item is `task_done`) in its in-process twin
//! [`LocalQueue`], built on `crate::sync`'s mutex and condvar. A lost wake-up shows up as a
//! deadlock. Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     CARGO_TARGET_DIR=target/loom cargo test -p gilfree-core --release loom_
//! ```
//!
//! The `Shm*` queue keeps its words under a robust pthread mutex and sleeps on kernel futexes,
//! which loom cannot see into; the conformance suite runs both twins against one set of tests.
#![cfg(loom)]

use gilfree_core::ipc::queue::{ByteQueue, LocalQueue};
use gilfree_core::Wait;
use loom::sync::Arc;
use loom::thread;

/// A producer puts two items into a queue of `maxsize` 1 while a consumer takes them: the
/// producer sleeps while full and the consumer while empty, each is woken by the other, and
/// the items arrive once each, in order.
#[test]
fn loom_queue_put_get_hand_off() {
    loom::model(|| {
        let q = Arc::new(LocalQueue::new(1, 1 << 20));
        let q2 = q.clone();
        let producer = thread::spawn(move || {
            for item in [b"a", b"b"] {
                q2.put(item, true, &mut Wait::forever()).unwrap();
            }
        });
        let got: Vec<Vec<u8>> = (0..2)
            .map(|_| q.get(true, &mut Wait::forever()).unwrap())
            .collect();
        producer.join().unwrap();
        assert_eq!(got, [b"a".to_vec(), b"b".to_vec()]);
        assert!(q.is_empty());
    });
}

/// Two consumers wait on an empty queue and one producer puts two items: both consumers wake,
/// and each item goes to exactly one of them.
#[test]
fn loom_queue_two_getters() {
    loom::model(|| {
        let q = Arc::new(LocalQueue::new(0, 1 << 20));
        let getters: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                thread::spawn(move || q.get(true, &mut Wait::forever()).unwrap())
            })
            .collect();
        q.put(b"x", true, &mut Wait::forever()).unwrap();
        q.put(b"y", true, &mut Wait::forever()).unwrap();
        let mut got: Vec<Vec<u8>> = getters.into_iter().map(|g| g.join().unwrap()).collect();
        got.sort();
        assert_eq!(got, [b"x".to_vec(), b"y".to_vec()]);
    });
}

/// `join` waits until the consumer has marked the item done: it always wakes, and never
/// before `task_done` (a `task_done` too many would then fail).
#[test]
fn loom_queue_join_waits_for_task_done() {
    loom::model(|| {
        let q = Arc::new(LocalQueue::new(0, 1 << 20));
        q.put(b"job", true, &mut Wait::forever()).unwrap();
        let q2 = q.clone();
        let worker = thread::spawn(move || {
            q2.get(true, &mut Wait::forever()).unwrap();
            q2.task_done().unwrap();
        });
        q.join(&mut Wait::forever()).unwrap();
        assert!(q.task_done().is_err(), "join returned before task_done");
        worker.join().unwrap();
    });
}
