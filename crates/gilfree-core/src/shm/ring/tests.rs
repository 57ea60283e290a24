//! Ring protocol tests on the in-process twin. The same behaviours are checked through shared
//! memory and eventfds in `channel.rs`'s tests and in `tests/shm_channel.rs`.

use std::ops::ControlFlow;
use std::time::Duration;

use super::local::{LocalBell, LocalStorage};
use super::*;

struct Pair {
    ring: Ring<LocalStorage>,
    data: LocalBell,
    space: LocalBell,
}

impl Pair {
    fn new(capacity: usize) -> Pair {
        Pair {
            ring: Ring::new(LocalStorage::new(capacity)),
            data: LocalBell::new(),
            space: LocalBell::new(),
        }
    }

    fn bells(&self) -> Bells<'_, LocalBell> {
        Bells {
            data: &self.data,
            space: &self.space,
        }
    }

    fn send(&self, p: &mut Producer, msg: &[u8]) {
        let mut w = watchdog();
        self.ring.send(p, msg, self.bells(), &mut w).unwrap();
    }

    fn recv(&self, c: &mut Consumer) -> Vec<u8> {
        self.ring.recv(c, self.bells(), &mut watchdog()).unwrap()
    }

    fn try_recv(&self, c: &mut Consumer) -> Result<Vec<u8>, RecvError> {
        self.ring
            .recv(c, self.bells(), &mut Wait::timeout(Some(Duration::ZERO)))
    }
}

/// A deadline that only a hang reaches; it turns a hang into a failure instead of a stuck run.
fn watchdog() -> Wait<'static> {
    Wait::timeout(Some(Duration::from_secs(60)))
}

/// Deterministic bytes that differ between messages and positions.
pub(crate) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn framing_keeps_boundaries() {
    let pair = Pair::new(256);
    let (mut p, mut c) = (pair.ring.producer().unwrap(), pair.ring.consumer().unwrap());
    pair.send(&mut p, b"hello");
    pair.send(&mut p, b"");
    pair.send(&mut p, b"world!");
    assert!(pair.ring.has_unread());
    assert_eq!(pair.recv(&mut c), b"hello");
    assert_eq!(pair.recv(&mut c), b"");
    assert_eq!(pair.recv(&mut c), b"world!");
    assert!(!pair.ring.has_unread());
    assert!(matches!(pair.try_recv(&mut c), Err(RecvError::Timeout)));
}

#[test]
fn wraps_around_an_odd_capacity() {
    // 8 + len never divides 13, so frames start at every offset and straddle the end.
    let pair = Pair::new(13);
    let (mut p, mut c) = (pair.ring.producer().unwrap(), pair.ring.consumer().unwrap());
    for i in 0..500u64 {
        let msg = pattern(i, (i % 6) as usize);
        pair.send(&mut p, &msg);
        assert_eq!(pair.recv(&mut c), msg, "message {i}");
    }
}

#[test]
fn zero_length_messages() {
    let pair = Pair::new(16);
    let (mut p, mut c) = (pair.ring.producer().unwrap(), pair.ring.consumer().unwrap());
    for _ in 0..10 {
        pair.send(&mut p, b"");
        pair.send(&mut p, b"");
        assert_eq!(pair.recv(&mut c), b"");
        assert_eq!(pair.recv(&mut c), b"");
    }
}

/// Sends `sizes` from one thread while another receives and checks them.
fn stream(capacity: usize, sizes: &[usize]) {
    let pair = Pair::new(capacity);
    let (mut p, mut c) = (pair.ring.producer().unwrap(), pair.ring.consumer().unwrap());
    std::thread::scope(|s| {
        s.spawn(|| {
            for (i, &n) in sizes.iter().enumerate() {
                pair.send(&mut p, &pattern(i as u64, n));
            }
        });
        for (i, &n) in sizes.iter().enumerate() {
            let got = pair.recv(&mut c);
            assert_eq!(got.len(), n, "message {i}");
            assert!(got == pattern(i as u64, n), "message {i} corrupted");
        }
    });
    assert!(!pair.ring.has_unread());
}

#[test]
fn sizes_around_the_capacity() {
    let cap = 64;
    let sizes: Vec<usize> = [
        0,
        1,
        cap - 9,
        cap - 8,
        cap - 7,
        cap - 1,
        cap,
        cap + 1,
        2 * cap,
        10 * cap,
    ]
    .into_iter()
    .cycle()
    .take(60)
    .collect();
    stream(cap, &sizes);
}

#[test]
fn a_64_mib_message_through_a_64_kib_ring() {
    stream(64 << 10, &[64 << 20, 3, 0, 200_000]);
}

