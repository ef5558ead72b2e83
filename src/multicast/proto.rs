//! The multicast datagram codec: pure, no I/O.
//!
//! ## Wire format (version 1)
//! Every datagram starts with an 8-byte header; integers are big-endian:
//! ```text
//! magic    2 bytes  "BM"
//! version  u8       2
//! kind     u8       1 DATA, 2 NAK, 3 JOIN, 4 STATUS, 5 DONE, 6 PASS, 7 END, 8 REPAIR
//! session  u32      chosen by the sender for one session (group + port + image)
//! ```
//! then, by kind:
//! ```text
//! DATA    (sender → group)    index u32     the chunk's position in the chunk list
//!                             offset u32    of this fragment in the compressed frame
//!                             total u32     the compressed frame's length
//!                             tag u32       the chunk id's first 4 bytes (the id is BLAKE3
//!                                           of the uncompressed bytes; the tag catches a
//!                                           sender of another image, the id verifies)
//!                             payload       the rest of the datagram
//! NAK     (receiver → group)  receiver u32, count u16, count × (first u32, end u32):
//!                             half-open ranges of chunk indexes the receiver lacks
//! REPAIR  (receiver → group)  receiver u32, count u16, count × (index u32, start u32, end u32):
//!                             half-open byte ranges of chunk frames the receiver lacks (it
//!                             holds the rest of those frames)
//! JOIN / STATUS / DONE        receiver u32, held u32, total u32 (chunks held / in the list)
//!         (receiver → group)
//! PASS    (sender → group)    pass u32 (the pass that just ended; 0 while waiting to
//!                             start), total u32
//! END     (sender → group)    nothing: the session is over
//! ```
//! The **chunk list** is the manifest's distinct chunk ids in order of first appearance
//! ([`chunk_list`]); a receiver writes each chunk at every offset where the manifest has it.
//! A whole datagram is at most the configured size (default [`DEFAULT_DATAGRAM`], so that
//! with IP and UDP headers it fits a 1500-byte MTU).
//!
//! ## The session
//! The sender waits until `N` receivers have sent JOIN, or `T` seconds, sending PASS 0 every
//! few hundred ms so receivers learn the session id. Pass 1 sends every chunk of the list in
//! order, fragmented into DATA datagrams, at a rate from a token bucket (a configured maximum,
//! lowered under NAK pressure, never below a floor); each later pass sends only the chunks
//! some receiver NAKed since the previous pass began. After each pass (and while idle) the
//! sender sends PASS. Receivers verify every reassembled chunk against the manifest's id
//! (anything else is dropped and counted: spoofed or damaged traffic never reaches a disk),
//! write it, and ask for what they lack below the highest index seen in the current pass (all
//! of it after a PASS): a chunk of which nothing arrived with a NAK, the missing byte ranges of
//! a chunk partly held with a REPAIR (a lost datagram costs one fragment, not its chunk), at most once per NAK interval per chunk, after a random delay during
//! which a NAK from another receiver covering the same ranges suppresses their own. They send
//! STATUS every second and DONE when they hold everything (again on each PASS). The session
//! ends (END) when every receiver that joined has said DONE, or at the sender's timeout. A
//! receiver that hears END, or nothing for its idle timeout, while it lacks chunks, fetches
//! them over HTTP from the same server, through the same verified write path.

/// Largest datagram by default: 1400 bytes of UDP payload fits a 1500-byte MTU.
pub const DEFAULT_DATAGRAM: usize = 1400;
/// Bytes before a DATA payload.
pub const DATA_HEADER: usize = HEADER + 16;
/// Smallest datagram size that leaves room for a payload.
pub const MIN_DATAGRAM: usize = DATA_HEADER + 16;
/// Most ranges one NAK carries.
pub const MAX_NAK_RANGES: usize = 128;
/// Most byte ranges one REPAIR carries (14 + 12 × 96 bytes fits the smallest datagram size).
pub const MAX_REPAIR_RANGES: usize = 96;

