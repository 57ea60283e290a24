//! Bulk segments: the shared memory that large out-of-band buffers travel in, made, recycled,
//! pinned and freed by their owner.
//!
//! A blob that carries a large buffer (a numpy array, say) carries a [`BulkRef`] instead of the
//! bytes: which segment, which generation of its contents, and a ticket. The receiver maps the
//! segment (its fd reaches it over a socket, [`super::fdpass`]; never through `/proc`) and
//! views the bytes in place. The owner recycles a segment only once nobody can still read it.
//!
//! The protocol is written once, generic over where a segment lives ([`BulkStorage`]): in a
//! sealed memfd ([`ShmBulk`], shared between processes) or on the heap ([`local::LocalBulk`],
//! the in-process twin that the loom models check, data bytes included). The conformance
//! suite (`bulk/tests.rs`) runs on both.
//!
//! # Layout
//! [`BulkHeader`] opens the segment; the data bytes start at [`DATA_OFFSET`] (one page, so data
//! is page aligned):
//!
//! | offset | field           | type            | meaning                                       |
//! |--------|-----------------|-----------------|-----------------------------------------------|
//! | 0      | `magic_version` | `u64`           | `"GFBK"` in the high 32 bits, [`BULK_VERSION`] |
//! | 8      | `id`            | `u64`           | the segment's identity, chosen by its owner    |
//! | 16     | `capacity`      | `u64`           | data bytes                                     |
//! | 24     | `generation`    | `u64`           | bumped by the owner at every refill            |
//! | 32     | `state`         | `u32`           | pins; bit 31 [`RECYCLING`], bit 30 [`RETIRED`] |
//! | 36     | `tickets`       | `[u32; 32]`     | one word per blob in flight (below)            |
//! | 168    | `holders`       | `[u64; 64]`     | `pid << 32 \| pins`: who pins it, how often    |
//!
//! A ticket word is `0` (free), `seq` (issued: a blob names it and nobody has loaded it yet;
//! `0 < seq < 2^31`) or `seq | CLAIMED` (loaded at least once). A holder entry with a zero
//! count is free, whatever pid it last named.
//!
//! # Who writes what
//! - `magic_version`, `id`, `capacity`: the owner, before the fd leaves the process.
//! - `state`: receivers add and remove their own pins (CAS, never while `RECYCLING` is set);
//!   the owner sets `RECYCLING` only by CAS from exactly `0`, clears it itself, and takes
//!   back a dead process's pins; it sets `RETIRED` when it frees the segment (receivers then
//!   drop the fd or mapping they keep of it, and later loads are stale). `generation` and the data while filling: the owner only,
//!   while it holds `RECYCLING`.
//! - A holder entry (bookkeeping for crashes only): the process it names (its count up after
//!   its `state` pin, down before its `state` unpin; CAS a free entry to `me << 32 | 1`); the
//!   owner clears the entry of a process that is dead (`kill(pid, 0)` fails with `ESRCH`),
//!   which cannot race with that process, and subtracts its count from `state`.
//! - Ticket words: whoever sends a blob naming the segment issues one (CAS `0 → seq`) while it
//!   keeps the segment alive (the owner; or a receiver re-sending what it maps, holding its
//!   pin); the first receiver claims it (CAS `seq → seq | CLAIMED`); the issuer withdraws an
//!   unclaimed one it knows is dead (CAS `seq → 0`); the owner clears claimed ones
//!   (CAS `w → 0`).
//! - Data bytes after publishing: anyone who maps the segment may write (a worker writing into
//!   a received array writes shared memory, as a thread would).
//!
//! # Protocol
//! Filling (the owner, [`BulkPool::take`]): pick a segment of the right size class with no
//! unclaimed ticket; take back the pins of dead holders; CAS `state` `0 → RECYCLING` (fails
//! while any process pins it). Check the tickets again (an issuer that let go of its pin
//! after issuing shows here), bump `generation`, copy the bytes in. [`Fill::publish`] issues a ticket, then stores
//! `state = 0` (Release): the ticket now keeps the segment from being refilled.
//!
//! Loading (a receiver, [`attach`]):
//! 1. Pin: CAS `state` `p → p + 1`, refused while `RECYCLING` is set (the blob is stale);
//!    then add one to this process's holder entry (or take a free one).
//! 2. Check `id` and `generation` (Acquire) against the [`BulkRef`]; on a mismatch unpin:
//!    the blob is stale.
//! 3. Claim the ticket: CAS `seq → seq | CLAIMED` (AcqRel). Failing is fine (a second load of
//!    the same blob): the pin of step 1 is what protects this load.
//! 4. View the bytes. Dropping the [`Pinned`] takes the pin back (Release).
//!
//! Why a view is never overwritten: pins and `RECYCLING` live in one word, changed only by
//! read-modify-writes, so either the receiver's pin comes first (and the owner's CAS from 0
//! fails) or the owner's does (and the receiver sees `RECYCLING` and gives up). A receiver
//! that pins after a refill sees the new generation and gives up. A receiver pins (1) before it claims (3), so an owner that saw the
//! claim also sees the pin. Every path is in the loom models (`tests/loom_bulk.rs`).
//!
//! # Size classes, retention, freeing
//! A request of `n` bytes gets a segment whose capacity is `n` rounded up to a size class:
//! whole pages, then the next of eight steps per power of two (at most 12.5 % slack), so an
//! array of the same size always lands in the same class and a warm segment is reused. The
//! pool keeps at most `max_free` free segments (least recently used go first); dropping the
//! pool drops every segment it owns. A receiver's mapping (and fd) keeps the memory alive until
//! its last view goes; a memfd lives in no filesystem, so nothing is ever left in `/dev/shm`.
//!
//! # Limits
//! - A receiver that dies while pinning leaves its entry; the owner takes its pins back once
//!   the process is gone (reaped), at the next refill attempt. A pid reused by then keeps the
//!   segment busy (never the wrong way round: a live pid is never cleared). A process that
//!   dies between its `state` pin and its entry update (or with no entry free: more than
//!   [`HOLDERS`] processes at once) leaves one pin for good: that segment is freed with the
//!   pool, never refilled.
//! - A blob that is never loaded keeps its ticket (and so its segment) until its issuer calls
//!   [`BulkPool::withdraw`], or the pool is dropped.
//! - At most [`TICKETS`] blobs per segment can be in flight at once; [`BulkPool::resend`] then
//!   returns `None` and the caller copies into another segment.

