//! The engine: the warm set of worker processes, the supervisor thread that spawns and retires
//! them, and leases.
//!
//! The protocols (spawn handshake, lease lifecycle, crash detection, shutdown) are written out
//! as numbered steps in `pool/README.md` (the [`pool`](super) module docs).
//!
//! # Invariants
//! 1. Only the supervisor thread forks, and it lives until shutdown: a worker's parent-death
//!    signal is tied to the thread that forked it.
//! 2. `State::all` holds every process we spawned and have not yet reaped (starting, idle,
//!    leased, and being discarded: a process leaves `all` only after it was reaped, so `pids()`
//!    never hides a live one). Shutdown kills and reaps exactly that set, after setting
//!    `shut_down` under the same lock, so nothing spawned later escapes it: the supervisor checks
//!    `shut_down` when it registers a new process, and kills it itself if set.
//! 3. The state mutex is never held while calling the sink or the wait's signal check (both take
//!    the GIL in Python), nor while forking or reaping a live process.
//! 4. `acquire` never waits behind a busy worker: it takes an idle one, waits for a warm-up
//!    already in flight that no other caller has claimed, or asks the supervisor for a new one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::{pidfd_send_signal, Signal};

use super::command::WorkerCommand;
pub use super::process::ExitInfo;
use super::process::{DeathHook, WorkerProcess};
use super::spawn::{self, WorkerEnds};
use super::template::{Template, TemplateCommand};
use crate::error::{RecvError, SendError, SpawnError};
#[cfg(not(loom))]
use crate::ipc::arena::{Arena, ARENA_FD_ENV};
use crate::output::{OutputHub, OutputSink};
use crate::sync::unmodelled::{AtomicBool, Condvar, Mutex, MutexGuard};
use crate::sync::Ordering;
use crate::wait::Wait;

/// The most extra processes one spawn round starts beyond what callers asked for (step 1 of
/// the supervisor loop, "surge").
const MAX_SURGE: usize = 16;

/// How an [`Engine`] runs its workers.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// What each worker process runs.
    pub command: WorkerCommand,
    /// How many processes to keep alive (idle, starting or leased): started in the background
    /// by [`Engine::start`], and refilled when workers die or are killed.
    pub warm: usize,
    /// An idle process beyond `warm` is retired after being idle this long (`Duration::MAX`:
    /// never).
    pub idle_timeout: Duration,
    /// Called with a worker's pid once it has died, before it is reaped (so the pid cannot
    /// have been reused yet), whatever path reaps it. The glue gives the shared-primitive
    /// arena's [`reap`](crate::ipc::arena::Arena::reap) here.
    pub on_death: Option<DeathHook>,
}

// The arena is not built under loom.
#[cfg(not(loom))]
impl EngineConfig {
    /// Shares the shared-primitive `arena` with every worker: each inherits its memfds, is told
    /// their numbers in [`ARENA_FD_ENV`] (read by
    /// [`Arena::from_env`]), and the arena gets back what a dead worker held ([`Arena::reap`]
    /// becomes the [`on_death`](Self::on_death) hook, replacing any other).
    pub fn share_arena(&mut self, arena: Arc<Arena>) {
        self.command
            .env
            .push((ARENA_FD_ENV.into(), arena.env_value().into()));
        self.command
            .inherit_fds
            .push(Arc::clone(&arena) as Arc<dyn super::command::Inheritable>);
        self.on_death = Some(DeathHook(Arc::new(move |pid| arena.reap(pid))));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves `State` consistent before anything that can panic, so a
    // poisoned lock is still safe to use, and shutdown must work after a panic elsewhere.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whom a process being started is for.
#[derive(Clone, Copy)]
enum Target {
    /// A background warm-up: it joins the idle set.
    Warm,
    /// An `acquire` call's own spawn, by request id.
    Request(u64),
}

struct Idle {
    worker: Arc<WorkerProcess>,
    since: Instant,
}

#[derive(Default)]
struct State {
    shut_down: bool,
    /// Every live process we own: starting, idle and leased (invariant 2).
    all: HashMap<u32, Arc<WorkerProcess>>,
    /// Ready and unleased, most recently used first (so reuse hits warm caches and the oldest
    /// retire first).
    idle: VecDeque<Idle>,
    /// Processes the supervisor is forking right now (not yet in `all`).
    forking: usize,
    /// Warm-ups forked or being forked whose handshake has not ended.
    warming: usize,
    /// `acquire` calls waiting for a warm-up instead of spawning their own.
    claims: usize,
    /// Callers' own processes forked whose handshake has not ended: warm-ups wait for them.
    greeting: usize,
    /// `acquire` calls asleep on `changed` right now (so a release knows whether to wake).
    sleepers: usize,
    /// `acquire` calls' spawn requests the supervisor has not taken yet.
    requests: VecDeque<u64>,
    /// Finished spawn requests, until their `acquire` call takes them.
    results: HashMap<u64, Result<Arc<WorkerProcess>, SpawnError>>,
    /// Requests whose `acquire` call gave up; a ready process goes to the idle set instead.
    abandoned: HashSet<u64>,
    next_request: u64,
    /// A warm-up failed its handshake: don't refill in the background (which would crash-loop)
    /// until some worker starts successfully.
    warm_broken: bool,
    /// The output thread saw a worker die: the supervisor looks for dead idle workers to reap.
    deaths_seen: bool,
}

impl State {
    /// Processes that exist or are about to: what `warm` is compared with.
    fn live(&self) -> usize {
        self.all.len() + self.forking + self.requests.len()
    }

    /// Removes `worker` from `all` if that pid still names it (a reaped pid may be reused).
    fn forget(&mut self, worker: &Arc<WorkerProcess>) {
        if self
            .all
            .get(&worker.pid())
            .is_some_and(|w| Arc::ptr_eq(w, worker))
        {
            self.all.remove(&worker.pid());
        }
    }

    fn push_idle(&mut self, worker: Arc<WorkerProcess>) {
        self.idle.push_front(Idle {
            worker,
            since: Instant::now(),
        });
    }
}

struct Shared {
    config: EngineConfig,
    /// How to start the template that forks workers (`None`: every worker is a fresh `exec`).
    template: Option<TemplateCommand>,
    /// The template while it starts, so that shutdown can kill it rather than wait for it.
    starting: Arc<Starting>,
    hub: OutputHub,
    state: Mutex<State>,
    /// Signalled when an `acquire` call may make progress: a worker became idle, a request
    /// finished, a warm-up failed, or the engine shut down.
    changed: Condvar,
    /// Signalled when the supervisor has work: a spawn request, a refill, a new idle worker to
    /// time, or shutdown.
    supervisor: Condvar,
    /// Serialises `shutdown` so a second call returns only once the first is complete.
    shutting_down: Mutex<()>,
}

/// The worker-process engine. Cheap to clone; all clones share the same workers.
///
/// # Examples
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use gilfree_core::output::{OutputSink, Stream};
/// use gilfree_core::pool::{Engine, EngineConfig, WorkerCommand};
/// use gilfree_core::Wait;
///
/// struct Print;
/// impl OutputSink for Print {
///     fn write(&self, pid: u32, _stream: Stream, lines: &[u8]) {
///         print!("[{pid}] {}", String::from_utf8_lossy(lines));
///     }
/// }
///
/// let command = WorkerCommand {
///     program: "python3".into(),
///     args: vec!["-m".into(), "gilfree._worker".into()],
///     env: vec![],
///     cwd: None,
///     ring_capacity: 1 << 20,
///     inherit_fds: vec![],
/// };
/// let config = EngineConfig {
///     command,
///     warm: 2,
///     idle_timeout: Duration::from_secs(30),
///     on_death: None,
/// };
/// let engine = Engine::start(config, Arc::new(Print))?;
/// let lease = engine.acquire(&mut Wait::forever())?;
/// lease.send(b"task", &mut Wait::forever())?;
/// let reply = lease.recv(&mut Wait::forever())?;
/// lease.release();
/// engine.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineHandle>,
}

/// Owns the supervisor thread; dropping the last handle (engine clones and leases) shuts down.
struct EngineHandle {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    /// The process that started the engine. A `fork()` child (say, a `multiprocessing`
    /// worker) inherits this memory but none of its threads, and the worker processes are
    /// not its own: there, dropping an engine or a lease must touch nothing.
    owner: rustix::process::Pid,
}

/// Whether this process is a `fork()` child of the one that started the engine.
fn forked_away(owner: rustix::process::Pid) -> bool {
    rustix::process::getpid() != owner
}

impl Engine {
    /// Starts the output thread and the supervisor thread, which begins warming
    /// `config.warm` workers in the background. Returns without waiting for them.
    pub fn start(config: EngineConfig, sink: Arc<dyn OutputSink>) -> Result<Engine, SpawnError> {
        Engine::start_with_template(config, sink, None)
    }

