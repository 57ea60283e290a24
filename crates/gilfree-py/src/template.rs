//! `template_serve`: the template process's loop (see `gilfree_core::pool::template`); and
//! `prestart_template` / `cancel_prestart`: the template started at `import gilfree`.

use std::ffi::OsString;
use std::path::PathBuf;

use gilfree_core::pool::template::{fork_sibling, TemplateServer};
use gilfree_core::pool::{Engine, TemplateCommand, WorkerCommand};
use pyo3::prelude::*;

use crate::convert;
use crate::errors::PyEngineError;

/// What a new worker gets back: its working directory and its whole environment.
type Forked = (OsString, Vec<(OsString, OsString)>);

/// Serves fork requests until the parent goes away (returns `None`). In each new worker it
/// returns `(cwd, env)`: the worker's fds are in place, and the caller adopts the working
/// directory and environment and runs the worker's main loop.
#[pyfunction]
pub fn template_serve(py: Python<'_>) -> Result<Option<Forked>, PyEngineError> {
    let server = TemplateServer::from_env()?;
    loop {
        let request = match py.detach(|| server.next()) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        #[allow(unsafe_code)]
        // SAFETY: the template runs no threads of its own (it only imported modules and
        // waits here), and this thread is attached to the interpreter (holds the GIL, or on a
        // free-threaded build its thread state); PyOS_BeforeFork / AfterFork_* are what `os.fork`
        // wraps around fork(2), so the interpreter's locks and fork hooks are handled.
        let forked = unsafe {
            pyo3::ffi::PyOS_BeforeFork();
            let forked = fork_sibling();
            match forked {
                Ok(None) => pyo3::ffi::PyOS_AfterFork_Child(),
                _ => pyo3::ffi::PyOS_AfterFork_Parent(),
            }
            forked
        };
        match forked {
            Ok(None) => {
                let cwd = request.cwd.clone();
                let env = request.env.clone();
                request.install(server)?;
                return Ok(Some((cwd, env)));
            }
            Ok(Some(pid)) => {
                drop(request);
                server.reply(&Ok(pid))?;
            }
            Err(e) => {
                drop(request);
                server.reply(&Err(e))?;
            }
        }
    }
}

/// Starts the template process (`program` with `args`, `env` on top of ours) on the thread that
/// will be the next engine's supervisor, without waiting for it. Does nothing if one is
/// already started.
#[pyfunction]
pub fn prestart_template(
    py: Python<'_>,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
) -> Result<(), PyEngineError> {
    let command = WorkerCommand {
        program,
        args: vec![],
        env,
        cwd: None,
        ring_capacity: 0,
        inherit_fds: vec![],
    };
    let template = TemplateCommand { args };
    Ok(py.detach(|| Engine::prestart_template(command, template))?)
}

/// Kills a prestarted template that no engine adopted. Idempotent.
#[pyfunction]
pub fn cancel_prestart(py: Python<'_>) {
    py.detach(Engine::cancel_prestart);
}

/// The pid of the prestarted template that waits for its engine, once launched (waiting at
/// most `timeout` seconds for the launch); `None` if there is none.
#[pyfunction]
pub fn prestarted_pid(py: Python<'_>, timeout: f64) -> Result<Option<u32>, PyEngineError> {
    let timeout = convert::duration(timeout)?;
    Ok(py.detach(|| Engine::prestarted_template_pid(timeout)))
}
