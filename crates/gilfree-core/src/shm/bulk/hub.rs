//! One process's bulk state: the segments it owns, the ones of other processes it maps, and
//! the fds it pushes to its peers over each channel's socket.
//!
//! # Envelope
//! A blob with out-of-band buffers is an *envelope* ([`pack`] makes it, [`unpack`] reads it):
//!
//! | bytes             | what                                                             |
//! |-------------------|------------------------------------------------------------------|
//! | 4                 | [`ENVELOPE_MAGIC`] (`"GFB1"`; a pickle stream never starts so)   |
//! | 4                 | `refs`: number of segments named (`u32` LE)                      |
//! | `24 * refs`       | one [`BulkRef`] each                                             |
//! | 4                 | `bufs`: number of buffers (`u32` LE)                             |
//! | `24 * bufs`       | per buffer: ref index `u32`, zero `u32`, offset `u64`, length `u64` |
//! | rest              | the pickle stream                                                |
//!
//! # How a peer gets a segment's fd (no `/proc`)
//! Every [`Channel`](crate::shm::channel::Channel) carries a `SOCK_SEQPACKET` socket made with
//! it, whose other end the worker inherits like the channel's other fds (the template path
//! carries it too). Before a channel sends a message, [`push`] sends over its socket the fd of
//! every segment this process has *issued a ticket for* that is still busy and that this
//! channel has not been given for that ticket yet (one `SCM_RIGHTS` message, data = the ids,
//! `u64` LE each). A blob may sit inside another blob (a Worker's attributes, a Pool's cached
//! function), so the set is not read off the message: it is every live ticket of the process,
//! which is small. The check costs one atomic load when nothing new was issued.
//!
//! The receiver reads its sockets lazily: [`unpack`] looks an id up among the segments it
//! keeps (at most [`MAX_KNOWN`], oldest let go first, and any its owner retired), and only
//! on a miss drains every registered socket without blocking. The push
//! happened before the message was sent, so the fd is already there; a miss after the drain
//! is a stale blob ([`Stale`]).
//!
//! # Retention
//! A mapping of another process's segment lives exactly as long as the views of it
//! ([`View`]); its pin with it. Besides, at most [`MAX_KNOWN`] received segments stay mapped
//! (unpinned) for later blobs, until their owner retires them. Own segments are the
//! [`BulkPool`]'s (at most [`MAX_FREE`] free ones kept); a [`shared`] segment (a
//! `SharedArray`) lives while some handle of it does. Segments re-sent by reference from a
//! mapping keep that mapping (not a pin: the ticket protects them) until the ticket is
//! claimed.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Weak};

use super::{attach_with, BulkPool, BulkRef, BulkStorage, Pinned, ShmBulk, ShmFactory, Stale};
use crate::shm::fdpass::{send_fds, try_recv_fds, MAX_FDS};
use crate::sync::unmodelled::AtomicU64;
use crate::sync::{GlobalMutex, Ordering};

/// Marks an envelope.
pub const ENVELOPE_MAGIC: &[u8; 4] = b"GFB1";
/// Free own segments kept for reuse.
pub const MAX_FREE: usize = 4;
/// Unclaimed tickets on own segments kept beyond this many are withdrawn, oldest first (a
/// blob that is never loaded elsewhere, say one loaded only in this process, must not keep
/// its segment forever). Large: a Pool's queued tasks hold their tickets until they are sent,
/// and a withdrawn ticket makes its blob stale once the segment is refilled.
pub const MAX_UNCLAIMED: usize = 1024;
/// Idle segments of other processes kept mapped after their last view went (so a later blob
/// naming one finds it without a new push), least recently received first out; one whose
/// owner retired it goes at once. Busy ones (pinned, or named by a blob in flight) are kept
/// beyond this.
pub const MAX_KNOWN: usize = 16;
/// Buffers are placed at offsets that are multiples of this in a fresh segment.
const ALIGN: usize = 64;

/// A view of bytes in a pinned segment (own or another process's): where they are, and the
/// pin that keeps them.
#[derive(Clone)]
pub struct View {
    pinned: Arc<Pinned<ShmBulk>>,
    off: usize,
    len: usize,
}

