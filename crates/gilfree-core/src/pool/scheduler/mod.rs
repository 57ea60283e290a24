//! The task scheduler: a FIFO queue of opaque tasks, run on a fixed number of worker leases
//! ("slots"), with pipelining, per-task timeouts, cancellation, crash recovery, an initializer
//! and worker recycling. `gilfree.Pool` (Python) stands on it.
//!
//! The protocol with the worker, the slot's life and every recovery path are written out as
//! numbered steps in `pool/README.md`, section "Scheduler" (the [`pool`](super) module docs).
//! This module holds the shared state and the caller-facing API; [`slot`] holds the slot
//! threads.
//!
//! # Invariants
//! 1. Every submitted task is in exactly one place until its one [`Completion`] is pushed: the
//!    queue (`in_queue` holds its id), or one slot's pipeline (`flights` holds its id), or
//!    nowhere (completed). A task is taken out of its place and completed under the state lock,
//!    in one critical section, so it is completed exactly once and never run twice.
//! 2. A flight marked `cancelled` has already had its `Cancelled` completion pushed; whoever
//!    later takes it out of the pipeline (frames, death) completes nothing for it.
//! 3. `undelivered` counts completions pushed or still to come that `completions()` has not
//!    returned; `completions()` reports `Disconnected` only when the pool is shut down and it is
//!    zero. A slot exits only when it has nothing in flight and the pool is broken or shut down
//!    with an empty queue, so a shut-down pool always drains.
//! 4. The state mutex is never held while blocking: slots send, receive and acquire without it.
//!    Killing a worker (one `pidfd_send_signal`) is done under it, so that `cancel` and
//!    `shutdown` can reach a slot's lease without handing out clones.
//! 5. A slot's `head` is the task its worker is running (the first in its pipeline), changed
//!    only under the lock; `cancel(kill_running)` kills the worker only when the cancelled task
//!    is the head, otherwise the slot kills it when the task becomes head.
//! 6. At most once: a task taken out of a dead worker's pipeline goes back to the queue only
//!    if the worker never began it (its send was cut off, or no start mark arrived from it
//!    before a kill of ours). Every task behind the head never began: the worker begins a task
//!    only after its last frame for the one ahead, and every whole message a dead worker sent
//!    is received before the pipeline is settled.
//! 7. A task with `report_start` has its id pushed to `started` when it becomes a slot's head
//!    (its worker runs it next, with nothing ahead of it), before its completion is pushed; a
//!    task that goes back to the queue and becomes head again is reported again. A start alone
//!    wakes nobody: it rides with the next completion ([`TaskPool::is_running`] answers a
//!    caller that cannot wait for that).
//! 8. Retries re-run only a task that cannot have finished: its worker died on its own (not
//!    killed by us for a timeout or a cancel) while it was the head, and none of its frames
//!    had arrived (a finished item's frame is sent before the next item starts, and every
//!    whole message of a dead worker is received before the pipeline is settled). Such a
//!    task goes back to the front of the queue at most `Task::retries` times (`crashes`
//!    counts them); its final `Crashed` completion says how many times it ran.

mod frames;
mod slot;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::process::ExitInfo;
use super::supervisor::{Engine, Lease};
use crate::error::RecvError;
use crate::sync::unmodelled::{Condvar, Mutex, MutexGuard};
use crate::wait::Wait;
pub use frames::Frames;

/// A task that ran less than this (from when its slot saw it start to its last frame) is
/// short by default: see [`PoolConfig::short_depth`]. About two cross-CPU wake-ups on a small
/// VM.
pub const SHORT_TASK: Duration = Duration::from_micros(100);

/// The first byte of a [`End::Broken`] frame made by the engine itself (a worker could not be
/// started, or died while running the initializer); the rest is a UTF-8 message. A worker's
/// own init failure frame should not start with this byte.
pub const ENGINE_FAILURE: u8 = 0xFF;

