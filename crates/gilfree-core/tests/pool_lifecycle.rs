//! Engine lifecycle: warm start, leases, reuse, spawning beyond the warm set, handshake
//! failure, and shutdown leaving no process behind.

mod pool_support;

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::time::Duration;

use gilfree_core::pool::{Engine, EngineConfig, WorkerCommand};
use gilfree_core::{RecvError, SpawnError, Wait};
use pool_support::{config, is_our_child, step, Collect, Watchdog, STEP};

#[test]
fn child_entry() {
    pool_support::child_main();
}

#[test]
fn warm_start_and_echo_round_trip() {
    let _dog = Watchdog::new("warm_start_and_echo_round_trip");
    let engine = Engine::start(config(2), Collect::new()).unwrap();
    // Acquiring both warm workers (never sleeping) shows the warm set reached 2.
    let a = engine.acquire(&mut step()).unwrap();
    let b = engine.acquire(&mut step()).unwrap();
    assert_ne!(a.pid(), b.pid());
    let pids: HashSet<u32> = engine.pids().into_iter().collect();
    assert!(pids.contains(&a.pid()) && pids.contains(&b.pid()));
    for lease in [&a, &b] {
        lease.send(b"hello", &mut step()).unwrap();
        assert_eq!(lease.recv(&mut step()).unwrap(), b"hello");
    }
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    a.send(&big, &mut step()).unwrap();
    assert_eq!(a.recv(&mut step()).unwrap(), big);
    assert_eq!(a.exit_info(), None);
    drop((a, b));
    engine.shutdown();
}

#[test]
fn release_reuses_the_same_process() {
    let _dog = Watchdog::new("release_reuses_the_same_process");
    let engine = Engine::start(config(1), Collect::new()).unwrap();
    let lease = engine.acquire(&mut step()).unwrap();
    let pid = lease.pid();
    lease.send(b"x", &mut step()).unwrap();
    assert_eq!(lease.recv(&mut step()).unwrap(), b"x");
    lease.release();
    assert_eq!(engine.idle_count(), 1);
    let again = engine.acquire(&mut step()).unwrap();
    assert_eq!(again.pid(), pid);
    again.send(b"y", &mut step()).unwrap();
    assert_eq!(again.recv(&mut step()).unwrap(), b"y");
    again.release();
    engine.shutdown();
}

#[test]
fn acquire_beyond_warm_spawns_new_processes() {
    let _dog = Watchdog::new("acquire_beyond_warm_spawns_new_processes");
    let engine = Engine::start(config(1), Collect::new()).unwrap();
    let leases: Vec<_> = (0..3)
        .map(|_| engine.acquire(&mut step()).unwrap())
        .collect();
    let pids: HashSet<u32> = leases.iter().map(|l| l.pid()).collect();
    assert_eq!(pids.len(), 3, "each lease has its own process");
    // Every lease works while all are held: nobody waits behind a busy worker.
    for (i, lease) in leases.iter().enumerate() {
        lease.send(format!("m{i}").as_bytes(), &mut step()).unwrap();
    }
    for (i, lease) in leases.iter().enumerate().rev() {
        assert_eq!(lease.recv(&mut step()).unwrap(), format!("m{i}").as_bytes());
    }
    for lease in leases {
        lease.release();
    }
    // All three are idle again; a spawn round may also have started an extra for the burst
    // (when two requests met in one round), which joins them once ready.
    assert!(engine.idle_count() >= 3, "idle: {}", engine.idle_count());
    engine.shutdown();
}

#[test]
fn unreleased_and_mid_message_leases_are_not_reused() {
    let _dog = Watchdog::new("unreleased_and_mid_message_leases_are_not_reused");
    let engine = Engine::start(config(0), Collect::new()).unwrap();
    let lease = engine.acquire(&mut step()).unwrap();
    let dropped = lease.pid();
    drop(lease);
    assert!(
        !is_our_child(dropped),
        "a dropped lease's process is killed and reaped"
    );
    let lease = engine.acquire(&mut step()).unwrap();
    let pending = lease.pid();
    // The worker never answers "silent", so a zero-timeout recv must time out: the lease is
    // then mid-exchange and its process must not be handed to anyone else.
    lease.send(b"silent", &mut step()).unwrap();
    let zero = lease.recv(&mut Wait::timeout(Some(Duration::ZERO)));
    assert!(matches!(zero, Err(RecvError::Timeout)), "{zero:?}");
    lease.release();
    assert!(!engine.pids().contains(&pending));
    assert!(!is_our_child(pending));
    engine.shutdown();
}

