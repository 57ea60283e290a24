//! The conformance suite of the bulk protocol: every test runs on the in-process twin
//! ([`LocalFactory`]) and on sealed memfd segments ([`ShmFactory`]).

use std::sync::Arc;

use super::local::LocalFactory;
use super::*;

/// Runs `$body` with `$f` bound to each factory.
macro_rules! conformance {
    ($($name:ident($f:ident) $body:block)*) => {
        mod local_twin {
            use super::*;
            $(#[test] fn $name() { let $f = LocalFactory; $body })*
        }
        mod shared_memory {
            use super::*;
            $(#[test] fn $name() { let $f = ShmFactory; $body })*
        }
    };
}

fn fill<F: BulkFactory>(pool: &mut BulkPool<F>, bytes: &[u8]) -> (BulkRef, Arc<F::Storage>) {
    let mut f = pool.take(bytes.len()).unwrap();
    f.write(0, bytes);
    let storage = f.storage().clone();
    (f.publish(), storage)
}

fn read<S: BulkStorage>(p: &Pinned<S>, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    p.read(0, &mut v);
    v
}

conformance! {
    round_trip_and_claim(factory) {
        let mut pool = BulkPool::new(factory, 7 << 32, 4);
        let (r, s) = fill(&mut pool, b"hello bulk");
        assert_eq!(r.id, (7 << 32) + 1);
        assert_eq!(s.header().unclaimed(), 1);
        let p = attach(s.clone(), &r).unwrap();
        assert_eq!(read(&p, 10), b"hello bulk");
        assert_eq!(s.header().unclaimed(), 0);
        assert_eq!(s.header().pins(), 1);
        drop(p);
        assert_eq!(s.header().pins(), 0);
    }

    an_unclaimed_ticket_keeps_the_segment(factory) {
        let mut pool = BulkPool::new(factory, 0, 4);
        let (r1, s1) = fill(&mut pool, &[1; 5000]);
        // Not loaded yet: a second fill of the same size gets another segment.
        let (r2, _s2) = fill(&mut pool, &[2; 5000]);
        assert_ne!(r1.id, r2.id);
        let p = attach(s1, &r1).unwrap();
        assert_eq!(read(&p, 5000), vec![1; 5000]);
    }

    a_pinned_segment_is_never_refilled(factory) {
        let mut pool = BulkPool::new(factory, 0, 4);
        let (r1, s1) = fill(&mut pool, &[1; 100]);
        let p = attach(s1.clone(), &r1).unwrap();
        let (r2, _) = fill(&mut pool, &[2; 100]);
        assert_ne!(r1.id, r2.id);
        assert_eq!(read(&p, 100), vec![1; 100]);
        drop(p);
        // Claimed and unpinned: the first segment is reused, with a new generation.
        let (r3, s3) = fill(&mut pool, &[3; 100]);
        // r2's ticket is unclaimed, so only the first segment is free.
        assert_eq!(r3.id, r1.id);
        assert_eq!(r3.generation, r1.generation + 1);
        assert_eq!(attach(s3.clone(), &r1).err(), Some(Stale));
        assert_eq!(pool.stats().segments, 2);
    }

    segments_are_recycled_not_remade(factory) {
        let mut pool = BulkPool::new(factory, 0, 4);
        let mut ids = std::collections::HashSet::new();
        for i in 0..20u8 {
            let (r, s) = fill(&mut pool, &[i; 9000]);
            let p = attach(s, &r).unwrap();
            assert_eq!(read(&p, 9000), vec![i; 9000]);
            ids.insert(r.id);
        }
        assert_eq!(ids.len(), 1, "one segment serves a load-then-drop loop");
    }

    a_late_load_is_stale_never_wrong(factory) {
        let mut pool = BulkPool::new(factory, 0, 4);
        let (r1, s) = fill(&mut pool, &[1; 64]);
        drop(attach(s.clone(), &r1).unwrap());
        let (r2, _) = fill(&mut pool, &[2; 64]);
        assert_eq!(r2.id, r1.id);
        // The first blob loaded again after the refill: refused, not the new bytes.
        assert_eq!(attach(s.clone(), &r1).err(), Some(Stale));
        assert_eq!(s.header().pins(), 0, "a refused load leaves no pin");
        // While the segment is being refilled, nobody can pin it.
        drop(attach(s.clone(), &r2).unwrap());
        let fill3 = pool.take(64).unwrap();
        assert_eq!(fill3.storage().header().id(), r1.id);
        let r_now = BulkRef { generation: r2.generation + 1, ..r2 };
        assert_eq!(attach(s.clone(), &r_now).err(), Some(Stale));
        drop(fill3);
        assert_eq!(s.header().pins(), 0);
    }

    a_second_load_of_one_blob_works_while_pinned(factory) {
        let mut pool = BulkPool::new(factory, 0, 4);
        let (r, s) = fill(&mut pool, b"function");
        let a = attach(s.clone(), &r).unwrap();
        let b = attach(s.clone(), &r).unwrap();
        assert_eq!(s.header().pins(), 2);
        assert_eq!(read(&b, 8), b"function");
        drop((a, b));
        assert_eq!(pool.stats().free, 1);
    }

    resend_by_reference(factory) {
        let mut pool = BulkPool::new(factory, 0, 4);
        let (r, s) = fill(&mut pool, &[9; 10]);
        // The owner re-sends what it filled: a second ticket, same generation.
        let again = pool.resend(r.id).unwrap();
        assert_eq!(again.generation, r.generation);
        assert_ne!(again.slot, r.slot);
        drop(attach(s.clone(), &r).unwrap());
        assert_eq!(pool.stats().free, 0, "the second ticket is still in flight");
        assert!(pool.withdraw(&again));
        assert!(!pool.withdraw(&again));
        assert_eq!(pool.stats().free, 1);
        // A receiver re-sends what it maps and lets go of its pin: the unclaimed ticket keeps
        // the segment from being refilled until the next receiver has pinned it.
        let (r2, s2) = fill(&mut pool, &[8; 10]);
        let mine = attach(s2.clone(), &r2).unwrap();
        let fwd = mine.resend(12345).unwrap();
        assert!(!mine.settled(&fwd));
        drop(mine);
        assert_eq!(pool.stats().free, 0);
        let (r3, _) = fill(&mut pool, &[7; 10]);
        assert_ne!(r3.id, r2.id, "not refilled while the forwarded ticket is unclaimed");
        assert!(pool.withdraw(&r3));
        let theirs = attach(s2.clone(), &fwd).unwrap();
        assert!(settled(&*s2, &fwd));
        assert_eq!(read(&theirs, 10), vec![8; 10]);
        assert_eq!(pool.stats().free, 1, "only r3's segment, withdrawn");
        drop(theirs);
        assert_eq!(pool.stats().free, 2);
    }

    tickets_run_out_gracefully(factory) {
        let mut pool = BulkPool::new(factory, 0, 4);
        let (r, _s) = fill(&mut pool, &[1; 10]);
        for _ in 1..TICKETS {
            assert!(pool.resend(r.id).is_some());
        }
        assert!(pool.resend(r.id).is_none());
        assert!(pool.resend(999).is_none(), "not ours");
    }

    free_segments_beyond_the_limit_are_freed(factory) {
        let mut pool = BulkPool::new(factory, 0, 2);
        let mut held = Vec::new();
        for n in [10_000usize, 20_000, 40_000, 80_000, 160_000] {
            let (r, s) = fill(&mut pool, &vec![1; n]);
            held.push(attach(s, &r).unwrap());
        }
        assert_eq!(pool.stats().segments, 5);
        held.clear();
        assert_eq!(pool.stats().free, 5);
        // The next take trims to the limit (least recently used first).
        let (_r, _s) = fill(&mut pool, &[1; 160_000]);
        let st = pool.stats();
        assert_eq!(st.segments, 3, "{st:?}");
        assert_eq!(st.free, 2);
    }

    a_dead_holders_pins_are_cleared_a_live_ones_kept(factory) {
        let mut pool = BulkPool::new(factory, 0, 4);
        let (r, s) = fill(&mut pool, &[1; 10]);
        drop(attach(s.clone(), &r).unwrap());
        let dead = dead_pid();
        // What a process that pinned twice and died leaves: its entry and its state count.
        s.header().holders[3].store((u64::from(dead) << 32) | 2, Ordering::Release);
        s.header().state.fetch_add(2, Ordering::AcqRel);
        assert_eq!(s.header().pins(), 2);
        assert_eq!(s.header().live_pins(), 0);
        // Its process is gone: the refill clears its entry and reuses the segment.
        let (r2, _) = fill(&mut pool, &[2; 10]);
        assert_eq!(r2.id, r.id);
        assert_eq!(s.header().pins(), 0);
        drop(attach(s.clone(), &r2).unwrap());
        // A live process's pin (our parent's pid stands in) keeps it.
        let live = rustix::process::getppid().unwrap().as_raw_nonzero().get() as u32;
        s.header().holders[5].store((u64::from(live) << 32) | 1, Ordering::Release);
        s.header().state.fetch_add(1, Ordering::AcqRel);
        let (r3, _) = fill(&mut pool, &[3; 10]);
        assert_ne!(r3.id, r.id);
        assert_eq!(s.header().pins(), 1);
    }

    a_dropped_fill_frees_the_segment(factory) {
        let mut pool = BulkPool::new(factory, 0, 4);
        drop(pool.take(100).unwrap());
        assert_eq!(pool.stats(), BulkStats { segments: 1, bytes: 4096, free: 1, unclaimed: 0 });
    }
}

#[test]
fn size_classes_are_tight_and_stable() {
    assert_eq!(size_class(1), 4096);
    assert_eq!(size_class(4096), 4096);
    assert_eq!(size_class(4097), 8192);
    for n in [100_000usize, 400_000_000, 1 << 30, 3_000_001] {
        let c = size_class(n);
        assert!(c >= n && c - n <= n / 8 + 4096, "{n} -> {c}");
        assert_eq!(size_class(c), c, "a class is its own class");
    }
}

#[test]
fn bulk_ref_round_trips_and_refuses_garbage() {
    let r = BulkRef {
        id: 1 << 40,
        generation: 3,
        slot: 5,
        seq: 77,
    };
    assert_eq!(BulkRef::decode(&r.encode()), Some(r));
    assert_eq!(BulkRef::decode(&r.encode()[..23]), None);
    let mut bad = r.encode();
    bad[16] = 200; // slot out of range
    assert_eq!(BulkRef::decode(&bad), None);
    let zero_seq = BulkRef { seq: 0, ..r };
    assert_eq!(BulkRef::decode(&zero_seq.encode()), None);
}

#[test]
fn a_segment_crosses_a_socket_and_shares_bytes() {
    use std::os::fd::AsFd;
    let mut pool = BulkPool::new(ShmFactory, 0, 4);
    let (r, s) = fill(&mut pool, b"over the socket");
    let (a, b) = super::super::fdpass::socket_pair().unwrap();
    super::super::fdpass::send_fds(a.as_fd(), &r.encode(), &[s.fd()]).unwrap();
    let mut buf = [0u8; 64];
    let (n, mut fds) = super::super::fdpass::recv_fds(b.as_fd(), &mut buf)
        .unwrap()
        .unwrap();
    let got = BulkRef::decode(&buf[..n]).unwrap();
    let theirs = Arc::new(ShmBulk::open(fds.pop().unwrap(), Some(got.id)).unwrap());
    assert_ne!(theirs.data_ptr(), s.data_ptr(), "a mapping of its own");
    let p = attach(theirs.clone(), &got).unwrap();
    assert_eq!(read(&p, 15), b"over the socket");
    assert_eq!(s.header().pins(), 1, "the pin is visible to the owner");
    drop(p);
    assert_eq!(s.header().pins(), 0);
    // Opening it as another id is refused.
    let dup = rustix::io::dup(s.fd()).unwrap();
    assert_eq!(
        ShmBulk::open(dup, Some(got.id + 1)).err().unwrap().kind(),
        io::ErrorKind::InvalidData
    );
}

/// Data bytes of `s` that have pages in its memfd, as the kernel counts them (its blocks, less
/// the header page).
fn file_data_bytes(s: &ShmBulk) -> usize {
    let st = rustix::fs::fstat(s.fd()).unwrap();
    (st.st_blocks as usize * 512).saturating_sub(DATA_OFFSET)
}

/// `n` bytes that differ from page to page and from fill to fill (`salt`).
fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31) ^ ((i / 4096) as u8) ^ salt)
        .collect()
}

