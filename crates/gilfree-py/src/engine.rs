//! `Engine` and `Lease`: the parent's side of the worker processes.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use gilfree_core::output::{OutputSink, Stream};
use gilfree_core::pool::{Death, Engine, EngineConfig, Lease, TemplateCommand, WorkerCommand};
use gilfree_core::RecvError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::convert::{self, blocking};
use crate::errors::PyEngineError;
use crate::sync::PyArena;

/// Hands worker output to a Python callable `output(pid, stream, data)`; `stream` is 1 for
/// stdout and 2 for stderr. Errors the callable raises are reported as unraisable, since no
/// Python frame is there to receive them.
struct PySink {
    output: Py<PyAny>,
}

impl OutputSink for PySink {
    fn write(&self, pid: u32, stream: Stream, lines: &[u8]) {
        Python::attach(|py| {
            let data = PyBytes::new(py, lines);
            if let Err(e) = self.output.call1(py, (pid, stream as u8, data)) {
                e.write_unraisable(py, None);
            }
        });
    }
}

/// The worker processes of this interpreter: a warm set, leased one at a time.
#[pyclass(name = "Engine", module = "gilfree._engine", frozen)]
pub struct PyEngine {
    pub(crate) inner: Engine,
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (program, args, env, cwd, warm, idle_timeout, ring_capacity, output, arena=None, template=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        program: PathBuf,
        args: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        cwd: Option<PathBuf>,
        warm: usize,
        idle_timeout: f64,
        ring_capacity: usize,
        output: Py<PyAny>,
        arena: Option<PyRef<'_, PyArena>>,
        template: Option<Vec<OsString>>,
    ) -> Result<Self, PyEngineError> {
        let idle_timeout = convert::duration(idle_timeout)?;
        let mut config = EngineConfig {
            command: WorkerCommand {
                program,
                args,
                env,
                cwd,
                ring_capacity,
                inherit_fds: vec![],
            },
            warm,
            idle_timeout,
            on_death: None,
        };
        if let Some(arena) = arena {
            config.share_arena(Arc::clone(&arena.inner));
        }
        let sink = Arc::new(PySink { output });
        let inner = py.detach(|| {
            let template = template.map(|args| TemplateCommand { args });
            Engine::start_with_template(config, sink, template)
        })?;
        Ok(PyEngine { inner })
    }

    /// An idle worker process, or a new one if all are busy. Interruptible.
    fn acquire(&self, py: Python<'_>) -> Result<PyLease, PyEngineError> {
        let (result, pending) = blocking(py, None, |wait| self.inner.acquire(wait));
        let lease = result.map_err(|e| PyEngineError::waited(e, pending))?;
        Ok(PyLease {
            pid: lease.pid(),
            inner: RwLock::new(Some(lease)),
        })
    }

    /// Kills every worker process and stops the engine's threads. Idempotent.
    fn shutdown(&self, py: Python<'_>) {
        py.detach(|| self.inner.shutdown());
    }

    /// Pids of every live worker process, idle or leased.
    fn pids(&self, py: Python<'_>) -> Vec<u32> {
        py.detach(|| self.inner.pids())
    }

    /// How many worker processes are idle and ready.
    fn idle_count(&self, py: Python<'_>) -> usize {
        py.detach(|| self.inner.idle_count())
    }
}

/// Exclusive use of one worker process until `release()` (or until it is dropped, which kills
/// the process).
#[pyclass(name = "Lease", module = "gilfree._engine", frozen)]
pub struct PyLease {
    pid: u32,
    // `recv` and `kill` share the lease (read lock) so another thread can kill a worker while a
    // join waits on it; `release` takes it (write lock).
    inner: RwLock<Option<Lease>>,
}

impl PyLease {
    fn with<T>(&self, f: impl FnOnce(&Lease) -> T) -> PyResult<T> {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(lease) => Ok(f(lease)),
            None => Err(PyRuntimeError::new_err(
                "this worker lease has been released",
            )),
        }
    }
}

#[pymethods]
impl PyLease {
    /// The worker process's pid.
    #[getter]
    fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends one message to the worker. Raises `WorkerCrashedError` if it is dead.
    fn send(&self, py: Python<'_>, data: &[u8]) -> Result<(), PyEngineError> {
        let (result, pending) =
            blocking(py, None, |wait| self.with(|lease| lease.send(data, wait)));
        let result = result?;
        match result {
            Ok(()) => Ok(()),
            Err(gilfree_core::SendError::Disconnected) => Err(self.crashed(py)),
            Err(e) => Err(PyEngineError::waited(e, pending)),
        }
    }

    /// The worker's next message, or `None` if `timeout` seconds pass first. Raises
    /// `WorkerCrashedError` if the worker died, `KeyboardInterrupt` on Ctrl-C.
    #[pyo3(signature = (timeout=None))]
    fn recv<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> Result<Option<Bound<'py, PyBytes>>, PyEngineError> {
        let timeout = convert::secs(timeout)?;
        let (result, pending) = blocking(py, timeout, |wait| self.with(|lease| lease.recv(wait)));
        let result = result?;
        match result {
            Ok(msg) => Ok(Some(PyBytes::new(py, &msg))),
            Err(RecvError::Timeout) => Ok(None),
            Err(RecvError::Disconnected) => Err(self.crashed(py)),
            Err(e) => Err(PyEngineError::waited(e, pending)),
        }
    }

    /// True when a message is arriving or the worker has exited; never blocks.
    fn has_incoming(&self) -> Result<bool, PyEngineError> {
        Ok(self.with(|lease| lease.has_incoming())?)
    }

    /// Kills the worker process (SIGKILL). A `recv` blocked in another thread then raises
    /// `WorkerCrashedError`. Idempotent.
    fn kill(&self) -> Result<(), PyEngineError> {
        Ok(self.with(|lease| lease.kill())?)
    }

    /// Gives a healthy worker back to the idle set (a dead one is discarded). Idempotent.
    fn release(&self, py: Python<'_>) {
        let lease = py.detach(|| self.inner.write().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(lease) = lease {
            py.detach(|| lease.release());
        }
    }
}

impl PyLease {
    fn crashed(&self, py: Python<'_>) -> PyEngineError {
        let exit = py.detach(|| self.with(|lease| lease.exit_info()).ok().flatten());
        PyEngineError::crashed(Death {
            pid: self.pid,
            exit,
        })
    }
}

/// Blocks the asynchronous signals (`SIGINT`, `SIGTERM`, ...) in the calling thread, as the
/// engine's own threads do: a background thread of gilfree's must not take a signal the
/// program's main thread is waiting to handle (see `gilfree_core::sys::thread`).
#[pyfunction]
pub fn block_async_signals() -> Result<(), PyEngineError> {
    Ok(gilfree_core::sys::thread::block_async_signals()?)
}
