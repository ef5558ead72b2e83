//! The chunk frames served lately, kept in memory: a room restoring one image asks for the
//! same chunks many times within minutes, and a frame served from here costs no system call
//! and no copy (the response body shares the bytes).
//!
//! A byte budget split over shards (one lock each); eviction is CLOCK (second chance): a frame
//! asked for again since it was last looked at stays one more round. Chunks are immutable
//! (named by their hash), so nothing is ever stale.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

use crate::store::id::ChunkId;

const SHARDS: usize = 16;

/// Frames larger than this are not kept (one chunk would crowd out many).
const MAX_FRAME: usize = 1 << 20;

#[derive(Default)]
struct Shard {
    frames: HashMap<ChunkId, (Bytes, bool)>,
    order: VecDeque<ChunkId>,
    bytes: usize,
}

/// See the module's documentation.
pub struct FrameCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

impl FrameCache {
    /// A cache of at most `budget` bytes of frames (0: keeps nothing).
    pub fn new(budget: u64) -> FrameCache {
        FrameCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: usize::try_from(budget).unwrap_or(usize::MAX) / SHARDS,
        }
    }

    fn shard(&self, id: &ChunkId) -> &Mutex<Shard> {
        &self.shards[id.0[0] as usize % SHARDS]
    }

    /// The frame of chunk `id`, if kept.
    pub fn get(&self, id: &ChunkId) -> Option<Bytes> {
        let mut s = self.shard(id).lock().unwrap();
        let (frame, used) = s.frames.get_mut(id)?;
        *used = true;
        Some(frame.clone())
    }

    /// Keeps `frame` as chunk `id`'s, evicting what was not asked for again.
    pub fn insert(&self, id: ChunkId, frame: Bytes) {
        if frame.len() > MAX_FRAME || frame.len() > self.per_shard {
            return;
        }
        let mut s = self.shard(&id).lock().unwrap();
        if s.frames.contains_key(&id) {
            return;
        }
        while s.bytes + frame.len() > self.per_shard {
            let Some(old) = s.order.pop_front() else {
                break;
            };
            match s.frames.get_mut(&old) {
                Some((_, used)) if *used => {
                    *used = false;
                    s.order.push_back(old);
                }
                Some(_) => {
                    let (gone, _) = s.frames.remove(&old).expect("just seen");
                    s.bytes -= gone.len();
                }
                None => {}
            }
        }
        s.bytes += frame.len();
        s.order.push_back(id);
        s.frames.insert(id, (frame, false));
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap().bytes as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        // the shard is chosen by the first byte: every id here lands in shard 0
        let mut b = [0u8; 32];
        b[1] = n;
        ChunkId(b)
    }

    #[test]
    fn frames_asked_for_again_outlive_the_others_within_the_budget() {
        let c = FrameCache::new(SHARDS as u64 * 300);
        for n in 0..3 {
            c.insert(id(n), Bytes::from(vec![n; 100]));
        }
        assert_eq!(c.get(&id(1)).as_deref(), Some(&[1u8; 100][..]));
        // a fourth frame: 0 goes (never asked for again); 1 had its second chance
        c.insert(id(3), Bytes::from(vec![3; 100]));
        assert!(c.get(&id(0)).is_none());
        assert!(c.get(&id(1)).is_some());
        assert!(c.get(&id(2)).is_some());
        assert!(c.get(&id(3)).is_some());
        assert_eq!(c.bytes(), 300);
        // too big for a shard: not kept, nothing evicted for it
        c.insert(id(9), Bytes::from(vec![9; 301]));
        assert!(c.get(&id(9)).is_none());
        assert_eq!(c.bytes(), 300);
        // a budget of 0 keeps nothing
        let none = FrameCache::new(0);
        none.insert(id(1), Bytes::from_static(b"x"));
        assert!(none.get(&id(1)).is_none());
    }
}