/// How a [`TaskPool`] runs.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// How many workers (slots) run tasks at once; 0 counts as 1.
    pub workers: usize,
    /// Sent as one message to every new worker before its first task; the worker answers one
    /// frame whose first byte is 0 on success. Anything else breaks the pool.
    pub init: Option<Vec<u8>>,
    /// After this many tasks on one worker, it is killed and replaced (`None`: never).
    pub max_tasks_per_worker: Option<u64>,
    /// Tasks in flight per worker, the running one included (0 counts as 1). With 2, the next
    /// task already waits in the worker's ring while the current one runs.
    pub depth: usize,
    /// Tasks in flight per worker while its tasks are short (each of its last few ran less
    /// than `short_task` as its slot saw it): so many that the worker runs them back to back
    /// instead of waiting for its slot thread to wake between two (a cross-CPU wake-up can
    /// take longer than such a task). `depth` when it is smaller (the default, 0). Only tasks
    /// without [`Task::report_start`] are pipelined beyond `depth`.
    pub short_depth: usize,
    /// What counts as a short task for `short_depth` ([`SHORT_TASK`] by default).
    pub short_task: Duration,
    /// Replace a worker once it reports a peak resident set above this many bytes, after the
    /// task that reported it (and any already pipelined behind it) (`None`: never). The
    /// worker reports it in each task's last frame, the trailer: see [`trailer_peak_rss`].
    pub max_memory: Option<u64>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: 1,
            init: None,
            max_tasks_per_worker: None,
            depth: 2,
            short_depth: 0,
            short_task: SHORT_TASK,
            max_memory: None,
        }
    }
}

/// One unit of work: an opaque payload, sent as one message, answered by `frames` messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Task {
    /// The caller's name for the task; unique among unfinished tasks.
    pub id: u64,
    /// The one message sent to the worker.
    pub payload: Vec<u8>,
    /// How many messages the worker answers with (one per item of a chunk). A task of 0 frames
    /// completes `Done` at once, without a worker.
    pub frames: u32,
    /// How long the task may run, counted from when the worker starts it (`None`: forever).
    pub timeout: Option<Duration>,
    /// Report when it becomes the head of a worker's pipeline (see [`Batch::started`]).
    pub report_start: bool,
    /// How many times to run it again if its worker dies while running it before any of its
    /// frames arrived (`README.md`, Scheduler step 7): a task with a frame in hand is never
    /// re-run. 0: never.
    pub retries: u32,
}

/// How a task ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Every frame arrived.
    Done,
    /// The worker died while running it; `frames` holds what arrived before.
    Crashed {
        /// The dead worker's pid.
        pid: u32,
        /// How it ended, when known (a worker that closed its channel just before exiting may
        /// not have been reaped yet).
        exit: Option<ExitInfo>,
        /// How many times it ran, this last one included (1 + the retries it used).
        attempts: u32,
        /// The dead worker's peak resident set in bytes, as its last trailer reported it
        /// (only with [`PoolConfig::max_memory`]; `None` before its first trailer).
        peak_rss: Option<u64>,
    },
    /// Its timeout passed: the worker was killed (and replaced); `frames` holds what arrived.
    TimedOut {
        /// The killed worker's pid.
        pid: u32,
    },
    /// Cancelled by [`TaskPool::cancel`] or [`TaskPool::shutdown`].
    Cancelled,
    /// The pool is broken (see [`PoolConfig::init`]): the init failure frame, or an
    /// [`ENGINE_FAILURE`] frame.
    Broken(Vec<u8>),
}

/// One finished task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The task's id.
    pub id: u64,
    /// The frames that arrived, in order (all of them for [`End::Done`]).
    pub frames: Frames,
    /// How it ended.
    pub end: End,
}

/// What [`TaskPool::events`] returns: tasks that started, then tasks that finished.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Ids of tasks with [`Task::report_start`] that became the head of a worker's pipeline
    /// (the worker runs them next), in order. A task's start comes before its completion,
    /// in this batch or an earlier one; a task re-queued after a kill may start again.
    pub started: Vec<u64>,
    /// Finished tasks, one [`Completion`] each.
    pub done: Vec<Completion>,
}

/// Why [`TaskPool::submit`] refused a task.
#[derive(Debug)]
pub enum SubmitError {
    /// The pool was shut down; the task is handed back.
    ShutDown(Task),
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ShutDown(_) => f.write_str("cannot schedule new tasks after shutdown"),
        }
    }
}

impl std::error::Error for SubmitError {}

/// Why [`TaskPool::submit_many`] refused its tasks.
#[derive(Debug)]
pub enum SubmitManyError {
    /// The pool was shut down; the tasks are handed back, in order.
    ShutDown(Vec<Task>),
}

impl fmt::Display for SubmitManyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ShutDown(_) => f.write_str("cannot schedule new tasks after shutdown"),
        }
    }
}

