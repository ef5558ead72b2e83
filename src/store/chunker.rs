//! Splits a byte stream into zero runs and content-defined chunks.
//!
//! Two rules, both decided only by the bytes and their absolute offsets, so the same input always
//! gives the same pieces:
//! 1. **Zero runs.** Starting at an offset that is a multiple of [`ZERO_BLOCK`], a run of at least
//!    [`ChunkerParams::zero_min`] zero bytes (whole zero blocks, plus a zero tail at end of input)
//!    becomes a [`Piece::Zero`]. Free space in a disk image costs nothing to store or send.
//! 2. **Chunks.** Between zero runs, FastCDC (v2020, normalisation level 1) cuts chunks of
//!    `min..=max` bytes; a chunk never crosses the start of a zero run. The CDC hash restarts at
//!    every chunk start, so a cut depends only on the bytes since the previous cut.
//!
//! The chunker is generic over [`Read`] and does no other I/O.

use std::io::{self, Read};

use fastcdc::v2020::{self, Normalization};

/// Zero runs are found on blocks of this size, aligned to absolute offsets (disk sector/page size).
pub const ZERO_BLOCK: usize = 4096;

/// Chunk size limits, recorded in every manifest (they decide the chunk ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
    /// Shortest zero run recorded as a zero extent instead of chunk bytes.
    pub zero_min: u32,
}

impl Default for ChunkerParams {
    /// 8/32/128 KiB: the largest chunks whose v2 delta in bench/store stays within 1.1x of the
    /// zstd size of the changed regions (bench/README.md has the measurements behind it).
    fn default() -> Self {
        ChunkerParams {
            min: 8 * 1024,
            avg: 32 * 1024,
            max: 128 * 1024,
            zero_min: 64 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Checks the limits FastCDC accepts and the ones this chunker relies on.
    pub fn validate(&self) -> Result<(), String> {
        let ok_range = |v: u32, lo: usize, hi: usize| (lo..=hi).contains(&(v as usize));
        if !ok_range(self.min, v2020::MINIMUM_MIN, v2020::MINIMUM_MAX)
            || !ok_range(self.avg, v2020::AVERAGE_MIN, v2020::AVERAGE_MAX)
            || !ok_range(self.max, v2020::MAXIMUM_MIN, v2020::MAXIMUM_MAX)
        {
            return Err(format!(
                "chunk sizes {}:{}:{} out of range (min 64..1M, avg 256..4M, max 1K..16M)",
                self.min, self.avg, self.max
            ));
        }
        if !(self.min < self.avg && self.avg < self.max) {
            return Err("chunk sizes must satisfy min < avg < max".into());
        }
        if !self.avg.is_power_of_two() || !self.min.is_multiple_of(2) || !self.max.is_multiple_of(2)
        {
            return Err("chunk avg must be a power of two and min/max even".into());
        }
        if !(self.zero_min as usize).is_multiple_of(ZERO_BLOCK) || self.zero_min == 0 {
            return Err(format!(
                "zero_min must be a positive multiple of {ZERO_BLOCK}"
            ));
        }
        Ok(())
    }

    /// Parses `MIN:AVG:MAX` with optional K/M suffixes, e.g. `8K:32K:128K`.
    pub fn parse_sizes(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 3 {
            return Err(format!(
                "expected MIN:AVG:MAX (e.g. 8K:32K:128K), got {s:?}"
            ));
        }
        let mut v = [0u32; 3];
        for (slot, p) in v.iter_mut().zip(&parts) {
            *slot = parse_size(p).ok_or_else(|| format!("bad size {p:?} in {s:?}"))?;
        }
        let params = ChunkerParams {
            min: v[0],
            avg: v[1],
            max: v[2],
            ..ChunkerParams::default()
        };
        params.validate()?;
        Ok(params)
    }
}

fn parse_size(s: &str) -> Option<u32> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1024),
        'm' | 'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<u32>().ok()?.checked_mul(mult)
}

/// One piece of the input, in order; offsets are absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Zero { offset: u64, len: u64 },
    Data { offset: u64, bytes: Vec<u8> },
}

/// True if every byte is zero; exits early on data, scans zero blocks branch-free.
pub fn is_zero(b: &[u8]) -> bool {
    if b.iter().take(16).any(|&x| x != 0) {
        return false;
    }
    b.chunks(512)
        .all(|c| c.iter().fold(0u8, |acc, &x| acc | x) == 0)
}

