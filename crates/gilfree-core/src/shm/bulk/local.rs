//! The in-process twin of a shared bulk segment: the same [`BulkHeader`] and protocol, with the
//! data bytes on the heap.
//!
//! It exists so that the pin/recycle protocol can be model-checked by loom (which cannot see
//! into `mmap`ed memory). Under `--cfg loom` the data bytes are loom cells, so loom also
//! reports any read of a view that is not ordered before the owner's refill.

use std::io;

use super::{BulkFactory, BulkHeader, BulkStorage};
use crate::sync::UnsafeCell;

/// A bulk segment's header and data bytes on the heap.
pub struct LocalBulk {
    header: Box<BulkHeader>,
    data: Box<[UnsafeCell<u8>]>,
}

// SAFETY: the data cells are only accessed through `write`/`read`, whose callers hold
// `RECYCLING` or a pin by the bulk protocol; the header is all atomics.
unsafe impl Sync for LocalBulk {}
// SAFETY: as above; nothing in the storage is tied to a thread.
unsafe impl Send for LocalBulk {}

impl LocalBulk {
    /// A fresh segment of `capacity` zero bytes.
    pub fn new(id: u64, capacity: usize) -> LocalBulk {
        LocalBulk {
            header: Box::new(BulkHeader::new(id, capacity)),
            data: (0..capacity).map(|_| UnsafeCell::new(0)).collect(),
        }
    }
}

// SAFETY: `header` and `data` are owned boxes that live as long as `self`; `capacity` is the
// length of `data`.
unsafe impl BulkStorage for LocalBulk {
    fn header(&self) -> &BulkHeader {
        &self.header
    }

    fn capacity(&self) -> usize {
        self.data.len()
    }

    unsafe fn write(&self, off: usize, src: &[u8]) {
        let cells = &self.data[off..off + src.len()];
        #[cfg(not(loom))]
        // SAFETY: `UnsafeCell<u8>` has the layout of `u8`, so `cells` is `src.len()` contiguous
        // writable bytes (interior mutability); the caller may write them (trait contract).
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                UnsafeCell::raw_get(cells.as_ptr()),
                src.len(),
            );
        }
        #[cfg(loom)]
        for (cell, &b) in cells.iter().zip(src) {
            // SAFETY: the caller may write this byte (trait contract); loom checks that claim.
            cell.with_mut(|p| unsafe { *p = b });
        }
    }

    unsafe fn read(&self, off: usize, dst: &mut [u8]) {
        let cells = &self.data[off..off + dst.len()];
        #[cfg(not(loom))]
        // SAFETY: as in `write`, `cells` is `dst.len()` contiguous bytes the caller may read.
        unsafe {
            std::ptr::copy_nonoverlapping(
                UnsafeCell::raw_get(cells.as_ptr()),
                dst.as_mut_ptr(),
                dst.len(),
            );
        }
        #[cfg(loom)]
        for (cell, d) in cells.iter().zip(dst.iter_mut()) {
            // SAFETY: the caller holds a pin (trait contract); loom checks that claim.
            cell.with(|p| *d = unsafe { *p });
        }
    }
}

/// Makes [`LocalBulk`] segments.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalFactory;

impl BulkFactory for LocalFactory {
    type Storage = LocalBulk;

    fn create(&self, id: u64, capacity: usize) -> io::Result<LocalBulk> {
        Ok(LocalBulk::new(id, capacity))
    }
}
