//! How a blocking call waits.
//!
//! Every blocking operation of the engine takes a [`Wait`]: an optional deadline, an optional
//! peer pidfd (the wait ends with `Disconnected` when that process dies, detected by the kernel,
//! never by a polling loop), and an optional signal check.
//!
//! # Protocol for signal checks
//! 1. A waiter first spins briefly (cheap hand-offs), then sleeps in `poll(2)` on its wake-up fd
//!    plus the peer pidfd.
//! 2. The sleep is cut into slices of at most [`Wait::signal_interval`]. After a slice ends, or
//!    when `poll` returns `EINTR` (a signal handler ran on this thread), `on_signal` is called.
//! 3. If it returns [`ControlFlow::Break`], the operation ends with `Interrupted`. For Python
//!    this is where the glue runs `PyErr_CheckSignals`, so Ctrl-C during `join()` raises
//!    `KeyboardInterrupt` promptly, even when the signal landed just before `poll` was entered.

use std::ops::ControlFlow;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

/// The longest a waiter sleeps before it runs its signal check again.
pub const DEFAULT_SIGNAL_INTERVAL: Duration = Duration::from_millis(50);

/// What a blocking call may wait for, and for how long.
pub struct Wait<'a> {
    /// Give up with `Timeout` at this instant; `None` waits forever.
    pub deadline: Option<Instant>,
    /// A pidfd of the peer process; its death ends the wait with `Disconnected`.
    pub peer: Option<BorrowedFd<'a>>,
    /// Called on `EINTR` and after every [`Self::signal_interval`] of sleep; `Break` ends the
    /// wait with `Interrupted`.
    pub on_signal: Option<&'a mut (dyn FnMut() -> ControlFlow<()> + Send)>,
    /// See [`DEFAULT_SIGNAL_INTERVAL`].
    pub signal_interval: Duration,
}

impl<'a> Wait<'a> {
    /// Waits forever, with no peer and no signal checks.
    pub fn forever() -> Self {
        Wait {
            deadline: None,
            peer: None,
            on_signal: None,
            signal_interval: DEFAULT_SIGNAL_INTERVAL,
        }
    }

    /// Waits until `timeout` has passed (`None`: forever). A timeout so long that its
    /// deadline cannot be represented as an [`Instant`] means no deadline.
    pub fn timeout(timeout: Option<Duration>) -> Self {
        Wait {
            deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
            ..Self::forever()
        }
    }

    /// Also ends when the process behind `pidfd` dies.
    pub fn with_peer(mut self, pidfd: BorrowedFd<'a>) -> Self {
        self.peer = Some(pidfd);
        self
    }

    /// Runs `check` on `EINTR` and every [`Self::signal_interval`] while asleep.
    pub fn with_signal_check(
        mut self,
        check: &'a mut (dyn FnMut() -> ControlFlow<()> + Send),
    ) -> Self {
        self.on_signal = Some(check);
        self
    }

    /// Time left before the deadline (`None`: no deadline). Zero once it has passed.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// A shorter-lived copy of this wait that also watches `peer` (the process layer adds the
    /// worker's pidfd this way).
    pub fn with_peer_reborrowed<'b>(&'b mut self, peer: BorrowedFd<'b>) -> Wait<'b> {
        Wait {
            deadline: self.deadline,
            peer: Some(peer),
            on_signal: match self.on_signal.as_mut() {
                Some(f) => Some(&mut **f),
                None => None,
            },
            signal_interval: self.signal_interval,
        }
    }

    /// Runs the signal check, if any. `true` means the caller must stop with `Interrupted`.
    pub fn interrupted(&mut self) -> bool {
        match self.on_signal.as_mut() {
            Some(check) => check().is_break(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unrepresentable_deadline_means_no_deadline() {
        assert!(Wait::timeout(Some(Duration::MAX)).deadline.is_none());
        assert!(Wait::timeout(Some(Duration::MAX)).remaining().is_none());
    }

    #[test]
    fn a_finite_timeout_sets_a_deadline() {
        let w = Wait::timeout(Some(Duration::from_secs(5)));
        assert!(w.remaining().is_some_and(|r| r <= Duration::from_secs(5)));
        assert!(Wait::timeout(None).deadline.is_none());
    }
}
