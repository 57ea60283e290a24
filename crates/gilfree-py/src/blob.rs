//! `Blob`: the byte-string storage (an operation log) of `gilfree.SharedList` and `gilfree.SharedDict` (pickling,
//! caching and the container semantics live in `gilfree/shared_containers.py`).

use gilfree_core::ipc::arena::Handle;
use gilfree_core::ipc::blob::ShmBlob;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::PyEngineError;
use crate::sync::PyArena;

/// A replaceable byte string in shared memory, with a version that changes on every store.
#[pyclass(name = "Blob", module = "gilfree._engine", frozen)]
pub struct PyBlob {
    inner: ShmBlob,
}

#[pymethods]
impl PyBlob {
    #[new]
    #[pyo3(signature = (arena, handle=None))]
    fn new(arena: &PyArena, handle: Option<Handle>) -> Result<Self, PyEngineError> {
        let inner = match handle {
            Some(h) => ShmBlob::attach(&arena.inner, h),
            None => ShmBlob::new(&arena.inner),
        };
        Ok(PyBlob { inner: inner? })
    }

    /// The handle that pickling sends.
    #[getter]
    fn handle(&self) -> Handle {
        self.inner.handle()
    }

    /// Replaces the contents (old or new bytes are seen whole, even if the caller dies).
    fn store(&self, py: Python<'_>, data: &[u8]) -> Result<(), PyEngineError> {
        Ok(py.detach(|| self.inner.store(data))?)
    }

    /// Appends to the contents (nothing is published if the caller dies first).
    fn append(&self, py: Python<'_>, data: &[u8]) -> Result<(), PyEngineError> {
        Ok(py.detach(|| self.inner.append(data))?)
    }

    /// `(version, epoch, start, bytes)`: the bytes from `offset` on if `epoch` is still the
    /// current one (`start == offset`), else all of them (`start == 0`); one snapshot.
    fn read_from<'py>(
        &self,
        py: Python<'py>,
        epoch: u64,
        offset: usize,
    ) -> (u64, u64, usize, Bound<'py, PyBytes>) {
        let snap = py.detach(|| self.inner.read_from(epoch, offset));
        (
            snap.version,
            snap.epoch,
            snap.start,
            PyBytes::new(py, &snap.data),
        )
    }

    /// `(version, contents)`, one snapshot.
    fn read<'py>(&self, py: Python<'py>) -> (u64, Bound<'py, PyBytes>) {
        let (version, data) = py.detach(|| self.inner.read());
        (version, PyBytes::new(py, &data))
    }

    /// The current version (no lock): it changes whenever the contents may have.
    #[getter]
    fn version(&self) -> u64 {
        self.inner.version()
    }

    /// The length of the contents in bytes.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// How many times a dead writer's half-done store was cleaned up (tests, diagnostics).
    fn _recoveries(&self) -> u32 {
        self.inner.recoveries()
    }
}
