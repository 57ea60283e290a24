//! A single-producer / single-consumer byte ring that carries framed messages of any size.
//!
//! # Framing
//! A message is framed as its length (`u64`, little endian) followed by its bytes, written into
//! a circular byte buffer as one continuous stream: the frame wraps around the end of the
//! buffer like any other bytes. A message larger than the ring is streamed: the producer copies
//! in whatever fits, publishes it, and waits for space while the consumer copies the bytes out
//! into the message's `Vec` and frees them. A 1 GiB message therefore goes through a 64 KiB
//! ring in 64 KiB pieces, never needing 1 GiB of shared memory. The receiver does not trust
//! the length prefix with its memory either: it reserves at most one ring's worth up front and
//! grows the message's buffer (doubling, capped at the announced length) as bytes arrive, so a
//! hostile or corrupt prefix costs at most twice the bytes actually sent (a prefix above
//! `isize::MAX` is refused with `InvalidData`). This is the classic
//! Lamport SPSC queue (one writer per index, monotonic indices), over bytes instead of slots,
//! with an eventcount-style sleep flag for blocking.
//!
//! The protocol is written once, generic over where the ring lives ([`Storage`]) and how a
//! sleeping side is woken ([`Doorbell`]): in a shared-memory [`Segment`](super::segment) with
//! eventfds ([`crate::shm::channel`]), or on the heap with a mutex and condvar
//! ([`local`]), which is what the loom models check.
//!
//! # Layout
//! [`RingHeader`] is `#[repr(C)]`, 128-byte aligned, 384 bytes (std build), in three
//! 128-byte blocks so that the producer's and the consumer's hot words never share a cache line
//! (nor an adjacent-line prefetch pair):
//!
//! | offset | field             | type   | meaning                                              |
//! |--------|-------------------|--------|------------------------------------------------------|
//! | 0      | `magic_version`   | `u64`  | `"GFRG"` in the high 32 bits, [`RING_VERSION`] below |
//! | 8      | `capacity`        | `u64`  | size of the data area in bytes                       |
//! | 128    | `tail`            | `u64`  | bytes ever written (monotonic)                       |
//! | 136    | `writer_waiting`  | `u32`  | 1 while the producer sleeps for space                |
//! | 140    | `producer_closed` | `u32`  | 1 once the producer has closed its end               |
//! | 256    | `head`            | `u64`  | bytes ever read (monotonic)                          |
//! | 264    | `reader_waiting`  | `u32`  | 1 while the consumer sleeps for data                 |
//! | 268    | `consumer_closed` | `u32`  | 1 once the consumer has closed its end               |
//!
//! The `capacity` data bytes live elsewhere (the [`Storage`] says where); byte `i` of the
//! stream is at `i % capacity`. Every field is an atomic, so that a misbehaving peer can
//! corrupt values but never cause a data race on the header.
//!
//! # Who writes what
//! - `magic_version`, `capacity`: the creator, before the ring is shared; read-only after.
//! - `tail`, `writer_waiting`, `producer_closed`: only the producer.
//! - `head`, `reader_waiting`, `consumer_closed`: only the consumer.
//! - Data bytes in `[head, tail)`: owned by the consumer (readable); the rest, `[tail, head +
//!   capacity)`, by the producer (writable). Ownership passes by the Release store of `tail`
//!   (to the consumer) and of `head` (back to the producer), each paired with an Acquire load.
//!
//! Both indices are private copies first (in [`Producer`] / [`Consumer`]) and published after,
//! so the shared words are only ever written by their owner. The invariant `head <= tail <=
//! head + capacity` is checked on every load; a violation means a corrupted peer and ends the
//! operation with `InvalidData`.
//!
//! # Protocol
//! Sending (the producer):
//! 1. `free = capacity - (tail - head)`, with an Acquire load of `head`.
//! 2. If `free > 0`: copy `min(free, rest of frame)` bytes at `tail`, then publish: Release store
//!    of the new `tail`, then `fence(SeqCst)`, then a load of `reader_waiting`; ring the data
//!    doorbell only if it is 1. When the consumer is awake this is the whole fast path: no
//!    system call.
//! 3. If `free == 0`: wait for space (the waiting steps below, on `writer_waiting` and the space
//!    doorbell), then go to 1. The wait ends early, with `Disconnected`, when the consumer
//!    closed its end or the peer process died.
//!
//! Receiving (the consumer) mirrors it: `avail = tail - head` (Acquire load of `tail`); copy out
//! up to what the current message still needs (never past its end, so the next message stays
//! in the ring); publish `head` the same way (Release, `fence(SeqCst)`, ring the space doorbell
//! only if `writer_waiting`). Progress (the length prefix read so far, the partly filled
//! `Vec`) lives in the [`Consumer`], so a receive that stops with `Timeout` or `Interrupted`
//! loses nothing: the next one carries on.
//!
//! Waiting (either side; `flag` is its `*_waiting` word):
//! 1. Spin: re-check the condition for a short while with `spin_loop`, then with
//!    `yield_now`. A hand-off caught while spinning costs well under a microsecond, while a
//!    cross-CPU eventfd wake-up costs tens of microseconds. How long it yields adapts to how
//!    long this side's recent waits lasted (`Spin::learn`): long enough to catch a peer that
//!    answers within a couple of hundred microseconds, about a microsecond for an idle side.
//! 2. Store `flag = 1`, then `fence(SeqCst)`.
//! 3. Re-check the condition. If it now holds: `flag = 0`, done.
//! 4. Sleep on the doorbell (honouring the [`Wait`]: deadline, peer pidfd, signal checks), then
//!    `flag = 0` and go back to 3 (every wake-up may be spurious).
//!
//! No wake-up is lost: the waiter's step 2 and the publisher's step 2 each put a `fence(SeqCst)`
//! between a store and a load (Dekker's pattern). The two fences are totally ordered; if the
//! waiter's comes first, the publisher's load sees `flag == 1` and rings; if the publisher's
//! comes first, the waiter's re-check in step 3 sees the new index. A doorbell rung while
//! nobody sleeps stays set (an eventfd counter), so a ring that lands between step 3 and the
//! sleep is not lost either. Closing an end stores `*_closed = 1` and rings the other side's
//! doorbell unconditionally.
//!
//! # When a process dies mid-message
//! Nothing in the ring is a lock, so a dead peer cannot wedge the survivor; it can only stop
//! making progress. The survivor notices through its [`Wait::peer`] pidfd, which the kernel
//! makes readable when the peer exits, whatever killed it:
//! - A dead producer: everything it published before dying is intact, since the bytes were
//!   written before `tail` was. The receiver first drains the ring: a message that arrived
//!   whole is still returned; only when no complete message remains is the result
//!   `Disconnected`. The part of a message cut off by the death is discarded with the channel.
//! - A dead consumer: the sender's wait for space ends with `Disconnected`. Bytes already in
//!   the ring are simply dropped with the segment.
//!
//! # Deferred wake-ups
//! [`Ring::send_deferred`] publishes like `send` (Release store of `tail`) but skips the fence
//! and the doorbell: a consumer asleep for data stays asleep, and the producer remembers that
//! it owes a wake-up. [`Ring::flush`] pays it: it stores `tail` again (same value; only the
//! producer writes it), then `fence(SeqCst)` and the `reader_waiting` check of publishing step
//! 2, so the Dekker argument above holds with the fence in the flushing thread. A plain `send`
//! settles the debt the same way. One exception keeps it deadlock-free: a deferred send that
//! must wait for space (sending step 3) flushes first, since a consumer asleep for data would
//! never free the space it waits for.
//!
//! A sender that stops mid-message for any reason (timeout, interrupt, dead peer) leaves a torn
//! frame in the ring; the [`Producer`] remembers this and refuses further sends, because the
//! consumer could no longer find message boundaries.

