//! The arena's slot lifecycle under death, fork-style pid changes and many attachers.
//!
//! Crash tests re-run this test binary as a child (rayon style) that inherits the arena's
//! memfd and SIGKILLs itself at one chosen [`Step`] of alloc / attach / detach / retire / reap
//! ([`arena::crash_at`]). The parent reaps it as the engine would and checks that what the
//! death left behind is at worst a leak: the slot the parent still holds is never freed, and
//! no slot is ever handed out twice. Every child has a watchdog and is reaped before the test
//! ends.
#![cfg(not(loom))]

use std::collections::HashSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use gilfree_core::ipc::arena::{self, Arena, Handle, Slot, ARENA_FD_ENV, TABLE_LEN};
use gilfree_core::ipc::error::AttachError;
use gilfree_core::ipc::kinds;
use gilfree_core::ipc::lock::{RawLock, ShmLock};
use gilfree_core::ipc::refcount::Step;

const ROLE_ENV: &str = "GILFREE_ARENA_ROLE";
const HANDLE_ENV: &str = "GILFREE_ARENA_HANDLE";
const WATCHDOG: Duration = Duration::from_secs(60);
/// A pid no live process has (above the kernel's `pid_max` limit of 2^22).
const FAKE_PID: u32 = 1 << 23;

fn cell(arena: &Arc<Arena>) -> Slot {
    arena.alloc(kinds::CELL, |_| Ok(())).unwrap()
}

fn index(h: Handle) -> u32 {
    h as u32
}

/// The child's side: run the role's operation with the crash point armed; if the step is never
/// reached, exit 0 (the parent then fails the test: every role reaches its step).
#[test]
fn child_entry() {
    let Some(role) = std::env::var_os(ROLE_ENV) else {
        return;
    };
    let arena = Arena::from_env().unwrap().expect("inherited arena");
    let handle: Handle = std::env::var(HANDLE_ENV).unwrap().parse().unwrap();
    let step_no: u32 = role.to_str().unwrap().parse().unwrap();
    let step = Step::from_u32(step_no).expect("a step number");
    match step {
        Step::AllocPopped | Step::AllocEntry | Step::AllocCounted => {
            arena::crash_at(Some(step));
            let _ = cell(&arena);
        }
        Step::AttachCounted => {
            arena::crash_at(Some(step));
            let _ = arena.attach(handle, kinds::CELL);
        }
        Step::DetachEntry => {
            let twice = [
                arena.attach(handle, kinds::CELL).unwrap(),
                arena.attach(handle, kinds::CELL).unwrap(),
            ];
            arena::crash_at(Some(step));
            drop(twice);
        }
        Step::RetireCleared | Step::RetireUnlocked => {
            // The child's own slot, dropped: its retirement is where it dies.
            let mine = cell(&arena);
            let _keep = arena.attach(handle, kinds::CELL).unwrap();
            arena::crash_at(Some(step));
            drop(mine);
        }
        Step::ReapEntry => {
            // The reaper dies: a (fake) dead process's entry is half reaped.
            let ghost = arena.attach_as(handle, kinds::CELL, FAKE_PID).unwrap();
            std::mem::forget(ghost);
            arena::crash_at(Some(step));
            arena.reap(FAKE_PID);
        }
    }
    std::process::exit(0);
}

/// Runs the child for `step` against the parent's slot `handle`; waits (with a watchdog) for
/// it to die and returns its pid and whether SIGKILL ended it.
fn run_child(arena: &Arc<Arena>, step: Step, handle: Handle) -> (u32, bool) {
    let fds = arena.inherit_fds();
    for fd in &fds {
        gilfree_core::ipc::set_fd_flags(*fd, rustix::io::FdFlags::empty()).unwrap();
    }
    let spawned = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, (step as u32).to_string())
        .env(HANDLE_ENV, handle.to_string())
        .env(ARENA_FD_ENV, arena.env_value())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn();
    for fd in &fds {
        gilfree_core::ipc::set_fd_flags(*fd, rustix::io::FdFlags::CLOEXEC).unwrap();
    }
    let mut child = spawned.unwrap();
    let pid = child.id();
    // Watchdog: the child's stdout closes when it dies; a child still alive after WATCHDOG is
    // killed and fails the test.
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let finished = rx.recv_timeout(WATCHDOG).is_ok();
    if !finished {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert!(finished, "child {pid} hung at {step:?}");
    use std::os::unix::process::ExitStatusExt;
    (pid, status.signal() == Some(libc::SIGKILL))
}

