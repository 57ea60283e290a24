//! A duplex message link between a parent and one worker: one memfd holding two [rings], and
//! four eventfds to wake the sides.
//!
//! # Layout of the segment
//! | offset                | what                                                      |
//! |-----------------------|-----------------------------------------------------------|
//! | 0                     | [`ChannelHeader`]: `"GFCH"`+version word, ring capacity, data offset |
//! | 128                   | down ring header (parent → child), [`RingHeader`]         |
//! | 512                   | up ring header (child → parent)                           |
//! | `data_offset` (a page)| down ring data, `ring_capacity` bytes                     |
//! | `+ ring_capacity`     | up ring data, `ring_capacity` bytes                       |
//!
//! `ring_capacity` is the requested capacity rounded up to whole pages. The four eventfds are,
//! in [`ChannelFds::events`] order: down-data, down-space, up-data, up-space. Each has one
//! sleeper (the side that waits for data or space) and one ringer (the other side).
//!
//! A channel also carries one end of a `SOCK_SEQPACKET` socket pair ([`ChannelFds::sock`]):
//! the way [bulk segments](crate::shm::bulk::hub) reach the peer, as fds with `SCM_RIGHTS`,
//! never through `/proc`. Every send first pushes the fds the peer may need
//! ([`hub::push`](crate::shm::bulk::hub::push)); the peer reads them when it unpacks a blob.
//!
//! # Protocol: handing the child its end
//! 1. The parent calls [`Channel::create`]; every fd is close-on-exec, so no other child
//!    inherits them.
//! 2. Just before spawning, [`Channel::set_inheritable`]`(true)` clears close-on-exec on the
//!    six fds; the parent puts [`ChannelFds::encode`] of [`Channel::child_fds`] in the child's
//!    environment and spawns it; right after, `set_inheritable(false)`. Spawns of the engine
//!    happen on one thread, so no other engine child inherits the window; a process spawned
//!    concurrently by unrelated code (say Python's `subprocess`) could, which is harmless to
//!    the channel (it only keeps the memory alive longer). Once the child runs, the parent
//!    closes its copy of the child's socket end ([`Channel::close_child_end`]).
//! 3. The child calls [`Channel::from_env`], which decodes the variable and calls
//!    [`Channel::open_inherited`] (`unsafe`: it turns numbers into owned fds), which takes
//!    ownership of the fds, makes them close-on-exec again (so the worker's own children do
//!    not inherit them) and checks the segment's magic, version and sizes.
//!
//! # When a process dies
//! See the ring's module doc: whole messages sent before the death are still received, then
//! `Disconnected`. Dropping a `Channel` closes its ends the same way (the peer's receive sees
//! `Disconnected` once drained, its send sees `Disconnected` at once). Nothing is left behind:
//! the segment is a memfd, freed when the last process holding it exits.
//!
//! [rings]: crate::shm::ring

use std::io;
use std::mem::{align_of, size_of};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;

use rustix::io::{fcntl_getfd, fcntl_setfd, FdFlags};

use super::bulk::hub::{self, Pushed};
use super::fdpass::socket_pair;
use super::ring::{Bells, Consumer, Producer, Ring, RingHeader, Storage};
use super::segment::Segment;
use crate::sync::{AtomicU64, GlobalMutex, Mutex, Ordering};
use crate::sys::notify::Notifier;
use crate::{RecvError, SendError, Wait};

/// `"GFCH"`: marks a channel segment.
const CHANNEL_MAGIC: u32 = u32::from_be_bytes(*b"GFCH");
/// Bumped whenever the segment layout changes.
const CHANNEL_VERSION: u32 = 1;
const MAGIC_VERSION: u64 = ((CHANNEL_MAGIC as u64) << 32) | CHANNEL_VERSION as u64;

/// The first bytes of a channel segment; written by the parent before the child exists.
#[repr(C)]
struct ChannelHeader {
    magic_version: AtomicU64,
    ring_capacity: AtomicU64,
    data_offset: AtomicU64,
}

/// Offsets of the two ring headers (down, up), after the channel header.
const RING_HEADERS: [usize; 2] = {
    let first = size_of::<ChannelHeader>().next_multiple_of(align_of::<RingHeader>());
    [first, first + size_of::<RingHeader>()]
};
const HEADERS_END: usize = RING_HEADERS[1] + size_of::<RingHeader>();

