//! The template: a clean interpreter that forks new workers on request, so that a new worker
//! does not pay for an interpreter start and its imports.
//!
//! The template is started like a worker (a fresh `exec` of the worker command with
//! [`TemplateCommand::args`]), by the supervisor thread. It runs no user code and no threads:
//! it imports what workers need and then serves fork requests on a Unix socket.
//!
//! # Protocol
//! 1. The supervisor creates a `SOCK_SEQPACKET` socket pair and starts the template with one
//!    end inherited, its number in [`TEMPLATE_FD_ENV`] and the parent's pid in
//!    [`PARENT_PID_ENV`]. The template ([`TemplateServer::from_env`]) arms its parent-death
//!    signal, checks `getppid()` (exits with [`ORPHAN_EXIT_CODE`] if it was re-parented) and
//!    sends [`TEMPLATE_READY`]. The supervisor waits for it with the template's pidfd as peer;
//!    a template that dies or fails to start is dropped and workers are spawned directly.
//! 2. A fork request is one message: the whole environment the worker must see (the parent's
//!    environment now, plus the worker command's variables and the channel's), the working
//!    directory, and fds with `SCM_RIGHTS`: the write ends of the worker's stdout and stderr
//!    pipes, the channel's fds and the command's inherited fds, each with the number it must
//!    have in the worker (its number in the parent). Several requests may be in flight (the
//!    supervisor sends a whole spawn round before reading any reply); the template serves
//!    them in order, and replies come in request order.
//! 3. The template forks with `clone3(CLONE_PARENT)` ([`fork_sibling`]): the new process is a
//!    child of the *parent* (of the supervisor thread that started the template), never of
//!    the template. So everything the parent relies on for a directly spawned worker holds
//!    unchanged: it is the parent's unreaped child (its pid cannot be reused before the parent
//!    reaps it, `pidfd_open` names it exactly, `waitid` gives its exit status), its
//!    parent-death signal fires when the supervisor thread exits, and `getppid()` is the
//!    parent's pid, which the worker checks as usual ([`super::worker_main`]).
//! 4. In the new process ([`ForkRequest::install`]): the template's socket is closed, the fds
//!    are moved to their numbers, stdin is `/dev/null`, every other fd is closed; the caller
//!    then adopts the environment and working directory and runs the worker's main loop.
//! 5. The template replies with the pid (or a negative errno). The parent `pidfd_open`s it,
//!    checks that it is its own child, and carries on with the usual handshake.
//!
//! The template never reaps anything and holds no state between requests; if it dies, the
//! parent notices (its pidfd, or a failed send) and spawns directly from then on.
// fd passing and `clone3` have no safe wrapper in rustix's enabled features: libc it is, each
// block with its SAFETY note.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::{fcntl_setfd, FdFlags};
use rustix::process::{
    getppid, pidfd_open, pidfd_send_signal, set_parent_process_death_signal, Pid, PidfdFlags,
    Signal,
};

use super::command::PARENT_PID_ENV;
use super::command::{base_command, WorkerCommand, HANDSHAKE_TIMEOUT, ORPHAN_EXIT_CODE};
use crate::shm::fdpass::{recv_fds as recv_with_fds, send_raw_fds as send_with_fds, socket_pair};

/// Environment variable that carries the template's socket fd number.
pub const TEMPLATE_FD_ENV: &str = "GILFREE_TEMPLATE_FD";

/// The template's first message, once its imports are done.
pub const TEMPLATE_READY: &[u8] = b"gilfree-template-ready-v1";

/// The largest fork request (the environment dominates).
const MAX_REQUEST: usize = 1 << 20;

/// How to start the template: the worker command's program, environment and working
/// directory, with these arguments (for Python: `["-m", "gilfree._worker", "--template"]`).
#[derive(Clone, Debug)]
pub struct TemplateCommand {
    /// The template's arguments.
    pub args: Vec<OsString>,
}

/// The parent's handle on a running template.
pub(crate) struct Template {
    child: Child,
    pidfd: OwnedFd,
    sock: OwnedFd,
}

