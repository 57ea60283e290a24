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
