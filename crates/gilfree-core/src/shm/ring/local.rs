//! The in-process twin of the shared-memory ring: the same [`RingHeader`] and protocol, with the
//! data bytes on the heap and a mutex/condvar [`LocalBell`] instead of an eventfd.
//!
//! It exists so that the ring protocol can be model-checked by loom (which cannot see into
//! `mmap`ed memory or eventfds) and run under miri where a nightly toolchain exists (no `mmap`,
//! no `fork`). Under `--cfg loom` the data bytes are loom cells, so loom also reports any copy
//! that is not ordered by the index hand-off.

use std::io;

use super::{Doorbell, RingHeader, Storage};
use crate::shm::heap::HeapBytes;
use crate::sync::{AtomicBool, Condvar, Mutex, Ordering};
use crate::sys::notify::WaitError;
use crate::Wait;

/// A ring's header and data area on the heap.
pub struct LocalStorage {
    header: Box<RingHeader>,
    data: HeapBytes,
}

impl LocalStorage {
    /// A fresh, empty ring storage of `capacity` data bytes (`capacity > 0`).
    pub fn new(capacity: usize) -> LocalStorage {
        assert!(capacity > 0, "a ring needs at least one data byte");
        LocalStorage {
            header: Box::new(RingHeader::new(capacity)),
            data: HeapBytes::zeroed(capacity),
        }
    }
}

// SAFETY: `header` and `data` are owned and live as long as `self`; `capacity` is the length of
// `data`; the copies touch exactly the requested bytes, which the caller owns by the ring
// protocol (one producer, one consumer, ownership passed by the Release/Acquire index
// hand-off), as `HeapBytes` requires.
unsafe impl Storage for LocalStorage {
    fn header(&self) -> &RingHeader {
        &self.header
    }

    fn capacity(&self) -> usize {
        self.data.len()
    }

    unsafe fn copy_in(&self, pos: usize, src: &[u8]) {
        // SAFETY: the caller owns these bytes (trait contract), so it may write them.
        unsafe { self.data.write(pos, src) };
    }

    unsafe fn copy_out(&self, pos: usize, dst: *mut u8, len: usize) {
        // SAFETY: the bytes are published to the caller and `dst` is valid for `len` writes
        // (trait contract).
        unsafe { self.data.read(pos, dst, len) };
    }
}

/// A doorbell for threads of one process: a "rung" bit under a mutex, and a condvar.
///
/// Like an eventfd, a ring with nobody asleep is remembered until the next
/// [`sleep`](Doorbell::sleep). [`LocalBell::hang_up`] simulates the death of the peer: every
/// sleep after it ends with [`WaitError::PeerGone`], like a readable pidfd.
#[derive(Default)]
pub struct LocalBell {
    rung: Mutex<bool>,
    cond: Condvar,
    peer_gone: AtomicBool,
}

impl LocalBell {
    /// A bell that has not been rung.
    pub fn new() -> LocalBell {
        LocalBell::default()
    }

    /// Marks the peer as dead and wakes the sleeper.
    pub fn hang_up(&self) {
        self.peer_gone.store(true, Ordering::Release);
        let _guard = self.rung.lock().unwrap_or_else(|e| e.into_inner());
        self.cond.notify_all();
    }

    /// What a sleeper woken (or about to sleep) with the lock held returns now, if anything:
    /// the peer's death first, then a ring (consumed).
    fn answer(&self, rung: &mut bool) -> Option<Result<(), WaitError>> {
        if self.peer_gone.load(Ordering::Acquire) {
            return Some(Err(WaitError::PeerGone));
        }
        if *rung {
            *rung = false;
            return Some(Ok(()));
        }
        None
    }
}

impl Doorbell for LocalBell {
    fn ring(&self) -> io::Result<()> {
        *self.rung.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cond.notify_one();
        Ok(())
    }

    /// The sleep loop of [`crate::wait`], in the eventfd doorbell's order
    /// ([`Notifier::wait`](crate::sys::notify::Notifier::wait)): [`Wait::next_slice`] (the
    /// deadline is not checked first, so a ring already pending is seen), a condvar wait of at
    /// most that long, and after a slice that ended unrung, [`Wait::after_slice`] (the signal
    /// check, then the deadline) with the lock released.
    #[cfg(not(loom))]
    fn sleep(&self, wait: &mut Wait<'_>) -> Result<(), WaitError> {
        loop {
            let mut rung = self.rung.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(answer) = self.answer(&mut rung) {
                    return answer;
                }
                match wait.next_slice() {
                    None => rung = self.cond.wait(rung).unwrap_or_else(|e| e.into_inner()),
                    Some(slice) => {
                        let (g, timed) = self
                            .cond
                            .wait_timeout(rung, slice)
                            .unwrap_or_else(|e| e.into_inner());
                        rung = g;
                        if timed.timed_out() && !*rung && !self.peer_gone.load(Ordering::Acquire) {
                            break; // the slice ended unrung
                        }
                    }
                }
            }
            drop(rung);
            wait.after_slice()?;
        }
    }

    /// Loom has no clock: the model sleeps until rung, which is exactly the property it checks
    /// (a lost wake-up shows up as a deadlock).
    #[cfg(loom)]
    fn sleep(&self, _wait: &mut Wait<'_>) -> Result<(), WaitError> {
        let mut rung = self.rung.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(answer) = self.answer(&mut rung) {
                return answer;
            }
            rung = self.cond.wait(rung).unwrap_or_else(|e| e.into_inner());
        }
    }
}