/// The largest ring capacity [`Channel::create`] accepts (1 GiB per direction). Messages of any
/// size stream through a ring of any capacity, so a larger ring buys nothing, while creating
/// one touches every page of it (see [`Segment::create`]).
pub const MAX_RING_CAPACITY: usize = 1 << 30;

/// Fd numbers a child needs to open its end of a [`Channel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelFds {
    /// The memfd holding the header and both rings.
    pub memfd: RawFd,
    /// The eventfds: down-data, down-space, up-data, up-space.
    pub events: [RawFd; 4],
    /// The child's end of the fd socket.
    pub sock: RawFd,
}

impl ChannelFds {
    /// The six numbers, comma-separated (`"7,8,9,10,11,12"`), for an environment variable.
    pub fn encode(&self) -> String {
        let [a, b, c, d] = self.events;
        format!("{},{a},{b},{c},{d},{}", self.memfd, self.sock)
    }

    /// Parses [`encode`](ChannelFds::encode)'s format: exactly six non-negative numbers.
    pub fn decode(s: &str) -> Option<Self> {
        let mut nums = s
            .split(',')
            .map(|n| n.trim().parse::<RawFd>().ok().filter(|&n| n >= 0));
        let mut next = || nums.next().flatten();
        let fds = ChannelFds {
            memfd: next()?,
            events: [next()?, next()?, next()?, next()?],
            sock: next()?,
        };
        match nums.next() {
            None => Some(fds),
            Some(_) => None,
        }
    }

    fn all(&self) -> [RawFd; 6] {
        let [a, b, c, d] = self.events;
        [self.memfd, a, b, c, d, self.sock]
    }
}

/// One ring of a channel, inside the channel's segment.
struct ShmStorage {
    header: NonNull<RingHeader>,
    data: NonNull<u8>,
    capacity: usize,
}

// SAFETY: the pointers target the channel's `Segment`, which is not tied to a thread; all
// access to the bytes follows the ring protocol (atomics in the header, data bytes owned by one
// side at a time).
unsafe impl Send for ShmStorage {}
// SAFETY: as above.
unsafe impl Sync for ShmStorage {}

// SAFETY: `header` and `data..data + capacity` lie inside the channel's segment (checked by
// `Channel::attach` against the segment length), which the `Channel` owns and unmaps only after
// its rings are dropped; the copies touch exactly the requested bytes.
unsafe impl Storage for ShmStorage {
    fn header(&self) -> &RingHeader {
        // SAFETY: the header is inside the live mapping, aligned (checked in `attach`) and
        // initialised by the parent before any child existed; it is all atomics, so shared
        // references to it are sound while another process updates it.
        unsafe { self.header.as_ref() }
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    unsafe fn copy_in(&self, pos: usize, src: &[u8]) {
        // SAFETY: `pos + src.len() <= capacity` and the caller owns those bytes (trait
        // contract); `src` is private memory of this process, so it cannot overlap the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.as_ptr().add(pos), src.len())
        };
    }

    unsafe fn copy_out(&self, pos: usize, dst: *mut u8, len: usize) {
        // SAFETY: `pos + len <= capacity`, the bytes are published to the caller, `dst` is valid
        // for `len` writes (trait contract) and is private memory of this process.
        unsafe { std::ptr::copy_nonoverlapping(self.data.as_ptr().add(pos), dst, len) };
    }
}

/// One direction as seen from one end: the ring and its two doorbells.
type End<'a> = (&'a Ring<ShmStorage>, Bells<'a, Notifier>);

/// Which end of the channel this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Parent,
    Child,
}

