//! The in-process twin of a shared bulk segment: the same [`BulkHeader`] and protocol, with the
//! data bytes on the heap.
//!
//! It exists so that the pin/recycle protocol can be model-checked by loom (which cannot see
//! into `mmap`ed memory). Under `--cfg loom` the data bytes are loom cells, so loom also
//! reports any read of a view that is not ordered before the owner's refill.

use std::io;

use super::{BulkFactory, BulkHeader, BulkStorage};
use crate::shm::heap::HeapBytes;

/// A bulk segment's header and data bytes on the heap.
pub struct LocalBulk {
    header: Box<BulkHeader>,
    data: HeapBytes,
}

impl LocalBulk {
    /// A fresh segment of `capacity` zero bytes.
    pub fn new(id: u64, capacity: usize) -> LocalBulk {
        LocalBulk {
            header: Box::new(BulkHeader::new(id, capacity)),
            data: HeapBytes::zeroed(capacity),
        }
    }
}

// SAFETY: `header` and `data` are owned and live as long as `self`; `capacity` is the length of
// `data`; the copies touch exactly the requested bytes, which the caller may write (holding
// `RECYCLING`) or read (holding a pin) by the bulk protocol, as `HeapBytes` requires.
unsafe impl BulkStorage for LocalBulk {
    fn header(&self) -> &BulkHeader {
        &self.header
    }

    fn capacity(&self) -> usize {
        self.data.len()
    }

    unsafe fn write(&self, off: usize, src: &[u8]) {
        // SAFETY: the caller may write these bytes (trait contract).
        unsafe { self.data.write(off, src) };
    }

    unsafe fn read(&self, off: usize, dst: &mut [u8]) {
        // SAFETY: the caller may read these bytes (trait contract); `dst` is a live buffer of
        // `dst.len()` bytes.
        unsafe { self.data.read(off, dst.as_mut_ptr(), dst.len()) };
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
