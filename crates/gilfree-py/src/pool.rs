//! `TaskPool`: the task scheduler under `gilfree.Pool`.

use gilfree_core::pool::{CancelOutcome, Completion, End, PoolConfig, Task, TaskPool};
use gilfree_core::RecvError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::IntoPyObjectExt;

use crate::convert::{self, blocking};
use crate::engine::PyEngine;
use crate::errors::PyEngineError;

/// A FIFO queue of opaque tasks, run on `workers` worker processes of an `Engine`.
#[pyclass(name = "TaskPool", module = "gilfree._engine", frozen)]
pub struct PyTaskPool {
    inner: TaskPool,
}

/// One completion as Python sees it: `(id, frames, end, info)`.
type PyCompletion<'py> = (u64, Vec<Bound<'py, PyBytes>>, u8, Py<PyAny>);

/// One batch as Python sees it: `(started ids, completions)`.
type PyBatch<'py> = (Vec<u64>, Vec<PyCompletion<'py>>);

fn completion(py: Python<'_>, c: Completion) -> PyResult<PyCompletion<'_>> {
    let frames = c.frames.iter().map(|f| PyBytes::new(py, f)).collect();
    let (end, info) = match c.end {
        End::Done => (0, py.None()),
        End::Crashed {
            pid,
            exit,
            attempts,
            peak_rss,
        } => (
            1,
            (
                pid,
                exit.and_then(|e| e.code),
                exit.and_then(|e| e.signal),
                attempts,
                peak_rss,
            )
                .into_py_any(py)?,
        ),
        End::TimedOut { pid } => (2, pid.into_py_any(py)?),
        End::Cancelled => (3, py.None()),
        End::Broken(frame) => (4, PyBytes::new(py, &frame).into_any().unbind()),
    };
    Ok((c.id, frames, end, info))
}

#[pymethods]
impl PyTaskPool {
    #[new]
    #[pyo3(signature = (engine, workers, init, max_tasks_per_worker, depth=2, max_memory=None))]
    fn new(
        py: Python<'_>,
        engine: &Bound<'_, PyEngine>,
        workers: usize,
        init: Option<Vec<u8>>,
        max_tasks_per_worker: Option<u64>,
        depth: usize,
        max_memory: Option<u64>,
    ) -> Self {
        let engine = engine.get().inner.clone();
        let config = PoolConfig {
            workers,
            init,
            max_tasks_per_worker,
            depth,
            max_memory,
        };
        PyTaskPool {
            inner: py.detach(|| TaskPool::start(engine, config)),
        }
    }

    /// Queues a task: `payload` is sent as one message, answered by a start mark and `frames`
    /// messages. With `report_start`, `completions` reports its start (with a later batch).
    /// `retries`: runs again (at most that many times) if its worker dies before any frame.
    #[pyo3(signature = (id, payload, frames, timeout, report_start=false, retries=0))]
    #[allow(clippy::too_many_arguments)] // one per field of `Task`, as Python passes them
    fn submit(
        &self,
        py: Python<'_>,
        id: u64,
        payload: Vec<u8>,
        frames: u32,
        timeout: Option<f64>,
        report_start: bool,
        retries: u32,
    ) -> PyResult<()> {
        let timeout = convert::timeout(timeout)?;
        let task = Task {
            id,
            payload,
            frames,
            timeout,
            report_start,
            retries,
        };
        py.detach(|| self.inner.submit(task))
            .map_err(|e| PyEngineError::Submit(e).into())
    }

    /// 0 not found, 1 cancelled (was queued), 2 running (left alone), 3 killed.
    fn cancel(&self, py: Python<'_>, id: u64, kill_running: bool) -> u8 {
        match py.detach(|| self.inner.cancel(id, kill_running)) {
            CancelOutcome::NotFound => 0,
            CancelOutcome::Cancelled => 1,
            CancelOutcome::Running => 2,
            CancelOutcome::Killed => 3,
        }
    }

    /// The next batch: `(started ids, completions)`, the starts to apply first; empty lists on
    /// timeout, `None` once shut down and drained.
    #[pyo3(signature = (timeout=None))]
    fn completions<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<PyBatch<'py>>> {
        let timeout = convert::timeout(timeout)?;
        let (result, pending) = blocking(py, timeout, |wait| self.inner.events(wait));
        match result {
            Ok(batch) => {
                let done = batch
                    .done
                    .into_iter()
                    .map(|c| completion(py, c))
                    .collect::<PyResult<_>>()?;
                Ok(Some((batch.started, done)))
            }
            Err(RecvError::Timeout) => Ok(Some((Vec::new(), Vec::new()))),
            Err(RecvError::Disconnected) => Ok(None),
            Err(e) => Err(PyEngineError::Recv(e, pending).into()),
        }
    }

    /// Stops accepting tasks; never blocks. Returns the ids it cancelled.
    fn shutdown(&self, py: Python<'_>, cancel_pending: bool, kill_running: bool) -> Vec<u64> {
        py.detach(|| self.inner.shutdown(cancel_pending, kill_running))
    }

    /// Waits for every slot thread to exit; `False` on timeout.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = convert::timeout(timeout)?;
        let (joined, pending) = blocking(py, timeout, |wait| self.inner.join(wait));
        match pending {
            Some(e) => Err(e),
            None => Ok(joined),
        }
    }

    /// Whether the task is the head of a worker's pipeline now (running, or next to run).
    fn is_running(&self, py: Python<'_>, id: u64) -> bool {
        py.detach(|| self.inner.is_running(id))
    }

    /// Pids of the workers the pool holds now.
    fn pids(&self, py: Python<'_>) -> Vec<u32> {
        py.detach(|| self.inner.pids())
    }

    /// Tasks waiting in the queue.
    fn queued(&self, py: Python<'_>) -> usize {
        py.detach(|| self.inner.queued())
    }
}
