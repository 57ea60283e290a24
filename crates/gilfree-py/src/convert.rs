//! Argument conversion and the signal check shared by every blocking call.

use std::ops::ControlFlow;
use std::time::Duration;

use gilfree_core::Wait;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Bytes per ring direction when Python does not say otherwise: big enough that typical task
/// payloads go through in one piece, small enough to pre-touch cheaply at spawn.
pub const RING_CAPACITY_DEFAULT: usize = 1 << 20;

/// A wait Python has already checked (`None`: forever; else seconds, `0` for "do not wait"),
/// as a [`Duration`]. Every timeout rule lives in Python (`gilfree/_sync_args.py`): this only
/// converts. A value no rule lets through (negative, NaN, too long for a `Duration`) is a
/// `ValueError`, never a panic.
pub fn secs(secs: Option<f64>) -> PyResult<Option<Duration>> {
    secs.map(duration).transpose()
}

/// One checked number of seconds as a [`Duration`] (see [`secs`]).
pub fn duration(secs: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|e| PyValueError::new_err(e.to_string()))
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
