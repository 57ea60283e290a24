//! Worker processes: what a started process is given ([`command`]), spawning from a clean
//! interpreter and the spawn handshake ([`spawn`]),
//! one worker's handle and death detection ([`process`]), the warm set and leases
//! ([`supervisor`]), the worker-side end ([`worker_main`]), and the task scheduler that runs
//! a queue of tasks on a set of leases ([`scheduler`]).
//!
#![doc = include_str!("README.md")]
// The process layer runs real threads and processes and is never part of a loom model, so it
// uses std's sync types directly (as `sync::GlobalMutex` does), not the loom seam.
#![allow(clippy::disallowed_types)]

pub mod command;
pub mod process;
pub mod scheduler;
pub mod spawn;
pub mod supervisor;
pub mod template;
pub mod worker_main;

pub use command::{Inheritable, WorkerCommand, CHANNEL_FDS_ENV, PARENT_PID_ENV, READY_MESSAGE};
pub use process::{Death, DeathHook, ExitInfo};
pub use scheduler::{
    CancelOutcome, Completion, End, Frames, PoolConfig, SubmitError, SubmitManyError, Task,
    TaskPool,
};
pub use supervisor::{Engine, EngineConfig, Lease};
pub use template::{TemplateCommand, TEMPLATE_FD_ENV};
pub use worker_main::Endpoint;