impl View {
    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        // SAFETY: `off + len <= capacity` was checked when the view was made.
        unsafe { self.pinned.storage().data_ptr().add(self.off) }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy of the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        self.pinned.read(self.off, &mut v);
        v
    }

    /// Writes `src` at `at` (bounds-checked): shared memory, so every holder sees it.
    pub fn write(&self, at: usize, src: &[u8]) {
        assert!(at.checked_add(src.len()).is_some_and(|e| e <= self.len));
        // SAFETY: in bounds of the view (checked), which lies in the pinned segment; writes
        // by holders share the bytes as threads share memory (module doc of `bulk`).
        unsafe { self.pinned.storage().write(self.off + at, src) };
    }

    /// The segment's id.
    pub fn segment_id(&self) -> u64 {
        self.pinned.storage().header().id()
    }
}

/// Per-channel memory of what was pushed (owned by the channel, used under its send lock).
#[derive(Default, Debug)]
pub struct Pushed {
    epoch: u64,
    sent: HashMap<u64, u32>,
}

impl Pushed {
    /// The hub epoch these fds are up to date with (see [`epoch`]).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// The hub's epoch: it moves whenever the set of fds a peer may need changes, so a channel
/// whose [`Pushed`] is at this epoch has nothing to push.
pub fn epoch() -> u64 {
    EPOCH.load(Ordering::Acquire)
}

struct Hub {
    pool: BulkPool<ShmFactory>,
    salt: u64,
    next_shared: u64,
    next_seq: u32,
    /// Standalone segments made here (SharedArrays), while some handle lives.
    shared: Vec<Weak<ShmBulk>>,
    /// Pins of other processes' segments, one per mapping, while some view lives.
    mapped: HashMap<u64, Weak<Pinned<ShmBulk>>>,
    /// Re-sent mappings: kept mapped (not pinned: the ticket protects them) until their
    /// ticket is claimed, so that [`push`] can still hand over the fd.
    forwards: Vec<(Arc<ShmBulk>, BulkRef)>,
    /// id -> the latest ticket seq issued here naming it: what [`push`] offers.
    issued: HashMap<u64, u32>,
    /// Tickets issued here and not settled, `(id, slot) -> seq`: a load of one of them in
    /// this process (a trial load of its own blob) must not claim it.
    mine: HashMap<(u64, u32), u32>,
    /// Own tickets in the order they were issued (for [`MAX_UNCLAIMED`]).
    order: VecDeque<BulkRef>,
    /// Segments pushed by peers (mapped), most recent last, at most [`MAX_KNOWN`].
    known: VecDeque<(u64, Arc<ShmBulk>)>,
    /// Every channel socket of this process, drained on a miss.
    sockets: Vec<Weak<OwnedFd>>,
}

static HUB: GlobalMutex<Option<Hub>> = GlobalMutex::new(None);
/// Bumped whenever a ticket is issued: a channel whose last push saw this value has nothing
/// new to push.
static EPOCH: AtomicU64 = AtomicU64::new(1);

fn with_hub<T>(f: impl FnOnce(&mut Hub) -> T) -> T {
    let mut guard = HUB.lock().unwrap_or_else(|e| e.into_inner());
    let hub = guard.get_or_insert_with(|| {
        use std::hash::{BuildHasher, Hasher};
        let salt = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            & 0xffff_ffff_0000_0000;
        Hub {
            pool: BulkPool::new(ShmFactory, salt, MAX_FREE),
            salt,
            next_shared: 1 << 31,
            next_seq: 0,
            shared: Vec::new(),
            mapped: HashMap::new(),
            forwards: Vec::new(),
            issued: HashMap::new(),
            mine: HashMap::new(),
            order: VecDeque::new(),
            known: VecDeque::new(),
            sockets: Vec::new(),
        }
    });
    f(hub)
}

impl Hub {
    fn seq(&mut self) -> u32 {
        self.next_seq = if self.next_seq >= super::CLAIMED - 1 {
            1
        } else {
            self.next_seq + 1
        };
        self.next_seq
    }

    fn note_issued(&mut self, r: &BulkRef) {
        self.issued.insert(r.id, r.seq);
        self.mine.insert((r.id, r.slot), r.seq);
        if self.pool.get(r.id).is_some() {
            self.order.push_back(*r);
            while self.order.len() > MAX_UNCLAIMED {
                if let Some(old) = self.order.pop_front() {
                    self.pool.withdraw(&old);
                }
            }
        }
        EPOCH.fetch_add(1, Ordering::Release);
    }

