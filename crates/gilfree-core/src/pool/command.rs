//! What every process the pool starts is given, shared by the parent's side
//! ([`spawn`](super::spawn), [`template`](super::template)) and the started process's side
//! ([`worker_main`](super::worker_main), the template's server): the command and its base
//! [`Command`], the environment variables that carry the handshake's inputs, the ready message
//! and its deadline, and the orphan exit code.
//!
//! A leaf of `pool`: it uses nothing else in `pool`, so the modules on both sides of the spawn
//! handshake depend on it and never on each other's internals.

use std::ffi::OsString;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::getpid;

/// Environment variable that carries the channel's inherited fd numbers to the worker
/// ([`ChannelFds::encode`](crate::shm::channel::ChannelFds::encode)).
pub const CHANNEL_FDS_ENV: &str = "GILFREE_CHANNEL_FDS";

/// Environment variable that carries the parent's pid, so the worker can tell whether its
/// parent died before it armed its parent-death signal.
pub const PARENT_PID_ENV: &str = "GILFREE_PARENT_PID";

/// The first message a worker sends on its channel, once it is ready for work.
pub const READY_MESSAGE: &[u8] = b"gilfree-ready-v1";

/// How long a new worker may take to send [`READY_MESSAGE`]. Generous: a cold Python start
/// with heavy imports on a loaded machine can take seconds.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// What to run as a worker process.
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    /// The executable (for Python: `sys.executable`).
    pub program: PathBuf,
    /// Its arguments (for Python: `["-m", "gilfree._worker"]`).
    pub args: Vec<OsString>,
    /// Extra environment variables, on top of the parent's environment.
    pub env: Vec<(OsString, OsString)>,
    /// The working directory; `None` keeps the parent's.
    pub cwd: Option<PathBuf>,
    /// The capacity in bytes of each of the channel's two rings.
    pub ring_capacity: usize,
    /// Owners of extra fds the worker inherits (for instance the shared-primitive
    /// [`Arena`](crate::ipc::arena::Arena)), at the same numbers. They are made inheritable
    /// only around the fork, like the channel's; the caller tells the worker their numbers
    /// (in `env`). Holding the owners keeps the fds open for as long as workers may be spawned.
    pub inherit_fds: Vec<Arc<dyn Inheritable>>,
}

/// Something that owns fds a worker must inherit, at their numbers in this process.
pub trait Inheritable: Send + Sync + fmt::Debug {
    /// The fds, borrowed from `self`.
    fn fds_to_inherit(&self) -> Vec<BorrowedFd<'_>>;
}

impl Inheritable for OwnedFd {
    fn fds_to_inherit(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.as_fd()]
    }
}

/// The arena's memfd, then its chunk heap's (the order of
/// [`Arena::env_value`](crate::ipc::arena::Arena::env_value)).
#[cfg(not(loom))]
impl Inheritable for crate::ipc::arena::Arena {
    fn fds_to_inherit(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = vec![self.fd()];
        fds.extend(self.heap().map(|h| h.fd()));
        fds
    }
}

/// What every process we start (a worker, or the template) begins with: `command`'s program
/// with `args`, its environment and working directory, our pid for its orphan check
/// ([`PARENT_PID_ENV`]), and stdin from `/dev/null`. The caller adds its fds and output.
pub(crate) fn base_command(command: &WorkerCommand, args: &[OsString]) -> Command {
    let mut cmd = Command::new(&command.program);
    cmd.args(args)
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .env(PARENT_PID_ENV, getpid().as_raw_nonzero().to_string())
        .stdin(Stdio::null());
    if let Some(cwd) = &command.cwd {
        cmd.current_dir(cwd);
    }
    crate::sys::thread::reset_in_child(&mut cmd);
    cmd
}

/// Exit code of a worker (or the template) that found its parent already gone at start-up.
pub const ORPHAN_EXIT_CODE: i32 = 113;
