//! Channels between real processes. Each test re-runs this test binary as its child (as rayon's
//! crash tests do): the child finds its role in `GILFREE_TEST_ROLE`, opens its end from the fds
//! named in `GILFREE_TEST_FDS`, and plays its part. Every wait has a watchdog deadline, and the
//! child is killed and reaped when its guard drops, so no process outlives a test.

mod channel_support;

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use channel_support::{child_end, spawn};

use gilfree_core::shm::channel::Channel;
use gilfree_core::{RecvError, Wait};
use rustix::event::{poll, PollFd, PollFlags, Timespec};

const RING: usize = 4096;
const WATCHDOG: Duration = Duration::from_secs(30);

fn pattern(seed: u64, len: usize) -> Vec<u8> {
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
fn shm_channel_round_trips_between_processes() {
    if let Some((ch, parent)) = child_end("echo") {
        loop {
            let mut wait = Wait::timeout(Some(WATCHDOG)).with_peer(parent.as_fd());
            match ch.recv(&mut wait) {
                Ok(msg) => ch.send(&msg, &mut wait).unwrap(),
                Err(RecvError::Disconnected) => return,
                Err(e) => panic!("echo child: {e}"),
            }
        }
    }
    let ch = Channel::create(RING).unwrap();
    let child = spawn("shm_channel_round_trips_between_processes", "echo", &ch);
    let sizes = [
        0,
        1,
        RING - 1,
        RING,
        RING + 1,
        10 * RING,
        7,
        0,
        3 * RING + 5,
    ];
    for round in 0..3 {
        for (i, &n) in sizes.iter().enumerate() {
            let msg = pattern((round * 100 + i) as u64, n);
            let mut wait = Wait::timeout(Some(WATCHDOG)).with_peer(child.pidfd.as_fd());
            ch.send(&msg, &mut wait).unwrap();
            let back = ch.recv(&mut wait).unwrap();
            assert!(back == msg, "size {n} came back different");
        }
    }
    // Dropping our end disconnects the child, which then exits cleanly.
    drop(ch);
    let mut child = child;
    assert!(child.child.wait().unwrap().success());
}

#[test]
fn shm_channel_child_killed_mid_message() {
    if let Some((ch, parent)) = child_end("big_sender") {
        let mut wait = Wait::timeout(Some(WATCHDOG)).with_peer(parent.as_fd());
        ch.send(b"hello", &mut wait).unwrap();
        // Far more than the ring: blocks after the first ring-full until the parent kills us.
        let _ = ch.send(&pattern(1, 64 * RING), &mut wait);
        return;
    }
    let ch = Channel::create(RING).unwrap();
    let mut child = spawn("shm_channel_child_killed_mid_message", "big_sender", &ch);
    let mut wait = Wait::timeout(Some(WATCHDOG)).with_peer(child.pidfd.as_fd());
    assert_eq!(ch.recv(&mut wait).unwrap(), b"hello");
    child.child.kill().unwrap();
    let mut wait = Wait::timeout(Some(WATCHDOG)).with_peer(child.pidfd.as_fd());
    let r = ch.recv(&mut wait);
    assert!(matches!(r, Err(RecvError::Disconnected)), "{r:?}");
}

#[test]
fn shm_channel_child_killed_mid_stream() {
    if let Some((ch, parent)) = child_end("streamer") {
        for i in 0.. {
            let mut wait = Wait::timeout(Some(WATCHDOG)).with_peer(parent.as_fd());
            if ch
                .send(&pattern(i, 3000 + (i as usize % 5000)), &mut wait)
                .is_err()
            {
                return;
            }
        }
    }
    let ch = Channel::create(RING).unwrap();
    let mut child = spawn("shm_channel_child_killed_mid_stream", "streamer", &ch);
    let mut seen = 0u64;
    let mut recv = |ch: &Channel, pidfd: &OwnedFd| {
        let mut wait = Wait::timeout(Some(WATCHDOG)).with_peer(pidfd.as_fd());
        let r = ch.recv(&mut wait);
        if let Ok(msg) = &r {
            assert!(
                *msg == pattern(seen, 3000 + (seen as usize % 5000)),
                "message {seen}"
            );
            seen += 1;
        }
        r
    };
    for _ in 0..50 {
        recv(&ch, &child.pidfd).unwrap();
    }
    child.child.kill().unwrap();
    // Whole messages still in the ring come out intact, then the death is reported.
    let end = loop {
        match recv(&ch, &child.pidfd) {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(matches!(end, RecvError::Disconnected), "{end:?}");
}

#[test]
fn shm_channel_message_sent_before_death_is_delivered() {
    if let Some((ch, parent)) = child_end("last_words") {
        let mut wait = Wait::timeout(Some(WATCHDOG)).with_peer(parent.as_fd());
        ch.send(b"last words", &mut wait).unwrap();
        // Exit without running destructors, as a crash would: the channel is never closed.
        std::process::exit(0);
    }
    let ch = Channel::create(RING).unwrap();
    let child = spawn(
        "shm_channel_message_sent_before_death_is_delivered",
        "last_words",
        &ch,
    );
    // Wait for the child to be gone before reading, so the message is read after the death.
    let mut fds = [PollFd::new(&child.pidfd, PollFlags::IN)];
    let ready = poll(&mut fds, Some(&Timespec::try_from(WATCHDOG).unwrap())).unwrap();
    assert_eq!(ready, 1, "child did not exit");
    let mut wait = Wait::timeout(Some(WATCHDOG)).with_peer(child.pidfd.as_fd());
    assert_eq!(ch.recv(&mut wait).unwrap(), b"last words");
    let r = ch.recv(&mut wait);
    assert!(matches!(r, Err(RecvError::Disconnected)), "{r:?}");
}

/// Round-trip latency of a small message to another process and back (printed, never
/// asserted). Run with `cargo test --release --test shm_channel -- --ignored --nocapture`.
#[test]
#[ignore]
fn shm_channel_round_trip_latency() {
    if let Some((ch, parent)) = child_end("echo_bench") {
        let mut wait = Wait::timeout(Some(WATCHDOG)).with_peer(parent.as_fd());
        while let Ok(msg) = ch.recv(&mut wait) {
            if ch.send(&msg, &mut wait).is_err() {
                break;
            }
        }
        return;
    }
    let ch = Channel::create(64 << 10).unwrap();
    let child = spawn("shm_channel_round_trip_latency", "echo_bench", &ch);
    let mut wait = Wait::timeout(Some(WATCHDOG)).with_peer(child.pidfd.as_fd());
    let n = 100_000;
    for size in [64, 64 << 10, 1 << 20] {
        let msg = vec![7u8; size];
        let rounds = if size > 4096 { n / 100 } else { n };
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            ch.send(&msg, &mut wait).unwrap();
            ch.recv(&mut wait).unwrap();
        }
        let per = start.elapsed() / rounds as u32;
        println!("round trip to a process, {size} B: {per:?}");
    }
}
