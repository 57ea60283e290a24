//! The process-shared primitives (`gilfree.Lock`, `Event`, ...): thin subclassable wrappers
//! over `gilfree_core::ipc`. The Python classes in `gilfree/sync.py` subclass these and add
//! pickling and docstrings. Uncontended calls stay under the GIL (no system call is made);
//! anything that may block runs in `py.detach` with a signal check.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use gilfree_core::ipc::arena::{Arena, Handle};
use gilfree_core::ipc::barrier::{Arrival, ShmBarrier, ShmCell};
use gilfree_core::ipc::condition::{Condition, ShmCondition};
use gilfree_core::ipc::error::{AcquireError, Acquired, GetError, PutError};
use gilfree_core::ipc::event::{Event, ShmEvent};
use gilfree_core::ipc::lock::{RawLock, ShmLock};
use gilfree_core::ipc::queue::{ByteQueue, ShmQueue};
use gilfree_core::ipc::semaphore::{Semaphore, ShmSemaphore};
use pyo3::prelude::*;

use crate::convert::{self, blocking};
use crate::errors::{OwnerDiedError, PyEngineError};

/// The shared-primitive arena of this process tree.
#[pyclass(name = "Arena", module = "gilfree._engine", frozen)]
pub struct PyArena {
    pub(crate) inner: Arc<Arena>,
}

#[pymethods]
impl PyArena {
    /// A fresh arena (in the parent).
    #[staticmethod]
    fn create() -> Result<Self, PyEngineError> {
        Ok(PyArena {
            inner: Arena::create()?,
        })
    }

    /// The arena this worker inherited (`GILFREE_ARENA_FD`), or `None`.
    #[staticmethod]
    fn inherited() -> Result<Option<Self>, PyEngineError> {
        Ok(Arena::from_env()?.map(|inner| PyArena { inner }))
    }

    /// The arena's memfd number.
    #[getter]
    fn fd(&self) -> i32 {
        self.inner.fd().as_raw_fd()
    }

    /// Live slots (primitives) in the arena.
    fn live_slots(&self) -> usize {
        self.inner.live_slots()
    }

    /// Chunks of the shared heap in use (queues' and containers' bytes; tests, diagnostics).
    fn heap_chunks_in_use(&self) -> usize {
        self.inner.heap().map_or(0, |h| h.chunks_in_use())
    }

    /// Gives back what the dead process `pid` held (the engine does this itself).
    fn reap(&self, py: Python<'_>, pid: u32) {
        py.detach(|| self.inner.reap(pid));
    }
}

fn owner_died(py: Python<'_>, got: Acquired) -> PyResult<()> {
    if got == Acquired::OwnerDied {
        PyErr::warn(
            py,
            &py.get_type::<OwnerDiedError>(),
            c"the previous owner of this gilfree lock died holding it; the data it guards may be inconsistent",
            1,
        )?;
    }
    Ok(())
}

/// `Lock` and `RLock`.
#[pyclass(name = "Lock", module = "gilfree._engine", frozen, subclass, weakref)]
pub struct PyLock {
    pub(crate) inner: ShmLock,
}

#[pymethods]
impl PyLock {
    #[new]
    #[pyo3(signature = (arena, handle=None, recursive=false))]
    fn new(
        arena: &PyArena,
        handle: Option<Handle>,
        recursive: bool,
    ) -> Result<Self, PyEngineError> {
        let inner = match handle {
            Some(h) => ShmLock::attach(&arena.inner, h),
            None => ShmLock::new(&arena.inner, recursive),
        };
        Ok(PyLock { inner: inner? })
    }

    /// The handle that pickling sends.
    #[getter]
    fn handle(&self) -> Handle {
        self.inner.handle()
    }

    /// Takes the lock, waiting at most `timeout` seconds (`None`: forever; `0`: not at all),
    /// checked by `Lock.acquire` in Python.
    #[pyo3(signature = (timeout=None))]
    fn _acquire(&self, py: Python<'_>, timeout: Option<f64>) -> Result<bool, PyEngineError> {
        let timeout = convert::secs(timeout)?;
        let got = match self.inner.try_acquire()? {
            Some(got) => got,
            None => {
                if timeout == Some(Duration::ZERO) {
                    return Ok(false);
                }
                match blocking_acquire(py, &self.inner, timeout)? {
                    Some(got) => got,
                    None => return Ok(false),
                }
            }
        };
        owner_died(py, got)?;
        Ok(true)
    }

    /// `threading.Lock.release`.
    fn release(&self) -> Result<(), PyEngineError> {
        self.inner
            .release()
            .map_err(|e| PyEngineError::release(e, self.inner.is_recursive()))
    }

    /// Whether any thread holds the lock.
    fn locked(&self) -> bool {
        self.inner.locked()
    }

