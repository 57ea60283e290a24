//! `Endpoint`: the worker process's side of its channel to the parent.

use gilfree_core::pool::worker_main::Endpoint;
use gilfree_core::{RecvError, SendError, Wait};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::errors::PyEngineError;
use crate::values;

/// The worker's end of the link to its parent; made once per worker process.
#[pyclass(name = "Endpoint", module = "gilfree._engine", frozen)]
pub struct PyEndpoint {
    inner: Endpoint,
}

#[pymethods]
impl PyEndpoint {
    /// Opens the channel the parent handed down, arms the parent-death signal, and tells the
    /// parent this worker is ready.
    #[staticmethod]
    fn from_env(py: Python<'_>) -> Result<Self, PyEngineError> {
        let inner = py.detach(Endpoint::from_env)?;
        Ok(PyEndpoint { inner })
    }

    /// The next message from the parent, or `None` once the parent is gone.
    fn recv<'py>(&self, py: Python<'py>) -> Result<Option<Bound<'py, PyBytes>>, PyEngineError> {
        match py.detach(|| self.inner.recv(&mut Wait::forever())) {
            Ok(msg) => Ok(Some(PyBytes::new(py, &msg))),
            Err(RecvError::Disconnected) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends one message to the parent. Returns `False` if the parent is gone. With
    /// `flush=False` the parent is not woken if it sleeps (call `flush()` later).
    #[pyo3(signature = (data, flush=true))]
    fn send(&self, py: Python<'_>, data: &[u8], flush: bool) -> Result<bool, PyEngineError> {
        // A frame that fits goes in without releasing the GIL: for a chunk of tiny items,
        // releasing and retaking it would cost more than the item itself.
        if !flush {
            match self.inner.try_send_deferred(data) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(SendError::Disconnected) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        let result = py.detach(|| {
            let mut wait = Wait::forever();
            if flush {
                self.inner.send(data, &mut wait)
            } else {
                self.inner.send_deferred(data, &mut wait)
            }
        });
        match result {
            Ok(()) => Ok(true),
            Err(SendError::Disconnected) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs a chunk of tiny calls from Rust, each plain result sent as its own frame (see
    /// [`values::send_results`]): `(state, index, value)`.
    #[pyo3(signature = (func, items, star, start=0))]
    fn send_results<'py>(
        &self,
        py: Python<'py>,
        func: &Bound<'py, PyAny>,
        items: &Bound<'py, PyList>,
        star: bool,
        start: usize,
    ) -> Result<(u8, usize, Option<Bound<'py, PyAny>>), PyEngineError> {
        values::send_results(py, &self.inner, func, items, star, start)
    }

    /// Wakes the parent if `send(..., flush=False)` left it asleep. Cheap when not.
    fn flush(&self, py: Python<'_>) -> Result<(), PyEngineError> {
        Ok(py.detach(|| self.inner.flush())?)
    }
}