    /// Drops settled forwards and dead weak entries.
    fn reap(&mut self) {
        self.forwards.retain(|(s, r)| !super::settled(&**s, r));
        if self.mine.len() > 4 * super::TICKETS {
            // Forget tickets whose segment is gone or whose word moved on (claimed, withdrawn).
            let live: std::collections::HashSet<u64> = self
                .pool
                .segments()
                .map(|s| s.header().id())
                .chain(self.forwards.iter().map(|(_, r)| r.id))
                .collect();
            self.mine.retain(|(id, _), _| live.contains(id));
        }
        self.shared.retain(|w| w.strong_count() > 0);
        self.mapped.retain(|_, w| w.strong_count() > 0);
        self.known.retain(|(_, s)| !s.header().retired());
    }

    /// The segment (and our pin-able handle) that `[ptr, ptr + len)` lies in, if any.
    fn locate(&self, ptr: usize, len: usize) -> Option<Located> {
        let inside = |s: &ShmBulk| {
            let start = s.data_ptr() as usize;
            start <= ptr && ptr + len <= start + s.capacity()
        };
        for s in self.pool.segments() {
            if inside(s) {
                return Some(Located::Own(s.header().id(), ptr - s.data_ptr() as usize));
            }
        }
        for w in &self.shared {
            if let Some(s) = w.upgrade().filter(|s| inside(s)) {
                let off = ptr - s.data_ptr() as usize;
                return Some(Located::Shared(s, off));
            }
        }
        for w in self.mapped.values() {
            if let Some(p) = w.upgrade().filter(|p| inside(p.storage())) {
                let off = ptr - p.storage().data_ptr() as usize;
                return Some(Located::Mapped(p, off));
            }
        }
        None
    }

    /// The storage for `id`; `None` if unknown here.
    fn storage(&mut self, id: u64) -> Option<(Arc<ShmBulk>, bool)> {
        if let Some(s) = self.pool.get(id) {
            return Some((s.clone(), true));
        }
        if let Some(s) = self
            .shared
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| s.header().id() == id)
        {
            return Some((s, true));
        }
        if let Some(p) = self.mapped.get(&id).and_then(Weak::upgrade) {
            return Some((p.storage().clone(), false));
        }
        let (_, s) = self.known.iter().rev().find(|(i, _)| *i == id)?;
        Some((s.clone(), false))
    }

    /// Reads every fd message waiting on this process's sockets (never blocks).
    fn drain(&mut self) {
        let mut buf = [0u8; 8 * MAX_FDS];
        self.sockets.retain(|w| w.strong_count() > 0);
        let socks: Vec<Arc<OwnedFd>> = self.sockets.iter().filter_map(Weak::upgrade).collect();
        for sock in socks {
            while let Ok(Some((n, fds))) = try_recv_fds(sock.as_fd(), &mut buf) {
                let ids = buf[..n]
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap()));
                for (id, fd) in ids.zip(fds) {
                    if self.known.iter().any(|(i, _)| *i == id) {
                        continue; // known already: this fd is a duplicate, closed here
                    }
                    let Ok(s) = ShmBulk::open(fd, Some(id)) else {
                        continue; // not a bulk segment: ignored (a stale blob, if named)
                    };
                    self.known.push_back((id, Arc::new(s)));
                    if self.known.len() > MAX_KNOWN {
                        // The oldest idle one goes (no pin, no blob in flight names it). Busy
                        // ones stay: a queued blob may name one, and their owner keeps them
                        // anyway, so keeping them here costs no memory.
                        let idle = self.known.iter().position(|(_, s)| {
                            let h = s.header();
                            h.pins() == 0 && h.unclaimed() == 0
                        });
                        if let Some(at) = idle {
                            self.known.remove(at);
                        }
                    }
                }
            }
        }
    }
}

enum Located {
    Own(u64, usize),
    Shared(Arc<ShmBulk>, usize),
    Mapped(Arc<Pinned<ShmBulk>>, usize),
}

/// Registers a channel's socket: [`unpack`] drains it on a miss.
pub fn register_socket(sock: &Arc<OwnedFd>) {
    with_hub(|hub| hub.sockets.push(Arc::downgrade(sock)));
}

