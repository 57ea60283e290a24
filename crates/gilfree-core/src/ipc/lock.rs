//! `Lock` and `RLock`: a robust process-shared mutex ([`super::mutex`]) in an arena slot,
//! plus a recursion count for `RLock`.
//!
//! # Layout ([`LockBody`], `#[repr(C)]`)
//! | offset | field       | meaning                                                      |
//! |--------|-------------|--------------------------------------------------------------|
//! | 0      | `mutex`     | robust pshared error-checking `pthread_mutex_t` (40 bytes)    |
//! | 40     | `count`     | `RLock` recursion depth; written only by the owning thread    |
//! | 44     | `recursive` | 1 for an `RLock` (read-only)                                  |
//!
//! # Protocol
//! `acquire`: an `RLock` whose mutex the calling thread owns (the lock word holds its TID)
//! does `count += 1`; otherwise lock the mutex (in signal-check slices) and set `count = 1`.
//! `release`: an `RLock` checks ownership, does `count -= 1`, and unlocks at 0; a `Lock`
//! unlocks (glibc refuses a non-owner).
//!
//! # When a process dies
//! The kernel marks the mutex of a dead owner; the next acquirer gets it with
//! [`Acquired::OwnerDied`] (Python: the lock is held and an `OwnerDiedError` warning is
//! issued), and `count` is reset to 1 for it.
//!
//! # Differences from `threading`
//! `threading.Lock` may be released by any thread; this one only by its owner thread
//! ([`ReleaseError::NotOwner`]), since that is what makes owner death detectable.

use crate::ipc::error::{AcquireError, Acquired, ReleaseError};
use crate::Wait;

/// The operations of `threading.Lock` / `RLock`, for both twins.
pub trait RawLock: Sync {
    /// Takes the lock, waiting as `wait` allows.
    fn acquire(&self, wait: &mut Wait<'_>) -> Result<Acquired, AcquireError>;
    /// Takes the lock if that needs no waiting; `None` if it is held.
    fn try_acquire(&self) -> Result<Option<Acquired>, AcquireError>;
    /// Releases one level of the lock.
    fn release(&self) -> Result<(), ReleaseError>;
    /// Whether some thread holds the lock.
    fn locked(&self) -> bool;
    /// Whether the calling thread holds the lock.
    fn is_owned(&self) -> bool;
    /// Releases the lock completely (every `RLock` level) and returns the depth, for
    /// `Condition.wait`.
    fn release_save(&self) -> Result<u32, ReleaseError>;
    /// Takes the lock again, uninterruptibly, at the depth `release_save` returned.
    fn acquire_restore(&self, depth: u32) -> Acquired;
}

/// The in-process twin: a std mutex and condvar. [`LocalLock::abandon`] simulates the death
/// of the owner, as a robust mutex's owner-died bit does.
#[cfg(not(loom))]
pub struct LocalLock {
    state: crate::sync::Mutex<LocalState>,
    cond: crate::sync::Condvar,
    recursive: bool,
}

#[cfg(not(loom))]
#[derive(Default)]
struct LocalState {
    owner: Option<std::thread::ThreadId>,
    count: u32,
    owner_died: bool,
}

#[cfg(not(loom))]
impl LocalLock {
    /// A free lock (`recursive`: an `RLock`).
    pub fn new(recursive: bool) -> LocalLock {
        LocalLock {
            state: crate::sync::Mutex::default(),
            cond: crate::sync::Condvar::new(),
            recursive,
        }
    }

    fn state(&self) -> crate::sync::MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulates the death of the owning thread: the lock becomes free, and its next
    /// acquirer gets [`Acquired::OwnerDied`].
    pub fn abandon(&self) {
        let mut st = self.state();
        if st.owner.is_some() {
            st.owner = None;
            st.count = 0;
            st.owner_died = true;
            self.cond.notify_all();
        }
    }