    /// [`start`](Engine::start), with workers forked from a template process started by
    /// `template` ([`super::template`]). If the template fails to start, workers are spawned
    /// directly from then on; if it later fails to fork (or dies), they are spawned directly
    /// until a new template, launched about a second later while the engine is idle, is
    /// ready (up to three times per engine).
    pub fn start_with_template(
        config: EngineConfig,
        sink: Arc<dyn OutputSink>,
        template: Option<TemplateCommand>,
    ) -> Result<Engine, SpawnError> {
        // The supervisor thread started at `import gilfree`, with its template, if it was
        // started for this very template command.
        let adopted = template
            .as_ref()
            .and_then(|t| take_prestarted(&config.command.program, &t.args));
        let hub = OutputHub::start(sink)?;
        let shared = Arc::new(Shared {
            config,
            template,
            starting: adopted
                .as_ref()
                .map_or_else(Arc::default, |p| Arc::clone(&p.starting)),
            hub,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            supervisor: Condvar::new(),
            shutting_down: Mutex::new(()),
        });
        // An idle worker that dies (killed from outside: a user, the OOM killer, a Jupyter
        // kernel's SIGTERM to its process group) is reaped at once, not left a zombie until
        // someone next looks at the idle set. The output thread sees the death (its pidfd) and
        // tells the supervisor. A weak reference: the output thread must not keep us alive.
        let weak = Arc::downgrade(&shared);
        shared.hub.after_deaths(Arc::new(move || {
            if let Some(shared) = weak.upgrade() {
                lock(&shared.state).deaths_seen = true;
                shared.supervisor.notify_all();
            }
        }));
        let supervisor = match adopted {
            Some(prestarted) => prestarted.adopt(Arc::clone(&shared)),
            None => {
                let for_thread = Arc::clone(&shared);
                crate::sys::thread::spawn("gilfree-supervisor", move || {
                    let template = for_thread
                        .template
                        .as_ref()
                        .and_then(|t| for_thread.starting.start(&for_thread.config.command, t));
                    supervise(&for_thread, template);
                })
            }
        };
        let supervisor = match supervisor {
            Ok(handle) => handle,
            Err(e) => {
                shared.hub.stop(true);
                return Err(e.into());
            }
        };
        Ok(Engine {
            inner: Arc::new(EngineHandle {
                owner: rustix::process::getpid(),
                shared,
                supervisor: Mutex::new(Some(supervisor)),
            }),
        })
    }

