//! One worker process as the parent sees it: its pidfd, its channel, its output pipes, and
//! death detection.
//!
//! # Invariants
//! 1. Death is observed only through the pidfd (it becomes readable when the process exits),
//!    never by polling with sleeps. A pidfd names exactly one process, so signalling it can
//!    never hit a recycled pid, even after the process was reaped.
//! 2. The process is reaped exactly once, under `child`'s mutex; later callers get the cached
//!    [`ExitInfo`]. Reaping blocks only when the process is already dead or was sent SIGKILL.
//! 3. The death hook ([`DeathWatch`]) runs exactly once per process, after it died and before
//!    it is reaped (so its pid cannot name another process yet): from the output thread as soon
//!    as the pidfd becomes readable, or from `reap`, whichever comes first. A second caller
//!    blocks until the first call has returned, so `reap` never reaps during the hook.

use std::any::Any;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::panic::AssertUnwindSafe;
use std::process::ExitStatus;
use std::sync::{Arc, PoisonError};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{pidfd_send_signal, waitid, Signal, WaitId, WaitIdOptions};

use crate::output::{WatchedDeath, WorkerOutput};
use crate::shm::channel::Channel;
use crate::sync::unmodelled::{AtomicBool, Mutex, MutexGuard};
use crate::sync::Ordering;

/// How a worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, if the process exited normally.
    pub code: Option<i32>,
    /// The signal number, if a signal killed it.
    pub signal: Option<i32>,
}

/// The one wording of how a worker ended, used by every error that reports a death: "exited
/// with code 3", "was killed by signal 9", or "died" when the status says neither.
impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (_, Some(s)) => write!(f, "was killed by signal {s}"),
            (Some(c), None) => write!(f, "exited with code {c}"),
            (None, None) => f.write_str("died"),
        }
    }
}

/// A worker's death as errors report it: "worker process 42 was killed by signal 9". `exit` is
/// `None` when the process has not been reaped yet (it closed its channel just before it
/// exited); that reads as "died".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Death {
    /// The worker's pid.
    pub pid: u32,
    /// How it ended, when known.
    pub exit: Option<ExitInfo>,
}

impl fmt::Display for Death {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pid = self.pid;
        match self.exit {
            Some(exit) => write!(f, "worker process {pid} {exit}"),
            None => write!(f, "worker process {pid} died"),
        }
    }
}

impl From<ExitStatus> for ExitInfo {
    fn from(status: ExitStatus) -> Self {
        ExitInfo {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

enum Reap {
    /// Not reaped yet. The process is our child (forked by us, or by the template on our
    /// behalf with `CLONE_PARENT`), so it is reaped through its pidfd either way.
    Running,
    Exited(ExitInfo),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The text of a caught panic's payload (`panic!` with a message gives a `&str` or `String`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(not a string)"
    }
}

/// A spawned worker process (before or after its handshake).
pub(crate) struct WorkerProcess {
    pid: u32,
    pidfd: OwnedFd,
    channel: Channel,
    child: Mutex<Reap>,
    output: Arc<WorkerOutput>,
    killed: AtomicBool,
    death: Option<Arc<DeathWatch>>,
}

/// A callback for [`EngineConfig::on_death`](super::EngineConfig::on_death): gets the dead worker's pid. It runs on whatever
/// engine thread reaps the process, without engine locks held; it must not block for long.
#[derive(Clone)]
pub struct DeathHook(pub Arc<dyn Fn(u32) + Send + Sync>);

impl std::fmt::Debug for DeathHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeathHook")
    }
}

/// A worker's death hook and its own pidfd, shared by the process and the output thread,
/// which polls the pidfd so that a death is seen at once, even while nobody reaps the process
/// (invariant 3).
pub(crate) struct DeathWatch {
    pid: u32,
    /// A duplicate of the process's pidfd (`None` if it could not be duplicated: then only
    /// `reap` runs the hook, as a death is seen when the process is reaped).
    pidfd: Option<OwnedFd>,
    hook: DeathHook,
    fired: Mutex<bool>,
}

impl DeathWatch {
    /// A watch that runs `hook` for process `pid` once; `pidfd` (if any) is polled by the
    /// output thread.
    pub(crate) fn new(pid: u32, pidfd: Option<OwnedFd>, hook: DeathHook) -> Arc<DeathWatch> {
        Arc::new(DeathWatch {
            pid,
            pidfd,
            hook,
            fired: Mutex::new(false),
        })
    }

    /// The pidfd to poll: readable once the process has exited.
    pub(crate) fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// Whether the hook has run (or is running).
    pub(crate) fn fired(&self) -> bool {
        *lock(&self.fired)
    }

    /// Runs the hook unless it already ran. Call only once the process is dead and unreaped.
    /// Holds `fired` during the call, so a concurrent `fire` returns only after the hook did.
    ///
    /// A panic in the hook is caught and reported on stderr, never propagated: `fire` runs on
    /// the output thread (which must keep draining every worker's pipes, or workers block on
    /// full pipes) and inside `reap` on threads that serve Python calls.
    pub(crate) fn fire(&self) {
        let mut fired = lock(&self.fired);
        if !*fired {
            *fired = true;
            let hook = &self.hook.0;
            let pid = self.pid;
            // The hook's own state is its business; ours (`fired`) is already consistent.
            if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| hook(pid))) {
                let what = panic_message(&*panic);
                eprintln!("gilfree: the death hook for worker {pid} panicked: {what}");
            }
        }
    }
}