    fn __enter__(&self, py: Python<'_>) -> Result<bool, PyEngineError> {
        self._acquire(py, None)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> Result<(), PyEngineError> {
        self.release()
    }

    /// How many times the calling thread holds the lock (`threading.RLock._recursion_count`).
    fn _recursion_count(&self) -> u32 {
        self.inner.recursion_count()
    }

    /// Whether the calling thread holds the lock (`Condition` uses it).
    fn _is_owned(&self) -> bool {
        self.inner.is_owned()
    }

    /// Releases the lock completely and returns its recursion depth (`Condition`).
    fn _release_save(&self) -> Result<u32, PyEngineError> {
        self.inner
            .release_save()
            .map_err(|e| PyEngineError::release(e, self.inner.is_recursive()))
    }

    /// Takes the lock again at a saved depth (`Condition`).
    fn _acquire_restore(&self, py: Python<'_>, depth: u32) -> Result<(), PyEngineError> {
        let got = py.detach(|| self.inner.acquire_restore(depth));
        Ok(owner_died(py, got)?)
    }
}

fn blocking_acquire(
    py: Python<'_>,
    lock: &ShmLock,
    timeout: Option<Duration>,
) -> Result<Option<Acquired>, PyEngineError> {
    match blocking(py, timeout, |w| lock.acquire(w)) {
        (Ok(got), _) => Ok(Some(got)),
        (Err(AcquireError::Timeout), _) => Ok(None),
        (Err(e), pending) => Err(PyEngineError::waited(e, pending)),
    }
}

/// `Event`.
#[pyclass(name = "Event", module = "gilfree._engine", frozen, subclass, weakref)]
pub struct PyEvent {
    inner: ShmEvent,
}

#[pymethods]
impl PyEvent {
    #[new]
    #[pyo3(signature = (arena, handle=None))]
    fn new(arena: &PyArena, handle: Option<Handle>) -> Result<Self, PyEngineError> {
        let inner = match handle {
            Some(h) => ShmEvent::attach(&arena.inner, h),
            None => ShmEvent::new(&arena.inner),
        };
        Ok(PyEvent { inner: inner? })
    }

    /// The handle that pickling sends.
    #[getter]
    fn handle(&self) -> Handle {
        self.inner.handle()
    }

    /// Sets the flag and wakes every waiter.
    fn set(&self) {
        self.inner.set();
    }

    /// Clears the flag.
    fn clear(&self) {
        self.inner.clear();
    }

    /// Whether the flag is set.
    fn is_set(&self) -> bool {
        self.inner.is_set()
    }

    /// Threads of any process blocked in `wait` right now (tests, diagnostics).
    fn _waiters(&self) -> u32 {
        self.inner.waiters()
    }

    /// Waits until the flag is set or `timeout` seconds pass (checked by `Event.wait` in
    /// Python); returns the flag.
    #[pyo3(signature = (timeout=None))]
    fn _wait(&self, py: Python<'_>, timeout: Option<f64>) -> Result<bool, PyEngineError> {
        if self.inner.is_set() {
            return Ok(true);
        }
        let timeout = convert::secs(timeout)?;
        match blocking(py, timeout, |w| self.inner.wait(w)) {
            (Ok(set), _) => Ok(set),
            (Err(e), pending) => Err(PyEngineError::waited(e, pending)),
        }
    }
}

/// `Semaphore` and `BoundedSemaphore`.
#[pyclass(
    name = "Semaphore",
    module = "gilfree._engine",
    frozen,
    subclass,
    weakref
)]
pub struct PySemaphore {
    inner: ShmSemaphore,
}

#[pymethods]
impl PySemaphore {
    #[new]
    #[pyo3(signature = (arena, value=1, bounded=false, handle=None))]
    fn new(
        arena: &PyArena,
        value: u32,
        bounded: bool,
        handle: Option<Handle>,
    ) -> Result<Self, PyEngineError> {
        let inner = match handle {
            Some(h) => ShmSemaphore::attach(&arena.inner, h),
            None => ShmSemaphore::new(&arena.inner, value, bounded),
        };
        Ok(PySemaphore { inner: inner? })
    }

    /// The handle that pickling sends.
    #[getter]
    fn handle(&self) -> Handle {
        self.inner.handle()
    }

    /// Takes a permit if one is free, without waiting.
    fn _try_acquire(&self) -> bool {
        self.inner.try_acquire()
    }

    /// Takes a permit, waiting at most `timeout` seconds (`None`: forever), checked by
    /// `Semaphore.acquire` in Python.
    #[pyo3(signature = (timeout=None))]
    fn _acquire(&self, py: Python<'_>, timeout: Option<f64>) -> Result<bool, PyEngineError> {
        if self.inner.try_acquire() {
            return Ok(true);
        }
        let timeout = convert::secs(timeout)?;
        match convert::blocking(py, timeout, |w| self.inner.acquire(w)) {
            (Ok(got), _) => Ok(got),
            (Err(e), pending) => Err(PyEngineError::waited(e, pending)),
        }
    }