/// The bytes `[off, off + n)` as a second mapping of the memfd sees them (a receiver's view).
fn seen_elsewhere(s: &ShmBulk, r: &BulkRef, off: usize, n: usize) -> Vec<u8> {
    let theirs = Arc::new(ShmBulk::open(rustix::io::dup(s.fd()).unwrap(), Some(r.id)).unwrap());
    let p = attach(theirs, r).unwrap();
    let mut v = vec![0u8; n];
    p.read(off, &mut v);
    v
}

#[test]
fn a_fresh_segment_gets_pages_only_where_its_first_fill_writes() {
    let mut pool = BulkPool::new(ShmFactory, 0, 4);
    // Three buffers at the offsets a pack gives them: unaligned lengths, partial pages.
    let bufs = [
        pattern(3 << 20 | 123, 1),
        pattern(5000, 2),
        pattern(1 << 20, 3),
    ];
    let offs = [
        0,
        (3 << 20 | 123usize).next_multiple_of(64),
        (3 << 20) + 5248,
    ];
    let end = offs[2] + bufs[2].len();
    let mut f = pool.take(end).unwrap();
    let s = f.storage().clone();
    assert!(
        s.capacity() > end.next_multiple_of(4096) + 4096,
        "the class has slack"
    );
    assert_eq!(
        file_data_bytes(&s),
        0,
        "made, not yet filled: no data page exists"
    );
    let parts: Vec<(usize, &[u8])> = offs
        .iter()
        .copied()
        .zip(bufs.iter().map(|b| &b[..]))
        .collect();
    f.write_parts(&parts);
    let r = f.publish();
    // Exactly the written pages exist: none for the class's slack, none zero-filled twice.
    assert_eq!(file_data_bytes(&s), end.next_multiple_of(4096));
    assert_eq!(s.resident_bytes().unwrap(), end.next_multiple_of(4096));
    for (off, b) in offs.iter().zip(&bufs) {
        assert!(
            seen_elsewhere(&s, &r, *off, b.len()) == *b,
            "a receiver's mapping"
        );
        let p = attach_with(s.clone(), &r, false).unwrap();
        let mut v = vec![0u8; b.len()];
        p.read(*off, &mut v);
        assert!(v == *b, "the owner's own mapping");
    }
}

