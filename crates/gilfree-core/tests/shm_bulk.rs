//! Bulk segments between real processes, with `/proc` of the sender unreadable: the fd of a
//! segment reaches the peer only over its channel's socket. Each test re-runs this test binary
//! as its child (see `shm_channel.rs`); every wait has a watchdog deadline, and the child is
//! killed and reaped when its guard drops.

mod channel_support;

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use channel_support::ChildGuard;

use gilfree_core::shm::bulk::hub;
use gilfree_core::shm::channel::Channel;
use gilfree_core::{RecvError, Wait};
use rustix::process::getppid;

const RING: usize = 4096;
const WATCHDOG: Duration = Duration::from_secs(30);
const SIZE: usize = 3 << 20;

/// [`channel_support::spawn`], then the parent's copy of the child end closed: a bulk
/// segment's fd must reach the child over the channel's socket and nowhere else.
fn spawn(test: &str, role: &str, ch: &mut Channel) -> ChildGuard {
    let child = channel_support::spawn(test, role, ch);
    ch.close_child_end();
    child
}

fn child_end(role: &str) -> Option<(Channel, OwnedFd)> {
    let (ch, parent) = channel_support::child_end(role)?;
    // The point of these tests: the parent's fds are out of reach through /proc. The parent
    // is non-dumpable; root could read it anyway (CAP_SYS_PTRACE), so as root this thread
    // becomes `nobody`, which also drops its capabilities.
    if rustix::process::geteuid().is_root() {
        rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(65534)).unwrap();
    }
    let ppid = getppid().unwrap().as_raw_nonzero().get();
    assert!(
        std::fs::read_dir(format!("/proc/{ppid}/fd")).is_err(),
        "the parent's /proc/<pid>/fd should be unreadable here"
    );
    Some((ch, parent))
}

/// Makes this process non-dumpable: no other process may open its `/proc/<pid>/fd/*`.
fn hide_proc() {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable).unwrap();
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
fn shm_bulk_round_trip_without_proc() {
    if let Some((ch, parent)) = child_end("echo") {
        let mut wait = Wait::timeout(Some(WATCHDOG)).with_peer(parent.as_fd());
        let msg = ch.recv(&mut wait).unwrap();
        let (views, at) = hub::unpack(&msg).unwrap();
        assert_eq!(&msg[at..], b"stream");
        let v = &views[0];
        assert!(v.to_vec() == pattern(SIZE));
        v.write(0, &[0xAB]); // shared memory: the parent sees it
                             // Re-sent from where it lies: by reference.
        let reply = hub::pack_views(&[v], b"back").unwrap();
        assert_eq!(
            hub::stats().segments,
            0,
            "sent back by reference, not copied"
        );
        ch.send(&reply, &mut wait).unwrap();
        // Hold the view until the parent is done with us.
        match ch.recv(&mut wait) {
            Err(RecvError::Disconnected) => {}
            other => panic!("echo child: {other:?}"),
        }
        return;
    }
    hide_proc();
    let mut ch = Channel::create(RING).unwrap();
    let mut child = spawn("shm_bulk_round_trip_without_proc", "echo", &mut ch);
    let data = pattern(SIZE);
    let env = hub::pack(&[&data], b"stream").unwrap();
    let mut wait = Wait::timeout(Some(WATCHDOG)).with_peer(child.pidfd.as_fd());
    ch.send(&env, &mut wait).unwrap();
    let back = ch.recv(&mut wait).unwrap();
    let (views, at) = hub::unpack(&back).unwrap();
    assert_eq!(&back[at..], b"back");
    let got = views[0].to_vec();
    assert_eq!(got[0], 0xAB, "the child's write is in our own segment");
    assert_eq!(&got[1..], &data[1..]);
    let st = hub::stats();
    assert_eq!((st.segments, st.mapped), (1, 0), "{st:?}");
    let id = views[0].segment_id();
    drop(views);
    // The child still pins it: a new fill of that size takes another segment.
    let second = hub::pack(&[&data], b"").unwrap();
    let (v2, _) = hub::unpack(&second).unwrap();
    assert_ne!(v2[0].segment_id(), id);
    drop(v2);
    hub::discard(&second);
    // Closing the last channel frees the free segments (the second one); the first is still
    // pinned by the child. Once the child exits, it is free again and reused.
    drop(ch);
    assert!(child.child.wait().unwrap().success());
    let third = hub::pack(&[&data], b"").unwrap();
    let (v3, _) = hub::unpack(&third).unwrap();
    assert_eq!(v3[0].segment_id(), id);
    assert_eq!(hub::stats().segments, 1, "recycled, not remade");
}

#[test]
fn shm_bulk_a_killed_receiver_lets_go() {
    if let Some((ch, parent)) = child_end("hold") {
        let mut wait = Wait::timeout(Some(WATCHDOG)).with_peer(parent.as_fd());
        let msg = ch.recv(&mut wait).unwrap();
        let (views, _) = hub::unpack(&msg).unwrap();
        ch.send(b"pinned", &mut wait).unwrap();
        // Hold the pin until killed.
        let _ = ch.recv(&mut wait);
        drop(views);
        return;
    }
    hide_proc();
    let mut ch = Channel::create(RING).unwrap();
    let mut child = spawn("shm_bulk_a_killed_receiver_lets_go", "hold", &mut ch);
    let data = pattern(SIZE);
    let env = hub::pack(&[&data], b"").unwrap();
    let mut wait = Wait::timeout(Some(WATCHDOG)).with_peer(child.pidfd.as_fd());
    ch.send(&env, &mut wait).unwrap();
    assert_eq!(ch.recv(&mut wait).unwrap(), b"pinned");
    let st = hub::stats();
    assert_eq!((st.segments, st.free, st.pinned), (1, 0, 0), "{st:?}");
    // Pinned by a live process: another fill makes a second segment.
    let other = hub::pack(&[&data], b"").unwrap();
    hub::discard(&other);
    assert_eq!(hub::stats().segments, 2);
    child.child.kill().unwrap();
    child.child.wait().unwrap();
    // Its pin died with it: both segments are free, and two fills in flight at once reuse
    // both (the refill clears the dead process's holder entry).
    assert_eq!(hub::stats().free, 2);
    let a = hub::pack(&[&data], b"").unwrap();
    let b = hub::pack(&[&data], b"").unwrap();
    let st = hub::stats();
    assert_eq!((st.segments, st.free, st.pinned), (2, 0, 2), "{st:?}");
    hub::discard(&a);
    hub::discard(&b);
}
