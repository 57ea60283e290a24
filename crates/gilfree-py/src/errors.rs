//! The one place where engine errors become Python exceptions (STYLE.md, "Error mapping").
//!
//! Every pymethod returns `Result<_, PyEngineError>`: core errors convert into it with `?` (one
//! `From` per core error type), and so do the `PyErr`s of argument conversion. The single
//! `match` that picks a Python exception is `From<PyEngineError> for PyErr`, below.

use gilfree_core::ipc::blob::StoreError;
use gilfree_core::ipc::error::{
    AcquireError, AttachError, BarrierError, CondWaitError, GetError, PutError, ReleaseError,
    TaskDoneError,
};
use gilfree_core::pool::{Death, SubmitError};
use gilfree_core::{RecvError, SendError, SpawnError};
use pyo3::exceptions::{
    PyMemoryError, PyOSError, PyOverflowError, PyRuntimeError, PyTimeoutError, PyValueError,
};
use pyo3::prelude::*;

pyo3::import_exception!(gilfree.exceptions, WorkerCrashedError);
pyo3::import_exception!(gilfree.exceptions, OwnerDiedError);
pyo3::import_exception!(threading, BrokenBarrierError);

/// An engine error on its way to Python (the orphan rule needs a local type).
pub struct PyEngineError(Kind);

enum Kind {
    Recv(RecvError),
    Send(SendError),
    Spawn(SpawnError),
    Submit(SubmitError),
    /// The worker died.
    Crashed(Death),
    Attach(AttachError),
    Acquire(AcquireError),
    /// A refused release; `recursive`: the lock is an RLock (`threading` words it differently).
    Release(ReleaseError, bool),
    CondWait(CondWaitError),
    Barrier(BarrierError),
    Put(PutError),
    Get(GetError),
    TaskDone(TaskDoneError),
    Store(StoreError),
    /// A plain OS error (creating or inheriting the arena).
    Io(std::io::Error),
    /// Already a Python exception: a bad argument, or what a signal handler raised mid-wait.
    Python(PyErr),
}

impl Kind {
    /// Whether the wait stopped because the signal check asked it to.
    fn is_interrupted(&self) -> bool {
        matches!(
            self,
            Kind::Recv(RecvError::Interrupted)
                | Kind::Send(SendError::Interrupted)
                | Kind::Spawn(SpawnError::Interrupted)
                | Kind::Acquire(AcquireError::Interrupted)
                | Kind::CondWait(CondWaitError::Interrupted)
                | Kind::Barrier(BarrierError::Interrupted)
                | Kind::Put(PutError::Interrupted)
                | Kind::Get(GetError::Interrupted)
        )
    }
}

impl PyEngineError {
    /// The error of a blocking call run by [`crate::convert::blocking`]: when the signal check
    /// interrupted it, the exception the signal handler raised (`pending`) is what Python sees.
    pub fn waited(e: impl Into<PyEngineError>, pending: Option<PyErr>) -> Self {
        let e = e.into();
        match pending {
            Some(p) if e.0.is_interrupted() => PyEngineError(Kind::Python(p)),
            _ => e,
        }
    }

    /// The worker described by `death` is gone.
    pub fn crashed(death: Death) -> Self {
        PyEngineError(Kind::Crashed(death))
    }

    /// A refused release of a lock (`recursive`: an RLock) or semaphore.
    pub fn release(e: ReleaseError, recursive: bool) -> Self {
        PyEngineError(Kind::Release(e, recursive))
    }
}

macro_rules! from_core {
    ($($ty:ty => $kind:ident),* $(,)?) => {$(
        impl From<$ty> for PyEngineError {
            fn from(e: $ty) -> Self {
                PyEngineError(Kind::$kind(e))
            }
        }
    )*};
}

from_core! {
    RecvError => Recv,
    SendError => Send,
    SpawnError => Spawn,
    SubmitError => Submit,
    AttachError => Attach,
    AcquireError => Acquire,
    CondWaitError => CondWait,
    BarrierError => Barrier,
    PutError => Put,
    GetError => Get,
    TaskDoneError => TaskDone,
    StoreError => Store,
    std::io::Error => Io,
    PyErr => Python,
}