    fn take(&self, st: &mut LocalState) -> Acquired {
        st.owner = Some(std::thread::current().id());
        st.count = 1;
        if std::mem::take(&mut st.owner_died) {
            Acquired::OwnerDied
        } else {
            Acquired::Clean
        }
    }
}

#[cfg(not(loom))]
impl RawLock for LocalLock {
    fn acquire(&self, wait: &mut Wait<'_>) -> Result<Acquired, AcquireError> {
        let me = std::thread::current().id();
        let mut st = self.state();
        loop {
            match st.owner {
                None => return Ok(self.take(&mut st)),
                Some(o) if o == me && self.recursive => {
                    st.count += 1;
                    return Ok(Acquired::Clean);
                }
                Some(_) => {}
            }
            let slice = wait
                .slice()?
                .unwrap_or(std::time::Duration::from_secs(3600));
            let (guard, slept) = self
                .cond
                .wait_timeout(st, slice)
                .unwrap_or_else(|e| e.into_inner());
            st = guard;
            if slept.timed_out() && st.owner.is_some() {
                drop(st);
                wait.after_slice()?;
                st = self.state();
            }
        }
    }

    fn try_acquire(&self) -> Result<Option<Acquired>, AcquireError> {
        let me = std::thread::current().id();
        let mut st = self.state();
        Ok(match st.owner {
            None => Some(self.take(&mut st)),
            Some(o) if o == me && self.recursive => {
                st.count += 1;
                Some(Acquired::Clean)
            }
            Some(_) => None,
        })
    }

    fn release(&self) -> Result<(), ReleaseError> {
        let mut st = self.state();
        match st.owner {
            None => Err(ReleaseError::Unlocked),
            Some(o) if o != std::thread::current().id() => Err(ReleaseError::NotOwner),
            Some(_) => {
                st.count -= 1;
                if st.count == 0 {
                    st.owner = None;
                    self.cond.notify_one();
                }
                Ok(())
            }
        }
    }

    fn locked(&self) -> bool {
        self.state().owner.is_some()
    }

    fn is_owned(&self) -> bool {
        self.state().owner == Some(std::thread::current().id())
    }

    fn release_save(&self) -> Result<u32, ReleaseError> {
        let mut st = self.state();
        match st.owner {
            None => Err(ReleaseError::Unlocked),
            Some(o) if o != std::thread::current().id() => Err(ReleaseError::NotOwner),
            Some(_) => {
                let depth = std::mem::take(&mut st.count);
                st.owner = None;
                self.cond.notify_one();
                Ok(depth)
            }
        }
    }

    fn acquire_restore(&self, depth: u32) -> Acquired {
        let got = loop {
            if let Ok(got) = self.acquire(&mut Wait::forever()) {
                break got;
            }
        };
        self.state().count = depth.max(1);
        got
    }
}

/// The body of a `Lock`/`RLock` slot (layout in the module doc).
#[cfg(not(loom))]
#[repr(C)]
pub struct LockBody {
    mutex: super::mutex::RawMutex,
    count: crate::sync::AtomicU32,
    recursive: crate::sync::AtomicU32,
}

/// The shared-memory lock: a [`LockBody`] in an arena slot.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct ShmLock {
    slot: super::arena::TypedSlot<LockBody>,
    recursive: bool,
}

// SAFETY: `ShmLock::new` initialises every Lock slot as a `LockBody` (a process-shared
// robust mutex and two atomics, within a slot body).
#[cfg(not(loom))]
unsafe impl super::arena::SlotBody for LockBody {
    const KIND: super::arena::Kind = super::arena::Kind::new(1);
    // `LockBody` is `#[repr(C)]` with its robust mutex first.
    const BODY_STARTS_WITH_MUTEX: bool = true;
}

