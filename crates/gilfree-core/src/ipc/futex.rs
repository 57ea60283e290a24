//! Sleeping on a 32-bit word until it changes: the one wait/wake seam of the futex-based
//! primitives ([`event`](super::event), [`semaphore`](super::semaphore),
//! [`barrier`](super::barrier), [`condition`](super::condition)).
//!
//! Two implementations of [`Futex`]: [`ShmFutex`], the kernel's shared futex (no
//! `FUTEX_PRIVATE_FLAG`, because the words live in memory that several processes map), and
//! [`LocalFutex`], a mutex and condvar for threads of one process, which loom can model and
//! miri can run.
//!
//! # Protocol of [`Futex::wait`]
//! 1. If `word != expected`, return `Ok` at once (the kernel checks this atomically with going
//!    to sleep, so a wake-up between the caller's last check and the sleep is never lost).
//! 2. Sleep for at most one slice: the time to the deadline, cut to
//!    [`Wait::signal_interval`] when a signal check is installed.
//! 3. Woken, or the word changed: `Ok`. The slice ended or `EINTR`: run the signal check
//!    (→ [`WaitError::Interrupted`]), then the deadline (→ [`WaitError::Timeout`]), else `Ok`.
//!
//! Every `Ok` may be spurious: callers re-check their condition and wait again.

use crate::ipc::notify::WaitError;
use crate::sync::AtomicU32;
use crate::Wait;

/// Sleep until a word changes, and wake its sleepers.
pub trait Futex: Sync {
    /// Sleeps one slice while `*word == expected` (see the module doc). `Ok` may be spurious.
    fn wait(&self, word: &AtomicU32, expected: u32, wait: &mut Wait<'_>) -> Result<(), WaitError>;
    /// Wakes up to `n` sleepers on `word`.
    fn wake(&self, word: &AtomicU32, n: u32);
}

/// The kernel's futex on a word in shared memory (`MAP_SHARED`), usable across processes.
#[cfg(not(loom))]
#[derive(Clone, Copy, Debug, Default)]
pub struct ShmFutex;

#[cfg(not(loom))]
impl Futex for ShmFutex {
    fn wait(&self, word: &AtomicU32, expected: u32, wait: &mut Wait<'_>) -> Result<(), WaitError> {
        use rustix::io::Errno;
        use rustix::thread::futex;
        let slice = wait.slice()?;
        // A slice too long for a timespec is as good as forever.
        let timeout = slice.and_then(|d| futex::Timespec::try_from(d).ok());
        match futex::wait(word, futex::Flags::empty(), expected, timeout.as_ref()) {
            // Woken, or the word had already changed.
            Ok(()) | Err(Errno::AGAIN) => Ok(()),
            Err(Errno::TIMEDOUT | Errno::INTR) => Ok(wait.after_slice()?),
            Err(e) => Err(WaitError::Io(e.into())),
        }
    }

    fn wake(&self, word: &AtomicU32, n: u32) {
        // The kernel reads the count as an `int`: `u32::MAX` would be -1 and wake just one
        // sleeper, so "all" is clamped to `INT_MAX` (futex(2): "INT_MAX to wake all").
        let n = n.min(i32::MAX as u32);
        // EFAULT/EINVAL cannot happen for a live, aligned word; nothing useful to do with them.
        let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), n);
    }
}

/// A futex for the threads of one process: a mutex and condvar beside the word.
///
/// Waiters check the word under the mutex and wakers take the mutex before notifying, so a
/// store that precedes `wake` can never fall between a waiter's check and its sleep.
#[derive(Default)]
pub struct LocalFutex {
    lock: crate::sync::Mutex<()>,
    cond: crate::sync::Condvar,
}

impl LocalFutex {
    /// A futex with no sleepers.
    pub fn new() -> LocalFutex {
        LocalFutex::default()
    }
}

impl Futex for LocalFutex {
    fn wait(&self, word: &AtomicU32, expected: u32, wait: &mut Wait<'_>) -> Result<(), WaitError> {
        use crate::sync::Ordering::SeqCst;
        let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if word.load(SeqCst) != expected {
            return Ok(());
        }
        // Loom has no clock: the model sleeps until woken, which is exactly the property it
        // checks (a lost wake-up shows up as a deadlock).
        #[cfg(loom)]
        {
            let _ = &wait;
            drop(self.cond.wait(guard).unwrap_or_else(|e| e.into_inner()));
            Ok(())
        }
        #[cfg(not(loom))]
        {
            match wait.slice()? {
                None => {
                    drop(self.cond.wait(guard).unwrap_or_else(|e| e.into_inner()));
                    Ok(())
                }
                Some(slice) => {
                    let (guard, result) = self
                        .cond
                        .wait_timeout(guard, slice)
                        .unwrap_or_else(|e| e.into_inner());
                    drop(guard);
                    if result.timed_out() {
                        Ok(wait.after_slice()?)
                    } else {
                        Ok(())
                    }
                }
            }
        }
    }

    fn wake(&self, _word: &AtomicU32, _n: u32) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // One condvar serves every word of the primitive, so wake all: the extra ones re-check.
        self.cond.notify_all();
    }
}
