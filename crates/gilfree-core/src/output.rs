//! Forwards each worker's stdout and stderr to an [`OutputSink`], line by line.
//!
//! Every worker's stdout and stderr are pipes. One output thread (`OutputHub`) `poll(2)`s all
//! of them plus an eventfd that says "the set changed" or "stop", reads what is ready, splits it
//! into whole lines and hands them to the sink, several lines per call where they arrived
//! together.
//!
//! # Invariants
//! 1. A worker's pipes are read only under that worker's output mutex (`WorkerOutput`), and
//!    the bytes read are handed to the sink *before* the mutex is released. So two readers (the
//!    output thread and a thread in `Lease::recv`) can never reorder a worker's lines.
//! 2. The sink only ever sees whole lines (`'\n'`-terminated), except for a partial last line
//!    flushed at EOF, by an explicit flush (`Lease::recv` after a message arrived), or when a
//!    line grows past [`MAX_PARTIAL_LINE`] bytes without a newline.
//! 3. No engine-wide lock is held while the sink runs: the Python sink takes the GIL, and a
//!    thread holding the GIL may be waiting for an engine-wide lock. Engine calls are made with
//!    the GIL released, so holding only a per-worker output mutex across the call is safe.
//! 4. Until a worker has completed its spawn handshake its output is *held* rather than
//!    delivered: if it dies before it is ready, its stderr becomes the text of
//!    [`SpawnError::Handshake`](crate::SpawnError::Handshake) (so a Python `ImportError` is shown
//!    once, in the exception), and its stdout goes to the sink.
//! 5. The thread also polls each worker's death watch (a pidfd, see `WatchedDeath`, which
//!    the pool's `DeathWatch` implements, so this module knows nothing of the pool): when it becomes readable the worker has died, and
//!    the thread runs the engine's death hook at once (once per process, before it is reaped),
//!    so shared primitives learn of the death without anybody joining or polling. Pipe EOF is
//!    not used for this: a worker may close its stdout and go on running.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::io::Errno;

use crate::sync::unmodelled::{AtomicBool, Mutex, MutexGuard};
use crate::sync::Ordering;

/// Which of a worker's output streams a chunk of text came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The worker's standard output.
    Stdout = 1,
    /// The worker's standard error.
    Stderr = 2,
}

impl Stream {
    const ALL: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

    fn index(self) -> usize {
        self as usize - 1
    }
}

/// Where workers' output goes (for Python: `sys.stdout` / `sys.stderr` of the parent).
///
/// Called from the output thread and from threads blocked in `Lease::recv`, never while an
/// engine-wide lock is held, so an implementation may take the GIL.
pub trait OutputSink: Send + Sync + 'static {
    /// Writes `lines` from worker `pid`'s `stream`: one or more whole lines (each ending in
    /// `'\n'`), or a final partial line (at EOF, on an explicit flush, or past
    /// [`MAX_PARTIAL_LINE`]).
    fn write(&self, pid: u32, stream: Stream, lines: &[u8]);
}

/// A line longer than this without a `'\n'` is delivered in pieces, so a worker that prints
/// without newlines cannot make the parent buffer without bound.
pub const MAX_PARTIAL_LINE: usize = 1 << 20;

/// How much of a failed worker's stderr is kept for [`SpawnError::Handshake`](crate::SpawnError).
pub const HANDSHAKE_STDERR_TAIL: usize = 16 * 1024;

/// One drain reads at most this much per stream before giving others a turn. It is far larger
/// than a pipe's buffer, so a drain after a message still gets everything written before it.
const MAX_DRAIN: usize = 8 << 20;

const READ_CHUNK: usize = 64 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a sink must not wedge the engine: the data under these mutexes stays valid at
    // every await point, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The output pipes of one worker process and what has been read from them but not delivered.
