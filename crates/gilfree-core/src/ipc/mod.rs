//! Cross-process primitives that live in shared memory or kernel objects.
//!
//! - [`notify`]: re-exported from [`crate::sys::notify`] (its old home), where the rings and
//!   the primitives both take it from.
//! - [`arena`]: the shared slots every process-shared primitive lives in, their refcounts
//!   (whose step order [`refcount`] fixes, so that a killed process leaks at worst), the
//!   lock-free free list ([`free_list`]) and the reaping of a dead process's holdings. It
//!   knows only the [`SlotBody`](arena::SlotBody) trait, whose hooks each primitive implements
//!   for owner death and retirement; [`kinds`] lists the engine's kinds.
//! - [`mutex`]: glibc's robust process-shared mutex; [`lock`] builds `Lock`/`RLock` on it.
//! - [`heap`]: a lazily touched memfd of fixed-size chunks, beside the arena, for variable-size
//!   data; [`queue`] chains its chunks into a multi-producer, multi-consumer byte queue, and
//!   [`blob`] into one replaceable byte string (the shared containers' storage).
//! - [`futex`]: the wait/wake seam of [`event`], [`semaphore`], [`condition`], [`barrier`].
//!
//! Each primitive is a trait (or a protocol type), a `Shm*` implementation in an arena slot
//! and a `Local*` in-process twin (the conformance suite `tests/ipc_conformance.rs` runs
//! against both; loom models run the `Local*` protocols). Under `--cfg loom` only the
//! protocols and twins are built.
//!
//! This module and [`crate::shm`] are the only places where `unsafe` is allowed.
#![allow(unsafe_code)]

#[cfg(not(loom))]
pub mod arena;
pub mod barrier;
#[cfg(not(loom))]
pub mod blob;
pub mod condition;
pub mod error;
pub mod event;
pub mod free_list;
pub mod futex;
#[cfg(not(loom))]
pub mod heap;
#[cfg(not(loom))]
pub mod kinds;
pub mod lock;
#[cfg(not(loom))]
pub mod mutex;
pub use crate::sys::notify;
pub mod queue;
pub mod refcount;
pub mod semaphore;

/// Sets the fd flags (`FD_CLOEXEC`) of `fd` (tests use it to let a re-exec'd child inherit
/// an arena's fds; the engine does this itself around each spawn).
pub fn set_fd_flags(
    fd: std::os::fd::BorrowedFd<'_>,
    flags: rustix::io::FdFlags,
) -> std::io::Result<()> {
    Ok(rustix::io::fcntl_setfd(fd, flags)?)
}