#[test]
fn handshake_failure_reports_exit_code() {
    let _dog = Watchdog::new("handshake_failure_reports_exit_code");
    let command = WorkerCommand {
        program: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            "echo 'ImportError: no module named x' >&2; exit 7".into(),
        ],
        env: vec![],
        cwd: None,
        ring_capacity: 1 << 16,
        inherit_fds: vec![],
    };
    let config = EngineConfig {
        command,
        warm: 1,
        idle_timeout: Duration::from_secs(600),
        on_death: None,
    };
    let engine = Engine::start(config, Collect::new()).unwrap();
    match engine.acquire(&mut step()) {
        Err(SpawnError::Handshake {
            code,
            signal,
            output,
        }) => {
            assert_eq!(code, Some(7));
            assert_eq!(signal, None);
            assert!(
                output.contains("ImportError: no module named x"),
                "{output:?}"
            );
        }
        other => panic!("expected a handshake error, got {other:?}"),
    }
    // A second attempt fails the same way (no cached state, no crash loop needed).
    assert!(matches!(
        engine.acquire(&mut step()),
        Err(SpawnError::Handshake { .. })
    ));
    engine.shutdown();
    assert!(engine.pids().is_empty());
}

#[test]
fn handshake_failure_of_bin_false() {
    let _dog = Watchdog::new("handshake_failure_of_bin_false");
    let command = WorkerCommand {
        program: "/bin/false".into(),
        args: vec![],
        env: vec![],
        cwd: None,
        ring_capacity: 1 << 16,
        inherit_fds: vec![],
    };
    let config = EngineConfig {
        command,
        warm: 0,
        idle_timeout: Duration::from_secs(600),
        on_death: None,
    };
    let engine = Engine::start(config, Collect::new()).unwrap();
    match engine.acquire(&mut step()) {
        Err(SpawnError::Handshake {
            code: Some(1),
            signal: None,
            ..
        }) => {}
        other => panic!("expected a handshake error, got {other:?}"),
    }
    engine.shutdown();
}

#[test]
fn shutdown_leaves_no_process() {
    let _dog = Watchdog::new("shutdown_leaves_no_process");
    let engine = Engine::start(config(2), Collect::new()).unwrap();
    let leased = engine.acquire(&mut step()).unwrap();
    let idle = engine.acquire(&mut step()).unwrap();
    idle.release();
    let extra = engine.acquire(&mut step()).unwrap();
    let pids = engine.pids();
    assert!(pids.len() >= 2);
    let clone = engine.clone();
    engine.shutdown();
    clone.shutdown(); // idempotent
    assert!(engine.pids().is_empty());
    for pid in &pids {
        assert!(!is_our_child(*pid), "pid {pid} survived shutdown");
    }
    assert!(matches!(
        leased.recv(&mut step()),
        Err(RecvError::Disconnected)
    ));
    assert!(leased.exit_info().is_some_and(|i| i.signal == Some(9)));
    assert!(matches!(
        engine.acquire(&mut step()),
        Err(SpawnError::ShutDown)
    ));
    extra.release();
    drop(leased);
}

#[test]
fn dropping_the_engine_kills_its_workers() {
    let _dog = Watchdog::new("dropping_the_engine_kills_its_workers");
    let engine = Engine::start(config(2), Collect::new()).unwrap();
    let lease = engine.acquire(&mut step()).unwrap();
    let pid = lease.pid();
    lease.release();
    let pids = engine.pids();
    assert!(pids.contains(&pid));
    drop(engine);
    for pid in pids {
        assert!(!is_our_child(pid), "pid {pid} survived drop");
    }
}