/// A duplex message channel to another process over shared memory.
///
/// Messages are byte strings of any length, delivered whole and in order. `send` calls are
/// serialised by an internal lock, as are `recv` calls; a send and a recv run in parallel.
/// A thread waiting for the lock does not see its own [`Wait`] until it holds the lock.
pub struct Channel {
    tx: Mutex<Producer>,
    rx: Mutex<Consumer>,
    /// Down (parent → child) and up (child → parent).
    rings: [Ring<ShmStorage>; 2],
    /// In [`ChannelFds::events`] order.
    bells: [Notifier; 4],
    role: Role,
    /// This end of the fd socket (registered with the bulk hub, which drains it).
    sock: Arc<OwnedFd>,
    /// The parent's copy of the child's end, until the child has it.
    child_sock: Option<OwnedFd>,
    /// Which fds were pushed to the peer (locked inside the send lock).
    pushed: Mutex<Pushed>,
    /// The hub epoch `pushed` is up to date with (written under the send lock): a send that
    /// finds the hub still at it has nothing to push and skips `pushed`'s lock, which a run of
    /// one frame per tiny item would otherwise take once per frame.
    pushed_epoch: AtomicU64,
    // Last: the rings point into it, so it must be unmapped after them.
    segment: Segment,
}

// The process layer shares one `Channel` between threads (a sender, a receiver, a watcher).
const _: fn() = || {
    fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<Channel>();
};

/// Fd numbers already taken over by [`Channel::open_inherited`] in this process. Never
/// shrinks: once closed, a number may be reused for something unrelated, and a stale
/// `ChannelFds` must not take that over.
static CLAIMED: GlobalMutex<Vec<RawFd>> = GlobalMutex::new(Vec::new());

