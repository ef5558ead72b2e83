//! The sending end: [`Carousel`] (pure: which chunks each pass sends), [`RateControl`] (pure:
//! the rate under NAK pressure) and [`send`] (the session on a socket).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::proto::{self, ListedChunk, Message};
use super::{is_timeout, Endpoint, MulticastError, Rng};
use crate::rate::Bucket;
use crate::store::manifest::Manifest;
use crate::store::Store;

/// What a pass sends of one chunk: all of it, or the fragments that cover some byte ranges of
/// its frame (sorted, disjoint, merged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    Whole,
    Bytes(Vec<(u32, u32)>),
}

impl Need {
    /// Adds `other`; returns whether anything was added.
    fn merge(&mut self, other: Need) -> bool {
        match (&mut *self, other) {
            (Need::Whole, _) => false,
            (_, Need::Whole) => {
                *self = Need::Whole;
                true
            }
            (Need::Bytes(mine), Need::Bytes(more)) => {
                let before = mine.clone();
                mine.extend(more);
                mine.sort_unstable();
                let mut merged: Vec<(u32, u32)> = Vec::with_capacity(mine.len());
                for &(a, b) in mine.iter() {
                    match merged.last_mut() {
                        Some((_, end)) if a <= *end => *end = (*end).max(b),
                        _ => merged.push((a, b)),
                    }
                }
                *mine = merged;
                *mine != before
            }
        }
    }

    /// Whether the fragment at `offset..offset + len` is to be sent.
    pub fn wants(&self, offset: u32, len: u32) -> bool {
        match self {
            Need::Whole => true,
            Need::Bytes(r) => r.iter().any(|&(a, b)| a < offset + len && offset < b),
        }
    }
}

/// Which chunks each pass sends: the first pass all of them, each later pass those NAKed (whole)
/// or REPAIRed (some fragments) since the previous pass began.
#[derive(Debug)]
pub struct Carousel {
    total: u32,
    queue: Vec<u32>,
    pos: usize,
    /// What this pass still has to send of each chunk in `queue[pos..]`.
    coming: HashMap<u32, Need>,
    pending: BTreeMap<u32, Need>,
    pub pass: u32,
}

impl Carousel {
    pub fn new(total: u32) -> Carousel {
        Carousel {
            total,
            queue: (0..total).collect(),
            pos: 0,
            coming: (0..total).map(|i| (i, Need::Whole)).collect(),
            pending: BTreeMap::new(),
            pass: 1,
        }
    }

    /// Records what a receiver asked for of chunk `index` (out of range: ignored); returns
    /// whether it asked for something not asked for already. What is still to come in this
    /// pass is not queued again: a receiver repeats its request until the bytes arrive, and
    /// the pass carrying them answers the repeats too (only news is loss). A chunk still to
    /// come for other byte ranges gets these added.
    fn ask(&mut self, index: u32, need: Need) -> bool {
        if index >= self.total {
            return false;
        }
        if let Some(coming) = self.coming.get_mut(&index) {
            return coming.merge(need);
        }
        match self.pending.entry(index) {
            std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().merge(need),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(need);
                true
            }
        }
    }

    /// A NAK: whole chunks `a..b` of each range.
    pub fn nak(&mut self, ranges: &[(u32, u32)]) -> usize {
        let mut news = 0;
        for &(a, b) in ranges {
            for i in a.min(self.total)..b.min(self.total) {
                news += usize::from(self.ask(i, Need::Whole));
            }
        }
        news
    }

    /// A REPAIR: byte ranges of frames. Both return how many of the request's chunks (NAK) or
    /// ranges (REPAIR) were news.
    pub fn repair(&mut self, ranges: &[proto::FrameRange]) -> usize {
        let mut news = 0;
        for r in ranges {
            news += usize::from(self.ask(r.index, Need::Bytes(vec![(r.start, r.end)])));
        }
        news
    }

    /// The next chunk to send in this pass and what of it, or `None` at the pass's end.
    pub fn next_chunk(&mut self) -> Option<(u32, Need)> {
        let i = *self.queue.get(self.pos)?;
        self.pos += 1;
        let need = self.coming.remove(&i).unwrap_or(Need::Whole);
        Some((i, need))
    }

    /// Position in the current pass: (sent, in the pass).
    pub fn position(&self) -> (usize, usize) {
        (self.pos, self.queue.len())
    }

    /// Starts the next pass if anything was asked for; `false`: nothing to send.
    pub fn next_pass(&mut self) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let pending = std::mem::take(&mut self.pending);
        self.queue = pending.keys().copied().collect();
        self.coming = pending.into_iter().collect();
        self.pos = 0;
        self.pass += 1;
        true
    }
}

