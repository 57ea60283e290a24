//! The in-process twin of the shared-memory ring: the same [`RingHeader`] and protocol, with the
//! data bytes on the heap and a mutex/condvar [`LocalBell`] instead of an eventfd.
//!
//! It exists so that the ring protocol can be model-checked by loom (which cannot see into
//! `mmap`ed memory or eventfds) and run under miri where a nightly toolchain exists (no `mmap`,
//! no `fork`). Under `--cfg loom` the data bytes are loom cells, so loom also reports any copy
//! that is not ordered by the index hand-off.

use std::io;

use super::{Doorbell, RingHeader, Storage};
use crate::sync::{AtomicBool, Condvar, Mutex, Ordering, UnsafeCell};
use crate::sys::notify::WaitError;
use crate::Wait;

/// A ring's header and data area on the heap.
pub struct LocalStorage {
    header: Box<RingHeader>,
    data: Box<[UnsafeCell<u8>]>,
}

// SAFETY: the data cells are only accessed through `copy_in`/`copy_out`, whose callers own the
// bytes they touch by the ring protocol (one producer, one consumer, ownership passed by the
// Release/Acquire index hand-off); the header is all atomics.
unsafe impl Sync for LocalStorage {}
// SAFETY: as above; nothing in the storage is tied to a thread.
unsafe impl Send for LocalStorage {}

impl LocalStorage {
    /// A fresh, empty ring storage of `capacity` data bytes (`capacity > 0`).
    pub fn new(capacity: usize) -> LocalStorage {
        assert!(capacity > 0, "a ring needs at least one data byte");
        LocalStorage {
            header: Box::new(RingHeader::new(capacity)),
            data: (0..capacity).map(|_| UnsafeCell::new(0)).collect(),
        }
    }
}

// SAFETY: `header` and `data` are owned boxes that live as long as `self`; `capacity` is the
// length of `data`; the copies below touch exactly the requested cells.
unsafe impl Storage for LocalStorage {
    fn header(&self) -> &RingHeader {
        &self.header
    }

    fn capacity(&self) -> usize {
        self.data.len()
    }

    unsafe fn copy_in(&self, pos: usize, src: &[u8]) {
        let cells = &self.data[pos..pos + src.len()];
        #[cfg(not(loom))]
        // SAFETY: `UnsafeCell<u8>` has the layout of `u8`, so `cells` is `src.len()` contiguous
        // writable bytes (interior mutability); the caller owns them (trait contract).
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                UnsafeCell::raw_get(cells.as_ptr()),
                src.len(),
            );
        }
        #[cfg(loom)]
        for (cell, &b) in cells.iter().zip(src) {
            // SAFETY: the caller owns this byte (trait contract); loom checks that claim.
            cell.with_mut(|p| unsafe { *p = b });
        }
    }

    unsafe fn copy_out(&self, pos: usize, dst: *mut u8, len: usize) {
        let cells = &self.data[pos..pos + len];
        #[cfg(not(loom))]
        // SAFETY: as in `copy_in`, `cells` is `len` contiguous bytes the caller may read, and
        // `dst` is valid for `len` writes (trait contract); a local buffer cannot overlap them.
        unsafe {
            std::ptr::copy_nonoverlapping(UnsafeCell::raw_get(cells.as_ptr()), dst, len);
        }
        #[cfg(loom)]
        for (i, cell) in cells.iter().enumerate() {
            // SAFETY: the byte is published to the caller and `dst + i` is in bounds (trait
            // contract); loom checks the first claim.
            cell.with(|p| unsafe { dst.add(i).write(*p) });
        }
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
}

impl Doorbell for LocalBell {
    fn ring(&self) -> io::Result<()> {
        *self.rung.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cond.notify_one();
        Ok(())
    }

    fn sleep(&self, wait: &mut Wait<'_>) -> Result<(), WaitError> {
        let mut rung = self.rung.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.peer_gone.load(Ordering::Acquire) {
                return Err(WaitError::PeerGone);
            }
            if *rung {
                *rung = false;
                return Ok(());
            }
            // Loom has no clock: the model sleeps until rung, which is exactly the property it
            // checks (a lost wake-up shows up as a deadlock).
            #[cfg(loom)]
            {
                let _ = &wait;
                rung = self.cond.wait(rung).unwrap_or_else(|e| e.into_inner());
            }
            #[cfg(not(loom))]
            {
                rung = match crate::sys::notify::next_slice(wait) {
                    None => self.cond.wait(rung).unwrap_or_else(|e| e.into_inner()),
                    Some(slice) => {
                        let (g, _) = self
                            .cond
                            .wait_timeout(rung, slice)
                            .unwrap_or_else(|e| e.into_inner());
                        if !*g && !self.peer_gone.load(Ordering::Acquire) {
                            if wait.interrupted() {
                                return Err(WaitError::Interrupted);
                            }
                            if wait.remaining() == Some(std::time::Duration::ZERO) {
                                return Err(WaitError::Timeout);
                            }
                        }
                        g
                    }
                };
            }
        }
    }
}
