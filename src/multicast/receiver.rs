//! The receiving end: [`Core`] (pure: reassembly, what is held and lacking, when to NAK) and
//! [`receive`] (the socket loop, decoding, verification and writing through
//! [`export::Target`](crate::store::export::Target), then the HTTP fallback).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::proto::{self, FrameRange, ListedChunk, Message, Status};
use super::{is_timeout, Endpoint, MulticastError, Rng};
use crate::store::export::Target;
use crate::store::id::ChunkId;
use crate::store::manifest::ExtentKind;
use crate::store::source::{ChunkSource, Decoder, HttpSource};
use crate::store::StoreError;

/// A chunk being reassembled.
#[derive(Debug, Default)]
struct Partial {
    frame: Vec<u8>,
    /// fragment offset → length
    got: BTreeMap<u32, u32>,
    bytes: u64,
}

impl Partial {
    /// The byte ranges of the frame not received yet.
    fn gaps(&self, index: u32) -> impl Iterator<Item = FrameRange> + '_ {
        let total = self.frame.len() as u32;
        let mut at = 0u32;
        self.got
            .iter()
            .map(|(&o, &l)| (o, o + l))
            .chain(std::iter::once((total, total)))
            .filter_map(move |(o, end)| {
                let gap = (o > at).then_some(FrameRange {
                    index,
                    start: at,
                    end: o,
                });
                at = at.max(end);
                gap
            })
    }
}

/// What a receiver asks the sender for: whole chunks (NAK) and byte ranges of chunks it
/// partly holds (REPAIR).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub whole: Vec<(u32, u32)>,
    pub parts: Vec<FrameRange>,
}

impl Request {
    /// The datagrams that carry it from `receiver`: a NAK, a REPAIR, or both.
    pub fn messages(self, receiver: u32) -> impl Iterator<Item = Message<'static>> {
        let nak = (!self.whole.is_empty()).then_some(Message::Nak {
            receiver,
            ranges: self.whole,
        });
        let repair = (!self.parts.is_empty()).then_some(Message::Repair {
            receiver,
            ranges: self.parts,
        });
        nak.into_iter().chain(repair)
    }
}

/// What a datagram meant to the receiver.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing to do (a fragment stored, a duplicate, another receiver's message).
    None,
    /// Every fragment of chunk `index` arrived: decode and verify `frame`, then call
    /// [`Core::verified`] or [`Core::rejected`].
    Complete { index: u32, frame: Vec<u8> },
    /// The sender finished a pass.
    Pass(u32),
    /// The sender ended the session.
    End,
}

/// The receiver's state, driven by datagrams and the clock (seconds, any origin).
pub struct Core {
    pub id: u32,
    list: Vec<(ChunkId, u32)>,
    /// The indexes not held yet (what a request is made of; small below the frontier).
    lacking: BTreeSet<u32>,
    partial: HashMap<u32, Partial>,
    /// The session this receiver follows (the first sender it hears).
    pub session: Option<u32>,
    /// One past the highest chunk index the sender has reached.
    frontier: u32,
    /// The sender announced the end of a pass: every chunk has been sent at least once.
    passed: bool,
    last_nak: HashMap<u32, f64>,
    nak_due: Option<f64>,
    last_sent_nak: f64,
    /// Seconds between two NAKs of the same chunk, and the longest suppression delay.
    pub nak_interval: f64,
    pub suppress: f64,
    rng: Rng,
    /// Datagrams that failed to decode, were inconsistent with the manifest, or completed a
    /// chunk that did not verify.
    pub dropped: u64,
    pub datagrams: u64,
    pub bytes: u64,
    pub naks_sent: u64,
    pub naks_suppressed: u64,
}

impl Core {
    pub fn new(id: u32, list: &[ListedChunk], seed: u64) -> Core {
        Core {
            id,
            list: list.iter().map(|c| (c.id, c.compressed)).collect(),
            lacking: (0..list.len() as u32).collect(),
            partial: HashMap::new(),
            session: None,
            frontier: 0,
            passed: false,
            last_nak: HashMap::new(),
            nak_due: None,
            last_sent_nak: f64::NEG_INFINITY,
            nak_interval: 0.5,
            suppress: 0.05,
            rng: Rng::new(seed),
            dropped: 0,
            datagrams: 0,
            bytes: 0,
            naks_sent: 0,
            naks_suppressed: 0,
        }
    }