/// The sending rate: a configured maximum, cut by a quarter at most every 0.5 s while NAK
/// pressure lasts, raised by a twentieth of the maximum every 0.1 s without it, never below the
/// floor. Pressure means congestion: NAKs from more than half of the joined receivers within
/// the last second. Loss at a few receivers (a bad cable, a busy PC) does not slow the room
/// down: those receivers get their chunks in later passes, or over HTTP.
#[derive(Debug, Clone)]
pub struct RateControl {
    pub max: u64,
    pub floor: u64,
    pub rate: u64,
    last_cut: f64,
    last_change: f64,
    last_nak: f64,
    /// When each receiver last NAKed.
    nakers: std::collections::HashMap<u32, f64>,
}

impl RateControl {
    const CUT_EVERY: f64 = 0.5;
    const RAISE_EVERY: f64 = 0.1;

    pub fn new(max: u64, floor: u64) -> RateControl {
        let floor = floor.min(max).max(1);
        RateControl {
            max,
            floor,
            rate: max,
            last_cut: f64::NEG_INFINITY,
            last_change: 0.0,
            last_nak: f64::NEG_INFINITY,
            nakers: std::collections::HashMap::new(),
        }
    }

    /// A NAK from `receiver` arrived at `now`, with `joined` receivers in the session.
    pub fn nak(&mut self, now: f64, receiver: u32, joined: usize) {
        self.nakers.insert(receiver, now);
        self.nakers.retain(|_, t| now - *t <= 1.0);
        if self.nakers.len() * 2 <= joined.max(1) {
            return; // a few lossy receivers: no congestion
        }
        self.last_nak = now;
        if now - self.last_cut >= Self::CUT_EVERY {
            self.last_cut = now;
            self.last_change = now;
            self.rate = (self.rate - self.rate / 4).max(self.floor);
        }
    }

    /// The rate at `now` (additive recovery since the last NAK).
    pub fn tick(&mut self, now: f64) -> u64 {
        if now - self.last_nak >= Self::RAISE_EVERY && now - self.last_change >= Self::RAISE_EVERY {
            self.last_change = now;
            self.rate = (self.rate + (self.max / 20).max(1)).min(self.max);
        }
        self.rate
    }
}

/// How a session runs.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Start when this many receivers joined...
    pub min_receivers: usize,
    /// ...or after this long, whichever comes first.
    pub wait: Duration,
    /// Bytes per second (datagrams as sent).
    pub max_rate: u64,
    pub min_rate: u64,
    /// Whole session limit; END is sent then, receivers finish over HTTP.
    pub timeout: Duration,
    /// Largest datagram (UDP payload).
    pub datagram: usize,
    /// A receiver silent this long is no longer waited for.
    pub receiver_timeout: Duration,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            min_receivers: 1,
            wait: Duration::from_secs(60),
            max_rate: 100_000_000 / 8,
            min_rate: 1_000_000 / 8,
            timeout: Duration::from_secs(3600),
            datagram: proto::DEFAULT_DATAGRAM,
            receiver_timeout: Duration::from_secs(30),
        }
    }
}

/// What a session did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SendReport {
    pub session: String,
    pub chunks: u32,
    /// Compressed bytes of the distinct chunks: what one copy of the image weighs.
    pub compressed: u64,
    pub datagrams: u64,
    /// Every byte the sender sent (UDP payloads: DATA, PASS, END).
    pub bytes: u64,
    pub passes: u32,
    pub naks: u64,
    pub receivers_joined: usize,
    pub receivers_done: usize,
    /// `done` (every joined receiver said so) or `timeout`.
    pub ended: String,
    pub seconds: f64,
}