#[test]
fn recv_resumes_after_timeout() {
    let pair = Pair::new(64);
    let (mut p, mut c) = (pair.ring.producer().unwrap(), pair.ring.consumer().unwrap());
    let msg = pattern(7, 100);
    let prefix = (msg.len() as u64).to_le_bytes();
    let mut w = watchdog();
    // Write the frame in two steps, as a producer that is slower than the consumer would.
    let first = pair
        .ring
        .send_some(&mut p, &prefix, &msg, 0, &pair.bells(), &mut w, false)
        .unwrap();
    assert_eq!(first, 64);
    assert!(matches!(pair.try_recv(&mut c), Err(RecvError::Timeout)));
    assert!(!pair.ring.has_unread(), "the consumer took what there was");
    let mut stop = || ControlFlow::Break(());
    let mut w2 = Wait::timeout(Some(Duration::from_millis(1))).with_signal_check(&mut stop);
    let r = pair.ring.recv(&mut c, pair.bells(), &mut w2);
    assert!(matches!(r, Err(RecvError::Interrupted)), "{r:?}");
    let rest = pair
        .ring
        .send_some(&mut p, &prefix, &msg, first, &pair.bells(), &mut w, false)
        .unwrap();
    assert_eq!(first + rest, 8 + msg.len());
    assert_eq!(pair.try_recv(&mut c).unwrap(), msg);
}

#[test]
fn the_bells_signal_check_runs_with_its_lock_released() {
    // Step 3 of the one sleep loop (`crate::wait`) runs the signal check with no lock held: a
    // check that rings the very bell it sleeps on (as anything the check runs may) must not
    // deadlock, and its ring ends the sleep.
    let bell = std::sync::Arc::new(LocalBell::new());
    let (tx, rx) = std::sync::mpsc::channel();
    let sleeper = {
        let bell = bell.clone();
        std::thread::spawn(move || {
            let ringer = bell.clone();
            let mut check = move || {
                ringer.ring().unwrap();
                ControlFlow::Continue(())
            };
            let mut wait =
                Wait::timeout(Some(Duration::from_secs(60))).with_signal_check(&mut check);
            wait.signal_interval = Duration::from_millis(1);
            let _ = tx.send(bell.sleep(&mut wait));
        })
    };
    let woke = rx.recv_timeout(Duration::from_secs(60));
    assert!(
        matches!(woke, Ok(Ok(()))),
        "the sleep deadlocked or failed: {woke:?}"
    );
    sleeper.join().unwrap();
}

#[test]
fn send_timeout_mid_message_tears_the_producer() {
    let pair = Pair::new(32);
    let mut p = pair.ring.producer().unwrap();
    let mut w = Wait::timeout(Some(Duration::ZERO));
    // Nothing written yet: a timeout leaves the producer usable.
    pair.send(&mut p, &[1; 24]);
    assert!(matches!(
        pair.ring.send(&mut p, b"x", pair.bells(), &mut w),
        Err(SendError::Timeout)
    ));
    assert!(!p.torn);
    let mut c = pair.ring.consumer().unwrap();
    assert_eq!(pair.recv(&mut c), [1; 24]);
    assert!(matches!(
        pair.ring.send(&mut p, &[2; 100], pair.bells(), &mut w),
        Err(SendError::Timeout)
    ));
    assert!(p.torn);
    assert!(matches!(
        pair.ring.send(&mut p, b"", pair.bells(), &mut w),
        Err(SendError::Io(_))
    ));
}

#[test]
fn dead_producer_leaves_whole_messages_readable() {
    let pair = Pair::new(64);
    let (mut p, mut c) = (pair.ring.producer().unwrap(), pair.ring.consumer().unwrap());
    pair.send(&mut p, b"last words");
    let msg = pattern(1, 100);
    let prefix = (msg.len() as u64).to_le_bytes();
    pair.ring
        .send_some(
            &mut p,
            &prefix,
            &msg,
            0,
            &pair.bells(),
            &mut watchdog(),
            false,
        )
        .unwrap();
    pair.data.hang_up();
    let r = pair.ring.recv(&mut c, pair.bells(), &mut watchdog());
    assert_eq!(r.unwrap(), b"last words");
    let r = pair.ring.recv(&mut c, pair.bells(), &mut watchdog());
    assert!(matches!(r, Err(RecvError::Disconnected)), "{r:?}");
}