pub mod hub;
pub mod local;
#[cfg(all(test, not(loom)))]
pub(crate) mod tests;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::segment::Segment;
use crate::sync::{unmodelled, AtomicU32, AtomicU64, Ordering};

/// `"GFBK"`: marks a bulk segment header.
pub const BULK_MAGIC: u32 = u32::from_be_bytes(*b"GFBK");
/// Bumped whenever the header layout changes.
pub const BULK_VERSION: u32 = 1;
const MAGIC_VERSION: u64 = ((BULK_MAGIC as u64) << 32) | BULK_VERSION as u64;
/// Ticket words per segment: blobs naming one segment that may be in flight at once.
#[cfg(not(loom))]
pub const TICKETS: usize = 32;
/// Ticket words per segment (fewer under loom, which explores every load of every word).
#[cfg(loom)]
pub const TICKETS: usize = 3;
/// `state` bit: the owner is refilling the segment; no receiver may pin it.
pub const RECYCLING: u32 = 1 << 31;
/// `state` bit: the owner let go of the segment for good; receivers drop what they keep of it
/// and new loads are stale.
pub const RETIRED: u32 = 1 << 30;
const FLAGS: u32 = RECYCLING | RETIRED;
/// Holder entries per segment: processes that may pin one segment at once.
#[cfg(not(loom))]
pub const HOLDERS: usize = 64;
/// Holder entries per segment (fewer under loom).
#[cfg(loom)]
pub const HOLDERS: usize = 2;
/// Ticket word bit: the ticket was claimed by a receiver.
pub const CLAIMED: u32 = 1 << 31;
/// Where the data bytes start in a shared segment (one page).
pub const DATA_OFFSET: usize = 4096;

/// The control block at the start of every bulk segment (see the module doc's layout).
#[repr(C)]
pub struct BulkHeader {
    magic_version: AtomicU64,
    id: AtomicU64,
    capacity: AtomicU64,
    generation: AtomicU64,
    state: AtomicU32,
    tickets: [AtomicU32; TICKETS],
    holders: [AtomicU64; HOLDERS],
}

#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<BulkHeader>() <= DATA_OFFSET);

const fn holder_pid(w: u64) -> u32 {
    (w >> 32) as u32
}

const fn holder_count(w: u64) -> u32 {
    w as u32
}

/// Whether process `pid` may still hold a pin (alive, or a zombie not yet reaped).
fn alive(pid: u32) -> bool {
    #[cfg(loom)]
    {
        let _ = pid;
        true
    }
    #[cfg(not(loom))]
    {
        let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
            return false;
        };
        !matches!(
            rustix::process::test_kill_process(p),
            Err(rustix::io::Errno::SRCH)
        )
    }
}