const MAGIC: &[u8; 2] = b"BM";
/// 2: DATA carries a 4-byte tag of the chunk id, not the whole id (1: the 32-byte id; 28 bytes
/// more per 1400-byte datagram).
const VERSION: u8 = 2;
const HEADER: usize = 8;

use crate::store::id::ChunkId;
use crate::store::manifest::{ExtentKind, Manifest};

/// One datagram, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Data {
        index: u32,
        offset: u32,
        total: u32,
        tag: u32,
        payload: &'a [u8],
    },
    Nak {
        receiver: u32,
        ranges: Vec<(u32, u32)>,
    },
    Repair {
        receiver: u32,
        ranges: Vec<FrameRange>,
    },
    Join(Status),
    Status(Status),
    Done(Status),
    Pass {
        pass: u32,
        total: u32,
    },
    End,
}

/// What a receiver holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub receiver: u32,
    pub held: u32,
    pub total: u32,
}

/// Bytes `start..end` of chunk `index`'s compressed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRange {
    pub index: u32,
    pub start: u32,
    pub end: u32,
}

/// Why a datagram was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a bootcast multicast datagram")]
    Magic,
    #[error("protocol version {0} is not supported")]
    Version(u8),
    #[error("unknown datagram kind {0}")]
    Kind(u8),
    #[error("datagram truncated")]
    Truncated,
    #[error("datagram inconsistent: {0}")]
    Invalid(&'static str),
}

/// A decoded datagram and the session it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram<'a> {
    pub session: u32,
    pub message: Message<'a>,
}

fn kind_of(m: &Message) -> u8 {
    match m {
        Message::Data { .. } => 1,
        Message::Nak { .. } => 2,
        Message::Join(_) => 3,
        Message::Status(_) => 4,
        Message::Done(_) => 5,
        Message::Pass { .. } => 6,
        Message::End => 7,
        Message::Repair { .. } => 8,
    }
}

/// Encodes `message` of `session` into `out` (cleared first).
pub fn encode(session: u32, message: &Message, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind_of(message));
    out.extend_from_slice(&session.to_be_bytes());
    match message {
        Message::Data {
            index,
            offset,
            total,
            tag,
            payload,
        } => {
            for v in [index, offset, total, tag] {
                out.extend_from_slice(&v.to_be_bytes());
            }
            out.extend_from_slice(payload);
        }
        Message::Nak { receiver, ranges } => {
            let ranges = &ranges[..ranges.len().min(MAX_NAK_RANGES)];
            out.extend_from_slice(&receiver.to_be_bytes());
            out.extend_from_slice(&(ranges.len() as u16).to_be_bytes());
            for (a, b) in ranges {
                out.extend_from_slice(&a.to_be_bytes());
                out.extend_from_slice(&b.to_be_bytes());
            }
        }
        Message::Repair { receiver, ranges } => {
            let ranges = &ranges[..ranges.len().min(MAX_REPAIR_RANGES)];
            out.extend_from_slice(&receiver.to_be_bytes());
            out.extend_from_slice(&(ranges.len() as u16).to_be_bytes());
            for r in ranges {
                for v in [r.index, r.start, r.end] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
        Message::Join(s) | Message::Status(s) | Message::Done(s) => {
            for v in [s.receiver, s.held, s.total] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        Message::Pass { pass, total } => {
            out.extend_from_slice(&pass.to_be_bytes());
            out.extend_from_slice(&total.to_be_bytes());
        }
        Message::End => {}
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    /// A u16 count (at most `max`), then that many ranges; `one` reads a range and says
    /// whether it is non-empty.
    fn ranges<T>(
        &mut self,
        max: usize,
        one: impl Fn(&mut Self) -> Result<(T, bool), DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let count = self.u16()? as usize;
        if count > max {
            return Err(DecodeError::Invalid("too many ranges"));
        }
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let (range, non_empty) = one(self)?;
            if !non_empty {
                return Err(DecodeError::Invalid("empty range"));
            }
            out.push(range);
        }
        Ok(out)
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Invalid("trailing bytes"))
        }
    }
}