    /// Gives back `n` permits (at least one, checked by `Semaphore.release` in Python).
    fn _release(&self, n: u32) -> Result<(), PyEngineError> {
        self.inner
            .release(n)
            .map_err(|e| PyEngineError::release(e, false))
    }

    fn __enter__(&self, py: Python<'_>) -> Result<bool, PyEngineError> {
        self._acquire(py, None)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> Result<(), PyEngineError> {
        self._release(1)
    }

    /// Free permits right now.
    #[getter]
    fn _value(&self) -> u32 {
        self.inner.value()
    }

    /// The value the semaphore was created with (a `BoundedSemaphore`'s limit).
    #[getter]
    fn _initial_value(&self) -> u32 {
        self.inner.initial()
    }
}

/// The wait word of a `Condition` (its lock is a separate `Lock`).
#[pyclass(name = "Condition", module = "gilfree._engine", frozen, subclass)]
pub struct PyCondition {
    inner: ShmCondition,
}

#[pymethods]
impl PyCondition {
    #[new]
    #[pyo3(signature = (arena, handle=None))]
    fn new(arena: &PyArena, handle: Option<Handle>) -> Result<Self, PyEngineError> {
        let inner = match handle {
            Some(h) => ShmCondition::attach(&arena.inner, h),
            None => ShmCondition::new(&arena.inner),
        };
        Ok(PyCondition { inner: inner? })
    }

    /// The handle that pickling sends.
    #[getter]
    fn handle(&self) -> Handle {
        self.inner.handle()
    }

    /// Releases `lock`, waits for a notify or `timeout` (checked in Python), re-takes `lock`;
    /// `True` if notified.
    #[pyo3(signature = (lock, timeout=None))]
    fn _wait(
        &self,
        py: Python<'_>,
        lock: &PyLock,
        timeout: Option<f64>,
    ) -> Result<bool, PyEngineError> {
        let timeout = convert::secs(timeout)?;
        match blocking(py, timeout, |w| self.inner.wait(&lock.inner, w)) {
            (Ok(notified), _) => Ok(notified),
            (Err(e), pending) => Err(PyEngineError::waited(e, pending)),
        }
    }

    /// Wakes up to `n` waiters (the caller holds the lock).
    fn _notify(&self, n: u32) {
        self.inner.notify(n);
    }
}

/// `Barrier` (the action runs in Python, between `_wait` returning last and `_finish`).
#[pyclass(name = "Barrier", module = "gilfree._engine", frozen, subclass)]
pub struct PyBarrier {
    inner: ShmBarrier,
}

#[pymethods]
impl PyBarrier {
    #[new]
    #[pyo3(signature = (arena, parties=1, handle=None))]
    fn new(arena: &PyArena, parties: u32, handle: Option<Handle>) -> Result<Self, PyEngineError> {
        let inner = match handle {
            Some(h) => ShmBarrier::attach(&arena.inner, h),
            None => ShmBarrier::new(&arena.inner, parties),
        };
        Ok(PyBarrier { inner: inner? })
    }

    /// The handle that pickling sends.
    #[getter]
    fn handle(&self) -> Handle {
        self.inner.handle()
    }

    /// Arrives; returns `(index, is_last)`. The last arrival must call `_finish`. `timeout`
    /// is checked in Python.
    #[pyo3(signature = (timeout=None))]
    fn _wait(&self, py: Python<'_>, timeout: Option<f64>) -> Result<(u32, bool), PyEngineError> {
        let timeout = convert::secs(timeout)?;
        match blocking(py, timeout, |w| self.inner.body().wait(w)) {
            (Ok(Arrival::Index(i)), _) => Ok((i, false)),
            (Ok(Arrival::Last(i)), _) => Ok((i, true)),
            (Err(e), pending) => Err(PyEngineError::waited(e, pending)),
        }
    }

    /// Releases the other parties (`ok`) or breaks the barrier.
    fn _finish(&self, py: Python<'_>, ok: bool) {
        py.detach(|| self.inner.body().finish(ok));
    }

    /// `threading.Barrier.reset`.
    fn reset(&self, py: Python<'_>) {
        py.detach(|| self.inner.body().reset());
    }

    /// `threading.Barrier.abort`.
    fn abort(&self, py: Python<'_>) {
        py.detach(|| self.inner.body().break_barrier());
    }

    /// The number of parties.
    #[getter]
    fn parties(&self) -> u32 {
        self.inner.body().parties()
    }

    /// Threads waiting for the barrier to fill.
    #[getter]
    fn n_waiting(&self, py: Python<'_>) -> u32 {
        py.detach(|| self.inner.body().n_waiting())
    }