    /// Hands out a worker for exclusive use: an idle ready one at once; else a warm-up already
    /// in flight that no other caller is waiting for; else a new process. It never waits behind
    /// a busy worker, so a worker that waits on another worker cannot deadlock the pool.
    ///
    /// `wait` bounds the wait (a passed deadline gives `SpawnError::Io` of kind `TimedOut`) and
    /// its signal check can interrupt it (`SpawnError::Interrupted`). A process started for a
    /// call that gave up is kept as an idle worker.
    pub fn acquire(&self, wait: &mut Wait<'_>) -> Result<Lease, SpawnError> {
        let shared = &self.inner.shared;
        let mut claimed = false;
        let mut request: Option<u64> = None;
        let mut dead = Vec::new();
        let mut last_check = Instant::now();
        let mut st = lock(&shared.state);
        let outcome = loop {
            if st.shut_down {
                break Err(SpawnError::ShutDown);
            }
            if let Some(worker) = take_idle(&mut st, &mut dead) {
                break Ok(worker);
            }
            if let Some(id) = request {
                if let Some(result) = st.results.remove(&id) {
                    request = None;
                    break result;
                }
            } else if claimed && st.warming >= st.claims {
                // Our warm-up is still on its way.
            } else if !claimed && st.warming > st.claims {
                st.claims += 1;
                claimed = true;
            } else {
                if claimed {
                    st.claims -= 1;
                    claimed = false;
                }
                let id = st.next_request;
                st.next_request += 1;
                st.requests.push_back(id);
                request = Some(id);
                shared.supervisor.notify_all();
            }
            // Never unbounded, even without a signal check: the slice is the wait's, cut to
            // `signal_interval`.
            let slice = match wait.slice() {
                Ok(slice) => slice.map_or(wait.signal_interval, |s| s.min(wait.signal_interval)),
                Err(_) => break Err(SpawnError::Io(io::ErrorKind::TimedOut.into())),
            };
            st.sleepers += 1;
            st = shared
                .changed
                .wait_timeout(st, slice)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            st.sleepers -= 1;
            // Checked by elapsed time, not by "the wait timed out", so a stream of wake-ups
            // for other callers cannot starve the check.
            if wait.signal_check_due(last_check) {
                // The signal check takes the GIL in Python: never run it under the state lock.
                drop(st);
                let interrupted = wait.interrupted();
                last_check = Instant::now();
                st = lock(&shared.state);
                if interrupted {
                    break Err(SpawnError::Interrupted);
                }
            }
        };
        if claimed {
            st.claims -= 1;
        }
        if let Some(id) = request {
            // We are leaving without our requested process: let it become an idle worker.
            match st.results.remove(&id) {
                Some(Ok(worker)) if !st.shut_down => st.push_idle(worker),
                Some(_) => {}
                None => {
                    if let Some(pos) = st.requests.iter().position(|&r| r == id) {
                        st.requests.remove(pos);
                    } else {
                        st.abandoned.insert(id);
                    }
                }
            }
            shared.supervisor.notify_all();
        }
        drop(st);
        shared.discard(dead);
        let worker = outcome?;
        Ok(Lease {
            engine: Arc::clone(&self.inner),
            worker: Some(worker),
            broken: AtomicBool::new(false),
            mid_message: AtomicBool::new(false),
        })
    }

    /// Kills every worker (idle, starting and leased) with SIGKILL, reaps them, and stops the
    /// engine's threads. Idempotent. Afterwards `acquire` fails with `SpawnError::ShutDown` and
    /// leases' `recv` with `RecvError::Disconnected`.
    pub fn shutdown(&self) {
        self.inner.shutdown(true);
    }

    /// The pids of every live worker process (starting, idle and leased).
    pub fn pids(&self) -> Vec<u32> {
        lock(&self.inner.shared.state).all.keys().copied().collect()
    }