#[test]
fn refills_of_a_segment_first_filled_through_its_fd_read_back() {
    let mut pool = BulkPool::new(ShmFactory, 0, 4);
    let n = 2 << 20;
    let mut last = None;
    // A short first fill, then a longer one in the same class (pages beyond the first fill
    // are new), then a short one again.
    for (i, len) in [n / 2 + 17, n, n / 3].into_iter().enumerate() {
        let bytes = pattern(len, 10 + i as u8);
        let mut f = pool.take(n + 64).unwrap();
        let s = f.storage().clone();
        f.write_parts(&[(64, &bytes)]);
        let r = f.publish();
        if let Some(id) = last {
            assert_eq!(r.id, id, "one segment serves the sequence");
        }
        last = Some(r.id);
        assert!(
            seen_elsewhere(&s, &r, 64, len) == bytes,
            "fill {i}, a receiver's view"
        );
        let p = attach(s.clone(), &r).unwrap();
        let mut v = vec![0u8; len];
        p.read(64, &mut v);
        assert!(v == bytes, "fill {i}, the owner's view");
        // What a view in place sees (a numpy array over the data pointer).
        // SAFETY: `[data_ptr + 64, + len)` lies in the mapping, pinned by `p`.
        let in_place = unsafe { std::slice::from_raw_parts(s.data_ptr().add(64), len) };
        assert!(in_place == &bytes[..], "fill {i}, in place");
        drop(p);
    }
}

