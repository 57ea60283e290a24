//! Argument conversion and the signal check shared by every blocking call.

use std::ops::ControlFlow;
use std::time::Duration;

use gilfree_core::Wait;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::PyEngineError;

/// Bytes per ring direction when Python does not say otherwise: big enough that typical task
/// payloads go through in one piece, small enough to pre-touch cheaply at spawn.
pub const RING_CAPACITY_DEFAULT: usize = 1 << 20;

/// `threading.TIMEOUT_MAX` on Linux (`PY_TIMEOUT_MAX` in seconds): an engine timeout beyond it
/// means no limit.
pub const TIMEOUT_MAX: f64 = 9_223_372_036.0;

/// A timeout for the engine's own waits (lease `recv`, a task's time limit, pool `completions`
/// and `join`, the engine's idle timeout): `None` is forever, negative or NaN is a
/// `ValueError`, and one beyond [`TIMEOUT_MAX`] (infinity included) waits forever. This is the
/// one rule for them; Python checks a timeout early with [`check_timeout`], which applies it.
/// (The `threading`-style primitives follow `threading`'s rules, which Python applies before
/// calling the glue: `gilfree/_sync_args.py`, then [`secs`].)
pub fn timeout(secs: Option<f64>) -> PyResult<Option<Duration>> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_nan() || s < 0.0 => Err(PyValueError::new_err(
            "timeout value must be a non-negative number",
        )),
        Some(s) if s > TIMEOUT_MAX => Ok(None),
        // Cannot fail: `s` is finite and in 0..=TIMEOUT_MAX.
        Some(s) => Ok(Some(Duration::from_secs_f64(s))),
    }
}

/// A wait Python has already checked (`None`: forever; else seconds, `0` for "do not wait"),
/// as a [`Duration`]. A value no check would pass (negative, NaN, too large) is a `ValueError`,
/// never a panic.
pub fn secs(secs: Option<f64>) -> PyResult<Option<Duration>> {
    secs.map(|s| Duration::try_from_secs_f64(s).map_err(|e| PyValueError::new_err(e.to_string())))
        .transpose()
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

/// Raises what [`timeout`] would for `timeout` (`gilfree.Pool` checks a task's time limit at the
/// call, before any task is queued).
#[pyfunction]
pub fn check_timeout(timeout: Option<f64>) -> Result<(), PyEngineError> {
    self::timeout(timeout)?;
    Ok(())
}
