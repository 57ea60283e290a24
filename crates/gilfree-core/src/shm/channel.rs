//! STUB — to be written by the transport work. Signatures are the contract.
#![allow(missing_docs, unused_variables)]

use std::os::fd::{OwnedFd, RawFd};

use crate::{RecvError, SendError, Wait};

/// Fd numbers a child needs to open its end of a [`Channel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelFds {
    pub memfd: RawFd,
    pub events: [RawFd; 4],
}

impl ChannelFds {
    pub fn encode(&self) -> String {
        todo!()
    }
    pub fn decode(s: &str) -> Option<Self> {
        todo!()
    }
}

pub struct Channel {}

impl Channel {
    pub fn create(ring_capacity: usize) -> std::io::Result<Channel> {
        todo!()
    }
    pub fn child_fds(&self) -> ChannelFds {
        todo!()
    }
    pub fn set_inheritable(&self, inheritable: bool) -> std::io::Result<()> {
        todo!()
    }
    pub fn open_inherited(fds: ChannelFds) -> std::io::Result<Channel> {
        todo!()
    }
    pub fn send(&self, msg: &[u8], wait: &mut Wait<'_>) -> Result<(), SendError> {
        todo!()
    }
    pub fn recv(&self, wait: &mut Wait<'_>) -> Result<Vec<u8>, RecvError> {
        todo!()
    }
    pub fn has_incoming(&self) -> bool {
        todo!()
    }
    #[doc(hidden)]
    pub fn _unused(_: OwnedFd) {}
}