#[test]
fn concurrent_acquires_each_get_their_own_process() {
    let _dog = Watchdog::new("concurrent_acquires_each_get_their_own_process");
    let engine = Engine::start(config(2), Collect::new()).unwrap();
    let threads: Vec<_> = (0..5)
        .map(|i| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let lease = engine.acquire(&mut step()).unwrap();
                lease.send(format!("t{i}").as_bytes(), &mut step()).unwrap();
                assert_eq!(lease.recv(&mut step()).unwrap(), format!("t{i}").as_bytes());
                lease
            })
        })
        .collect();
    let leases: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let pids: HashSet<u32> = leases.iter().map(|l| l.pid()).collect();
    assert_eq!(pids.len(), 5);
    for lease in leases {
        lease.release();
    }
    engine.shutdown();
}

#[test]
fn a_spawn_for_a_caller_also_starts_extras_for_the_burst_behind_it() {
    let _dog = Watchdog::new("a_spawn_for_a_caller_also_starts_extras_for_the_burst_behind_it");
    let engine = Engine::start(config(2), Collect::new()).unwrap();
    // Both warm processes busy: the third caller's spawn is the sign of a burst, and the
    // round that starts its process also starts one extra per busy process (in parallel).
    let a = engine.acquire(&mut step()).unwrap();
    let b = engine.acquire(&mut step()).unwrap();
    // c's own process is forked (and its handshake started) first, then the extras, so c does
    // not wait for them; they may still be forking when c returns.
    let c = engine.acquire(&mut step()).unwrap();
    // The next two callers claim those extras (forked or still forking) instead of asking for
    // spawns of their own, which would have started a further surge: five processes in all.
    let d = engine.acquire(&mut step()).unwrap();
    let e = engine.acquire(&mut step()).unwrap();
    let pids: HashSet<u32> = [&a, &b, &c, &d, &e].iter().map(|l| l.pid()).collect();
    assert_eq!(pids.len(), 5);
    assert_eq!(engine.pids().len(), 5, "pids: {:?}", engine.pids());
    for lease in [&d, &e] {
        lease.send(b"extra", &mut step()).unwrap();
        assert_eq!(lease.recv(&mut step()).unwrap(), b"extra");
    }
    drop((a, b, c, d, e));
    engine.shutdown();
    assert!(engine.pids().is_empty());
}

