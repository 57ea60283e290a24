//! Bulk buffers: the glue of `gilfree._oob` over `gilfree_core::shm::bulk::hub` (envelopes of
//! out-of-band pickle buffers in shared segments). Conversion only: Python buffers to byte
//! slices, core views to writable Python buffers.
#![allow(unsafe_code)]

use std::ffi::c_int;

use gilfree_core::shm::bulk::hub::{self, UnpackError, View};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::errors::PyEngineError;

/// A writable view of bytes in a shared segment; the segment stays mapped (and pinned) while
/// this object, or any buffer exported from it, lives.
#[pyclass(name = "BulkView", module = "gilfree._engine", frozen)]
pub struct PyBulkView {
    inner: View,
}

#[pymethods]
impl PyBulkView {
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The address of the first byte (for tests and diagnostics).
    #[getter]
    fn address(&self) -> usize {
        self.inner.as_ptr() as usize
    }

    /// The id of the segment it lies in.
    #[getter]
    fn segment(&self) -> u64 {
        self.inner.segment_id()
    }

    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no Py_buffer to fill"));
        }
        let (ptr, len) = {
            let me = slf.get();
            (me.inner.as_ptr(), me.inner.len())
        };
        // SAFETY: `view` is the non-null Py_buffer CPython asks us to fill; `ptr..ptr + len`
        // lies in a segment mapped read-write, kept mapped by the `View` this object owns,
        // which the exported buffer keeps alive (PyBuffer_FillInfo takes a reference to
        // `slf` as the buffer's `obj`). Writes through it are shared memory by design.
        let r = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                ptr.cast(),
                len as pyo3::ffi::Py_ssize_t,
                0,
                flags,
            )
        };
        if r == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}
}

/// `(address, length)` of a C-contiguous buffer of bytes.
fn contiguous(buf: &PyBuffer<u8>) -> PyResult<(*const u8, usize)> {
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err("buffer is not contiguous"));
    }
    Ok((buf.buf_ptr() as *const u8, buf.len_bytes()))
}

/// Whether the bytes of `buffer` lie in a shared segment this process maps (so they go by
/// reference, whatever their size).
#[pyfunction]
pub fn bulk_is_shared(buffer: &Bound<'_, PyAny>) -> PyResult<bool> {
    let buf = PyBuffer::<u8>::get(buffer)?;
    let (ptr, len) = contiguous(&buf)?;
    Ok(len > 0 && hub::is_shared(ptr as usize, len))
}

/// The envelope of `buffers` (contiguous byte buffers, pickle's out-of-band ones) and the
/// pickle `stream`: shared buffers by reference, the others copied into one segment.
#[pyfunction]
pub fn bulk_pack<'py>(
    py: Python<'py>,
    buffers: Vec<Bound<'py, PyAny>>,
    stream: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyBytes>, PyErr> {
    let bufs = buffers
        .iter()
        .map(PyBuffer::<u8>::get)
        .collect::<PyResult<Vec<_>>>()?;
    let stream = PyBuffer::<u8>::get(stream)?;
    let mut raw = Vec::with_capacity(bufs.len());
    for b in &bufs {
        raw.push(contiguous(b)?);
    }
    let (sp, sl) = contiguous(&stream)?;
    let slices: Vec<&[u8]> = raw
        .iter()
        .map(|&(p, l)| {
            // SAFETY: each (ptr, len) is a C-contiguous buffer exported by a `PyBuffer` alive
            // until the end of this function, so the bytes stay valid while the slices live.
            // Other threads may write them meanwhile (as with any buffer copied without the
            // GIL); the copy then sees old or new bytes, never invalid memory.
            unsafe { slice_of(p, l) }
        })
        .collect();
    // SAFETY: as above, for the stream's buffer.
    let stream_bytes = unsafe { slice_of(sp, sl) };
    let out = py
        .detach(|| hub::pack(&slices, stream_bytes))
        .map_err(PyEngineError::from)?;
    Ok(PyBytes::new(py, &out))
}

/// A slice over `len` bytes at `ptr` (an empty slice for `len == 0`, whatever `ptr` is).
///
/// # Safety
/// For `len > 0`, `ptr..ptr + len` must be readable for the slice's lifetime.
unsafe fn slice_of<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// `(views, stream_offset)` of an envelope, or `None` if a segment it names was recycled,
/// freed, or never reached this process (the blob is stale).
#[pyfunction]
pub fn bulk_unpack<'py>(
    py: Python<'py>,
    blob: &Bound<'py, PyAny>,
) -> PyResult<Option<(Vec<PyBulkView>, usize)>> {
    let buf = PyBuffer::<u8>::get(blob)?;
    let (p, l) = contiguous(&buf)?;
    // SAFETY: a C-contiguous buffer exported by `buf`, alive until the end of this function.
    let bytes = unsafe { slice_of(p, l) };
    match py.detach(|| hub::unpack(bytes)) {
        Ok((views, at)) => Ok(Some((
            views
                .into_iter()
                .map(|inner| PyBulkView { inner })
                .collect(),
            at,
        ))),
        Err(UnpackError::Stale) => Ok(None),
        Err(UnpackError::Malformed) => Err(PyValueError::new_err("malformed shared-memory blob")),
    }
}

/// Withdraws the tickets of an envelope this process made and will never send.
#[pyfunction]
pub fn bulk_discard(blob: &[u8]) {
    hub::discard(blob);
}

/// A new zero-filled shared segment of `nbytes` (a `SharedArray`'s memory), as one view.
#[pyfunction]
pub fn bulk_shared(py: Python<'_>, nbytes: usize) -> Result<PyBulkView, PyEngineError> {
    let inner = py.detach(|| hub::shared(nbytes))?;
    Ok(PyBulkView { inner })
}

/// What this process holds: `segments`, `bytes`, `free`, `pinned` (unclaimed tickets),
/// `mapped` (other processes' segments viewed here), `known`, `shared`.
#[pyfunction]
pub fn bulk_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let st = hub::stats();
    let d = PyDict::new(py);
    d.set_item("segments", st.segments)?;
    d.set_item("bytes", st.bytes)?;
    d.set_item("free", st.free)?;
    d.set_item("pinned", st.pinned)?;
    d.set_item("mapped", st.mapped)?;
    d.set_item("known", st.known)?;
    d.set_item("shared", st.shared)?;
    Ok(d)
}

/// The envelope magic (a pickle stream never starts with it).
pub const BULK_MAGIC: &[u8; 4] = hub::ENVELOPE_MAGIC;