/// Decodes one datagram; never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Datagram<'_>, DecodeError> {
    let mut r = Reader(bytes);
    if r.take(2).map_err(|_| DecodeError::Magic)? != MAGIC {
        return Err(DecodeError::Magic);
    }
    let version = r.take(1)?[0];
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let kind = r.take(1)?[0];
    let session = r.u32()?;
    let status = |r: &mut Reader| -> Result<Status, DecodeError> {
        let s = Status {
            receiver: r.u32()?,
            held: r.u32()?,
            total: r.u32()?,
        };
        r.end()?;
        if s.held > s.total {
            return Err(DecodeError::Invalid("holds more chunks than the list has"));
        }
        Ok(s)
    };
    let message = match kind {
        1 => {
            let (index, offset, total, tag) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
            let payload = r.0;
            if payload.is_empty() {
                return Err(DecodeError::Invalid("empty fragment"));
            }
            if offset as u64 + payload.len() as u64 > total as u64 {
                return Err(DecodeError::Invalid("fragment beyond the frame's end"));
            }
            Message::Data {
                index,
                offset,
                total,
                tag,
                payload,
            }
        }
        2 => {
            let receiver = r.u32()?;
            let ranges = r.ranges(MAX_NAK_RANGES, |r| {
                let (a, b) = (r.u32()?, r.u32()?);
                Ok(((a, b), a < b))
            })?;
            r.end()?;
            Message::Nak { receiver, ranges }
        }
        8 => {
            let receiver = r.u32()?;
            let ranges = r.ranges(MAX_REPAIR_RANGES, |r| {
                let (index, start, end) = (r.u32()?, r.u32()?, r.u32()?);
                Ok((FrameRange { index, start, end }, start < end))
            })?;
            r.end()?;
            Message::Repair { receiver, ranges }
        }
        3 => Message::Join(status(&mut r)?),
        4 => Message::Status(status(&mut r)?),
        5 => Message::Done(status(&mut r)?),
        6 => {
            let (pass, total) = (r.u32()?, r.u32()?);
            r.end()?;
            Message::Pass { pass, total }
        }
        7 => {
            r.end()?;
            Message::End
        }
        k => return Err(DecodeError::Kind(k)),
    };
    Ok(Datagram { session, message })
}

/// The tag DATA datagrams carry for chunk `id`.
pub fn tag(id: &ChunkId) -> u32 {
    u32::from_be_bytes(id.0[..4].try_into().expect("4 bytes"))
}

/// Payload bytes per DATA datagram of at most `datagram` bytes.
pub fn payload_size(datagram: usize) -> usize {
    datagram.max(MIN_DATAGRAM) - DATA_HEADER
}

/// One entry of the chunk list: a distinct chunk, its compressed size, where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedChunk {
    pub id: ChunkId,
    pub len: u64,
    pub compressed: u32,
    pub offsets: Vec<u64>,
}

/// The manifest's distinct chunks in order of first appearance, with every offset of each.
pub fn chunk_list(manifest: &Manifest) -> Vec<ListedChunk> {
    let mut out: Vec<ListedChunk> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for e in &manifest.extents {
        if let ExtentKind::Chunk { id, compressed } = e.kind {
            match seen.get(&id) {
                Some(&i) => {
                    let c: &mut ListedChunk = &mut out[i];
                    c.offsets.push(e.offset);
                }
                None => {
                    seen.insert(id, out.len());
                    out.push(ListedChunk {
                        id,
                        len: e.len,
                        compressed,
                        offsets: vec![e.offset],
                    });
                }
            }
        }
    }
    out
}