impl BulkHeader {
    /// A fresh header: generation 1, no pins, no tickets.
    pub fn new(id: u64, capacity: usize) -> BulkHeader {
        BulkHeader {
            magic_version: AtomicU64::new(MAGIC_VERSION),
            id: AtomicU64::new(id),
            capacity: AtomicU64::new(capacity as u64),
            generation: AtomicU64::new(1),
            state: AtomicU32::new(0),
            tickets: std::array::from_fn(|_| AtomicU32::new(0)),
            holders: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The segment's identity.
    pub fn id(&self) -> u64 {
        self.id.load(Ordering::Relaxed)
    }

    /// The current generation of its contents.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Receivers' pins now, over all processes, for tests and statistics.
    pub fn pins(&self) -> u32 {
        self.state.load(Ordering::Acquire) & !FLAGS
    }

    /// Whether the owner let go of the segment for good.
    pub fn retired(&self) -> bool {
        self.state.load(Ordering::Acquire) & RETIRED != 0
    }

    /// Pins held by processes that may still be alive.
    pub fn live_pins(&self) -> u32 {
        let dead: u32 = self
            .holders
            .iter()
            .map(|h| h.load(Ordering::Acquire))
            .filter(|&w| holder_count(w) > 0 && !alive(holder_pid(w)))
            .map(holder_count)
            .sum();
        self.pins().saturating_sub(dead)
    }

    /// Issued tickets not yet claimed.
    pub fn unclaimed(&self) -> usize {
        self.tickets
            .iter()
            .filter(|t| {
                let w = t.load(Ordering::Acquire);
                w != 0 && w & CLAIMED == 0
            })
            .count()
    }

    /// Issues a ticket `seq` on a free word (CAS `0 → seq`); `None` if all are in use.
    fn issue(&self, seq: u32) -> Option<u32> {
        debug_assert!(seq != 0 && seq & CLAIMED == 0);
        for (slot, word) in self.tickets.iter().enumerate() {
            if word
                .compare_exchange(0, seq, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Some(slot as u32);
            }
        }
        None
    }

    /// Clears every claimed ticket word (CAS, so an issuer's concurrent withdraw is harmless).
    fn clear_claimed(&self) {
        for word in &self.tickets {
            let w = word.load(Ordering::Acquire);
            if w & CLAIMED != 0 {
                let _ = word.compare_exchange(w, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// Takes `RECYCLING` if no live process pins the segment and no ticket is unclaimed
    /// (owner only). A dead process's pins are taken back on the way.
    fn try_recycle(&self) -> bool {
        self.clear_claimed();
        if self.unclaimed() != 0 {
            return false;
        }
        for h in &self.holders {
            let w = h.load(Ordering::Acquire);
            if holder_count(w) > 0
                && !alive(holder_pid(w))
                && h.compare_exchange(w, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                // Its views died with it; it cannot race (it is dead).
                self.state.fetch_sub(holder_count(w), Ordering::AcqRel);
            }
        }
        if self
            .state
            .compare_exchange(0, RECYCLING, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // An issuer that issued while pinning and has let go since shows here (its unpin is
        // ordered after its issue, and our CAS read that unpin).
        if self.unclaimed() != 0 {
            self.state.store(0, Ordering::Release);
            return false;
        }
        true
    }

    /// Pins for a load of generation `generation` (steps 1 and 2 of loading); returns the
    /// holder entry used ([`NO_ENTRY`] if every entry is taken).
    fn pin(&self, id: u64, generation: u64) -> Result<usize, Stale> {
        let mut p = self.state.load(Ordering::Relaxed);
        loop {
            if p & FLAGS != 0 || p == RETIRED - 1 {
                return Err(Stale);
            }
            match self
                .state
                .compare_exchange_weak(p, p + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => p = now,
            }
        }
        let slot = self.record_holder();
        if self.id() != id || self.generation() != generation {
            self.unpin(slot);
            return Err(Stale);
        }
        Ok(slot)
    }

    /// Adds one to this process's holder entry (or takes a free one); [`NO_ENTRY`] if none is
    /// free (the pin then counts, but a crash of this process would leave it).
    fn record_holder(&self) -> usize {
        let me = std::process::id();
        'retry: loop {
            // This process's own entry first; only its threads change it while it lives.
            for (i, h) in self.holders.iter().enumerate() {
                let w = h.load(Ordering::Acquire);
                if holder_pid(w) == me && holder_count(w) > 0 {
                    if h.compare_exchange(w, w + 1, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        return i;
                    }
                    continue 'retry;
                }
            }
            // Else a free entry (count 0, whatever pid it last named).
            let mut any = false;
            for (i, h) in self.holders.iter().enumerate() {
                let w = h.load(Ordering::Acquire);
                if holder_count(w) == 0 {
                    any = true;
                    let mine = (u64::from(me) << 32) | 1;
                    if h.compare_exchange(w, mine, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        return i;
                    }
                }
            }
            if !any {
                return NO_ENTRY;
            }
        }
    }

    fn unpin(&self, slot: usize) {
        if slot != NO_ENTRY {
            self.holders[slot].fetch_sub(1, Ordering::AcqRel);
        }
        self.state.fetch_sub(1, Ordering::Release);
    }
}

/// [`BulkHeader::pin`]'s answer when no holder entry was free.
const NO_ENTRY: usize = usize::MAX;

/// Where a bulk segment's header and data bytes live.
///
/// # Safety
/// `header()` is the segment's one header for as long as `self` lives; the data area is
/// `capacity()` bytes that stay valid for as long as `self` lives.
pub unsafe trait BulkStorage: Send + Sync {
    /// The shared control block.
    fn header(&self) -> &BulkHeader;
    /// Data bytes (this side's trusted copy, checked against the header when attached).
    fn capacity(&self) -> usize;
    /// Copies `src` into data bytes `[off, off + src.len())`.
    ///
    /// # Safety
    /// In bounds, and the caller may write those bytes (the owner while it holds `RECYCLING`,
    /// or a holder of a pin, which shares them as threads share memory).
    unsafe fn write(&self, off: usize, src: &[u8]);
    /// Copies data bytes `[off, off + dst.len())` into `dst`.
    ///
    /// # Safety
    /// In bounds, and the caller holds a pin or `RECYCLING`.
    unsafe fn read(&self, off: usize, dst: &mut [u8]);
    /// Copies each `(off, src)` into the data bytes: what a fill does. The default writes
    /// them one by one; a storage may move them faster (see [`ShmBulk`]'s first fill).
    ///
    /// # Safety
    /// As [`write`](BulkStorage::write) for every part: in bounds, and the caller holds
    /// `RECYCLING`.
    unsafe fn fill(&self, parts: &[(usize, &[u8])]) {
        for &(off, src) in parts {
            // SAFETY: the caller's contract, part by part.
            unsafe { self.write(off, src) };
        }
    }
}

/// Makes the segments of a [`BulkPool`].
pub trait BulkFactory {
    /// What a segment is.
    type Storage: BulkStorage;
    /// A new segment with header `BulkHeader::new(id, capacity)` and `capacity` data bytes.
    fn create(&self, id: u64, capacity: usize) -> io::Result<Self::Storage>;
}

/// What a blob carries for one segment: which segment, which contents, which ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BulkRef {
    /// The segment's id.
    pub id: u64,
    /// The generation the blob's bytes belong to.
    pub generation: u64,
    /// The ticket word's index.
    pub slot: u32,
    /// The ticket's sequence number.
    pub seq: u32,
}

impl BulkRef {
    /// Encoded size in bytes.
    pub const SIZE: usize = 24;

    /// 24 bytes, little endian: id, generation, slot, seq.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..16].copy_from_slice(&self.generation.to_le_bytes());
        out[16..20].copy_from_slice(&self.slot.to_le_bytes());
        out[20..].copy_from_slice(&self.seq.to_le_bytes());
        out
    }

    /// Parses [`encode`](BulkRef::encode)'s format; `None` if `b` is not 24 bytes or names no
    /// valid ticket.
    pub fn decode(b: &[u8]) -> Option<BulkRef> {
        if b.len() != Self::SIZE {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let r = BulkRef {
            id: u64_at(0),
            generation: u64_at(8),
            slot: u32_at(16),
            seq: u32_at(20),
        };
        (r.slot < TICKETS as u32 && r.seq != 0 && r.seq & CLAIMED == 0).then_some(r)
    }
}

/// Whether ticket `r` on `storage` was claimed or withdrawn (its word moved on).
pub fn settled<S: BulkStorage>(storage: &S, r: &BulkRef) -> bool {
    storage
        .header()
        .tickets
        .get(r.slot as usize)
        .is_none_or(|w| w.load(Ordering::Acquire) != r.seq)
}

/// A load that came too late: the segment was refilled or freed since the blob was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stale;

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a shared buffer in this message was recycled or freed before it was read")
    }
}

impl std::error::Error for Stale {}

/// A receiver's pin on a segment: while it lives, the bytes of the generation it was attached
/// for stay as they were sent (unless some holder writes them).
pub struct Pinned<S: BulkStorage> {
    storage: Arc<S>,
    generation: u64,
    holder: usize,
}

/// Loads `r` from `storage` (steps 1-3 of loading): pins, checks, claims the ticket.
pub fn attach<S: BulkStorage>(storage: Arc<S>, r: &BulkRef) -> Result<Pinned<S>, Stale> {
    attach_with(storage, r, true)
}

/// [`attach`], claiming the ticket only if `claim`: a process loading a blob it made itself
/// (a trial load) must leave the ticket for the real receiver.
pub fn attach_with<S: BulkStorage>(
    storage: Arc<S>,
    r: &BulkRef,
    claim: bool,
) -> Result<Pinned<S>, Stale> {
    let h = storage.header();
    let holder = h.pin(r.id, r.generation)?;
    if let Some(word) = h.tickets.get(r.slot as usize).filter(|_| claim) {
        let _ = word.compare_exchange(r.seq, r.seq | CLAIMED, Ordering::AcqRel, Ordering::Relaxed);
    }
    Ok(Pinned {
        storage,
        generation: r.generation,
        holder,
    })
}

impl<S: BulkStorage> Pinned<S> {
    /// The segment.
    pub fn storage(&self) -> &Arc<S> {
        &self.storage
    }

    /// Copies data bytes `[off, off + dst.len())` out (bounds-checked).
    pub fn read(&self, off: usize, dst: &mut [u8]) {
        assert!(off
            .checked_add(dst.len())
            .is_some_and(|e| e <= self.storage.capacity()));
        // SAFETY: in bounds (checked above) and we hold a pin.
        unsafe { self.storage.read(off, dst) };
    }

    /// Issues a ticket to re-send this segment by reference. The ticket alone keeps the
    /// owner from refilling the segment until a receiver claims it (having pinned first), so
    /// this pin may go at once. `None` if every ticket word is in use.
    pub fn resend(&self, seq: u32) -> Option<BulkRef> {
        let h = self.storage.header();
        let slot = h.issue(seq & !CLAIMED)?;
        Some(BulkRef {
            id: h.id(),
            generation: self.generation,
            slot,
            seq: seq & !CLAIMED,
        })
    }

    /// The generation this pin protects.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the ticket `r` issued by [`resend`](Pinned::resend) was claimed or withdrawn.
    pub fn settled(&self, r: &BulkRef) -> bool {
        settled(&*self.storage, r)
    }
}

impl<S: BulkStorage> Drop for Pinned<S> {
    fn drop(&mut self) {
        self.storage.header().unpin(self.holder);
    }
}

/// The size class of a request of `n` bytes (see the module doc).
pub fn size_class(n: usize) -> usize {
    let page = DATA_OFFSET;
    let n = n.max(1).div_ceil(page) * page;
    if n <= 8 * page {
        return n;
    }
    let top = usize::BITS - 1 - n.leading_zeros();
    let step = 1usize << (top - 3);
    n.div_ceil(step) * step
}

struct Owned<S> {
    storage: Arc<S>,
}

/// The segments one process owns: made, refilled, and freed here.
pub struct BulkPool<F: BulkFactory> {
    factory: F,
    /// Least recently used first.
    segments: Vec<Owned<F::Storage>>,
    id_base: u64,
    next_id: u64,
    next_seq: u32,
    max_free: usize,
}

/// A segment being filled: the owner holds `RECYCLING`. Publish it or drop it (it is free
/// again).
pub struct Fill<'a, S: BulkStorage> {
    storage: &'a Arc<S>,
    seq: &'a mut u32,
    published: bool,
}

impl<S: BulkStorage> Fill<'_, S> {
    /// The segment.
    pub fn storage(&self) -> &Arc<S> {
        self.storage
    }

    /// Copies `src` into data bytes at `off` (bounds-checked).
    pub fn write(&mut self, off: usize, src: &[u8]) {
        self.write_parts(&[(off, src)]);
    }

    /// Copies each `(off, src)` into the data bytes (bounds-checked), in one go: a storage
    /// can then move a fresh segment's bytes its fastest way ([`BulkStorage::fill`]).
    pub fn write_parts(&mut self, parts: &[(usize, &[u8])]) {
        for &(off, src) in parts {
            assert!(off
                .checked_add(src.len())
                .is_some_and(|e| e <= self.storage.capacity()));
        }
        // SAFETY: every part is in bounds (checked above) and we hold `RECYCLING`.
        unsafe { self.storage.fill(parts) };
    }

    /// Issues the first ticket and ends the fill; the returned ref goes in the blob.
    pub fn publish(mut self) -> BulkRef {
        let h = self.storage.header();
        let seq = next_seq(self.seq);
        // A segment being filled has no ticket at all (checked under `RECYCLING`).
        let slot = h.issue(seq).expect("a refilled segment has free tickets");
        let r = BulkRef {
            id: h.id(),
            generation: h.generation.load(Ordering::Relaxed),
            slot,
            seq,
        };
        h.state.store(0, Ordering::Release);
        self.published = true;
        r
    }
}

impl<S: BulkStorage> Drop for Fill<'_, S> {
    fn drop(&mut self) {
        if !self.published {
            self.storage.header().state.store(0, Ordering::Release);
        }
    }
}

