//! Multi-process tests of the process-shared primitives: this test binary re-runs itself as
//! a child (rayon style) that inherits the arena's memfd, attaches a primitive by handle, and
//! is SIGKILLed while holding it. Each step has a watchdog deadline; every child is killed and
//! reaped before the test ends.
#![cfg(not(loom))]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gilfree_core::ipc::arena::{Arena, ARENA_FD_ENV};
use gilfree_core::ipc::barrier::ShmBarrier;
use gilfree_core::ipc::error::{Acquired, BarrierError};
use gilfree_core::ipc::lock::{RawLock, ShmLock};
use gilfree_core::ipc::queue::{ByteQueue, ShmQueue};
use gilfree_core::ipc::semaphore::{Semaphore, ShmSemaphore};
use gilfree_core::Wait;

const ROLE_ENV: &str = "GILFREE_IPC_ROLE";
const HANDLE_ENV: &str = "GILFREE_IPC_HANDLE";
const STEP: Duration = Duration::from_secs(60);
/// The killed putter's item: 256 MiB, so its copy into fresh heap pages takes a while.
const BIG_ITEM: usize = 256 << 20;

fn step() -> Wait<'static> {
    Wait::timeout(Some(STEP))
}

/// The child's side: attach, take the primitive, say "ready", then wait to be killed.
#[test]
fn child_entry() {
    let Some(role) = std::env::var_os(ROLE_ENV) else {
        return;
    };
    let arena = Arena::from_env().unwrap().expect("inherited arena");
    let handle: u64 = std::env::var(HANDLE_ENV).unwrap().parse().unwrap();
    let _keep: Box<dyn std::any::Any> = match role.to_str().unwrap() {
        "lock" => {
            let lock = ShmLock::attach(&arena, handle).unwrap();
            lock.acquire(&mut step()).unwrap();
            Box::new(lock)
        }
        "semaphore" => {
            let sem = ShmSemaphore::attach(&arena, handle).unwrap();
            assert!(sem.acquire(&mut step()).unwrap());
            Box::new(sem)
        }
        "barrier" => Box::new(ShmBarrier::attach(&arena, handle).unwrap()),
        "queue" => {
            let q = ShmQueue::attach(&arena, handle).unwrap();
            let mut out = std::io::stdout().lock();
            out.write_all(b"ready\n").unwrap();
            out.flush().unwrap();
            drop(out);
            // A put long enough to be killed in: the parent watches the queue's lock word.
            let huge = vec![7u8; BIG_ITEM];
            q.put(&huge, true, &mut step()).unwrap();
            Box::new(q)
        }
        other => panic!("unknown role {other}"),
    };
    // Straight to fd 1: the test harness captures `println!`, not direct writes.
    let mut out = std::io::stdout().lock();
    out.write_all(b"ready\n").unwrap();
    out.flush().unwrap();
    drop(out);
    // Block until killed (stdin is a pipe the parent never writes to).
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    std::process::exit(0);
}

/// Starts the child for `role`, waits for its "ready", and returns it.
fn start_child(arena: &Arc<Arena>, role: &str, handle: u64) -> Child {
    let fds = arena.inherit_fds();
    for fd in &fds {
        gilfree_core::ipc::set_fd_flags(*fd, rustix::io::FdFlags::empty()).unwrap();
    }
    let spawned = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .env(HANDLE_ENV, handle.to_string())
        .env(ARENA_FD_ENV, arena.env_value())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    for fd in &fds {
        gilfree_core::ipc::set_fd_flags(*fd, rustix::io::FdFlags::CLOEXEC).unwrap();
    }
    let mut child = spawned.unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    // Watchdog: a child that is not ready within STEP fails the test (and is killed).
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            let eof = out.read_line(&mut line).unwrap_or(0) == 0;
            // The harness may have printed "test child_entry ... " on the same line.
            let ready = line.trim_end().ends_with("ready");
            if eof || ready {
                let _ = tx.send(ready);
                return;
            }
            line.clear();
        }
    });
    if rx.recv_timeout(STEP) != Ok(true) {
        kill(child);
        panic!("child {pid} did not get ready");
    }
    child
}

