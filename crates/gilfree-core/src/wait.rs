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
//!
//! # The one sleep loop
//! Every blocking loop of the engine, whatever it sleeps in (`poll`, a futex, a condvar, a
//! robust mutex's timed lock), takes its steps from here, so they cannot drift apart:
//! 1. [`Wait::slice`]: past the deadline → [`Ended::Timeout`] without sleeping; otherwise the
//!    longest the next sleep may last ([`Wait::next_slice`]: the time to the deadline, cut to
//!    [`Wait::signal_interval`] when a signal check is installed; `None` is "until woken").
//! 2. The caller sleeps at most that long in its own primitive.
//! 3. Woken: the caller re-checks its condition (every wake-up may be spurious). The slice
//!    ended (or `EINTR`): [`Wait::after_slice`] runs the signal check (→
//!    [`Ended::Interrupted`]), then the deadline (→ [`Ended::Timeout`]), with no lock held.
//!
//! A loop whose sleep is shared by many callers (a condvar every task's completion notifies)
//! may be woken so often that its slices never end: it asks [`Wait::signal_check_due`], by
//! time since its last check, instead of waiting for a slice to end.

use std::ops::ControlFlow;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

/// Why a wait ended before what it waited for happened (module doc, steps 1 and 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The deadline passed.
    Timeout,
    /// The signal check asked to stop.
    Interrupted,
}

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

    /// Step 1 of the sleep loop: [`Ended::Timeout`] once the deadline has passed, else the
    /// longest the next sleep may last ([`Self::next_slice`]).
    pub fn slice(&self) -> Result<Option<Duration>, Ended> {
        if self.remaining() == Some(Duration::ZERO) {
            return Err(Ended::Timeout);
        }
        Ok(self.next_slice())
    }

    /// How long the next sleep may last, the deadline not checked (`None`: until woken): the
    /// time left, cut to [`Self::signal_interval`] when a signal check is installed.
    pub fn next_slice(&self) -> Option<Duration> {
        let remaining = self.remaining();
        if self.on_signal.is_none() {
            return remaining;
        }
        Some(remaining.map_or(self.signal_interval, |r| r.min(self.signal_interval)))
    }

    /// Step 3 of the sleep loop, after a slice that ended without a wake-up (or `EINTR`): the
    /// signal check, then the deadline. Call it with no lock held (in Python the check takes
    /// the GIL).
    pub fn after_slice(&mut self) -> Result<(), Ended> {
        if self.interrupted() {
            return Err(Ended::Interrupted);
        }
        if self.remaining() == Some(Duration::ZERO) {
            return Err(Ended::Timeout);
        }
        Ok(())
    }

    /// For a loop woken so often that its slices may never end: whether the signal check is
    /// due, a [`Self::signal_interval`] or more after `last_check`.
    pub fn signal_check_due(&self, last_check: Instant) -> bool {
        self.on_signal.is_some() && last_check.elapsed() >= self.signal_interval
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
    fn a_passed_deadline_ends_before_any_sleep() {
        let w = Wait::timeout(Some(Duration::ZERO));
        assert_eq!(w.slice(), Err(Ended::Timeout));
        assert_eq!(Wait::forever().slice(), Ok(None));
    }

    #[test]
    fn a_signal_check_cuts_the_slice() {
        let mut check = || ControlFlow::Continue(());
        let mut w = Wait::forever().with_signal_check(&mut check);
        w.signal_interval = Duration::from_millis(7);
        assert_eq!(w.slice(), Ok(Some(Duration::from_millis(7))));
        let long = Wait::timeout(Some(Duration::from_secs(3600)));
        assert!(long.slice().unwrap().unwrap() > Duration::from_secs(3000));
    }

    #[test]
    fn after_a_slice_the_signal_check_comes_before_the_deadline() {
        let mut calls = 0;
        let mut check = || {
            calls += 1;
            ControlFlow::Break(())
        };
        {
            let mut w = Wait::timeout(Some(Duration::ZERO)).with_signal_check(&mut check);
            assert_eq!(w.after_slice(), Err(Ended::Interrupted));
        }
        assert_eq!(calls, 1);
        let mut w = Wait::timeout(Some(Duration::ZERO));
        assert_eq!(w.after_slice(), Err(Ended::Timeout));
        assert_eq!(Wait::forever().after_slice(), Ok(()));
    }

    #[test]
    fn a_signal_check_is_due_by_elapsed_time() {
        let mut check = || ControlFlow::Continue(());
        let mut w = Wait::forever().with_signal_check(&mut check);
        w.signal_interval = Duration::ZERO;
        assert!(w.signal_check_due(Instant::now()));
        w.signal_interval = Duration::from_secs(3600);
        assert!(!w.signal_check_due(Instant::now()));
        assert!(!Wait::forever().signal_check_due(Instant::now() - Duration::from_secs(1)));
    }

    #[test]
    fn a_finite_timeout_sets_a_deadline() {
        let w = Wait::timeout(Some(Duration::from_secs(5)));
        assert!(w.remaining().is_some_and(|r| r <= Duration::from_secs(5)));
        assert!(Wait::timeout(None).deadline.is_none());
    }
}
