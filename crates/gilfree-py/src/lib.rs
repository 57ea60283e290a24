//! `gilfree._engine`: the PyO3 glue over `gilfree-core`.
//!
//! No logic lives here: each method converts its arguments, calls the core (with the GIL
//! released whenever it can block), and maps the error through [`errors`].
// Exempt from clippy.toml's loom seam (std's sync types only through `gilfree_core::sync`): this
// crate has no loom models and is never built under `--cfg loom`; its locks guard handles only.
#![allow(clippy::disallowed_types)]

mod blob;
mod bulk;
mod convert;
mod endpoint;
mod engine;
mod errors;
mod pool;
mod sync;
mod template;
mod values;

use pyo3::prelude::*;

/// The native half of gilfree. Private: use the `gilfree` package.
///
/// `gil_used = false`: on a free-threaded CPython (3.13t, 3.14t) importing this module leaves the
/// GIL off. That is sound because every class is a `frozen` pyclass over `gilfree-core` types that
/// are `Sync` (their own atomics and locks, shared across processes, so across threads too), and
/// the crate keeps no statics, caches or other state that only the GIL would guard.
#[pymodule(gil_used = false)]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<engine::PyLease>()?;
    m.add_class::<endpoint::PyEndpoint>()?;
    m.add_class::<pool::PyTaskPool>()?;
    m.add_class::<sync::PyArena>()?;
    m.add_class::<sync::PyLock>()?;
    m.add_class::<sync::PyEvent>()?;
    m.add_class::<sync::PySemaphore>()?;
    m.add_class::<sync::PyCondition>()?;
    m.add_class::<sync::PyBarrier>()?;
    m.add_class::<sync::PyCell>()?;
    m.add_class::<sync::PyQueue>()?;
    m.add_class::<blob::PyBlob>()?;
    m.add_class::<bulk::PyBulkView>()?;
    m.add_function(wrap_pyfunction!(bulk::bulk_is_shared, m)?)?;
    m.add_function(wrap_pyfunction!(bulk::bulk_pack, m)?)?;
    m.add_function(wrap_pyfunction!(bulk::bulk_unpack, m)?)?;
    m.add_function(wrap_pyfunction!(bulk::bulk_discard, m)?)?;
    m.add_function(wrap_pyfunction!(bulk::bulk_shared, m)?)?;
    m.add_function(wrap_pyfunction!(bulk::bulk_stats, m)?)?;
    m.add(
        "BULK_MAGIC",
        pyo3::types::PyBytes::new(m.py(), bulk::BULK_MAGIC),
    )?;
    m.add_function(wrap_pyfunction!(template::template_serve, m)?)?;
    m.add_function(wrap_pyfunction!(template::prestart_template, m)?)?;
    m.add_function(wrap_pyfunction!(template::cancel_prestart, m)?)?;
    m.add_function(wrap_pyfunction!(template::prestarted_pid, m)?)?;
    m.add_function(wrap_pyfunction!(engine::block_async_signals, m)?)?;
    m.add_function(wrap_pyfunction!(values::decode_value, m)?)?;
    m.add_function(wrap_pyfunction!(values::all_plain, m)?)?;
    m.add("RESULTS_DONE", values::RESULTS_DONE)?;
    m.add("RESULTS_VALUE", values::RESULTS_VALUE)?;
    m.add("RESULTS_RAISED", values::RESULTS_RAISED)?;
    m.add("RESULTS_GONE", values::RESULTS_GONE)?;
    m.add("RING_CAPACITY_DEFAULT", convert::RING_CAPACITY_DEFAULT)?;
    m.add("END_DONE", pool::END_DONE)?;
    m.add("END_CRASHED", pool::END_CRASHED)?;
    m.add("END_TIMED_OUT", pool::END_TIMED_OUT)?;
    m.add("END_CANCELLED", pool::END_CANCELLED)?;
    m.add("END_BROKEN", pool::END_BROKEN)?;
    m.add("CANCEL_NOT_FOUND", pool::CANCEL_NOT_FOUND)?;
    m.add("CANCEL_CANCELLED", pool::CANCEL_CANCELLED)?;
    m.add("CANCEL_RUNNING", pool::CANCEL_RUNNING)?;
    m.add("CANCEL_KILLED", pool::CANCEL_KILLED)?;
    Ok(())
}
