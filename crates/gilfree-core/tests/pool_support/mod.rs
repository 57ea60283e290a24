//! Shared helpers for the multi-process tests: the worker role (this test binary re-run as a
//! child, rayon-style), a collecting sink, a watchdog, and process-liveness checks.
#![allow(dead_code)]

use std::ffi::OsString;
use std::io::Write;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gilfree_core::output::{OutputSink, Stream};
use gilfree_core::pool::{Endpoint, EngineConfig, WorkerCommand};
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
            other => endpoint.send(other, &mut Wait::forever()).expect("echo"),
        }
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
    }
}

/// An engine config for the test worker (idle processes never retire: `Duration::MAX`, as the
/// Python glue passes for "no timeout").
pub fn config(warm: usize) -> EngineConfig {
    EngineConfig {
        command: worker_command(),
        warm,
        idle_timeout: Duration::MAX,
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