#[test]
fn acquire_deadline_keeps_the_started_process() {
    let _dog = Watchdog::new("acquire_deadline_keeps_the_started_process");
    let engine = Engine::start(config(0), Collect::new()).unwrap();
    // No idle worker and a deadline already passed: the call gives up at once...
    match engine.acquire(&mut Wait::timeout(Some(Duration::ZERO))) {
        Err(SpawnError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // ...and the process started for it is not wasted: the next call gets it (or another).
    let lease = engine.acquire(&mut step()).unwrap();
    lease.send(b"ok", &mut step()).unwrap();
    assert_eq!(lease.recv(&mut step()).unwrap(), b"ok");
    lease.release();
    engine.shutdown();
}

#[test]
fn signal_check_interrupts_acquire() {
    let _dog = Watchdog::new("signal_check_interrupts_acquire");
    // A process that never sends its ready message (bounded in case it is ever orphaned).
    let command = WorkerCommand {
        program: "sleep".into(),
        args: vec!["600".into()],
        env: vec![],
        cwd: None,
        ring_capacity: 1 << 16,
        inherit_fds: vec![],
    };
    let config = EngineConfig {
        command,
        warm: 0,
        idle_timeout: Duration::from_secs(600),
        on_death: None,
    };
    let engine = Engine::start(config, Collect::new()).unwrap();
    let mut calls = 0;
    let mut check = || {
        calls += 1;
        ControlFlow::Break(())
    };
    {
        let mut wait = Wait::forever().with_signal_check(&mut check);
        wait.signal_interval = Duration::from_millis(10);
        let got = engine.acquire(&mut wait);
        assert!(matches!(got, Err(SpawnError::Interrupted)), "{got:?}");
    }
    assert_eq!(calls, 1);
    let pids = engine.pids();
    engine.shutdown();
    for pid in pids {
        assert!(!is_our_child(pid));
    }
}

#[test]
fn engine_and_lease_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine>();
    assert_send_sync::<gilfree_core::pool::Lease>();
}

#[test]
fn idle_processes_beyond_warm_retire() {
    let _dog = Watchdog::new("idle_processes_beyond_warm_retire");
    let config = EngineConfig {
        idle_timeout: Duration::ZERO,
        on_death: None,
        ..config(1)
    };
    let engine = Engine::start(config, Collect::new()).unwrap();
    let a = engine.acquire(&mut step()).unwrap();
    let b = engine.acquire(&mut step()).unwrap();
    // a, b, and the extra that b's spawn started for a possible burst (forked after b's own
    // process, so perhaps not yet when b returns).
    let mut seen: HashSet<u32> = engine.pids().into_iter().collect();
    assert!(seen.contains(&a.pid()) && seen.contains(&b.pid()));
    a.release();
    b.release();
    // With a zero idle timeout the supervisor retires the extra ones as soon as it runs (after
    // forking the extra, which it registers before it retires anything). There is no event to
    // wait on from outside, so yield until it has (the watchdog bounds this).
    loop {
        let now = engine.pids();
        seen.extend(&now);
        if now.len() <= 1 {
            break;
        }
        std::thread::yield_now();
    }
    let left = engine.pids();
    assert_eq!(left.len(), 1, "at least `warm` stay");
    assert!(is_our_child(left[0]), "the one that stays is alive");
    for &gone in seen.iter().filter(|&&p| p != left[0]) {
        assert!(!is_our_child(gone));
    }
    engine.shutdown();
}

#[test]
fn inherited_fds_reach_the_worker_at_their_numbers() {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::sync::Arc;

    use gilfree_core::pool::Inheritable;
    use rustix::fs::{memfd_create, MemfdFlags};
    use rustix::io::{fcntl_getfd, FdFlags};

    let _dog = Watchdog::new("inherited_fds_reach_the_worker_at_their_numbers");
    let name = format!("gilfree-inherit-test-{}", std::process::id());
    let fd: Arc<OwnedFd> = Arc::new(memfd_create(name.as_str(), MemfdFlags::CLOEXEC).unwrap());
    let num = fd.as_raw_fd();
    let mut cfg = config(0);
    cfg.command.inherit_fds = vec![Arc::clone(&fd) as Arc<dyn Inheritable>];
    let engine = Engine::start(cfg, Collect::new()).unwrap();
    let lease = engine.acquire(&mut step()).unwrap();
    // The worker has the same open file at the same number (nobody in the test worker claims
    // it, so it is still there after the handshake)...
    let ours = std::fs::read_link(format!("/proc/self/fd/{num}")).unwrap();
    let theirs = std::fs::read_link(format!("/proc/{}/fd/{num}", lease.pid())).unwrap();
    assert_eq!(theirs, ours);
    assert!(ours.to_string_lossy().contains(&name), "{ours:?}");
    // ...and here the fd is close-on-exec again, so no other child inherits it.
    assert!(fcntl_getfd(&*fd).unwrap().contains(FdFlags::CLOEXEC));
    lease.release();
    engine.shutdown();
}

/// Waits (bounded by the test's watchdog) until `done()` holds, checking every millisecond.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn an_idle_worker_killed_from_outside_is_reaped_and_replaced() {
    // A Jupyter kernel SIGTERMs its process group on shutdown and waits for the processes to
    // go: an idle worker left a zombie made it wait forever.
    let _dog = Watchdog::new("an_idle_worker_killed_from_outside_is_reaped_and_replaced");
    let engine = Engine::start(config(1), Collect::new()).unwrap();
    let lease = engine.acquire(&mut step()).unwrap();
    let pid = lease.pid();
    lease.release();
    assert_eq!(engine.idle_count(), 1);
    let target = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(target, rustix::process::Signal::TERM).unwrap();
    // Nobody acquires: only the engine itself can reap it. It reaps, then forgets (under its
    // state lock, a moment later): wait for both.
    eventually("the killed idle worker is reaped", || !is_our_child(pid));
    eventually("the reaped worker is forgotten", || {
        !engine.pids().contains(&pid)
    });
    eventually("the warm worker is replaced", || engine.idle_count() == 1);
    let lease = engine.acquire(&mut step()).unwrap();
    assert_ne!(lease.pid(), pid);
    lease.release();
    engine.shutdown();
}

