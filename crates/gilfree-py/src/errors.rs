//! The one place where engine errors become Python exceptions (STYLE.md, "Error mapping").

use gilfree_core::pool::{ExitInfo, SubmitError};
use gilfree_core::{RecvError, SendError, SpawnError};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTimeoutError};
use pyo3::prelude::*;

pyo3::import_exception!(gilfree.exceptions, WorkerCrashedError);

/// An engine error on its way to Python; `pending` is the error a signal check raised.
pub enum PyEngineError {
    Recv(RecvError, Option<PyErr>),
    Send(SendError, Option<PyErr>),
    Spawn(SpawnError, Option<PyErr>),
    /// A task pool refused a task.
    Submit(SubmitError),
    /// The worker died: its pid and how it ended.
    Crashed(u32, Option<ExitInfo>),
}

impl From<PyEngineError> for PyErr {
    fn from(e: PyEngineError) -> PyErr {
        match e {
            PyEngineError::Recv(RecvError::Interrupted, Some(p))
            | PyEngineError::Send(SendError::Interrupted, Some(p))
            | PyEngineError::Spawn(SpawnError::Interrupted, Some(p)) => p,
            PyEngineError::Recv(RecvError::Timeout, _)
            | PyEngineError::Send(SendError::Timeout, _) => PyTimeoutError::new_err("timed out"),
            PyEngineError::Recv(RecvError::Io(e), _)
            | PyEngineError::Send(SendError::Io(e), _)
            | PyEngineError::Spawn(SpawnError::Io(e), _) => {
                PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string()))
            }
            PyEngineError::Spawn(SpawnError::ShutDown, _) => {
                PyRuntimeError::new_err("cannot start a worker: gilfree has been shut down")
            }
            // The stdlib executors' message, which `gilfree.Pool` users expect.
            PyEngineError::Submit(SubmitError::ShutDown(_)) => {
                PyRuntimeError::new_err("cannot schedule new futures after shutdown")
            }
            PyEngineError::Spawn(e, _) => PyRuntimeError::new_err(e.to_string()),
            PyEngineError::Recv(e, _) => PyRuntimeError::new_err(e.to_string()),
            PyEngineError::Send(e, _) => PyRuntimeError::new_err(e.to_string()),
            PyEngineError::Crashed(pid, info) => {
                let code = info.and_then(|i| i.code);
                let signal = info.and_then(|i| i.signal);
                let how = match (code, signal) {
                    (_, Some(s)) => format!("was killed by signal {s}"),
                    (Some(c), None) => format!("exited with code {c}"),
                    (None, None) => "died".to_owned(),
                };
                WorkerCrashedError::new_err((
                    format!("worker process {pid} {how}"),
                    code,
                    signal,
                    pid,
                ))
            }
        }
    }
}

// --- Process-shared primitives (gilfree.sync) ---

pyo3::import_exception!(gilfree.exceptions, OwnerDiedError);

use gilfree_core::ipc::error::{
    AcquireError, AttachError, BarrierError, CondWaitError, ReleaseError,
};
use pyo3::exceptions::{PyMemoryError, PyValueError};

/// A failed arena allocation or attach.
pub fn attach_error(e: AttachError) -> PyErr {
    match e {
        AttachError::Full => PyMemoryError::new_err(e.to_string()),
        AttachError::Io(io) => PyOSError::new_err((io.raw_os_error().unwrap_or(0), io.to_string())),
        AttachError::Stale | AttachError::TableFull => PyRuntimeError::new_err(e.to_string()),
    }
}

/// A wait that ended in error (timeouts are results, not errors, for the primitives).
pub fn acquire_error(e: AcquireError, pending: Option<PyErr>) -> PyErr {
    match (e, pending) {
        (AcquireError::Interrupted, Some(p)) => p,
        (AcquireError::Io(io), _) => {
            PyOSError::new_err((io.raw_os_error().unwrap_or(0), io.to_string()))
        }
        (e, _) => PyRuntimeError::new_err(e.to_string()),
    }
}

/// A refused release, with `threading`'s messages (`recursive`: an RLock).
pub fn release_error(e: ReleaseError, recursive: bool) -> PyErr {
    match e {
        ReleaseError::TooMany => PyValueError::new_err("Semaphore released too many times"),
        _ if recursive => PyRuntimeError::new_err("cannot release un-acquired lock"),
        ReleaseError::Unlocked => PyRuntimeError::new_err("release unlocked lock"),
        ReleaseError::NotOwner => PyRuntimeError::new_err(
            "cannot release a gilfree.Lock held by another thread or process \
             (unlike threading.Lock, only the owner may release it)",
        ),
    }
}

/// A failed condition wait.
pub fn cond_error(e: CondWaitError, pending: Option<PyErr>) -> PyErr {
    match (e, pending) {
        (CondWaitError::Interrupted, Some(p)) => p,
        (CondWaitError::Io(io), _) => {
            PyOSError::new_err((io.raw_os_error().unwrap_or(0), io.to_string()))
        }
        (e, _) => PyRuntimeError::new_err(e.to_string()),
    }
}

pyo3::import_exception!(threading, BrokenBarrierError);

/// A failed barrier wait: `threading.BrokenBarrierError` unless a signal handler raised.
pub fn barrier_error(e: BarrierError, pending: Option<PyErr>) -> PyErr {
    match (e, pending) {
        (BarrierError::Interrupted, Some(p)) => p,
        (BarrierError::Io(io), _) => {
            PyOSError::new_err((io.raw_os_error().unwrap_or(0), io.to_string()))
        }
        _ => BrokenBarrierError::new_err(()),
    }
}

/// A failed queue `put` (`Full` is not an error here: the glue returns `False` for it, and
/// Python raises `queue.Full`).
pub fn queue_put_error(e: gilfree_core::ipc::error::PutError, pending: Option<PyErr>) -> PyErr {
    use gilfree_core::ipc::error::PutError;
    match e {
        PutError::TooLarge => pyo3::exceptions::PyMemoryError::new_err(e.to_string()),
        PutError::Interrupted => acquire_error(AcquireError::Interrupted, pending),
        PutError::Io(io) => acquire_error(AcquireError::Io(io), pending),
        PutError::Full => PyRuntimeError::new_err(e.to_string()),
    }
}

/// A failed queue `get` (`Empty` is returned as `None`; Python raises `queue.Empty`).
pub fn queue_get_error(e: gilfree_core::ipc::error::GetError, pending: Option<PyErr>) -> PyErr {
    use gilfree_core::ipc::error::GetError;
    match e {
        GetError::Interrupted => acquire_error(AcquireError::Interrupted, pending),
        GetError::Io(io) => acquire_error(AcquireError::Io(io), pending),
        GetError::Empty => PyRuntimeError::new_err(e.to_string()),
    }
}
