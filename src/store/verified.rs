//! [`VerifiedChunk`]: bytes whose BLAKE3 hash was checked against the id they claim.
//!
//! Every path that writes image bytes to a disk takes a `VerifiedChunk`, and the only constructor
//! hashes the bytes, so nothing unverified can reach a target.

use super::id::ChunkId;

#[derive(Debug)]
pub struct VerifiedChunk {
    id: ChunkId,
    data: Vec<u8>,
}

/// The bytes did not hash to the expected id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashMismatch {
    pub expected: ChunkId,
    pub actual: ChunkId,
}

impl VerifiedChunk {
    /// Hashes `data` and accepts it only if it is the chunk `expected`.
    pub fn verify(expected: ChunkId, data: Vec<u8>) -> Result<Self, (HashMismatch, Vec<u8>)> {
        let actual = ChunkId::of(&data);
        if actual == expected {
            Ok(VerifiedChunk { id: expected, data })
        } else {
            Err((HashMismatch { expected, actual }, data))
        }
    }

    pub fn id(&self) -> ChunkId {
        self.id
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }
}

/// Consecutive verified chunks laid end to end, written to a target in one call. It can only be
/// built from [`VerifiedChunk`]s, so it holds verified bytes only.
#[derive(Debug)]
pub struct VerifiedRun {
    offset: u64,
    data: Vec<u8>,
}

impl VerifiedRun {
    pub fn new(offset: u64) -> Self {
        VerifiedRun {
            offset,
            data: Vec::new(),
        }
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn push(&mut self, chunk: &VerifiedChunk) {
        self.data.extend_from_slice(chunk.bytes());
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }
}
