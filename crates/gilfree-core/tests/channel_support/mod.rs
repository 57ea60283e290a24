//! Shared by the tests that run a channel between this test binary and a copy of itself
//! (`shm_channel.rs`, `shm_bulk.rs`): the child finds its role in `GILFREE_TEST_ROLE` and opens
//! its end from the fds named in `GILFREE_TEST_FDS`; the parent holds it in a guard that kills
//! and reaps it on drop, panic or not, so no process outlives a test.

use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};

use gilfree_core::shm::channel::Channel;
use rustix::process::{getppid, pidfd_open, Pid, PidfdFlags};

const ROLE: &str = "GILFREE_TEST_ROLE";
const FDS: &str = "GILFREE_TEST_FDS";

/// A child process that is killed and reaped when this guard drops, panic or not.
pub struct ChildGuard {
    pub child: Child,
    pub pidfd: OwnedFd,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns this test binary as the child running `test` in `role`, with the child end of `ch`
/// (inheritable only while the child is being started).
pub fn spawn(test: &str, role: &str, ch: &Channel) -> ChildGuard {
    ch.set_inheritable(true).unwrap();
    let spawned = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test,
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(ROLE, role)
        .env(FDS, ch.child_fds().encode())
        // The harness's own chatter would interleave with ours; a panic still shows on stderr.
        .stdout(Stdio::null())
        .spawn();
    ch.set_inheritable(false).unwrap();
    let child = spawned.unwrap();
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).unwrap();
    ChildGuard { child, pidfd }
}

/// In a child: `Some(channel, parent's pidfd)` when this process was started in `role`.
pub fn child_end(role: &str) -> Option<(Channel, OwnedFd)> {
    if std::env::var(ROLE).ok()? != role {
        return None;
    }
    let ch = Channel::from_env(FDS).unwrap();
    let parent = pidfd_open(getppid().unwrap(), PidfdFlags::empty()).unwrap();
    Some((ch, parent))
}