/// The template role for the prestart tests: a template that never sends its ready message
/// (it starts, then waits forever), so only a kill ends it.
#[test]
fn template_hang_entry() {
    if std::env::var_os(gilfree_core::pool::TEMPLATE_FD_ENV).is_some() {
        loop {
            std::thread::park();
        }
    }
}

fn hanging_template() -> gilfree_core::pool::TemplateCommand {
    gilfree_core::pool::TemplateCommand {
        args: [
            "--exact",
            "template_hang_entry",
            "--nocapture",
            "--test-threads=1",
        ]
        .into_iter()
        .map(std::ffi::OsString::from)
        .collect(),
    }
}

#[test]
fn a_prestarted_template_that_no_engine_takes_is_killed_by_cancel() {
    let _dog = Watchdog::new("a_prestarted_template_that_no_engine_takes_is_killed_by_cancel");
    let command = pool_support::worker_command();
    Engine::prestart_template(command.clone(), hanging_template()).unwrap();
    let pid = Engine::prestarted_template_pid(STEP).expect("launched");
    assert!(is_our_child(pid));
    // A second prestart is a no-op: the same template.
    Engine::prestart_template(command, hanging_template()).unwrap();
    assert_eq!(Engine::prestarted_template_pid(STEP), Some(pid));
    // It never becomes ready: cancel kills it rather than waiting for its handshake.
    Engine::cancel_prestart();
    assert!(!is_our_child(pid));
    assert_eq!(Engine::prestarted_template_pid(Duration::ZERO), None);
    Engine::cancel_prestart(); // idempotent
}

#[test]
fn an_engine_adopts_the_prestarted_template_and_shutdown_kills_it_while_it_starts() {
    let _dog = Watchdog::new("an_engine_adopts_the_prestarted_template");
    Engine::prestart_template(pool_support::worker_command(), hanging_template()).unwrap();
    let pid = Engine::prestarted_template_pid(STEP).expect("launched");
    let engine =
        Engine::start_with_template(config(0), Collect::new(), Some(hanging_template())).unwrap();
    // Taken by the engine: no longer waiting for one.
    assert_eq!(Engine::prestarted_template_pid(Duration::ZERO), None);
    assert!(is_our_child(pid));
    // The template is still starting (it never will be ready): shutdown kills it.
    engine.shutdown();
    assert!(!is_our_child(pid));
}

#[test]
fn an_engine_for_another_template_command_cancels_the_prestarted_one() {
    let _dog = Watchdog::new("an_engine_for_another_template_command_cancels_the_prestarted_one");
    Engine::prestart_template(pool_support::worker_command(), hanging_template()).unwrap();
    let pid = Engine::prestarted_template_pid(STEP).expect("launched");
    // A template command that fails at once (the worker role without a channel): the engine
    // then spawns workers directly.
    let other = gilfree_core::pool::TemplateCommand {
        args: ["--exact", "child_entry", "--nocapture", "--test-threads=1"]
            .into_iter()
            .map(std::ffi::OsString::from)
            .collect(),
    };
    let engine = Engine::start_with_template(config(0), Collect::new(), Some(other)).unwrap();
    assert!(!is_our_child(pid));
    let lease = engine.acquire(&mut step()).unwrap();
    lease.send(b"direct", &mut step()).unwrap();
    assert_eq!(lease.recv(&mut step()).unwrap(), b"direct");
    lease.release();
    engine.shutdown();
}
