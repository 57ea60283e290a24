//! The chunk heap: one large, lazily touched memfd of fixed-size chunks that process-shared
//! containers (today [`super::queue`]) chain together to hold variable-size data, and that
//! the [`Arena`](super::arena::Arena) links into a slot's process table once its inline
//! entries are taken (overflow chunks).
//!
//! It travels with the [`Arena`](super::arena::Arena): created beside it in the parent,
//! inherited by every worker (its fd number follows the arena's in
//! [`ARENA_FD_ENV`](super::arena::ARENA_FD_ENV)). Unlike the arena's slots it is *not* touched
//! up front: its [`HEAP_SIZE`] is address space, and a page costs memory only once a chunk on
//! it has been used (memfd pages are `VM_NORESERVE`). It is mapped without `MAP_POPULATE` for
//! the same reason.
//!
//! # Layout
//! [`HEAP_SIZE`] bytes, [`CHUNK_SIZE`]-byte chunks. Chunks 0 and 1 hold the metadata; chunk
//! indices `2..CHUNK_COUNT` hold data (index 0 means "no chunk").
//!
//! | offset | field         | type                        | meaning                            |
//! |--------|---------------|-----------------------------|------------------------------------|
//! | 0      | `magic`       | `u64`                       | `"GFHP"` and the layout version    |
//! | 8      | `free_head`   | `u64`                       | free list head (tag, index)        |
//! | 16     | `bump`        | `u32`                       | first chunk never handed out       |
//! | 4096   | `next`        | `[u32; CHUNK_COUNT]`        | per chunk: the next one in a chain |
//!
//! # Who writes what
//! - `free_head`, `bump`: any process, lock-free (below).
//! - `next[i]` and chunk `i`'s bytes: whoever owns chunk `i` — the process that allocated it,
//!   until it links it into a container, then whoever holds that container's lock. An
//!   overflow chunk of a slot's process table is written under that slot's `meta` mutex
//!   (its own link word is its first `u32`; the heap's `next[i]` is unused for it), and each
//!   entry's `held` word by the entry's process, atomically.
//!
//! # Protocol
//! 1. Alloc: pop the free list ([`super::free_list`], the arena's Treiber stack with an ABA
//!    tag, checked by the loom model `loom_arena_free_list`); if it is empty, `bump += 1`
//!    (a `fetch_add`; values past the end mean the heap is full). `next[i] = 0`.
//! 2. Free: push the chunk on the free list.
//!
//! # When a process dies
//! Chunks are linked into their container (under its robust mutex) as soon as they are
//! allocated, so the container's recovery frees them (see [`super::queue`]). A process killed
//! between a pop and the link leaks one chunk of address space; nothing is corrupted. The
//! same holds for a table overflow chunk: it is zeroed while private and linked under the
//! slot's `meta`; the slot's retirement gives it back.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{fstat, ftruncate, memfd_create, MemfdFlags};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

use crate::sync::{AtomicU32, AtomicU64, Ordering};

use super::free_list;

/// Size of the heap's address space in bytes.
pub const HEAP_SIZE: usize = 1 << 30;
/// Size of one chunk in bytes.
pub const CHUNK_SIZE: usize = 64 << 10;
/// Number of chunks, the two metadata chunks included.
pub const CHUNK_COUNT: u32 = (HEAP_SIZE / CHUNK_SIZE) as u32;
/// The first data chunk.
const FIRST_CHUNK: u32 = 2;
const NEXT_OFFSET: usize = 4096;

const MAGIC: u64 = (u32::from_be_bytes(*b"GFHP") as u64) << 32 | 1;

#[repr(C)]
struct HeapHeader {
    magic: AtomicU64,
    free_head: AtomicU64,
    bump: AtomicU32,
}

const _: () = {
    assert!(NEXT_OFFSET + CHUNK_COUNT as usize * 4 <= FIRST_CHUNK as usize * CHUNK_SIZE);
    assert!(std::mem::size_of::<HeapHeader>() <= NEXT_OFFSET);
};

/// A mapping of the chunk heap (see the module doc).
#[derive(Debug)]
pub struct Heap {
    ptr: NonNull<u8>,
    fd: OwnedFd,
}

// SAFETY: a `Heap` is a pointer to a mapping it owns plus an fd; the mapping is not tied to a
// thread, and all shared words are atomics (chunk bytes are guarded by their owner's lock).
unsafe impl Send for Heap {}
// SAFETY: as above.
unsafe impl Sync for Heap {}