#[test]
fn dead_consumer_ends_a_blocked_send() {
    let pair = Pair::new(16);
    let mut p = pair.ring.producer().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| pair.space.hang_up());
        let r = pair
            .ring
            .send(&mut p, &[0; 100], pair.bells(), &mut watchdog());
        assert!(matches!(r, Err(SendError::Disconnected)), "{r:?}");
    });
}

#[test]
fn closing_either_end_disconnects() {
    let pair = Pair::new(64);
    let (mut p, mut c) = (pair.ring.producer().unwrap(), pair.ring.consumer().unwrap());
    pair.send(&mut p, b"bye");
    pair.ring.close_producer(&pair.data);
    assert_eq!(pair.recv(&mut c), b"bye");
    assert!(matches!(
        pair.try_recv(&mut c),
        Err(RecvError::Disconnected)
    ));

    let pair = Pair::new(64);
    let mut p = pair.ring.producer().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| pair.ring.close_consumer(&pair.space));
        // Blocks once the ring is full, until the close wakes it.
        let r = (0..).try_for_each(|_| {
            pair.ring
                .send(&mut p, &[0; 10], pair.bells(), &mut watchdog())
        });
        assert!(matches!(r, Err(SendError::Disconnected)), "{r:?}");
    });
}

#[test]
fn header_validation() {
    let h = RingHeader::new(4096);
    h.validate(4096).unwrap();
    assert!(h.validate(8192).is_err());
    h.ident.magic_version.store(0, Ordering::Relaxed);
    assert!(h.validate(4096).is_err());
}

#[test]
fn each_end_is_handed_out_once() {
    let pair = Pair::new(64);
    let mut p = pair.ring.producer().expect("the first producer");
    assert!(pair.ring.producer().is_none(), "a second producer");
    let mut c = pair.ring.consumer().expect("the first consumer");
    assert!(pair.ring.consumer().is_none(), "a second consumer");
    // The ends handed out still work.
    pair.send(&mut p, b"once");
    assert_eq!(pair.recv(&mut c), b"once");
}

/// Most bytes the consumer may have reserved for the message it is assembling, after `fed`
/// bytes arrived on a ring of `capacity`: what arrived, times two (growth by doubling), or one
/// ring's worth, whichever is more. A length prefix alone must not buy more than that.
fn reserve_bound(capacity: usize, fed: usize) -> usize {
    capacity.max(2 * fed)
}

fn reserved(c: &Consumer) -> usize {
    match &c.partial {
        Partial::Prefix { .. } => 0,
        Partial::Body { msg, .. } => msg.capacity(),
    }
}

/// Feeds `bytes` to the consumer as a producer that ignores the framing would (raw writes and
/// `tail` publishes, in pieces as space allows), then closes the producer's end. Every receive
/// must return a message, wait for more, or refuse the stream with `InvalidData`/`OutOfMemory`;
/// never panic, and never reserve more than [`reserve_bound`].
fn feed_raw(capacity: usize, bytes: &[u8]) {
    let pair = Pair::new(capacity);
    let mut c = pair.ring.consumer().unwrap();
    let header = pair.ring.header();
    let (mut tail, mut fed) = (0u64, 0usize);
    let mut scratch = Vec::new();
    loop {
        let n = pair.ring.free(tail).unwrap().min(bytes.len() - fed);
        pair.ring.put(tail, &bytes[fed..fed + n]);
        tail += n as u64;
        fed += n;
        header.producer.tail.store(tail, Ordering::Release);
        if fed == bytes.len() {
            header.producer.producer_closed.store(1, Ordering::Release);
        }
        // The batch reader first: it takes only messages whole in the ring, and reserves only
        // what they hold.
        let batch = pair
            .ring
            .recv_ready(&mut c, pair.bells(), 4, &mut scratch, |m| {
                assert!(m.len() <= fed)
            });
        assert!(
            scratch.capacity() <= fed,
            "{} bytes reserved by recv_ready after {fed} bytes fed",
            scratch.capacity()
        );
        if let Err(e) = batch {
            panic!("recv_ready failed on a consistent ring: {e:?}");
        }
        let result = pair.try_recv(&mut c);
        assert!(
            reserved(&c) <= reserve_bound(capacity, fed),
            "{} bytes reserved after {fed} bytes fed",
            reserved(&c)
        );
        match result {
            Ok(msg) => assert!(msg.len() <= fed),
            Err(RecvError::Timeout) => assert!(fed < bytes.len() || pair.ring.has_unread()),
            Err(RecvError::Disconnected) => {
                assert_eq!(fed, bytes.len());
                return;
            }
            Err(RecvError::Io(e)) => {
                let kind = e.kind();
                assert!(
                    matches!(
                        kind,
                        io::ErrorKind::InvalidData | io::ErrorKind::OutOfMemory
                    ),
                    "{e}"
                );
                return;
            }
            Err(RecvError::Interrupted) => panic!("nobody interrupts this wait"),
        }
    }
}

