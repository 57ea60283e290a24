//! Heap bytes standing in for a mapped data area, shared by the in-process twins
//! ([`ring::local`](super::ring::local), [`bulk::local`](super::bulk::local)).
//!
//! A twin keeps its shared-memory type's header (all atomics) and protocol, and its data bytes
//! here: ordinary heap cells that loom can see (under `--cfg loom` each byte is a loom cell, so
//! loom reports any copy the twin's protocol does not order), with no `mmap` and no `fork`, so
//! the twins also stay miri-ready.
//!
//! # Safety
//! The bytes carry no synchronisation of their own. [`HeapBytes::write`] and
//! [`HeapBytes::read`] are `unsafe`: their caller must hold, by its protocol (the ring's index
//! hand-off, the bulk segment's `RECYCLING` state or a pin), the right to write (no other
//! access meanwhile) or to read (no write meanwhile) the bytes it names.

use crate::sync::UnsafeCell;

/// A fixed number of zero-initialised bytes on the heap, written and read through raw copies.
pub struct HeapBytes {
    cells: Box<[UnsafeCell<u8>]>,
}

// SAFETY: the cells are only accessed through `write`/`read`, whose callers hold the right to
// the bytes they touch by their protocol (module doc, # Safety), so sharing `&HeapBytes`
// between threads introduces no data race by itself.
unsafe impl Sync for HeapBytes {}
// SAFETY: as above; nothing in the bytes is tied to a thread.
unsafe impl Send for HeapBytes {}

impl HeapBytes {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> HeapBytes {
        HeapBytes {
            cells: (0..len).map(|_| UnsafeCell::new(0)).collect(),
        }
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether there are no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Copies `src` to the bytes at `off..off + src.len()` (panics if out of range).
    ///
    /// # Safety
    /// The caller may write those bytes: nobody else reads or writes them until its protocol
    /// hands them on (module doc).
    pub unsafe fn write(&self, off: usize, src: &[u8]) {
        let cells = &self.cells[off..off + src.len()];
        #[cfg(not(loom))]
        // SAFETY: `UnsafeCell<u8>` has the layout of `u8`, so `cells` is `src.len()` contiguous
        // writable bytes (interior mutability); the caller may write them (this fn's contract).
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                UnsafeCell::raw_get(cells.as_ptr()),
                src.len(),
            );
        }
        #[cfg(loom)]
        for (cell, &b) in cells.iter().zip(src) {
            // SAFETY: the caller may write this byte (this fn's contract); loom checks that claim.
            cell.with_mut(|p| unsafe { *p = b });
        }
    }

    /// Copies the bytes at `off..off + len` to `dst` (panics if out of range).
    ///
    /// # Safety
    /// The caller may read those bytes (nobody writes them meanwhile, by its protocol), and
    /// `dst` is valid for `len` writes.
    pub unsafe fn read(&self, off: usize, dst: *mut u8, len: usize) {
        let cells = &self.cells[off..off + len];
        #[cfg(not(loom))]
        // SAFETY: as in `write`, `cells` is `len` contiguous bytes the caller may read, and
        // `dst` is valid for `len` writes (this fn's contract); a buffer of the caller's cannot
        // overlap our heap cells, which nobody outside this type can address.
        unsafe {
            std::ptr::copy_nonoverlapping(UnsafeCell::raw_get(cells.as_ptr()), dst, len);
        }
        #[cfg(loom)]
        for (i, cell) in cells.iter().enumerate() {
            // SAFETY: the caller may read this byte and `dst + i` is in bounds (this fn's
            // contract); loom checks the first claim.
            cell.with(|p| unsafe { dst.add(i).write(*p) });
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn bytes_written_read_back_and_start_zeroed() {
        let bytes = HeapBytes::zeroed(8);
        assert_eq!(bytes.len(), 8);
        let mut out = [0xffu8; 8];
        // SAFETY: one thread owns every byte of `bytes`, and `out` holds 8 bytes.
        unsafe { bytes.read(0, out.as_mut_ptr(), 8) };
        assert_eq!(out, [0; 8]);
        // SAFETY: as above.
        unsafe { bytes.write(3, b"abc") };
        let mut mid = [0u8; 4];
        // SAFETY: as above; `mid` holds 4 bytes.
        unsafe { bytes.read(2, mid.as_mut_ptr(), 4) };
        assert_eq!(&mid, b"\0abc");
    }

    #[test]
    #[should_panic]
    fn a_copy_out_of_range_panics_before_touching_memory() {
        let bytes = HeapBytes::zeroed(4);
        // SAFETY: one thread owns every byte; the range check panics first.
        unsafe { bytes.write(2, b"abc") };
    }
}
