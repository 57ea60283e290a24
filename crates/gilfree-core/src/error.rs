//! Errors, one enum per operation (crossbeam style).

use std::fmt;
use std::io;

/// Why receiving a message failed.
#[derive(Debug)]
pub enum RecvError {
    /// The deadline passed before a whole message arrived. Any part already received is kept,
    /// and the next `recv` carries on from there.
    Timeout,
    /// The peer process is gone (or closed its end) and no whole message is left to read.
    Disconnected,
    /// The wait's signal check asked to stop (for Python: a `KeyboardInterrupt` is pending).
    Interrupted,
    /// A system call failed.
    Io(io::Error),
}

/// Why sending a message failed.
#[derive(Debug)]
pub enum SendError {
    /// The deadline passed while waiting for ring space. The message may be partly sent; the
    /// channel must then be discarded (the process layer kills the worker).
    Timeout,
    /// The peer process is gone.
    Disconnected,
    /// The wait's signal check asked to stop. As with `Timeout`, the channel is then unusable.
    Interrupted,
    /// A system call failed.
    Io(io::Error),
}

/// Why a worker process could not be started or handed out.
#[derive(Debug)]
pub enum SpawnError {
    /// A system call failed (fork/exec, memfd, pipe, pidfd).
    Io(io::Error),
    /// The process started but died or misbehaved before its ready handshake. `output` is what
    /// it wrote to stderr, so the user sees e.g. an `ImportError`.
    Handshake {
        /// Exit code, if it exited normally.
        code: Option<i32>,
        /// Signal number, if it was killed by a signal.
        signal: Option<i32>,
        /// The tail of the process's stderr.
        output: String,
    },
    /// The engine was shut down.
    ShutDown,
    /// The wait's signal check asked to stop.
    Interrupted,
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out waiting for a message"),
            Self::Disconnected => f.write_str("the peer process is gone"),
            Self::Interrupted => f.write_str("interrupted"),
            Self::Io(e) => write!(f, "receive failed: {e}"),
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out waiting for ring space"),
            Self::Disconnected => f.write_str("the peer process is gone"),
            Self::Interrupted => f.write_str("interrupted"),
            Self::Io(e) => write!(f, "send failed: {e}"),
        }
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "could not start a worker process: {e}"),
            Self::Handshake {
                code,
                signal,
                output,
            } => {
                write!(f, "worker process died before it was ready")?;
                if let Some(c) = code {
                    write!(f, " (exit code {c})")?;
                }
                if let Some(s) = signal {
                    write!(f, " (signal {s})")?;
                }
                if !output.is_empty() {
                    write!(f, ":\n{output}")?;
                }
                Ok(())
            }
            Self::ShutDown => f.write_str("the engine has been shut down"),
            Self::Interrupted => f.write_str("interrupted"),
        }
    }
}

impl std::error::Error for RecvError {}
impl std::error::Error for SendError {}
impl std::error::Error for SpawnError {}

impl From<io::Error> for RecvError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}
impl From<io::Error> for SendError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}
impl From<io::Error> for SpawnError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}
impl From<rustix::io::Errno> for RecvError {
    fn from(e: rustix::io::Errno) -> Self {
        Self::Io(e.into())
    }
}
impl From<rustix::io::Errno> for SendError {
    fn from(e: rustix::io::Errno) -> Self {
        Self::Io(e.into())
    }
}
impl From<rustix::io::Errno> for SpawnError {
    fn from(e: rustix::io::Errno) -> Self {
        Self::Io(e.into())
    }
}
