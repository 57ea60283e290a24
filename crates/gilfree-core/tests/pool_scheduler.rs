//! The task scheduler against real worker processes (this test binary re-run as a worker that
//! speaks the tiny protocol of `pool_support::scheduler_task`): exactly-once completion,
//! pipelining, crashes, timeouts, cancellation, the initializer, worker recycling, shutdown.
//!
//! Every test has a watchdog and shuts its engine down (no process left behind); no test
//! asserts a duration or sleeps to synchronise: workers block on named pipes ([`Gate`]) and
//! the test waits for their `start:` lines ([`Starts`]).

mod pool_support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use gilfree_core::pool::scheduler::{self, ENGINE_FAILURE};
use gilfree_core::pool::{
    CancelOutcome, Completion, End, Engine, PoolConfig, SubmitError, SubmitManyError, Task,
    TaskPool,
};
use gilfree_core::{RecvError, Wait};
use pool_support::{config, is_our_child, step, Gate, Starts, Watchdog};

#[test]
fn child_entry() {
    pool_support::child_main();
}

fn task(id: u64, payload: &str, frames: u32) -> Task {
    Task {
        id,
        payload: payload.as_bytes().to_vec(),
        frames,
        ..Task::default()
    }
}

fn echo(id: u64, n: u32) -> Task {
    task(id, &format!("echo:{n}:t{id}"), n)
}

fn frames_of(id: u64, n: u32) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("t{id}:{i}").into_bytes()).collect()
}

fn pool(workers: usize, warm: usize, sink: &Arc<Starts>, tweak: PoolConfig) -> (Engine, TaskPool) {
    let engine = Engine::start(config(warm), sink.clone()).unwrap();
    let pool = TaskPool::start(engine.clone(), PoolConfig { workers, ..tweak });
    (engine, pool)
}

/// Takes completions until `n` have arrived; panics on a duplicate.
fn collect(pool: &TaskPool, n: usize) -> HashMap<u64, Completion> {
    let mut got = HashMap::new();
    while got.len() < n {
        for c in pool.completions(&mut step()).expect("completions") {
            let id = c.id;
            assert!(got.insert(id, c).is_none(), "task {id} completed twice");
        }
    }
    got
}

