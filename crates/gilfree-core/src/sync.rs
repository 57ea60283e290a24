//! The std ⇄ loom switch: the one file that names `std::sync::atomic` and `std::sync::Mutex`
//! (and the data cell that loom checks for races).
//!
//! Everything the engine shares between threads or processes goes through these names, so that
//! building with `RUSTFLAGS="--cfg loom"` swaps in [loom]'s model-checked types and the same
//! protocol code is explored exhaustively (tokio's `src/loom` does the same).
//!
//! [`GlobalMutex`] is the exception: it is always std's, for process-wide bookkeeping that
//! lives in a `static` (loom types cannot be built in a `const` context) and is not part of any
//! modelled protocol.
//!
//! [loom]: https://docs.rs/loom

#[cfg(not(loom))]
pub use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub use std::sync::{Condvar, Mutex, MutexGuard};

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
pub use loom::sync::{Condvar, Mutex, MutexGuard};

/// Interior-mutable memory whose accesses loom tracks for data races (std's cell otherwise).
#[cfg(loom)]
pub use loom::cell::UnsafeCell;
/// Interior-mutable memory whose accesses loom tracks for data races (std's cell otherwise).
#[cfg(not(loom))]
pub use std::cell::UnsafeCell;

/// Always std's mutex, for `static` process-wide state outside any loom model.
pub use std::sync::Mutex as GlobalMutex;

/// A CPU hint for one round of a busy-wait (a scheduling point under loom).
#[inline]
pub fn spin_loop() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::hint::spin_loop();
}

/// Gives the CPU to another runnable thread (a scheduling point under loom).
#[inline]
pub fn yield_now() {
    #[cfg(not(loom))]
    std::thread::yield_now();
    #[cfg(loom)]
    loom::thread::yield_now();
}
