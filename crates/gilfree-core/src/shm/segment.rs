//! A shared mapping backed by an anonymous `memfd`.
//!
//! A segment has no name in any filesystem: it lives exactly as long as some process holds its
//! fd or a mapping of it, so nothing can ever be left behind in `/dev/shm`, whatever way the
//! processes die. The fd is the only handle; it reaches a child by inheritance
//! (see [`crate::shm::channel`]).
//!
//! # Invariants
//! - `ptr..ptr + len` is one `MAP_SHARED`, read-write mapping of the whole file, alive until
//!   `Drop`. Its size never changes: [`Segment::create`] seals the memfd with `F_SEAL_SHRINK`
//!   and `F_SEAL_GROW` (and `F_SEAL_SEAL`, so the seals cannot be changed), so no process
//!   holding the fd, however buggy or hostile, can truncate it and turn our accesses into
//!   `SIGBUS`; [`Segment::open`] refuses a memfd without those seals.
//! - [`Segment::create`] populates every page before returning (`MADV_POPULATE_WRITE`, or a
//!   touch per page on kernels before 5.14), because the first write to a fresh shared page
//!   costs roughly ten times a copy of it on our machines; doing it here keeps that cost out
//!   of the first message. [`Segment::open`] asks the kernel to pre-fault its
//!   mapping (`MAP_POPULATE`) for the same reason.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::{self, NonNull};

use rustix::fs::{
    fcntl_add_seals, fcntl_get_seals, fstat, ftruncate, memfd_create, MemfdFlags, SealFlags,
};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

/// The seals every segment carries: its size is fixed for good.
const SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

