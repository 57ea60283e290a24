//! A lock-free free list of slot indices (a Treiber stack with an ABA tag), usable from many
//! processes at once when its words live in shared memory. The protocol is written out in
//! [`super::arena`]'s module doc ("Free list"); it is generic over where each slot's link word
//! lives, so the loom model can run it on the heap.

use crate::sync::{AtomicU32, AtomicU64, Ordering};

fn split(head: u64) -> (u32, u32) {
    ((head >> 32) as u32, head as u32)
}

fn join(tag: u32, index: u32) -> u64 {
    (tag as u64) << 32 | index as u64
}

/// Pops a free index (never 0); `None` when the list is empty. `next(i)` is slot `i`'s link.
pub fn pop<'a>(head: &AtomicU64, next: impl Fn(u32) -> &'a AtomicU32) -> Option<u32> {
    let mut cur = head.load(Ordering::Acquire);
    loop {
        let (tag, index) = split(cur);
        if index == 0 {
            return None;
        }
        // May be stale if `index` was popped and pushed again meanwhile: then the tag moved on
        // and the CAS below fails.
        let after = next(index).load(Ordering::Acquire);
        match head.compare_exchange_weak(
            cur,
            join(tag.wrapping_add(1), after),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Some(index),
            Err(now) => cur = now,
        }
    }
}

/// Pushes `index` (not 0), which the caller owns, back on the list.
pub fn push<'a>(head: &AtomicU64, index: u32, next: impl Fn(u32) -> &'a AtomicU32) {
    debug_assert!(index != 0);
    let mut cur = head.load(Ordering::Acquire);
    loop {
        let (tag, first) = split(cur);
        next(index).store(first, Ordering::Release);
        match head.compare_exchange_weak(
            cur,
            join(tag.wrapping_add(1), index),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return,
            Err(now) => cur = now,
        }
    }
}