fn os_error(e: &std::io::Error) -> PyErr {
    PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string()))
}

/// The Python layer's words for the error named `name` (`gilfree._sync_args.MESSAGES`:
/// `threading`'s texts live in Python; this match only picks the exception type). Read on the
/// error path only; the name itself if the table cannot be read.
fn python_words(name: &str) -> String {
    Python::attach(|py| {
        py.import("gilfree._sync_args")
            .and_then(|m| m.getattr("MESSAGES"))
            .and_then(|table| table.get_item(name))
            .and_then(|text| text.extract::<String>())
            .unwrap_or_else(|_| name.to_owned())
    })
}

impl From<PyEngineError> for PyErr {
    fn from(e: PyEngineError) -> PyErr {
        match e.0 {
            Kind::Python(p) => p,
            // PyO3's mapping: the `OSError` subclass that matches the errno.
            Kind::Io(io) => io.into(),
            Kind::Recv(RecvError::Io(io))
            | Kind::Send(SendError::Io(io))
            | Kind::Spawn(SpawnError::Io(io))
            | Kind::Attach(AttachError::Io(io))
            | Kind::Acquire(AcquireError::Io(io))
            | Kind::CondWait(CondWaitError::Io(io))
            | Kind::Barrier(BarrierError::Io(io))
            | Kind::Put(PutError::Io(io))
            | Kind::Get(GetError::Io(io)) => os_error(&io),
            Kind::Recv(RecvError::Timeout) | Kind::Send(SendError::Timeout) => {
                PyTimeoutError::new_err("timed out")
            }
            Kind::Spawn(SpawnError::ShutDown) => {
                PyRuntimeError::new_err("cannot start a worker: gilfree has been shut down")
            }
            // The stdlib executors' message, which `gilfree.Pool` users expect.
            Kind::Submit(SubmitError::ShutDown(_)) => {
                PyRuntimeError::new_err("cannot schedule new futures after shutdown")
            }
            Kind::Crashed(death) => {
                let code = death.exit.and_then(|i| i.code);
                let signal = death.exit.and_then(|i| i.signal);
                WorkerCrashedError::new_err((death.to_string(), code, signal, death.pid))
            }
            Kind::Attach(e @ AttachError::Full) => PyMemoryError::new_err(e.to_string()),
            Kind::Put(e @ PutError::TooLarge) => PyMemoryError::new_err(e.to_string()),
            Kind::Release(ReleaseError::TooMany, _) => {
                PyValueError::new_err(python_words("semaphore_released_too_many"))
            }
            Kind::Release(_, true) => PyRuntimeError::new_err(python_words("release_unacquired")),
            Kind::Release(ReleaseError::Unlocked, false) => {
                PyRuntimeError::new_err(python_words("release_unlocked"))
            }
            Kind::Release(ReleaseError::NotOwner, false) => {
                PyRuntimeError::new_err(python_words("release_not_owner"))
            }
            Kind::Barrier(_) => BrokenBarrierError::new_err(()),
            Kind::Store(e @ StoreError::HeapFull) => PyMemoryError::new_err(e.to_string()),
            Kind::Store(e @ StoreError::TooLarge) => PyOverflowError::new_err(e.to_string()),
            Kind::TaskDone(TaskDoneError::TooMany) => {
                PyValueError::new_err(python_words("task_done_too_many"))
            }
            Kind::Recv(e) => PyRuntimeError::new_err(e.to_string()),
            Kind::Send(e) => PyRuntimeError::new_err(e.to_string()),
            Kind::Spawn(e) => PyRuntimeError::new_err(e.to_string()),
            Kind::Attach(e) => PyRuntimeError::new_err(e.to_string()),
            Kind::Acquire(e) => PyRuntimeError::new_err(e.to_string()),
            Kind::CondWait(e) => PyRuntimeError::new_err(e.to_string()),
            Kind::Put(e) => PyRuntimeError::new_err(e.to_string()),
            Kind::Get(e) => PyRuntimeError::new_err(e.to_string()),
        }
    }
}