impl Channel {
    /// Creates the parent's end: a segment with two rings of at least `ring_capacity` bytes
    /// each (rounded up to whole pages), and four eventfds, all close-on-exec. A capacity above
    /// [`MAX_RING_CAPACITY`] is refused with `InvalidInput`.
    pub fn create(ring_capacity: usize) -> io::Result<Channel> {
        let page = rustix::param::page_size();
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "ring capacity too large");
        if ring_capacity > MAX_RING_CAPACITY {
            return Err(too_big());
        }
        let cap = ring_capacity
            .max(1)
            .checked_next_multiple_of(page)
            .ok_or_else(too_big)?;
        let data_offset = HEADERS_END.next_multiple_of(page);
        let len = cap
            .checked_mul(2)
            .and_then(|d| d.checked_add(data_offset))
            .ok_or_else(too_big)?;
        let segment = Segment::create(len)?;
        let base = segment.as_ptr();
        // SAFETY: the segment is at least `HEADERS_END` bytes, page aligned, and not shared
        // yet, so these writes race with nothing; each offset is a multiple of the type's
        // alignment (`RING_HEADERS` is computed that way, and the channel header is at 0).
        unsafe {
            base.cast::<ChannelHeader>().write(ChannelHeader {
                magic_version: AtomicU64::new(MAGIC_VERSION),
                ring_capacity: AtomicU64::new(cap as u64),
                data_offset: AtomicU64::new(data_offset as u64),
            });
            for off in RING_HEADERS {
                base.add(off)
                    .cast::<RingHeader>()
                    .write(RingHeader::new(cap));
            }
        }
        let bells = [
            Notifier::new()?,
            Notifier::new()?,
            Notifier::new()?,
            Notifier::new()?,
        ];
        let (sock, child_sock) = socket_pair()?;
        let mut ch = Self::attach(segment, bells, sock, Role::Parent)?;
        ch.child_sock = Some(child_sock);
        Ok(ch)
    }

    /// Builds either end over a mapped segment, checking its header against its size.
    fn attach(
        segment: Segment,
        bells: [Notifier; 4],
        sock: OwnedFd,
        role: Role,
    ) -> io::Result<Channel> {
        let bad =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("channel: {what}"));
        if segment.len() < HEADERS_END {
            return Err(bad("segment too small"));
        }
        let base = segment.as_ptr();
        // SAFETY: the mapping is page aligned and at least `HEADERS_END` bytes long, so the
        // header is in bounds and aligned; it is all atomics, so reading it while a (misbehaving)
        // peer writes it is not a data race.
        let header = unsafe { &*base.cast::<ChannelHeader>() };
        if header.magic_version.load(Ordering::Relaxed) != MAGIC_VERSION {
            return Err(bad(
                "bad magic or version (parent and worker built differently?)",
            ));
        }
        let cap = usize::try_from(header.ring_capacity.load(Ordering::Relaxed)).ok();
        let data_offset = usize::try_from(header.data_offset.load(Ordering::Relaxed)).ok();
        let (cap, data_offset) = match (cap, data_offset) {
            (Some(c), Some(d)) if c > 0 && d >= HEADERS_END => (c, d),
            _ => return Err(bad("bad ring capacity or data offset")),
        };
        let expected = cap.checked_mul(2).and_then(|d| d.checked_add(data_offset));
        if expected != Some(segment.len()) {
            return Err(bad("segment size does not match its header"));
        }
        let ring = |i: usize| -> io::Result<Ring<ShmStorage>> {
            // SAFETY: `RING_HEADERS[i] + size_of::<RingHeader>() <= HEADERS_END <= len` and
            // `data_offset + (i + 1) * cap <= len` (checked above), so both pointers are in
            // bounds of the mapping and non-null; the header offset is aligned (see `create`).
            let (header, data) = unsafe {
                (
                    NonNull::new_unchecked(base.add(RING_HEADERS[i]).cast::<RingHeader>()),
                    NonNull::new_unchecked(base.add(data_offset + i * cap)),
                )
            };
            let storage = ShmStorage {
                header,
                data,
                capacity: cap,
            };
            storage.header().validate(cap)?;
            Ok(Ring::new(storage))
        };
        let rings = [ring(0)?, ring(1)?];
        let (out, inc) = match role {
            Role::Parent => (&rings[0], &rings[1]),
            Role::Child => (&rings[1], &rings[0]),
        };
        // Fresh `Ring` values, so both ends are still there to take.
        let taken = || bad("ring end already taken");
        let tx = Mutex::new(out.producer().ok_or_else(taken)?);
        let rx = Mutex::new(inc.consumer().ok_or_else(taken)?);
        let sock = Arc::new(sock);
        hub::register_socket(&sock);
        Ok(Channel {
            tx,
            rx,
            rings,
            bells,
            role,
            sock,
            child_sock: None,
            pushed: Mutex::new(Pushed::default()),
            pushed_epoch: AtomicU64::new(0),
            segment,
        })
    }

    /// The parent's end and a child's end of a fresh channel, both in this process (the child
    /// end maps the segment a second time and uses duplicated fds). For tests and in-process
    /// workers.
    pub fn pair(ring_capacity: usize) -> io::Result<(Channel, Channel)> {
        let parent = Channel::create(ring_capacity)?;
        let dup = |fd| rustix::io::fcntl_dupfd_cloexec(fd, 0);
        let memfd = dup(parent.segment.fd())?;
        let [a, b, c, d] = &parent.bells;
        let bells = [a, b, c, d].map(|n| dup(n.fd()).map(Notifier::from_fd));
        let [a, b, c, d] = bells;
        let mut parent = parent;
        let sock = parent
            .child_sock
            .take()
            .ok_or_else(|| io::Error::other("no child end"))?;
        let child = Self::attach(Segment::open(memfd)?, [a?, b?, c?, d?], sock, Role::Child)?;
        Ok((parent, child))
    }

    /// The fd numbers (valid in this process) that the child must inherit, to pass in its
    /// environment with [`ChannelFds::encode`].
    pub fn child_fds(&self) -> ChannelFds {
        let [a, b, c, d] = &self.bells;
        ChannelFds {
            memfd: self.segment.fd().as_raw_fd(),
            events: [a, b, c, d].map(|n| n.fd().as_raw_fd()),
            sock: self.child_sock.as_ref().map_or(-1, |s| s.as_raw_fd()),
        }
    }

    /// Closes the parent's copy of the child's socket end, once the child has inherited it.
    pub fn close_child_end(&mut self) {
        self.child_sock = None;
    }

    /// Clears (`true`) or restores (`false`) close-on-exec on the fds of [`child_fds`]
    /// (Channel::child_fds). The spawner calls `true` just before spawning the child and
    /// `false` right after.
    pub fn set_inheritable(&self, inheritable: bool) -> io::Result<()> {
        let flags = if inheritable {
            FdFlags::empty()
        } else {
            FdFlags::CLOEXEC
        };
        fcntl_setfd(self.segment.fd(), flags)?;
        for bell in &self.bells {
            fcntl_setfd(bell.fd(), flags)?;
        }
        if let Some(sock) = &self.child_sock {
            fcntl_setfd(sock, flags)?;
        }
        Ok(())
    }

    /// Opens the child's end from the fds named in the environment variable `var`, which the
    /// parent set to [`ChannelFds::encode`] of [`Channel::child_fds`] for this process alone
    /// (module doc, step 3). A missing or malformed variable is `InvalidInput`.
    ///
    /// This is the one place where the engine turns fd numbers from its environment into
    /// owned fds (through [`Channel::open_inherited`]); the worker calls it once, at start-up.
    pub fn from_env(var: &str) -> io::Result<Channel> {
        let fds = std::env::var(var)
            .ok()
            .and_then(|v| ChannelFds::decode(&v))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("not started as a gilfree worker: {var} is missing or malformed"),
                )
            })?;
        // SAFETY: the parent wrote `var` for this process when it spawned it (module doc, step
        // 2), naming fds it made inheritable for this child alone, so nothing else in this
        // process was handed them. `open_inherited` still refuses numbers already claimed in
        // this process, closed numbers, and fds of the wrong kind, so a stale or forged
        // variable fails instead of taking over an fd that something else owns.
        unsafe { Self::open_inherited(fds) }
    }

    /// Opens the child's end from fds inherited from the parent (see the module doc), taking
    /// ownership of them. Succeeds at most once per process for a given fd number: a second
    /// call naming any of the same fds fails with `AlreadyExists`. Numbers that name no open
    /// fd, or an fd of the wrong kind, are refused with `InvalidInput`/`InvalidData`.
    ///
    /// # Safety
    /// Each number in `fds` must name an fd this process inherited for this channel, which
    /// no other object in the process owns or will close: from here on the returned
    /// `Channel` owns and closes them. The checks above catch mistakes (a stale or repeated
    /// `ChannelFds`), not a number that some other owner in the process is using.
    pub unsafe fn open_inherited(fds: ChannelFds) -> io::Result<Channel> {
        let all = fds.all();
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
        if all.iter().any(|&fd| fd < 0) {
            return Err(invalid("negative fd in ChannelFds"));
        }
        if (1..all.len()).any(|i| all[..i].contains(&all[i])) {
            return Err(invalid("repeated fd in ChannelFds"));
        }
        {
            let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
            if all.iter().any(|fd| claimed.contains(fd)) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "these channel fds were already opened in this process",
                ));
            }
            claimed.extend_from_slice(&all);
        }
        for fd in all {
            // SAFETY: the caller hands us fds inherited from the parent (this function's
            // `# Safety` contract), which no other object of this process owns: `CLAIMED` above
            // makes us the only taker. The borrow lasts for this one call only.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            fcntl_getfd(borrowed)
                .map_err(|_| invalid("ChannelFds names an fd that is not open"))?;
        }
        let take = |fd: RawFd| -> io::Result<OwnedFd> {
            // SAFETY: `fd` is open (checked above) and ours alone to own (claimed above); from
            // here on the `OwnedFd` is its only owner and closes it exactly once.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            // The worker's own children must not inherit the channel.
            fcntl_setfd(&owned, FdFlags::CLOEXEC)?;
            Ok(owned)
        };
        let [a, b, c, d] = fds.events;
        let memfd = take(fds.memfd)?;
        let events = [take(a)?, take(b)?, take(c)?, take(d)?];
        let sock = take(fds.sock)?;
        for ev in &events {
            check_eventfd(ev)?;
        }
        let st = rustix::fs::fstat(&sock)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("ChannelFds: fd {} is not a socket", fds.sock),
            ));
        }
        let segment = Segment::open(memfd)?;
        Self::attach(segment, events.map(Notifier::from_fd), sock, Role::Child)
    }

    /// (outgoing ring, its bells), (incoming ring, its bells) for this end.
    fn ends(&self) -> (End<'_>, End<'_>) {
        let [down_data, down_space, up_data, up_space] = &self.bells;
        let down = (
            &self.rings[0],
            Bells {
                data: down_data,
                space: down_space,
            },
        );
        let up = (
            &self.rings[1],
            Bells {
                data: up_data,
                space: up_space,
            },
        );
        match self.role {
            Role::Parent => (down, up),
            Role::Child => (up, down),
        }
    }

    /// Sends one message of any length (including 0 and more than the ring capacity), waiting
    /// for ring space as `wait` allows. If it fails part-way through a message, later sends
    /// fail too (the peer could no longer find message boundaries); the process layer then
    /// discards the channel. `wait.peer` is only consulted while waiting for space: a message
    /// that fits is written without any system call, even if the peer has just died (its death
    /// then shows on the next `recv`).
    pub fn send(&self, msg: &[u8], wait: &mut Wait<'_>) -> Result<(), SendError> {
        let ((ring, bells), _) = self.ends();
        let mut producer = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        self.push_fds();
        ring.send(&mut producer, msg, bells, wait)
    }

    /// Like [`send`](Channel::send), but does not wake the peer if it sleeps waiting for data
    /// (unless this send must itself wait for ring space, which it rings for first): a run of
    /// small messages then costs the peer one wake-up, at the next [`flush`](Channel::flush)
    /// or plain `send`.
    pub fn send_deferred(&self, msg: &[u8], wait: &mut Wait<'_>) -> Result<(), SendError> {
        let ((ring, bells), _) = self.ends();
        let mut producer = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        self.push_fds();
        ring.send_deferred(&mut producer, msg, bells, wait)
    }

    /// A deferred send that never waits: `Ok(false)` (nothing written) if the message does
    /// not fit in the ring's free space right now.
    pub fn try_send_deferred(&self, msg: &[u8]) -> Result<bool, SendError> {
        let ((ring, bells), _) = self.ends();
        let mut producer = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        self.push_fds();
        ring.try_send_deferred(&mut producer, msg, bells)
    }

    /// Pushes the bulk segment fds the peer may need before this message (see the module
    /// doc). Called under the send lock, so pushes and messages keep their order. A failed
    /// push (a dead peer) is not reported here: the message's own send reports it.
    fn push_fds(&self) {
        if hub::epoch() == self.pushed_epoch.load(Ordering::Relaxed) {
            return;
        }
        let mut pushed = self.pushed.lock().unwrap_or_else(|e| e.into_inner());
        let _ = hub::push(self.sock.as_fd(), &mut pushed);
        self.pushed_epoch.store(pushed.epoch(), Ordering::Relaxed);
    }

    /// Wakes the peer if it sleeps waiting for data that deferred sends published. Costs
    /// nothing (no fence, no system call) when no deferred send is unflushed.
    pub fn flush(&self) -> io::Result<()> {
        let ((ring, bells), _) = self.ends();
        let mut producer = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        ring.flush(&mut producer, bells.data)
    }

    /// Receives the next whole message. A `Timeout` or `Interrupted` result keeps what was
    /// received so far, and the next `recv` carries on. When the peer is gone (`wait.peer`
    /// readable, or the peer dropped its end), whole messages still in the ring are returned
    /// first, then `Disconnected`.
    pub fn recv(&self, wait: &mut Wait<'_>) -> Result<Vec<u8>, RecvError> {
        let (_, (ring, bells)) = self.ends();
        let mut consumer = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        ring.recv(&mut consumer, bells, wait)
    }

    /// Takes the messages already whole in the ring, at most `max`, handing each to `sink`;
    /// never waits (see [`Ring::recv_ready`]). Returns how many it took.
    pub fn recv_ready(
        &self,
        max: usize,
        scratch: &mut Vec<u8>,
        sink: impl FnMut(&[u8]),
    ) -> Result<usize, RecvError> {
        let (_, (ring, bells)) = self.ends();
        let mut consumer = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        ring.recv_ready(&mut consumer, bells, max, scratch, sink)
    }

    /// The capacity of each of the two rings, in bytes.
    pub fn capacity(&self) -> usize {
        self.rings[0].capacity()
    }

    /// Whether a byte of a message is waiting to be received (non-blocking, no lock, no system
    /// call). A `recv` after `true` makes progress without waiting, though the message may not
    /// be whole yet.
    pub fn has_incoming(&self) -> bool {
        let (_, (ring, _)) = self.ends();
        ring.has_unread()
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        hub::channel_closing(&self.sock);
        let ((out, out_bells), (inc, in_bells)) = self.ends();
        out.close_producer(out_bells.data);
        inc.close_consumer(in_bells.space);
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("role", &self.role)
            .field("fds", &self.child_fds())
            .field("segment_len", &self.segment.len())
            .finish_non_exhaustive()
    }
}

