//! Plain values as frames of their own, and the worker's loop over a chunk of tiny calls.
//!
//! A tiny task's cost is its per-item Python: a loop step, a `pickle.dumps`, an `Endpoint.send`
//! in the worker, a `pickle.loads` and a `(True, value)` pair in the parent, about ten times the
//! call itself. Here the worker calls the function for each item from Rust and writes a result
//! that is a plain value (`None`, `bool`, an `int` that fits in 64 bits, `float`, `str`,
//! `bytes`, each of that exact type) straight into the ring as a frame of its own: a tag byte,
//! then the value. The parent turns a chunk of such frames into one list of values. Each item
//! still has its own frame, written as soon as it returns, so a worker that dies mid-chunk
//! loses no finished result (`_protocol`). Anything else goes back to Python, which pickles it
//! as before. Hand-written because it is a wire format of ours, three tags wide; no library
//! encodes Python scalars without the interpreter's pickle machinery.

use gilfree_core::pool::worker_main::Endpoint;
use gilfree_core::{SendError, Wait};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyComplex, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::errors::PyEngineError;

// The first byte of a plain-value frame. None of them starts a pickle stream (0x80), a failure
// frame (0x00) or an out-of-band envelope ("GFB1").
const TAG_NONE: u8 = 0x01;
const TAG_FALSE: u8 = 0x02;
const TAG_TRUE: u8 = 0x03;
const TAG_INT: u8 = 0x04;
const TAG_FLOAT: u8 = 0x05;
const TAG_STR: u8 = 0x06;
const TAG_BYTES: u8 = 0x07;

/// How [`send_results`] stopped: every item's frame is sent.
pub const RESULTS_DONE: u8 = 0;
/// The item at the returned index returned the returned value, which is not plain: Python
/// sends its frame.
pub const RESULTS_VALUE: u8 = 1;
/// The item at the returned index raised the returned exception: Python sends its frame.
pub const RESULTS_RAISED: u8 = 2;
/// The parent is gone.
pub const RESULTS_GONE: u8 = 3;

/// Writes `value`'s frame into `buf` (cleared first) if it is a plain value; `false` if not.
fn encode(value: &Bound<'_, PyAny>, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    if value.is_none() {
        buf.push(TAG_NONE);
    } else if value.is_exact_instance_of::<PyInt>() {
        // An int beyond 64 bits is pickled (the extraction's OverflowError is dropped).
        let Ok(v) = value.extract::<i64>() else {
            return false;
        };
        buf.push(TAG_INT);
        buf.extend_from_slice(&v.to_le_bytes());
    } else if value.is_exact_instance_of::<PyFloat>() {
        let Ok(v) = value.extract::<f64>() else {
            return false;
        };
        buf.push(TAG_FLOAT);
        buf.extend_from_slice(&v.to_le_bytes());
    } else if let Ok(b) = value.cast_exact::<PyBool>() {
        buf.push(if b.is_true() { TAG_TRUE } else { TAG_FALSE });
    } else if let Ok(s) = value.cast_exact::<PyString>() {
        // A str with lone surrogates has no UTF-8 form: pickle keeps it.
        let Ok(text) = s.to_str() else {
            return false;
        };
        buf.push(TAG_STR);
        buf.extend_from_slice(text.as_bytes());
    } else if let Ok(b) = value.cast_exact::<PyBytes>() {
        buf.push(TAG_BYTES);
        buf.extend_from_slice(b.as_bytes());
    } else {
        return false;
    }
    true
}

/// The value of a plain-value frame, or `None` if `frame` is not one.
fn decode<'py>(py: Python<'py>, frame: &[u8]) -> PyResult<Option<Bound<'py, PyAny>>> {
    let Some((&tag, rest)) = frame.split_first() else {
        return Ok(None);
    };
    let word = || -> Option<[u8; 8]> { rest.try_into().ok() };
    Ok(Some(match tag {
        TAG_NONE if rest.is_empty() => py.None().into_bound(py),
        TAG_FALSE if rest.is_empty() => PyBool::new(py, false).to_owned().into_any(),
        TAG_TRUE if rest.is_empty() => PyBool::new(py, true).to_owned().into_any(),
        TAG_INT => match word() {
            Some(w) => i64::from_le_bytes(w).into_pyobject(py)?.into_any(),
            None => return Ok(None),
        },
        TAG_FLOAT => match word() {
            Some(w) => PyFloat::new(py, f64::from_le_bytes(w)).into_any(),
            None => return Ok(None),
        },
        TAG_STR => match std::str::from_utf8(rest) {
            Ok(text) => PyString::new(py, text).into_any(),
            Err(_) => return Ok(None),
        },
        TAG_BYTES => PyBytes::new(py, rest).into_any(),
        _ => return Ok(None),
    }))
}

