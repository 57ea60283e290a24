//! Shared memory: memfd segments, the byte ring, the duplex channel built from two rings, the
//! bulk segments that large buffers travel in, and fd hand-off over a socket.
//!
//! This module and [`crate::ipc`] are the only places where `unsafe` is allowed.
#![allow(unsafe_code)]

pub mod bulk;
pub mod channel;
pub mod fdpass;
pub mod heap;
pub mod ring;
pub mod segment;