pub(crate) struct WorkerOutput {
    pid: u32,
    /// `[stdout, stderr]`, non-blocking read ends. Never closed while this value lives, so the
    /// output thread can poll them without holding `state`.
    fds: [OwnedFd; 2],
    /// Per stream: EOF not yet seen. Read without the mutex to build the poll set.
    open: [AtomicBool; 2],
    state: Mutex<OutputState>,
}

struct OutputState {
    /// Bytes after the last `'\n'` read so far, per stream.
    partial: [Vec<u8>; 2],
    /// `Some` until the spawn handshake ends: whole lines are held here instead of delivered.
    held: Option<[Vec<u8>; 2]>,
}

impl WorkerOutput {
    /// Takes the read ends of a new worker's pipes; sets them non-blocking. Output is held
    /// until [`Self::release_held`] or [`Self::take_failed_handshake`].
    pub(crate) fn new(pid: u32, stdout: OwnedFd, stderr: OwnedFd) -> io::Result<WorkerOutput> {
        for fd in [&stdout, &stderr] {
            rustix::io::ioctl_fionbio(fd, true)?;
        }
        Ok(WorkerOutput {
            pid,
            fds: [stdout, stderr],
            open: [AtomicBool::new(true), AtomicBool::new(true)],
            state: Mutex::new(OutputState {
                partial: [Vec::new(), Vec::new()],
                held: Some([Vec::new(), Vec::new()]),
            }),
        })
    }

    /// The worker's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Both pipes reached EOF: nothing more can ever arrive.
    pub(crate) fn is_closed(&self) -> bool {
        self.open.iter().all(|o| !o.load(Ordering::Acquire))
    }

    /// Reads whatever is in the pipes now (without blocking), delivers the whole lines, and with
    /// `flush` also the partial last line.
    ///
    /// `Lease::recv` calls this with `flush` after a message arrived (the worker flushed its
    /// streams before sending, so its output so far is already in the pipes), and after the
    /// worker died (a dead process's bytes are all in the pipe, so this gets everything).
    pub(crate) fn drain(&self, sink: &dyn OutputSink, flush: bool) {
        let mut state = lock(&self.state);
        for stream in Stream::ALL {
            self.read_stream(&mut state, sink, stream);
            if flush {
                self.flush_partial(&mut state, sink, stream);
            }
        }
    }

    /// Ends the handshake hold: delivers what was held, then delivers normally from now on.
    pub(crate) fn release_held(&self, sink: &dyn OutputSink) {
        let mut state = lock(&self.state);
        if let Some(held) = state.held.take() {
            for stream in Stream::ALL {
                if !held[stream.index()].is_empty() {
                    sink.write(self.pid, stream, &held[stream.index()]);
                }
            }
        }
    }

    /// For a worker that died (or was killed) before its handshake: reads its pipes out,
    /// delivers its stdout to the sink, and returns the tail of its stderr as text.
    pub(crate) fn take_failed_handshake(&self, sink: &dyn OutputSink) -> String {
        let mut state = lock(&self.state);
        for stream in Stream::ALL {
            self.read_stream(&mut state, sink, stream);
            self.flush_partial(&mut state, sink, stream);
        }
        let Some([out, err]) = state.held.take() else {
            return String::new();
        };
        if !out.is_empty() {
            sink.write(self.pid, Stream::Stdout, &out);
        }
        let tail = &err[err.len().saturating_sub(HANDSHAKE_STDERR_TAIL)..];
        String::from_utf8_lossy(tail).trim_end().to_owned()
    }

