//! Shared memory: memfd segments, the byte ring, and the duplex channel built from two rings.
//!
//! This module and [`crate::ipc`] are the only places where `unsafe` is allowed.
#![allow(unsafe_code)]

pub mod channel;
pub mod ring;
pub mod segment;