impl std::error::Error for SubmitManyError {}

/// What [`TaskPool::cancel`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// No such unfinished task.
    NotFound,
    /// It was queued: removed, and completed with [`End::Cancelled`].
    Cancelled,
    /// It is in a worker and `kill_running` was false: nothing changed.
    Running,
    /// It was in a worker: it completed with [`End::Cancelled`] and its worker is killed and
    /// replaced (at once if it was running; when it would start, if it waited behind another).
    Killed,
}

/// Where a task sent to a worker is.
struct Flight {
    slot: usize,
    /// Its `Cancelled` completion is out (invariant 2).
    cancelled: bool,
}

/// A slot as others may see it.
#[derive(Default)]
struct SlotState {
    lease: Option<Arc<Lease>>,
    /// The task its worker runs (invariant 5).
    head: Option<u64>,
    /// The slot is running the initializer on its lease.
    init: bool,
    /// `cancel` or `shutdown` killed its worker.
    killed: bool,
    /// The slot thread has exited.
    gone: bool,
}

struct State {
    queue: VecDeque<Task>,
    /// Ids of the tasks in `queue` that are still queued (a cancelled one stays in `queue`
    /// until a slot skips it, so that cancel is O(1)).
    in_queue: HashSet<u64>,
    flights: HashMap<u64, Flight>,
    slots: Vec<SlotState>,
    ready: Vec<Completion>,
    /// Tasks with `report_start` that became a head, not yet returned (invariant 7).
    started: Vec<u64>,
    /// How many times each re-queued task's worker died under it so far (invariant 8).
    crashes: HashMap<u64, u32>,
    undelivered: usize,
    /// Callers waiting on `ready` (`events`, `join`) and slots waiting on `work`: a condvar
    /// is notified only when someone waits on it, so the per-task path makes no futex call
    /// while everyone is busy.
    ready_waiters: usize,
    idle_slots: usize,
    shut_down: bool,
    broken: Option<Vec<u8>>,
    live_slots: usize,
}

impl State {
    fn complete(&mut self, shared: &Shared, id: u64, frames: Frames, end: End) {
        self.crashes.remove(&id);
        self.ready.push(Completion { id, frames, end });
        if self.ready_waiters > 0 {
            shared.ready.notify_all();
        }
    }

    /// Notes that `task` became a slot's head (invariant 7), without waking anyone: the
    /// start rides with the next completion, so the tiny-task path pays no wake-up for it.
    fn note_start(&mut self, id: u64, report: bool) {
        if report {
            self.started.push(id);
        }
    }

    /// Queues a task that [`TaskPool::submit`] accepted (or completes it at once: a broken pool,
    /// no frames), waking an idle slot if there is one.
    fn enqueue(&mut self, shared: &Shared, task: Task) {
        self.undelivered += 1;
        if let Some(frame) = self.broken.clone() {
            self.complete(shared, task.id, Frames::new(), End::Broken(frame));
        } else if task.frames == 0 {
            self.complete(shared, task.id, Frames::new(), End::Done);
        } else {
            self.in_queue.insert(task.id);
            self.queue.push_back(task);
            if self.idle_slots > 0 {
                shared.work.notify_one();
            }
        }
    }

    /// Completes a task taken out of a pipeline, unless it was cancelled (invariant 2).
    fn land(&mut self, shared: &Shared, id: u64, frames: Frames, end: End) {
        if let Some(f) = self.flights.remove(&id) {
            if !f.cancelled {
                self.complete(shared, id, frames, end);
            }
        }
    }

    fn is_cancelled(&self, id: u64) -> bool {
        self.flights.get(&id).is_some_and(|f| f.cancelled)
    }

    /// The first still-queued task, dropping cancelled ones on the way.
    fn front(&mut self) -> Option<&Task> {
        while let Some(t) = self.queue.front() {
            if self.in_queue.contains(&t.id) {
                break;
            }
            self.queue.pop_front();
        }
        self.queue.front()
    }

    /// Moves the first still-queued task into `slot`'s pipeline.
    fn pop(&mut self, slot: usize) -> Option<Task> {
        self.front()?;
        let task = self.queue.pop_front()?;
        self.in_queue.remove(&task.id);
        self.flights.insert(
            task.id,
            Flight {
                slot,
                cancelled: false,
            },
        );
        Some(task)
    }

