//! Loom models of the bulk segment protocol (`gilfree_core::shm::bulk`): a receiver's pin
//! against the owner's refill. Loom checks every data byte read against the owner's writes, so
//! a view that could see a refill shows up as a data race, and a wrong hand-off as a failed
//! assertion. Run with `make loom`.
#![cfg(loom)]

use gilfree_core::shm::bulk::local::{LocalBulk, LocalFactory};
use gilfree_core::shm::bulk::{attach, BulkPool, BulkRef, Stale};
use loom::sync::{Arc, Mutex};
use loom::thread;

type Shared = Arc<Mutex<Option<(BulkRef, std::sync::Arc<LocalBulk>)>>>;

fn fill(pool: &mut BulkPool<LocalFactory>, byte: u8) -> (BulkRef, std::sync::Arc<LocalBulk>) {
    let mut f = pool.take(2).unwrap();
    f.write(0, &[byte, byte]);
    let s = f.storage().clone();
    (f.publish(), s)
}

/// The owner publishes, a receiver loads and reads while the owner keeps trying to refill
/// the same size class. The receiver always reads what was sent; the owner refills only a
/// segment nobody views.
#[test]
fn loom_bulk_view_survives_refill_attempts() {
    loom::model(|| {
        let mut pool = BulkPool::new(LocalFactory, 0, 2);
        let (r, s) = fill(&mut pool, 1);
        let slot: Shared = Arc::new(Mutex::new(Some((r, s))));
        let rx = slot.clone();
        let receiver = thread::spawn(move || {
            let (r, s) = rx.lock().unwrap().take().unwrap();
            let p = attach(s, &r).expect("a fresh blob loads");
            let mut got = [0u8; 2];
            p.read(0, &mut got);
            assert_eq!(got, [1, 1]);
        });
        // Racing the receiver: a refill may take the first segment only once it is free.
        let (r2, s2) = fill(&mut pool, 2);
        let mut got = [0u8; 2];
        let p2 = attach(s2, &r2).unwrap();
        p2.read(0, &mut got);
        assert_eq!(got, [2, 2]);
        drop(p2);
        receiver.join().unwrap();
        assert!(pool.stats().segments <= 2);
    });
}

/// A blob loaded a second time, racing its owner's refill: the late load either pins the old
/// generation (and reads its bytes) or is refused as stale; never the new bytes.
#[test]
fn loom_bulk_late_load_is_stale_or_old() {
    loom::model(|| {
        let mut pool = BulkPool::new(LocalFactory, 0, 2);
        let (r, s) = fill(&mut pool, 1);
        drop(attach(s.clone(), &r).unwrap()); // the first load: claimed and let go
        let late = thread::spawn(move || match attach(s, &r) {
            Ok(p) => {
                let mut got = [0u8; 2];
                p.read(0, &mut got);
                assert_eq!(got, [1, 1]);
            }
            Err(Stale) => {}
        });
        let mut f = pool.take(2).unwrap();
        f.write(0, &[2, 2]);
        let _r2 = f.publish();
        late.join().unwrap();
    });
}

/// A receiver re-sends what it maps and lets go of its pin at once; a third party loads the
/// forwarded blob while the owner tries to refill. The unclaimed ticket alone keeps the bytes
/// until the third party has pinned them.
#[test]
fn loom_bulk_resend_ticket_protects_without_a_pin() {
    loom::model(|| {
        let mut pool = BulkPool::new(LocalFactory, 0, 2);
        let (r, s) = fill(&mut pool, 1);
        let mine = attach(s.clone(), &r).unwrap();
        let fwd = mine.resend(99).unwrap();
        let s_theirs = s.clone();
        let third = thread::spawn(move || {
            let p = attach(s_theirs, &fwd).expect("a forwarded blob loads");
            let mut got = [0u8; 2];
            p.read(0, &mut got);
            assert_eq!(got, [1, 1]);
        });
        let releaser = thread::spawn(move || drop(mine));
        let (r2, s2) = fill(&mut pool, 2);
        let p = attach(s2, &r2).unwrap();
        let mut got = [0u8; 2];
        p.read(0, &mut got);
        assert_eq!(got, [2, 2]);
        drop(p);
        third.join().unwrap();
        releaser.join().unwrap();
    });
}
