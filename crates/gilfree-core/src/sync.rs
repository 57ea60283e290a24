//! The std ⇄ loom switch: the one file that names `std::sync::atomic`, std's `Mutex` and
//! `Condvar`, and `std::cell::UnsafeCell` (the data cell that loom checks for races).
//!
//! Everything the engine shares between threads or processes goes through these names, so that
//! building with `RUSTFLAGS="--cfg loom"` swaps in [loom]'s model-checked types and the same
//! protocol code is explored exhaustively (tokio's `src/loom` does the same).
//!
//! # How the seam is kept
//! `clippy.toml` lists std's atomics, `Mutex`, `MutexGuard`, `Condvar`, `RwLock`, `Barrier` and
//! `UnsafeCell` (and `atomic::fence`) as disallowed, and `make lint` runs clippy with
//! `-D warnings`, so naming them anywhere else in the workspace fails the lint. This file is the
//! one place allowed to name them. Under `cfg(not(loom))` its names are type *aliases*, not
//! `pub use` re-exports: clippy resolves a re-export to std's own type and would flag every
//! user, while an alias is a type of this module.
//!
//! # Two families
//! - The top-level names ([`Mutex`], [`AtomicU32`], ...): loom's under `--cfg loom`, std's
//!   otherwise. Protocol code that a loom model runs uses these.
//! - [`unmodelled`]: always std's, for the process layer (the supervisor, the scheduler, output
//!   forwarding) that runs real threads and processes and is never part of a loom model, for
//!   `static` state (loom types cannot be built in a `const` context, see [`GlobalMutex`]), and
//!   for test scaffolding.
//!
//! [loom]: https://docs.rs/loom
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

pub use std::sync::atomic::Ordering;

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(loom)]
pub use loom::sync::{Condvar, Mutex, MutexGuard};

/// A boolean shared between threads (loom's under `--cfg loom`).
#[cfg(not(loom))]
pub type AtomicBool = std::sync::atomic::AtomicBool;
/// A 32-bit word shared between threads (loom's under `--cfg loom`); also a futex word.
#[cfg(not(loom))]
pub type AtomicU32 = std::sync::atomic::AtomicU32;
/// A 64-bit word shared between threads (loom's under `--cfg loom`).
#[cfg(not(loom))]
pub type AtomicU64 = std::sync::atomic::AtomicU64;
/// A `usize` shared between threads (loom's under `--cfg loom`).
#[cfg(not(loom))]
pub type AtomicUsize = std::sync::atomic::AtomicUsize;
/// A mutex (loom's under `--cfg loom`).
#[cfg(not(loom))]
pub type Mutex<T> = std::sync::Mutex<T>;
/// The guard of a [`Mutex`] (loom's under `--cfg loom`).
#[cfg(not(loom))]
pub type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;
/// A condition variable (loom's under `--cfg loom`).
#[cfg(not(loom))]
pub type Condvar = std::sync::Condvar;

/// A memory fence (a modelled fence under `--cfg loom`).
#[cfg(not(loom))]
#[inline]
pub fn fence(order: Ordering) {
    std::sync::atomic::fence(order);
}

/// Interior-mutable memory whose accesses loom tracks for data races (std's cell otherwise).
#[cfg(loom)]
pub use loom::cell::UnsafeCell;
/// Interior-mutable memory whose accesses loom tracks for data races (std's cell otherwise).
#[cfg(not(loom))]
pub type UnsafeCell<T> = std::cell::UnsafeCell<T>;

/// Always std's mutex, for `static` process-wide state outside any loom model.
pub type GlobalMutex<T> = unmodelled::Mutex<T>;

/// Always std's types, under `--cfg loom` too: for code that runs real threads and processes
/// and is never part of a loom model (see the module doc).
pub mod unmodelled {
    /// std's `AtomicBool`.
    pub type AtomicBool = std::sync::atomic::AtomicBool;
    /// std's `AtomicU64`.
    pub type AtomicU64 = std::sync::atomic::AtomicU64;
    /// std's `Mutex`.
    pub type Mutex<T> = std::sync::Mutex<T>;
    /// std's `MutexGuard`.
    pub type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;
    /// std's `Condvar`.
    pub type Condvar = std::sync::Condvar;
    /// std's `RwLock`.
    pub type RwLock<T> = std::sync::RwLock<T>;
}

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