    /// Puts tasks back at the front of the queue, in their order, unless cancelled.
    fn requeue(&mut self, tasks: Vec<Task>) {
        for task in tasks.into_iter().rev() {
            if let Some(f) = self.flights.remove(&task.id) {
                if !f.cancelled {
                    self.in_queue.insert(task.id);
                    self.queue.push_front(task);
                }
            }
        }
    }

    /// Whether `slot` may pipeline one more task: only what the slots with nothing in flight
    /// (idle, or starting a worker) will not take. Pipelining onto a busy worker while another
    /// waits idle would make a task wait behind a long one for no reason.
    fn may_pipeline(&self, slot: usize) -> bool {
        let free = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(i, s)| i != slot && s.head.is_none() && !s.gone)
            .count();
        self.in_queue.len() > free
    }

    /// Nothing more to start: a slot with an empty pipeline exits.
    fn wound_down(&self) -> bool {
        self.broken.is_some() || (self.shut_down && self.in_queue.is_empty())
    }

    /// Marks the pool broken (first failure wins) and completes every queued task with it.
    fn break_pool(&mut self, shared: &Shared, frame: Vec<u8>) {
        if self.broken.is_none() {
            self.broken = Some(frame);
        }
        let frame = self.broken.clone().unwrap_or_default();
        for task in std::mem::take(&mut self.queue) {
            if self.in_queue.remove(&task.id) {
                self.complete(shared, task.id, Frames::new(), End::Broken(frame.clone()));
            }
        }
        shared.work.notify_all();
    }
}

struct Shared {
    engine: Engine,
    config: PoolConfig,
    state: Mutex<State>,
    /// Slots wait here for tasks (and for shutdown or breakage).
    work: Condvar,
    /// `completions` and `join` wait here.
    ready: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections leave `State` consistent before anything that can panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Waits on `ready` for at most the next slice of `wait`; `Err` when the wait is over.
    fn wait_ready<'g>(
        &'g self,
        mut st: MutexGuard<'g, State>,
        wait: &mut Wait<'_>,
        last_check: &mut Instant,
    ) -> Result<MutexGuard<'g, State>, RecvError> {
        let slice = wait.slice().map_err(|_| RecvError::Timeout)?;
        let cv = &self.ready;
        st.ready_waiters += 1;
        let mut st = match slice {
            Some(d) => {
                cv.wait_timeout(st, d)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => cv.wait(st).unwrap_or_else(PoisonError::into_inner),
        };
        st.ready_waiters -= 1;
        // By elapsed time, so a stream of wake-ups cannot starve the check; never under the
        // lock (in Python the check takes the GIL).
        if wait.signal_check_due(*last_check) {
            drop(st);
            let interrupted = wait.interrupted();
            *last_check = Instant::now();
            if interrupted {
                return Err(RecvError::Interrupted);
            }
            return Ok(self.lock());
        }
        Ok(st)
    }
}

