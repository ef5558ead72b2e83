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
    /// 16/64/256 KiB: see bench/README.md for the measurements behind the choice.
    fn default() -> Self {
        ChunkerParams {
            min: 16 * 1024,
            avg: 64 * 1024,
            max: 256 * 1024,
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
        if !self.avg.is_power_of_two() || self.min % 2 != 0 || self.max % 2 != 0 {
            return Err("chunk avg must be a power of two and min/max even".into());
        }
        if self.zero_min as usize % ZERO_BLOCK != 0 || self.zero_min == 0 {
            return Err(format!(
                "zero_min must be a positive multiple of {ZERO_BLOCK}"
            ));
        }
        Ok(())
    }

    /// Parses `MIN:AVG:MAX` with optional K/M suffixes, e.g. `16K:64K:256K`.
    pub fn parse_sizes(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 3 {
            return Err(format!(
                "expected MIN:AVG:MAX (e.g. 16K:64K:256K), got {s:?}"
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

pub struct Chunker<R> {
    src: R,
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    buf: Vec<u8>,
    /// Position in `buf` of the next unconsumed byte.
    pos: usize,
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
            buf: Vec::with_capacity(READ_SIZE + 2 * params.max as usize),
            pos: 0,
            offset: 0,
            eof: false,
        }
    }

    /// Total bytes consumed so far (the offset of the next piece).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn available(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Makes at least `want` bytes available unless the input ends first.
    fn fill(&mut self, want: usize) -> io::Result<()> {
        while self.available() < want && !self.eof {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let start = self.buf.len();
            let target = start + READ_SIZE.max(want - self.available());
            self.buf.resize(target, 0);
            let mut filled = start;
            while filled < target {
                match self.src.read(&mut self.buf[filled..target]) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.buf.truncate(filled);
                        return Err(e);
                    }
                }
            }
            self.buf.truncate(filled);
        }
        Ok(())
    }

    /// Length of the zero run at `buf[at..]`: whole zero blocks, plus a zero partial block only
    /// at end of input. Looks at buffered bytes only.
    fn zero_run_at(&self, at: usize) -> usize {
        let data = &self.buf[at..];
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
        if self.offset % block == 0 && self.zero_run_at(self.pos) >= zero_min {
            let start = self.offset;
            loop {
                let run = self.zero_run_at(self.pos);
                self.consume(run);
                // Stopped at a non-zero block, or at the end of input: the run is complete.
                if self.eof || self.available() >= ZERO_BLOCK {
                    break;
                }
                // Fewer than a block left in the buffer: it may continue.
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
