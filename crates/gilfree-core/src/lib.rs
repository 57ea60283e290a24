//! The gilfree engine, in pure Rust (no Python here: `cargo test -p gilfree-core` needs no
//! libpython).
//!
//! The engine owns processes, bytes, memory and time. Python (in `gilfree-py` and the
//! `gilfree` package) owns objects: it pickles a call to bytes, hands them to the engine, and
//! unpickles what comes back.
//!
//! # Map: which module owns which invariant
//! - [`sync`](crate::sync): the only place that names `std::sync::atomic`, so loom can stand in
//!   for std under `--cfg loom`.
//! - [`shm`]: shared memory. [`shm::segment`] maps `memfd` segments (nothing is ever created in
//!   `/dev/shm`, so nothing can leak there); [`shm::ring`] is the single-producer /
//!   single-consumer byte ring that carries framed messages of any size; [`shm::channel`] pairs
//!   two rings and their wake-ups into one duplex link between a parent and a worker.
//! - [`ipc`]: cross-process wake-ups ([`ipc::notify`], eventfd based) used by the rings.
//! - [`wait`]: how a blocking call waits: deadline, the peer's pidfd, and signal checks so that
//!   a caller (Python) can stay interruptible.
//! - [`pool`]: worker processes: spawning from a clean interpreter and the spawn handshake
//!   ([`pool::spawn`]), one worker's handle and death detection ([`pool::process`]), the warm set
//!   and leases ([`pool::supervisor`]), and the worker-side end ([`pool::worker_main`]).
//! - [`output`]: forwards each worker's stdout and stderr to a sink, line by line.
//! - [`error`]: one error enum per operation.
#![warn(missing_docs)]

pub mod error;
pub mod ipc;
pub mod output;
pub mod pool;
pub mod shm;
pub mod sync;
pub mod wait;

pub use error::{RecvError, SendError, SpawnError};
pub use wait::Wait;