use std::io;
use std::mem;

use crate::error::{RecvError, SendError};
use crate::sync::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
use crate::sync::{spin_loop, yield_now};
use crate::sys::notify::{Notifier, WaitError};
use crate::Wait;

pub mod local;
#[cfg(all(test, not(loom)))]
pub(crate) mod tests;

/// `"GFRG"`: marks a ring header.
pub const RING_MAGIC: u32 = u32::from_be_bytes(*b"GFRG");
/// Bumped whenever the header layout or the framing changes.
pub const RING_VERSION: u32 = 1;
const MAGIC_VERSION: u64 = ((RING_MAGIC as u64) << 32) | RING_VERSION as u64;

/// Length of the frame prefix that carries a message's size.
const PREFIX: usize = mem::size_of::<u64>();

/// One block of the header, aligned so that no two blocks share a cache line (or an adjacent
/// pair of them, which x86 prefetches together).
#[repr(C, align(128))]
struct Block<T>(T);

impl<T> std::ops::Deref for Block<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[repr(C)]
struct Ident {
    magic_version: AtomicU64,
    capacity: AtomicU64,
}

#[repr(C)]
struct ProducerSide {
    tail: AtomicU64,
    writer_waiting: AtomicU32,
    producer_closed: AtomicU32,
}

#[repr(C)]
struct ConsumerSide {
    head: AtomicU64,
    reader_waiting: AtomicU32,
    consumer_closed: AtomicU32,
}

/// The shared control block of a ring (layout in the module doc).
#[repr(C)]
pub struct RingHeader {
    ident: Block<Ident>,
    producer: Block<ProducerSide>,
    consumer: Block<ConsumerSide>,
}

