//! The worker's end of the link, running inside the worker process.
//!
//! # Protocol (worker side of the spawn handshake; the parent side is in [`super::spawn`],
//! the names both sides share in [`super::command`])
//! 1. Arm the parent-death signal: SIGKILL when the parent's spawning thread ends.
//! 2. Compare `getppid()` with [`PARENT_PID_ENV`]. If they differ, the parent died before step 1
//!    could matter (we were re-parented), so exit at once.
//! 3. `pidfd_open` the parent and check `getppid()` again (the parent could have died between
//!    2 and 3 and its pid been reused); the pidfd is the peer of every wait, so a blocked
//!    `recv`/`send` ends with `Disconnected` when the parent dies.
//! 4. Open the inherited [`Channel`] from [`CHANNEL_FDS_ENV`] ([`Channel::from_env`]), and remove both variables from
//!    the environment so the worker's own subprocesses don't inherit them.
//! 5. Send [`READY_MESSAGE`].

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::process::Signal;
use rustix::process::{getppid, pidfd_open, set_parent_process_death_signal, Pid, PidfdFlags};

use super::command::{CHANNEL_FDS_ENV, ORPHAN_EXIT_CODE, PARENT_PID_ENV, READY_MESSAGE};
use crate::error::{RecvError, SendError, SpawnError};
use crate::shm::channel::Channel;
use crate::wait::Wait;

/// The worker process's end of its channel to the parent.
pub struct Endpoint {
    parent: OwnedFd,
    channel: Channel,
}

fn bad_env(what: &str) -> SpawnError {
    SpawnError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("not started as a gilfree worker: {what}"),
    ))
}

impl Endpoint {
    /// Runs steps 1–5 above. Exits the process with [`ORPHAN_EXIT_CODE`] if the parent is
    /// already gone. Call it once, at start-up, before the process starts any thread: it
    /// removes the two variables from the environment, which is sound only while no other
    /// thread can be reading it.
    ///
    /// Python's `os.environ` is a snapshot taken at interpreter start: the Python side should
    /// also pop the two variables from it.
    pub fn from_env() -> Result<Endpoint, SpawnError> {
        set_parent_process_death_signal(Some(Signal::KILL))?;
        let parent = std::env::var(PARENT_PID_ENV)
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
            .and_then(Pid::from_raw)
            .ok_or_else(|| bad_env(PARENT_PID_ENV))?;
        if getppid() != Some(parent) {
            std::process::exit(ORPHAN_EXIT_CODE);
        }
        let parent_fd = match pidfd_open(parent, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(_) => std::process::exit(ORPHAN_EXIT_CODE),
        };
        if getppid() != Some(parent) {
            std::process::exit(ORPHAN_EXIT_CODE);
        }
        let channel = Channel::from_env(CHANNEL_FDS_ENV)?;
        // Children the worker starts later must not mistake themselves for gilfree workers.
        #[allow(unsafe_code)]
        // SAFETY: `remove_var` races with any other thread reading or writing the environment.
        // `from_env` is step 1 of a worker's life and its contract ("call once, at start-up,
        // before starting threads"): `gilfree._worker` calls it before it imports or runs any
        // user code and before it starts a thread, and a Rust worker calls it first thing in
        // `main`, so no other thread of this process exists yet to touch the environment.
        unsafe {
            std::env::remove_var(CHANNEL_FDS_ENV);
            std::env::remove_var(PARENT_PID_ENV);
        }
        let endpoint = Endpoint {
            parent: parent_fd,
            channel,
        };
        let mut wait = Wait::timeout(Some(Duration::from_secs(60)));
        endpoint
            .send(READY_MESSAGE, &mut wait)
            .map_err(|e| match e {
                SendError::Io(e) => SpawnError::Io(e),
                SendError::Interrupted => SpawnError::Interrupted,
                SendError::Timeout | SendError::Disconnected => SpawnError::ShutDown,
            })?;
        Ok(endpoint)
    }

    /// Receives the parent's next message. The parent's death ends it with `Disconnected`.
    pub fn recv(&self, wait: &mut Wait<'_>) -> Result<Vec<u8>, RecvError> {
        let mut wait = wait.with_peer_reborrowed(self.parent.as_fd());
        self.channel.recv(&mut wait)
    }

    /// Sends a message to the parent. The parent's death ends it with `Disconnected`.
    pub fn send(&self, msg: &[u8], wait: &mut Wait<'_>) -> Result<(), SendError> {
        let mut wait = wait.with_peer_reborrowed(self.parent.as_fd());
        self.channel.send(msg, &mut wait)
    }

    /// Sends a message without waking the parent if it sleeps (see
    /// [`Channel::send_deferred`]); a run of frames then costs the parent one wake-up, at the
    /// next [`flush`](Endpoint::flush) or plain `send`.
    pub fn send_deferred(&self, msg: &[u8], wait: &mut Wait<'_>) -> Result<(), SendError> {
        let mut wait = wait.with_peer_reborrowed(self.parent.as_fd());
        self.channel.send_deferred(msg, &mut wait)
    }

    /// [`send_deferred`](Endpoint::send_deferred) if the message fits in the ring right now,
    /// never blocking; `Ok(false)` (nothing sent) otherwise.
    pub fn try_send_deferred(&self, msg: &[u8]) -> Result<bool, SendError> {
        self.channel.try_send_deferred(msg)
    }

    /// Wakes the parent if deferred sends left it asleep. Cheap when none did.
    pub fn flush(&self) -> Result<(), SendError> {
        Ok(self.channel.flush()?)
    }
}
