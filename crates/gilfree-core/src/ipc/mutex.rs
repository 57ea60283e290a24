//! A process-shared, robust, error-checking pthread mutex that lives in shared memory.
//!
//! Owner-death detection is glibc's and the kernel's: a robust mutex is on its owner
//! thread's robust list, which the kernel walks when the thread exits (whatever killed it),
//! setting `FUTEX_OWNER_DIED` in the lock word and waking one waiter. The next locker gets
//! `EOWNERDEAD`; we call `pthread_mutex_consistent` and report [`Acquired::OwnerDied`]. No
//! polling is involved, and since glibc already owns each thread's robust list (only one can
//! be registered), building on its mutex is the only way to get this from the kernel.
//!
//! # Layout
//! One `pthread_mutex_t` (40 bytes on x86_64 and aarch64 glibc). Its first 32-bit word is the
//! kernel-visible lock word: the owner's TID in the low 30 bits (`FUTEX_TID_MASK`), plus the
//! `FUTEX_WAITERS` and `FUTEX_OWNER_DIED` bits. [`RawMutex::owner`] reads it (atomically) to
//! answer `locked()` without taking the lock; glibc and the kernel are its only writers.
//!
//! # Waiting
//! A blocking lock takes it in slices: `pthread_mutex_clocklock` with a `CLOCK_MONOTONIC`
//! deadline of now + [`Wait::signal_interval`], then the signal check, as [`crate::wait`]
//! describes, so Python's Ctrl-C is honoured while the GIL is released.
//!
//! # Differences from `threading.Lock`
//! The mutex is error-checking: only the owning thread may unlock it (glibc returns `EPERM`
//! otherwise, and we report [`ReleaseError::NotOwner`]); locking it again from the owning
//! thread cannot succeed and just waits for the deadline, as it would deadlock with
//! `threading.Lock`.

use std::io;
use std::time::Duration;

use crate::ipc::error::{AcquireError, Acquired, ReleaseError};
use crate::sync::{AtomicU32, Ordering, UnsafeCell};
use crate::Wait;

/// The low 30 bits of a robust futex word: the owner's TID.
const FUTEX_TID_MASK: u32 = 0x3fff_ffff;

unsafe extern "C" {
    // In glibc since 2.30; not (yet) declared by the `libc` crate.
    fn pthread_mutex_clocklock(
        mutex: *mut libc::pthread_mutex_t,
        clock: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// How many `fork`s this process descends through since the engine loaded: bumped in the
/// child of every `fork` (a `pthread_atfork` handler), so a TID cached before the fork is
/// known to be stale there.
static FORK_GENERATION: AtomicU32 = AtomicU32::new(0);

std::thread_local! {
    /// `(FORK_GENERATION, TID)` of the calling thread when it last asked.
    static TID: std::cell::Cell<Option<(u32, u32)>> = const { std::cell::Cell::new(None) };
}

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The calling thread's kernel TID (cached: `gettid` is a system call).
///
/// The child of `fork` (Python's `os.fork`) inherits the forking thread's thread-locals but
/// runs with a new TID; a stale cached TID would make it believe it owns the parent thread's
/// locks (an `RLock` held by the parent would be re-entered at once). The fork handler
/// invalidates every cache taken before the fork.
pub fn current_tid() -> u32 {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // SAFETY: `after_fork_in_child` is async-signal-safe (one atomic add) and lives as
        // long as the process: the engine's library is never unloaded. The return value only
        // reports ENOMEM; without the handler, caching would be unsound after a fork, so a
        // failure here must not go unnoticed.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        assert_eq!(rc, 0, "pthread_atfork failed: {rc}");
    });
    let generation = FORK_GENERATION.load(Ordering::Relaxed);
    TID.with(|cache| match cache.get() {
        Some((g, tid)) if g == generation => tid,
        _ => {
            let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
            cache.set(Some((generation, tid)));
            tid
        }
    })
}

/// A robust, process-shared, error-checking pthread mutex (see the module doc).
#[repr(C)]
pub struct RawMutex {
    inner: UnsafeCell<libc::pthread_mutex_t>,
}

// SAFETY: a process-shared pthread mutex is made to be used from many threads (and
// processes) at once; all access goes through the pthread functions, which synchronise.
unsafe impl Sync for RawMutex {}
// SAFETY: as above; it is not tied to the thread that initialised it.
unsafe impl Send for RawMutex {}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

impl RawMutex {
    /// Initialises a mutex in place: process-shared, robust, error-checking, unlocked.
    ///
    /// # Safety
    /// `this` must be valid for writes of a `RawMutex`, suitably aligned, and no thread in any
    /// process may be using a mutex at that address (it must be unlocked or never used).
    pub unsafe fn init(this: *mut RawMutex) -> io::Result<()> {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: `attr` is a local we initialise before any other use and destroy after;
        // `this` is valid and unused (the caller's contract), so glibc may initialise it.
        unsafe {
            check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
            let a = attr.as_mut_ptr();
            let result = check(libc::pthread_mutexattr_setpshared(
                a,
                libc::PTHREAD_PROCESS_SHARED,
            ))
            .and_then(|()| {
                check(libc::pthread_mutexattr_setrobust(
                    a,
                    libc::PTHREAD_MUTEX_ROBUST,
                ))
            })
            .and_then(|()| {
                check(libc::pthread_mutexattr_settype(
                    a,
                    libc::PTHREAD_MUTEX_ERRORCHECK,
                ))
            })
            .and_then(|()| {
                check(libc::pthread_mutex_init(
                    UnsafeCell::raw_get(&raw const (*this).inner),
                    a,
                ))
            });
            libc::pthread_mutexattr_destroy(a);
            result
        }
    }

