//! A cross-process wake-up: an `eventfd` that one side writes and the other sleeps on.
//!
//! A [`Notifier`] carries no data, only "look again": every wake-up may be spurious (a stale
//! notification, a slice of the signal-check interval ending), so callers always re-check the
//! state they wait for after [`Notifier::wait`] returns. The fd is `EFD_NONBLOCK`, so neither
//! side can ever block inside `read`/`write`: sleeping happens only in `poll(2)`, which also
//! watches the peer's pidfd.
//!
//! # Protocol of [`Notifier::wait`] (the sleep loop of [`crate::wait`])
//! 1. The next slice, [`Wait::next_slice`] (the deadline is not checked first: a wait with a
//!    passed deadline still polls once, so a notification already pending is seen).
//! 2. `poll` the eventfd and, if set, the peer pidfd (readable once that process has exited).
//! 3. Peer pidfd readable → [`WaitError::PeerGone`]. Eventfd readable → drain its counter and
//!    return `Ok` (the caller re-checks).
//! 4. `EINTR`, or the slice ended: [`Wait::after_slice`] (→ [`WaitError::Interrupted`] or
//!    [`WaitError::Timeout`]); otherwise go back to 1.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use crate::wait::{Ended, Wait};

/// Why [`Notifier::wait`] ended without a notification.
#[derive(Debug)]
pub enum WaitError {
    /// The wait's deadline passed.
    Timeout,
    /// The wait's signal check asked to stop.
    Interrupted,
    /// The peer process (the wait's pidfd) has exited.
    PeerGone,
    /// `poll` or `read` failed.
    Io(io::Error),
}

impl From<Ended> for WaitError {
    fn from(e: Ended) -> WaitError {
        match e {
            Ended::Timeout => WaitError::Timeout,
            Ended::Interrupted => WaitError::Interrupted,
        }
    }
}

/// An eventfd used as a cross-process wake-up (close-on-exec, non-blocking).
#[derive(Debug)]
pub struct Notifier {
    fd: OwnedFd,
}

impl Notifier {
    /// Creates a fresh eventfd with a zero counter.
    pub fn new() -> io::Result<Notifier> {
        Ok(Notifier {
            fd: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
        })
    }

    /// Wraps an eventfd received from another process. The fd must be an eventfd opened with
    /// `EFD_NONBLOCK` (as [`Notifier::new`] makes them); anything else makes waits misbehave.
    pub fn from_fd(fd: OwnedFd) -> Notifier {
        Notifier { fd }
    }

    /// The eventfd (to pass to another process, or to poll alongside others).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Wakes the waiter, if any; a notification with nobody waiting makes the next wait return
    /// at once.
    pub fn notify(&self) -> io::Result<()> {
        match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
            // EAGAIN: the counter is at its maximum, so the fd is readable already.
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Sleeps until notified, honouring `wait` (deadline, peer pidfd, signal checks) as the
    /// module doc describes. `Ok` may be spurious.
    pub fn wait(&self, wait: &mut Wait<'_>) -> Result<(), WaitError> {
        loop {
            let slice = wait.next_slice();
            let mut fds = [
                PollFd::new(&self.fd, PollFlags::IN),
                // A placeholder when there is no peer: a negative fd is ignored by poll(2), but
                // rustix only builds PollFds from real fds, so we poll our own fd twice instead.
                PollFd::new(&self.fd, PollFlags::IN),
            ];
            let nfds = match wait.peer {
                Some(peer) => {
                    fds[1] = PollFd::from_borrowed_fd(peer, PollFlags::IN);
                    2
                }
                None => 1,
            };
            // A slice too long for a timespec is as good as forever.
            let timeout = slice.and_then(|d| Timespec::try_from(d).ok());
            match poll(&mut fds[..nfds], timeout.as_ref()) {
                Ok(0) => {}
                Ok(_) => {
                    if nfds == 2 && !fds[1].revents().is_empty() {
                        return Err(WaitError::PeerGone);
                    }
                    if !fds[0].revents().is_empty() {
                        self.drain().map_err(WaitError::Io)?;
                        return Ok(());
                    }
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(WaitError::Io(e.into())),
            }
            wait.after_slice()?;
        }
    }

    /// Resets the counter, so the next wait sleeps until a new notification.
    fn drain(&self) -> io::Result<()> {
        let mut buf = [0u8; 8];
        match rustix::io::read(&self.fd, &mut buf) {
            // EAGAIN: another drain won the race; the notification was seen all the same.
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::ControlFlow;
    use std::time::Duration;

    #[test]
    fn notify_before_wait_is_not_lost() {
        let n = Notifier::new().unwrap();
        n.notify().unwrap();
        n.notify().unwrap();
        n.wait(&mut Wait::timeout(Some(Duration::from_secs(30))))
            .unwrap();
        // Both notifications were consumed by the one wait.
        let r = n.wait(&mut Wait::timeout(Some(Duration::ZERO)));
        assert!(matches!(r, Err(WaitError::Timeout)), "{r:?}");
    }

    #[test]
    fn wakes_across_threads() {
        let n = Notifier::new().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| n.notify().unwrap());
            n.wait(&mut Wait::forever()).unwrap();
        });
    }

    #[test]
    fn signal_check_interrupts() {
        let n = Notifier::new().unwrap();
        let mut calls = 0;
        let mut check = || {
            calls += 1;
            if calls == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        {
            let mut w = Wait::forever().with_signal_check(&mut check);
            w.signal_interval = Duration::from_millis(1);
            assert!(matches!(n.wait(&mut w), Err(WaitError::Interrupted)));
        }
        assert_eq!(calls, 3);
    }

    #[test]
    fn dead_peer_ends_wait() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
        let n = Notifier::new().unwrap();
        let mut w = Wait::timeout(Some(Duration::from_secs(30))).with_peer(pidfd.as_fd());
        assert!(matches!(n.wait(&mut w), Err(WaitError::PeerGone)));
        child.wait().unwrap();
    }
}
