//! `TaskPool`: the task scheduler under `gilfree.Pool`.

use gilfree_core::pool::{
    CancelOutcome, Completion, Death, End, PoolConfig, SubmitError, SubmitManyError, Task, TaskPool,
};
use gilfree_core::RecvError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use pyo3::IntoPyObjectExt;

use crate::convert::{self, blocking};
use crate::engine::PyEngine;
use crate::errors::PyEngineError;
use crate::values;

/// A FIFO queue of opaque tasks, run on `workers` worker processes of an `Engine`.
#[pyclass(name = "TaskPool", module = "gilfree._engine", frozen)]
pub struct PyTaskPool {
    inner: TaskPool,
}

// How a task ended ([`End`]), as the `end` of a completion, and what `cancel` did
// ([`CancelOutcome`]). `lib.rs` exports them as `_engine.END_*` and `_engine.CANCEL_*`, so
// Python names them instead of mirroring the numbers.
/// [`End::Done`].
pub const END_DONE: u8 = 0;
/// [`End::Crashed`].
pub const END_CRASHED: u8 = 1;
/// [`End::TimedOut`].
pub const END_TIMED_OUT: u8 = 2;
/// [`End::Cancelled`].
pub const END_CANCELLED: u8 = 3;
/// [`End::Broken`].
pub const END_BROKEN: u8 = 4;
/// [`CancelOutcome::NotFound`].
pub const CANCEL_NOT_FOUND: u8 = 0;
/// [`CancelOutcome::Cancelled`]: it was queued.
pub const CANCEL_CANCELLED: u8 = 1;
/// [`CancelOutcome::Running`]: left alone.
pub const CANCEL_RUNNING: u8 = 2;
/// [`CancelOutcome::Killed`].
pub const CANCEL_KILLED: u8 = 3;

/// One completion as Python sees it: `(id, frames, end, info, values)`; `info` is `(pid,
/// exitcode, signal, death)` for `END_CRASHED`, with `death` the engine's wording of how the
/// worker died. `values`: for a finished task whose frames before the last (a chunk's items,
/// before its trailer) are all plain-value frames (`values.rs`), their values, and `frames`
/// holds only the last one; else `None`, and `frames` holds them all.
type PyCompletion<'py> = (
    u64,
    Vec<Bound<'py, PyBytes>>,
    u8,
    Py<PyAny>,
    Option<Bound<'py, PyList>>,
);

/// One batch as Python sees it: `(started ids, completions)`.
type PyBatch<'py> = (Vec<u64>, Vec<PyCompletion<'py>>);