    fn ptr(&self) -> *mut libc::pthread_mutex_t {
        self.inner.get()
    }

    /// The TID of the owning thread, `0` when unlocked (or when its owner died and nobody has
    /// taken it since).
    pub fn owner(&self) -> u32 {
        // SAFETY: the first field of glibc's `struct __pthread_mutex_s` is the 4-byte, 4-aligned
        // lock word, which glibc and the kernel only ever access atomically; reading it with an
        // atomic load cannot race with them.
        let word = unsafe { &*self.ptr().cast::<AtomicU32>() };
        word.load(Ordering::Acquire) & FUTEX_TID_MASK
    }

    /// Whether the calling thread owns the mutex.
    pub fn is_owned(&self) -> bool {
        self.owner() == current_tid()
    }

    fn finish(&self, rc: libc::c_int) -> Result<Option<Acquired>, AcquireError> {
        match rc {
            0 => Ok(Some(Acquired::Clean)),
            libc::EOWNERDEAD => {
                // SAFETY: we own the mutex (EOWNERDEAD hands it to us) and it is live.
                check(unsafe { libc::pthread_mutex_consistent(self.ptr()) })?;
                Ok(Some(Acquired::OwnerDied))
            }
            libc::EBUSY | libc::ETIMEDOUT | libc::EDEADLK => Ok(None),
            e => Err(AcquireError::Io(io::Error::from_raw_os_error(e))),
        }
    }

    /// Takes the mutex if it is free; `None` if it is held (by anyone, the caller included).
    pub fn try_lock(&self) -> Result<Option<Acquired>, AcquireError> {
        // SAFETY: the mutex was initialised by `init` and lives as long as `self`.
        self.finish(unsafe { libc::pthread_mutex_trylock(self.ptr()) })
    }

    /// Takes the mutex, waiting as `wait` allows (see the module doc).
    pub fn lock(&self, wait: &mut Wait<'_>) -> Result<Acquired, AcquireError> {
        loop {
            if let Some(got) = self.try_lock()? {
                return Ok(got);
            }
            let slice = wait.slice()?;
            if self.is_owned() {
                // Our own lock: nothing can release it. Sleep out the slice (a deadlock, as
                // with `threading.Lock`, but a finite or interruptible one).
                std::thread::sleep(slice.unwrap_or(Duration::from_secs(1)));
            } else {
                let rc = match slice {
                    // SAFETY: as in `try_lock`.
                    None => unsafe { libc::pthread_mutex_lock(self.ptr()) },
                    Some(slice) => {
                        let deadline = monotonic_after(slice);
                        // SAFETY: as in `try_lock`; `deadline` is a valid timespec.
                        unsafe {
                            pthread_mutex_clocklock(self.ptr(), libc::CLOCK_MONOTONIC, &deadline)
                        }
                    }
                };
                if let Some(got) = self.finish(rc)? {
                    return Ok(got);
                }
            }
            wait.after_slice()?;
        }
    }

    /// Takes the mutex, waiting as long as needed, without signal checks: for the short
    /// critical sections of the arena's bookkeeping.
    pub fn lock_uninterruptible(&self) -> Acquired {
        // SAFETY: as in `try_lock`.
        match self.finish(unsafe { libc::pthread_mutex_lock(self.ptr()) }) {
            Ok(Some(got)) => got,
            // EDEADLK would be a bug of ours; a failing mutex is a broken invariant.
            other => panic!("arena bookkeeping mutex: {other:?}"),
        }
    }

    /// Releases the mutex. Only its owner thread may.
    pub fn unlock(&self) -> Result<(), ReleaseError> {
        // SAFETY: as in `try_lock`; glibc checks ownership and refuses with EPERM.
        match unsafe { libc::pthread_mutex_unlock(self.ptr()) } {
            0 => Ok(()),
            _ if self.owner() == 0 => Err(ReleaseError::Unlocked),
            _ => Err(ReleaseError::NotOwner),
        }
    }
}

/// `CLOCK_MONOTONIC` now + `d`, as an absolute timespec for `pthread_mutex_clocklock`.
fn monotonic_after(d: Duration) -> libc::timespec {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let d = d.min(Duration::from_secs(3600));
    let mut sec = now.tv_sec + d.as_secs() as libc::time_t;
    let mut nsec = now.tv_nsec + d.subsec_nanos() as libc::c_long;
    if nsec >= 1_000_000_000 {
        sec += 1;
        nsec -= 1_000_000_000;
    }
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}