/// A channel whose socket is `sock` is closing: when it is the process's last one, no peer
/// can receive a segment any more, so the free own segments are freed (busy ones stay until
/// their views and tickets go). A process whose pools are all closed keeps no segment.
pub fn channel_closing(sock: &Arc<OwnedFd>) {
    let mut guard = HUB.lock().unwrap_or_else(|e| e.into_inner());
    let Some(hub) = guard.as_mut() else { return };
    hub.sockets
        .retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(sock)));
    if hub.sockets.is_empty() {
        hub.reap();
        hub.pool.release_free();
        hub.known.clear();
    }
}

/// Sends over `sock` the fds this channel has not been given yet (see the module doc).
/// Errors are the socket's (a dead peer): the message send that follows reports them.
pub fn push(sock: BorrowedFd<'_>, pushed: &mut Pushed) -> io::Result<()> {
    let epoch = EPOCH.load(Ordering::Acquire);
    if epoch == pushed.epoch {
        return Ok(());
    }
    let hub = HUB.lock().unwrap_or_else(|e| e.into_inner());
    let Some(hub) = hub.as_ref() else {
        pushed.epoch = epoch;
        return Ok(());
    };
    // Live tickets: own busy segments, shared arrays, forwards.
    let mut live: Vec<(u64, u32, Arc<ShmBulk>)> = Vec::new();
    for s in hub.pool.segments() {
        let id = s.header().id();
        if let (Some(&seq), true) = (hub.issued.get(&id), BulkPool::<ShmFactory>::busy(s)) {
            live.push((id, seq, s.clone()));
        }
    }
    for s in hub.shared.iter().filter_map(Weak::upgrade) {
        let id = s.header().id();
        if let Some(&seq) = hub.issued.get(&id) {
            live.push((id, seq, s));
        }
    }
    for (p, r) in &hub.forwards {
        if !super::settled(&**p, r) {
            live.push((
                r.id,
                hub.issued.get(&r.id).copied().unwrap_or(r.seq),
                p.clone(),
            ));
        }
    }
    let fresh: Vec<&(u64, u32, Arc<ShmBulk>)> = live
        .iter()
        .filter(|(id, seq, _)| pushed.sent.get(id) != Some(seq))
        .collect();
    for chunk in fresh.chunks(MAX_FDS) {
        let ids: Vec<u8> = chunk
            .iter()
            .flat_map(|(id, _, _)| id.to_le_bytes())
            .collect();
        let fds: Vec<BorrowedFd<'_>> = chunk.iter().map(|(_, _, s)| s.fd()).collect();
        send_fds(sock, &ids, &fds)?;
    }
    pushed.sent = live.iter().map(|(id, seq, _)| (*id, *seq)).collect();
    pushed.epoch = epoch;
    Ok(())
}

/// Whether `[ptr, ptr + len)` lies in a bulk segment this process maps (so pickling sends it
/// by reference, whatever its size).
pub fn is_shared(ptr: usize, len: usize) -> bool {
    with_hub(|hub| hub.locate(ptr, len).is_some())
}