fn next_seq(seq: &mut u32) -> u32 {
    *seq = if *seq >= CLAIMED - 1 { 1 } else { *seq + 1 };
    *seq
}

/// What a pool holds, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BulkStats {
    /// Segments owned.
    pub segments: usize,
    /// Their data bytes.
    pub bytes: usize,
    /// Those no live process pins and no ticket holds.
    pub free: usize,
    /// Unclaimed tickets over all segments.
    pub unclaimed: usize,
}

impl<F: BulkFactory> BulkPool<F> {
    /// An empty pool; segment ids are `id_base + 1, id_base + 2, ...` (give each process a
    /// distinct base, e.g. its pid in the high 32 bits), and at most `max_free` free segments
    /// are kept.
    pub fn new(factory: F, id_base: u64, max_free: usize) -> BulkPool<F> {
        BulkPool {
            factory,
            segments: Vec::new(),
            id_base,
            next_id: 0,
            next_seq: 0,
            max_free,
        }
    }

    /// A segment with room for `n` bytes, for the caller to fill: a free one of `n`'s size
    /// class if there is one (most recently used first), else a new one.
    pub fn take(&mut self, n: usize) -> io::Result<Fill<'_, F::Storage>> {
        let class = size_class(n);
        let found = self
            .segments
            .iter()
            .rposition(|s| s.storage.capacity() == class && s.storage.header().try_recycle());
        let at = match found {
            Some(i) => {
                let seg = self.segments.remove(i);
                seg.storage
                    .header()
                    .generation
                    .fetch_add(1, Ordering::Release);
                self.segments.push(seg);
                self.trim(self.max_free, true);
                self.segments.len() - 1
            }
            None => {
                self.trim(self.max_free.saturating_sub(1), false);
                self.next_id += 1;
                let storage = Arc::new(self.factory.create(self.id_base + self.next_id, class)?);
                let recycling = storage.header().try_recycle();
                debug_assert!(recycling);
                self.segments.push(Owned { storage });
                self.segments.len() - 1
            }
        };
        Ok(Fill {
            storage: &self.segments[at].storage,
            seq: &mut self.next_seq,
            published: false,
        })
    }

    /// Frees every free segment (busy ones stay until their pins and tickets go).
    pub fn release_free(&mut self) {
        self.trim(0, false);
    }

    /// Frees free segments beyond `keep`, least recently used first (never the last one when
    /// `skip_last`: it is being filled).
    fn trim(&mut self, keep: usize, skip_last: bool) {
        let limit = self.segments.len() - usize::from(skip_last);
        let free: Vec<usize> = (0..limit)
            .filter(|&i| self.is_free(&self.segments[i]))
            .collect();
        let excess = free.len().saturating_sub(keep);
        for &i in free[..excess].iter().rev() {
            let s = self.segments.remove(i);
            s.storage.header().state.fetch_or(RETIRED, Ordering::AcqRel);
        }
    }

    fn is_free(&self, s: &Owned<F::Storage>) -> bool {
        let h = s.storage.header();
        h.clear_claimed();
        h.live_pins() == 0 && h.unclaimed() == 0
    }

    /// Issues another ticket on an owned segment, to send what it holds again by reference.
    /// `None` if the segment is not ours or all its ticket words are in use.
    pub fn resend(&mut self, id: u64) -> Option<BulkRef> {
        let s = self
            .segments
            .iter()
            .find(|s| s.storage.header().id() == id)?;
        let h = s.storage.header();
        let seq = next_seq(&mut self.next_seq);
        let slot = h.issue(seq)?;
        Some(BulkRef {
            id,
            generation: h.generation.load(Ordering::Relaxed),
            slot,
            seq,
        })
    }

    /// Withdraws the unclaimed ticket of a blob that will never be loaded (a cancelled task).
    /// Returns whether it was still unclaimed.
    pub fn withdraw(&mut self, r: &BulkRef) -> bool {
        let Some(s) = self
            .segments
            .iter()
            .find(|s| s.storage.header().id() == r.id)
        else {
            return false;
        };
        let word = &s.storage.header().tickets[r.slot as usize % TICKETS];
        word.compare_exchange(r.seq, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Every owned segment, least recently used first.
    pub fn segments(&self) -> impl Iterator<Item = &Arc<F::Storage>> {
        self.segments.iter().map(|s| &s.storage)
    }

    /// Whether the owned segment `s` is busy (pinned by a live process or named by an unclaimed
    /// ticket): what a peer may still need to map.
    pub fn busy(s: &F::Storage) -> bool {
        let h = s.header();
        h.live_pins() != 0 || h.unclaimed() != 0
    }

    /// The owned segment `id`.
    pub fn get(&self, id: u64) -> Option<&Arc<F::Storage>> {
        self.segments
            .iter()
            .find(|s| s.storage.header().id() == id)
            .map(|s| &s.storage)
    }

    /// What the pool holds now.
    pub fn stats(&self) -> BulkStats {
        let mut st = BulkStats::default();
        for s in &self.segments {
            st.segments += 1;
            st.bytes += s.storage.capacity();
            st.unclaimed += s.storage.header().unclaimed();
            if self.is_free(s) {
                st.free += 1;
            }
        }
        st
    }
}

// -- the shared-memory storage -----------------------------------------------------------------

/// A bulk segment in a sealed memfd: header at offset 0, data at [`DATA_OFFSET`].
///
/// # How a fill moves its bytes
/// A fresh segment's data pages do not exist yet: the kernel allocates each on first use.
/// Faulting them in through the mapping also zero-fills each one, then the copy writes it
/// again; writing the bytes through the fd (`pwrite`) allocates the page-cache pages and
/// copies into them, with no zero-fill and no fault: on the 2-vCPU machine, 400 MB in about
/// 0.16 s against 0.28 s for populate-then-copy and 0.33 s for a copy that faults
/// (`benchmarks/results/FIRST_TRANSFERS.md`). So the owner's first fill of a segment it made
/// goes through the fd. Its own mapping then has no page-table entries for those pages, and
/// a later copy through it would fault on each (a refill, and reading a result that views
/// the segment): a *mapper* thread maps them in with one `MADV_POPULATE_WRITE` (about 0.05 s
/// for 400 MB) while the blob travels, and the next fill waits for it before copying through
/// the mapping, as every later fill does (a copy through mapped pages costs a third of a
/// `pwrite`). A small first fill populates inline instead of starting a thread.
///
/// `backed` and `mapped` (data bytes from offset 0) only choose among these ways: every way
/// writes the same bytes into the same pages, so a wrong guess costs time, never data. Both
/// are this process's knowledge, changed by fills only (the owner, under `RECYCLING`).
///
/// # Threads
/// The mapper is the segment's: it only populates the segment's own mapping, and is joined
/// before the next fill and before the mapping goes (`Drop`), so it never outlives it.
pub struct ShmBulk {
    seg: Segment,
    capacity: usize,
    /// Data bytes `[0, backed)` have pages in the file (written, or populated). A hint for
    /// real processes, never part of a loom model (the twin has no pages): std's atomic.
    backed: unmodelled::AtomicU64,
    /// Data bytes `[0, mapped)` have page-table entries in this process's mapping (as above).
    mapped: unmodelled::AtomicU64,
    /// The mapper thread of the last first fill, if not joined yet; it returns the bytes it
    /// mapped (0 if the kernel refused).
    mapper: unmodelled::Mutex<Option<std::thread::JoinHandle<usize>>>,
}

/// A first fill at least this large maps its pages in on a mapper thread (below it, inline:
/// mapping a few MB of existing pages takes about a millisecond, not worth a thread).
const MAPPER_MIN: usize = 8 << 20;

/// Part of a fill written by one `pwrite` call at most (the kernel caps one call near 2 GB).
const PWRITE_CHUNK: usize = 1 << 30;

impl ShmBulk {
    /// Maps a segment received from its owner (taking `fd`), checking its seals, magic,
    /// version and size; and its id when `expect_id` is given.
    pub fn open(fd: OwnedFd, expect_id: Option<u64>) -> io::Result<ShmBulk> {
        // Not pre-faulted: a receiver often touches little of it (an identity task none).
        let seg = Segment::open_lazy(fd)?;
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        if seg.len() < DATA_OFFSET {
            return Err(bad("bulk segment too small"));
        }
        let capacity = seg.len() - DATA_OFFSET;
        let b = ShmBulk {
            capacity,
            seg,
            // Its owner filled it (so its pages exist); none is mapped here yet.
            backed: unmodelled::AtomicU64::new(capacity as u64),
            mapped: unmodelled::AtomicU64::new(0),
            mapper: unmodelled::Mutex::new(None),
        };
        let h = b.header();
        if h.magic_version.load(Ordering::Acquire) != MAGIC_VERSION {
            return Err(bad("not a bulk segment (magic or version)"));
        }
        if h.capacity.load(Ordering::Relaxed) != b.capacity as u64 {
            return Err(bad("bulk segment size does not match its header"));
        }
        if expect_id.is_some_and(|id| id != h.id()) {
            return Err(bad("bulk segment is not the one named"));
        }
        Ok(b)
    }

    /// The memfd (to send to another process).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.seg.fd()
    }

    /// The first data byte (page aligned), for views of the bytes in place.
    pub fn data_ptr(&self) -> *mut u8 {
        // SAFETY: the segment is `DATA_OFFSET + capacity` bytes long, so the offset is in it.
        unsafe { self.seg.as_ptr().add(DATA_OFFSET) }
    }

    /// Data bytes `[0, n)` that have pages in the file now, as the kernel counts them (its
    /// allocated blocks, less the header page): for tests and diagnostics.
    pub fn resident_bytes(&self) -> io::Result<usize> {
        let st = rustix::fs::fstat(self.seg.fd())?;
        let bytes = usize::try_from(st.st_blocks).unwrap_or(usize::MAX) * 512;
        Ok(bytes.saturating_sub(DATA_OFFSET))
    }

    /// Writes `src` at data offset `off` through the fd (no mapping involved).
    fn pwrite_all(&self, off: usize, src: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < src.len() {
            let end = src.len().min(done + PWRITE_CHUNK);
            let at = (DATA_OFFSET + off + done) as u64;
            match rustix::io::pwrite(self.seg.fd(), &src[done..end], at) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Maps data bytes `[0, end)` into this process's page tables in one call, allocating
    /// (zeroed) any page the file does not have yet. `false` if the kernel refused (before
    /// Linux 5.14): the copy then faults them in one by one, which is only slower.
    fn populate(&self, end: usize) -> bool {
        // SAFETY: `end <= capacity`, so the range lies in our mapping, alive while `self` is.
        unsafe { populate_range(self.data_ptr() as usize, end) }
    }

    /// Maps `[0, end)` in on a mapper thread (inline if it cannot start): see the type doc.
    fn populate_behind(&self, end: usize) {
        let at = self.data_ptr() as usize;
        let spawned = crate::sys::thread::spawn("gilfree-bulk-map", move || {
            // SAFETY: the range lies in the segment's mapping (`end <= capacity`), and the
            // segment joins this thread before it unmaps (`Drop`), so it stays mapped.
            if unsafe { populate_range(at, end) } {
                end
            } else {
                0
            }
        });
        match spawned {
            Ok(handle) => *self.mapper.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle),
            Err(_) => {
                if self.populate(end) {
                    self.mapped.store(end as u64, Ordering::Relaxed);
                }
            }
        }
    }

    /// Waits for the mapper thread, if one runs, and records what it mapped.
    fn join_mapper(&self) {
        let handle = self.mapper.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(Ok(end)) = handle.map(std::thread::JoinHandle::join) {
            self.mapped.fetch_max(end as u64, Ordering::Relaxed);
        }
    }

    /// Whether a mapper thread is still running (for tests).
    pub fn mapping_behind(&self) -> bool {
        self.mapper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }
}

/// `MADV_POPULATE_WRITE` over `[at, at + len)`: maps each page in as if written, allocating a
/// zeroed one where the file has none; writes no byte, so it races with no reader or writer.
///
/// # Safety
/// The range lies in a live shared mapping of a bulk segment for the whole call.
unsafe fn populate_range(at: usize, len: usize) -> bool {
    // SAFETY: the caller's contract; the advice changes page tables, never contents.
    unsafe {
        rustix::mm::madvise(
            at as *mut std::ffi::c_void,
            len,
            rustix::mm::Advice::LinuxPopulateWrite,
        )
    }
    .is_ok()
}

impl Drop for ShmBulk {
    fn drop(&mut self) {
        // The mapper uses the mapping: it ends before the mapping does (fields drop after).
        self.join_mapper();
    }
}

impl AsFd for ShmBulk {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.seg.fd()
    }
}