/// Waits until `sock` is readable or `peer` (a pidfd) says its process died.
fn wait_readable(sock: BorrowedFd<'_>, peer: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let ts = Timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    let mut fds = [
        PollFd::new(&sock, PollFlags::IN),
        PollFd::new(&peer, PollFlags::IN),
    ];
    loop {
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "template timed out",
                ))
            }
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    if fds[0].revents().contains(PollFlags::IN) {
        Ok(())
    } else {
        Err(io::Error::other("the template process died"))
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u32(&mut self) -> io::Result<u32> {
        let (head, rest) = self
            .0
            .split_first_chunk::<4>()
            .ok_or_else(|| io::Error::other("malformed fork request"))?;
        self.0 = rest;
        Ok(u32::from_le_bytes(*head))
    }
    fn bytes(&mut self) -> io::Result<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > self.0.len() {
            return Err(io::Error::other("malformed fork request"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

/// Step 2's message: the fds' target numbers, the working directory, the environment.
fn encode_request(targets: &[RawFd], cwd: &Path, env: &[(OsString, OsString)]) -> Vec<u8> {
    let mut req = Vec::with_capacity(4096);
    req.extend_from_slice(&(targets.len() as u32).to_le_bytes());
    for &target in targets {
        req.extend_from_slice(&target.to_le_bytes());
    }
    put(&mut req, cwd.as_os_str().as_bytes());
    req.extend_from_slice(&(env.len() as u32).to_le_bytes());
    for (k, v) in env {
        put(&mut req, k.as_bytes());
        put(&mut req, v.as_bytes());
    }
    req
}

/// Parses [`encode_request`]'s message, pairing the fds that came with it with their
/// numbers. Anything malformed (truncated, trailing bytes, a count that does not match the
/// fds, a negative number) is an error, and the fds are closed.
fn decode_request(msg: &[u8], fds: Vec<OwnedFd>) -> io::Result<ForkRequest> {
    let mut r = Reader(msg);
    let count = r.u32()? as usize;
    if count != fds.len() {
        return Err(io::Error::other("fork request: fd count mismatch"));
    }
    let mut targets = Vec::with_capacity(count);
    for _ in 0..count {
        let t = r.u32()? as i32;
        if t < 0 {
            return Err(io::Error::other("fork request: negative fd number"));
        }
        targets.push(t);
    }
    let cwd = OsString::from_vec(r.bytes()?.to_vec());
    let nenv = r.u32()? as usize;
    let mut env = Vec::with_capacity(nenv.min(4096));
    for _ in 0..nenv {
        let k = OsString::from_vec(r.bytes()?.to_vec());
        let v = OsString::from_vec(r.bytes()?.to_vec());
        env.push((k, v));
    }
    if !r.0.is_empty() {
        return Err(io::Error::other("fork request: trailing bytes"));
    }
    Ok(ForkRequest {
        fds: fds.into_iter().zip(targets).collect(),
        cwd,
        env,
    })
}

impl Template {
    /// Step 1, parent side, first half: starts the template process ([`wait_ready`] is the
    /// second). Call on the supervisor thread: the workers' parent-death signal is tied to the
    /// thread that started the template.
    ///
    /// [`wait_ready`]: Template::wait_ready
    pub(crate) fn launch(command: &WorkerCommand, template: &TemplateCommand) -> io::Result<Self> {
        let (ours, theirs) = socket_pair()?;
        let mut cmd = base_command(command, &template.args);
        cmd.env(TEMPLATE_FD_ENV, theirs.as_raw_fd().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        fcntl_setfd(&theirs, FdFlags::empty())?;
        let spawned = cmd.spawn();
        drop(theirs);
        let mut child = spawned?;
        let opened = i32::try_from(child.id())
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| io::Error::other("template pid out of range"))
            .and_then(|pid| Ok(pidfd_open(pid, PidfdFlags::empty())?));
        match opened {
            Ok(pidfd) => Ok(Template {
                child,
                pidfd,
                sock: ours,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// The template's pidfd: killing through it makes a [`wait_ready`](Template::wait_ready)
    /// in progress return an error at once.
    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The template's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Step 1, parent side, second half: waits for the ready message (the template's death
    /// ends the wait). On error the template is killed and reaped.
    pub(crate) fn wait_ready(self) -> io::Result<Self> {
        wait_readable(self.sock.as_fd(), self.pidfd.as_fd(), HANDSHAKE_TIMEOUT)?;
        let mut buf = [0u8; 64];
        match recv_with_fds(self.sock.as_fd(), &mut buf)? {
            Some((n, fds)) if fds.is_empty() && &buf[..n] == TEMPLATE_READY => Ok(self),
            _ => Err(io::Error::other(
                "the template's first message was not ready",
            )),
        }
        // On error `self` is dropped: killed and reaped.
    }

    /// Step 2 alone: sends a fork request without waiting for the reply, so that several can
    /// be in flight (the template forks them back to back; replies come in request order).
    /// The fds must stay open until the reply is read.
    pub(crate) fn request_fork(
        &self,
        env: &[(OsString, OsString)],
        cwd: &Path,
        fds: &[(RawFd, RawFd)],
    ) -> io::Result<()> {
        let targets: Vec<RawFd> = fds.iter().map(|&(_, t)| t).collect();
        let req = encode_request(&targets, cwd, env);
        if req.len() > MAX_REQUEST {
            return Err(io::Error::other(
                "the environment is too large for a fork request",
            ));
        }
        let raw: Vec<RawFd> = fds.iter().map(|&(fd, _)| fd).collect();
        send_with_fds(self.sock.as_fd(), &req, &raw)
    }

    /// Step 5 alone: the reply to the oldest request not yet answered. Replies the template
    /// sent before it died are still read; after them, its death is an error.
    pub(crate) fn fork_reply(&self) -> io::Result<Pid> {
        wait_readable(self.sock.as_fd(), self.pidfd.as_fd(), HANDSHAKE_TIMEOUT)?;
        let mut buf = [0u8; 8];
        let reply = match recv_with_fds(self.sock.as_fd(), &mut buf)? {
            Some((4, fds)) if fds.is_empty() => {
                i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]])
            }
            _ => return Err(io::Error::other("malformed reply from the template")),
        };
        if reply < 0 {
            return Err(io::Error::from_raw_os_error(-reply));
        }
        Pid::from_raw(reply).ok_or_else(|| io::Error::other("the template replied pid 0"))
    }

    /// Kills the template (not yet reaped: that is `Drop`'s), so that every later
    /// [`fork_reply`](Template::fork_reply) returns at once.
    pub(crate) fn kill(&self) {
        let _ = pidfd_send_signal(&self.pidfd, Signal::KILL);
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        // Its workers are our children, not its own: killing it harms none of them.
        let _ = pidfd_send_signal(&self.pidfd, Signal::KILL);
        let _ = self.child.wait();
    }
}

/// The template's end of the socket (template side of the protocol).
pub struct TemplateServer {
    sock: OwnedFd,
}

/// One fork request, received by the template.
pub struct ForkRequest {
    fds: Vec<(OwnedFd, RawFd)>,
    /// The working directory the worker must start in.
    pub cwd: OsString,
    /// The whole environment the worker must see.
    pub env: Vec<(OsString, OsString)>,
}

impl TemplateServer {
    /// Step 1, template side: takes the socket named in [`TEMPLATE_FD_ENV`], arms the
    /// parent-death signal, checks the parent (exits with [`ORPHAN_EXIT_CODE`] if it is gone)
    /// and sends [`TEMPLATE_READY`].
    pub fn from_env() -> io::Result<TemplateServer> {
        set_parent_process_death_signal(Some(Signal::KILL))?;
        let parent = std::env::var(PARENT_PID_ENV)
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
            .and_then(Pid::from_raw);
        let fd = std::env::var(TEMPLATE_FD_ENV)
            .ok()
            .and_then(|s| s.parse::<RawFd>().ok())
            .filter(|&fd| fd > 2);
        let (Some(parent), Some(fd)) = (parent, fd) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not started as a gilfree template",
            ));
        };
        if getppid() != Some(parent) {
            std::process::exit(ORPHAN_EXIT_CODE);
        }
        // SAFETY: the template is single-threaded while it starts (`template_serve` runs on the
        // main thread of `python -m gilfree._worker --template`, which runs no user code and
        // starts no thread), so no other thread reads the environment while we change it.
        unsafe {
            std::env::remove_var(TEMPLATE_FD_ENV);
            std::env::remove_var(PARENT_PID_ENV);
        }
        // SAFETY: the parent passed this fd to us alone (it is close-on-exec everywhere
        // else), its number is in the variable we just removed, and nothing else in this
        // process claims it: this is its one owner.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        fcntl_setfd(&sock, FdFlags::CLOEXEC)?;
        send_with_fds(sock.as_fd(), TEMPLATE_READY, &[])?;
        Ok(TemplateServer { sock })
    }

    /// Step 2, template side: the next request; `Ok(None)` once the parent closed its end.
    pub fn next(&self) -> io::Result<Option<ForkRequest>> {
        let mut buf = vec![0u8; MAX_REQUEST];
        let Some((n, fds)) = recv_with_fds(self.sock.as_fd(), &mut buf)? else {
            return Ok(None);
        };
        decode_request(&buf[..n], fds).map(Some)
    }

    /// Step 5, template side: tells the parent the new worker's pid, or why there is none.
    pub fn reply(&self, result: &io::Result<u32>) -> io::Result<()> {
        let value: i32 = match result {
            Ok(pid) => i32::try_from(*pid).unwrap_or(-libc::ERANGE),
            Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
        };
        send_with_fds(self.sock.as_fd(), &value.to_le_bytes(), &[])
    }
}

impl ForkRequest {
    /// Step 4, in the new worker: closes the template's socket, puts each fd at its number,
    /// `/dev/null` at 0, and closes every other fd. The caller then adopts `env` and `cwd`.
    pub fn install(self, server: TemplateServer) -> io::Result<()> {
        drop(server);
        let top = self.fds.iter().map(|&(_, t)| t).max().unwrap_or(2).max(2);
        // First move every fd above all the target numbers, so no dup2 below overwrites a
        // source that is still to be placed.
        let mut moved = Vec::with_capacity(self.fds.len());
        for (fd, target) in self.fds {
            let high = rustix::io::fcntl_dupfd_cloexec(&fd, top + 1)?;
            drop(fd);
            moved.push((high, target));
        }
        // Above the targets too: dropping it at the end must not close a placed fd.
        let null = rustix::io::fcntl_dupfd_cloexec(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?,
            top + 1,
        )?;
        let mut keep = vec![0, 1, 2];
        let mut place = |from: RawFd, to: RawFd| -> io::Result<()> {
            // SAFETY: `from` is an fd we own (it lives until the end of `install`); `to` is a
            // number the worker must have: whatever the template had there is the template's
            // own business, which the worker leaves behind.
            if unsafe { libc::dup2(from, to) } < 0 {
                return Err(io::Error::last_os_error());
            }
            keep.push(to);
            Ok(())
        };
        place(null.as_raw_fd(), 0)?;
        for (high, target) in &moved {
            place(high.as_raw_fd(), *target)?;
        }
        drop(null);
        drop(moved);
        let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        for fd in open {
            if !keep.contains(&fd) {
                // SAFETY: in a fresh fork of the single-threaded template, every fd not placed
                // above belongs to the template (the read_dir fd is already closed: EBADF).
                unsafe { libc::close(fd) };
            }
        }
        Ok(())
    }
}

/// `struct clone_args`, the first version (64 bytes), for `clone3`.
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// Step 3: forks this process so that the new one is a child of this process's *parent*
/// (`CLONE_PARENT`). Returns `Some(pid)` in the template and `None` in the new process.
///
/// Does the kernel half of glibc's `fork`: the kernel writes the child's tid into glibc's
/// thread descriptor (`CLONE_CHILD_SETTID` at glibc's own tid address), and the child
/// registers glibc's robust-mutex list again (the kernel clears it on fork).
///
/// # Safety
/// The process must be single-threaded, and hold no lock that the child will need
/// (as for `fork`). A Python caller must wrap it in `PyOS_BeforeFork` and
/// `PyOS_AfterFork_Child`/`_Parent`, as `os.fork` does.
pub unsafe fn fork_sibling() -> io::Result<Option<u32>> {
    let mut tid_address: *mut libc::c_int = std::ptr::null_mut();
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer to the address given.
    if unsafe { libc::prctl(libc::PR_GET_TID_ADDRESS, &mut tid_address as *mut _) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut head: *mut libc::c_void = std::ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: get_robust_list(0, ...) writes the calling thread's head pointer and size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut _,
            &mut len as *mut _,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let args = CloneArgs {
        flags: (libc::CLONE_PARENT | libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as u64,
        pidfd: 0,
        child_tid: tid_address as u64,
        parent_tid: 0,
        // clone3 refuses an exit signal with CLONE_PARENT: the child gets ours (SIGCHLD).
        exit_signal: 0,
        stack: 0,
        stack_size: 0,
        tls: 0,
    };
    // SAFETY: `args` is a valid clone_args of the size given; no CLONE_VM, so the child runs
    // on a private copy of this stack, as after fork. The caller guarantees the rest.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: `head` is glibc's robust list head for this thread (same address in the
        // copy); registering it again is what glibc's fork does in the child.
        unsafe { libc::syscall(libc::SYS_set_robust_list, head, len) };
        return Ok(None);
    }
    Ok(Some(pid as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn pipe_pair() -> (OwnedFd, OwnedFd) {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap()
    }

    #[test]
    fn a_request_and_its_fds_survive_the_socket() {
        let (a, b) = socket_pair().unwrap();
        let (r, w) = pipe_pair();
        let env = vec![
            (OsString::from("A"), OsString::from("1")),
            (OsString::from("EMPTY"), OsString::new()),
        ];
        let msg = encode_request(&[41], Path::new("/tmp/x y"), &env);
        send_with_fds(a.as_fd(), &msg, &[w.as_raw_fd()]).unwrap();
        drop(w);
        let mut buf = vec![0u8; MAX_REQUEST];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf).unwrap().unwrap();
        let req = decode_request(&buf[..n], fds).unwrap();
        assert_eq!(req.cwd, OsString::from("/tmp/x y"));
        assert_eq!(req.env, env);
        assert_eq!(req.fds.len(), 1);
        assert_eq!(req.fds[0].1, 41);
        // The received fd is the same pipe: what goes in comes out of our read end.
        let mut file = std::fs::File::from(req.fds.into_iter().next().unwrap().0);
        file.write_all(b"hi").unwrap();
        drop(file);
        let mut got = String::new();
        std::fs::File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "hi");
    }

    #[test]
    fn the_peer_closing_its_end_reads_as_end_of_stream() {
        let (a, b) = socket_pair().unwrap();
        drop(a);
        let mut buf = [0u8; 16];
        assert!(recv_with_fds(b.as_fd(), &mut buf).unwrap().is_none());
    }

    #[test]
    fn malformed_requests_are_refused() {
        let msg = encode_request(&[5, 6], Path::new("/"), &[]);
        let (_r, w) = pipe_pair();
        // Two numbers, one fd.
        assert!(decode_request(&msg, vec![w]).is_err());
        // Truncated anywhere.
        for cut in 0..msg.len() {
            assert!(decode_request(&msg[..cut], vec![]).is_err(), "cut at {cut}");
        }
        // Trailing bytes.
        let mut long = encode_request(&[], Path::new("/"), &[]);
        long.push(0);
        assert!(decode_request(&long, vec![]).is_err());
        // A negative fd number.
        let neg = encode_request(&[-1], Path::new("/"), &[]);
        let (_r2, w2) = pipe_pair();
        assert!(decode_request(&neg, vec![w2]).is_err());
    }

    #[test]
    fn a_message_too_large_for_the_buffer_is_an_error() {
        let (a, b) = socket_pair().unwrap();
        send_with_fds(a.as_fd(), &[7u8; 64], &[]).unwrap();
        let mut buf = [0u8; 8];
        assert!(recv_with_fds(b.as_fd(), &mut buf).is_err());
    }
}
