//! The gilfree engine, in pure Rust (no Python here: `cargo test -p gilfree-core` needs no
//! libpython).
//!
//! The engine owns processes, bytes, memory and time. Python (in `gilfree-py` and the
//! `gilfree` package) owns objects: it pickles a call to bytes, hands them to the engine, and
//! unpickles what comes back.
//!
//! # Map: which module owns which invariant
//! Lower modules come first; each uses only those listed above it, and no two modules use each
//! other (`tests/arch_layers.rs` checks both from the sources, with no exception).
//! - [`sync`](crate::sync): the only place that names `std::sync::atomic`, so loom can stand in
//!   for std under `--cfg loom`.
//! - [`error`]: one error enum per operation.
//! - [`wait`]: how a blocking call waits: deadline, the peer's pidfd, and signal checks so that
//!   a caller (Python) can stay interruptible; it owns the one sleep loop's steps (slice,
//!   signal check, deadline) that every blocking loop takes.
//! - [`sys`]: thin OS leaves. [`sys::notify`] owns the eventfd doorbell's protocol (a wake-up is
//!   never lost between a waiter's last check and its sleep).
//! - [`shm`]: shared memory. [`shm::segment`] maps `memfd` segments (nothing is ever created in
//!   `/dev/shm`, so nothing can leak there; every segment is sealed against resizing);
//!   [`shm::ring`] owns the single-producer / single-consumer ring's index and framing
//!   invariants; [`shm::channel`] pairs two rings and their doorbells into one duplex link
//!   between a parent and a worker; [`shm::bulk`] owns the large out-of-band buffers' segments
//!   (made, recycled by size class, pinned, freed; tickets and generations), whose fds reach a
//!   peer over a socket ([`shm::fdpass`], `SCM_RIGHTS`, never `/proc`); [`shm::heap`] is the
//!   heap data area of the in-process twins (`ring::local`, `bulk::local`) that loom checks.
//! - [`ipc`]: process-shared primitives in an arena of slots. [`ipc::arena`] owns slot
//!   lifetimes, refcounts and the reaping of a dead process's holdings, and knows only the
//!   [`ipc::arena::SlotBody`] trait; each primitive's file owns its word's state machine and,
//!   through that trait's hooks, what a holder's death and the slot's retirement do to it;
//!   [`ipc::kinds`] lists the engine's kinds.
//! - [`output`]: forwards each worker's stdout and stderr to a sink, line by line, never
//!   reordering a worker's lines; its thread also polls death watches (anything that
//!   implements `output::WatchedDeath`), knowing nothing of the pool.
//! - [`pool`]: worker processes: what every started process is given, shared by both sides
//!   of the spawn handshake (the command, its environment names, the ready message, the orphan
//!   exit code: [`pool::command`], a leaf of `pool`), one worker's handle, reaping exactly once
//!   and its death hook ([`pool::process`]; a death reads as [`pool::Death`]), spawning from a
//!   clean interpreter and the spawn handshake ([`pool::spawn`]), the template that forks
//!   workers ([`pool::template`]), the warm set, leases and the arena wiring
//!   ([`pool::supervisor`], [`pool::EngineConfig::share_arena`]), the task scheduler
//!   ([`pool::scheduler`]: each task ends exactly once), and the worker-side end
//!   ([`pool::worker_main`]).
//!
//! # Platform
//! Linux with glibc only, on a 64-bit target, and refused at compile time elsewhere: the engine
//! is built on Linux facilities (`memfd` with seals, `eventfd`, `pidfd`, `futex`, the
//! parent-death signal) and lays glibc's process-shared robust `pthread_mutex_t` out in
//! shared memory ([`ipc::mutex`]), relying on its size and on its lock word coming first.
#![warn(missing_docs)]

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
compile_error!(
    "gilfree-core supports only Linux with glibc (target_os = \"linux\", target_env = \"gnu\"): \
     it uses memfd, eventfd, pidfd and glibc's robust process-shared pthread mutexes"
);

#[cfg(not(target_pointer_width = "64"))]
compile_error!("gilfree-core supports only 64-bit targets (shared-memory layouts assume it)");

// The shared-memory layout of `ipc::mutex` is glibc's 64-bit `pthread_mutex_t` (x86_64 and
// aarch64: 40 bytes); a libc whose mutex differs must not compile into a silent mismatch.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const _: () = assert!(
    std::mem::size_of::<libc::pthread_mutex_t>() == 40,
    "ipc::mutex assumes glibc's 40-byte pthread_mutex_t"
);

pub mod error;
pub mod ipc;
pub mod output;
pub mod pool;
pub mod shm;
pub mod sync;
pub mod sys;
pub mod wait;

pub use error::{RecvError, SendError, SpawnError};
pub use wait::Wait;
