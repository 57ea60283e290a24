//! Cross-process primitives that live in shared memory or kernel objects.
//!
//! This module and [`crate::shm`] are the only places where `unsafe` is allowed.
#![allow(unsafe_code)]

pub mod notify;