    /// How many ready workers are idle.
    pub fn idle_count(&self) -> usize {
        lock(&self.inner.shared.state).idle.len()
    }
}

/// Pops the most recently used idle worker that is still alive; dead ones go to `dead`.
fn take_idle(st: &mut State, dead: &mut Vec<Arc<WorkerProcess>>) -> Option<Arc<WorkerProcess>> {
    while let Some(idle) = st.idle.pop_front() {
        if idle.worker.has_exited() {
            dead.push(idle.worker);
        } else {
            return Some(idle.worker);
        }
    }
    None
}

impl EngineHandle {
    /// `join_output`: wait for the output thread's last delivery. Not from `Drop`, which may
    /// run with the GIL held while the output thread waits for the GIL inside the sink.
    fn shutdown(&self, join_output: bool) {
        if forked_away(self.owner) {
            return;
        }
        let shared = &self.shared;
        let _serial = lock(&shared.shutting_down);
        let workers: Vec<Arc<WorkerProcess>> = {
            let mut st = lock(&shared.state);
            st.shut_down = true;
            st.idle.clear();
            st.results.clear();
            st.requests.clear();
            shared.changed.notify_all();
            shared.supervisor.notify_all();
            st.all.drain().map(|(_, w)| w).collect()
        };
        // A template still starting would hold up the supervisor (and so this shutdown) until
        // its handshake: kill it now.
        shared.starting.cancel();
        // Signal all first, then reap, so they die in parallel.
        for w in &workers {
            w.kill();
        }
        for w in &workers {
            w.reap();
        }
        // The supervisor neither calls the sink nor takes the GIL, so joining it is always safe;
        // it kills anything it forked after we set `shut_down`.
        let supervisor = lock(&self.supervisor).take();
        if let Some(handle) = supervisor {
            let _ = handle.join();
        }
        shared.hub.stop(join_output);
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        if forked_away(self.owner) {
            // Leak the shared state: its threads don't exist here, and its processes (and
            // their pidfds) belong to the parent, which must not lose them to our exit.
            std::mem::forget(Arc::clone(&self.shared));
            return;
        }
        self.shutdown(false);
    }
}

/// `n` new workers: forked by the template if there is one (which is dropped if it fails; the
/// supervisor launches another later), else started directly (every one the template did not
/// fork).
///
/// The template's requests are pipelined: every request is sent before any reply is read, so
/// the template forks them back to back and a round of `n` costs two wake-ups of each side,
/// not `2n` (on a loaded machine each wake-up can cost milliseconds). Replies come in request
/// order. After any failure the template is killed, and the replies it sent before dying are
/// still read, so no process it forked is left unregistered.
fn spawn_many(
    template: &mut Option<Template>,
    ends: &mut Option<WorkerEnds>,
    command: &WorkerCommand,
    on_death: &Option<DeathHook>,
    n: usize,
) -> Vec<Result<WorkerProcess, SpawnError>> {
    let mut out = Vec::with_capacity(n);
    if let Some(t) = template.as_ref() {
        let mut failed = false;
        let mut sent = Vec::with_capacity(n);
        for _ in 0..n {
            let Ok(plan) = spawn::plan_fork(command, ends.take()) else {
                failed = true;
                break;
            };
            if spawn::request_fork(t, &plan).is_err() {
                failed = true;
                break;
            }
            sent.push(plan);
        }
        if failed {
            t.kill();
        }
        for plan in sent {
            match t.fork_reply() {
                Ok(pid) => match spawn::finish_fork(plan, pid, on_death) {
                    Ok(worker) => out.push(Ok(worker)),
                    Err(_) => failed = true,
                },
                Err(_) => {
                    // Its later replies, if any, were sent before it died: keep reading.
                    t.kill();
                    failed = true;
                }
            }
        }
        if failed {
            *template = None;
        }
    }
    while out.len() < n {
        out.push(spawn::spawn(command, on_death));
    }
    out
}

/// The supervisor thread: forks requested and warm-up processes (from `template` while it
/// works), starts their handshakes, and retires idle processes beyond `warm`.
fn supervise(shared: &Arc<Shared>, mut template: Option<Template>) {
    let warm = shared.config.warm;
    let idle_timeout = shared.config.idle_timeout;
    // Every worker gets a death watch, hook or not, so that the output thread sees it die.
    let on_death = Some(
        shared
            .config
            .on_death
            .clone()
            .unwrap_or_else(|| DeathHook(Arc::new(|_| {}))),
    );
    // The channel and pipes of the next process to fork, made while nothing is asked for:
    // making them is most of the supervisor's part of a fork (populating the channel's
    // segment), and a caller that finds no idle worker should wait for the fork alone.
    let mut ends: Option<WorkerEnds> = None;
    // Tried since the last fork (so a failure, say no fd left, is not retried in a loop).
    let mut ends_tried = false;
    // A template that worked and was lost (killed from outside, or a fork that failed) is
    // launched again while nothing is asked for, `RELAUNCH_AFTER` after the loss was first
    // seen, at most `RELAUNCHES` times: until then every worker is a fresh interpreter (about
    // ten times a fork). One that never started is not retried (the cause is likely to stay).
    let mut relaunches = if template.is_some() { RELAUNCHES } else { 0 };
    let mut lost_since: Option<Instant> = None;
    // The template, if any, was started on this thread: the workers it forks are children of
    // this thread (their parent-death signal is tied to it). Dropped (killed) when we return.
    let mut st = lock(&shared.state);
    while !st.shut_down {
        // 0. Reap idle workers that died (leased ones are their lease holder's to reap).
        if std::mem::take(&mut st.deaths_seen) {
            let mut dead = Vec::new();
            st.idle.retain(|idle| {
                let alive = !idle.worker.has_exited();
                if !alive {
                    dead.push(Arc::clone(&idle.worker));
                }
                alive
            });
            if !dead.is_empty() {
                drop(st);
                shared.discard(dead);
                st = lock(&shared.state);
                continue;
            }
        }
        // 1. Fork what is asked for: requests first (a caller is waiting), then the refill.
        let targets: Vec<Target> = st.requests.drain(..).map(Target::Request).collect();
        let refill = if st.warm_broken {
            0
        } else {
            warm.saturating_sub(st.live() + targets.len())
        };
        // A caller found no idle worker and no warm-up to claim: a burst may be under way
        // (say, 40 Workers started in a loop, each `start` an `acquire`). Start as many extra
        // processes as are busy now, in the same round (they start up in parallel, and the
        // next callers claim them as warm-ups), so the pool doubles per round and a burst of
        // N costs about log2(N) spawn latencies instead of N. Extras beyond `warm` retire
        // after `idle_timeout` like any idle process.
        let surge = if targets.is_empty() || st.warm_broken {
            0
        } else {
            st.all
                .len()
                .saturating_sub(st.idle.len())
                .min(MAX_SURGE)
                .saturating_sub(refill)
        };
        let warmups: Vec<Target> = std::iter::repeat_n(Target::Warm, refill + surge).collect();
        if !targets.is_empty() || !warmups.is_empty() {
            st.forking += targets.len() + warmups.len();
            st.warming += warmups.len();
            drop(st);
            // The callers' own processes first, handshakes started, and only then the
            // warm-ups, a few at a time, with any caller that asked meanwhile going ahead of
            // the rest: a caller waits for its own fork, not for a surge of up to MAX_SURGE
            // (the template forks one after another: 16-74 ms for 3-17 processes).
            if !targets.is_empty() {
                fork_batch(shared, &mut template, &mut ends, &on_death, targets);
            }
            let mut warmups = warmups;
            while !warmups.is_empty() {
                let asked: Vec<Target> = {
                    let mut st = lock(&shared.state);
                    if st.shut_down {
                        // Nobody will claim them: they are not forked at all.
                        st.forking -= warmups.len();
                        st.warming -= warmups.len();
                        break;
                    }
                    let asked: Vec<Target> = st.requests.drain(..).map(Target::Request).collect();
                    st.forking += asked.len();
                    asked
                };
                if !asked.is_empty() {
                    fork_batch(shared, &mut template, &mut ends, &on_death, asked);
                    continue;
                }
                if wait_for_greetings(shared) {
                    continue;
                }
                let rest = warmups.split_off(warmups.len().min(WARM_STEP));
                fork_batch(shared, &mut template, &mut ends, &on_death, warmups);
                warmups = rest;
            }
            ends_tried = false;
            st = lock(&shared.state);
            continue;
        }
        // 2. Retire idle processes beyond `warm` that have been idle for `idle_timeout`.
        let now = Instant::now();
        let mut retire = Vec::new();
        while st.live() - retire.len() > warm {
            match st.idle.back() {
                Some(oldest) if now.duration_since(oldest.since) >= idle_timeout => {
                    let Some(idle) = st.idle.pop_back() else {
                        break;
                    };
                    // Counted in `all` (so not yet refilled) until it is reaped.
                    retire.push(idle.worker);
                }
                _ => break,
            }
        }
        if !retire.is_empty() {
            drop(st);
            shared.discard(retire);
            st = lock(&shared.state);
            continue;
        }
        // 3. Launch a lost template again, once it is due (see `relaunches`).
        let relaunch_due = if template.is_none() && relaunches > 0 {
            let since = *lost_since.get_or_insert(now);
            Some((since + RELAUNCH_AFTER).saturating_duration_since(now))
        } else {
            None
        };
        if relaunch_due == Some(Duration::ZERO) {
            relaunches -= 1;
            lost_since = None;
            drop(st);
            // On this thread, as the first one: its forks' parent-death signal is tied to it.
            template = shared
                .template
                .as_ref()
                .and_then(|t| shared.starting.start(&shared.config.command, t));
            if template.is_none() {
                relaunches = 0; // it did not start: the cause is likely to stay
            }
            st = lock(&shared.state);
            continue;
        }
        // 4. Make the next process's channel and pipes, once the template is up.
        if ends.is_none() && !ends_tried && template.is_some() {
            ends_tried = true;
            drop(st);
            ends = spawn::make_ends(&shared.config.command).ok();
            st = lock(&shared.state);
            continue;
        }
        // 5. Sleep until asked, until the oldest idle process is due to retire, or until a lost
        //    template is due to be launched again. This is a timer, not a poll for deaths:
        //    those are seen through pidfds.
        //    An `idle_timeout` too large for an `Instant` (the glue passes `Duration::MAX` for
        //    "never") means no retirement at all.
        let retire_due = if st.live() > warm {
            st.idle
                .back()
                .and_then(|oldest| oldest.since.checked_add(idle_timeout))
                .map(|at| at.saturating_duration_since(now))
        } else {
            None
        };
        let due = match (retire_due, relaunch_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        st = match due {
            Some(d) => {
                shared
                    .supervisor
                    .wait_timeout(st, d)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => shared
                .supervisor
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner),
        };
    }
}

/// How long after a template was lost (first seen so while idle) a new one is launched: a
/// fork that failed for want of memory or processes would likely fail again at once.
const RELAUNCH_AFTER: Duration = Duration::from_secs(1);

/// How many times an engine launches its template again after losing it.
const RELAUNCHES: u32 = 3;

/// How long warm-ups wait for the callers' processes to finish their handshakes.
const GREETING_WAIT: Duration = Duration::from_millis(10);

/// Waits, up to [`GREETING_WAIT`], while a caller's process is still on its way to its
/// handshake, so that warm-ups starting up beside it do not take the CPU it needs (on two
/// cores, a surge of spares starting up made a fork on demand 5-17 ms instead of ~3).
/// Returns `true` if a new request came in meanwhile (fork it first).
fn wait_for_greetings(shared: &Shared) -> bool {
    let until = Instant::now() + GREETING_WAIT;
    let mut st = lock(&shared.state);
    loop {
        if !st.requests.is_empty() {
            return true;
        }
        let now = Instant::now();
        if st.greeting == 0 || st.shut_down || now >= until {
            return false;
        }
        st = shared
            .supervisor
            .wait_timeout(st, until - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// Warm-ups forked in one go (pipelined through the template) before the supervisor looks for
/// callers that asked for a process meanwhile.
const WARM_STEP: usize = 2;

/// Forks one process per target (from the template if there is one) and starts each one's
/// handshake on a thread of its own, which hands it to its target once it is ready. Takes the
/// state lock only to register what it forked; `forking` (and `warming`, for warm-ups) were
/// counted by the caller.
fn fork_batch(
    shared: &Arc<Shared>,
    template: &mut Option<Template>,
    ends: &mut Option<WorkerEnds>,
    on_death: &Option<DeathHook>,
    targets: Vec<Target>,
) {
    let made = spawn_many(
        template,
        ends,
        &shared.config.command,
        on_death,
        targets.len(),
    );
    let spawned: Vec<(Target, Result<WorkerProcess, SpawnError>)> =
        targets.into_iter().zip(made).collect();
    let mut st = lock(&shared.state);
    let mut doomed = Vec::new();
    for (target, result) in spawned {
        st.forking -= 1;
        match result {
            Ok(worker) if st.shut_down => {
                if let Target::Warm = target {
                    st.warming -= 1;
                }
                doomed.push(Arc::new(worker));
            }
            Ok(worker) => {
                let worker = Arc::new(worker);
                st.all.insert(worker.pid(), Arc::clone(&worker));
                shared.hub.register(Arc::clone(worker.output()));
                if let Some(watch) = worker.death_watch() {
                    shared.hub.watch_death(watch.clone());
                }
                let for_thread = Arc::clone(shared);
                let kept = Arc::clone(&worker);
                let started = crate::sys::thread::spawn("gilfree-handshake", move || {
                    finish_handshake(&for_thread, target, worker)
                });
                match started {
                    Ok(_) if matches!(target, Target::Request(_)) => st.greeting += 1,
                    Ok(_) => {}
                    Err(e) => {
                        doomed.push(kept);
                        settle_failure(&mut st, target, e.into());
                    }
                }
            }
            Err(e) => settle_failure(&mut st, target, e),
        }
    }
    shared.changed.notify_all();
    drop(st);
    if !doomed.is_empty() {
        shared.discard(doomed);
    }
}

/// A template being started (on the thread that will fork workers from it), so that another
/// thread can kill it rather than wait up to `HANDSHAKE_TIMEOUT` for its handshake.
#[derive(Default)]
struct Starting {
    state: Mutex<StartingState>,
    /// Signalled once the launch has been tried (`settled`).
    settled: Condvar,
}

#[derive(Default)]
struct StartingState {
    /// A duplicate of the template's pidfd while it starts.
    pidfd: Option<OwnedFd>,
    /// Nothing is to be started any more; a template starting now is killed.
    cancelled: bool,
    /// The launch was tried (or cancelled first); `pid` is the template's if it launched.
    settled: bool,
    pid: Option<u32>,
}

impl Starting {
    /// Starts the template and waits for its ready message; `None` if it fails, or if
    /// [`cancel`](Starting::cancel) comes first.
    fn start(&self, command: &WorkerCommand, template: &TemplateCommand) -> Option<Template> {
        let launched = if lock(&self.state).cancelled {
            None
        } else {
            Template::launch(command, template).ok()
        };
        {
            let mut st = lock(&self.state);
            st.settled = true;
            self.settled.notify_all();
            let launched = launched.as_ref()?;
            if st.cancelled {
                return None; // `launched` is dropped: killed and reaped
            }
            st.pid = Some(launched.pid());
            st.pidfd = launched.pidfd().try_clone_to_owned().ok();
        }
        let ready = launched.and_then(|t| t.wait_ready().ok());
        lock(&self.state).pidfd = None;
        ready
    }

    /// Waits (at most `timeout`) until the launch was tried; the template's pid if it was
    /// started.
    fn launched_pid(&self, timeout: Duration) -> Option<u32> {
        let st = lock(&self.state);
        let (st, _) = self
            .settled
            .wait_timeout_while(st, timeout, |st| !st.settled && !st.cancelled)
            .unwrap_or_else(PoisonError::into_inner);
        st.pid
    }

    /// Kills a template that is starting now, and keeps any from starting later. The pidfd
    /// names exactly that process: it is unreaped until `start` drops it, after taking the
    /// pidfd out of the state under the same lock.
    fn cancel(&self) {
        let mut st = lock(&self.state);
        st.cancelled = true;
        if let Some(fd) = &st.pidfd {
            let _ = pidfd_send_signal(fd, Signal::KILL);
        }
    }
}

/// A supervisor thread started before its engine ([`Engine::prestart_template`]), with the
/// template it starts at once; the next engine started for the same template command adopts
/// both.
struct Prestarted {
    /// The process that started it: a `fork()` child has this memory but not the thread.
    owner: rustix::process::Pid,
    program: PathBuf,
    args: Vec<OsString>,
    starting: Arc<Starting>,
    /// Hands the thread its engine; dropping it tells the thread there will be none.
    handoff: mpsc::Sender<Arc<Shared>>,
    thread: JoinHandle<()>,
}

static PRESTARTED: Mutex<Option<Prestarted>> = Mutex::new(None);

impl Prestarted {
    /// The thread becomes `shared`'s supervisor; returns its handle.
    fn adopt(self, shared: Arc<Shared>) -> io::Result<JoinHandle<()>> {
        // The thread only exits once `handoff` is dropped, so the send cannot fail while we
        // hold it; if it ever did, the thread is ending and its handle is still the one to join.
        let _ = self.handoff.send(shared);
        Ok(self.thread)
    }

    /// Kills its template (starting or ready) and joins its thread.
    fn cancel(self) {
        self.starting.cancel();
        drop(self.handoff);
        let _ = self.thread.join();
    }
}

/// The prestarted supervisor if it was started by this process for `program` and `args`. One
/// started for another command is cancelled; a `fork()` child's copy is forgotten (its thread
/// and template are the parent's).
fn take_prestarted(program: &PathBuf, args: &[OsString]) -> Option<Prestarted> {
    let taken = lock(&PRESTARTED).take()?;
    if forked_away(taken.owner) {
        std::mem::forget(taken);
        return None;
    }
    if taken.program != *program || taken.args != args {
        taken.cancel();
        return None;
    }
    Some(taken)
}

impl Engine {
    /// Starts, ahead of any engine, the thread that will be the next engine's supervisor
    /// thread, and on it the template process (`command`'s program with `template`'s
    /// arguments), so that the template is ready (its interpreter started, its imports done)
    /// by the time the program first needs a worker. Returns at once. Meant for
    /// `import gilfree`.
    ///
    /// The next [`Engine::start_with_template`] for the same program and template arguments
    /// adopts both; the template's workers are then children of that engine's supervisor
    /// thread, exactly as if it had started the template itself. The template forks with the
    /// environment and working directory the parent has at each fork, so only the program and
    /// its start-up environment (`command.env`) matter here. Does nothing if one is already
    /// prestarted.
    ///
    /// A process that never starts an engine calls [`Engine::cancel_prestart`] at exit; if it
    /// dies instead, the template dies with the thread (its parent-death signal).
    pub fn prestart_template(
        command: WorkerCommand,
        template: TemplateCommand,
    ) -> Result<(), SpawnError> {
        let mut slot = lock(&PRESTARTED);
        if let Some(old) = slot.take() {
            if !forked_away(old.owner) {
                *slot = Some(old);
                return Ok(());
            }
            std::mem::forget(old);
        }
        let starting = Arc::new(Starting::default());
        let (handoff, adopted) = mpsc::channel::<Arc<Shared>>();
        let (program, args) = (command.program.clone(), template.args.clone());
        let for_thread = Arc::clone(&starting);
        let thread = crate::sys::thread::spawn("gilfree-supervisor", move || {
            let ready = for_thread.start(&command, &template);
            match adopted.recv() {
                Ok(shared) => supervise(&shared, ready),
                Err(_) => drop(ready), // no engine: killed and reaped
            }
        })?;
        *slot = Some(Prestarted {
            owner: rustix::process::getpid(),
            program,
            args,
            starting,
            handoff,
            thread,
        });
        Ok(())
    }

    /// Kills and reaps a template that [`Engine::prestart_template`] started and no engine
    /// adopted, and joins its thread. Idempotent; for interpreter exit.
    pub fn cancel_prestart() {
        let Some(taken) = lock(&PRESTARTED).take() else {
            return;
        };
        if forked_away(taken.owner) {
            std::mem::forget(taken);
        } else {
            taken.cancel();
        }
    }

    /// The pid of the template that this process's prestarted supervisor (not yet adopted by
    /// an engine) started, once it has (waiting at most `timeout` for the launch); `None` if
    /// there is no such supervisor or it started nothing. For tests and diagnostics.
    pub fn prestarted_template_pid(timeout: Duration) -> Option<u32> {
        let starting = lock(&PRESTARTED)
            .as_ref()
            .filter(|p| !forked_away(p.owner))
            .map(|p| Arc::clone(&p.starting))?;
        starting.launched_pid(timeout)
    }
}

/// Records a process that could not be started for `target`.
fn settle_failure(st: &mut State, target: Target, error: SpawnError) {
    match target {
        Target::Warm => {
            st.warming -= 1;
            st.warm_broken = true;
        }
        Target::Request(id) => {
            if !st.abandoned.remove(&id) {
                st.results.insert(id, Err(error));
            }
        }
    }
}

/// Runs on a short-lived thread per new process (so one slow start never delays another):
/// waits for the handshake, then hands the process to its target.
fn finish_handshake(shared: &Arc<Shared>, target: Target, worker: Arc<WorkerProcess>) {
    let result = spawn::handshake(&worker, shared.hub.sink());
    let mut st = lock(&shared.state);
    if let Target::Request(_) = target {
        st.greeting -= 1;
    }
    let mut doomed = None;
    match result {
        Ok(()) if st.shut_down => {
            if let Target::Warm = target {
                st.warming -= 1;
            }
            doomed = Some(worker);
        }
        Ok(()) => {
            st.warm_broken = false;
            match target {
                Target::Warm => {
                    st.warming -= 1;
                    st.push_idle(worker);
                }
                Target::Request(id) => {
                    if st.abandoned.remove(&id) {
                        st.push_idle(worker);
                    } else {
                        st.results.insert(id, Ok(worker));
                    }
                }
            }
        }
        Err(e) => {
            st.forget(&worker);
            settle_failure(&mut st, target, e);
        }
    }
    shared.changed.notify_all();
    shared.supervisor.notify_all();
    drop(st);
    if let Some(w) = doomed {
        shared.discard(vec![w]);
    }
}

impl Shared {
    /// Takes a worker back from a lease: healthy → idle set; otherwise killed and reaped.
    fn give_back(&self, worker: Arc<WorkerProcess>, healthy: bool) {
        let mut st = lock(&self.state);
        if healthy && !st.shut_down {
            st.push_idle(worker);
            // Wake only who can use this: a release sits on the start→join path, and a
            // needless futex wake-up costs more than the rest of it on a 2-CPU machine.
            if st.sleepers > 0 {
                self.changed.notify_all();
            }
            if st.idle.len() > self.config.warm {
                self.supervisor.notify_all(); // a retirement deadline to schedule
            }
            return;
        }
        drop(st);
        self.discard(vec![worker]);
    }

    /// Kills and reaps `workers`, then drops them from `all`. In that order, so `pids()` lists
    /// a process until it is really gone. Call without the state lock.
    fn discard(&self, workers: Vec<Arc<WorkerProcess>>) {
        if workers.is_empty() {
            return;
        }
        for w in &workers {
            w.kill();
        }
        for w in &workers {
            w.reap();
        }
        let mut st = lock(&self.state);
        for w in &workers {
            st.forget(w);
        }
        // A lost worker may leave the live set below `warm`: let the supervisor refill it.
        self.supervisor.notify_all();
    }
}

/// Exclusive use of one worker process, from [`Engine::acquire`] until [`Lease::release`] or
/// drop. Usable from several threads at once (one sending while another receives or kills).
pub struct Lease {
    engine: Arc<EngineHandle>,
    /// `Some` until `release` takes it.
    worker: Option<Arc<WorkerProcess>>,
    /// A send or receive left the channel unusable (a partly sent message, an I/O error).
    broken: AtomicBool,
    /// The last `recv` ended before a whole message arrived (timeout or interrupt): a reply is
    /// still on its way, so the worker is not fit for someone else.
    mid_message: AtomicBool,
}

impl Lease {
    fn worker(&self) -> &WorkerProcess {
        match &self.worker {
            Some(w) => w,
            None => unreachable!("a lease only loses its worker in release or drop"),
        }
    }

    fn sink(&self) -> &dyn OutputSink {
        self.engine.shared.hub.sink()
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.worker().pid()
    }

    /// Bytes each direction of the worker's channel holds: a message of at most this size
    /// (including its 8-byte length prefix) is sent without waiting, if the ring is empty.
    pub fn ring_capacity(&self) -> usize {
        self.worker().channel().capacity()
    }

    /// Sends one message to the worker. The worker's death ends the wait with `Disconnected`.
    /// After `Timeout`, `Interrupted` or `Io` the message may be partly sent, and the worker
    /// will be discarded rather than reused.
    pub fn send(&self, msg: &[u8], wait: &mut Wait<'_>) -> Result<(), SendError> {
        let worker = self.worker();
        let mut wait = wait.with_peer_reborrowed(worker.pidfd());
        let result = worker.channel().send(msg, &mut wait);
        if matches!(
            result,
            Err(SendError::Timeout | SendError::Interrupted | SendError::Io(_))
        ) {
            self.broken.store(true, Ordering::Release);
        }
        result
    }

    /// Receives the worker's next message. Before returning it, delivers to the sink everything
    /// the worker wrote to stdout/stderr so far (the worker flushes both before it sends).
    /// `Disconnected` means the worker died; its last output (a crash message on stderr) has
    /// then been delivered too, and [`Lease::exit_info`] says how it ended.
    pub fn recv(&self, wait: &mut Wait<'_>) -> Result<Vec<u8>, RecvError> {
        self.recv_frame(wait, true)
    }

    /// [`recv`](Lease::recv), draining the worker's output first only if `drain`: a task
    /// answered by many frames needs its output in order only before the last one, and the
    /// drain is a system call per frame.
    pub fn recv_frame(&self, wait: &mut Wait<'_>, drain: bool) -> Result<Vec<u8>, RecvError> {
        let worker = self.worker();
        let result = {
            let mut wait = wait.with_peer_reborrowed(worker.pidfd());
            worker.channel().recv(&mut wait)
        };
        match &result {
            Ok(_) => {
                self.mid_message.store(false, Ordering::Release);
                if drain {
                    worker.output().drain(self.sink(), true);
                }
            }
            Err(RecvError::Disconnected) => {
                if worker.has_exited() {
                    // A dead process's output is all in the pipes now.
                    worker.output().drain(self.sink(), true);
                }
            }
            Err(RecvError::Timeout | RecvError::Interrupted) => {
                self.mid_message.store(true, Ordering::Release);
            }
            Err(RecvError::Io(_)) => self.broken.store(true, Ordering::Release),
        }
        result
    }

    /// A message is arriving, or the process has exited, so `recv` would not block for long.
    /// Never blocks.
    pub fn has_incoming(&self) -> bool {
        let worker = self.worker();
        worker.channel().has_incoming() || worker.has_exited()
    }

    /// Takes the worker's messages that are already whole in the ring, at most `max`, handing
    /// each to `sink`; never waits, and stops short of a message still arriving (a later
    /// [`recv_frame`](Lease::recv_frame) takes it). With `drain`, delivers the worker's output
    /// first if it took `max` (as `recv_frame(_, true)` would before a task's last frame).
    pub fn recv_ready_frames(
        &self,
        max: usize,
        drain: bool,
        scratch: &mut Vec<u8>,
        sink: impl FnMut(&[u8]),
    ) -> Result<usize, RecvError> {
        let worker = self.worker();
        let taken = worker.channel().recv_ready(max, scratch, sink);
        match &taken {
            Ok(n) if drain && *n == max => worker.output().drain(self.sink(), true),
            Ok(_) => {}
            Err(RecvError::Io(_)) => self.broken.store(true, Ordering::Release),
            Err(_) => {}
        }
        taken
    }

    /// Kills the worker with SIGKILL (through its pidfd, so never a recycled pid). Idempotent;
    /// safe while another thread is blocked in `recv`, which then returns `Disconnected`.
    pub fn kill(&self) {
        if !forked_away(self.engine.owner) {
            self.worker().kill();
        }
    }

    /// How the process ended, once it has: reaps it. `None` while it still runs (never blocks).
    pub fn exit_info(&self) -> Option<ExitInfo> {
        self.worker().try_reap()
    }

    /// Ends the lease. A healthy worker goes back to the idle set for reuse; one that died, was
    /// killed, or is mid-message (unread or partial messages) is killed and reaped.
    pub fn release(mut self) {
        let Some(worker) = self.worker.take() else {
            return;
        };
        if forked_away(self.engine.owner) {
            std::mem::forget(worker);
            return;
        }
        let healthy = !self.broken.load(Ordering::Acquire)
            && !self.mid_message.load(Ordering::Acquire)
            && !worker.was_killed()
            && !worker.has_exited()
            && !worker.channel().has_incoming();
        self.engine.shared.give_back(worker, healthy);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if forked_away(self.engine.owner) {
            // A fork() child's copy of a lease: the worker is the parent's, not ours to kill.
            if let Some(worker) = self.worker.take() {
                std::mem::forget(worker);
            }
            return;
        }
        // Not released: the worker may be in any state, so it is never reused.
        if let Some(worker) = self.worker.take() {
            self.engine.shared.give_back(worker, false);
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("pid", &self.worker.as_ref().map(|w| w.pid()))
            .finish()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("pids", &self.pids())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ipc::arena::{Arena, ARENA_FD_ENV};
    use crate::pool::command::Inheritable;

    #[test]
    fn share_arena_wires_env_fds_and_death_hook() {
        let arena = Arena::create().expect("arena");
        let mut config = EngineConfig {
            command: WorkerCommand {
                program: "true".into(),
                args: vec![],
                env: vec![("KEEP".into(), "1".into())],
                cwd: None,
                ring_capacity: 4096,
                inherit_fds: vec![],
            },
            warm: 0,
            idle_timeout: Duration::MAX,
            on_death: None,
        };
        config.share_arena(Arc::clone(&arena));
        let told = (ARENA_FD_ENV.into(), arena.env_value().into());
        assert_eq!(config.command.env, vec![("KEEP".into(), "1".into()), told]);
        let fds: Vec<_> = config
            .command
            .inherit_fds
            .iter()
            .flat_map(|o| o.fds_to_inherit())
            .collect();
        assert_eq!(fds.len(), arena.fds_to_inherit().len());
        assert!(config.on_death.is_some());
    }
}