const READ_SIZE: usize = 4 << 20;

/// A zero run comes out in pieces of about this size (at most one read buffer more; the
/// manifest merges them), so a caller sees progress, and can stop, inside a run of zeros many
/// gigabytes long.
pub const ZERO_PIECE_MAX: u64 = 64 << 20;

pub struct Chunker<R> {
    src: R,
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    buf: Vec<u8>,
    /// Position in `buf` of the next unconsumed byte.
    pos: usize,
    /// End of the valid bytes in `buf`.
    end: usize,
    /// The last piece was a zero run cut at [`ZERO_PIECE_MAX`]: zeros here continue it.
    zero_run_open: bool,
    /// Absolute offset of `buf[pos]`.
    offset: u64,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    pub fn new(src: R, params: ChunkerParams) -> Self {
        let (mask_s, mask_l) = v2020::select_masks(params.avg as usize, Normalization::Level1);
        Chunker {
            src,
            params,
            mask_s,
            mask_l,
            buf: vec![0; READ_SIZE + 2 * (params.max + params.zero_min) as usize],
            pos: 0,
            end: 0,
            zero_run_open: false,
            offset: 0,
            eof: false,
        }
    }

    fn available(&self) -> usize {
        self.end - self.pos
    }

    /// Makes at least `want` bytes available unless the input ends first. Returns as soon as
    /// they are there, so a slow pipe is processed as it arrives.
    fn fill(&mut self, want: usize) -> io::Result<()> {
        while self.available() < want && !self.eof {
            if self.buf.len() - self.end < want {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            }
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Length of the zero run at `buf[at..]`: whole zero blocks, plus a zero partial block only
    /// at end of input. Looks at buffered bytes only.
    fn zero_run_at(&self, at: usize) -> usize {
        let data = &self.buf[at..self.end];
        let mut len = 0;
        while len < data.len() {
            let end = (len + ZERO_BLOCK).min(data.len());
            if (end - len < ZERO_BLOCK && !self.eof) || !is_zero(&data[len..end]) {
                break;
            }
            len = end;
        }
        len
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        self.offset += n as u64;
    }

    /// Next piece, or `None` at end of input.
    ///
    /// Invariant that makes the result independent of read sizes: before any decision at least
    /// `max + zero_min` bytes are buffered (or the input has ended), which covers every byte a
    /// decision looks at.
    pub fn next_piece(&mut self) -> io::Result<Option<Piece>> {
        let max = self.params.max as usize;
        let zero_min = self.params.zero_min as usize;
        let lookahead = max + zero_min;
        self.fill(lookahead)?;
        if self.available() == 0 {
            return Ok(None);
        }
        let block = ZERO_BLOCK as u64;
        // Rule 1: a zero run at an aligned position, extended across refills.
        let continuing = std::mem::take(&mut self.zero_run_open);
        let first = if self.offset.is_multiple_of(block) {
            self.zero_run_at(self.pos)
        } else {
            0
        };
        if first > 0 && (continuing || first >= zero_min) {
            let start = self.offset;
            loop {
                let run = self.zero_run_at(self.pos);
                self.consume(run);
                // Stopped at a non-zero block, or at the end of input: the run is complete.
                if self.eof || self.available() >= ZERO_BLOCK {
                    break;
                }
                // Fewer than a block left in the buffer: the run may go on.
                if self.offset - start >= ZERO_PIECE_MAX {
                    self.zero_run_open = true;
                    break;
                }
                self.fill(lookahead)?;
                if self.available() == 0 {
                    break;
                }
            }
            return Ok(Some(Piece::Zero {
                offset: start,
                len: self.offset - start,
            }));
        }
        // Rule 2: a chunk that stops before the next qualifying zero run.
        let window = self.available().min(max);
        let mut limit = window;
        let mut at = (block - self.offset % block) as usize;
        while at < window {
            if self.zero_run_at(self.pos + at) >= zero_min {
                limit = at;
                break;
            }
            at += ZERO_BLOCK;
        }
        let region = &self.buf[self.pos..self.pos + limit];
        let (_, cut) = v2020::cut(
            region,
            self.params.min as usize,
            self.params.avg as usize,
            max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        let cut = cut.clamp(1, limit);
        let piece = Piece::Data {
            offset: self.offset,
            bytes: region[..cut].to_vec(),
        };
        self.consume(cut);
        Ok(Some(piece))
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = io::Result<Piece>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_piece().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::id::ChunkId;

    use crate::testkit::random_bytes as pseudo_random;

    /// Random data, a 200 000-byte zero run at an unaligned offset, more data, a short zero
    /// gap (stays inside a chunk), data, and a zero tail.
    fn golden_input() -> Vec<u8> {
        let mut v = pseudo_random(700_001, 1);
        v.extend(std::iter::repeat_n(0u8, 200_000));
        v.extend(pseudo_random(300_000, 2));
        v.extend(std::iter::repeat_n(0u8, 8192));
        v.extend(pseudo_random(100_000, 3));
        v.extend(std::iter::repeat_n(0u8, 70_000));
        v
    }

    fn pieces(data: &[u8], reader: impl Read) -> Vec<(u64, u64, Option<ChunkId>)> {
        let out: Vec<_> = Chunker::new(reader, ChunkerParams::default())
            .map(|p| match p.unwrap() {
                Piece::Zero { offset, len } => (offset, len, None),
                Piece::Data { offset, bytes } => {
                    assert_eq!(&data[offset as usize..][..bytes.len()], &bytes[..]);
                    (offset, bytes.len() as u64, Some(ChunkId::of(&bytes)))
                }
            })
            .collect();
        // Pieces tile the input exactly.
        let mut end = 0;
        for (off, len, _) in &out {
            assert_eq!(*off, end);
            assert!(*len > 0);
            end += len;
        }
        assert_eq!(end, data.len() as u64);
        out
    }

    #[test]
    fn golden_boundaries_and_ids() {
        let data = golden_input();
        let got = pieces(&data, &data[..]);
        let got: Vec<(u64, u64, String)> = got
            .into_iter()
            .map(|(o, l, id)| {
                (
                    o,
                    l,
                    id.map_or("zero".into(), |i| i.to_hex()[..16].to_string()),
                )
            })
            .collect();
        let expected: Vec<(u64, u64, &str)> = GOLDEN.to_vec();
        let expected: Vec<(u64, u64, String)> = expected
            .into_iter()
            .map(|(o, l, s)| (o, l, s.to_string()))
            .collect();
        assert_eq!(
            got, expected,
            "chunk boundaries or ids changed: every stored image would re-chunk"
        );
    }

    /// Pinned with the default parameters (8K:32K:128K, zero runs from 64 KiB); first 16 hex
    /// digits of each chunk id.
    const GOLDEN: &[(u64, u64, &str)] = &[
        (0, 28128, "4151b010f62237f5"),
        (28128, 82036, "33c7cc1bec13db25"),
        (110164, 41896, "2b3a46a353d3e60a"),
        (152060, 28543, "316bdcbd3ae0d339"),
        (180603, 84194, "0f7e0465630a04ae"),
        (264797, 13958, "143014cf1886eb9f"),
        (278755, 38180, "797e829b4b6b239b"),
        (316935, 60483, "4425ffde7b6b9bc3"),
        (377418, 11346, "5bec080bcb2c2d99"),
        (388764, 40219, "3beb82c4153127e9"),
        (428983, 36535, "652efb68ec8c638a"),
        (465518, 48151, "21de8f1ffc9258e7"),
        (513669, 44182, "62e85ffeb4869d49"),
        (557851, 27009, "60ff3401e09a7385"),
        (584860, 38128, "d9b06d8741d6ce1d"),
        (622988, 75754, "23e41bc007de6131"),
        (698742, 1674, "4bcea0d5fac270af"),
        (700416, 196608, "zero"),
        (897024, 47567, "7e7b68e72bf1e90b"),
        (944591, 14463, "09441defdc35f482"),
        (959054, 49155, "d09e775025febc98"),
        (1008209, 32933, "68594f46f717e0ce"),
        (1041142, 36692, "b81c0324046ec594"),
        (1077834, 9967, "b4a963f82fe2da1c"),
        (1087801, 75622, "976bf940f290c563"),
        (1163423, 28884, "551dbe0b908f75b9"),
        (1192307, 20871, "ba00d0b77510cf9a"),
        (1213178, 69708, "fea9a453f321a941"),
        (1282886, 12050, "7e7110bb366091a4"),
        (1294936, 15784, "b36ec37e53ddbb0a"),
        (1310720, 67473, "zero"),
    ];

    /// A reader that returns short reads of varying sizes.
    struct Trickle<'a> {
        data: &'a [u8],
        pos: usize,
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.step = (self.step * 7 + 13) % 9973 + 1;
            let n = self.step.min(buf.len()).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn read_sizes_do_not_change_pieces() {
        let mut data = golden_input();
        // A zero run longer than the read buffer, crossing many refills.
        data.extend(std::iter::repeat_n(0u8, 9 << 20));
        data.extend(pseudo_random(5000, 4));
        let whole = pieces(&data, &data[..]);
        let trickled = pieces(
            &data,
            Trickle {
                data: &data,
                pos: 0,
                step: 1,
            },
        );
        assert_eq!(whole, trickled);
        assert!(whole.iter().any(|p| p.2.is_none() && p.1 > 9 << 20));
    }

    /// A zero run longer than ZERO_PIECE_MAX comes out in pieces that add up to the run, and
    /// what follows is cut exactly as after a short run.
    #[test]
    fn long_zero_runs_come_in_bounded_pieces() {
        let tail = pseudo_random(300_000, 5);
        let run = 3 * ZERO_PIECE_MAX + 12_288;
        let long = io::repeat(0).take(run).chain(&tail[..]);
        let got: Vec<Piece> = Chunker::new(long, ChunkerParams::default())
            .map(|p| p.unwrap())
            .collect();
        let zeros: Vec<u64> = got
            .iter()
            .map_while(|p| match p {
                Piece::Zero { len, .. } => Some(*len),
                Piece::Data { .. } => None,
            })
            .collect();
        let bound = ZERO_PIECE_MAX + READ_SIZE as u64 + 2 * 192 * 1024;
        assert!(
            zeros.len() > 1 && zeros.iter().all(|&l| l <= bound),
            "{zeros:?}"
        );
        assert_eq!(zeros.iter().sum::<u64>(), run);
        let short = io::repeat(0).take(65_536).chain(&tail[..]);
        let expected: Vec<Vec<u8>> = Chunker::new(short, ChunkerParams::default())
            .filter_map(|p| match p.unwrap() {
                Piece::Data { bytes, .. } => Some(bytes),
                Piece::Zero { .. } => None,
            })
            .collect();
        let data: Vec<Vec<u8>> = got
            .into_iter()
            .filter_map(|p| match p {
                Piece::Data { bytes, .. } => Some(bytes),
                Piece::Zero { .. } => None,
            })
            .collect();
        assert_eq!(data, expected);
    }

    #[test]
    fn chunk_sizes_stay_within_limits() {
        let data = pseudo_random(8 << 20, 9);
        let p = ChunkerParams::default();
        let got = pieces(&data, &data[..]);
        let (last, body) = got.split_last().unwrap();
        for (_, len, _) in body {
            assert!(
                (p.min as u64..=p.max as u64).contains(len),
                "chunk of {len} bytes"
            );
        }
        assert!(last.1 <= p.max as u64);
        let avg = data.len() as u64 / got.len() as u64;
        assert!(
            (p.avg as u64 / 2..p.avg as u64 * 2).contains(&avg),
            "average {avg}"
        );
    }

    #[test]
    fn edge_inputs() {
        for data in [
            vec![],
            vec![7u8],
            vec![0u8],
            vec![0u8; 4097],
            vec![0u8; 70_000],
        ] {
            let got = pieces(&data, &data[..]);
            if data.len() >= 65_536 {
                assert_eq!(
                    got,
                    vec![(0, data.len() as u64, None)],
                    "long zero input is one run"
                );
            }
        }
    }

    #[test]
    fn parse_sizes() {
        let p = ChunkerParams::parse_sizes("8K:32K:128K").unwrap();
        assert_eq!(p, ChunkerParams::default());
        assert!(ChunkerParams::parse_sizes("64K:16K:256K").is_err());
        assert!(ChunkerParams::parse_sizes("16K:60K:256K").is_err());
        assert!(ChunkerParams::parse_sizes("16K").is_err());
    }
}
