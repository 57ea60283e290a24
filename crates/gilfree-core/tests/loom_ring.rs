//! Loom models of the ring protocol: index hand-off (loom also checks every data byte copy
//! against it), the sleep-flag protocol (a lost wake-up shows up as a deadlock), closing, and a
//! dead peer. Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     CARGO_TARGET_DIR=target/loom cargo test -p gilfree-core --release loom_
//! ```
#![cfg(loom)]

use gilfree_core::shm::ring::local::{LocalBell, LocalStorage};
use gilfree_core::shm::ring::{Bells, Ring};
use gilfree_core::{RecvError, SendError, Wait};
use loom::sync::Arc;
use loom::thread;

struct Pair {
    ring: Ring<LocalStorage>,
    data: LocalBell,
    space: LocalBell,
}

impl Pair {
    fn new(capacity: usize) -> Arc<Pair> {
        Arc::new(Pair {
            ring: Ring::new(LocalStorage::new(capacity)),
            data: LocalBell::new(),
            space: LocalBell::new(),
        })
    }

    fn bells(&self) -> Bells<'_, LocalBell> {
        Bells {
            data: &self.data,
            space: &self.space,
        }
    }
}

/// A thread that sends `msgs` in order, each waiting for space as needed.
fn spawn_producer(pair: &Arc<Pair>, msgs: &'static [&'static [u8]]) -> thread::JoinHandle<()> {
    let tx = pair.clone();
    thread::spawn(move || {
        let mut p = tx.ring.producer().unwrap();
        for m in msgs {
            tx.ring
                .send(&mut p, m, tx.bells(), &mut Wait::forever())
                .unwrap();
        }
    })
}

/// Producer and consumer on two threads; every message arrives whole and in order.
fn transfer(capacity: usize, msgs: &'static [&'static [u8]]) {
    loom::model(move || {
        let pair = Pair::new(capacity);
        let producer = spawn_producer(&pair, msgs);
        let mut c = pair.ring.consumer().unwrap();
        for m in msgs {
            let got = pair
                .ring
                .recv(&mut c, pair.bells(), &mut Wait::forever())
                .unwrap();
            assert_eq!(&got[..], *m);
        }
        producer.join().unwrap();
        assert!(!pair.ring.has_unread());
    });
}

/// The frame (8 + 1 bytes) fits: only the consumer may have to sleep, for data.
#[test]
fn loom_fast_path_hand_off() {
    transfer(16, &[b"a"]);
}

/// A frame of 8 + 3 bytes through 8 bytes: the producer must stream it and both sides may
/// sleep (for space and for data), with the frame wrapping around the end.
#[test]
fn loom_streaming_through_a_small_ring() {
    transfer(8, &[b"xyz"]);
}

/// Back-to-back messages larger than the ring: the consumer must stop at each message's end
/// while the producer is already streaming the next one.
#[test]
fn loom_back_to_back_streams() {
    transfer(8, &[b"xyz", b"ab"]);
}

/// Two messages whose frames straddle the end of the ring, including a zero-length one.
#[test]
fn loom_wrap_and_zero_length() {
    transfer(12, &[b"pq", b""]);
}

/// A consumer that finds the ring empty and the producer closed reports `Disconnected`, after
/// draining what was sent before the close.
#[test]
fn loom_close_after_send() {
    loom::model(|| {
        let pair = Pair::new(16);
        let tx = pair.clone();
        let producer = thread::spawn(move || {
            let mut p = tx.ring.producer().unwrap();
            tx.ring
                .send(&mut p, b"end", tx.bells(), &mut Wait::forever())
                .unwrap();
            tx.ring.close_producer(&tx.data);
        });
        let mut c = pair.ring.consumer().unwrap();
        let got = pair
            .ring
            .recv(&mut c, pair.bells(), &mut Wait::forever())
            .unwrap();
        assert_eq!(got, b"end");
        let r = pair.ring.recv(&mut c, pair.bells(), &mut Wait::forever());
        assert!(matches!(r, Err(RecvError::Disconnected)));
        producer.join().unwrap();
    });
}

/// A producer blocked for space is released by the consumer closing its end.
#[test]
fn loom_consumer_close_releases_a_blocked_sender() {
    loom::model(|| {
        let pair = Pair::new(8);
        let rx = pair.clone();
        let consumer = thread::spawn(move || rx.ring.close_consumer(&rx.space));
        let mut p = pair.ring.producer().unwrap();
        // 8 + 4 bytes cannot fit in 8: the send must wait, unless it sees the close first.
        let r = pair
            .ring
            .send(&mut p, b"full", pair.bells(), &mut Wait::forever());
        assert!(matches!(r, Err(SendError::Disconnected)));
        consumer.join().unwrap();
    });
}