/// Makes an envelope of `bufs` and the pickle `stream`: buffers that lie in a bulk segment go
/// by reference; the others are copied into one own segment.
pub fn pack(bufs: &[&[u8]], stream: &[u8]) -> io::Result<Vec<u8>> {
    with_hub(|hub| {
        hub.reap();
        let mut refs: Vec<BulkRef> = Vec::new();
        let mut descs: Vec<(u32, u64, u64)> = Vec::with_capacity(bufs.len());
        let mut to_copy: Vec<usize> = Vec::new();
        let mut placed: Vec<Option<(u32, u64)>> = vec![None; bufs.len()];
        for (i, b) in bufs.iter().enumerate() {
            let located = if b.is_empty() {
                None
            } else {
                hub.locate(b.as_ptr() as usize, b.len())
            };
            let r = match located {
                None => {
                    to_copy.push(i);
                    continue;
                }
                Some(Located::Own(id, off)) => hub.pool.resend(id).map(|r| (r, off)),
                Some(Located::Shared(s, off)) => {
                    // Never refilled: the ticket only tells push to offer it.
                    let seq = hub.seq();
                    Some((
                        BulkRef {
                            id: s.header().id(),
                            generation: s.header().generation(),
                            slot: 0,
                            seq,
                        },
                        off,
                    ))
                }
                Some(Located::Mapped(p, off)) => {
                    let seq = hub.seq();
                    p.resend(seq).map(|r| {
                        hub.forwards.push((p.storage().clone(), r));
                        (r, off)
                    })
                }
            };
            match r {
                Some((r, off)) => {
                    hub.note_issued(&r);
                    placed[i] = Some((refs.len() as u32, off as u64));
                    refs.push(r);
                }
                None => to_copy.push(i), // out of tickets: copy instead
            }
        }
        if !to_copy.is_empty() {
            let total: usize = to_copy
                .iter()
                .map(|&i| bufs[i].len().next_multiple_of(ALIGN))
                .sum();
            let mut fill = hub.pool.take(total.max(1))?;
            let mut at = 0usize;
            let mut parts = Vec::with_capacity(to_copy.len());
            for &i in &to_copy {
                parts.push((at, bufs[i]));
                placed[i] = Some((refs.len() as u32, at as u64));
                at += bufs[i].len().next_multiple_of(ALIGN);
            }
            fill.write_parts(&parts);
            let r = fill.publish();
            hub.note_issued(&r);
            refs.push(r);
        }
        for (i, p) in placed.iter().enumerate() {
            let (idx, off) = p.expect("every buffer placed");
            descs.push((idx, off, bufs[i].len() as u64));
        }
        let mut out =
            Vec::with_capacity(12 + refs.len() * BulkRef::SIZE + descs.len() * 24 + stream.len());
        out.extend_from_slice(ENVELOPE_MAGIC);
        out.extend_from_slice(&(refs.len() as u32).to_le_bytes());
        for r in &refs {
            out.extend_from_slice(&r.encode());
        }
        out.extend_from_slice(&(descs.len() as u32).to_le_bytes());
        for (idx, off, len) in descs {
            out.extend_from_slice(&idx.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
        }
        out.extend_from_slice(stream);
        Ok(out)
    })
}

/// Why an envelope could not be unpacked.
#[derive(Debug)]
pub enum UnpackError {
    /// Not an envelope, or a malformed one.
    Malformed,
    /// A segment it names was refilled or freed, or never reached this process.
    Stale,
}

impl From<Stale> for UnpackError {
    fn from(_: Stale) -> Self {
        UnpackError::Stale
    }
}

struct Parsed {
    refs: Vec<BulkRef>,
    descs: Vec<(usize, usize, usize)>,
    stream_at: usize,
}

fn parse(blob: &[u8]) -> Option<Parsed> {
    let rest = blob.strip_prefix(ENVELOPE_MAGIC)?;
    let u32_at = |b: &[u8], i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
    };
    let u64_at = |b: &[u8], i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
    };
    let nrefs = u32_at(rest, 0)? as usize;
    let mut at = 4;
    let mut refs = Vec::with_capacity(nrefs.min(1024));
    for _ in 0..nrefs {
        refs.push(BulkRef::decode(rest.get(at..at + BulkRef::SIZE)?)?);
        at += BulkRef::SIZE;
    }
    let nbufs = u32_at(rest, at)? as usize;
    at += 4;
    let mut descs = Vec::with_capacity(nbufs.min(1024));
    for _ in 0..nbufs {
        let idx = u32_at(rest, at)? as usize;
        let off = usize::try_from(u64_at(rest, at + 8)?).ok()?;
        let len = usize::try_from(u64_at(rest, at + 16)?).ok()?;
        if idx >= refs.len() {
            return None;
        }
        descs.push((idx, off, len));
        at += 24;
    }
    Some(Parsed {
        refs,
        descs,
        stream_at: ENVELOPE_MAGIC.len() + at,
    })
}

