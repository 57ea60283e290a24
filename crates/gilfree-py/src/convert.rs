//! Argument conversion and the signal check shared by every blocking call.

use std::ops::ControlFlow;
use std::time::Duration;

use gilfree_core::Wait;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Bytes per ring direction when Python does not say otherwise: big enough that typical task
/// payloads go through in one piece, small enough to pre-touch cheaply at spawn.
pub const RING_CAPACITY_DEFAULT: usize = 1 << 20;

/// A timeout in seconds from Python: `None` is forever; negative is an error, as in `threading`.
pub fn timeout(secs: Option<f64>) -> PyResult<Option<Duration>> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_nan() || s < 0.0 => Err(PyValueError::new_err(
            "timeout value must be a non-negative number",
        )),
        Some(s) => Ok(Some(
            Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX),
        )),
    }
}

/// Runs a blocking core call with the GIL released and Ctrl-C honoured: `f` gets a [`Wait`]
/// with `timeout` and the signal check. Returns what `f` returned and the error (a
/// `KeyboardInterrupt`, say) the signal check raised, if any.
pub fn blocking<T: Send>(
    py: Python<'_>,
    timeout: Option<Duration>,
    f: impl FnOnce(&mut Wait<'_>) -> T + Send,
) -> (T, Option<PyErr>) {
    let mut signals = SignalCheck::new();
    let result = py.detach(|| {
        let mut check = || signals.check();
        let mut wait = Wait::timeout(timeout).with_signal_check(&mut check);
        f(&mut wait)
    });
    (result, signals.pending.take())
}

/// Runs `PyErr_CheckSignals` for a wait that has the GIL released: keeps the first error
/// (a `KeyboardInterrupt`, say) in `pending` and tells the wait to stop.
pub struct SignalCheck {
    pub pending: Option<PyErr>,
}

impl SignalCheck {
    pub fn new() -> Self {
        SignalCheck { pending: None }
    }

    pub fn check(&mut self) -> ControlFlow<()> {
        match Python::attach(|py| py.check_signals()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                self.pending = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}
