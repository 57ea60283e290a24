//! Starting a worker process from a clean interpreter, and the spawn handshake.
//!
//! # Protocol (parent side; the worker side is in [`worker_main`](super::worker_main))
//! 1. Create the worker's [`Channel`] and make its fds inheritable, for this one spawn only.
//! 2. `fork`+`exec` `command.program` (std's `Command`) with stdin null and stdout/stderr piped,
//!    with [`CHANNEL_FDS_ENV`] (the channel's fd numbers) and [`PARENT_PID_ENV`] in its
//!    environment. This must run on the supervisor thread: the worker's parent-death signal
//!    fires when the *thread* that forked it exits.
//! 3. Make the channel fds non-inheritable again, and `pidfd_open` the child. We have not reaped
//!    it, so its pid cannot have been reused yet and the pidfd names exactly this child.
//! 4. Wait for the child's first message, [`READY_MESSAGE`], with its pidfd as the wait's peer
//!    and a deadline of [`HANDSHAKE_TIMEOUT`]. Until then its output is held (see
//!    [`crate::output`]).
//! 5. If it dies first, reap it and fail with [`SpawnError::Handshake`] carrying its exit code or
//!    signal and the tail of its stderr. If the deadline passes or the message is wrong, kill
//!    and reap it and fail the same way.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use rustix::io::{fcntl_setfd, FdFlags};
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{
    getpid, pidfd_open, pidfd_send_signal, waitid, Pid, PidfdFlags, Signal, WaitId, WaitIdOptions,
};

use super::command::{base_command, WorkerCommand, CHANNEL_FDS_ENV, HANDSHAKE_TIMEOUT};
use super::command::{Inheritable, PARENT_PID_ENV, READY_MESSAGE};
use super::process::{DeathHook, WorkerProcess};
use super::template::Template;
use crate::error::{RecvError, SpawnError};
use crate::output::{OutputSink, WorkerOutput};
use crate::shm::channel::Channel;
use crate::wait::Wait;

/// Steps 1–3: starts the process, without waiting for its handshake.
pub(crate) fn spawn(
    command: &WorkerCommand,
    on_death: &Option<DeathHook>,
) -> Result<WorkerProcess, SpawnError> {
    let mut channel = Channel::create(command.ring_capacity)?;
    let mut cmd = base_command(command, &command.args);
    cmd.env(CHANNEL_FDS_ENV, channel.child_fds().encode())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    channel.set_inheritable(true)?;
    if let Err(e) = set_inheritable(&command.inherit_fds, true) {
        let _ = set_inheritable(&command.inherit_fds, false);
        let _ = channel.set_inheritable(false);
        return Err(e);
    }
    let spawned = cmd.spawn();
    let restored = channel
        .set_inheritable(false)
        .map_err(SpawnError::from)
        .and(set_inheritable(&command.inherit_fds, false));
    let mut child = spawned?;
    channel.close_child_end();
    let opened = restored.and_then(|()| {
        let raw = i32::try_from(child.id()).ok().and_then(Pid::from_raw);
        let pid = raw.ok_or_else(|| std::io::Error::other("child pid out of range"))?;
        Ok(pidfd_open(pid, PidfdFlags::empty())?)
    });
    let pidfd = match opened {
        Ok(fd) => fd,
        Err(e) => {
            // Without a pidfd we cannot watch it; never leave it running.
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    // Both were set to `Stdio::piped()`, so both are there; an error (not a panic) if not.
    let pipes = match (child.stdout.take(), child.stderr.take()) {
        (Some(stdout), Some(stderr)) => WorkerOutput::new(child.id(), stdout.into(), stderr.into()),
        _ => Err(std::io::Error::other(
            "the worker's output pipes are missing",
        )),
    };
    let output = match pipes {
        Ok(o) => Arc::new(o),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e.into());
        }
    };
    // The process is reaped through its pidfd (`WorkerProcess::reap`); `child` is only a handle.
    Ok(WorkerProcess::new(
        child.id(),
        pidfd,
        channel,
        output,
        on_death.clone(),
    ))
}

/// Clears (or sets again) `FD_CLOEXEC` on each fd of `owners`.
fn set_inheritable(owners: &[Arc<dyn Inheritable>], inheritable: bool) -> Result<(), SpawnError> {
    let flags = if inheritable {
        FdFlags::empty()
    } else {
        FdFlags::CLOEXEC
    };
    for fd in owners.iter().flat_map(|o| o.fds_to_inherit()) {
        fcntl_setfd(fd, flags)?;
    }
    Ok(())
}

/// Steps 4–5: waits for the ready message. On success the worker's held output is released to
/// the sink; on failure the process is reaped.
pub(crate) fn handshake(worker: &WorkerProcess, sink: &dyn OutputSink) -> Result<(), SpawnError> {
    let mut wait = Wait::timeout(Some(HANDSHAKE_TIMEOUT)).with_peer(worker.pidfd());
    let problem = match worker.channel().recv(&mut wait) {
        Ok(msg) if msg == READY_MESSAGE => {
            worker.output().release_held(sink);
            return Ok(());
        }
        Ok(_) => "the worker's first message was not the ready handshake",
        Err(RecvError::Disconnected) => "",
        Err(RecvError::Timeout) => "the worker sent no ready message within 60 s",
        Err(RecvError::Interrupted) => "interrupted",
        Err(RecvError::Io(e)) => {
            worker.kill_and_reap();
            let _ = worker.output().take_failed_handshake(sink);
            return Err(SpawnError::Io(e));
        }
    };
    let info = worker.kill_and_reap();
    let mut output = worker.output().take_failed_handshake(sink);
    if !problem.is_empty() {
        output = if output.is_empty() {
            problem.to_owned()
        } else {
            format!("{problem}\n{output}")
        };
    }
    Err(SpawnError::Handshake {
        code: info.code,
        signal: info.signal,
        output,
    })
}