    /// Whether the barrier is broken.
    #[getter]
    fn broken(&self) -> bool {
        self.inner.body().broken()
    }
}

/// A `Value`'s 8-byte storage.
#[pyclass(name = "Cell", module = "gilfree._engine", frozen, subclass)]
pub struct PyCell {
    inner: ShmCell,
}

#[pymethods]
impl PyCell {
    #[new]
    #[pyo3(signature = (arena, bits=0, handle=None))]
    fn new(arena: &PyArena, bits: u64, handle: Option<Handle>) -> Result<Self, PyEngineError> {
        let inner = match handle {
            Some(h) => ShmCell::attach(&arena.inner, h),
            None => ShmCell::new(&arena.inner, bits),
        };
        Ok(PyCell { inner: inner? })
    }

    /// The handle that pickling sends.
    #[getter]
    fn handle(&self) -> Handle {
        self.inner.handle()
    }

    /// The stored bits.
    fn _load(&self) -> u64 {
        self.inner.load()
    }

    /// Replaces the stored bits.
    fn _store(&self, bits: u64) {
        self.inner.store(bits);
    }
}

/// `Queue`'s byte-string core (pickling and `queue.Empty`/`Full` live in Python).
#[pyclass(name = "Queue", module = "gilfree._engine", frozen, subclass)]
pub struct PyQueue {
    inner: ShmQueue,
}

#[pymethods]
impl PyQueue {
    #[new]
    #[pyo3(signature = (arena, maxsize=0, maxbytes=64 << 20, handle=None))]
    fn new(
        arena: &PyArena,
        maxsize: usize,
        maxbytes: usize,
        handle: Option<Handle>,
    ) -> Result<Self, PyEngineError> {
        let inner = match handle {
            Some(h) => ShmQueue::attach(&arena.inner, h),
            None => ShmQueue::new(&arena.inner, maxsize, maxbytes),
        };
        Ok(PyQueue { inner: inner? })
    }

    /// The handle that pickling sends.
    #[getter]
    fn handle(&self) -> Handle {
        self.inner.handle()
    }

    /// Appends `item`; `False` if the queue stayed full (no blocking, or the timeout passed).
    /// `timeout` is checked in Python (`queue.Queue`'s rules).
    #[pyo3(signature = (item, block=true, timeout=None))]
    fn _put(
        &self,
        py: Python<'_>,
        item: &[u8],
        block: bool,
        timeout: Option<f64>,
    ) -> Result<bool, PyEngineError> {
        let timeout = convert::secs(timeout)?;
        match blocking(py, timeout, |w| self.inner.put(item, block, w)) {
            (Ok(()), _) => Ok(true),
            (Err(PutError::Full), _) => Ok(false),
            (Err(e), pending) => Err(PyEngineError::waited(e, pending)),
        }
    }

    /// Takes the oldest item; `None` if the queue stayed empty.
    #[pyo3(signature = (block=true, timeout=None))]
    fn _get<'py>(
        &self,
        py: Python<'py>,
        block: bool,
        timeout: Option<f64>,
    ) -> Result<Option<Bound<'py, pyo3::types::PyBytes>>, PyEngineError> {
        let timeout = convert::secs(timeout)?;
        match blocking(py, timeout, |w| self.inner.get(block, w)) {
            (Ok(item), _) => Ok(Some(pyo3::types::PyBytes::new(py, &item))),
            (Err(GetError::Empty), _) => Ok(None),
            (Err(e), pending) => Err(PyEngineError::waited(e, pending)),
        }
    }

    /// `queue.Queue.task_done`.
    fn task_done(&self, py: Python<'_>) -> Result<(), PyEngineError> {
        Ok(py.detach(|| self.inner.task_done())?)
    }

    /// `queue.Queue.join`: waits until every item put has been marked done.
    fn join(&self, py: Python<'_>) -> Result<(), PyEngineError> {
        match blocking(py, None, |w| self.inner.join(w)) {
            (Ok(()), _) => Ok(()),
            (Err(e), pending) => Err(PyEngineError::waited(e, pending)),
        }
    }

    /// Items in the queue right now.
    fn qsize(&self) -> usize {
        self.inner.len()
    }

    /// `maxsize` (0: no item limit).
    #[getter]
    fn maxsize(&self) -> usize {
        self.inner.maxsize()
    }

    /// `task_done` calls still owed.
    #[getter]
    fn unfinished_tasks(&self) -> u64 {
        self.inner.unfinished()
    }

    /// The TID of the thread holding the queue's lock, 0 if free (tests).
    fn _lock_owner(&self) -> u32 {
        self.inner.lock_owner()
    }

    /// How many times a dead holder's half-done work was cleaned up (tests, diagnostics).
    fn _recoveries(&self) -> u32 {
        self.inner.recoveries()
    }
}
