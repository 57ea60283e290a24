//! Thin wrappers over OS facilities, with no knowledge of rings, primitives or processes: the
//! leaves that `shm`, `ipc` and `pool` all build on.
//!
//! - [`notify`]: the eventfd doorbell a ring's waiter sleeps on;
//! - [`thread`]: the engine's threads, which leave asynchronous signals to the program's.

pub mod notify;
pub mod thread;