/// Refuses an fd that is not an eventfd, where `/proc` can tell (an inherited number that
/// points at the wrong object would otherwise fail in confusing ways later).
fn check_eventfd(fd: &OwnedFd) -> io::Result<()> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()));
    match link {
        Ok(target) if target.to_string_lossy() != "anon_inode:[eventfd]" => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ChannelFds: fd {} is not an eventfd", fd.as_raw_fd()),
        )),
        _ => Ok(()),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    fn watchdog() -> Wait<'static> {
        Wait::timeout(Some(Duration::from_secs(60)))
    }

    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        crate::shm::ring::tests::pattern(seed, len)
    }

    #[test]
    fn fds_encode_decode() {
        let fds = ChannelFds {
            memfd: 7,
            events: [8, 9, 10, 11],
            sock: 12,
        };
        assert_eq!(fds.encode(), "7,8,9,10,11,12");
        assert_eq!(ChannelFds::decode("7,8,9,10,11,12"), Some(fds));
        for bad in [
            "",
            "7,8,9,10,11",
            "7,8,9,10,11,12,13",
            "7,8,x,10,11,12",
            "7,8,-9,10,11,12",
        ] {
            assert_eq!(ChannelFds::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_oversized_ring_is_refused_before_any_memory_is_touched() {
        for cap in [MAX_RING_CAPACITY + 1, 1 << 40, usize::MAX] {
            let e = Channel::create(cap).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{cap}");
        }
    }

    #[test]
    fn layout_is_rounded_to_pages() {
        let (p, _c) = Channel::pair(1).unwrap();
        let page = rustix::param::page_size();
        assert_eq!(p.segment.len(), 3 * page);
        assert_eq!(RING_HEADERS, [128, 512]);
    }

    #[test]
    fn round_trip_both_ways() {
        let (parent, child) = Channel::pair(4096).unwrap();
        parent.send(b"ping", &mut watchdog()).unwrap();
        assert!(child.has_incoming());
        assert_eq!(child.recv(&mut watchdog()).unwrap(), b"ping");
        assert!(!child.has_incoming());
        child.send(b"", &mut watchdog()).unwrap();
        child.send(b"pong", &mut watchdog()).unwrap();
        assert_eq!(parent.recv(&mut watchdog()).unwrap(), b"");
        assert_eq!(parent.recv(&mut watchdog()).unwrap(), b"pong");
    }

    #[test]
    fn sizes_around_the_capacity_between_threads() {
        let (parent, child) = Channel::pair(4096).unwrap();
        let cap = 4096;
        let sizes = [0, 1, cap - 9, cap - 8, cap - 1, cap, cap + 1, 10 * cap, 3];
        std::thread::scope(|s| {
            s.spawn(|| loop {
                match child.recv(&mut watchdog()) {
                    Ok(m) => child.send(&m, &mut watchdog()).unwrap(),
                    Err(RecvError::Disconnected) => break,
                    Err(e) => panic!("{e}"),
                }
            });
            for (i, &n) in sizes.iter().enumerate() {
                let msg = pattern(i as u64, n);
                parent.send(&msg, &mut watchdog()).unwrap();
                assert!(parent.recv(&mut watchdog()).unwrap() == msg, "size {n}");
            }
            // Closing the parent's end stops the echo thread.
            let (down, bells) = parent.ends().0;
            down.close_producer(bells.data);
        });
    }

    #[test]
    fn a_64_mib_message_through_a_64_kib_ring() {
        let (parent, child) = Channel::pair(64 << 10).unwrap();
        let msg = pattern(64, 64 << 20);
        std::thread::scope(|s| {
            s.spawn(|| parent.send(&msg, &mut watchdog()).unwrap());
            let got = child.recv(&mut watchdog()).unwrap();
            assert!(got == msg);
        });
    }

    #[test]
    fn deferred_frames_then_flush_between_threads() {
        let (parent, child) = Channel::pair(4096).unwrap();
        // Many small frames and one larger than the ring (which must ring for space itself).
        let big = pattern(9, 3 * 4096);
        std::thread::scope(|s| {
            s.spawn(|| {
                for round in 0..50u32 {
                    for i in 0..20u32 {
                        let m = format!("{round}:{i}");
                        child.send_deferred(m.as_bytes(), &mut watchdog()).unwrap();
                    }
                    child.send_deferred(&big, &mut watchdog()).unwrap();
                    child.flush().unwrap();
                    // Nothing owed: cheap and harmless.
                    child.flush().unwrap();
                }
            });
            for round in 0..50u32 {
                for i in 0..20u32 {
                    let got = parent.recv(&mut watchdog()).unwrap();
                    assert_eq!(got, format!("{round}:{i}").as_bytes());
                }
                assert!(parent.recv(&mut watchdog()).unwrap() == big);
            }
        });
    }

    #[test]
    fn recv_timeout_keeps_progress() {
        let (parent, child) = Channel::pair(4096).unwrap();
        let msg = pattern(3, 3 * 4096);
        std::thread::scope(|s| {
            s.spawn(|| parent.send(&msg, &mut watchdog()).unwrap());
            // Zero-timeout receives take what is there and return; none may lose a byte.
            let got = loop {
                match child.recv(&mut Wait::timeout(Some(Duration::ZERO))) {
                    Ok(m) => break m,
                    Err(RecvError::Timeout) => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            };
            assert!(got == msg);
        });
    }

    #[test]
    fn dropping_an_end_disconnects_the_other() {
        let (parent, child) = Channel::pair(4096).unwrap();
        child.send(b"done", &mut watchdog()).unwrap();
        drop(child);
        assert_eq!(parent.recv(&mut watchdog()).unwrap(), b"done");
        assert!(matches!(
            parent.recv(&mut watchdog()),
            Err(RecvError::Disconnected)
        ));
        assert!(matches!(
            parent.send(b"x", &mut watchdog()),
            Err(SendError::Disconnected)
        ));
    }

    #[test]
    fn open_inherited_refuses_bad_fds() {
        let closed = ChannelFds {
            memfd: 100_000,
            events: [100_001, 100_002, 100_003, 100_004],
            sock: 100_005,
        };
        // SAFETY: these numbers are far above anything this test process has open, so nothing
        // else owns them; the call is expected to refuse them before taking any.
        let e = unsafe { Channel::open_inherited(closed) };
        assert_eq!(e.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        // Once claimed, the same numbers are refused for good.
        // SAFETY: as above.
        let e = unsafe { Channel::open_inherited(closed) };
        assert_eq!(e.unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        // SAFETY: a repeated number is refused before any fd is looked at.
        let e = unsafe {
            Channel::open_inherited(ChannelFds {
                memfd: 5,
                events: [5, 6, 7, 8],
                sock: 9,
            })
        };
        assert_eq!(e.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn from_env_refuses_a_missing_variable() {
        let e = Channel::from_env("GILFREE_TEST_NO_SUCH_VARIABLE").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(
            e.to_string().contains("GILFREE_TEST_NO_SUCH_VARIABLE"),
            "{e}"
        );
    }

    #[test]
    fn set_inheritable_toggles_cloexec() {
        let (parent, _child) = Channel::pair(4096).unwrap();
        let cloexec = || {
            fcntl_getfd(parent.segment.fd())
                .unwrap()
                .contains(FdFlags::CLOEXEC)
        };
        assert!(cloexec());
        parent.set_inheritable(true).unwrap();
        assert!(!cloexec());
        parent.set_inheritable(false).unwrap();
        assert!(cloexec());
    }

    /// Round-trip latency of a small message between two threads (printed, never asserted:
    /// timings depend on the machine). Run with `--ignored --nocapture` in release mode.
    #[test]
    #[ignore]
    fn round_trip_latency() {
        let (parent, child) = Channel::pair(64 << 10).unwrap();
        let n = 100_000;
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..n {
                    let m = child.recv(&mut watchdog()).unwrap();
                    child.send(&m, &mut watchdog()).unwrap();
                }
            });
            let start = std::time::Instant::now();
            for _ in 0..n {
                parent.send(&[0; 64], &mut watchdog()).unwrap();
                parent.recv(&mut watchdog()).unwrap();
            }
            let per = start.elapsed() / n;
            println!("round trip (64 B, thread to thread): {per:?}");
        });
    }
}
