//! Loom models of the process-shared primitives' word protocols: the arena's lock-free free
//! list, and the event and semaphore futex protocols (a lost wake-up shows up as a deadlock).
//! Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     CARGO_TARGET_DIR=target/loom cargo test -p gilfree-core --release loom_
//! ```
#![cfg(loom)]

use gilfree_core::ipc::event::{Event, LocalEvent};
use gilfree_core::ipc::free_list;
use gilfree_core::ipc::semaphore::{LocalSemaphore, Semaphore};
use gilfree_core::Wait;
use loom::sync::atomic::{AtomicU32, AtomicU64};
use loom::sync::Arc;
use loom::thread;

struct List {
    head: AtomicU64,
    next: Vec<AtomicU32>,
}

impl List {
    /// Slots 1..=n free (index 0 is "none").
    fn new(n: u32) -> Arc<List> {
        let list = List {
            head: AtomicU64::new(0),
            next: (0..=n).map(|_| AtomicU32::new(0)).collect(),
        };
        for i in (1..=n).rev() {
            list.push(i);
        }
        Arc::new(list)
    }
    fn pop(&self) -> Option<u32> {
        free_list::pop(&self.head, |i| &self.next[i as usize])
    }
    fn push(&self, i: u32) {
        free_list::push(&self.head, i, |j| &self.next[j as usize]);
    }
}

/// Two threads pop, push back and pop again while a third pops: no index is ever handed to
/// two owners at once (ABA included), and none is lost.
#[test]
fn loom_arena_free_list() {
    loom::model(|| {
        let list = List::new(2);
        let l1 = list.clone();
        let t1 = thread::spawn(move || {
            let a = l1.pop();
            if let Some(a) = a {
                l1.push(a);
            }
            l1.pop()
        });
        let l2 = list.clone();
        let t2 = thread::spawn(move || l2.pop());
        let a = t1.join().unwrap();
        let b = t2.join().unwrap();
        let c = list.pop();
        let mut got: Vec<u32> = [a, b, c].into_iter().flatten().collect();
        got.sort_unstable();
        assert_eq!(got, vec![1, 2], "each index handed out once, none lost");
        assert_eq!(list.pop(), None);
    });
}

/// A waiter and a setter: the waiter always wakes.
#[test]
fn loom_event_wakes_waiter() {
    loom::model(|| {
        let ev = Arc::new(LocalEvent::new());
        let e2 = ev.clone();
        let t = thread::spawn(move || e2.set());
        assert!(ev.wait(&mut Wait::forever()).unwrap());
        t.join().unwrap();
    });
}

/// Two threads share one permit, each taking and giving it back; neither is lost.
#[test]
fn loom_semaphore_permit_hand_off() {
    loom::model(|| {
        let sem = Arc::new(LocalSemaphore::new(1, true));
        let s2 = sem.clone();
        let t = thread::spawn(move || {
            assert!(s2.acquire(&mut Wait::forever()).unwrap());
            s2.release(1).unwrap();
        });
        assert!(sem.acquire(&mut Wait::forever()).unwrap());
        sem.release(1).unwrap();
        t.join().unwrap();
        assert_eq!(sem.value(), 1);
    });
}

/// A waiter on an empty semaphore and a releaser: the waiter always wakes.
#[test]
fn loom_semaphore_release_wakes_waiter() {
    loom::model(|| {
        let sem = Arc::new(LocalSemaphore::new(0, false));
        let s2 = sem.clone();
        let t = thread::spawn(move || s2.release(1).unwrap());
        assert!(sem.acquire(&mut Wait::forever()).unwrap());
        t.join().unwrap();
        assert_eq!(sem.value(), 0);
    });
}

/// One arena slot's counts ([`refcount`]): the parent holds a reference throughout and
/// attaches and detaches once more; a child attaches and detaches while it may die at any
/// step; once the child is gone (dead or done) the engine reaps it, concurrently with the
/// parent, and the reaper itself may die mid-reap. The slot is never retired while the parent
/// holds it, and retired exactly once at the end when nobody died.
#[test]
fn loom_arena_counts() {
    use gilfree_core::ipc::refcount::{self, Step};
    use loom::sync::Mutex;

    struct Slot {
        meta: Mutex<()>,
        refs: AtomicU32,
        parent: AtomicU32,
        child: AtomicU32,
        retired: AtomicU32,
    }
    impl Slot {
        fn retire(&self) {
            assert_eq!(
                self.parent.load(loom::sync::atomic::Ordering::Relaxed),
                0,
                "retired while the parent holds it"
            );
            self.retired
                .fetch_add(1, loom::sync::atomic::Ordering::Relaxed);
        }
        fn attach(&self, entry: &AtomicU32, die: Option<Step>) -> bool {
            let _m = self.meta.lock().unwrap();
            refcount::attach(&self.refs, entry, |s| Some(s) == die).is_ok()
        }
        fn detach(&self, entry: &AtomicU32, die: Option<Step>) -> bool {
            let _m = self.meta.lock().unwrap();
            match refcount::detach(&self.refs, entry, || {}, |s| Some(s) == die) {
                Ok(true) => self.retire(),
                Ok(false) => {}
                Err(_) => return false,
            }
            true
        }
        fn reap(&self, entry: &AtomicU32, die: Option<Step>) {
            let _m = self.meta.lock().unwrap();
            let release = || entry.store(0, loom::sync::atomic::Ordering::Relaxed);
            if refcount::reap(&self.refs, entry, release, |s| Some(s) == die) == Ok(true) {
                self.retire();
            }
        }
    }

    let deaths = [
        None,
        Some(Step::AttachCounted),
        Some(Step::DetachEntry),
        Some(Step::ReapEntry),
    ];
    for death in deaths {
        loom::model(move || {
            let slot = Arc::new(Slot {
                meta: Mutex::new(()),
                refs: AtomicU32::new(1),
                parent: AtomicU32::new(1),
                child: AtomicU32::new(0),
                retired: AtomicU32::new(0),
            });
            let p = slot.clone();
            let parent = thread::spawn(move || {
                assert!(p.attach(&p.parent, None));
                assert!(p.detach(&p.parent, None));
            });
            let c = slot.clone();
            let child = thread::spawn(move || {
                if c.attach(&c.child, death) {
                    c.detach(&c.child, death);
                }
            });
            child.join().unwrap();
            slot.reap(&slot.child, death);
            parent.join().unwrap();
            assert_eq!(slot.retired.load(loom::sync::atomic::Ordering::Relaxed), 0);
            // The parent's last reference.
            assert!(slot.detach(&slot.parent, None));
            let retired = slot.retired.load(loom::sync::atomic::Ordering::Relaxed);
            assert!(retired <= 1);
            if death.is_none() {
                assert_eq!(retired, 1, "nobody died: the slot is freed");
            }
        });
    }
}