// The layout is a contract between processes; check it where the types are the real (std)
// atomics. Under loom the atomics are bigger model objects and these numbers do not apply.
#[cfg(not(loom))]
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<RingHeader>() == 384);
    assert!(align_of::<RingHeader>() == 128);
    assert!(offset_of!(RingHeader, producer) == 128);
    assert!(offset_of!(RingHeader, consumer) == 256);
    assert!(offset_of!(ProducerSide, writer_waiting) == 8);
    assert!(offset_of!(ConsumerSide, consumer_closed) == 12);
};

impl RingHeader {
    /// A fresh header for a ring of `capacity` data bytes: empty, nobody waiting, both ends open.
    pub fn new(capacity: usize) -> RingHeader {
        RingHeader {
            ident: Block(Ident {
                magic_version: AtomicU64::new(MAGIC_VERSION),
                capacity: AtomicU64::new(capacity as u64),
            }),
            producer: Block(ProducerSide {
                tail: AtomicU64::new(0),
                writer_waiting: AtomicU32::new(0),
                producer_closed: AtomicU32::new(0),
            }),
            consumer: Block(ConsumerSide {
                head: AtomicU64::new(0),
                reader_waiting: AtomicU32::new(0),
                consumer_closed: AtomicU32::new(0),
            }),
        }
    }

    /// Checks the magic/version word and that the header describes `capacity` data bytes
    /// (for a header found in memory that another process initialised).
    pub fn validate(&self, capacity: usize) -> io::Result<()> {
        let mv = self.ident.magic_version.load(Ordering::Relaxed);
        if mv >> 32 != u64::from(RING_MAGIC) {
            return Err(invalid("not a gilfree ring (bad magic)"));
        }
        if mv as u32 != RING_VERSION {
            return Err(invalid("gilfree ring version mismatch between processes"));
        }
        if self.ident.capacity.load(Ordering::Relaxed) != capacity as u64 {
            return Err(invalid("gilfree ring capacity does not match its segment"));
        }
        Ok(())
    }
}

/// Where a ring's header and data bytes live.
///
/// # Safety
/// Implementors guarantee that [`header`](Storage::header) and a data area of exactly
/// [`capacity`](Storage::capacity) bytes (`capacity > 0`) stay valid for as long as the
/// storage exists, and that `copy_in`/`copy_out` access only the bytes they are asked for.
pub unsafe trait Storage {
    /// The shared control block.
    fn header(&self) -> &RingHeader;
    /// Size of the data area in bytes (this side's trusted copy, not re-read from shared memory).
    fn capacity(&self) -> usize;
    /// Copies `src` into data bytes `[pos, pos + src.len())`.
    ///
    /// # Safety
    /// `pos + src.len() <= capacity()`, and the ring protocol gives the caller (the producer)
    /// exclusive use of those bytes.
    unsafe fn copy_in(&self, pos: usize, src: &[u8]);
    /// Copies data bytes `[pos, pos + len)` to `dst`.
    ///
    /// # Safety
    /// `pos + len <= capacity()`; the bytes were published to the caller (the consumer) and not
    /// yet released; `dst` is valid for `len` byte writes.
    unsafe fn copy_out(&self, pos: usize, dst: *mut u8, len: usize);
}

/// How a sleeping side of the ring is woken.
pub trait Doorbell {
    /// Wakes the sleeper; if nobody sleeps, the next [`sleep`](Doorbell::sleep) returns at once.
    fn ring(&self) -> io::Result<()>;
    /// Sleeps until rung (or spuriously), honouring `wait`.
    fn sleep(&self, wait: &mut Wait<'_>) -> Result<(), WaitError>;
}

impl Doorbell for Notifier {
    fn ring(&self) -> io::Result<()> {
        self.notify()
    }
    fn sleep(&self, wait: &mut Wait<'_>) -> Result<(), WaitError> {
        self.wait(wait)
    }
}

/// The two doorbells one side of a ring uses: `data` is rung by the producer and slept on by
/// the consumer; `space` the other way round.
pub struct Bells<'a, B> {
    /// Rung when bytes were published.
    pub data: &'a B,
    /// Rung when bytes were freed.
    pub space: &'a B,
}

/// How long a side busy-waits before it sleeps (see "Waiting" step 1), learnt from how long
/// its recent waits lasted.
#[derive(Debug)]
struct Spin {
    /// How long to yield-spin before sleeping, in nanoseconds.
    budget: u64,
}