impl WatchedDeath for DeathWatch {
    fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        DeathWatch::pidfd(self)
    }

    fn fired(&self) -> bool {
        DeathWatch::fired(self)
    }

    fn fire(&self) {
        DeathWatch::fire(self)
    }
}

impl WorkerProcess {
    pub(crate) fn new(
        pid: u32,
        pidfd: OwnedFd,
        channel: Channel,
        output: Arc<WorkerOutput>,
        on_death: Option<DeathHook>,
    ) -> WorkerProcess {
        let death = on_death.map(|hook| DeathWatch::new(pid, pidfd.try_clone().ok(), hook));
        WorkerProcess {
            pid,
            pidfd,
            channel,
            child: Mutex::new(Reap::Running),
            output,
            killed: AtomicBool::new(false),
            death,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    pub(crate) fn channel(&self) -> &Channel {
        &self.channel
    }

    pub(crate) fn output(&self) -> &Arc<WorkerOutput> {
        &self.output
    }

    /// The death hook's watch, for the output thread to poll (invariant 3).
    pub(crate) fn death_watch(&self) -> Option<&Arc<DeathWatch>> {
        self.death.as_ref()
    }

    /// `kill` was called (by us, for any reason).
    pub(crate) fn was_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// The process has exited (its pidfd is readable). Never blocks.
    pub(crate) fn has_exited(&self) -> bool {
        if matches!(*lock(&self.child), Reap::Exited(_)) {
            return true;
        }
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            match poll(&mut fds, Some(&zero)) {
                Ok(n) => return n > 0,
                Err(rustix::io::Errno::INTR) => continue,
                // A pidfd that cannot be polled is as good as a dead process to us.
                Err(_) => return true,
            }
        }
    }

    /// Sends SIGKILL. Idempotent; harmless once the process is gone.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        // ESRCH (already exited or reaped) is the only expected error, and means "done".
        let _ = pidfd_send_signal(&self.pidfd, Signal::KILL);
    }

    /// Reaps the process if it has exited; `None` while it still runs. Never blocks for long:
    /// it only waits once the pidfd says the process is gone.
    pub(crate) fn try_reap(&self) -> Option<ExitInfo> {
        if let Reap::Exited(info) = *lock(&self.child) {
            return Some(info);
        }
        if self.has_exited() {
            Some(self.reap())
        } else {
            None
        }
    }

    /// Waits for the process to end and reaps it. Call only once it is dead or was killed.
    pub(crate) fn reap(&self) -> ExitInfo {
        let mut child = lock(&self.child);
        match &mut *child {
            Reap::Exited(info) => *info,
            Reap::Running => {
                if let Some(watch) = &self.death {
                    // Tell the hook while the process is a zombie: dead, but its pid still
                    // reserved, so the hook cannot mistake a new process for it. A no-op if
                    // the output thread already did (invariant 3).
                    self.wait_dead();
                    watch.fire();
                }
                let info = loop {
                    match waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED) {
                        Ok(Some(status)) => {
                            break ExitInfo {
                                code: status.exit_status(),
                                signal: status.terminating_signal(),
                            }
                        }
                        Err(rustix::io::Errno::INTR) => continue,
                        // ECHILD cannot happen for our own unreaped child unless someone else
                        // reaped it (a foreign waitpid(-1)); the status is then unknowable.
                        _ => {
                            break ExitInfo {
                                code: None,
                                signal: None,
                            }
                        }
                    }
                };
                *child = Reap::Exited(info);
                info
            }
        }
    }

    /// Blocks until the pidfd says the process has exited (call only once it is dead or was
    /// sent SIGKILL, as `reap` is).
    fn wait_dead(&self) {
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        loop {
            match poll(&mut fds, None) {
                Err(rustix::io::Errno::INTR) => continue,
                _ => return,
            }
        }
    }

    /// SIGKILL, then reap.
    pub(crate) fn kill_and_reap(&self) -> ExitInfo {
        self.kill();
        self.reap()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // Last line of defence: a process is never leaked, whoever dropped the last handle.
        if let Reap::Running = *lock(&self.child) {
            self.kill();
        }
        let _ = self.reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fire_survives_a_panicking_hook_and_runs_it_once() {
        let calls = Arc::new(Mutex::new(0u32));
        let counted = Arc::clone(&calls);
        let hook = DeathHook(Arc::new(move |_| {
            *lock(&counted) += 1;
            panic!("a buggy death hook");
        }));
        let watch = DeathWatch::new(1234, None, hook);
        watch.fire();
        watch.fire();
        assert!(watch.fired());
        assert_eq!(*lock(&calls), 1);
    }

    #[test]
    fn a_death_reads_the_same_however_much_is_known() {
        let exited = ExitInfo {
            code: Some(3),
            signal: None,
        };
        let killed = ExitInfo {
            code: None,
            signal: Some(9),
        };
        let unknown = ExitInfo {
            code: None,
            signal: None,
        };
        assert_eq!(exited.to_string(), "exited with code 3");
        assert_eq!(killed.to_string(), "was killed by signal 9");
        assert_eq!(unknown.to_string(), "died");
        let death = |exit| Death { pid: 42, exit }.to_string();
        assert_eq!(
            death(Some(killed)),
            "worker process 42 was killed by signal 9"
        );
        // Never "exited with code None": an unreaped or unknown end reads as a plain death.
        assert_eq!(death(None), "worker process 42 died");
        assert_eq!(death(Some(unknown)), "worker process 42 died");
    }
}