/// Every free slot can be taken exactly once, and none of them is one still in use.
fn assert_free_list_sound(arena: &Arc<Arena>, in_use: &[Handle]) {
    let mut taken = Vec::new();
    let mut seen = HashSet::new();
    loop {
        match arena.alloc(kinds::CELL, |_| Ok(())) {
            Ok(s) => {
                let i = index(s.handle());
                assert!(seen.insert(i), "slot {i} handed out twice");
                assert!(
                    !in_use.iter().any(|&h| index(h) == i),
                    "slot {i} handed out while still in use"
                );
                taken.push(s);
            }
            Err(AttachError::Full) => break,
            Err(e) => panic!("alloc failed: {e}"),
        }
    }
}

#[test]
fn a_kill_at_any_step_leaks_at_worst() {
    for step in Step::ALL {
        let arena = Arena::create().unwrap();
        let ours = cell(&arena);
        let h = ours.handle();
        let (pid, killed) = run_child(&arena, step, h);
        assert!(killed, "the child never reached {step:?}");
        arena.reap(pid); // what the engine's death hook does
                         // The slot we hold is still ours: attachable, not recycled.
        let again = arena
            .attach(h, kinds::CELL)
            .unwrap_or_else(|e| panic!("our slot was freed after a kill at {step:?}: {e}"));
        drop(again);
        assert_free_list_sound(&arena, &[h]);
        drop(ours);
    }
}

#[test]
fn a_clean_attach_and_detach_leaves_nothing() {
    let arena = Arena::create().unwrap();
    let ours = cell(&arena);
    let h = ours.handle();
    let other = arena.attach_as(h, kinds::CELL, FAKE_PID).unwrap();
    drop(other);
    arena.reap(FAKE_PID);
    assert_eq!(arena.live_slots(), 1);
    drop(ours);
    assert_eq!(arena.live_slots(), 0);
    assert!(matches!(
        arena.attach(h, kinds::CELL),
        Err(AttachError::Stale)
    ));
}

#[test]
fn over_a_thousand_processes_attach_one_primitive() {
    const N: u32 = 1500;
    assert!((N as usize) > 20 * TABLE_LEN);
    let arena = Arena::create().unwrap();
    let ours = cell(&arena);
    let h = ours.handle();
    let pids: Vec<u32> = (0..N).map(|i| FAKE_PID + 1 + i).collect();
    let mut per_pid = Vec::new();
    for &pid in &pids {
        // Two attachments of one process share its entry.
        let both = [
            arena.attach_as(h, kinds::CELL, pid).unwrap(),
            arena.attach_as(h, kinds::CELL, pid).unwrap(),
        ];
        per_pid.push(both);
    }
    let heap = arena.heap().unwrap();
    assert!(heap.chunks_in_use() >= 1, "the table spilled into the heap");
    // Half of them die (their attachments are abandoned) and are reaped; the rest detach.
    let alive = per_pid.split_off((N / 2) as usize);
    for (both, &pid) in per_pid.into_iter().zip(&pids) {
        std::mem::forget(both);
        arena.reap(pid);
    }
    assert_eq!(arena.live_slots(), 1);
    drop(alive);
    assert_eq!(arena.live_slots(), 1, "we still hold it");
    drop(ours);
    assert_eq!(arena.live_slots(), 0);
    assert_eq!(heap.chunks_in_use(), 0, "overflow chunks given back");
}

#[test]
fn a_slot_whose_lock_is_held_is_not_recycled_until_its_owner_dies() {
    let arena = Arena::create().unwrap();
    let (held_tx, held_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let a = Arc::clone(&arena);
    let owner = std::thread::spawn(move || {
        let lock = ShmLock::new(&a, false).unwrap();
        assert!(lock.try_acquire().unwrap().is_some());
        let h = lock.handle();
        drop(lock); // `l.acquire(); del l`
        held_tx.send(h).unwrap();
        exit_rx.recv_timeout(WATCHDOG).unwrap();
        // Exiting with the mutex on this thread's robust list: the kernel marks it.
    });
    let h = held_rx.recv_timeout(WATCHDOG).unwrap();
    assert_eq!(arena.live_slots(), 0);
    assert_eq!(arena.retired_held_slots(), 1);
    assert!(matches!(
        arena.attach(h, kinds::LOCK),
        Err(AttachError::Stale)
    ));
    // While the owner lives, no allocation gets that slot, even with the free list drained.
    let mut taken = Vec::new();
    while let Ok(s) = arena.alloc(kinds::CELL, |_| Ok(())) {
        assert_ne!(
            index(s.handle()),
            index(h),
            "recycled a slot whose mutex is held"
        );
        taken.push(s);
    }
    assert_eq!(arena.reclaim_retired(), 0);
    exit_tx.send(()).unwrap();
    owner.join().unwrap();
    // The owner is gone: the next allocation finds the slot free again.
    let fresh = ShmLock::new(&arena, false).unwrap();
    assert_eq!(index(fresh.handle()), index(h));
    assert_eq!(arena.retired_held_slots(), 0);
    assert!(
        fresh.try_acquire().unwrap().is_some(),
        "a fresh, unlocked mutex"
    );
    fresh.release().unwrap();
}
