//! Argument conversion and the signal check shared by every blocking call.

use std::ops::ControlFlow;
use std::time::Duration;

use gilfree_core::Wait;
use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;

use crate::errors::PyEngineError;

/// Bytes per ring direction when Python does not say otherwise: big enough that typical task
/// payloads go through in one piece, small enough to pre-touch cheaply at spawn.
pub const RING_CAPACITY_DEFAULT: usize = 1 << 20;

/// `threading.TIMEOUT_MAX` on Linux (`PY_TIMEOUT_MAX` in seconds): longer timeouts raise
/// `OverflowError`, as `threading`'s do.
pub const TIMEOUT_MAX: f64 = 9_223_372_036.0;

/// What a negative timeout means to the calling primitive (`threading` differs per call).
#[derive(Clone, Copy)]
pub enum Negative {
    /// An error with this message (`Queue.get`/`put`, the engine's own waits). NaN is an error
    /// too. (`Lock.acquire` has its own rule: [`lock_timeout`].)
    Reject(&'static str),
    /// Do not wait at all (`Event.wait`, `Condition.wait`, `Semaphore.acquire`,
    /// `Barrier.wait`: `threading` computes a remaining time and stops when it is <= 0). NaN
    /// counts as negative here, as `nan > 0` is false in `threading`'s checks.
    Zero,
}

/// A timeout for the engine's own waits (lease `recv`, a task's time limit, pool `completions`
/// and `join`, the engine's idle timeout): `None` is forever, negative or NaN is a
/// `ValueError`, and one beyond [`TIMEOUT_MAX`] (infinity included) waits forever. This is the
/// one rule for them; Python checks a timeout early with [`check_timeout`], which applies it.
/// (The `threading`-style primitives follow `threading`'s rules instead: [`sync_timeout`].)
pub fn timeout(secs: Option<f64>) -> PyResult<Option<Duration>> {
    match secs {
        Some(s) if s > TIMEOUT_MAX => Ok(None),
        _ => sync_timeout(
            secs,
            Negative::Reject("timeout value must be a non-negative number"),
        ),
    }
}

/// A timeout of a `threading`-style primitive (the rules `threading` applies): `None` is
/// forever; a negative timeout as `negative` says; beyond [`TIMEOUT_MAX`] (infinity
/// included) raises `OverflowError`.
pub fn sync_timeout(secs: Option<f64>, negative: Negative) -> PyResult<Option<Duration>> {
    let Some(s) = secs else { return Ok(None) };
    if s.is_nan() || s < 0.0 {
        return match negative {
            Negative::Reject(_) if s.is_nan() => {
                Err(PyValueError::new_err("Invalid value NaN (not a number)"))
            }
            Negative::Reject(msg) => Err(PyValueError::new_err(msg)),
            Negative::Zero => Ok(Some(Duration::ZERO)),
        };
    }
    if s > TIMEOUT_MAX {
        return Err(PyOverflowError::new_err("timeout value is too large"));
    }
    // Cannot fail: `s` is finite and in 0..=TIMEOUT_MAX.
    Ok(Some(Duration::from_secs_f64(s)))
}

/// `blocking`/`timeout` as `threading.Lock.acquire` takes them (`-1`: forever). `None`: do
/// not wait at all; `Some(t)`: wait for `t` (`None`: forever).
pub fn lock_timeout(
    py: Python<'_>,
    blocking: bool,
    timeout: f64,
) -> PyResult<Option<Option<Duration>>> {
    const FOREVER: f64 = -1.0;
    if timeout.is_nan() {
        return Err(PyValueError::new_err("Invalid value NaN (not a number)"));
    }
    // `threading` converts the timeout to its clock type first, so a huge negative one
    // overflows too.
    if timeout.abs() > TIMEOUT_MAX {
        return Err(PyOverflowError::new_err("timeout value is too large"));
    }
    if !blocking {
        if timeout != FOREVER {
            return Err(PyValueError::new_err(
                "can't specify a timeout for a non-blocking call",
            ));
        }
        return Ok(None);
    }
    if timeout == FOREVER {
        return Ok(Some(None));
    }
    if timeout < 0.0 {
        // CPython 3.13 reworded `threading`'s message. One abi3 build runs on every version,
        // so the running interpreter decides, not the one we were built for.
        let msg = if py.version_info() >= (3, 13) {
            "timeout value must be a non-negative number"
        } else {
            "timeout value must be positive"
        };
        return Err(PyValueError::new_err(msg));
    }
    // Cannot fail: `timeout` is finite and in 0..=TIMEOUT_MAX (checked above).
    Ok(Some(Some(Duration::from_secs_f64(timeout))))
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