#[test]
fn a_hostile_length_prefix_reserves_only_what_arrives() {
    for len in [1u64 << 30, 1 << 40, u64::MAX, isize::MAX as u64, 100_000] {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&pattern(len, 1000));
        feed_raw(64, &bytes);
    }
}

mod fuzz {
    use proptest::prelude::*;

    use super::feed_raw;

    /// Bytes that often start like a frame: a length prefix (any `u64`, or a plausible one),
    /// then anything.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let raw = proptest::collection::vec(any::<u8>(), 0..600);
        let prefixed = (
            prop_oneof![any::<u64>(), 0u64..2000],
            proptest::collection::vec(any::<u8>(), 0..600),
        )
            .prop_map(|(len, rest)| {
                let mut v = len.to_le_bytes().to_vec();
                v.extend(rest);
                v
            });
        prop_oneof![raw, prefixed]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Arbitrary bytes in the ring never panic the frame decoder, and a length prefix
        /// never makes it reserve memory that the bytes have not paid for.
        #[test]
        fn arbitrary_bytes_never_panic_or_over_reserve(
            capacity in 1usize..300,
            bytes in stream(),
        ) {
            feed_raw(capacity, &bytes);
        }
    }
}

#[test]
fn spin_budget_regrows_after_an_idle_spell() {
    let mut spin = Spin::new();
    // An idle side (waits of 10 ms) drops to the floor.
    for _ in 0..32 {
        spin.learn(10_000_000);
    }
    assert_eq!(spin.budget, MIN_BUDGET);
    // The peer is busy again and answers 60 µs after each message: one wait that slept that
    // long is enough for the next spin to cover it (the old rule halved the budget here, and
    // a side stuck at the floor slept on every message from then on).
    spin.learn(60_000);
    assert!(spin.budget >= 60_000, "{}", spin.budget);
    // Never past the cap, however many short waits slept.
    for _ in 0..32 {
        spin.learn(MAX_BUDGET);
    }
    assert_eq!(spin.budget, MAX_BUDGET);
    // And an idle side is back at the floor within a few waits.
    let mut waits = 0;
    while spin.budget > MIN_BUDGET {
        spin.learn(MAX_BUDGET + 1);
        waits += 1;
    }
    assert!(waits <= 8, "{waits}");
}

#[test]
fn polls_that_time_out_do_not_grow_the_spin() {
    let pair = Pair::new(64);
    let mut c = pair.ring.consumer().unwrap();
    c.spin.budget = MIN_BUDGET;
    for _ in 0..10 {
        assert!(matches!(pair.try_recv(&mut c), Err(RecvError::Timeout)));
    }
    assert_eq!(c.spin.budget, MIN_BUDGET);
}

#[test]
fn recv_ready_takes_whole_messages_only_and_up_to_max() {
    let pair = Pair::new(64);
    let (mut p, mut c) = (pair.ring.producer().unwrap(), pair.ring.consumer().unwrap());
    let mut scratch = Vec::new();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut take = |c: &mut Consumer, max: usize, got: &mut Vec<Vec<u8>>| {
        pair.ring
            .recv_ready(c, pair.bells(), max, &mut scratch, |m| got.push(m.to_vec()))
            .unwrap()
    };
    assert_eq!(take(&mut c, 10, &mut got), 0, "nothing sent yet");
    for m in [&b"a"[..], b"", b"bcd", b"efgh"] {
        pair.send(&mut p, m);
    }
    assert_eq!(take(&mut c, 2, &mut got), 2, "at most max");
    assert_eq!(take(&mut c, 10, &mut got), 2);
    assert_eq!(got, [&b"a"[..], b"", b"bcd", b"efgh"]);
    assert!(!pair.ring.has_unread());
    // A message bigger than the ring is never whole in it: recv_ready leaves it, and once
    // `recv` has taken part of it, recv_ready takes nothing until `recv` finishes it.
    let big = pattern(7, 150);
    let (tx_ring, big2) = (&pair, big.clone());
    std::thread::scope(|s| {
        s.spawn(move || tx_ring.send(&mut p, &big2));
        while !pair.ring.has_unread() {
            std::thread::yield_now();
        }
        assert_eq!(take(&mut c, 10, &mut got), 0, "not whole yet");
        assert_eq!(pair.recv(&mut c), big);
    });
    assert_eq!(got.len(), 4);
}