/// A `memfd`-backed `MAP_SHARED` mapping.
#[derive(Debug)]
pub struct Segment {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: a `Segment` is a pointer to a mapping it owns plus an fd; the mapping is not tied to
// the thread that created it. Synchronising access to the bytes is the job of the types that
// lay out their data in it (they use atomics from `crate::sync`).
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` only hands out the raw pointer, never a `&[u8]`/`&mut [u8]`.
unsafe impl Sync for Segment {}

/// Seals a fresh memfd (made with `MFD_ALLOW_SEALING`) against any change of size, for good.
pub(crate) fn seal_size(fd: &OwnedFd) -> io::Result<()> {
    Ok(fcntl_add_seals(fd, SEALS | SealFlags::SEAL)?)
}

/// Whether `fd`'s size is sealed as [`seal_size`] seals it (a peer cannot shrink it under a
/// mapping, which would turn our accesses into `SIGBUS`).
pub(crate) fn size_sealed(fd: &OwnedFd) -> bool {
    fcntl_get_seals(fd).is_ok_and(|seals| seals.contains(SEALS))
}

impl Segment {
    /// Creates a zero-filled segment of `len` bytes (`len > 0`), with a close-on-exec fd, and
    /// touches every page so that later first accesses are cheap.
    pub fn create(len: usize) -> io::Result<Segment> {
        Self::create_named(len, "gilfree")
    }

    /// [`create`](Segment::create) with the memfd named `name` (shown as `/memfd:<name>` in
    /// `/proc/<pid>/fd`, for diagnostics and leak checks).
    pub fn create_named(len: usize, name: &str) -> io::Result<Segment> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty shared segment",
            ));
        }
        let fd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        ftruncate(&fd, len as u64)?;
        seal_size(&fd)?;
        let seg = Self::map(fd, len, MapFlags::SHARED)?;
        // One system call allocates and zeroes every page (Linux 5.14+), far cheaper than a
        // fault per page; older kernels refuse the advice and we touch each page instead.
        // SAFETY: the range is exactly our fresh mapping; populating it changes no contents.
        let populated = unsafe {
            rustix::mm::madvise(
                seg.ptr.as_ptr().cast(),
                len,
                rustix::mm::Advice::LinuxPopulateWrite,
            )
        };
        if populated.is_ok() {
            return Ok(seg);
        }
        let page = rustix::param::page_size();
        let base = seg.ptr.as_ptr();
        for off in (0..len).step_by(page) {
            // SAFETY: `off < len`, so the byte is inside our live read-write mapping, and no other
            // process can have it yet (the fd has not been shared). A volatile write keeps the
            // compiler from dropping a store of the zero that is already there.
            unsafe { ptr::write_volatile(base.add(off), 0) };
        }
        Ok(seg)
    }

    /// Maps the whole of an existing memfd (for instance one inherited from the parent),
    /// taking ownership of `fd`.
    ///
    /// Refuses (`InvalidData`) a file whose size is not sealed (see the module invariants):
    /// whoever else holds it could otherwise shrink it under our mapping.
    pub fn open(fd: OwnedFd) -> io::Result<Segment> {
        Self::open_with(fd, MapFlags::SHARED | MapFlags::POPULATE)
    }

    /// [`open`](Segment::open) without pre-faulting the mapping: for a receiver that may touch
    /// only part of a large segment (or none of it, as a task that returns its argument), so
    /// that mapping it costs no per-page work up front.
    pub fn open_lazy(fd: OwnedFd) -> io::Result<Segment> {
        Self::open_with(fd, MapFlags::SHARED)
    }

    /// The checks [`open`](Segment::open) and [`open_lazy`](Segment::open_lazy) share (sealed
    /// size, nonzero length), then the whole file mapped with `flags`.
    fn open_with(fd: OwnedFd, flags: MapFlags) -> io::Result<Segment> {
        if !size_sealed(&fd) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared segment is not sealed against resizing",
            ));
        }
        let size = fstat(&fd)?.st_size;
        let len = usize::try_from(size)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad shared segment size"))?;
        Self::map(fd, len, flags)
    }

    fn map(fd: OwnedFd, len: usize, flags: MapFlags) -> io::Result<Segment> {
        // SAFETY: a null hint lets the kernel choose fresh address space, so the new mapping
        // cannot overlap any Rust object; `len` is the file's size, so every mapped byte is
        // backed by the file.
        let addr = unsafe {
            mmap(
                ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                flags,
                &fd,
                0,
            )?
        };
        let ptr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Segment { ptr, len, fd })
    }

    /// The first byte of the mapping (page aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The size of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: an empty segment cannot be created or opened.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd behind the mapping (to pass to another process).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping made in `map`, and it is unmapped once:
        // here. Users of the segment borrow it, so no reference into it outlives `self`.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_open_share_bytes() {
        let a = Segment::create(3 * 4096 + 5).unwrap();
        assert_eq!(a.len(), 3 * 4096 + 5);
        let b = Segment::open(rustix::io::dup(a.fd()).unwrap()).unwrap();
        assert_eq!(b.len(), a.len());
        // SAFETY: both pointers are inside live mappings of the same file; this test is the only
        // user, on one thread.
        unsafe {
            a.as_ptr().add(4097).write(42);
            assert_eq!(b.as_ptr().add(4097).read(), 42);
        }
    }

    #[test]
    fn a_peer_cannot_resize_a_segment() {
        let seg = Segment::create(2 * 4096).unwrap();
        // Any holder of the fd (a worker, say) is refused: shrinking would turn the other
        // side's accesses past the new end into SIGBUS.
        let peer = rustix::io::dup(seg.fd()).unwrap();
        assert_eq!(ftruncate(&peer, 4096), Err(rustix::io::Errno::PERM));
        assert_eq!(ftruncate(&peer, 0), Err(rustix::io::Errno::PERM));
        assert_eq!(ftruncate(&peer, 4 * 4096), Err(rustix::io::Errno::PERM));
        assert_eq!(fstat(&peer).unwrap().st_size, 2 * 4096);
    }

    #[test]
    fn open_refuses_an_unsealed_memfd() {
        let fd = memfd_create("unsealed", MemfdFlags::CLOEXEC).unwrap();
        ftruncate(&fd, 4096).unwrap();
        assert_eq!(
            Segment::open(fd).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn empty_is_refused() {
        assert_eq!(
            Segment::create(0).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
