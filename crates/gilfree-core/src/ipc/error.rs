//! Errors of the process-shared primitives, one enum per operation (crossbeam style).

use std::fmt;
use std::io;

/// Why an arena slot could not be allocated or attached.
#[derive(Debug)]
pub enum AttachError {
    /// Every slot of the arena is in use.
    Full,
    /// The handle names a slot that was freed (and maybe reused) since, or a slot of another
    /// kind: the primitive is gone.
    Stale,
    /// Too many processes hold this primitive at once (see `arena::TABLE_LEN`).
    TableFull,
    /// A system call failed.
    Io(io::Error),
}

/// Why a blocking acquire or wait ended without success.
#[derive(Debug)]
pub enum AcquireError {
    /// The wait's deadline passed.
    Timeout,
    /// The wait's signal check asked to stop (for Python: a `KeyboardInterrupt` is pending).
    Interrupted,
    /// A system call failed.
    Io(io::Error),
}

/// Why a release was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ReleaseError {
    /// The lock is not held by anybody.
    Unlocked,
    /// The lock is held, by another thread or process.
    NotOwner,
    /// A bounded semaphore would go above its initial value.
    TooMany,
}

/// Why a barrier wait failed.
#[derive(Debug)]
pub enum BarrierError {
    /// The barrier is broken (aborted, reset while waiting, timed out, or a process that held
    /// it died).
    Broken,
    /// The wait's signal check asked to stop; the barrier is left broken, as a timeout leaves
    /// it in `threading`.
    Interrupted,
    /// A system call failed.
    Io(io::Error),
}

/// The outcome of a successful lock acquisition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The lock was free or released normally.
    Clean,
    /// The previous owner died holding the lock (`EOWNERDEAD`): the lock is now held and
    /// usable again, but the data it guards may be inconsistent.
    OwnerDied,
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full => f.write_str("no free slot left in the shared-primitive arena"),
            Self::Stale => f.write_str(
                "the shared primitive no longer exists (every process dropped it); keep it \
                 alive in the parent while workers use it",
            ),
            Self::TableFull => f.write_str("too many processes hold this shared primitive"),
            Self::Io(e) => write!(f, "shared-primitive arena: {e}"),
        }
    }
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out"),
            Self::Interrupted => f.write_str("interrupted"),
            Self::Io(e) => write!(f, "wait failed: {e}"),
        }
    }
}

impl fmt::Display for ReleaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unlocked => "release unlocked lock",
            Self::NotOwner => "cannot release a lock held by another thread or process",
            Self::TooMany => "Semaphore released too many times",
        })
    }
}

impl fmt::Display for BarrierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Broken => f.write_str("the barrier is broken"),
            Self::Interrupted => f.write_str("interrupted"),
            Self::Io(e) => write!(f, "barrier wait failed: {e}"),
        }
    }
}

impl std::error::Error for AttachError {}
impl std::error::Error for AcquireError {}
impl std::error::Error for ReleaseError {}
impl std::error::Error for BarrierError {}

impl From<io::Error> for AttachError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}
impl From<io::Error> for AcquireError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}
impl From<crate::wait::Ended> for AcquireError {
    fn from(e: crate::wait::Ended) -> Self {
        match e {
            crate::wait::Ended::Timeout => Self::Timeout,
            crate::wait::Ended::Interrupted => Self::Interrupted,
        }
    }
}

/// Why a condition wait failed.
#[derive(Debug)]
pub enum CondWaitError {
    /// The calling thread does not hold the condition's lock.
    NotOwner,
    /// The wait's signal check asked to stop (the lock is held again).
    Interrupted,
    /// A system call failed (the lock is held again).
    Io(io::Error),
}

impl fmt::Display for CondWaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotOwner => f.write_str("cannot wait on un-acquired lock"),
            Self::Interrupted => f.write_str("interrupted"),
            Self::Io(e) => write!(f, "condition wait failed: {e}"),
        }
    }
}

impl std::error::Error for CondWaitError {}

/// Why a queue `put` did not store the item.
#[derive(Debug)]
pub enum PutError {
    /// The queue is full (`maxsize` items, or no room for the item's bytes) and the call
    /// does not block, or its deadline passed (Python: `queue.Full`).
    Full,
    /// The item can never be stored: it is larger than the whole shared heap can hold.
    TooLarge,
    /// The wait's signal check asked to stop.
    Interrupted,
    /// A system call failed.
    Io(io::Error),
}

/// Why a queue `get` returned no item.
#[derive(Debug)]
pub enum GetError {
    /// The queue is empty and the call does not block, or its deadline passed (Python:
    /// `queue.Empty`).
    Empty,
    /// The wait's signal check asked to stop.
    Interrupted,
    /// A system call failed.
    Io(io::Error),
}

/// Why `task_done` was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TaskDoneError {
    /// More `task_done` calls than items put (Python: `ValueError`).
    TooMany,
}

impl fmt::Display for PutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full => f.write_str("the queue is full"),
            Self::TooLarge => f.write_str("the item is larger than the shared heap can hold"),
            Self::Interrupted => f.write_str("interrupted"),
            Self::Io(e) => write!(f, "queue put failed: {e}"),
        }
    }
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("the queue is empty"),
            Self::Interrupted => f.write_str("interrupted"),
            Self::Io(e) => write!(f, "queue get failed: {e}"),
        }
    }
}

impl fmt::Display for TaskDoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("task_done() called too many times")
    }
}

impl std::error::Error for PutError {}
impl std::error::Error for GetError {}
impl std::error::Error for TaskDoneError {}