/// Shuts the pool down, checks that it drains to `Disconnected` with nothing more, joins it,
/// and leaves no process behind.
fn finish(engine: Engine, pool: TaskPool) {
    pool.shutdown(false, false);
    match pool.completions(&mut step()) {
        Err(RecvError::Disconnected) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(pool.join(&mut step()));
    assert!(pool.pids().is_empty());
    let pids = engine.pids();
    engine.shutdown();
    for pid in pids {
        assert!(!is_our_child(pid), "worker {pid} left behind");
    }
}

#[test]
fn a_thousand_tasks_complete_exactly_once() {
    let _dog = Watchdog::new("a_thousand_tasks_complete_exactly_once");
    let sink = Starts::new();
    let (engine, pool) = pool(2, 2, &sink, PoolConfig::default());
    let n = 1000;
    for id in 0..n {
        pool.submit(echo(id, (id % 5) as u32 + 1)).unwrap();
    }
    let got = collect(&pool, n as usize);
    for id in 0..n {
        let c = &got[&id];
        assert_eq!(c.end, End::Done, "task {id}");
        assert_eq!(c.frames, frames_of(id, (id % 5) as u32 + 1), "task {id}");
    }
    assert_eq!(pool.queued(), 0);
    finish(engine, pool);
    for id in 0..n {
        assert_eq!(sink.count(&format!("t{id}")), 1, "task {id} started once");
    }
}

#[test]
fn crash_mid_task_requeues_the_task_behind_it() {
    let _dog = Watchdog::new("crash_mid_task_requeues_the_task_behind_it");
    let sink = Starts::new();
    // The slot is held in its initializer until both tasks are queued, so its first fill
    // pipelines them both onto the same worker.
    let gate = Gate::new("crash-init");
    let init = format!("init-gate:{}", gate.path.display());
    let tweak = PoolConfig {
        init: Some(init.into_bytes()),
        ..PoolConfig::default()
    };
    let (engine, pool) = pool(1, 1, &sink, tweak);
    pool.submit(task(1, "crash-after:2:t1", 5)).unwrap();
    pool.submit(echo(2, 3)).unwrap();
    gate.open();
    let got = collect(&pool, 2);
    match &got[&1].end {
        End::Crashed { exit, .. } => {
            assert_eq!(exit.and_then(|e| e.signal), Some(6), "SIGABRT");
        }
        other => panic!("task 1: {other:?}"),
    }
    assert_eq!(
        got[&1].frames,
        frames_of(1, 2),
        "the frames before the crash"
    );
    assert_eq!(got[&2].end, End::Done);
    assert_eq!(got[&2].frames, frames_of(2, 3));
    finish(engine, pool);
    assert_eq!(sink.count("t1"), 1);
    assert_eq!(
        sink.count("t2"),
        1,
        "the pipelined task ran once, on the new worker"
    );
    assert_eq!(sink.count("init"), 2, "the replacement ran the initializer");
}

#[test]
fn timeout_kills_and_replaces_the_worker() {
    let _dog = Watchdog::new("timeout_kills_and_replaces_the_worker");
    let sink = Starts::new();
    let (engine, pool) = pool(1, 1, &sink, PoolConfig::default());
    pool.submit(Task {
        timeout: Some(Duration::from_millis(100)),
        ..task(1, "block:t1", 1)
    })
    .unwrap();
    pool.submit(echo(2, 2)).unwrap();
    pool.submit(echo(3, 1)).unwrap();
    let got = collect(&pool, 3);
    let End::TimedOut { pid } = got[&1].end else {
        panic!("task 1: {:?}", got[&1]);
    };
    assert!(got[&1].frames.is_empty());
    assert!(
        !pool.pids().contains(&pid),
        "the timed-out worker was replaced"
    );
    assert_eq!(got[&2].frames, frames_of(2, 2));
    assert_eq!(got[&3].frames, frames_of(3, 1));
    finish(engine, pool);
    assert!(!is_our_child(pid));
    assert_eq!(sink.count("t2"), 1);
}

#[test]
fn cancel_queued_and_running() {
    let _dog = Watchdog::new("cancel_queued_and_running");
    let sink = Starts::new();
    let tweak = PoolConfig {
        depth: 1,
        ..PoolConfig::default()
    };
    let (engine, pool) = pool(1, 1, &sink, tweak);
    pool.submit(task(1, "block:t1", 1)).unwrap();
    sink.wait_for("t1");
    pool.submit(echo(2, 1)).unwrap();
    pool.submit(echo(3, 1)).unwrap();
    assert_eq!(pool.queued(), 2);
    assert_eq!(pool.cancel(2, false), CancelOutcome::Cancelled);
    assert_eq!(pool.cancel(2, true), CancelOutcome::NotFound);
    assert_eq!(pool.queued(), 1);
    let pid = pool.pids()[0];
    assert_eq!(pool.cancel(1, false), CancelOutcome::Running);
    assert_eq!(pool.cancel(1, true), CancelOutcome::Killed);
    assert_eq!(pool.cancel(1, true), CancelOutcome::NotFound);
    let got = collect(&pool, 3);
    assert_eq!(got[&1].end, End::Cancelled);
    assert_eq!(got[&2].end, End::Cancelled);
    assert_eq!(
        got[&3].end,
        End::Done,
        "the next task runs on a fresh worker"
    );
    assert!(!pool.pids().contains(&pid));
    assert_eq!(pool.cancel(3, true), CancelOutcome::NotFound);
    finish(engine, pool);
    assert_eq!(sink.count("t2"), 0, "a cancelled queued task never starts");
}

#[test]
fn cancel_with_kill_of_a_task_waiting_in_the_pipeline() {
    let _dog = Watchdog::new("cancel_with_kill_of_a_task_waiting_in_the_pipeline");
    let sink = Starts::new();
    let init_gate = Gate::new("pipe-init");
    let gate = Gate::new("pipe-task");
    let tweak = PoolConfig {
        init: Some(format!("init-gate:{}", init_gate.path.display()).into_bytes()),
        ..PoolConfig::default()
    };
    let (engine, pool) = pool(1, 1, &sink, tweak);
    pool.submit(task(1, &format!("gate:{}:t1", gate.path.display()), 1))
        .unwrap();
    pool.submit(echo(2, 1)).unwrap();
    pool.submit(echo(3, 1)).unwrap();
    init_gate.open();
    sink.wait_for("t1");
    // Task 2 sits in the worker's ring behind task 1; task 3 is still queued.
    assert_eq!(pool.queued(), 1);
    assert_eq!(pool.cancel(2, false), CancelOutcome::Running);
    assert_eq!(pool.cancel(2, true), CancelOutcome::Killed);
    let first = pool.pids()[0];
    gate.open();
    let got = collect(&pool, 3);
    assert_eq!(got[&1].end, End::Done, "the task ahead is unharmed");
    assert_eq!(got[&1].frames, frames_of(1, 1));
    assert_eq!(got[&2].end, End::Cancelled);
    assert_eq!(got[&3].end, End::Done);
    finish(engine, pool);
    assert!(
        !is_our_child(first),
        "the worker holding the cancelled task was killed"
    );
    assert_eq!(sink.count("t3"), 1);
}

#[test]
fn init_failure_breaks_the_pool_without_respawning() {
    let _dog = Watchdog::new("init_failure_breaks_the_pool_without_respawning");
    let sink = Starts::new();
    let tweak = PoolConfig {
        init: Some(b"init-fail".to_vec()),
        ..PoolConfig::default()
    };
    let (engine, pool) = pool(2, 0, &sink, tweak);
    for id in 0..10 {
        pool.submit(echo(id, 1)).unwrap();
    }
    let got = collect(&pool, 10);
    for c in got.values() {
        assert_eq!(c.end, End::Broken(b"\x01bad".to_vec()), "{c:?}");
    }
    // Later submits are accepted and fail at once.
    pool.submit(echo(10, 1)).unwrap();
    let late = pool.completions(&mut step()).unwrap();
    assert_eq!(late.len(), 1);
    assert!(matches!(late[0].end, End::Broken(_)));
    // A broken pool's slots exit by themselves.
    assert!(pool.join(&mut step()));
    finish(engine, pool);
    assert!(
        sink.count("init") <= 2,
        "one init per slot, no respawn loop"
    );
    for id in 0..=10 {
        assert_eq!(sink.count(&format!("t{id}")), 0);
    }
}

#[test]
fn a_worker_that_cannot_start_breaks_the_pool() {
    let _dog = Watchdog::new("a_worker_that_cannot_start_breaks_the_pool");
    let mut cfg = config(0);
    cfg.command.program = "/bin/false".into();
    cfg.command.args.clear();
    let engine = Engine::start(cfg, Starts::new()).unwrap();
    let pool = TaskPool::start(engine.clone(), PoolConfig::default());
    pool.submit(echo(1, 1)).unwrap();
    let got = collect(&pool, 1);
    match &got[&1].end {
        End::Broken(frame) => assert_eq!(frame.first(), Some(&ENGINE_FAILURE)),
        other => panic!("{other:?}"),
    }
    finish(engine, pool);
}

#[test]
fn max_tasks_per_worker_recycles_workers() {
    let _dog = Watchdog::new("max_tasks_per_worker_recycles_workers");
    let sink = Starts::new();
    let tweak = PoolConfig {
        max_tasks_per_worker: Some(3),
        init: Some(b"init-ok".to_vec()),
        ..PoolConfig::default()
    };
    let (engine, pool) = pool(1, 1, &sink, tweak);
    for id in 0..9 {
        pool.submit(task(id, &format!("pid:t{id}"), 1)).unwrap();
    }
    let got = collect(&pool, 9);
    let mut per_pid: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
    for id in 0..9 {
        assert_eq!(got[&id].end, End::Done);
        per_pid
            .entry(got[&id].frames[0].to_vec())
            .or_default()
            .push(id);
    }
    assert_eq!(per_pid.len(), 3, "{per_pid:?}");
    for ids in per_pid.values() {
        assert_eq!(ids.len(), 3, "{per_pid:?}");
    }
    finish(engine, pool);
    assert!(sink.count("init") >= 3);
}

#[test]
fn shutdown_cancelling_pending_and_running() {
    let _dog = Watchdog::new("shutdown_cancelling_pending_and_running");
    let sink = Starts::new();
    let (engine, pool) = pool(1, 1, &sink, PoolConfig::default());
    pool.submit(task(1, "block:t1", 1)).unwrap();
    sink.wait_for("t1");
    for id in 2..7 {
        pool.submit(echo(id, 1)).unwrap();
    }
    let mut cancelled = pool.shutdown(true, true);
    cancelled.sort_unstable();
    assert_eq!(cancelled, (1..7).collect::<Vec<u64>>());
    assert!(pool.shutdown(true, true).is_empty(), "idempotent");
    assert!(matches!(
        pool.submit(echo(7, 1)),
        Err(SubmitError::ShutDown(t)) if t.id == 7
    ));
    let got = collect(&pool, 6);
    for c in got.values() {
        assert_eq!(c.end, End::Cancelled, "{c:?}");
    }
    assert!(pool.join(&mut step()));
    finish(engine, pool);
    for id in 2..7 {
        assert_eq!(sink.count(&format!("t{id}")), 0);
    }
}

#[test]
fn shutdown_without_cancel_drains_the_queue() {
    let _dog = Watchdog::new("shutdown_without_cancel_drains_the_queue");
    let sink = Starts::new();
    let (engine, pool) = pool(2, 2, &sink, PoolConfig::default());
    for id in 0..50 {
        pool.submit(echo(id, 2)).unwrap();
    }
    pool.shutdown(false, false);
    let mut got = HashMap::new();
    loop {
        match pool.completions(&mut step()) {
            Ok(batch) => {
                for c in batch {
                    assert!(got.insert(c.id, c).is_none());
                }
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got.len(), 50);
    assert!(got.values().all(|c| c.end == End::Done));
    assert!(pool.join(&mut step()));
    let timeout = pool.completions(&mut Wait::timeout(Some(Duration::ZERO)));
    assert!(matches!(timeout, Err(RecvError::Disconnected)));
    engine.shutdown();
}

#[test]
fn submit_many_queues_in_order_or_hands_everything_back() {
    let _dog = Watchdog::new("submit_many_queues_in_order_or_hands_everything_back");
    let sink = Starts::new();
    // One worker runs the queue in its order, so completions come in submission order.
    let (engine, pool) = pool(1, 1, &sink, PoolConfig::default());
    pool.submit(echo(0, 1)).unwrap();
    pool.submit_many((1..40).map(|id| echo(id, 2)).collect())
        .unwrap();
    pool.submit(echo(40, 1)).unwrap();
    pool.submit_many(Vec::new()).unwrap();
    let mut order = Vec::new();
    while order.len() < 41 {
        for c in pool.completions(&mut step()).expect("completions") {
            assert_eq!(c.end, End::Done, "task {}", c.id);
            let n = if c.id == 0 || c.id == 40 { 1 } else { 2 };
            assert_eq!(c.frames, frames_of(c.id, n), "task {}", c.id);
            order.push(c.id);
        }
    }
    assert_eq!(order, (0..41).collect::<Vec<u64>>());
    pool.shutdown(false, false);
    match pool.submit_many(vec![echo(41, 1), echo(42, 1)]) {
        Err(SubmitManyError::ShutDown(back)) => {
            assert_eq!(back.iter().map(|t| t.id).collect::<Vec<_>>(), [41, 42]);
        }
        Ok(()) => panic!("submit_many after shutdown was accepted"),
    }
    assert!(matches!(
        pool.completions(&mut step()),
        Err(RecvError::Disconnected)
    ));
    assert!(pool.join(&mut step()));
    engine.shutdown();
}

#[test]
fn short_tasks_deepen_the_pipeline() {
    let _dog = Watchdog::new("short_tasks_deepen_the_pipeline");
    // Everything counts as short, then nothing does: what is short is the config's to say, so
    // the pipeline's depth does not depend on this machine's speed.
    for (short_task, pipelined) in [(Duration::from_secs(3600), 7), (Duration::ZERO, 1)] {
        let sink = Starts::new();
        let gate = Gate::new(&format!("short-{}", short_task.as_secs()));
        let tweak = PoolConfig {
            short_depth: 8,
            short_task,
            ..PoolConfig::default()
        };
        let (engine, pool) = pool(1, 1, &sink, tweak);
        for id in 0..4 {
            pool.submit(echo(id, 1)).unwrap();
        }
        collect(&pool, 4);
        // A task held at a gate and 20 behind it, queued at once: the idle slot takes the
        // first, then pipelines as deep as the last four tasks allow.
        let mut tasks = vec![task(100, &format!("gate:{}:t100", gate.path.display()), 1)];
        tasks.extend((101..121).map(|id| echo(id, 1)));
        pool.submit_many(tasks).unwrap();
        sink.wait_for("t100");
        assert_eq!(pool.queued(), 20 - pipelined, "short_task {short_task:?}");
        gate.open();
        let got = collect(&pool, 21);
        assert!(got.values().all(|c| c.end == End::Done));
        finish(engine, pool);
    }
}

#[test]
fn completions_times_out_when_idle() {
    let _dog = Watchdog::new("completions_times_out_when_idle");
    let sink = Starts::new();
    let (engine, pool) = pool(1, 1, &sink, PoolConfig::default());
    let r = pool.completions(&mut Wait::timeout(Some(Duration::ZERO)));
    assert!(matches!(r, Err(RecvError::Timeout)), "{r:?}");
    // A task of no frames needs no worker.
    pool.submit(task(1, "unused", 0)).unwrap();
    assert_eq!(collect(&pool, 1)[&1].end, End::Done);
    finish(engine, pool);
}

/// A tiny deterministic generator (xorshift), so a failure can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn stress_random_crashes_exactly_once() {
    let _dog = Watchdog::new("stress_random_crashes_exactly_once");
    let sink = Starts::new();
    let (engine, pool) = pool(2, 2, &sink, PoolConfig::default());
    let seed = 0x9E37_79B9_7F4A_7C15;
    let mut rng = Rng(seed);
    let n = 400u64;
    let mut crashing = HashSet::new();
    for id in 0..n {
        let frames = (rng.next() % 4) as u32 + 1;
        if rng.next() % 10 == 0 {
            let k = (rng.next() % u64::from(frames)) as u32;
            crashing.insert(id);
            pool.submit(task(id, &format!("crash-after:{k}:t{id}"), frames))
                .unwrap();
        } else {
            pool.submit(echo(id, frames)).unwrap();
        }
    }
    let got = collect(&pool, n as usize);
    for id in 0..n {
        let c = &got[&id];
        if crashing.contains(&id) {
            assert!(matches!(c.end, End::Crashed { .. }), "seed {seed}: {c:?}");
        } else {
            assert_eq!(c.end, End::Done, "seed {seed}: {c:?}");
        }
        let n = c.frames.len() as u32;
        assert_eq!(c.frames, frames_of(id, n), "seed {seed}: task {id}");
    }
    finish(engine, pool);
    for id in 0..n {
        assert_eq!(
            sink.count(&format!("t{id}")),
            1,
            "seed {seed}: task {id} started once"
        );
    }
}

#[test]
fn no_pipelining_onto_a_busy_worker_while_another_is_free() {
    let _dog = Watchdog::new("no_pipelining_onto_a_busy_worker_while_another_is_free");
    let sink = Starts::new();
    let (engine, pool) = pool(2, 0, &sink, PoolConfig::default());
    // Both are queued before either slot has its worker; each must get a worker of its own.
    pool.submit(task(1, "block:t1", 1)).unwrap();
    pool.submit(task(2, "block:t2", 1)).unwrap();
    sink.wait_for("t1");
    sink.wait_for("t2");
    let cancelled = pool.shutdown(true, true);
    assert_eq!(cancelled.len(), 2);
    assert_eq!(collect(&pool, 2).len(), 2);
    finish(engine, pool);
}

#[test]
fn a_kill_as_the_next_task_begins_never_runs_it_twice() {
    let _dog = Watchdog::new("a_kill_as_the_next_task_begins_never_runs_it_twice");
    // Task 1's last frame waits unflushed in the ring while its worker goes on to task 2, so
    // the kill that cancels task 1 (still the head, as far as the slot knows) lands while task
    // 2 runs. The slot may have read the frame before it went to sleep (then task 1 is done
    // and the race is missed): try again, a few times.
    let mut raced = 0;
    for attempt in 0..5 {
        let sink = Starts::new();
        let init_gate = Gate::new(&format!("race-init-{attempt}"));
        let gate = Gate::new(&format!("race-task-{attempt}"));
        let once = std::env::temp_dir().join(format!(
            "gilfree-test-{}-race-once-{attempt}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&once);
        let tweak = PoolConfig {
            init: Some(format!("init-gate:{}", init_gate.path.display()).into_bytes()),
            ..PoolConfig::default()
        };
        let (engine, pool) = pool(1, 1, &sink, tweak);
        pool.submit(task(
            1,
            &format!("gate-unflushed:{}:a", gate.path.display()),
            1,
        ))
        .unwrap();
        pool.submit(task(2, &format!("block-first:{}:b", once.display()), 1))
            .unwrap();
        init_gate.open();
        sink.wait_for("a");
        gate.open();
        sink.wait_for("b");
        let outcome = pool.cancel(1, true);
        if outcome == CancelOutcome::Killed {
            raced += 1;
            let got = collect(&pool, 2);
            assert_eq!(got[&1].end, End::Cancelled);
            assert!(
                matches!(got[&2].end, End::Crashed { .. }),
                "task 2 began before the kill: it fails, it is not re-run ({:?})",
                got[&2]
            );
        } else {
            assert_eq!(outcome, CancelOutcome::NotFound, "task 1 finished first");
            assert_eq!(pool.cancel(2, true), CancelOutcome::Killed);
            collect(&pool, 2);
        }
        finish(engine, pool);
        let _ = std::fs::remove_file(&once);
        assert_eq!(sink.count("b"), 1, "task 2 ran once");
        if raced > 0 {
            break;
        }
    }
    assert!(raced > 0, "the kill never landed while task 1 was the head");
}

#[test]
fn kill_before_the_next_task_begins_requeues_it() {
    let _dog = Watchdog::new("kill_before_the_next_task_begins_requeues_it");
    let sink = Starts::new();
    let init_gate = Gate::new("requeue-init");
    let tweak = PoolConfig {
        init: Some(format!("init-gate:{}", init_gate.path.display()).into_bytes()),
        ..PoolConfig::default()
    };
    let (engine, pool) = pool(1, 1, &sink, tweak);
    pool.submit(task(1, "block:a", 1)).unwrap();
    pool.submit(echo(2, 2)).unwrap();
    init_gate.open();
    sink.wait_for("a");
    // Task 2 waits in the worker's ring, unread: the kill cannot have let it begin.
    assert_eq!(pool.cancel(1, true), CancelOutcome::Killed);
    let got = collect(&pool, 2);
    assert_eq!(got[&1].end, End::Cancelled);
    assert_eq!(got[&2].end, End::Done, "re-queued and run on a new worker");
    assert_eq!(got[&2].frames, frames_of(2, 2));
    finish(engine, pool);
    assert_eq!(sink.count("t2"), 1);
}

#[test]
fn starts_are_reported_once_per_head_before_completions() {
    let _dog = Watchdog::new("starts_are_reported_once_per_head_before_completions");
    let sink = Starts::new();
    let init_gate = Gate::new("starts-init");
    let gate = Gate::new("starts-task");
    let tweak = PoolConfig {
        init: Some(format!("init-gate:{}", init_gate.path.display()).into_bytes()),
        ..PoolConfig::default()
    };
    let (engine, pool) = pool(1, 1, &sink, tweak);
    let reported = |t: Task| Task {
        report_start: true,
        ..t
    };
    pool.submit(reported(task(
        1,
        &format!("gate:{}:t1", gate.path.display()),
        1,
    )))
    .unwrap();
    pool.submit(reported(echo(2, 1))).unwrap();
    pool.submit(echo(3, 1)).unwrap();
    init_gate.open();
    sink.wait_for("t1");
    // Task 1 went to an idle worker and runs; task 2 waits behind it; task 3 is queued.
    assert!(pool.is_running(1));
    assert!(!pool.is_running(2) && !pool.is_running(3));
    gate.open();
    let mut started = Vec::new();
    let mut done = Vec::new();
    while done.len() < 3 {
        let batch = pool.events(&mut step()).unwrap();
        for id in &batch.started {
            assert!(
                !done.contains(id),
                "task {id} reported started after it finished"
            );
        }
        started.extend(batch.started);
        done.extend(batch.done.into_iter().map(|c| c.id));
    }
    assert_eq!(
        started,
        vec![1, 2],
        "once each, in order; task 3 did not ask"
    );
    assert_eq!(done, vec![1, 2, 3]);
    assert!(!pool.is_running(1), "finished");
    finish(engine, pool);
}

#[test]
fn retries_rerun_a_task_whose_worker_died_before_any_frame() {
    let _dog = Watchdog::new("retries_rerun_a_task_whose_worker_died_before_any_frame");
    let sink = Starts::new();
    let (engine, pool) = pool(1, 1, &sink, PoolConfig::default());
    let retried = |t: Task, retries| Task { retries, ..t };
    // Dies after its start mark, before any frame: run 1 + 2 times, then fails.
    pool.submit(retried(task(1, "crash-after:0:t1", 1), 2))
        .unwrap();
    // Dies with two frames in hand: they may be the finished part of it, so never re-run.
    pool.submit(retried(task(2, "crash-after:2:t2", 3), 5))
        .unwrap();
    // A task behind the crashes still runs once.
    pool.submit(echo(3, 1)).unwrap();
    let got = collect(&pool, 3);
    match &got[&1].end {
        End::Crashed { attempts, exit, .. } => {
            assert_eq!(*attempts, 3);
            assert_eq!(exit.and_then(|e| e.signal), Some(6), "SIGABRT");
        }
        other => panic!("task 1: {other:?}"),
    }
    match &got[&2].end {
        End::Crashed { attempts, .. } => assert_eq!(*attempts, 1),
        other => panic!("task 2: {other:?}"),
    }
    assert_eq!(got[&2].frames, frames_of(2, 2));
    assert_eq!(got[&3].end, End::Done);
    finish(engine, pool);
    assert_eq!(sink.count("t1"), 3, "task 1 ran three times");
    assert_eq!(sink.count("t2"), 1, "task 2 ran once");
    assert_eq!(sink.count("t3"), 1);
}

#[test]
fn a_retried_task_still_runs_after_shutdown() {
    let _dog = Watchdog::new("a_retried_task_still_runs_after_shutdown");
    let sink = Starts::new();
    let (engine, pool) = pool(1, 1, &sink, PoolConfig::default());
    pool.submit(Task {
        retries: 1,
        ..task(1, "crash-after:0:t1", 1)
    })
    .unwrap();
    // Shut down at once: the retry is the scheduler's own, not a new submit.
    pool.shutdown(false, false);
    let got = collect(&pool, 1);
    assert!(
        matches!(got[&1].end, End::Crashed { attempts: 2, .. }),
        "{:?}",
        got[&1]
    );
    assert_eq!(sink.count("t1"), 2);
    finish(engine, pool);
}

#[test]
fn a_trailer_over_max_memory_replaces_the_worker_after_its_task() {
    let _dog = Watchdog::new("a_trailer_over_max_memory_replaces_the_worker_after_its_task");
    let sink = Starts::new();
    let tweak = PoolConfig {
        max_memory: Some(1 << 40),
        ..PoolConfig::default()
    };
    let (engine, pool) = pool(1, 1, &sink, tweak);
    // One task at a time, so nothing is pipelined behind the one that reports.
    let run = |id: u64, payload: &str| {
        pool.submit(task(id, payload, 1)).unwrap();
        let got = collect(&pool, 1);
        assert_eq!(got[&id].end, End::Done, "{:?}", got[&id]);
        got[&id].frames[0].to_vec()
    };
    let first = run(1, "pid:t1");
    // A last frame under 16 bytes reports nothing: the worker stays.
    assert_eq!(run(2, "pid:t2"), first);
    // Bytes 8..16 of this task's last frame ("t3xxxxxxxxxxxxxx:0") read as ~8.7e18 bytes.
    let last = run(3, "echo:1:t3xxxxxxxxxxxxxx");
    assert_eq!(
        scheduler::trailer_peak_rss(&last),
        Some(u64::from_le_bytes(*b"xxxxxxxx"))
    );
    let after = run(4, "pid:t4");
    assert_ne!(after, first, "the worker over the limit was replaced");
    // Under the limit again (a short frame): the new worker stays.
    assert_eq!(run(5, "pid:t5"), after);
    finish(engine, pool);
}