/// A FIFO task queue run on `workers` worker processes leased from an [`Engine`].
/// `Send + Sync`; dropping it shuts it down (cancelling and killing everything).
///
/// # Examples
/// ```no_run
/// use gilfree_core::pool::scheduler::{End, PoolConfig, Task, TaskPool};
/// # fn demo(engine: gilfree_core::pool::Engine) -> Result<(), Box<dyn std::error::Error>> {
/// use gilfree_core::Wait;
///
/// let pool = TaskPool::start(engine, PoolConfig { workers: 2, ..PoolConfig::default() });
/// pool.submit(Task { id: 1, payload: b"work".to_vec(), frames: 1, ..Task::default() })?;
/// let batch = pool.completions(&mut Wait::forever())?;
/// assert_eq!(batch[0].end, End::Done);
/// pool.shutdown(false, false);
/// pool.join(&mut Wait::forever());
/// # Ok(()) }
/// ```
pub struct TaskPool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl TaskPool {
    /// Starts `config.workers` slot threads; each acquires its worker at once (so the pool is
    /// warm) and runs the initializer on it. A slot thread that cannot be started breaks the
    /// pool.
    pub fn start(engine: Engine, config: PoolConfig) -> TaskPool {
        let config = PoolConfig {
            workers: config.workers.max(1),
            depth: config.depth.max(1),
            ..config
        };
        let workers = config.workers;
        let shared = Arc::new(Shared {
            engine,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                in_queue: HashSet::new(),
                flights: HashMap::new(),
                slots: (0..workers).map(|_| SlotState::default()).collect(),
                ready: Vec::new(),
                started: Vec::new(),
                crashes: HashMap::new(),
                undelivered: 0,
                ready_waiters: 0,
                idle_slots: 0,
                shut_down: false,
                broken: None,
                live_slots: workers,
            }),
            config,
            work: Condvar::new(),
            ready: Condvar::new(),
        });
        let mut threads = Vec::with_capacity(workers);
        for index in 0..workers {
            let for_thread = Arc::clone(&shared);
            let started = crate::sys::thread::spawn(&format!("gilfree-slot-{index}"), move || {
                slot::run(&for_thread, index)
            });
            match started {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    let mut st = shared.lock();
                    st.live_slots -= 1;
                    let msg = format!("could not start a scheduler thread: {e}");
                    st.break_pool(&shared, failure_frame(&msg));
                }
            }
        }
        TaskPool {
            shared,
            threads: Mutex::new(threads),
        }
    }

    /// Queues a task (FIFO). After [`shutdown`](Self::shutdown) it is handed back in
    /// `SubmitError::ShutDown`. On a broken pool it is accepted and completes with
    /// [`End::Broken`] at once.
    pub fn submit(&self, task: Task) -> Result<(), SubmitError> {
        let shared = &self.shared;
        let mut st = shared.lock();
        if st.shut_down {
            return Err(SubmitError::ShutDown(task));
        }
        st.enqueue(shared, task);
        Ok(())
    }

    /// Queues several tasks, in order, as [`submit`](Self::submit) would one by one, under
    /// one lock: all of them, or (after shutdown) none, handed back in order.
    pub fn submit_many(&self, tasks: Vec<Task>) -> Result<(), SubmitManyError> {
        let shared = &self.shared;
        let mut st = shared.lock();
        if st.shut_down {
            return Err(SubmitManyError::ShutDown(tasks));
        }
        for task in tasks {
            st.enqueue(shared, task);
        }
        Ok(())
    }

    /// Cancels a task; see [`CancelOutcome`]. Never blocks.
    pub fn cancel(&self, id: u64, kill_running: bool) -> CancelOutcome {
        let shared = &self.shared;
        let mut st = shared.lock();
        if st.in_queue.remove(&id) {
            st.complete(shared, id, Frames::new(), End::Cancelled);
            return CancelOutcome::Cancelled;
        }
        let slot = match st.flights.get(&id) {
            Some(f) if !f.cancelled => f.slot,
            _ => return CancelOutcome::NotFound,
        };
        if !kill_running {
            return CancelOutcome::Running;
        }
        if let Some(f) = st.flights.get_mut(&id) {
            f.cancelled = true;
        }
        st.complete(shared, id, Frames::new(), End::Cancelled);
        let s = &mut st.slots[slot];
        if s.head == Some(id) {
            s.killed = true;
            if let Some(lease) = &s.lease {
                lease.kill();
            }
        }
        CancelOutcome::Killed
    }

    /// Whether the task is the head of a worker's pipeline now (its worker runs it, or runs it
    /// next with nothing ahead of it), and not cancelled. Never blocks.
    pub fn is_running(&self, id: u64) -> bool {
        let st = self.shared.lock();
        st.flights
            .get(&id)
            .is_some_and(|f| !f.cancelled && st.slots[f.slot].head == Some(id))
    }

    /// Waits until at least one completion is ready and returns all that are (a batch); start
    /// reports are dropped (use [`events`](Self::events) for them).
    /// `Timeout` and `Interrupted` as `wait` says; `Disconnected` once the pool is shut down
    /// and every submitted task's completion has been returned.
    pub fn completions(&self, wait: &mut Wait<'_>) -> Result<Vec<Completion>, RecvError> {
        loop {
            let batch = self.events(wait)?;
            if !batch.done.is_empty() {
                return Ok(batch.done);
            }
        }
    }

    /// Returns every start (of tasks with [`Task::report_start`]) and completion so far as one
    /// [`Batch`]: at once if any is pending, else once a task finishes (a start alone does not
    /// wake this wait; see invariant 7). Errors as for
    /// [`completions`](Self::completions); starts still unreturned are dropped with
    /// `Disconnected`, since their completions have all been returned.
    pub fn events(&self, wait: &mut Wait<'_>) -> Result<Batch, RecvError> {
        let shared = &self.shared;
        let mut last_check = Instant::now();
        let mut st = shared.lock();
        loop {
            if !st.ready.is_empty() || !st.started.is_empty() {
                let done = std::mem::take(&mut st.ready);
                st.undelivered -= done.len();
                let started = std::mem::take(&mut st.started);
                return Ok(Batch { started, done });
            }
            if st.shut_down && st.undelivered == 0 {
                return Err(RecvError::Disconnected);
            }
            st = shared.wait_ready(st, wait, &mut last_check)?;
        }
    }

    /// Stops accepting tasks; never blocks. `cancel_pending`: queued tasks complete with
    /// [`End::Cancelled`] (else they still run). `kill_running`: tasks in workers complete with
    /// [`End::Cancelled`] and their workers are killed. Slots exit once nothing is left for
    /// them, releasing healthy workers to the engine. Idempotent.
    ///
    /// Returns the ids this call cancelled (their completions are on their way too), so a
    /// caller can mark them cancelled before it returns, as `Executor.shutdown` does.
    pub fn shutdown(&self, cancel_pending: bool, kill_running: bool) -> Vec<u64> {
        let shared = &self.shared;
        let mut cancelled = Vec::new();
        let mut st = shared.lock();
        st.shut_down = true;
        if cancel_pending {
            for task in std::mem::take(&mut st.queue) {
                if st.in_queue.remove(&task.id) {
                    st.complete(shared, task.id, Frames::new(), End::Cancelled);
                    cancelled.push(task.id);
                }
            }
        }
        if kill_running {
            let running: Vec<u64> = st
                .flights
                .iter()
                .filter(|(_, f)| !f.cancelled)
                .map(|(&id, _)| id)
                .collect();
            for id in running {
                if let Some(f) = st.flights.get_mut(&id) {
                    f.cancelled = true;
                }
                st.complete(shared, id, Frames::new(), End::Cancelled);
                cancelled.push(id);
            }
            for s in &mut st.slots {
                if s.head.is_some() || s.init {
                    s.killed = true;
                    if let Some(lease) = &s.lease {
                        lease.kill();
                    }
                }
            }
        }
        shared.work.notify_all();
        shared.ready.notify_all();
        cancelled
    }

    /// Waits until every slot thread has exited (after [`shutdown`](Self::shutdown), or once
    /// the pool is broken and idle). `false` if `wait` ended first (`Timeout` or interrupt).
    pub fn join(&self, wait: &mut Wait<'_>) -> bool {
        let shared = &self.shared;
        let mut last_check = Instant::now();
        let mut st = shared.lock();
        while st.live_slots > 0 {
            st = match shared.wait_ready(st, wait, &mut last_check) {
                Ok(st) => st,
                Err(_) => return false,
            };
        }
        drop(st);
        // Every slot has said it is done, so these joins do not block for long.
        for handle in lock(&self.threads).drain(..) {
            let _ = handle.join();
        }
        true
    }

    /// The pids of the workers the slots hold now.
    pub fn pids(&self) -> Vec<u32> {
        let st = self.shared.lock();
        st.slots
            .iter()
            .filter_map(|s| s.lease.as_ref().map(|l| l.pid()))
            .collect()
    }

    /// How many tasks wait in the queue (not yet sent to a worker).
    pub fn queued(&self) -> usize {
        self.shared.lock().in_queue.len()
    }
}

impl Drop for TaskPool {
    fn drop(&mut self) {
        // The slots own what they need; they wind down on their own.
        let _ = self.shutdown(true, true);
    }
}

impl fmt::Debug for TaskPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskPool")
            .field("pids", &self.pids())
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

/// The peak resident set (bytes) a worker reported in a task's trailer, its last frame: bytes
/// 8..16 as a little-endian `u64` (bytes 0..8 are the worker's own: `gilfree` puts the run
/// time there). `None` if the frame is shorter. Read only with [`PoolConfig::max_memory`].
pub fn trailer_peak_rss(trailer: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = trailer.get(8..16)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// An [`ENGINE_FAILURE`] frame carrying `msg`.
fn failure_frame(msg: &str) -> Vec<u8> {
    let mut frame = vec![ENGINE_FAILURE];
    frame.extend_from_slice(msg.as_bytes());
    frame
}

// The glue shares one pool between Python threads.
const _: fn() = || {
    fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<TaskPool>();
};