struct Peers {
    last_heard: HashMap<u32, f64>,
    done: HashSet<u32>,
}

/// Runs a session for `manifest` (chunks read from `store`); `progress(line)` gets a line when
/// the session starts, at each tenth of the first pass, and at the end of each pass.
pub fn send(
    store: &Store,
    manifest: &Manifest,
    endpoint: &Endpoint,
    opts: &SendOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<SendReport, MulticastError> {
    let started = Instant::now();
    let now = || started.elapsed().as_secs_f64();
    let list: Vec<ListedChunk> = proto::chunk_list(manifest);
    let session = (Rng::from_entropy().next_u64() as u32).max(1);
    let socket = endpoint.socket(false, Duration::from_millis(5))?;
    let dest = endpoint.destination();
    let mut report = SendReport {
        session: format!("{session:08x}"),
        chunks: list.len() as u32,
        compressed: list.iter().map(|c| u64::from(c.compressed)).sum(),
        ..Default::default()
    };
    let mut peers = Peers {
        last_heard: HashMap::new(),
        done: HashSet::new(),
    };
    let mut carousel = Carousel::new(list.len() as u32);
    let mut rate = RateControl::new(opts.max_rate, opts.min_rate);
    let mut bucket = Bucket::new(opts.max_rate, (opts.max_rate / 50).max(64 << 10), 0.0);
    let mut out = Vec::with_capacity(opts.datagram);
    let mut inbuf = vec![0u8; 65536];

    let transmit = |m: &Message, report: &mut SendReport, out: &mut Vec<u8>| {
        proto::encode(session, m, out);
        match socket.send_to(out, dest) {
            Ok(_) => {
                report.datagrams += 1;
                report.bytes += out.len() as u64;
                Ok(())
            }
            Err(cause) => Err(MulticastError::Socket {
                what: "sending",
                cause,
            }),
        }
    };
    // Reads what receivers sent, without waiting beyond the socket's timeout.
    let drain = |peers: &mut Peers,
                 carousel: &mut Carousel,
                 rate: &mut RateControl,
                 report: &mut SendReport,
                 inbuf: &mut [u8],
                 blocking: bool|
     -> Result<(), MulticastError> {
        loop {
            // between two sends, only what already arrived: a blocking read here would wait
            // out the socket's timeout after every datagram and cap the rate at a few Mbit/s
            let got = if blocking {
                socket.recv(inbuf)
            } else {
                super::recv_now(&socket, inbuf)
            };
            let n = match got {
                Ok(n) => n,
                Err(e) if is_timeout(&e) => return Ok(()),
                Err(cause) => {
                    return Err(MulticastError::Socket {
                        what: "receiving",
                        cause,
                    })
                }
            };
            let t = now();
            if let Ok(d) = proto::decode(&inbuf[..n]) {
                if d.session == session || d.session == 0 {
                    match d.message {
                        Message::Nak { receiver, .. } | Message::Repair { receiver, .. }
                            if d.session == session =>
                        {
                            report.naks += 1;
                            peers.last_heard.insert(receiver, t);
                            peers.done.remove(&receiver);
                            let news = match &d.message {
                                Message::Nak { ranges, .. } => carousel.nak(ranges),
                                Message::Repair { ranges, .. } => carousel.repair(ranges),
                                _ => 0,
                            };
                            // only new losses count as pressure: repeats of a NAK the next
                            // pass answers anyway would hold the rate at its floor
                            if news > 0 {
                                // the majority is of the receivers still working: once most
                                // are done, the rest set the pace
                                let working = peers
                                    .last_heard
                                    .keys()
                                    .filter(|r| !peers.done.contains(r))
                                    .count();
                                rate.nak(t, receiver, working);
                            }
                        }
                        Message::Join(s) | Message::Status(s) => {
                            peers.last_heard.insert(s.receiver, t);
                            if s.held < s.total {
                                peers.done.remove(&s.receiver);
                            }
                        }
                        Message::Done(s) => {
                            peers.last_heard.insert(s.receiver, t);
                            peers.done.insert(s.receiver);
                        }
                        _ => {}
                    }
                }
            }
            if !blocking {
                // one datagram at a time between sends keeps the pacing steady
                return Ok(());
            }
        }
    };

    // Waiting for receivers: PASS 0 tells them the session id.
    progress(&format!(
        "session {session:08x}: {} chunks, {} bytes compressed; waiting for {} receivers (up to {} s)",
        report.chunks,
        report.compressed,
        opts.min_receivers,
        opts.wait.as_secs()
    ));
    // PASS `pass` (at most every 0.2 s: it tells late receivers the session and where the
    // carousel is), then what receivers sent until the socket's read timeout
    let announce_and_listen = |pass: u32,
                               last_pass_msg: &mut f64,
                               peers: &mut Peers,
                               carousel: &mut Carousel,
                               rate: &mut RateControl,
                               report: &mut SendReport,
                               out: &mut Vec<u8>,
                               inbuf: &mut [u8]|
     -> Result<(), MulticastError> {
        if now() - *last_pass_msg >= 0.2 {
            *last_pass_msg = now();
            let total = report.chunks;
            transmit(&Message::Pass { pass, total }, report, out)?;
        }
        drain(peers, carousel, rate, report, inbuf, true)
    };
    let mut last_pass_msg = f64::NEG_INFINITY;
    while peers.last_heard.len() < opts.min_receivers && now() < opts.wait.as_secs_f64() {
        announce_and_listen(
            0,
            &mut last_pass_msg,
            &mut peers,
            &mut carousel,
            &mut rate,
            &mut report,
            &mut out,
            &mut inbuf,
        )?;
    }
    progress(&format!(
        "started with {} receivers",
        peers.last_heard.len()
    ));

    let payload = proto::payload_size(opts.datagram);
    let mut tenth = 0;
    let ended = loop {
        if now() > opts.timeout.as_secs_f64() {
            break "timeout";
        }
        if let Some((index, need)) = carousel.next_chunk() {
            let c = &list[index as usize];
            let frame = store.read_compressed(&c.id)?;
            for (k, piece) in frame.chunks(payload).enumerate() {
                let offset = (k * payload) as u32;
                if !need.wants(offset, piece.len() as u32) {
                    continue;
                }
                let t = now();
                bucket.reset_rate_keep_credit(rate.tick(t));
                let wait = bucket.take((piece.len() + proto::DATA_HEADER) as u64, t);
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                transmit(
                    &Message::Data {
                        index,
                        offset,
                        total: frame.len() as u32,
                        tag: proto::tag(&c.id),
                        payload: piece,
                    },
                    &mut report,
                    &mut out,
                )?;
                drain(
                    &mut peers,
                    &mut carousel,
                    &mut rate,
                    &mut report,
                    &mut inbuf,
                    false,
                )?;
            }
            if carousel.pass == 1 {
                let (pos, len) = carousel.position();
                let t = pos * 10 / len.max(1);
                if t > tenth {
                    tenth = t;
                    progress(&format!("pass 1 at {}%", t * 10));
                }
            }
            continue;
        }
        // end of a pass
        let pass = carousel.pass;
        announce_and_listen(
            pass,
            &mut last_pass_msg,
            &mut peers,
            &mut carousel,
            &mut rate,
            &mut report,
            &mut out,
            &mut inbuf,
        )?;
        // receivers silent too long have left (fell back to HTTP, or are gone)
        let limit = opts.receiver_timeout.as_secs_f64();
        peers.last_heard.retain(|_, heard| now() - *heard < limit);
        let everyone_done =
            !peers.last_heard.is_empty() && peers.last_heard.keys().all(|r| peers.done.contains(r));
        if everyone_done {
            break "done";
        }
        if peers.last_heard.is_empty() && now() > opts.wait.as_secs_f64() + limit {
            break "no receivers";
        }
        if carousel.next_pass() {
            progress(&format!(
                "pass {pass} done; pass {} sends {} chunks",
                carousel.pass,
                carousel.position().1
            ));
        }
    };
    for _ in 0..3 {
        transmit(&Message::End, &mut report, &mut out)?;
    }
    report.passes = carousel.pass;
    report.receivers_joined = peers.last_heard.len().max(peers.done.len());
    report.receivers_done = peers.done.len();
    report.ended = ended.into();
    report.seconds = started.elapsed().as_secs_f64();
    progress(&format!("session ended: {ended}"));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(c: &mut Carousel) -> Vec<(u32, Need)> {
        std::iter::from_fn(|| c.next_chunk()).collect()
    }

    fn bytes(index: u32, start: u32, end: u32) -> proto::FrameRange {
        proto::FrameRange { index, start, end }
    }

    #[test]
    fn later_passes_send_only_what_was_naked() {
        let mut c = Carousel::new(5);
        assert_eq!(c.next_chunk(), Some((0, Need::Whole)));
        assert_eq!(
            c.nak(&[(0, 3)]),
            1,
            "1 and 2 are still to come in this pass"
        );
        let first: Vec<u32> = chunks(&mut c).into_iter().map(|(i, _)| i).collect();
        assert_eq!(first, vec![1, 2, 3, 4]);
        assert_eq!(c.nak(&[(1, 3), (4, 9)]), 3); // 1, 2 and 4 (5.. is out of range)
        assert_eq!(c.nak(&[(2, 3)]), 0, "a repeated NAK is no news");
        assert!(c.next_pass());
        assert_eq!(c.pass, 2);
        assert_eq!(c.nak(&[(4, 5)]), 0, "4 comes in this pass");
        let second: Vec<u32> = chunks(&mut c).into_iter().map(|(i, _)| i).collect();
        assert_eq!(second, vec![0, 1, 2, 4]);
        assert!(!c.next_pass());
    }

    #[test]
    fn repairs_send_only_the_fragments_asked_for_merged_across_receivers() {
        let mut c = Carousel::new(4);
        let _ = chunks(&mut c);
        // receiver A lacks two fragments of chunk 1, receiver B another one and all of chunk 3
        assert_eq!(c.repair(&[bytes(1, 1344, 2688), bytes(1, 5376, 6000)]), 2);
        assert_eq!(c.repair(&[bytes(1, 2688, 4032)]), 1, "B's range is news");
        assert_eq!(c.repair(&[bytes(1, 1400, 2000)]), 0, "inside A's: no news");
        assert_eq!(c.nak(&[(3, 4)]), 1);
        assert_eq!(c.repair(&[bytes(3, 0, 10)]), 0, "3 is asked for whole");
        assert_eq!(c.repair(&[bytes(9, 0, 10)]), 0, "out of range");
        assert!(c.next_pass());
        // a request arriving while the pass is under way joins the chunk still to come
        assert_eq!(c.repair(&[bytes(1, 0, 100)]), 1);
        let second = chunks(&mut c);
        assert_eq!(
            second,
            vec![
                (1, Need::Bytes(vec![(0, 100), (1344, 4032), (5376, 6000)])),
                (3, Need::Whole)
            ]
        );
        let need = &second[0].1;
        let sent: Vec<u32> = (0..5)
            .map(|k| k * 1344)
            .filter(|&o| need.wants(o, 1344))
            .collect();
        assert_eq!(
            sent,
            vec![0, 1344, 2688, 5376],
            "fragments 0, 1, 2 and 4 of 0..5"
        );
        assert!(!c.next_pass());
    }

    #[test]
    fn nak_pressure_slows_the_rate_down_to_the_floor_and_it_recovers() {
        // NAKs from 2 of 8 receivers: no congestion, the rate stays
        let mut r = RateControl::new(1000, 300);
        let mut t = 0.0;
        for i in 0..20 {
            r.nak(t, i % 2, 8);
            t += 0.5;
        }
        assert_eq!(r.rate, 1000);
        // from 5 of 8: congestion, down to the floor
        let mut t = 0.0;
        for i in 0..40 {
            r.nak(t, i % 5, 8);
            t += 0.25;
        }
        assert_eq!(r.rate, 300);
        let mut t2 = t;
        while r.tick(t2) < 1000 {
            t2 += 0.1;
        }
        assert!(t2 - t > 1.0, "recovers additively, not at once");
    }
}