    /// Reads one stream until `EAGAIN`, EOF or [`MAX_DRAIN`], and delivers the whole lines.
    fn read_stream(&self, state: &mut OutputState, sink: &dyn OutputSink, stream: Stream) {
        let i = stream.index();
        if !self.open[i].load(Ordering::Acquire) {
            return;
        }
        let mut total = 0;
        // On the heap: this also runs on callers' threads, whose stacks may be small. Not
        // zeroed: `Lease::recv` drains after every task, and zeroing 64 KiB cost more than the
        // tiny task itself.
        let mut chunk: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut eof = false;
        while total < MAX_DRAIN {
            chunk.clear();
            match rustix::io::read(&self.fds[i], rustix::buffer::spare_capacity(&mut chunk)) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    state.partial[i].extend_from_slice(&chunk);
                    total += n;
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => break,
                // Any other error means the pipe is unusable; treat it as EOF so it is not
                // polled again (and cannot spin the output thread).
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        let partial = &mut state.partial[i];
        let whole = match partial.iter().rposition(|&b| b == b'\n') {
            Some(last) => last + 1,
            None if partial.len() >= MAX_PARTIAL_LINE => partial.len(),
            None => 0,
        };
        if whole > 0 {
            let rest = partial.split_off(whole);
            let lines = std::mem::replace(partial, rest);
            self.deliver(state, sink, stream, lines);
        }
        if eof {
            self.flush_partial(state, sink, stream);
            self.open[i].store(false, Ordering::Release);
        }
    }

    fn flush_partial(&self, state: &mut OutputState, sink: &dyn OutputSink, stream: Stream) {
        let rest = std::mem::take(&mut state.partial[stream.index()]);
        if !rest.is_empty() {
            self.deliver(state, sink, stream, rest);
        }
    }

    fn deliver(&self, state: &mut OutputState, sink: &dyn OutputSink, stream: Stream, b: Vec<u8>) {
        match state.held.as_mut() {
            None => sink.write(self.pid, stream, &b),
            Some(held) => {
                let held = &mut held[stream.index()];
                held.extend_from_slice(&b);
                // Bound what a chatty starting worker can make us hold: pass the oldest whole
                // lines on, keeping at least the stderr tail that a handshake error would show.
                if held.len() > MAX_PARTIAL_LINE {
                    let keep_from = held.len() - HANDSHAKE_STDERR_TAIL;
                    let cut = held[..keep_from]
                        .iter()
                        .rposition(|&c| c == b'\n')
                        .map_or(keep_from, |p| p + 1);
                    let rest = held.split_off(cut);
                    let head = std::mem::replace(held, rest);
                    sink.write(self.pid, stream, &head);
                }
            }
        }
    }
}

/// A worker's death the output thread watches for (invariant 5).
pub(crate) trait WatchedDeath: Send + Sync {
    /// The pidfd to poll: readable once the process has exited (`None`: it cannot be watched).
    fn pidfd(&self) -> Option<BorrowedFd<'_>>;
    /// Whether the death was already handled (a reap got there first).
    fn fired(&self) -> bool;
    /// Handles the death, once; called when the pidfd became readable, before any reap.
    fn fire(&self);
}

/// What the output thread calls after it saw workers die (see [`OutputHub::after_deaths`]).
pub(crate) type AfterDeaths = Arc<dyn Fn() + Send + Sync>;

/// The output thread and the set of workers whose pipes it watches.
///
/// # Protocol
/// 1. [`Self::register`] adds a worker and writes the eventfd, so a `poll` in progress returns
///    and the next one includes the new pipes.
/// 2. The thread polls the eventfd and every open pipe; for each ready pipe it calls the
///    worker's drain (whole lines only) under that worker's output mutex.
/// 3. A worker whose pipes both reached EOF is dropped from the set (its fds close when the
///    last `Arc` goes).
/// 4. [`Self::stop`] sets the stop flag and writes the eventfd; the thread then drains every
///    worker once more, flushing partial lines, and exits.
/// 5. When a watched pidfd becomes readable, the thread runs that worker's death hook, then
///    (once every hook of the round returned) the [`Self::after_deaths`] callback.
pub(crate) struct OutputHub {
    shared: Arc<HubShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct HubShared {
    sink: Arc<dyn OutputSink>,
    workers: Mutex<HashMap<u32, Arc<WorkerOutput>>>,
    /// Death watches whose hook has not run yet (invariant 5).
    deaths: Mutex<Vec<Arc<dyn WatchedDeath>>>,
    /// Called once after each round of deaths this thread saw, once their hooks returned (so
    /// nobody waits on a hook meanwhile): the engine reaps idle workers that died there.
    after_deaths: Mutex<Option<AfterDeaths>>,
    wake: OwnedFd,
    stop: AtomicBool,
}

impl OutputHub {
    /// Starts the output thread.
    pub(crate) fn start(sink: Arc<dyn OutputSink>) -> io::Result<OutputHub> {
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let shared = Arc::new(HubShared {
            sink,
            workers: Mutex::new(HashMap::new()),
            deaths: Mutex::new(Vec::new()),
            after_deaths: Mutex::new(None),
            wake,
            stop: AtomicBool::new(false),
        });
        let for_thread = Arc::clone(&shared);
        let thread = crate::sys::thread::spawn("gilfree-output", move || for_thread.run())?;
        Ok(OutputHub {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The sink every worker's output goes to.
    pub(crate) fn sink(&self) -> &dyn OutputSink {
        &*self.shared.sink
    }

    /// Starts watching a worker's pipes.
    pub(crate) fn register(&self, worker: Arc<WorkerOutput>) {
        lock(&self.shared.workers).insert(worker.pid(), worker);
        self.shared.wake();
    }

    /// Starts watching a worker's pidfd for its death (invariant 5).
    pub(crate) fn watch_death(&self, watch: Arc<dyn WatchedDeath>) {
        if watch.pidfd().is_some() {
            lock(&self.shared.deaths).push(watch);
            self.shared.wake();
        }
    }

    /// Sets what the output thread calls after it saw deaths and ran their hooks.
    pub(crate) fn after_deaths(&self, callback: AfterDeaths) {
        *lock(&self.shared.after_deaths) = Some(callback);
    }

    /// Stops the thread; with `join`, waits until it has delivered its last lines.
    ///
    /// Pass `join = false` where the caller may hold the GIL (a `Drop`): the thread may be
    /// inside the sink waiting for the GIL, and joining it would deadlock.
    pub(crate) fn stop(&self, join: bool) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake();
        if join {
            let handle = lock(&self.thread).take();
            if let Some(handle) = handle {
                if handle.thread().id() != std::thread::current().id() {
                    let _ = handle.join();
                }
            }
        }
    }
}

impl HubShared {
    fn wake(&self) {
        // An eventfd write only fails when the counter would overflow, and then a wake-up is
        // already pending, which is all we need.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    fn run(&self) {
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            let workers: Vec<Arc<WorkerOutput>> = lock(&self.workers).values().cloned().collect();
            if stopping {
                for w in &workers {
                    w.drain(&*self.sink, true);
                }
                lock(&self.workers).clear();
                lock(&self.deaths).clear();
                return;
            }
            let deaths: Vec<Arc<dyn WatchedDeath>> = {
                let mut d = lock(&self.deaths);
                // Hooks already run by a reap need no watching.
                d.retain(|w| !w.fired());
                d.clone()
            };
            // (worker index, stream) of each pipe in the poll set, after the eventfd at 0.
            let mut slots = Vec::with_capacity(workers.len() * 2);
            let mut fds = Vec::with_capacity(workers.len() * 2 + deaths.len() + 1);
            fds.push(PollFd::new(&self.wake, PollFlags::IN));
            // The death watches come right after the eventfd, the pipes after them.
            for w in &deaths {
                if let Some(fd) = w.pidfd() {
                    fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
                }
            }
            let pipes_from = fds.len();
            for (wi, w) in workers.iter().enumerate() {
                for stream in Stream::ALL {
                    if w.open[stream.index()].load(Ordering::Acquire) {
                        fds.push(PollFd::from_borrowed_fd(
                            w.fds[stream.index()].as_fd(),
                            PollFlags::IN,
                        ));
                        slots.push((wi, stream));
                    }
                }
            }
            match poll(&mut fds, None) {
                Ok(_) | Err(Errno::INTR) => {}
                // poll only fails for reasons (ENOMEM, bad fd) that retrying cannot cure
                // quickly; stop forwarding rather than spin.
                Err(_) => return,
            }
            if !fds[0].revents().is_empty() {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&self.wake, &mut buf[..]);
            }
            let dead: Vec<Arc<dyn WatchedDeath>> = fds[1..pipes_from]
                .iter()
                .zip(&deaths)
                .filter(|(fd, _)| !fd.revents().is_empty())
                .map(|(_, w)| Arc::clone(w))
                .collect();
            let ready: Vec<(usize, Stream)> = fds[pipes_from..]
                .iter()
                .zip(&slots)
                .filter(|(fd, _)| !fd.revents().is_empty())
                .map(|(_, slot)| *slot)
                .collect();
            drop(fds);
            let any_dead = !dead.is_empty();
            for w in dead {
                // The process has exited and is not reaped before the hook returns (a reap
                // runs `fire` first, which waits for this call). A panicking watch must not end
                // this thread: every other worker's pipes would fill and block their writers.
                if std::panic::catch_unwind(AssertUnwindSafe(|| w.fire())).is_err() {
                    eprintln!("gilfree: a death watch panicked on the output thread");
                }
            }
            if any_dead {
                let after = lock(&self.after_deaths).clone();
                if let Some(after) = after {
                    // Like the hooks: a panic here must not end the output thread.
                    if std::panic::catch_unwind(AssertUnwindSafe(|| after())).is_err() {
                        eprintln!("gilfree: the engine's after-death callback panicked");
                    }
                }
            }
            for (wi, stream) in ready {
                let w = &workers[wi];
                let mut state = lock(&w.state);
                // A panicking sink must not stop forwarding: workers would then block on full
                // pipes. The buffers are consistent at every sink call, so carrying on is safe.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    w.read_stream(&mut state, &*self.sink, stream);
                }));
            }
            let closed: Vec<u32> = workers
                .iter()
                .filter(|w| w.is_closed())
                .map(|w| w.pid())
                .collect();
            if !closed.is_empty() {
                let mut set = lock(&self.workers);
                for pid in closed {
                    // Only drop the entry if it is still this worker (pids can be reused).
                    if set.get(&pid).is_some_and(|w| w.is_closed()) {
                        set.remove(&pid);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::pipe::{pipe_with, PipeFlags};

    #[derive(Default)]
    struct Collect(Mutex<Vec<(Stream, Vec<u8>)>>);
    impl OutputSink for Collect {
        fn write(&self, _pid: u32, stream: Stream, lines: &[u8]) {
            lock(&self.0).push((stream, lines.to_vec()));
        }
    }

    fn pipes() -> (WorkerOutput, OwnedFd, OwnedFd) {
        let (r1, w1) = pipe_with(PipeFlags::CLOEXEC).unwrap();
        let (r2, w2) = pipe_with(PipeFlags::CLOEXEC).unwrap();
        (WorkerOutput::new(7, r1, r2).unwrap(), w1, w2)
    }

    #[test]
    fn splits_whole_lines_and_keeps_partial() {
        let (out, w1, _w2) = pipes();
        let sink = Collect::default();
        out.release_held(&sink);
        rustix::io::write(&w1, b"a\nb\nc").unwrap();
        out.drain(&sink, false);
        assert_eq!(*lock(&sink.0), vec![(Stream::Stdout, b"a\nb\n".to_vec())]);
        rustix::io::write(&w1, b"d\n").unwrap();
        out.drain(&sink, false);
        assert_eq!(lock(&sink.0)[1], (Stream::Stdout, b"cd\n".to_vec()));
        rustix::io::write(&w1, b"tail").unwrap();
        out.drain(&sink, true);
        assert_eq!(lock(&sink.0)[2], (Stream::Stdout, b"tail".to_vec()));
    }

    #[test]
    fn eof_flushes_partial_and_closes() {
        let (out, w1, w2) = pipes();
        let sink = Collect::default();
        out.release_held(&sink);
        rustix::io::write(&w2, b"boom").unwrap();
        drop((w1, w2));
        out.drain(&sink, false);
        assert_eq!(*lock(&sink.0), vec![(Stream::Stderr, b"boom".to_vec())]);
        assert!(out.is_closed());
    }

    #[test]
    fn held_output_becomes_handshake_text() {
        let (out, w1, w2) = pipes();
        let sink = Collect::default();
        rustix::io::write(&w1, b"hello\n").unwrap();
        rustix::io::write(&w2, b"Traceback\nImportError: x\n").unwrap();
        drop((w1, w2));
        let text = out.take_failed_handshake(&sink);
        assert_eq!(text, "Traceback\nImportError: x");
        assert_eq!(*lock(&sink.0), vec![(Stream::Stdout, b"hello\n".to_vec())]);
    }

    #[test]
    fn hub_forwards_registered_pipes() {
        let sink = Arc::new(Collect::default());
        let hub = OutputHub::start(sink.clone()).unwrap();
        let (out, w1, w2) = pipes();
        let out = Arc::new(out);
        out.release_held(&*sink);
        hub.register(Arc::clone(&out));
        rustix::io::write(&w1, b"x\ny\n").unwrap();
        drop((w1, w2));
        hub.stop(true);
        let got: Vec<u8> = lock(&sink.0).iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(got, b"x\ny\n");
    }

    /// A death watch that panics when it fires (the pool's `DeathWatch` catches its hook's
    /// panics itself; the hub must not rely on that).
    struct PanickingWatch {
        pidfd: OwnedFd,
        pid: u32,
        fired: AtomicBool,
        tx: Mutex<std::sync::mpsc::Sender<u32>>,
    }

    impl WatchedDeath for PanickingWatch {
        fn pidfd(&self) -> Option<BorrowedFd<'_>> {
            Some(self.pidfd.as_fd())
        }
        fn fired(&self) -> bool {
            self.fired.load(Ordering::SeqCst)
        }
        fn fire(&self) {
            if !self.fired.swap(true, Ordering::SeqCst) {
                let _ = lock(&self.tx).send(self.pid);
                panic!("a buggy death watch");
            }
        }
    }

    #[test]
    fn hub_survives_a_panicking_death_watch() {
        use rustix::process::{pidfd_open, Pid, PidfdFlags};

        let sink = Arc::new(Collect::default());
        let hub = OutputHub::start(sink.clone()).unwrap();
        let (out, w1, w2) = pipes();
        let out = Arc::new(out);
        out.release_held(&*sink);
        hub.register(Arc::clone(&out));
        // A child that exits at once: its pidfd turns readable and the hub fires the watch.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
        let pidfd = pidfd_open(pid, PidfdFlags::empty()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let watch = Arc::new(PanickingWatch {
            pidfd,
            pid: child.id(),
            fired: AtomicBool::new(false),
            tx: Mutex::new(tx),
        });
        hub.watch_death(watch.clone());
        let fired = rx.recv_timeout(std::time::Duration::from_secs(60));
        assert_eq!(fired.unwrap(), child.id());
        // The watch's panic must not end the output thread: what is written now still arrives
        // (a dead thread would never deliver it, and workers would block on full pipes).
        rustix::io::write(&w1, b"after\n").unwrap();
        drop((w1, w2));
        hub.stop(true);
        child.wait().unwrap();
        assert!(watch.fired());
        let got: Vec<u8> = lock(&sink.0).iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(got, b"after\n");
    }
}