/// Threads of this process now.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn a_large_first_fill_maps_its_pages_behind_and_the_thread_ends_with_the_segment() {
    // nextest runs each test in a process of its own, so the count is this test's.
    let before = threads();
    let mut pool = BulkPool::new(ShmFactory, 0, 4);
    let n = 3 * MAPPER_MIN / 2;
    let bytes = pattern(n, 7);
    let mut f = pool.take(n).unwrap();
    let s = f.storage().clone();
    f.write(0, &bytes);
    let r = f.publish();
    // A receiver may read at once, while the pages are still being mapped in here.
    assert!(seen_elsewhere(&s, &r, 0, n) == bytes);
    // The next fill waits for the mapper and copies through the mapping.
    let again = pattern(n, 8);
    let mut f = pool.take(n).unwrap();
    assert_eq!(f.storage().header().id(), r.id);
    f.write(0, &again);
    let r2 = f.publish();
    assert!(!s.mapping_behind());
    assert!(seen_elsewhere(&s, &r2, 0, n) == again);
    // A segment dropped while its mapper may still run joins it: no thread is left.
    let mut other = BulkPool::new(ShmFactory, 1 << 32, 4);
    let mut f = other.take(n).unwrap();
    f.write(0, &bytes);
    let _unclaimed = f.publish();
    drop((other, pool, s));
    // Joined by now; the kernel drops a joined thread from /proc a few steps after the join
    // returns (its tid is cleared first), so look again a bounded number of times.
    let mut now = threads();
    for _ in 0..10_000 {
        if now == before {
            break;
        }
        std::thread::yield_now();
        now = threads();
    }
    assert_eq!(now, before);
}

/// The pid of a process that existed and is gone (reaped).
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}