    pub fn total(&self) -> u32 {
        self.list.len() as u32
    }

    pub fn held(&self) -> u32 {
        self.total() - self.lacking.len() as u32
    }

    pub fn done(&self) -> bool {
        self.lacking.is_empty()
    }

    pub fn status(&self) -> Status {
        Status {
            receiver: self.id,
            held: self.held(),
            total: self.total(),
        }
    }

    /// Chunk `index` is on the target (verified and written, or found there).
    pub fn verified(&mut self, index: u32) {
        self.lacking.remove(&index);
        self.partial.remove(&index);
    }

    /// Chunk `index`'s frame did not decode or verify: dropped, counted, asked for again.
    pub fn rejected(&mut self, index: u32) {
        self.dropped += 1;
        self.partial.remove(&index);
    }

    /// The indexes not held yet.
    pub fn lacking(&self) -> Vec<u32> {
        self.lacking.iter().copied().collect()
    }

    /// Handles one received datagram at time `now`.
    pub fn on_datagram(&mut self, bytes: &[u8], now: f64) -> Event {
        let Ok(d) = proto::decode(bytes) else {
            self.dropped += 1;
            return Event::None;
        };
        let from_sender = matches!(
            d.message,
            Message::Data { .. } | Message::Pass { .. } | Message::End
        );
        match self.session {
            Some(s) if s != d.session => return Event::None,
            None if from_sender => self.session = Some(d.session),
            None => return Event::None,
            Some(_) => {}
        }
        match d.message {
            Message::Data {
                index,
                offset,
                total,
                tag,
                payload,
            } => {
                self.datagrams += 1;
                self.bytes += bytes.len() as u64;
                let Some(&(want, compressed)) = self.list.get(index as usize) else {
                    self.dropped += 1;
                    return Event::None;
                };
                if proto::tag(&want) != tag || compressed != total {
                    self.dropped += 1;
                    return Event::None;
                }
                self.frontier = self.frontier.max(index + 1);
                if !self.lacking.contains(&index) {
                    return Event::None;
                }
                let p = self.partial.entry(index).or_default();
                if p.frame.len() != total as usize {
                    p.frame = vec![0; total as usize];
                }
                if p.got.contains_key(&offset) {
                    return Event::None;
                }
                p.got.insert(offset, payload.len() as u32);
                p.frame[offset as usize..offset as usize + payload.len()].copy_from_slice(payload);
                p.bytes += payload.len() as u64;
                if p.bytes >= total as u64 {
                    let p = self.partial.remove(&index).expect("just inserted");
                    return Event::Complete {
                        index,
                        frame: p.frame,
                    };
                }
                Event::None
            }
            Message::Nak { receiver, ranges } => {
                if receiver != self.id {
                    // another receiver asked: ours would be redundant for a while
                    for (a, b) in ranges {
                        for i in a..b.min(self.total()) {
                            self.last_nak.insert(i, now);
                        }
                    }
                }
                Event::None
            }
            Message::Pass { pass, .. } => {
                if pass > 0 {
                    self.frontier = self.total();
                    self.passed = true;
                }
                Event::Pass(pass)
            }
            Message::End => Event::End,
            // another receiver's missing fragments are its own (losses are independent)
            Message::Repair { .. } => Event::None,
            Message::Join(_) | Message::Status(_) | Message::Done(_) => Event::None,
        }
    }

    /// Chunks this receiver should ask for now: lacking, reached by the sender, not asked for
    /// (by anyone) within the NAK interval.
    fn candidates(&self, now: f64) -> Vec<u32> {
        // below the chunk arriving now (its fragments are still coming), or all after a PASS
        // (the last chunk arriving makes the frontier the total too: only a PASS means all)
        let upto = if self.passed {
            self.total()
        } else {
            self.frontier.saturating_sub(1)
        };
        self.lacking
            .range(..upto)
            .copied()
            .filter(|i| {
                self.last_nak
                    .get(i)
                    .is_none_or(|t| now - t >= self.nak_interval)
            })
            .collect()
    }