// SAFETY: the header is the first bytes of the owned mapping (page aligned, hence aligned for
// the header; the mapping is at least DATA_OFFSET bytes, checked in `open` and made so in
// `create`); the data area is the next `capacity` bytes of it; both live as long as `self`.
unsafe impl BulkStorage for ShmBulk {
    fn header(&self) -> &BulkHeader {
        // SAFETY: see the impl's comment; every field is an atomic, so shared references are
        // sound while other processes update it.
        unsafe { &*self.seg.as_ptr().cast::<BulkHeader>() }
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    unsafe fn write(&self, off: usize, src: &[u8]) {
        // SAFETY: in bounds and ours to write (trait contract); `src` is not in the data area
        // being written (the owner copies from private memory or from another segment).
        unsafe { std::ptr::copy(src.as_ptr(), self.data_ptr().add(off), src.len()) };
    }

    unsafe fn read(&self, off: usize, dst: &mut [u8]) {
        // SAFETY: in bounds and pinned (trait contract); `dst` is private memory.
        unsafe { std::ptr::copy(self.data_ptr().add(off), dst.as_mut_ptr(), dst.len()) };
    }

    unsafe fn fill(&self, parts: &[(usize, &[u8])]) {
        let end = parts.iter().map(|&(o, s)| o + s.len()).max().unwrap_or(0);
        if end == 0 {
            return;
        }
        let end_page = end.next_multiple_of(DATA_OFFSET).min(self.capacity);
        self.join_mapper();
        let mapped = self.mapped.load(Ordering::Relaxed) as usize;
        if mapped < end && self.backed.load(Ordering::Relaxed) == 0 {
            // A fresh segment: no page exists, so none needs zeroing first (see the type doc).
            let through_fd = parts
                .iter()
                .all(|&(off, src)| self.pwrite_all(off, src).is_ok());
            if through_fd {
                // The kernel's copies happened in this thread, before this fence; the
                // publish's Release store that follows (`Fill::publish`) then orders them
                // before any receiver's pin, as it orders a copy through the mapping.
                crate::sync::fence(Ordering::SeqCst);
                self.backed.store(end_page as u64, Ordering::Relaxed);
                if end_page >= MAPPER_MIN {
                    self.populate_behind(end_page);
                } else if self.populate(end_page) {
                    self.mapped.store(end_page as u64, Ordering::Relaxed);
                }
                return;
            }
            // Refused (no memory for the pages, say): the mapping's own way below, which
            // raises SIGBUS on the same shortage, as a copy into a segment always could.
        }
        if mapped < end && self.populate(end_page) {
            self.mapped.store(end_page as u64, Ordering::Relaxed);
            self.backed.fetch_max(end_page as u64, Ordering::Relaxed);
        }
        for &(off, src) in parts {
            // SAFETY: the caller's contract (in bounds, `RECYCLING` held).
            unsafe { self.write(off, src) };
        }
    }
}

/// Makes [`ShmBulk`] segments (memfds named `gilfree-bulk`) whose pages the first fill
/// brings into being (see [`ShmBulk`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ShmFactory;

impl BulkFactory for ShmFactory {
    type Storage = ShmBulk;