fn completion(py: Python<'_>, c: Completion) -> Result<PyCompletion<'_>, PyEngineError> {
    let items = c.frames.len().saturating_sub(1);
    let values = match c.end {
        End::Done if items > 0 => values::decode_all(py, c.frames.iter().take(items))?,
        _ => None,
    };
    let skip = if values.is_some() { items } else { 0 };
    let frames = c
        .frames
        .iter()
        .skip(skip)
        .map(|f| PyBytes::new(py, f))
        .collect();
    let (end, info) = match c.end {
        End::Done => (END_DONE, py.None()),
        End::Crashed {
            pid,
            exit,
            attempts,
            peak_rss,
        } => {
            let death = Death { pid, exit }.to_string();
            let (code, signal) = (exit.and_then(|e| e.code), exit.and_then(|e| e.signal));
            let info = (pid, code, signal, attempts, peak_rss, death);
            (END_CRASHED, info.into_py_any(py)?)
        }
        End::TimedOut { pid } => (END_TIMED_OUT, pid.into_py_any(py)?),
        End::Cancelled => (END_CANCELLED, py.None()),
        End::Broken(frame) => (END_BROKEN, PyBytes::new(py, &frame).into_any().unbind()),
    };
    Ok((c.id, frames, end, info, values))
}

#[pymethods]
impl PyTaskPool {
    #[new]
    #[pyo3(signature = (engine, workers, init, max_tasks_per_worker, depth=2, max_memory=None, short_depth=0))]
    #[allow(clippy::too_many_arguments)] // one per field of `PoolConfig`, as Python passes them
    fn new(
        py: Python<'_>,
        engine: &Bound<'_, PyEngine>,
        workers: usize,
        init: Option<Vec<u8>>,
        max_tasks_per_worker: Option<u64>,
        depth: usize,
        max_memory: Option<u64>,
        short_depth: usize,
    ) -> Self {
        let engine = engine.get().inner.clone();
        let config = PoolConfig {
            workers,
            init,
            max_tasks_per_worker,
            depth,
            short_depth,
            max_memory,
            ..PoolConfig::default()
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
        id: u64,
        payload: &[u8],
        frames: u32,
        timeout: Option<f64>,
        report_start: bool,
        retries: u32,
    ) -> Result<(), PyEngineError> {
        let timeout = convert::secs(timeout)?;
        let task = Task {
            id,
            payload: payload.to_vec(),
            frames,
            timeout,
            report_start,
            retries,
        };
        // Never blocks (the scheduler's lock is never held across a wait, and no holder of it
        // waits for the GIL), so the GIL stays held: releasing it per tiny task would hand it
        // to another Python thread and wait to get it back.
        Ok(self.inner.submit(task)?)
    }

    /// Queues `(id, payload, frames, retries)` tasks in order, as `submit` would one by one
    /// (with the same `timeout`, and no start reports), under one lock: all, or none after
    /// shutdown.
    fn submit_many(
        &self,
        tasks: Vec<(u64, Bound<'_, PyBytes>, u32, u32)>,
        timeout: Option<f64>,
    ) -> Result<(), PyEngineError> {
        let timeout = convert::secs(timeout)?;
        let tasks = tasks
            .into_iter()
            .map(|(id, payload, frames, retries)| Task {
                id,
                payload: payload.as_bytes().to_vec(),
                frames,
                timeout,
                report_start: false,
                retries,
            })
            .collect();
        // Never blocks: see `submit`.
        self.inner.submit_many(tasks).map_err(|e| match e {
            SubmitManyError::ShutDown(tasks) => {
                let first = tasks.into_iter().next().unwrap_or_default();
                PyEngineError::from(SubmitError::ShutDown(first))
            }
        })
    }

    /// One of `CANCEL_NOT_FOUND`, `CANCEL_CANCELLED` (was queued), `CANCEL_RUNNING` (left
    /// alone) and `CANCEL_KILLED`.
    fn cancel(&self, py: Python<'_>, id: u64, kill_running: bool) -> u8 {
        match py.detach(|| self.inner.cancel(id, kill_running)) {
            CancelOutcome::NotFound => CANCEL_NOT_FOUND,
            CancelOutcome::Cancelled => CANCEL_CANCELLED,
            CancelOutcome::Running => CANCEL_RUNNING,
            CancelOutcome::Killed => CANCEL_KILLED,
        }
    }

    /// The next batch: `(started ids, completions)`, the starts to apply first; empty lists on
    /// timeout, `None` once shut down and drained.
    #[pyo3(signature = (timeout=None))]
    fn completions<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> Result<Option<PyBatch<'py>>, PyEngineError> {
        let timeout = convert::secs(timeout)?;
        let (result, pending) = blocking(py, timeout, |wait| self.inner.events(wait));
        match result {
            Ok(batch) => {
                let done = batch
                    .done
                    .into_iter()
                    .map(|c| completion(py, c))
                    .collect::<Result<_, _>>()?;
                Ok(Some((batch.started, done)))
            }
            Err(RecvError::Timeout) => Ok(Some((Vec::new(), Vec::new()))),
            Err(RecvError::Disconnected) => Ok(None),
            Err(e) => Err(PyEngineError::waited(e, pending)),
        }
    }

    /// Stops accepting tasks; never blocks. Returns the ids it cancelled.
    fn shutdown(&self, py: Python<'_>, cancel_pending: bool, kill_running: bool) -> Vec<u64> {
        py.detach(|| self.inner.shutdown(cancel_pending, kill_running))
    }

    /// Waits for every slot thread to exit; `False` on timeout.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> Result<bool, PyEngineError> {
        let timeout = convert::secs(timeout)?;
        let (joined, pending) = blocking(py, timeout, |wait| self.inner.join(wait));
        match pending {
            Some(e) => Err(e.into()),
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