/// The producer dies (its bell is hung up) after a whole message: the consumer still gets the
/// message, then `Disconnected`.
#[test]
fn loom_dead_producer_message_survives() {
    loom::model(|| {
        let pair = Pair::new(16);
        let tx = pair.clone();
        let producer = thread::spawn(move || {
            let mut p = tx.ring.producer().unwrap();
            tx.ring
                .send(&mut p, b"ok", tx.bells(), &mut Wait::forever())
                .unwrap();
            tx.data.hang_up();
        });
        let mut c = pair.ring.consumer().unwrap();
        let got = pair
            .ring
            .recv(&mut c, pair.bells(), &mut Wait::forever())
            .unwrap();
        assert_eq!(got, b"ok");
        producer.join().unwrap();
        let r = pair.ring.recv(&mut c, pair.bells(), &mut Wait::forever());
        assert!(matches!(r, Err(RecvError::Disconnected)));
    });
}

/// Deferred sends followed by a flush: the consumer may have gone to sleep before, between or
/// after the deferred publishes; the flush must wake it (a lost wake-up is a deadlock here).
#[test]
fn loom_deferred_then_flush() {
    loom::model(|| {
        let pair = Pair::new(32);
        let tx = pair.clone();
        let producer = thread::spawn(move || {
            let mut p = tx.ring.producer().unwrap();
            for m in [&b"a"[..], b"b"] {
                tx.ring
                    .send_deferred(&mut p, m, tx.bells(), &mut Wait::forever())
                    .unwrap();
            }
            tx.ring.flush(&mut p, &tx.data).unwrap();
        });
        let mut c = pair.ring.consumer().unwrap();
        for m in [&b"a"[..], b"b"] {
            let got = pair
                .ring
                .recv(&mut c, pair.bells(), &mut Wait::forever())
                .unwrap();
            assert_eq!(got, m);
        }
        producer.join().unwrap();
    });
}

/// A deferred send too big for the ring must wait for space; it rings first, so a consumer
/// asleep for data wakes and frees the space (without that ring, both sides sleep forever).
/// The flush afterwards wakes the consumer for the last piece.
#[test]
fn loom_deferred_sender_waiting_for_space() {
    loom::model(|| {
        let pair = Pair::new(8);
        let tx = pair.clone();
        let producer = thread::spawn(move || {
            let mut p = tx.ring.producer().unwrap();
            tx.ring
                .send_deferred(&mut p, b"xyz", tx.bells(), &mut Wait::forever())
                .unwrap();
            tx.ring.flush(&mut p, &tx.data).unwrap();
        });
        let mut c = pair.ring.consumer().unwrap();
        let got = pair
            .ring
            .recv(&mut c, pair.bells(), &mut Wait::forever())
            .unwrap();
        assert_eq!(got, b"xyz");
        producer.join().unwrap();
    });
}

/// A plain send after a deferred one settles the owed wake-up too.
#[test]
fn loom_plain_send_flushes_deferred() {
    loom::model(|| {
        let pair = Pair::new(32);
        let tx = pair.clone();
        let producer = thread::spawn(move || {
            let mut p = tx.ring.producer().unwrap();
            tx.ring
                .send_deferred(&mut p, b"a", tx.bells(), &mut Wait::forever())
                .unwrap();
            tx.ring
                .send(&mut p, b"b", tx.bells(), &mut Wait::forever())
                .unwrap();
        });
        let mut c = pair.ring.consumer().unwrap();
        for m in [&b"a"[..], b"b"] {
            let got = pair
                .ring
                .recv(&mut c, pair.bells(), &mut Wait::forever())
                .unwrap();
            assert_eq!(got, m);
        }
        producer.join().unwrap();
    });
}

/// The consumer takes what is whole with `recv_ready` (one `head` publication for a run) and
/// the rest with `recv`: every message arrives once, whole and in order, and a producer that
/// waits for space is woken by the batch's publication (else the model deadlocks).
#[test]
fn loom_recv_ready_then_recv() {
    const MSGS: &[&[u8]] = &[b"ab", b"c", b"defg"];
    loom::model(|| {
        // Room for about two of them: the third waits for the consumer to free space.
        let pair = Pair::new(24);
        let producer = spawn_producer(&pair, MSGS);
        let mut c = pair.ring.consumer().unwrap();
        let mut scratch = Vec::new();
        let mut got: Vec<Vec<u8>> = Vec::new();
        while got.len() < MSGS.len() {
            let left = MSGS.len() - got.len();
            let taken = pair
                .ring
                .recv_ready(&mut c, pair.bells(), left, &mut scratch, |m| {
                    got.push(m.to_vec())
                })
                .unwrap();
            if taken == 0 {
                let m = pair
                    .ring
                    .recv(&mut c, pair.bells(), &mut Wait::forever())
                    .unwrap();
                got.push(m);
            }
        }
        producer.join().unwrap();
        assert_eq!(got, MSGS.iter().map(|m| m.to_vec()).collect::<Vec<_>>());
    });
}
