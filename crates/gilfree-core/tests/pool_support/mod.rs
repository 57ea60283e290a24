//! Shared helpers for the multi-process tests: the worker role (this test binary re-run as a
//! child, rayon-style), a collecting sink, a watchdog, and process-liveness checks.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use gilfree_core::output::{OutputSink, Stream};
use gilfree_core::pool::{Endpoint, EngineConfig, WorkerCommand};
use gilfree_core::sync::unmodelled::{Condvar, Mutex};
use gilfree_core::Wait;

/// Set in a child's environment to make its `child_entry` test run the worker loop.
pub const ROLE_ENV: &str = "GILFREE_TEST_ROLE";

/// Every test binary that uses these helpers defines `#[test] fn child_entry()` calling
/// [`child_main`].
pub const CHILD_TEST: &str = "child_entry";

/// How long any one blocking step of a test may take before the test fails (never asserted
/// as a duration: only a guard against hangs).
pub const STEP: Duration = Duration::from_secs(60);

/// A wait with the per-step deadline.
pub fn step() -> Wait<'static> {
    Wait::timeout(Some(STEP))
}

/// The worker loop, when this binary runs as a child; returns at once otherwise.
///
/// Messages: `crash` → abort (SIGABRT); `exit3` → exit code 3; `print` → writes numbered lines
/// to stdout and stderr, flushes, replies `printed`; `silent` → no reply (the worker just
/// waits for the next message); `die-loud` → writes to stderr, then aborts; anything else is
/// echoed back.
pub fn child_main() {
    if std::env::var_os(ROLE_ENV).is_none() {
        return;
    }
    let endpoint = Endpoint::from_env().expect("worker endpoint");
    assert!(std::env::var_os(gilfree_core::pool::CHANNEL_FDS_ENV).is_none());
    loop {
        let Ok(msg) = endpoint.recv(&mut Wait::forever()) else {
            std::process::exit(0);
        };
        match msg.as_slice() {
            b"crash" => std::process::abort(),
            b"exit3" => std::process::exit(3),
            b"silent" => continue,
            b"die-loud" => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(b"fatal: about to crash\npartial tail");
                let _ = err.flush();
                std::process::abort();
            }
            b"print" => {
                let mut out = std::io::stdout().lock();
                for i in 0..200 {
                    let _ = writeln!(out, "out line {i}");
                }
                let _ = out.write_all(b"no newline yet");
                let _ = out.flush();
                drop(out);
                let mut err = std::io::stderr().lock();
                for i in 0..50 {
                    let _ = writeln!(err, "err line {i}");
                }
                let _ = err.flush();
                drop(err);
                endpoint
                    .send(b"printed", &mut Wait::forever())
                    .expect("reply");
            }
            other => {
                if !scheduler_task(&endpoint, other) {
                    endpoint.send(other, &mut Wait::forever()).expect("echo");
                }
            }
        }
    }
}

/// The scheduler's test protocol (tests/pool_scheduler.rs): a task sends its start mark (an
/// empty message), prints `start:TAG` on stdout (after [`MARK`]), then answers with frames, which it sends deferred (flushing at the
/// end of the task, as the Python worker does). `false`: not a scheduler message.
///
/// - `echo:N:TAG` → N frames `TAG:0` … `TAG:N-1`;
/// - `crash-after:K:TAG` → K frames (never flushed), then abort;
/// - `block:TAG` → never answers;
/// - `block-first:PATH:TAG` → never answers if it is the first to create the file PATH, else
///   one frame `TAG:0`;
/// - `gate:PATH:TAG` → reads the FIFO at PATH to its end, then one frame `TAG:0`;
/// - `gate-unflushed:PATH:TAG` → as `gate`, but the frame is never flushed (no wake-up);
/// - `pid:TAG` → one frame, the worker's pid;
/// - `init-ok`, `init-fail`, `init-gate:PATH` → print `init`; answer `[0]`, `[1]bad`, or `[0]`
///   after reading the FIFO at PATH (only in the first worker to get it).
fn scheduler_task(endpoint: &Endpoint, msg: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(msg) else {
        return false;
    };
    let parts: Vec<&str> = text.split(':').collect();
    let say = |line: &str| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{MARK}{line}");
        let _ = out.flush();
    };
    let frame = |data: &[u8]| {
        endpoint
            .send_deferred(data, &mut Wait::forever())
            .expect("frame");
    };
    // A task begins with its start mark (an empty message, deferred), then says so.
    let begin = |tag: &str| {
        frame(b"");
        say(&format!("start:{tag}"));
    };
    match parts.as_slice() {
        ["echo", n, tag] => {
            begin(tag);
            for i in 0..n.parse::<u32>().expect("count") {
                frame(format!("{tag}:{i}").as_bytes());
            }
        }
        ["crash-after", k, tag] => {
            begin(tag);
            for i in 0..k.parse::<u32>().expect("count") {
                frame(format!("{tag}:{i}").as_bytes());
            }
            std::process::abort();
        }
        ["block", tag] => {
            begin(tag);
            loop {
                std::thread::park();
            }
        }
        ["gate", path, tag] => {
            begin(tag);
            std::fs::read(path).expect("gate");
            frame(format!("{tag}:0").as_bytes());
        }
        ["gate-unflushed", path, tag] => {
            begin(tag);
            std::fs::read(path).expect("gate");
            frame(format!("{tag}:0").as_bytes());
            // No flush: the frame waits in the ring, unseen by a parent asleep in its receive,
            // while this worker goes on to its next task.
            return true;
        }
        ["block-first", path, tag] => {
            // The first run (the one that creates PATH) blocks; a re-run answers at once. The
            // file is made before the start line, so a kill after that line finds it made.
            frame(b"");
            let first = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .is_ok();
            say(&format!("start:{tag}"));
            if first {
                loop {
                    std::thread::park();
                }
            }
            frame(format!("{tag}:0").as_bytes());
        }
        ["pid", tag] => {
            begin(tag);
            frame(std::process::id().to_string().as_bytes());
        }
        ["init-ok"] => {
            say("init");
            frame(&[0]);
        }
        ["init-fail"] => {
            say("init");
            frame(b"\x01bad");
        }
        ["init-gate", path] => {
            say("init");
            // Only the first worker's init waits (replacements pass at once).
            let first = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(format!("{path}.first"))
                .is_ok();
            if first {
                std::fs::read(path).expect("gate");
            }
            frame(&[0]);
        }
        _ => return false,
    }
    endpoint.flush().expect("flush");
    true
}