/// The values of `frames` if every one of them is a plain-value frame, else `None` (the
/// caller decodes frame by frame). The parent's side of a chunk of tiny tasks: its completion
/// carries these values instead of a bytes object per item.
pub fn decode_all<'py, 'f>(
    py: Python<'py>,
    frames: impl ExactSizeIterator<Item = &'f [u8]> + Clone,
) -> PyResult<Option<Bound<'py, PyList>>> {
    // Checked first, so that a chunk with one frame that is not plain costs no value objects.
    let plain = |f: &[u8]| {
        f.first()
            .is_some_and(|t| (TAG_NONE..=TAG_BYTES).contains(t))
    };
    if !frames.clone().all(plain) {
        return Ok(None);
    }
    let mut values = Vec::with_capacity(frames.len());
    for frame in frames {
        match decode(py, frame)? {
            Some(value) => values.push(value),
            None => return Ok(None),
        }
    }
    // Built at its size, each value moved in (no append, no extra reference count).
    PyList::new(py, values).map(Some)
}

/// The value of one plain-value frame, or `None` if `frame` is not one (then it is a pickle
/// stream, a failure frame or an envelope: `_protocol`).
#[pyfunction]
pub fn decode_value<'py>(
    py: Python<'py>,
    frame: &[u8],
) -> PyResult<(bool, Option<Bound<'py, PyAny>>)> {
    Ok(match decode(py, frame)? {
        Some(value) => (true, Some(value)),
        None => (false, None),
    })
}

/// Whether every item of a chunk (every argument of each, with `star`) is of exactly one of the
/// types plain pickle handles alike with `_serialize.dumps` (`None`, `bool`, `int`, `float`,
/// `complex`, `str`, `bytes`): the parent's check before pickling a chunk of tiny items, at a
/// few ns an item where a Python generator costs tens.
#[pyfunction]
pub fn all_plain(items: &Bound<'_, PyList>, star: bool) -> bool {
    let plain = |v: &Bound<'_, PyAny>| {
        v.is_none()
            || v.is_exact_instance_of::<PyInt>()
            || v.is_exact_instance_of::<PyFloat>()
            || v.is_exact_instance_of::<PyString>()
            || v.is_exact_instance_of::<PyBytes>()
            || v.is_exact_instance_of::<PyBool>()
            || v.is_exact_instance_of::<PyComplex>()
    };
    items.iter().all(|item| {
        if !star {
            return plain(&item);
        }
        match item.cast::<PyTuple>() {
            Ok(args) => args.iter().all(|a| plain(&a)),
            Err(_) => false,
        }
    })
}

/// The worker's loop over a chunk of calls: `fn(item)` (or `fn(*item)` with `star`) for
/// `items[start:]`, each plain result sent as its frame as soon as it returns (deferred: the
/// parent is not woken). Stops at the first item Python must handle: `(RESULTS_VALUE, index,
/// value)` for a result that is not plain, `(RESULTS_RAISED, index, exception)` when the call
/// raised; Python sends that item's frame and calls again from `index + 1`. `(RESULTS_DONE,
/// len, None)` once every item is sent; `(RESULTS_GONE, index, None)` if the parent went away.
pub fn send_results<'py>(
    py: Python<'py>,
    endpoint: &Endpoint,
    func: &Bound<'py, PyAny>,
    items: &Bound<'py, PyList>,
    star: bool,
    start: usize,
) -> Result<(u8, usize, Option<Bound<'py, PyAny>>), PyEngineError> {
    let mut buf = Vec::with_capacity(64);
    let mut index = start;
    // The list's length is read at each step: nothing else holds it, but a call could reach it
    // through gc and shrink it; then the chunk ends early, and the parent sees fewer frames.
    while index < items.len() {
        let item = items.get_item(index)?;
        let outcome = if star {
            match item.cast::<PyTuple>() {
                Ok(args) => func.call1(args.clone()),
                Err(_) => PyTuple::new(py, item.try_iter()?.collect::<PyResult<Vec<_>>>()?)
                    .and_then(|args| func.call1(args)),
            }
        } else {
            func.call1((item,))
        };
        let value = match outcome {
            Ok(value) => value,
            Err(err) => {
                return Ok((
                    RESULTS_RAISED,
                    index,
                    Some(err.into_value(py).into_bound(py).into_any()),
                ))
            }
        };
        if !encode(&value, &mut buf) {
            return Ok((RESULTS_VALUE, index, Some(value)));
        }
        drop(value);
        // A frame that fits goes in without releasing the GIL; a full ring waits for the
        // parent to read, the GIL released.
        let sent = match endpoint.try_send_deferred(&buf) {
            Ok(true) => Ok(()),
            Ok(false) => py.detach(|| endpoint.send_deferred(&buf, &mut Wait::forever())),
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {}
            Err(SendError::Disconnected) => return Ok((RESULTS_GONE, index, None)),
            Err(e) => return Err(e.into()),
        }
        index += 1;
    }
    Ok((RESULTS_DONE, index, None))
}
