//! The engine's own threads: named, and deaf to asynchronous signals.
//!
//! A process-directed signal (Ctrl-C's `SIGINT`, a `kill`) goes to one thread of the process
//! that does not block it, and the kernel may pick any of them. CPython runs its Python-level
//! handlers on the main thread only: when the C handler runs on another thread, it flags the
//! signal, but a main thread asleep in a lock's wait is not woken, and the program sleeps on
//! until a second Ctrl-C (seen: about one Ctrl-C in six lost while `gilfree.map` waited). So
//! every thread the engine starts blocks the asynchronous signals first; the synchronous ones
//! (a fault in that thread) stay deliverable, as blocking them would turn a fault into a hang.
//!
//! Written by hand because no well-kept crate wraps `pthread_sigmask` outside a runtime
//! (`rustix` keeps it in its `runtime` module, meant for libc replacements).

use std::io;
use std::thread::JoinHandle;

/// Signals a thread gets from its own faults (or `abort`): never blocked.
const SYNCHRONOUS: [libc::c_int; 7] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGSYS,
    libc::SIGABRT,
];

/// Blocks every asynchronous signal in the calling thread.
pub fn block_async_signals() -> io::Result<()> {
    set_mask(libc::SIG_BLOCK, true)
}

/// Unblocks every signal in the calling thread. Async-signal-safe: it is what a process the
/// engine starts runs between `fork` and `exec` ([`reset_in_child`]).
pub fn unblock_all_signals() -> io::Result<()> {
    set_mask(libc::SIG_SETMASK, false)
}

/// `pthread_sigmask(how, set)` with `set` every asynchronous signal (`asynchronous`) or none.
/// Async-signal-safe: a set on the stack and one call, no allocation.
fn set_mask(how: libc::c_int, asynchronous: bool) -> io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: `set` is a local sigset_t that sigfillset or sigemptyset initialises before any
    // other use; sigdelset and pthread_sigmask only read it (and write nothing else: the old
    // mask is not asked for, so its pointer is null, which pthread_sigmask allows).
    let rc = unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        if asynchronous {
            libc::sigfillset(set.as_mut_ptr());
            for sig in SYNCHRONOUS {
                libc::sigdelset(set.as_mut_ptr(), sig);
            }
        } else {
            libc::sigemptyset(set.as_mut_ptr());
        }
        libc::pthread_sigmask(how, set.as_ptr(), std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Makes `cmd`'s process start with no signal blocked. A child inherits the signal mask of
/// the thread that starts it, and the engine starts its processes from its own threads, which
/// block the asynchronous signals: without this, a worker could not be stopped by `SIGTERM`
/// or `SIGINT`. (It makes std fork and exec rather than `posix_spawn`; the engine starts
/// processes this way once per template, and per worker only without a template.)
pub fn reset_in_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;

    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: it makes a set on its stack and calls pthread_sigmask, nothing else
    // (no allocation, no lock).
    unsafe {
        cmd.pre_exec(unblock_all_signals);
    }
}

/// Spawns a thread named `name` that runs `f` with the asynchronous signals blocked.
pub fn spawn<F, T>(name: &str, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // Cannot fail with a valid `how` and set; if it did, the thread still works and only
            // takes signals as before.
            let _ = block_async_signals();
            f()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(sig: libc::c_int) -> bool {
        #[allow(unsafe_code)]
        // SAFETY: `old` is written by pthread_sigmask (a null `set` only reads the mask) before
        // sigismember reads it.
        unsafe {
            let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            assert_eq!(
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), old.as_mut_ptr()),
                0
            );
            libc::sigismember(old.as_ptr(), sig) == 1
        }
    }

    #[test]
    fn an_engine_thread_blocks_ctrl_c_and_keeps_faults_deliverable() {
        let seen = spawn("gilfree-test", || {
            (
                blocked(libc::SIGINT),
                blocked(libc::SIGTERM),
                blocked(libc::SIGSEGV),
                std::thread::current().name().map(str::to_owned),
            )
        })
        .unwrap()
        .join()
        .unwrap();
        assert_eq!(seen, (true, true, false, Some("gilfree-test".into())));
        // The spawning thread's own mask is untouched.
        assert!(!blocked(libc::SIGINT));
    }

    #[test]
    fn a_process_started_from_an_engine_thread_blocks_no_signal() {
        let status_mask = spawn("gilfree-test", || {
            let mut cmd = std::process::Command::new("/bin/sh");
            cmd.args(["-c", "grep SigBlk /proc/self/status"]);
            reset_in_child(&mut cmd);
            cmd.output().unwrap()
        })
        .unwrap()
        .join()
        .unwrap();
        let text = String::from_utf8(status_mask.stdout).unwrap();
        assert_eq!(
            text.split_whitespace().nth(1),
            Some("0000000000000000"),
            "{text}"
        );
    }
}
