//! `Engine` and `Lease`: the parent's side of the worker processes.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gilfree_core::ipc::arena::ARENA_FD_ENV;
use gilfree_core::output::{OutputSink, Stream};
use gilfree_core::pool::{
    DeathHook, Engine, EngineConfig, Inheritable, Lease, TemplateCommand, WorkerCommand,
};
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
    ) -> PyResult<Self> {
        let idle_timeout = convert::timeout(Some(idle_timeout))?.unwrap_or(Duration::MAX);
        // Every worker inherits the arena's memfd and is told its number; the arena gets
        // back what a dead worker held.
        let arena = arena.map(|a| Arc::clone(&a.inner));
        let mut env = env;
        let inherit_fds = match &arena {
            Some(a) => {
                // The arena's memfd and its chunk heap's (queues), "<arena>,<heap>".
                env.push((ARENA_FD_ENV.into(), a.env_value().into()));
                vec![Arc::clone(a) as Arc<dyn Inheritable>]
            }
            None => vec![],
        };
        let on_death = arena.map(|a| DeathHook(Arc::new(move |pid| a.reap(pid))));
        let config = EngineConfig {
            command: WorkerCommand {
                program,
                args,
                env,
                cwd,
                ring_capacity,
                inherit_fds,
            },
            warm,
            idle_timeout,
            on_death,
        };
        let sink = Arc::new(PySink { output });
        let inner = py
            .detach(|| {
                let template = template.map(|args| TemplateCommand { args });
                Engine::start_with_template(config, sink, template)
            })
            .map_err(|e| PyEngineError::Spawn(e, None))?;
        Ok(PyEngine { inner })
    }

    /// An idle worker process, or a new one if all are busy. Interruptible.
    fn acquire(&self, py: Python<'_>) -> PyResult<PyLease> {
        let (result, pending) = blocking(py, None, |wait| self.inner.acquire(wait));
        let lease = result.map_err(|e| PyEngineError::Spawn(e, pending))?;
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
    fn send(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        let (result, pending) =
            blocking(py, None, |wait| self.with(|lease| lease.send(data, wait)));
        let result = result?;
        match result {
            Ok(()) => Ok(()),
            Err(gilfree_core::SendError::Disconnected) => Err(self.crashed(py)),
            Err(e) => Err(PyEngineError::Send(e, pending).into()),
        }
    }

    /// The worker's next message, or `None` if `timeout` seconds pass first. Raises
    /// `WorkerCrashedError` if the worker died, `KeyboardInterrupt` on Ctrl-C.
    #[pyo3(signature = (timeout=None))]
    fn recv<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let timeout = convert::timeout(timeout)?;
        let (result, pending) = blocking(py, timeout, |wait| self.with(|lease| lease.recv(wait)));
        let result = result?;
        match result {
            Ok(msg) => Ok(Some(PyBytes::new(py, &msg))),
            Err(RecvError::Timeout) => Ok(None),
            Err(RecvError::Disconnected) => Err(self.crashed(py)),
            Err(e) => Err(PyEngineError::Recv(e, pending).into()),
        }
    }

    /// True when a message is arriving or the worker has exited; never blocks.
    fn has_incoming(&self) -> PyResult<bool> {
        self.with(|lease| lease.has_incoming())
    }

    /// Kills the worker process (SIGKILL). A `recv` blocked in another thread then raises
    /// `WorkerCrashedError`. Idempotent.
    fn kill(&self) -> PyResult<()> {
        self.with(|lease| lease.kill())
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
    fn crashed(&self, py: Python<'_>) -> PyErr {
        let info = py.detach(|| self.with(|lease| lease.exit_info()).ok().flatten());
        PyEngineError::Crashed(self.pid, info).into()
    }
}