/// The views of an envelope's buffers, in order, and where its pickle stream starts.
pub fn unpack(blob: &[u8]) -> Result<(Vec<View>, usize), UnpackError> {
    let parsed = parse(blob).ok_or(UnpackError::Malformed)?;
    with_hub(|hub| {
        hub.reap();
        let mut pins: Vec<Arc<Pinned<ShmBulk>>> = Vec::with_capacity(parsed.refs.len());
        for r in &parsed.refs {
            let cached = hub
                .mapped
                .get(&r.id)
                .and_then(Weak::upgrade)
                .filter(|p| p.generation() == r.generation);
            if let Some(p) = cached {
                // Already pinned here for this generation: claim the ticket all the same.
                if hub.mine.get(&(r.id, r.slot)) != Some(&r.seq) {
                    let _ = attach_with(p.storage().clone(), r, true).map(drop);
                }
                pins.push(p);
                continue;
            }
            let found = match hub.storage(r.id) {
                Some(s) => Some(s),
                None => {
                    hub.drain();
                    hub.storage(r.id)
                }
            };
            let (storage, own) = found.ok_or(UnpackError::Stale)?;
            let claim = hub.mine.get(&(r.id, r.slot)) != Some(&r.seq);
            let p = Arc::new(attach_with(storage, r, claim)?);
            if !own {
                hub.mapped.insert(r.id, Arc::downgrade(&p));
            }
            pins.push(p);
        }
        let mut views = Vec::with_capacity(parsed.descs.len());
        for &(idx, off, len) in &parsed.descs {
            let p = &pins[idx];
            if off
                .checked_add(len)
                .is_none_or(|e| e > p.storage().capacity())
            {
                return Err(UnpackError::Malformed);
            }
            views.push(View {
                pinned: p.clone(),
                off,
                len,
            });
        }
        Ok((views, parsed.stream_at))
    })
}

/// [`pack`] of buffers that are views this process holds (they go by reference).
pub fn pack_views(views: &[&View], stream: &[u8]) -> io::Result<Vec<u8>> {
    let bufs: Vec<&[u8]> = views
        .iter()
        // SAFETY: each view's bytes lie in a segment its pin keeps mapped while `views` is
        // borrowed; other holders may write them (shared memory), which `pack` only locates
        // by address here and does not read.
        .map(|v| unsafe { std::slice::from_raw_parts(v.as_ptr(), v.len) })
        .collect();
    pack(&bufs, stream)
}

/// Withdraws the tickets of an envelope this process made and will never send (a cancelled
/// task's arguments), so its segments can be refilled at once.
pub fn discard(blob: &[u8]) {
    let Some(parsed) = parse(blob) else { return };
    with_hub(|hub| {
        for r in &parsed.refs {
            hub.pool.withdraw(r);
            if let Some(at) = hub.forwards.iter().position(|(_, f)| f == r) {
                hub.forwards.remove(at);
            }
        }
    });
}

/// A new standalone segment of `nbytes` zero bytes (a `SharedArray`), alive while a view of it
/// is; the returned view covers all of it.
pub fn shared(nbytes: usize) -> io::Result<View> {
    with_hub(|hub| {
        hub.reap();
        hub.next_shared += 1;
        let id = hub.salt | hub.next_shared;
        let cap = nbytes.max(1).next_multiple_of(super::DATA_OFFSET);
        let storage = Arc::new(ShmBulk::create(id, cap, "gilfree-array")?);
        let r = BulkRef {
            id,
            generation: 1,
            slot: 0,
            seq: 1,
        };
        let p = Arc::new(attach_with(storage.clone(), &r, false).map_err(io::Error::other)?);
        hub.shared.push(Arc::downgrade(&storage));
        Ok(View {
            pinned: p,
            off: 0,
            len: nbytes,
        })
    })
}

/// What this process holds, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Own segments (the pool's), their bytes, and how many are free.
    pub segments: usize,
    /// Their data bytes.
    pub bytes: usize,
    /// Own segments that are free.
    pub free: usize,
    /// Unclaimed tickets on own segments.
    pub pinned: usize,
    /// Other processes' segments mapped here now.
    pub mapped: usize,
    /// Other processes' segments kept mapped for later blobs.
    pub known: usize,
    /// Standalone (SharedArray) segments made here and alive.
    pub shared: usize,
}

/// What this process holds now.
pub fn stats() -> HubStats {
    with_hub(|hub| {
        hub.reap();
        let p = hub.pool.stats();
        HubStats {
            segments: p.segments,
            bytes: p.bytes,
            free: p.free,
            pinned: p.unclaimed,
            mapped: hub.mapped.len(),
            known: hub.known.len(),
            shared: hub.shared.len(),
        }
    })
}