#[cfg(not(loom))]
impl ShmLock {
    /// Allocates a free lock in `arena` (`recursive`: an `RLock`).
    pub fn new(
        arena: &std::sync::Arc<super::arena::Arena>,
        recursive: bool,
    ) -> Result<ShmLock, super::error::AttachError> {
        let slot = super::arena::TypedSlot::alloc(arena, |body: *mut LockBody| {
            // SAFETY: `alloc` hands us the slot's unshared, zeroed, 64-aligned body, so no
            // thread uses the mutex at that address; the two counters are plain atomics.
            unsafe {
                super::mutex::RawMutex::init(&raw mut (*body).mutex)?;
                (&raw mut (*body).recursive).write(crate::sync::AtomicU32::new(recursive as u32));
            }
            Ok(())
        })?;
        Ok(ShmLock { slot, recursive })
    }

    /// Attaches to the lock `handle` names.
    pub fn attach(
        arena: &std::sync::Arc<super::arena::Arena>,
        handle: super::arena::Handle,
    ) -> Result<ShmLock, super::error::AttachError> {
        let slot = super::arena::TypedSlot::attach(arena, handle)?;
        let mut lock = ShmLock {
            slot,
            recursive: false,
        };
        lock.recursive = lock.body().recursive.load(crate::sync::Ordering::Relaxed) == 1;
        Ok(lock)
    }

    /// The handle to send to another process.
    pub fn handle(&self) -> super::arena::Handle {
        self.slot.handle()
    }

    /// Whether this is an `RLock`.
    pub fn is_recursive(&self) -> bool {
        self.recursive
    }

    /// How many times the calling thread holds the lock (0 if it does not hold it).
    pub fn recursion_count(&self) -> u32 {
        if !self.is_owned() {
            return 0;
        }
        if self.recursive {
            self.body().count.load(crate::sync::Ordering::Relaxed)
        } else {
            1
        }
    }

    fn body(&self) -> &LockBody {
        self.slot.body()
    }

    fn set_count(&self, n: u32) {
        self.body().count.store(n, crate::sync::Ordering::Relaxed);
    }

    fn owner_check(&self) -> Result<(), ReleaseError> {
        let m = &self.body().mutex;
        if m.is_owned() {
            Ok(())
        } else if m.owner() == 0 {
            Err(ReleaseError::Unlocked)
        } else {
            Err(ReleaseError::NotOwner)
        }
    }
}

#[cfg(not(loom))]
impl RawLock for ShmLock {
    fn acquire(&self, wait: &mut Wait<'_>) -> Result<Acquired, AcquireError> {
        let body = self.body();
        if self.recursive && body.mutex.is_owned() {
            body.count.fetch_add(1, crate::sync::Ordering::Relaxed);
            return Ok(Acquired::Clean);
        }
        let got = body.mutex.lock(wait)?;
        self.set_count(1);
        Ok(got)
    }

    fn try_acquire(&self) -> Result<Option<Acquired>, AcquireError> {
        let body = self.body();
        if self.recursive && body.mutex.is_owned() {
            body.count.fetch_add(1, crate::sync::Ordering::Relaxed);
            return Ok(Some(Acquired::Clean));
        }
        let got = body.mutex.try_lock()?;
        if got.is_some() {
            self.set_count(1);
        }
        Ok(got)
    }

    fn release(&self) -> Result<(), ReleaseError> {
        let body = self.body();
        if self.recursive {
            self.owner_check()?;
            if body.count.fetch_sub(1, crate::sync::Ordering::Relaxed) > 1 {
                return Ok(());
            }
        }
        body.mutex.unlock()
    }

    fn locked(&self) -> bool {
        self.body().mutex.owner() != 0
    }

    fn is_owned(&self) -> bool {
        self.body().mutex.is_owned()
    }

    fn release_save(&self) -> Result<u32, ReleaseError> {
        self.owner_check()?;
        let depth = self.body().count.swap(0, crate::sync::Ordering::Relaxed);
        self.body().mutex.unlock()?;
        Ok(depth.max(1))
    }

    fn acquire_restore(&self, depth: u32) -> Acquired {
        let got = self.body().mutex.lock_uninterruptible();
        self.set_count(depth.max(1));
        got
    }
}
