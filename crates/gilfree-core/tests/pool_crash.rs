//! Worker deaths: abort, exit code, kill from another thread while `recv` blocks. Each must
//! fail exactly the lease that held the worker, and the engine must carry on.

mod pool_support;

use std::sync::Arc;

use gilfree_core::pool::Engine;
use gilfree_core::RecvError;
use pool_support::{config, is_our_child, step, Collect, Watchdog};

#[test]
fn child_entry() {
    pool_support::child_main();
}

#[test]
fn abort_is_signal_6_and_other_leases_are_unaffected() {
    let _dog = Watchdog::new("abort_is_signal_6_and_other_leases_are_unaffected");
    let engine = Engine::start(config(2), Collect::new()).unwrap();
    let doomed = engine.acquire(&mut step()).unwrap();
    let bystander = engine.acquire(&mut step()).unwrap();
    doomed.send(b"crash", &mut step()).unwrap();
    assert!(matches!(
        doomed.recv(&mut step()),
        Err(RecvError::Disconnected)
    ));
    assert!(
        doomed.has_incoming(),
        "an exited process counts as incoming"
    );
    let info = doomed.exit_info().expect("dead and reaped");
    assert_eq!((info.code, info.signal), (None, Some(6)));
    let dead_pid = doomed.pid();
    doomed.release();
    assert!(!engine.pids().contains(&dead_pid));
    assert!(!is_our_child(dead_pid));

    bystander.send(b"still here", &mut step()).unwrap();
    assert_eq!(bystander.recv(&mut step()).unwrap(), b"still here");
    let next = engine.acquire(&mut step()).unwrap();
    assert_ne!(next.pid(), dead_pid);
    next.send(b"fresh", &mut step()).unwrap();
    assert_eq!(next.recv(&mut step()).unwrap(), b"fresh");
    drop((bystander, next));
    engine.shutdown();
}

#[test]
fn exit_code_3_is_reported() {
    let _dog = Watchdog::new("exit_code_3_is_reported");
    let engine = Engine::start(config(1), Collect::new()).unwrap();
    let lease = engine.acquire(&mut step()).unwrap();
    lease.send(b"exit3", &mut step()).unwrap();
    assert!(matches!(
        lease.recv(&mut step()),
        Err(RecvError::Disconnected)
    ));
    assert_eq!(
        lease.exit_info().map(|i| (i.code, i.signal)),
        Some((Some(3), None))
    );
    // A second recv on a dead worker keeps saying Disconnected.
    assert!(matches!(
        lease.recv(&mut step()),
        Err(RecvError::Disconnected)
    ));
    drop(lease);
    let lease = engine.acquire(&mut step()).unwrap();
    lease.send(b"ok", &mut step()).unwrap();
    assert_eq!(lease.recv(&mut step()).unwrap(), b"ok");
    lease.release();
    engine.shutdown();
}

#[test]
fn kill_from_another_thread_ends_a_blocked_recv() {
    let _dog = Watchdog::new("kill_from_another_thread_ends_a_blocked_recv");
    let engine = Engine::start(config(1), Collect::new()).unwrap();
    let lease = Arc::new(engine.acquire(&mut step()).unwrap());
    // The worker never answers "silent", so recv can only end through the kill.
    lease.send(b"silent", &mut step()).unwrap();
    let killer = {
        let lease = Arc::clone(&lease);
        std::thread::spawn(move || {
            lease.kill();
            lease.kill(); // idempotent
        })
    };
    let got = lease.recv(&mut gilfree_core::Wait::forever());
    killer.join().unwrap();
    assert!(matches!(got, Err(RecvError::Disconnected)), "{got:?}");
    assert_eq!(lease.exit_info().map(|i| i.signal), Some(Some(9)));
    let pid = lease.pid();
    Arc::into_inner(lease).unwrap().release();
    assert!(!is_our_child(pid));
    engine.shutdown();
}

#[test]
fn killed_warm_worker_is_replaced() {
    let _dog = Watchdog::new("killed_warm_worker_is_replaced");
    let engine = Engine::start(config(1), Collect::new()).unwrap();
    let lease = engine.acquire(&mut step()).unwrap();
    let first = lease.pid();
    lease.kill();
    lease.release();
    // Lazily: the next acquire gets a new process (from the refill or its own spawn).
    let lease = engine.acquire(&mut step()).unwrap();
    assert_ne!(lease.pid(), first);
    lease.send(b"ok", &mut step()).unwrap();
    assert_eq!(lease.recv(&mut step()).unwrap(), b"ok");
    lease.release();
    engine.shutdown();
}