impl Heap {
    /// Creates a fresh, empty heap (in the parent).
    pub fn create() -> io::Result<Heap> {
        let fd = memfd_create(
            "gilfree-heap",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        ftruncate(&fd, HEAP_SIZE as u64)?;
        crate::shm::segment::seal_size(&fd)?;
        let heap = Self::map(fd)?;
        let h = heap.header();
        h.bump.store(FIRST_CHUNK, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(heap)
    }

    /// Maps a heap another process created, from its memfd.
    /// Refuses a memfd whose size is not sealed: a peer could shrink it under our mapping.
    pub fn open(fd: OwnedFd) -> io::Result<Heap> {
        if !crate::shm::segment::size_sealed(&fd) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the heap is not sealed against resizing",
            ));
        }
        if fstat(&fd)?.st_size != HEAP_SIZE as i64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a gilfree heap (size)",
            ));
        }
        let heap = Self::map(fd)?;
        if heap.header().magic.load(Ordering::Acquire) != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a gilfree heap (or another version)",
            ));
        }
        Ok(heap)
    }

    fn map(fd: OwnedFd) -> io::Result<Heap> {
        // SAFETY: a null hint gives fresh address space, so the mapping overlaps no Rust
        // object; HEAP_SIZE is the file's size, so every mapped byte is backed. No
        // MAP_POPULATE: the heap is touched lazily (module doc).
        let addr = unsafe {
            mmap(
                std::ptr::null_mut(),
                HEAP_SIZE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let ptr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Heap { ptr, fd })
    }

    /// The heap's memfd (to hand to a worker process).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn header(&self) -> &HeapHeader {
        // SAFETY: offset 0 of the live mapping holds the header, made of atomics (any bytes
        // are a valid value), page aligned.
        unsafe { &*self.ptr.as_ptr().cast::<HeapHeader>() }
    }

    /// Chunk `i`'s link word (`next[i]`).
    pub fn next(&self, i: u32) -> &AtomicU32 {
        assert!(i < CHUNK_COUNT, "chunk index out of range");
        // SAFETY: `NEXT_OFFSET + i * 4` is inside the metadata chunks (const assertion above),
        // 4-aligned, and the word is only ever accessed atomically.
        unsafe {
            &*self
                .ptr
                .as_ptr()
                .add(NEXT_OFFSET + i as usize * 4)
                .cast::<AtomicU32>()
        }
    }

    /// Allocates a chunk (protocol step 1); `None` when the heap is full.
    pub fn alloc(&self) -> Option<u32> {
        let h = self.header();
        let i = match free_list::pop(&h.free_head, |j| self.next(j)) {
            Some(i) => i,
            None => {
                let i = h.bump.fetch_add(1, Ordering::AcqRel);
                if i >= CHUNK_COUNT {
                    // Keep `bump` from wrapping around after many failed tries.
                    h.bump.store(CHUNK_COUNT, Ordering::Relaxed);
                    return None;
                }
                i
            }
        };
        self.next(i).store(0, Ordering::Relaxed);
        Some(i)
    }

    /// Gives chunk `i` back (protocol step 2). The caller owns it and drops every pointer
    /// into it.
    pub fn free(&self, i: u32) {
        debug_assert!((FIRST_CHUNK..CHUNK_COUNT).contains(&i));
        free_list::push(&self.header().free_head, i, |j| self.next(j));
    }

    /// A pointer to the first byte of data chunk `i` ([`CHUNK_SIZE`] bytes).
    ///
    /// # Safety
    /// `i` must be a data chunk index that the caller owns (allocated by it, or linked into a
    /// container whose lock it holds); only then may it read or write the bytes.
    pub unsafe fn chunk(&self, i: u32) -> *mut u8 {
        assert!((FIRST_CHUNK..CHUNK_COUNT).contains(&i), "not a data chunk");
        // SAFETY: `i < CHUNK_COUNT`, so the chunk lies inside the mapping.
        unsafe { self.ptr.as_ptr().add(i as usize * CHUNK_SIZE) }
    }

    /// Chunks handed out and not freed, never-used ones excluded: for tests and diagnostics
    /// (walks the free list; racy while others allocate).
    pub fn chunks_in_use(&self) -> usize {
        let h = self.header();
        let bump = h.bump.load(Ordering::Acquire).min(CHUNK_COUNT);
        let mut free = 0;
        let mut i = h.free_head.load(Ordering::Acquire) as u32;
        while i != 0 && free < CHUNK_COUNT as usize {
            free += 1;
            i = self.next(i).load(Ordering::Acquire);
        }
        (bump - FIRST_CHUNK) as usize - free
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/HEAP_SIZE is exactly the mapping made in `map`, unmapped once, here;
        // borrows of the heap cannot outlive `self`.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), HEAP_SIZE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_cannot_resize_the_heap() {
        let heap = Heap::create().unwrap();
        assert!(ftruncate(heap.fd(), 4096).is_err());
        assert!(ftruncate(heap.fd(), 2 * HEAP_SIZE as u64).is_err());
    }

    #[test]
    fn open_refuses_an_unsealed_memfd() {
        let fd = memfd_create("not-sealed", MemfdFlags::CLOEXEC).unwrap();
        ftruncate(&fd, HEAP_SIZE as u64).unwrap();
        let Err(err) = Heap::open(fd) else {
            panic!("an unsealed heap must be refused");
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