/// Precedes the lines a scheduler task prints (`@@start:TAG`, `@@init`).
const MARK: &str = "@@";

/// A sink that counts `start:TAG` and `init` lines and lets a test wait for one.
#[derive(Default)]
pub struct Starts {
    counts: Mutex<HashMap<String, usize>>,
    changed: Condvar,
}

impl OutputSink for Starts {
    fn write(&self, _pid: u32, stream: Stream, lines: &[u8]) {
        if stream != Stream::Stdout {
            let _ = std::io::stderr().write_all(lines);
            return;
        }
        let mut counts = self.counts.lock().unwrap();
        // libtest's own "test child_entry ... " may precede a marker on its line.
        for line in String::from_utf8_lossy(lines).lines() {
            if let Some(at) = line.find(MARK) {
                let key = &line[at + MARK.len()..];
                let key = key.strip_prefix("start:").unwrap_or(key);
                *counts.entry(key.to_owned()).or_default() += 1;
            }
        }
        self.changed.notify_all();
    }
}

impl Starts {
    pub fn new() -> Arc<Starts> {
        Arc::new(Starts::default())
    }

    /// How many times `key` (a task tag, or `init`) was seen.
    pub fn count(&self, key: &str) -> usize {
        self.counts.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    /// Blocks until `key` was seen (watchdog: [`STEP`]).
    pub fn wait_for(&self, key: &str) {
        let counts = self.counts.lock().unwrap();
        let (_counts, timeout) = self
            .changed
            .wait_timeout_while(counts, STEP, |c| !c.contains_key(key))
            .unwrap();
        assert!(!timeout.timed_out(), "{key} never started");
    }
}

/// A named pipe that a `gate:` task or `init-gate` blocks on until the test [`open`]s it.
///
/// [`open`]: Gate::open
pub struct Gate {
    pub path: std::path::PathBuf,
}

impl Gate {
    pub fn new(name: &str) -> Gate {
        let path = std::env::temp_dir().join(format!("gilfree-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(format!("{}.first", path.display()));
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &path,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .expect("mkfifo");
        Gate { path }
    }

    /// Lets the task through: blocks until the task has opened the pipe, then closes it.
    pub fn open(&self) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .expect("open gate");
        let _ = f.write_all(b"go");
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let mut first = self.path.clone().into_os_string();
        first.push(".first");
        let _ = std::fs::remove_file(first);
    }
}

/// The command that re-runs this test binary as a worker.
pub fn worker_command() -> WorkerCommand {
    WorkerCommand {
        program: std::env::current_exe().expect("current_exe"),
        args: ["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"]
            .into_iter()
            .map(OsString::from)
            .collect(),
        env: vec![(ROLE_ENV.into(), "echo".into())],
        cwd: None,
        ring_capacity: 1 << 16,
        inherit_fds: vec![],
    }
}

/// An engine config for the test worker (idle processes never retire: `Duration::MAX`, as the
/// Python glue passes for "no timeout").
pub fn config(warm: usize) -> EngineConfig {
    EngineConfig {
        command: worker_command(),
        warm,
        idle_timeout: Duration::MAX,
        on_death: None,
    }
}

/// A sink that records every write.
#[derive(Default)]
pub struct Collect {
    pub writes: Mutex<Vec<(u32, Stream, Vec<u8>)>>,
}

impl OutputSink for Collect {
    fn write(&self, pid: u32, stream: Stream, lines: &[u8]) {
        self.writes
            .lock()
            .unwrap()
            .push((pid, stream, lines.to_vec()));
    }
}

impl Collect {
    pub fn new() -> Arc<Collect> {
        Arc::new(Collect::default())
    }

    /// Everything `pid` wrote on `stream`, concatenated, and each write's bytes.
    pub fn text(&self, pid: u32, stream: Stream) -> (String, Vec<Vec<u8>>) {
        let writes: Vec<Vec<u8>> = self
            .writes
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, s, _)| *p == pid && *s == stream)
            .map(|(_, _, b)| b.clone())
            .collect();
        (
            String::from_utf8_lossy(&writes.concat()).into_owned(),
            writes,
        )
    }
}

/// Aborts the whole test process if it is still running at the deadline, so a hang fails
/// loudly. Our workers die with us (their parent-death signal).
pub struct Watchdog {
    cancel: Option<mpsc::Sender<()>>,
}

impl Watchdog {
    pub fn new(name: &'static str) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(180))
            {
                eprintln!("watchdog: test {name} hung; aborting");
                std::process::abort();
            }
        });
        Watchdog { cancel: Some(tx) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.cancel.take());
    }
}

/// `pid` is a live (or unreaped) child of this process.
pub fn is_our_child(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let ppid = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    ppid == std::process::id().to_string()
}