/// Sorted indexes as half-open ranges.
pub fn ranges_of(indexes: impl IntoIterator<Item = u32>) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for i in indexes {
        match out.last_mut() {
            Some((_, end)) if *end == i => *end += 1,
            _ => out.push((i, i + 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message<'static>> {
        let s = Status {
            receiver: 7,
            held: 3,
            total: 9,
        };
        vec![
            Message::Data {
                index: 4,
                offset: 1340,
                total: 5000,
                tag: tag(&ChunkId::of(b"x")),
                payload: b"hello",
            },
            Message::Nak {
                receiver: 9,
                ranges: vec![(0, 3), (10, 11)],
            },
            Message::Repair {
                receiver: 9,
                ranges: vec![
                    FrameRange {
                        index: 4,
                        start: 1344,
                        end: 2688,
                    },
                    FrameRange {
                        index: 7,
                        start: 0,
                        end: 1,
                    },
                ],
            },
            Message::Join(s),
            Message::Status(s),
            Message::Done(Status { held: 9, ..s }),
            Message::Pass { pass: 2, total: 9 },
            Message::End,
        ]
    }

    #[test]
    fn every_kind_round_trips_and_every_truncation_is_refused() {
        let mut buf = Vec::new();
        for m in samples() {
            encode(0xdead_beef, &m, &mut buf);
            let d = decode(&buf).unwrap();
            assert_eq!(d.session, 0xdead_beef);
            assert_eq!(d.message, m);
            for cut in 0..buf.len() {
                // a DATA datagram cut inside its payload is a shorter fragment, still valid
                if matches!(m, Message::Data { .. }) && cut > DATA_HEADER {
                    continue;
                }
                assert!(decode(&buf[..cut]).is_err(), "{m:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn a_full_data_datagram_fits_the_configured_size() {
        let payload = vec![1u8; payload_size(DEFAULT_DATAGRAM)];
        let m = Message::Data {
            index: 0,
            offset: 0,
            total: payload.len() as u32,
            tag: tag(&ChunkId::of(b"")),
            payload: &payload,
        };
        let mut buf = Vec::new();
        encode(1, &m, &mut buf);
        assert_eq!(buf.len(), DEFAULT_DATAGRAM);
    }

    #[test]
    fn inconsistent_datagrams_are_refused() {
        let mut buf = Vec::new();
        let bad_fragment = Message::Data {
            index: 0,
            offset: 10,
            total: 12,
            tag: tag(&ChunkId::of(b"")),
            payload: b"abc",
        };
        encode(1, &bad_fragment, &mut buf);
        assert!(decode(&buf).is_err());
        encode(
            1,
            &Message::Nak {
                receiver: 1,
                ranges: vec![(5, 5)],
            },
            &mut buf,
        );
        assert!(decode(&buf).is_err());
        encode(1, &Message::End, &mut buf);
        buf.push(0);
        assert!(decode(&buf).is_err());
        // a sender of release 1 (the 32-byte id in DATA) or of a later one: refused by version
        for v in [1, 3] {
            buf[2] = v;
            assert_eq!(decode(&buf), Err(DecodeError::Version(v)));
        }
    }

    #[test]
    fn random_and_mutated_datagrams_never_panic() {
        // xorshift: deterministic, no dependency
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut buf = Vec::new();
        let encoded: Vec<Vec<u8>> = samples()
            .iter()
            .map(|m| {
                encode(rnd() as u32, m, &mut buf);
                buf.clone()
            })
            .collect();
        let mut accepted = 0;
        for round in 0..200_000 {
            let mut d = if round % 4 == 0 {
                let len = (rnd() % 200) as usize;
                let mut d: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
                if len >= 4 && rnd() % 2 == 0 {
                    d[..3].copy_from_slice(b"BM\x02");
                }
                d
            } else {
                encoded[(rnd() % encoded.len() as u64) as usize].clone()
            };
            for _ in 0..(rnd() % 4) {
                if d.is_empty() {
                    break;
                }
                let i = (rnd() % d.len() as u64) as usize;
                match rnd() % 3 {
                    0 => d[i] = rnd() as u8,
                    1 => d.truncate(i),
                    _ => d.insert(i, rnd() as u8),
                }
            }
            if decode(&d).is_ok() {
                accepted += 1;
            }
        }
        assert!(accepted > 0);
    }

    #[test]
    fn ranges_merge_consecutive_indexes() {
        assert_eq!(
            ranges_of([1, 2, 3, 7, 9, 10]),
            vec![(1, 4), (7, 8), (9, 11)]
        );
        assert!(ranges_of([]).is_empty());
    }
}
