//! The element of a response gather list: bytes in memory, or a range of a file that the send
//! path moves to the socket without passing it through user space.

use bytes::Bytes;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// A byte range of an open file. The `Arc` keeps the file open while the slice exists, so a
/// segment deleted by retention stays readable for a send still in flight.
#[derive(Clone, Debug)]
pub struct FileSlice {
    pub file: Arc<OwnedFd>,
    pub position: u64,
    pub len: u32,
}

/// One piece of a response.
#[derive(Clone, Debug)]
pub enum Chunk {
    Mem(Bytes),
    File(FileSlice),
}

impl Chunk {
    pub fn len(&self) -> usize {
        match self {
            Chunk::Mem(b) => b.len(),
            Chunk::File(f) => f.len as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