    fn create(&self, id: u64, capacity: usize) -> io::Result<ShmBulk> {
        ShmBulk::create_unbacked(id, capacity, "gilfree-bulk")
    }
}

impl ShmBulk {
    /// A new segment with header `BulkHeader::new(id, capacity)`, its memfd named `name`, every
    /// data page allocated and mapped (a `SharedArray`'s memory, written through the mapping).
    pub fn create(id: u64, capacity: usize, name: &str) -> io::Result<ShmBulk> {
        let seg = Segment::create_named(DATA_OFFSET + capacity, name)?;
        Self::init(seg, id, capacity, capacity)
    }

    /// [`create`](ShmBulk::create) with no data page allocated yet: a pool's segment, whose
    /// first fill makes its pages as it writes them.
    pub fn create_unbacked(id: u64, capacity: usize, name: &str) -> io::Result<ShmBulk> {
        use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
        let fd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        ftruncate(&fd, (DATA_OFFSET + capacity) as u64)?;
        super::segment::seal_size(&fd)?;
        Self::init(Segment::open_lazy(fd)?, id, capacity, 0)
    }

    fn init(seg: Segment, id: u64, capacity: usize, ready: usize) -> io::Result<ShmBulk> {
        // SAFETY: the mapping is fresh, page aligned, at least DATA_OFFSET bytes, and no other
        // process or thread has it yet, so writing the header in place races with nothing.
        unsafe {
            seg.as_ptr()
                .cast::<BulkHeader>()
                .write(BulkHeader::new(id, capacity))
        };
        Ok(ShmBulk {
            seg,
            capacity,
            backed: unmodelled::AtomicU64::new(ready as u64),
            mapped: unmodelled::AtomicU64::new(ready as u64),
            mapper: unmodelled::Mutex::new(None),
        })
    }
}