    /// What to ask for at `now`, if a request is due: when there is something to ask for, a
    /// random delay (up to `suppress`) starts; if another receiver's NAK covers it meanwhile,
    /// nothing is sent. At most one request per suppression window. A chunk of which some
    /// fragments arrived is asked for by its missing byte ranges, the others whole.
    pub fn nak(&mut self, now: f64) -> Option<Request> {
        let want = self.candidates(now);
        if want.is_empty() {
            if self.nak_due.take().is_some() {
                self.naks_suppressed += 1;
            }
            return None;
        }
        let due = *self
            .nak_due
            .get_or_insert_with(|| now + self.rng.unit() * self.suppress);
        if now < due || now - self.last_sent_nak < self.suppress {
            return None;
        }
        self.nak_due = None;
        self.last_sent_nak = now;
        let mut request = Request::default();
        let mut whole = Vec::new();
        let mut asked = Vec::new();
        for i in want {
            match self.partial.get(&i).filter(|p| !p.got.is_empty()) {
                Some(p) => {
                    let before = request.parts.len();
                    request.parts.extend(p.gaps(i));
                    if request.parts.len() > proto::MAX_REPAIR_RANGES {
                        request.parts.truncate(before);
                        if before == 0 {
                            whole.push(i); // more gaps than one REPAIR carries
                        }
                        continue; // the rest in a later request
                    }
                    asked.push(i);
                }
                None => whole.push(i),
            }
        }
        request.whole = proto::ranges_of(whole);
        request.whole.truncate(proto::MAX_NAK_RANGES);
        for &(a, b) in &request.whole {
            asked.extend(a..b);
        }
        for i in asked {
            self.last_nak.insert(i, now);
        }
        self.naks_sent += 1;
        Some(request)
    }
}

/// What a receive session did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReceiveReport {
    pub session: Option<String>,
    pub receiver: u32,
    pub chunks: u32,
    /// Chunks verified from multicast, from the HTTP fallback, already on the target.
    pub chunks_multicast: u32,
    pub chunks_http: u32,
    pub chunks_in_place: u32,
    pub datagrams: u64,
    /// DATA bytes received (whole datagrams).
    pub bytes_received: u64,
    /// Image bytes written to the target, found there already, zero extents.
    pub bytes_written: u64,
    pub bytes_in_place: u64,
    pub bytes_zero: u64,
    pub dropped: u64,
    pub naks_sent: u64,
    pub fell_back: Option<String>,
    /// Seconds from the start until the target held the whole image (synced).
    pub complete_after: f64,
    /// Seconds until the receiver left (it lingers a little after DONE).
    pub seconds: f64,
}