/// What a new worker is connected by: its channel (whose shared segment is populated when
/// made, ~1 ms for the default 2 MiB) and its output pipes. Independent of the environment
/// and working directory, so the supervisor makes one ahead of the next fork ([`make_ends`]).
pub(crate) struct WorkerEnds {
    channel: Channel,
    out_r: OwnedFd,
    out_w: OwnedFd,
    err_r: OwnedFd,
    err_w: OwnedFd,
}

/// Makes a worker's channel and pipes (all close-on-exec).
pub(crate) fn make_ends(command: &WorkerCommand) -> Result<WorkerEnds, SpawnError> {
    let channel = Channel::create(command.ring_capacity)?;
    let (out_r, out_w) = pipe_with(PipeFlags::CLOEXEC)?;
    let (err_r, err_w) = pipe_with(PipeFlags::CLOEXEC)?;
    Ok(WorkerEnds {
        channel,
        out_r,
        out_w,
        err_r,
        err_w,
    })
}

/// A worker to be forked by the template: its channel, its pipes, and the request's fds,
/// environment and working directory ([`plan_fork`]).
pub(crate) struct ForkPlan {
    channel: Channel,
    out_r: OwnedFd,
    out_w: OwnedFd,
    err_r: OwnedFd,
    err_w: OwnedFd,
    /// `(fd here, number in the worker)`; every fd is owned by this plan or by the command's
    /// `inherit_fds` owners, so all stay open while the plan lives.
    fds: Vec<(RawFd, RawFd)>,
    env: Vec<(OsString, OsString)>,
    cwd: PathBuf,
}

/// Steps 1–3 through the template ([`super::template`]), first part: what the parent needs to
/// ask the template for the same process as [`spawn`] would start (same fds at the same
/// numbers, same environment and working directory).
///
/// `made` is what [`make_ends`] made beforehand, if anything; else they are made here.
pub(crate) fn plan_fork(
    command: &WorkerCommand,
    made: Option<WorkerEnds>,
) -> Result<ForkPlan, SpawnError> {
    let WorkerEnds {
        channel,
        out_r,
        out_w,
        err_r,
        err_w,
    } = match made {
        Some(ends) => ends,
        None => make_ends(command)?,
    };
    let child_fds = channel.child_fds();
    let mut fds: Vec<(RawFd, RawFd)> = vec![(out_w.as_raw_fd(), 1), (err_w.as_raw_fd(), 2)];
    fds.push((child_fds.memfd, child_fds.memfd));
    fds.extend(child_fds.events.iter().map(|&fd| (fd, fd)));
    fds.push((child_fds.sock, child_fds.sock));
    for fd in command.inherit_fds.iter().flat_map(|o| o.fds_to_inherit()) {
        fds.push((fd.as_raw_fd(), fd.as_raw_fd()));
    }
    // What `Command` would give the worker: our environment now, then the command's
    // variables, then the channel's.
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let extra = command.env.iter().cloned().chain([
        (CHANNEL_FDS_ENV.into(), child_fds.encode().into()),
        (
            PARENT_PID_ENV.into(),
            getpid().as_raw_nonzero().to_string().into(),
        ),
    ]);
    for (k, v) in extra {
        env.retain(|(key, _)| *key != k);
        env.push((k, v));
    }
    let cwd = match &command.cwd {
        Some(cwd) => cwd.clone(),
        None => std::env::current_dir()?,
    };
    Ok(ForkPlan {
        channel,
        out_r,
        out_w,
        err_r,
        err_w,
        fds,
        env,
        cwd,
    })
}

/// Second part: sends the plan's fork request (the reply is read by [`finish_fork`]'s caller).
pub(crate) fn request_fork(template: &Template, plan: &ForkPlan) -> std::io::Result<()> {
    template.request_fork(&plan.env, &plan.cwd, &plan.fds)
}

/// Last part: the template forked `pid` for `plan`.
pub(crate) fn finish_fork(
    plan: ForkPlan,
    pid: Pid,
    on_death: &Option<DeathHook>,
) -> Result<WorkerProcess, SpawnError> {
    let ForkPlan {
        mut channel,
        out_r,
        out_w,
        err_r,
        err_w,
        ..
    } = plan;
    drop((out_w, err_w));
    channel.close_child_end();
    // The process is our own unreaped child (CLONE_PARENT), so its pid names it until we reap
    // it; check that it is ours before trusting it.
    let pidfd = pidfd_open(pid, PidfdFlags::empty())?;
    let ours = waitid(
        WaitId::PidFd(pidfd.as_fd()),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
    );
    if let Err(e) = ours {
        return Err(std::io::Error::other(format!(
            "the template forked a process that is not our child: {e}"
        ))
        .into());
    }
    let output = match WorkerOutput::new(pid.as_raw_nonzero().get() as u32, out_r, err_r) {
        Ok(o) => Arc::new(o),
        Err(e) => {
            let _ = pidfd_send_signal(&pidfd, Signal::KILL);
            let _ = waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED);
            return Err(e.into());
        }
    };
    Ok(WorkerProcess::new(
        pid.as_raw_nonzero().get() as u32,
        pidfd,
        channel,
        output,
        on_death.clone(),
    ))
}