// Budgets, measured on a 2-CPU VM: a yield-spin hand-off costs about 0.4 µs and a cross-CPU
// eventfd wake-up about 40 µs, while a peer copying a 64 KiB piece (or a worker running a tiny
// task, or a parent pickling the next one) takes tens of microseconds. Spinning up to 200 µs
// lets a streaming side ride through its peer's copies, and a ping-pong through its peer's
// work, without sleeping.
//
// The budget follows the waits themselves ([`Spin::learn`]): a wait that slept but was over
// within `MAX_BUDGET` (the peer answered after the spin gave up, yet soon) would have been
// caught by a longer spin, so the budget grows to cover it; a wait longer than that (an idle
// side) halves it, so an idle side quickly drops to about a microsecond of spinning and costs
// almost nothing. (An earlier rule halved the budget on every wait that slept and doubled it
// only when spinning succeeded: once a few idle waits had shrunk it below the peer's usual
// answer time, spinning never succeeded again and the side slept on every message for good,
// the slow mode of issue 10's bimodal start→join latency.)
//
// On a busy machine a yield hands the CPU to another runnable thread for up to a timeslice
// (milliseconds), so a side stops spinning as soon as one yield took long (`CONTENDED_YIELD`);
// a sleeper, woken by its doorbell, is scheduled promptly instead.
//
// Under loom every spin is a scheduling point that multiplies the states to explore, and a
// spin is only an optimisation of the sleep path, so the model goes straight to the flag.
#[cfg(not(loom))]
const SPINS: u32 = 64;
/// The least yield-spin budget, in nanoseconds (a couple of yields).
#[cfg_attr(loom, allow(dead_code))]
const MIN_BUDGET: u64 = 1_000;
/// The most: a wait longer than this is an idle side, not a peer at work.
#[cfg_attr(loom, allow(dead_code))]
const MAX_BUDGET: u64 = 200_000;
/// A fresh side's budget: a quarter of the most.
const START_BUDGET: u64 = MAX_BUDGET / 4;
/// A yield that took longer than this, in nanoseconds, ran another thread: the CPU is wanted,
/// so the side stops spinning and sleeps (an idle CPU's yield takes well under a microsecond).
#[cfg(not(loom))]
const CONTENDED_YIELD: u128 = 20_000;

impl Spin {
    fn new() -> Spin {
        Spin {
            budget: START_BUDGET,
        }
    }

    /// Busy-waits for `ready`; `false` means the caller must sleep. `started` is when the wait
    /// began.
    #[cfg(not(loom))]
    fn run(&mut self, started: std::time::Instant, ready: &mut impl FnMut() -> bool) -> bool {
        for _ in 0..SPINS {
            if ready() {
                return true;
            }
            spin_loop();
        }
        let budget = u128::from(self.budget);
        let mut last = started.elapsed().as_nanos();
        loop {
            if ready() {
                return true;
            }
            let now = started.elapsed().as_nanos();
            // A yield that took long ran other threads on this CPU: spinning on would hand
            // them the CPU again for a timeslice each time, while a sleeper is woken as soon as
            // its peer rings.
            if now >= budget || now - last > CONTENDED_YIELD {
                return ready();
            }
            last = now;
            yield_now();
        }
    }

    /// Under loom: no spinning (see the constants).
    #[cfg(loom)]
    fn run(&mut self, _started: (), ready: &mut impl FnMut() -> bool) -> bool {
        ready()
    }

    /// Adapts the budget after a wait that had to sleep and lasted `waited_ns` in all.
    #[cfg_attr(loom, allow(dead_code))]
    fn learn(&mut self, waited_ns: u64) {
        self.budget = if waited_ns <= MAX_BUDGET {
            // A spin this long would have caught it (with some margin for jitter).
            (waited_ns + waited_ns / 2).max(self.budget * 2)
        } else {
            self.budget / 2
        }
        .clamp(MIN_BUDGET, MAX_BUDGET);
    }
}

/// Waits until `ready()` holds: "Waiting" steps 1–4 of the module doc.
fn block_until<B: Doorbell>(
    spin: &mut Spin,
    flag: &AtomicU32,
    bell: &B,
    wait: &mut Wait<'_>,
    mut ready: impl FnMut() -> bool,
) -> Result<(), WaitError> {
    #[cfg(not(loom))]
    let started = std::time::Instant::now();
    #[cfg(loom)]
    let started = ();
    if spin.run(started, &mut ready) {
        return Ok(());
    }
    let result = sleep_until(flag, bell, wait, ready);
    #[cfg(not(loom))]
    {
        let waited = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // Only a wait the peer ended tells how soon it answers; one cut short by a deadline or
        // a signal check only says that it was at least that long.
        if result.is_ok() || waited > MAX_BUDGET {
            spin.learn(waited);
        }
    }
    result
}