/// How a receiver runs.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// `http://HOST:PORT` of the server that runs the session (manifest, fallback).
    pub server: String,
    /// Headers every request to `server` carries: the credential (an agent's session headers,
    /// or staff's `authorization`), since images are private.
    pub headers: Vec<(&'static str, String)>,
    /// How an `https://` server's certificate is checked.
    pub tls: crate::tls::TlsClient,
    pub image: String,
    /// Default: the interface's IPv4 address as a number (stable across restarts).
    pub receiver: Option<u32>,
    /// Nothing from the sender for this long: finish over HTTP.
    pub idle_timeout: Duration,
    /// The sender passed this many passes and we still lack chunks: finish over HTTP.
    pub max_passes: u32,
    /// Test hook: drop this share of datagrams in user space (deterministic).
    pub drop_percent: f64,
    /// Image bytes on the target so far (written, found in place, zero): added to as it goes.
    pub progress: Option<Arc<AtomicU64>>,
    /// Set from outside to stop (the task was cancelled): `StoreError::Cancelled`.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl ReceiveOptions {
    /// Defaults for receiving `image` (`NAME@VERSION`) from `server`.
    pub fn new(server: &str, image: &str) -> ReceiveOptions {
        ReceiveOptions {
            server: server.to_string(),
            headers: Vec::new(),
            tls: crate::tls::TlsClient::Roots,
            image: image.to_string(),
            receiver: None,
            idle_timeout: Duration::from_secs(10),
            max_passes: 20,
            drop_percent: 0.0,
            progress: None,
            cancel: None,
        }
    }

    fn add_progress(&self, n: u64) {
        if let Some(p) = &self.progress {
            p.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn check_cancel(&self) -> Result<(), MulticastError> {
        match &self.cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(StoreError::Cancelled.into()),
            _ => Ok(()),
        }
    }
}

/// Receives the image over multicast and writes it to `target`; returns what happened.
/// `progress(line)` gets one line each time another tenth of the chunks is held.
pub fn receive(
    endpoint: &Endpoint,
    opts: &ReceiveOptions,
    target: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<ReceiveReport, MulticastError> {
    let started = Instant::now();
    let source = HttpSource::with_credential(&opts.server, &opts.tls, &opts.headers)?;
    let (manifest, _version) = source.manifest(&opts.image)?;
    let list = proto::chunk_list(&manifest);
    let local = endpoint.local()?;
    let id = opts.receiver.unwrap_or(u32::from(local));
    let socket = endpoint.socket(true, Duration::from_millis(20))?;
    let dest = endpoint.destination();
    let send = |m: &Message, session: u32| {
        let mut buf = Vec::new();
        proto::encode(session, m, &mut buf);
        let _ = socket.send_to(&buf, dest);
    };

    // The target is its own seed: chunks already there (an earlier, interrupted run) count.
    let in_place = target.exists();
    let out = Target::open(target, manifest.size, in_place)?;
    let mut report = ReceiveReport {
        receiver: id,
        chunks: list.len() as u32,
        ..Default::default()
    };
    for e in &manifest.extents {
        match e.kind {
            ExtentKind::Zero => {
                out.zero(e.offset, e.len)?;
                report.bytes_zero += e.len;
                opts.add_progress(e.len);
            }
            // no filesystem uses these bytes: the target keeps its own
            ExtentKind::Unused => opts.add_progress(e.len),
            ExtentKind::Chunk { .. } => {}
        }
    }
    let mut core = Core::new(id, &list, u64::from(id) ^ 0x5eed);
    if in_place {
        for (i, c) in list.iter().enumerate() {
            let mut all = true;
            for &o in &c.offsets {
                all &= out.holds(o, c.len, c.id)?;
            }
            if all {
                core.verified(i as u32);
                report.chunks_in_place += 1;
                report.bytes_in_place += c.len * c.offsets.len() as u64;
                opts.add_progress(c.len * c.offsets.len() as u64);
            }
        }
    }

    let mut decoder = Decoder::new(manifest.params.max as usize);
    let mut loss = Rng::new(u64::from(id) ^ 0x1055);
    let clock = Instant::now();
    let now = || clock.elapsed().as_secs_f64();
    let mut last_heard = now();
    let mut last_status = f64::NEG_INFINITY;
    let mut last_nak_check = f64::NEG_INFINITY;
    let mut done_at: Option<f64> = None;
    let mut tenth = core.held() * 10 / core.total().max(1);
    let mut buf = vec![0u8; 65536];
    let mut fallback: Option<String> = None;
    let mut announced = false;
    loop {
        opts.check_cancel()?;
        let t = now();
        if core.done() && done_at.is_none() {
            out.sync()?;
            done_at = Some(t);
            report.complete_after = started.elapsed().as_secs_f64();
            if let Some(s) = core.session {
                send(&Message::Done(core.status()), s);
            }
        }
        if let Some(d) = done_at {
            // linger a little so a lost DONE is repeated on the sender's next PASS
            if t - d > 3.0 || core.session.is_none() {
                break;
            }
        }
        if !core.done() && t - last_heard > opts.idle_timeout.as_secs_f64() {
            fallback = Some("nothing heard from the sender".into());
            break;
        }
        // JOIN until the session starts, then STATUS every second
        if t - last_status >= if core.session.is_some() { 1.0 } else { 0.2 } {
            last_status = t;
            let s = core.status();
            let m = if core.done() {
                Message::Done(s)
            } else if core.datagrams == 0 {
                Message::Join(s)
            } else {
                Message::Status(s)
            };
            // before the first sender datagram, JOIN under session 0 (the sender accepts it)
            send(&m, core.session.unwrap_or(0));
        }
        // what to ask for is looked at every few ms, not after every datagram: at 1 Gbit/s
        // that is 80,000 times a second
        let request = if t - last_nak_check >= 0.005 {
            last_nak_check = t;
            core.nak(t)
        } else {
            None
        };
        if let Some(request) = request {
            if let Some(s) = core.session {
                for m in request.messages(id) {
                    send(&m, s);
                }
            }
        }
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(cause) => {
                return Err(MulticastError::Socket {
                    what: "receiving",
                    cause,
                })
            }
        };
        if opts.drop_percent > 0.0 && loss.unit() * 100.0 < opts.drop_percent {
            continue;
        }
        let before = core.datagrams;
        let event = core.on_datagram(&buf[..n], now());
        if core.datagrams > before || matches!(event, Event::Pass(_) | Event::End) {
            last_heard = now();
        }
        if !announced {
            if let Some(s) = core.session {
                announced = true;
                progress(&format!("joined session {s:08x}"));
            }
        }
        match event {
            Event::None => {}
            Event::Complete { index, frame } => {
                let c = &list[index as usize];
                match decoder.decode(&c.id, &frame) {
                    Ok(chunk) => {
                        for &o in &c.offsets {
                            out.write_chunk(o, &chunk)?;
                            report.bytes_written += c.len;
                            opts.add_progress(c.len);
                        }
                        core.verified(index);
                        report.chunks_multicast += 1;
                        let now_tenth = core.held() * 10 / core.total().max(1);
                        if now_tenth > tenth {
                            tenth = now_tenth;
                            progress(&format!("held {}%", tenth * 10));
                        }
                    }
                    Err(_) => core.rejected(index),
                }
            }
            Event::Pass(pass) => {
                if core.done() {
                    send(&Message::Done(core.status()), core.session.unwrap_or(0));
                } else if pass >= opts.max_passes {
                    fallback = Some(format!("still lacking chunks after pass {pass}"));
                    break;
                }
            }
            Event::End => {
                if !core.done() {
                    fallback = Some("the session ended".into());
                }
                break;
            }
        }
    }

    // Falls back to HTTP for whatever is still lacking.
    let lacking = core.lacking();
    if !lacking.is_empty() {
        progress(&format!(
            "finishing {} chunks over HTTP ({})",
            lacking.len(),
            fallback.as_deref().unwrap_or("")
        ));
        for batch in lacking.chunks(256) {
            opts.check_cancel()?;
            let ids: Vec<_> = batch.iter().map(|&i| list[i as usize].id).collect();
            let fetched = source.fetch(&ids)?;
            for (&i, (got, frame)) in batch.iter().zip(fetched) {
                let c = &list[i as usize];
                let chunk = decoder
                    .decode(&got, &frame)
                    .ok()
                    .filter(|_| got == c.id)
                    .ok_or_else(|| source.corrupt(c.id, "did not verify".into()))?;
                for &o in &c.offsets {
                    out.write_chunk(o, &chunk)?;
                    report.bytes_written += c.len;
                    opts.add_progress(c.len);
                }
                core.verified(i);
                report.chunks_http += 1;
            }
        }
        out.sync()?;
        report.complete_after = started.elapsed().as_secs_f64();
        if let Some(s) = core.session {
            send(&Message::Done(core.status()), s);
        }
    }
    report.session = core.session.map(|s| format!("{s:08x}"));
    report.datagrams = core.datagrams;
    report.bytes_received = core.bytes;
    report.dropped = core.dropped;
    report.naks_sent = core.naks_sent;
    report.fell_back = fallback;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(n: usize) -> Vec<ListedChunk> {
        (0..n)
            .map(|i| ListedChunk {
                id: ChunkId::of(&[i as u8]),
                len: 10,
                compressed: 100,
                offsets: vec![i as u64 * 10],
            })
            .collect()
    }

    fn data(session: u32, index: u32, id: ChunkId, offset: u32, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        proto::encode(
            session,
            &Message::Data {
                index,
                offset,
                total: 100,
                tag: proto::tag(&id),
                payload,
            },
            &mut buf,
        );
        buf
    }

    #[test]
    fn fragments_reassemble_once_and_mismatches_are_dropped() {
        let l = list(4);
        let mut c = Core::new(1, &l, 1);
        assert_eq!(
            c.on_datagram(&data(9, 0, l[0].id, 0, &[1; 60]), 0.0),
            Event::None
        );
        assert_eq!(c.session, Some(9));
        // duplicate fragment: ignored
        assert_eq!(
            c.on_datagram(&data(9, 0, l[0].id, 0, &[1; 60]), 0.0),
            Event::None
        );
        // wrong id for the index, another session, garbage: never reassembled
        c.on_datagram(&data(9, 0, l[1].id, 60, &[2; 40]), 0.0);
        c.on_datagram(&data(8, 0, l[0].id, 60, &[2; 40]), 0.0);
        c.on_datagram(b"garbage", 0.0);
        assert_eq!(c.dropped, 2);
        match c.on_datagram(&data(9, 0, l[0].id, 60, &[2; 40]), 0.0) {
            Event::Complete { index: 0, frame } => {
                assert_eq!(&frame[..60], &[1; 60]);
                assert_eq!(&frame[60..], &[2; 40]);
            }
            e => panic!("{e:?}"),
        }
        c.rejected(0);
        assert_eq!(c.dropped, 3);
        assert!(!c.done());
    }

    #[test]
    fn naks_ask_for_what_the_sender_passed_and_yield_to_others() {
        let l = list(6);
        let mut c = Core::new(1, &l, 7);
        c.suppress = 0.1;
        // the sender reached chunk 3; chunks 0..3 lack (3 itself is still arriving)
        c.on_datagram(&data(5, 3, l[3].id, 0, &[0; 10]), 0.0);
        let mut t = 0.0;
        let mut sent = None;
        while sent.is_none() && t < 1.0 {
            sent = c.nak(t);
            t += 0.01;
        }
        assert_eq!(sent.map(|r| r.whole), Some(vec![(0, 3)]));
        // the last chunk arriving: still not asked for until a PASS says the pass ended
        c.on_datagram(&data(5, 5, l[5].id, 0, &[0; 10]), 0.0);
        assert!(
            c.candidates(100.0).iter().all(|&i| i < 5),
            "{:?}",
            c.candidates(100.0)
        );
        // asked: not again within the interval
        assert_eq!(c.nak(t), None);
        // another receiver asks for 0..6 before ours is due: suppressed
        let mut other = Vec::new();
        proto::encode(
            5,
            &Message::Nak {
                receiver: 2,
                ranges: vec![(0, 6)],
            },
            &mut other,
        );
        let t = t + 1.0;
        c.on_datagram(&other, t);
        assert_eq!(c.nak(t + 0.2), None);
        // after a PASS everything lacking may be asked for
        c.verified(0);
        let mut pass = Vec::new();
        proto::encode(5, &Message::Pass { pass: 1, total: 6 }, &mut pass);
        assert_eq!(c.on_datagram(&pass, t + 1.0), Event::Pass(1));
        let mut sent = None;
        let mut t = t + 1.0;
        while sent.is_none() {
            sent = c.nak(t);
            t += 0.01;
        }
        // 3 and 5 are partly held: only their missing bytes
        let sent = sent.unwrap();
        assert_eq!(sent.whole, vec![(1, 3), (4, 5)]);
        let parts: Vec<_> = sent
            .parts
            .iter()
            .map(|r| (r.index, r.start, r.end))
            .collect();
        assert_eq!(parts, vec![(3, 10, 100), (5, 10, 100)]);
    }

    #[test]
    fn a_chunk_partly_held_is_asked_for_by_its_missing_bytes() {
        let l = list(3);
        let mut c = Core::new(1, &l, 3);
        // chunk 0: bytes 0..20 and 50..70 of 100 arrived; chunk 1: nothing; chunk 2 arriving
        c.on_datagram(&data(5, 0, l[0].id, 0, &[0; 20]), 0.0);
        c.on_datagram(&data(5, 0, l[0].id, 50, &[0; 20]), 0.0);
        c.on_datagram(&data(5, 2, l[2].id, 0, &[0; 20]), 0.0);
        let mut t = 0.0;
        let mut sent = None;
        while sent.is_none() {
            sent = c.nak(t);
            t += 0.01;
        }
        let r = |start, end| FrameRange {
            index: 0,
            start,
            end,
        };
        assert_eq!(
            sent,
            Some(Request {
                whole: vec![(1, 2)],
                parts: vec![r(20, 50), r(70, 100)],
            })
        );
        // the repair arrives: the chunk completes from both passes' fragments
        c.on_datagram(&data(5, 0, l[0].id, 20, &[1; 30]), t);
        match c.on_datagram(&data(5, 0, l[0].id, 70, &[2; 30]), t) {
            Event::Complete { index: 0, frame } => {
                assert_eq!(&frame[20..50], &[1; 30]);
                assert_eq!(&frame[70..], &[2; 30]);
            }
            e => panic!("{e:?}"),
        }
    }
}
