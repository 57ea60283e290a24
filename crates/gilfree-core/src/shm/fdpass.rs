//! Handing fds to another process over a Unix socket (`SCM_RIGHTS`).
//!
//! This is how a [bulk segment](super::bulk) reaches a process that did not create it: its
//! owner sends the memfd over a `SOCK_SEQPACKET` socket pair made when the peer was spawned,
//! and the peer maps what it received. No path is involved, so nothing here depends on
//! `/proc` being readable (`hidepid`, a non-dumpable peer and most sandboxes deny opening
//! `/proc/<pid>/fd/<n>` of another process; they do not deny a socket both ends already own).
//!
//! # Framing
//! `SOCK_SEQPACKET` keeps message boundaries: one [`send_fds`] is one [`recv_fds`], with its fds.
//! Received fds are close-on-exec (`MSG_CMSG_CLOEXEC`), so a worker's own children never
//! inherit a segment. A message whose data or fds did not fit the receiver's buffers is an
//! error (`MSG_TRUNC` / `MSG_CTRUNC`), and the fds that did arrive are closed.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The most fds one message may carry.
pub const MAX_FDS: usize = 64;

/// A connected `SOCK_SEQPACKET` Unix socket pair, both ends close-on-exec.
pub fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded, so both numbers are fresh fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends `data` as one message with `fds` attached (`SCM_RIGHTS`; at most [`MAX_FDS`]).
/// The fds stay open here: the receiver gets new descriptors of the same open files.
pub fn send_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    send_raw_fds(sock, data, &raw)
}

/// [`send_fds`] for fd numbers (the template's fork requests carry the numbers of fds that
/// the caller keeps open until the request is sent: they are not ours to borrow here).
pub(crate) fn send_raw_fds(sock: BorrowedFd<'_>, data: &[u8], raw: &[RawFd]) -> io::Result<()> {
    if raw.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds for one message",
        ));
    }
    let payload = std::mem::size_of_val(raw);
    // SAFETY: CMSG_SPACE / CMSG_LEN only compute sizes.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(payload as u32) as usize,
            libc::CMSG_LEN(payload as u32) as usize,
        )
    };
    // u64 words: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed, aligned bytes, enough for one header
        // with `payload` bytes of data (CMSG_SPACE), so CMSG_FIRSTHDR is non-null and
        // CMSG_DATA has room for the fd numbers.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = len as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                payload,
            );
        }
    }
    loop {
        // SAFETY: `msg` points at `iov` (over `data`) and `control`, all alive for the call;
        // the fds in `control` are borrowed, hence open, for the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return if n as usize == data.len() {
                Ok(())
            } else {
                Err(io::Error::other("short send on an fd socket"))
            };
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one message into `buf` and the fds attached to it (close-on-exec), blocking until
/// one arrives. `Ok(None)` at end of stream (the peer closed its end). A truncated message or
/// fd list is an error (the fds that came are closed).
pub fn recv_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    recv_fds_flags(sock, buf, 0)
}

/// [`recv_fds`] that never blocks: `WouldBlock` when no message is waiting.
pub fn try_recv_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    recv_fds_flags(sock, buf, libc::MSG_DONTWAIT)
}

fn recv_fds_flags(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: libc::c_int,
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space =
        unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (over `buf`) and `control`, alive for the call.
        let n =
            unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | flags) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg`'s control area; CMSG_FIRSTHDR/NXTHDR walk it within
    // `msg_controllen`, and each SCM_RIGHTS payload holds fds that are now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let bytes = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "truncated message on an fd socket",
        ));
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((n, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn an_fd_crosses_with_its_message() {
        let (a, b) = socket_pair().unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        send_fds(a.as_fd(), b"pipe", &[w.as_fd()]).unwrap();
        drop(w);
        let mut buf = [0u8; 16];
        let (n, mut fds) = recv_fds(b.as_fd(), &mut buf).unwrap().unwrap();
        assert_eq!(&buf[..n], b"pipe");
        assert_eq!(fds.len(), 1);
        let w2 = fds.pop().unwrap();
        rustix::io::write(&w2, b"x").unwrap();
        let mut got = [0u8; 1];
        rustix::io::read(&r, &mut got).unwrap();
        assert_eq!(&got, b"x");
        let flags = rustix::io::fcntl_getfd(&w2).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn end_of_stream_and_truncation() {
        let (a, b) = socket_pair().unwrap();
        send_fds(a.as_fd(), b"too long for the buffer", &[]).unwrap();
        let mut small = [0u8; 4];
        let err = recv_fds(b.as_fd(), &mut small).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = try_recv_fds(b.as_fd(), &mut small).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        assert!(recv_fds(b.as_fd(), &mut small).unwrap().is_none());
    }

    #[test]
    fn too_many_fds_are_refused() {
        let (a, _b) = socket_pair().unwrap();
        let fds: Vec<BorrowedFd<'_>> = (0..=MAX_FDS).map(|_| a.as_fd()).collect();
        let err = send_fds(a.as_fd(), b"x", &fds).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