/// "Waiting" steps 2–4: raise the flag, re-check, sleep on the doorbell until `ready()`.
fn sleep_until<B: Doorbell>(
    flag: &AtomicU32,
    bell: &B,
    wait: &mut Wait<'_>,
    mut ready: impl FnMut() -> bool,
) -> Result<(), WaitError> {
    loop {
        flag.store(1, Ordering::SeqCst);
        // Pairs with the publisher's fence: see "No wake-up is lost" in the module doc.
        fence(Ordering::SeqCst);
        if ready() {
            flag.store(0, Ordering::Relaxed);
            return Ok(());
        }
        let slept = bell.sleep(wait);
        flag.store(0, Ordering::Relaxed);
        slept?;
        if ready() {
            return Ok(());
        }
    }
}

/// The producer's private state: its copy of `tail`, whether a frame was torn, and whether a
/// deferred publish still owes the consumer a wake-up.
#[derive(Debug)]
pub struct Producer {
    tail: u64,
    torn: bool,
    unflushed: bool,
    spin: Spin,
}

/// The consumer's private state: its copy of `head` and the message being assembled.
#[derive(Debug)]
pub struct Consumer {
    head: u64,
    partial: Partial,
    spin: Spin,
}

#[derive(Debug)]
enum Partial {
    /// Reading the length prefix; `got` of its bytes are in `buf`.
    Prefix { buf: [u8; PREFIX], got: usize },
    /// Reading the body of a message of `len` bytes into `msg`.
    Body { msg: Vec<u8>, len: usize },
}

impl Partial {
    fn start() -> Partial {
        Partial::Prefix {
            buf: [0; PREFIX],
            got: 0,
        }
    }
}

/// A ring over some [`Storage`]: the protocol of the module doc.
///
/// Each `Ring` value hands out its [`Producer`] and its [`Consumer`] at most once, so one
/// process cannot end up with two producers (or two consumers) racing on the same index.
pub struct Ring<S> {
    storage: S,
    producer_taken: AtomicBool,
    consumer_taken: AtomicBool,
}

impl<S: Storage> Ring<S> {
    /// Wraps storage whose header is initialised (by [`RingHeader::new`]).
    pub fn new(storage: S) -> Ring<S> {
        Ring {
            storage,
            producer_taken: AtomicBool::new(false),
            consumer_taken: AtomicBool::new(false),
        }
    }

    fn header(&self) -> &RingHeader {
        self.storage.header()
    }

    fn cap(&self) -> usize {
        self.storage.capacity()
    }

    /// Size of the data area in bytes.
    pub fn capacity(&self) -> usize {
        self.cap()
    }

    /// The state the (single) producer must pass to every [`send`](Ring::send): `Some` the
    /// first time, `None` ever after (a second producer would race the first on `tail`).
    pub fn producer(&self) -> Option<Producer> {
        if self.producer_taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        let tail = self.header().producer.tail.load(Ordering::Acquire);
        Some(Producer {
            tail,
            torn: false,
            unflushed: false,
            spin: Spin::new(),
        })
    }

    /// The state the (single) consumer must pass to every [`recv`](Ring::recv): `Some` the
    /// first time, `None` ever after (a second consumer would race the first on `head`).
    pub fn consumer(&self) -> Option<Consumer> {
        if self.consumer_taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        let head = self.header().consumer.head.load(Ordering::Acquire);
        Some(Consumer {
            head,
            partial: Partial::start(),
            spin: Spin::new(),
        })
    }

    /// Bytes the producer may write now, given its `tail`.
    fn free(&self, tail: u64) -> io::Result<usize> {
        let head = self.header().consumer.head.load(Ordering::Acquire);
        let used = tail.wrapping_sub(head);
        if used > self.cap() as u64 {
            return Err(invalid("ring indices corrupted (head beyond tail)"));
        }
        Ok(self.cap() - used as usize)
    }

    /// Bytes the consumer may read now, given its `head`.
    fn avail(&self, head: u64) -> io::Result<usize> {
        let tail = self.header().producer.tail.load(Ordering::Acquire);
        let avail = tail.wrapping_sub(head);
        if avail > self.cap() as u64 {
            return Err(invalid("ring indices corrupted (tail beyond capacity)"));
        }
        Ok(avail as usize)
    }

    /// Whether any unread byte is in the ring (non-blocking, callable from any thread).
    pub fn has_unread(&self) -> bool {
        let head = self.header().consumer.head.load(Ordering::Acquire);
        self.avail(head).map_or(true, |n| n > 0)
    }

    /// Copies `src` into the ring at stream position `tail`, wrapping at the end.
    /// The caller has checked `src.len() <= free(tail)`.
    fn put(&self, tail: u64, src: &[u8]) {
        let pos = (tail % self.cap() as u64) as usize;
        let first = src.len().min(self.cap() - pos);
        // SAFETY: `pos + first <= cap` and `src.len() - first <= cap - first`, so both copies
        // stay inside the data area; they cover `[tail, tail + src.len())`, which the caller
        // checked is free, i.e. owned by the producer (invariant "Who writes what").
        unsafe {
            self.storage.copy_in(pos, &src[..first]);
            self.storage.copy_in(0, &src[first..]);
        }
    }