/// SIGKILL and reap: no process is left behind.
fn kill(mut child: Child) -> u32 {
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    pid
}

#[test]
fn killed_lock_holder_hands_the_lock_on() {
    let arena = Arena::create().unwrap();
    let lock = ShmLock::new(&arena, false).unwrap();
    let child = start_child(&arena, "lock", lock.handle());
    assert!(lock.locked());
    assert!(lock.try_acquire().unwrap().is_none());
    kill(child);
    assert_eq!(lock.acquire(&mut step()).unwrap(), Acquired::OwnerDied);
    lock.release().unwrap();
    assert_eq!(lock.acquire(&mut step()).unwrap(), Acquired::Clean);
    lock.release().unwrap();
}

#[test]
fn waiter_gets_the_lock_when_the_holder_is_killed() {
    let arena = Arena::create().unwrap();
    let lock = ShmLock::new(&arena, false).unwrap();
    let child = start_child(&arena, "lock", lock.handle());
    std::thread::scope(|s| {
        let waiter = s.spawn(|| lock.acquire(&mut step()));
        kill(child);
        assert_eq!(waiter.join().unwrap().unwrap(), Acquired::OwnerDied);
    });
}

#[test]
fn reaped_semaphore_holder_gives_its_permit_back() {
    let arena = Arena::create().unwrap();
    let sem = ShmSemaphore::new(&arena, 1, true).unwrap();
    let child = start_child(&arena, "semaphore", sem.handle());
    assert!(!sem.try_acquire());
    std::thread::scope(|s| {
        let waiter = s.spawn(|| sem.acquire(&mut step()).unwrap());
        let pid = kill(child);
        arena.reap(pid); // what the engine's death hook does
        assert!(waiter.join().unwrap());
    });
}

#[test]
fn reaped_barrier_party_breaks_the_barrier() {
    let arena = Arena::create().unwrap();
    let barrier = ShmBarrier::new(&arena, 2).unwrap();
    let child = start_child(&arena, "barrier", barrier.handle());
    std::thread::scope(|s| {
        let waiter = s.spawn(|| barrier.body().wait(&mut step()));
        let pid = kill(child);
        arena.reap(pid);
        assert!(matches!(waiter.join().unwrap(), Err(BarrierError::Broken)));
    });
    assert!(barrier.body().broken());
}

#[test]
fn putter_killed_mid_put_loses_nothing_else() {
    let arena = Arena::create().unwrap();
    let q = ShmQueue::new(&arena, 0, 1 << 30).unwrap();
    q.put(b"before-1", true, &mut step()).unwrap();
    q.put(b"before-2", true, &mut step()).unwrap();
    let child = start_child(&arena, "queue", q.handle());
    // Mid-put, deterministically: the child holds the queue's lock while it copies its item
    // (nobody else takes it here), so kill it as soon as the lock word names an owner.
    let deadline = std::time::Instant::now() + STEP;
    while q.lock_owner() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never took the lock"
        );
        std::hint::spin_loop();
    }
    kill(child);
    assert_eq!(q.get(true, &mut step()).unwrap(), b"before-1");
    assert_eq!(q.get(true, &mut step()).unwrap(), b"before-2");
    // The killed put either published its whole item (killed after step 5) or nothing; and
    // unless it got all the way through its unlock, its death was cleaned up.
    let published = q.len() == 1;
    if published {
        let big = q.get(true, &mut step()).unwrap();
        assert!(big.len() == BIG_ITEM && big.iter().all(|&b| b == 7));
    }
    assert!(q.is_empty());
    assert!(q.recoveries() == 1 || published);
    q.put(b"after", true, &mut step()).unwrap();
    assert_eq!(q.get(true, &mut step()).unwrap(), b"after");
}