    /// Copies `len` bytes from stream position `head` to `dst`, wrapping at the end.
    ///
    /// # Safety
    /// `len <= avail(head)` (so the bytes are published and owned by the consumer), and `dst`
    /// is valid for `len` byte writes.
    unsafe fn get(&self, head: u64, dst: *mut u8, len: usize) {
        let pos = (head % self.cap() as u64) as usize;
        let first = len.min(self.cap() - pos);
        // SAFETY: both pieces lie inside the data area (as in `put`) and inside the published
        // range `[head, head + len)`; `dst` is valid for `first + (len - first)` bytes.
        unsafe {
            self.storage.copy_out(pos, dst, first);
            self.storage.copy_out(0, dst.add(first), len - first);
        }
    }

    fn publish_tail<B: Doorbell>(&self, tail: u64, data: &B) -> io::Result<()> {
        let h = self.header();
        h.producer.tail.store(tail, Ordering::Release);
        // Dekker with the consumer's `reader_waiting = 1; fence` (module doc, "Waiting").
        fence(Ordering::SeqCst);
        if h.consumer.reader_waiting.load(Ordering::Relaxed) != 0 {
            data.ring()?;
        }
        Ok(())
    }

    fn publish_head<B: Doorbell>(&self, head: u64, space: &B) -> io::Result<()> {
        let h = self.header();
        h.consumer.head.store(head, Ordering::Release);
        fence(Ordering::SeqCst);
        if h.producer.writer_waiting.load(Ordering::Relaxed) != 0 {
            space.ring()?;
        }
        Ok(())
    }

    /// Sends one message (any length, including 0 and more than the capacity), waiting for
    /// space as needed. Only the producer may call this, always with the same `p`.
    pub fn send<B: Doorbell>(
        &self,
        p: &mut Producer,
        msg: &[u8],
        bells: Bells<'_, B>,
        wait: &mut Wait<'_>,
    ) -> Result<(), SendError> {
        self.send_frame(p, msg, &bells, wait, false)
    }

    /// Like [`send`](Ring::send), but does not wake a consumer asleep for data (module doc,
    /// "Deferred wake-ups"), unless it must wait for space. Call [`flush`](Ring::flush) (or a
    /// plain `send`) later, or the consumer may sleep until its deadline.
    pub fn send_deferred<B: Doorbell>(
        &self,
        p: &mut Producer,
        msg: &[u8],
        bells: Bells<'_, B>,
        wait: &mut Wait<'_>,
    ) -> Result<(), SendError> {
        self.send_frame(p, msg, &bells, wait, true)
    }

    /// Like [`send_deferred`](Ring::send_deferred) if the whole frame fits in the free space
    /// right now (then it never blocks, and the caller need not give up a lock such as the
    /// GIL first); otherwise writes nothing and returns `Ok(false)`.
    pub fn try_send_deferred<B: Doorbell>(
        &self,
        p: &mut Producer,
        msg: &[u8],
        bells: Bells<'_, B>,
    ) -> Result<bool, SendError> {
        if p.torn || self.free(p.tail)? < PREFIX + msg.len() {
            return Ok(false);
        }
        self.send_frame(p, msg, &bells, &mut Wait::forever(), true)?;
        Ok(true)
    }

    /// Wakes the consumer if it sleeps and a deferred send has not done so. Cheap (no fence,
    /// no system call) when nothing is owed.
    pub fn flush<B: Doorbell>(&self, p: &mut Producer, data: &B) -> io::Result<()> {
        if !p.unflushed {
            return Ok(());
        }
        p.unflushed = false;
        self.publish_tail(p.tail, data)
    }

    fn send_frame<B: Doorbell>(
        &self,
        p: &mut Producer,
        msg: &[u8],
        bells: &Bells<'_, B>,
        wait: &mut Wait<'_>,
        defer: bool,
    ) -> Result<(), SendError> {
        if p.torn {
            return Err(SendError::Io(io::Error::other(
                "an earlier send stopped mid-message; this channel can no longer be used",
            )));
        }
        let h = self.header();
        if h.consumer.consumer_closed.load(Ordering::Acquire) != 0 {
            return Err(SendError::Disconnected);
        }
        let prefix = (msg.len() as u64).to_le_bytes();
        let total = PREFIX + msg.len();
        let mut sent = 0;
        while sent < total {
            let result = self.send_some(p, &prefix, msg, sent, bells, wait, defer);
            match result {
                Ok(n) => sent += n,
                Err(e) => {
                    p.torn |= sent > 0;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Writes and publishes the next piece of the frame `prefix ++ msg` from offset `sent`,
    /// first waiting for space if there is none; returns how many bytes went in. `defer`:
    /// publish without waking the consumer.
    #[allow(clippy::too_many_arguments)]
    fn send_some<B: Doorbell>(
        &self,
        p: &mut Producer,
        prefix: &[u8; PREFIX],
        msg: &[u8],
        sent: usize,
        bells: &Bells<'_, B>,
        wait: &mut Wait<'_>,
        defer: bool,
    ) -> Result<usize, SendError> {
        let h = self.header();
        let mut free = self.free(p.tail)?;
        if free == 0 {
            // A consumer asleep for data we have not rung for would never free the space we
            // are about to wait for ("Deferred wake-ups").
            self.flush(p, bells.data)?;
            let tail = p.tail;
            let closed = || h.consumer.consumer_closed.load(Ordering::Acquire) != 0;
            let ready = || closed() || self.free(tail).map_or(true, |f| f > 0);
            let flag = &h.producer.writer_waiting;
            block_until(&mut p.spin, flag, bells.space, wait, ready).map_err(|e| match e {
                WaitError::Timeout => SendError::Timeout,
                WaitError::Interrupted => SendError::Interrupted,
                WaitError::PeerGone => SendError::Disconnected,
                WaitError::Io(e) => SendError::Io(e),
            })?;
            if closed() {
                return Err(SendError::Disconnected);
            }
            free = self.free(p.tail)?;
        }
        let end = sent + free.min(PREFIX + msg.len() - sent);
        let mut tail = p.tail;
        let mut at = sent;
        if at < PREFIX {
            let upto = end.min(PREFIX);
            self.put(tail, &prefix[at..upto]);
            tail += (upto - at) as u64;
            at = upto;
        }
        if at < end {
            self.put(tail, &msg[at - PREFIX..end - PREFIX]);
            tail += (end - at) as u64;
        }
        p.tail = tail;
        if defer {
            h.producer.tail.store(tail, Ordering::Release);
            p.unflushed = true;
        } else {
            p.unflushed = false;
            self.publish_tail(tail, bells.data)?;
        }
        Ok(end - sent)
    }

    /// Receives the next whole message, waiting for its bytes as needed. Progress survives a
    /// `Timeout` or `Interrupted` result. Only the consumer may call this, always with the same
    /// `c`.
    pub fn recv<B: Doorbell>(
        &self,
        c: &mut Consumer,
        bells: Bells<'_, B>,
        wait: &mut Wait<'_>,
    ) -> Result<Vec<u8>, RecvError> {
        let h = self.header();
        loop {
            let avail = self.avail(c.head)?;
            if avail > 0 {
                let done = self.take(c, avail)?;
                self.publish_head(c.head, bells.space)?;
                match done {
                    Some(msg) => return Ok(msg),
                    None => continue,
                }
            }
            let closed = || h.producer.producer_closed.load(Ordering::Acquire) != 0;
            if closed() {
                // `closed` was stored after the producer's last `tail`, so this re-load sees
                // every byte it ever sent.
                if self.avail(c.head)? == 0 {
                    return Err(RecvError::Disconnected);
                }
                continue;
            }
            let head = c.head;
            let ready = || closed() || self.avail(head).map_or(true, |n| n > 0);
            let flag = &h.consumer.reader_waiting;
            match block_until(&mut c.spin, flag, bells.data, wait, ready) {
                Ok(()) => {}
                Err(WaitError::Timeout) => return Err(RecvError::Timeout),
                Err(WaitError::Interrupted) => return Err(RecvError::Interrupted),
                Err(WaitError::Io(e)) => return Err(RecvError::Io(e)),
                // The producer is dead, so the ring holds all it will ever hold: return a whole
                // message if there is one (the loop drains), else report the death.
                Err(WaitError::PeerGone) => {
                    if self.avail(c.head)? == 0 {
                        return Err(RecvError::Disconnected);
                    }
                }
            }
        }
    }

    /// Takes the messages that are already whole in the ring, at most `max`, handing each to
    /// `sink` (through `scratch`, reused), and publishes `head` once for all of them. Never
    /// waits. Stops at a message not yet whole, and takes nothing while one is half-taken by
    /// [`recv`](Ring::recv): that one and everything after it are left to `recv`. Only the
    /// consumer may call this, always with the same `c`. A run of small messages costs one
    /// load of `tail` and one publication of `head` here, where `recv` pays both (and a fence)
    /// per message.
    pub fn recv_ready<B: Doorbell>(
        &self,
        c: &mut Consumer,
        bells: Bells<'_, B>,
        max: usize,
        scratch: &mut Vec<u8>,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<usize, RecvError> {
        if !matches!(c.partial, Partial::Prefix { got: 0, .. }) {
            return Ok(0);
        }
        let mut avail = self.avail(c.head)?;
        let mut taken = 0;
        while taken < max && avail >= PREFIX {
            let mut prefix = [0u8; PREFIX];
            // SAFETY: `PREFIX <= avail` bytes from `head` are published; `prefix` holds them.
            unsafe { self.get(c.head, prefix.as_mut_ptr(), PREFIX) };
            // Not whole yet, or not a length at all (left to `recv`, which reports it).
            let Some(len) = usize::try_from(u64::from_le_bytes(prefix))
                .ok()
                .filter(|&len| len <= avail - PREFIX)
            else {
                break;
            };
            scratch.clear();
            reserve(scratch, len)?;
            // SAFETY: the `len` bytes after the prefix are published (`len <= avail - PREFIX`);
            // `scratch` has capacity for `len` bytes (reserved just above).
            unsafe { self.get(c.head + PREFIX as u64, scratch.as_mut_ptr(), len) };
            // SAFETY: the `len` bytes were just initialised by `get`.
            unsafe { scratch.set_len(len) };
            c.head += (PREFIX + len) as u64;
            avail -= PREFIX + len;
            taken += 1;
            sink(scratch);
        }
        if taken > 0 {
            self.publish_head(c.head, bells.space)?;
        }
        Ok(taken)
    }

    /// Copies up to `avail` published bytes of the current message into `c` (never past the
    /// message's end); returns the message once it is whole. Does not publish `head`.
    fn take(&self, c: &mut Consumer, mut avail: usize) -> Result<Option<Vec<u8>>, RecvError> {
        loop {
            match &mut c.partial {
                Partial::Prefix { buf, got } => {
                    let n = (PREFIX - *got).min(avail);
                    // SAFETY: `n <= avail` bytes are published; `buf[*got..]` has room for
                    // `PREFIX - *got >= n` bytes.
                    unsafe { self.get(c.head, buf.as_mut_ptr().add(*got), n) };
                    c.head += n as u64;
                    avail -= n;
                    *got += n;
                    if *got < PREFIX {
                        return Ok(None);
                    }
                    let len = usize::try_from(u64::from_le_bytes(*buf))
                        .ok()
                        .filter(|&l| l <= isize::MAX as usize)
                        .ok_or_else(|| invalid("message length prefix out of range"))?;
                    // The prefix is the peer's word, not a promise: reserve at most one ring's
                    // worth now and grow as bytes arrive ("Framing" in the module doc).
                    let mut msg = Vec::new();
                    reserve(&mut msg, len.min(self.cap()))?;
                    c.partial = Partial::Body { msg, len };
                }
                Partial::Body { msg, len } => {
                    let n = (*len - msg.len()).min(avail);
                    let have = msg.len();
                    if msg.capacity() - have < n {
                        // Double, capped at the announced length: amortised O(len) copying,
                        // and never more than twice what has arrived.
                        let want = (have + n).max(msg.capacity().saturating_mul(2)).min(*len);
                        reserve(msg, want)?;
                    }
                    // SAFETY: `n <= avail` bytes are published; `msg` has spare capacity for
                    // `n` more bytes (ensured just above), so `have + n <= capacity`.
                    unsafe { self.get(c.head, msg.as_mut_ptr().add(have), n) };
                    // SAFETY: the `n` bytes after `have` were just initialised by `get`.
                    unsafe { msg.set_len(have + n) };
                    c.head += n as u64;
                    if msg.len() < *len {
                        return Ok(None);
                    }
                    return match mem::replace(&mut c.partial, Partial::start()) {
                        Partial::Body { msg, .. } => Ok(Some(msg)),
                        Partial::Prefix { .. } => unreachable!("matched Body above"),
                    };
                }
            }
        }
    }

    /// Marks the producer's end closed and wakes the consumer; its receives then end with
    /// `Disconnected` once the ring is drained.
    pub fn close_producer<B: Doorbell>(&self, data: &B) {
        self.header()
            .producer
            .producer_closed
            .store(1, Ordering::Release);
        // A failed ring only matters to a peer that is gone already.
        let _ = data.ring();
    }

    /// Marks the consumer's end closed and wakes the producer; its sends then end with
    /// `Disconnected`.
    pub fn close_consumer<B: Doorbell>(&self, space: &B) {
        self.header()
            .consumer
            .consumer_closed
            .store(1, Ordering::Release);
        let _ = space.ring();
    }
}

/// Grows `msg`'s capacity to at least `total` bytes, reporting failure instead of aborting.
fn reserve(msg: &mut Vec<u8>, total: usize) -> io::Result<()> {
    msg.try_reserve_exact(total.saturating_sub(msg.len()))
        .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "no memory for a message"))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}
