//! Fleet push simulation: how long new master chunks take to reach every site's relay, given
//! each site's bandwidth cap and transfer windows (in its own time zone) and the central
//! server's egress, shared by the sites pulling at the same moment. Pure and deterministic (no
//! clock, network, threads or randomness beyond a seeded splitmix64): two weeks of a fleet's
//! pushes run in milliseconds. `examples/fleet_sim.rs` prints it as a table
//! (`bench/fleet/run.sh`).
//!
//! The model:
//! - a site pulls at its cap (bytes/s, as [`rate::parse_rate`](bootcast::rate::parse_rate) reads
//!   `50Mbit` and the relay's [`Bucket`](bootcast::rate::Bucket) holds it) while its window is
//!   open in its zone ([`Windows::is_open`]) and it still lacks bytes, unless its round trip
//!   holds it lower: the relay keeps [`IN_FLIGHT`] bytes requested at once (its prestage
//!   streams, one batch each), so it cannot pull faster than `IN_FLIGHT / rtt`
//!   ([`Site::rate`]);
//! - the central server's egress is shared: when the caps of the sites pulling at one moment
//!   add up to more than the egress, every pulling site's rate is scaled down by the same
//!   factor (rounded down to whole bytes/s), so the sum never exceeds the egress;
//! - time goes from event to event (a site's window opens or closes, a site finishes, the
//!   horizon), in whole seconds; rates are constant in between. A site whose last bytes take
//!   part of a second is done at the end of that second (as [`Windows::finish_time`] counts);
//! - what a site lacks is a byte count: the unique chunk bytes of its masters it does not
//!   hold ([`Catalog`]); chunks shared by several masters (a common Windows base) count once.
//!
//! Not modelled: TCP dynamics (slow start, loss), relay or server CPU (hashing,
//! decompression), disk speed on either side, request overhead, relays feeding each other,
//! links shared with the site's daytime traffic.
//!
//! Nights: a site's first night is the first window span that opens after the push starts;
//! if its window is already open at the start, that open time counts toward the first night
//! too. Each later span is one more night. An `always` window counts days from the start.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use bootcast::push::window::Windows;
use bootcast::time::Zone;

const GIB: u64 = 1 << 30;

/// Compressed bytes a relay's prestage has requested at once: one batch per stream.
pub const IN_FLIGHT: u64 =
    bootcast::relay::prestage::STREAMS as u64 * bootcast::relay::prestage::BATCH_BYTES;

/// A run of unique chunk bytes (compressed, as stored and sent), possibly shared by several
/// masters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Segment {
    pub name: String,
    pub bytes: u64,
}

/// A master: the segments its chunks come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Master {
    pub name: String,
    pub segments: Vec<usize>,
}

/// Masters and the chunk segments they are made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Catalog {
    pub segments: Vec<Segment>,
    pub masters: Vec<Master>,
}

impl Catalog {
    /// `n` masters, alternately Windows and Linux, with realistic compressed sizes: Windows
    /// 30, 26, 22, 18 GiB, all sharing one 14 GiB base (the OS, drivers, Office); Linux 12, 9,
    /// 7, 5 GiB sharing a 3 GiB base (kernel, firmware, desktop). Beyond 8, the sizes repeat
    /// (with a `-2`, `-3`... name) over the same two bases.
    pub fn standard(n: usize) -> Catalog {
        const WIN: [(&str, u64); 4] = [
            ("win11-lab", 30),
            ("win11-staff", 26),
            ("win11-cad", 22),
            ("win11-kiosk", 18),
        ];
        const LINUX: [(&str, u64); 4] = [
            ("debian-lab-gnome", 12),
            ("debian-lab-kde", 9),
            ("debian-dev", 7),
            ("debian-kiosk", 5),
        ];
        const WIN_BASE: u64 = 14;
        const LINUX_BASE: u64 = 3;
        let mut c = Catalog {
            segments: Vec::new(),
            masters: Vec::new(),
        };
        let (mut win_base, mut linux_base) = (None, None);
        for i in 0..n {
            let k = i / 2;
            let (table, base_gib, base, base_name) = if i % 2 == 0 {
                (&WIN, WIN_BASE, &mut win_base, "windows base")
            } else {
                (&LINUX, LINUX_BASE, &mut linux_base, "linux base")
            };
            let base = *base.get_or_insert_with(|| {
                c.segments.push(Segment {
                    name: base_name.into(),
                    bytes: base_gib * GIB,
                });
                c.segments.len() - 1
            });
            let (name, gib) = table[k % 4];
            let name = match k / 4 {
                0 => name.to_string(),
                r => format!("{name}-{}", r + 1),
            };
            c.segments.push(Segment {
                name: format!("{name} own"),
                bytes: (gib - base_gib) * GIB,
            });
            c.masters.push(Master {
                name,
                segments: vec![base, c.segments.len() - 1],
            });
        }
        c
    }

    /// Every master's index.
    pub fn all(&self) -> Vec<usize> {
        (0..self.masters.len()).collect()
    }

    /// One master's size (its segments; what a restore reads).
    pub fn master_bytes(&self, m: usize) -> u64 {
        self.masters[m]
            .segments
            .iter()
            .map(|&s| self.segments[s].bytes)
            .sum()
    }

    /// The masters' sizes added up, shared chunks counted once per master.
    pub fn listed_bytes(&self, masters: &[usize]) -> u64 {
        masters.iter().map(|&m| self.master_bytes(m)).sum()
    }

    /// The unique chunk bytes of these masters: each shared segment once. What a site that
    /// holds none of them must fetch.
    pub fn unique_bytes(&self, masters: &[usize]) -> u64 {
        let mut used = vec![false; self.segments.len()];
        for &m in masters {
            for &s in &self.masters[m].segments {
                used[s] = true;
            }
        }
        used.iter()
            .zip(&self.segments)
            .filter(|(u, _)| **u)
            .map(|(_, s)| s.bytes)
            .sum()
    }

    /// The new chunks of a monthly update: `percent` of every segment's bytes, same
    /// structure. A change to a shared base (the month's Windows cumulative update) lands in
    /// every master built on it as the same chunks, so it is fetched once.
    pub fn update(&self, percent: f64) -> Catalog {
        let frac = (percent / 100.0).clamp(0.0, 1.0);
        Catalog {
            segments: self
                .segments
                .iter()
                .map(|s| Segment {
                    name: format!("{} (update)", s.name),
                    bytes: (s.bytes as f64 * frac).round() as u64,
                })
                .collect(),
            masters: self.masters.clone(),
        }
    }
}

/// What the sites lack at the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Every site holds last month's masters and lacks the update's new chunks.
    Update,
    /// Every site is new and holds nothing: it fetches every unique chunk of its masters.
    Seed,
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Scenario, String> {
        match s {
            "update" => Ok(Scenario::Update),
            "seed" => Ok(Scenario::Seed),
            _ => Err(format!("scenario {s:?}: write update or seed")),
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scenario::Update => "update",
            Scenario::Seed => "seed",
        })
    }
}

/// splitmix64: a tiny seeded generator, fixed forever so the tables never change.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is negligible for small n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// `n` caps spread log-uniformly from `min` to `max` bytes/s (both ends included, evenly
/// spaced on a log scale), in an order shuffled by `seed`.
pub fn log_caps(n: usize, min: u64, max: u64, seed: u64) -> Vec<u64> {
    let (lo, hi) = (min.min(max).max(1) as f64, min.max(max).max(1) as f64);
    let mut caps: Vec<u64> = (0..n)
        .map(|i| {
            let f = if n > 1 {
                i as f64 / (n - 1) as f64
            } else {
                1.0
            };
            (lo * (hi / lo).powf(f)).round() as u64
        })
        .collect();
    SplitMix::new(seed).shuffle(&mut caps);
    caps
}

/// One site's relay as the simulation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub name: String,
    /// Bytes per second.
    pub cap: u64,
    pub zone_name: String,
    pub zone: Zone,
    pub window: Windows,
    /// Bytes it lacks at the start.
    pub bytes: u64,
    /// Round-trip time to the central server, milliseconds.
    pub rtt_ms: u64,
}

impl Site {
    /// The rate it pulls at alone: its cap, or what [`IN_FLIGHT`] bytes per round trip
    /// allow if that is lower.
    pub fn rate(&self) -> u64 {
        match self.rtt_ms {
            0 => self.cap,
            ms => self.cap.min(IN_FLIGHT * 1000 / ms),
        }
    }
}

/// A simulation: the sites, the central egress, the start and the horizon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sim {
    /// Unix seconds.
    pub start: i64,
    /// Seconds after the start when the simulation stops (sites not done by then are listed
    /// as not done).
    pub horizon: i64,
    /// The central server's egress in bytes per second, shared by all sites.
    pub central_egress: u64,
    pub sites: Vec<Site>,
}

/// Why a site misses its first night.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Miss {
    /// Alone at its cap it would miss it too: the cap is too low for its bytes in one night.
    CapTooLow,
    /// Alone it would make it; sharing the central egress with the other sites delays it.
    SharedEgress,
    /// At its cap it would make it, but its round trip holds it below the cap.
    RoundTrip,
}

/// One site's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteResult {
    pub name: String,
    pub cap: u64,
    /// Its round trip (ms) and the rate it pulls at alone ([`Site::rate`]).
    pub rtt_ms: u64,
    pub rate: u64,
    pub zone: String,
    pub bytes: u64,
    /// When its first night opens (after the start) and ends (Unix seconds).
    pub first_night_opens: i64,
    pub first_night_end: i64,
    /// Seconds of open window from the start to the end of its first night.
    pub first_night_open_seconds: i64,
    /// When its last byte arrived; `None`: not within the horizon.
    pub done_at: Option<i64>,
    /// Nights used (0 if it lacked nothing); `None`: not done within the horizon.
    pub nights: Option<u32>,
    pub misses_first_night: bool,
    pub miss: Option<Miss>,
    /// When it would be done pulling alone at its cap ([`Windows::finish_time`]).
    pub alone_done_at: Option<i64>,
}

/// One site's transfer during an [`Interval`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Flow {
    pub site: usize,
    /// Bytes per second for the whole interval.
    pub rate: u64,
    /// Bytes moved (`rate` times the interval, or less in the second the site finishes).
    pub bytes: u64,
}

/// A stretch of time with constant rates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interval {
    pub from: i64,
    pub to: i64,
    pub flows: Vec<Flow>,
}

impl Interval {
    /// The central egress rate during the interval.
    pub fn rate(&self) -> u64 {
        self.flows.iter().map(|f| f.rate).sum()
    }
}

/// What a simulation found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub start: i64,
    /// When the last site finished, or the horizon.
    pub end: i64,
    pub central_egress: u64,
    pub sites: Vec<SiteResult>,
    /// Every stretch of time when something moved, in time order.
    #[serde(skip)]
    pub intervals: Vec<Interval>,
    /// Bytes sent by the central server (every site's bytes moved).
    pub egress_bytes: u64,
    /// Highest central egress rate (bytes/s), when it first happened, and how many sites
    /// were pulling then.
    pub peak_rate: u64,
    pub peak_at: i64,
    pub peak_sites: usize,
    /// Seconds during which the central egress ran at its cap (sites slowed by sharing).
    pub saturated_seconds: i64,
}

impl Outcome {
    /// The sites that miss their first night.
    pub fn missing(&self) -> impl Iterator<Item = &SiteResult> {
        self.sites.iter().filter(|s| s.misses_first_night)
    }
}

/// The rates of sites pulling at the same moment with these caps (bytes/s) from a central
/// egress of `egress` bytes/s: their caps if those fit, else every cap scaled down by the same
/// factor `egress / sum of caps`, rounded down, the bytes/s lost to rounding handed out one
/// each to the largest remainders (ties: first site first). The sum is then exactly `egress`
/// and no rate exceeds its cap.
pub fn share(caps: &[u64], egress: u64) -> Vec<u64> {
    let demand: u128 = caps.iter().map(|&c| c as u128).sum();
    if demand <= egress as u128 {
        return caps.to_vec();
    }
    let e = egress as u128;
    let mut rates: Vec<u64> = caps
        .iter()
        .map(|&c| (c as u128 * e / demand) as u64)
        .collect();
    let left = egress - rates.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..caps.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(caps[k] as u128 * e % demand));
    for &k in order.iter().take(left as usize) {
        rates[k] += 1;
    }
    rates
}

/// The next state change of a window, or a day later if it has none (always open).
fn next_change(w: &Windows, z: &Zone, t: i64) -> i64 {
    w.next_change(t, z).unwrap_or(t + 86_400)
}

/// The first night of a site for a push starting at `start` (see the module doc): when that
/// window span opens (after `start`) and when it closes.
pub fn first_night(w: &Windows, z: &Zone, start: i64) -> (i64, i64) {
    if w.is_always() {
        return (start, start + 86_400);
    }
    let opens = if w.is_open(start, z) {
        next_change(w, z, next_change(w, z, start))
    } else {
        next_change(w, z, start)
    };
    (opens, next_change(w, z, opens))
}

/// End of the night after the one ending at `end`.
fn next_night_end(w: &Windows, z: &Zone, end: i64) -> i64 {
    if w.is_always() {
        return end + 86_400;
    }
    next_change(w, z, next_change(w, z, end))
}

impl Sim {
    /// Runs the simulation from `start` until every site is done or the horizon.
    pub fn run(&self) -> Outcome {
        let n = self.sites.len();
        let end = self.start + self.horizon.max(0);
        let egress = self.central_egress.max(1);
        let mut remaining: Vec<u64> = self.sites.iter().map(|s| s.bytes).collect();
        let mut done_at: Vec<Option<i64>> = remaining
            .iter()
            .map(|&b| (b == 0).then_some(self.start))
            .collect();
        let mut t = self.start;
        let mut open: Vec<bool> = self
            .sites
            .iter()
            .map(|s| s.window.is_open(t, &s.zone))
            .collect();
        let mut change: Vec<i64> = self
            .sites
            .iter()
            .map(|s| s.window.next_change(t, &s.zone).unwrap_or(i64::MAX))
            .collect();
        let mut intervals = Vec::new();
        let (mut egress_bytes, mut peak_rate, mut peak_at, mut peak_sites) = (0u64, 0u64, t, 0);
        let mut saturated = 0;

        while t < end && remaining.iter().any(|&r| r > 0) {
            for (i, s) in self.sites.iter().enumerate() {
                if change[i] <= t {
                    open[i] = s.window.is_open(t, &s.zone);
                    change[i] = s.window.next_change(t, &s.zone).unwrap_or(i64::MAX);
                }
            }
            let active: Vec<usize> = (0..n).filter(|&i| open[i] && remaining[i] > 0).collect();
            let caps: Vec<u64> = active.iter().map(|&i| self.sites[i].rate()).collect();
            let rates = share(&caps, egress);
            let mut next = end;
            for i in 0..n {
                if remaining[i] > 0 {
                    next = next.min(change[i]);
                }
            }
            for (k, &i) in active.iter().enumerate() {
                if rates[k] > 0 {
                    next = next.min(t + remaining[i].div_ceil(rates[k]) as i64);
                }
            }
            let dt = (next - t) as u64;
            let mut flows = Vec::with_capacity(active.len());
            for (k, &i) in active.iter().enumerate() {
                if rates[k] == 0 {
                    continue;
                }
                let b = remaining[i].min(rates[k].saturating_mul(dt));
                remaining[i] -= b;
                egress_bytes += b;
                if remaining[i] == 0 {
                    done_at[i] = Some(next);
                }
                flows.push(Flow {
                    site: i,
                    rate: rates[k],
                    bytes: b,
                });
            }
            if !flows.is_empty() {
                let iv = Interval {
                    from: t,
                    to: next,
                    flows,
                };
                if iv.rate() > peak_rate {
                    (peak_rate, peak_at, peak_sites) = (iv.rate(), t, iv.flows.len());
                }
                if iv.rate() == egress {
                    saturated += next - t;
                }
                intervals.push(iv);
            }
            t = next;
        }

        let sites = self
            .sites
            .iter()
            .zip(&done_at)
            .map(|(s, &done)| {
                let (w, z) = (&s.window, &s.zone);
                let (first_opens, first_end) = first_night(w, z, self.start);
                let nights = done.map(|d| {
                    if s.bytes == 0 {
                        return 0;
                    }
                    let (mut k, mut night_end) = (1, first_end);
                    while d > night_end {
                        k += 1;
                        night_end = next_night_end(w, z, night_end);
                    }
                    k
                });
                let misses = done.is_none_or(|d| d > first_end);
                let alone = w.finish_time(self.start, s.bytes, s.rate(), z);
                let at_cap = w.finish_time(self.start, s.bytes, s.cap, z);
                let miss = misses.then(|| {
                    if alone.is_some_and(|a| a <= first_end) {
                        Miss::SharedEgress
                    } else if at_cap.is_some_and(|a| a <= first_end) {
                        Miss::RoundTrip
                    } else {
                        Miss::CapTooLow
                    }
                });
                SiteResult {
                    name: s.name.clone(),
                    cap: s.cap,
                    rtt_ms: s.rtt_ms,
                    rate: s.rate(),
                    zone: s.zone_name.clone(),
                    bytes: s.bytes,
                    first_night_opens: first_opens,
                    first_night_end: first_end,
                    first_night_open_seconds: w.open_seconds(self.start, first_end, z),
                    done_at: done,
                    nights,
                    misses_first_night: misses,
                    miss,
                    alone_done_at: alone,
                }
            })
            .collect();
        Outcome {
            start: self.start,
            end: t,
            central_egress: egress,
            sites,
            intervals,
            egress_bytes,
            peak_rate,
            peak_at,
            peak_sites,
            saturated_seconds: saturated,
        }
    }
}

/// A fleet to simulate: how many sites and masters, what they lack, their caps and zones.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub sites: usize,
    pub masters: usize,
    pub scenario: Scenario,
    /// New chunks of a monthly update, as a percentage of each master's bytes.
    pub update_percent: f64,
    pub window: Windows,
    /// Bytes per second.
    pub central_egress: u64,
    /// Site caps, bytes per second: spread log-uniformly between these.
    pub min_cap: u64,
    pub max_cap: u64,
    /// Round trips to the central server, milliseconds: spread log-uniformly between these,
    /// the longest to the sites with the lowest caps (VPN sites are the slow, far ones).
    pub min_rtt_ms: u64,
    pub max_rtt_ms: u64,
    /// The zone of every site not placed in `other_zones`.
    pub zone: (String, Zone),
    /// Zones for a few sites each: (name, zone, how many sites).
    pub other_zones: Vec<(String, Zone, usize)>,
    /// Unix seconds.
    pub start: i64,
    /// Seconds.
    pub horizon: i64,
    pub seed: u64,
}

/// A fleet built from a [`FleetSpec`]: its catalog and the simulation to run.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub catalog: Catalog,
    /// The update's new chunks ([`Catalog::update`]).
    pub update: Catalog,
    pub sim: Sim,
}

/// Builds the fleet: site `site-01`... with caps from [`log_caps`], zones placed by a seeded
/// shuffle, every site carrying every master and lacking what the scenario says.
pub fn fleet(spec: &FleetSpec) -> Fleet {
    let catalog = Catalog::standard(spec.masters);
    let update = catalog.update(spec.update_percent);
    let all = catalog.all();
    let bytes = match spec.scenario {
        Scenario::Update => update.unique_bytes(&all),
        Scenario::Seed => catalog.unique_bytes(&all),
    };
    let caps = log_caps(spec.sites, spec.min_cap, spec.max_cap, spec.seed);
    // the k-th lowest cap gets the k-th longest round trip
    let mut rtts = log_caps(spec.sites, spec.min_rtt_ms, spec.max_rtt_ms, 0);
    rtts.sort_unstable_by(|a, b| b.cmp(a));
    let mut by_cap: Vec<usize> = (0..spec.sites).collect();
    by_cap.sort_by_key(|&i| caps[i]);
    let mut rtt_of = vec![0; spec.sites];
    for (k, &i) in by_cap.iter().enumerate() {
        rtt_of[i] = rtts[k];
    }
    // zone slots: the other zones' counts first, then the default zone, shuffled
    let mut zone_of: Vec<Option<usize>> = spec
        .other_zones
        .iter()
        .enumerate()
        .flat_map(|(k, (_, _, count))| std::iter::repeat_n(Some(k), *count))
        .take(spec.sites)
        .collect();
    zone_of.resize(spec.sites, None);
    SplitMix::new(spec.seed ^ 0x5A0E_5EED).shuffle(&mut zone_of);
    let width = spec.sites.to_string().len().max(2);
    let sites = (0..spec.sites)
        .map(|i| {
            let (zone_name, zone) = match zone_of[i] {
                Some(k) => (&spec.other_zones[k].0, &spec.other_zones[k].1),
                None => (&spec.zone.0, &spec.zone.1),
            };
            Site {
                name: format!("site-{:0width$}", i + 1),
                cap: caps[i],
                zone_name: zone_name.clone(),
                zone: zone.clone(),
                window: spec.window.clone(),
                bytes,
                rtt_ms: rtt_of[i],
            }
        })
        .collect();
    Fleet {
        catalog,
        update,
        sim: Sim {
            start: spec.start,
            horizon: spec.horizon,
            central_egress: spec.central_egress,
            sites,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootcast::rate::{parse_rate, Bucket};
    use std::time::Duration;

    /// 2026-11-23 00:00:00 UTC.
    const MIDNIGHT: i64 = 1_795_392_000;

    fn at(h: i64, m: i64) -> i64 {
        MIDNIGHT + h * 3600 + m * 60
    }

    fn night() -> Windows {
        Windows::parse("22:00-06:00").unwrap()
    }

    fn site(name: &str, cap: u64, bytes: u64) -> Site {
        Site {
            name: name.into(),
            cap,
            zone_name: "UTC".into(),
            zone: Zone::utc(),
            window: night(),
            bytes,
            rtt_ms: 0,
        }
    }

    fn sim(egress: u64, sites: Vec<Site>) -> Sim {
        Sim {
            start: at(18, 0),
            horizon: 14 * 86_400,
            central_egress: egress,
            sites,
        }
    }

    /// Every transfer stays under its site's cap, inside its open window, and under the
    /// central egress; every site gets exactly its bytes; the relay's own token bucket (burst
    /// of one second) lets every second of every flow through without a wait.
    fn check_invariants(s: &Sim, o: &Outcome) {
        let mut got = vec![0u64; s.sites.len()];
        let mut buckets: Vec<Option<Bucket>> = vec![None; s.sites.len()];
        let mut last_to = vec![i64::MIN; s.sites.len()];
        for iv in &o.intervals {
            assert!(iv.to > iv.from, "{iv:?}");
            assert!(iv.rate() <= s.central_egress, "{iv:?}");
            for f in &iv.flows {
                let site = &s.sites[f.site];
                assert!(
                    f.rate <= site.rate(),
                    "{} over its cap or its round trip: {f:?}",
                    site.name
                );
                assert!(
                    f.bytes <= f.rate * (iv.to - iv.from) as u64,
                    "{}: {f:?}",
                    site.name
                );
                assert_eq!(
                    site.window.open_seconds(iv.from, iv.to, &site.zone),
                    iv.to - iv.from,
                    "{} pulled while closed: {iv:?}",
                    site.name
                );
                got[f.site] += f.bytes;
                // a new stretch of pulling (window reopened) starts with a fresh bucket
                let b = buckets[f.site].get_or_insert_with(|| Bucket::new(site.cap, site.cap, 0.0));
                if last_to[f.site] != iv.from {
                    b.reset(site.cap, iv.from as f64);
                }
                let mut left = f.bytes;
                for sec in iv.from..iv.to {
                    let n = left.min(f.rate);
                    left -= n;
                    let wait = b.take(n, (sec + 1) as f64);
                    assert!(wait < Duration::from_millis(1), "{}: {wait:?}", site.name);
                }
                last_to[f.site] = iv.to;
            }
        }
        for (i, r) in o.sites.iter().enumerate() {
            if r.done_at.is_some() {
                assert_eq!(got[i], s.sites[i].bytes, "{}", r.name);
            }
        }
        assert_eq!(o.egress_bytes, got.iter().sum::<u64>());
    }

    #[test]
    fn one_site_finishes_after_exactly_its_bytes_over_its_cap_of_open_window() {
        let cap = parse_rate("10Mbit").unwrap();
        // 10 h and a bit at the cap: the first night (8 h) and part of the second; the last
        // partial second counts whole
        for bytes in [cap * 3600 + 1, cap * 10 * 3600 + 1, 12_345_678_901] {
            let s = sim(u64::MAX, vec![site("a", cap, bytes)]);
            let o = s.run();
            let r = &o.sites[0];
            let w = night();
            let want = w.finish_time(s.start, bytes, cap, &Zone::utc()).unwrap();
            assert_eq!(r.done_at, Some(want), "{bytes}");
            assert_eq!(
                w.open_seconds(s.start, want, &Zone::utc()),
                bytes.div_ceil(cap) as i64
            );
            assert_eq!(r.alone_done_at, Some(want));
            check_invariants(&s, &o);
        }
        // 1 h at the cap: 22:00 to 23:00
        let o = sim(u64::MAX, vec![site("a", cap, cap * 3600)]).run();
        assert_eq!(o.sites[0].done_at, Some(at(23, 0)));
        assert_eq!((o.peak_rate, o.peak_at, o.peak_sites), (cap, at(22, 0), 1));
    }

    #[test]
    fn a_far_site_pulls_one_in_flight_window_per_round_trip_not_its_cap() {
        let cap = parse_rate("1Gbit").unwrap();
        let mut near = site("near", cap, cap * 3 * 3600);
        near.rtt_ms = 2;
        let mut far = site("far", cap, cap * 3 * 3600);
        far.rtt_ms = 100;
        // 2 ms: IN_FLIGHT / 2 ms is above the cap, the cap holds; 100 ms: ten windows a second
        assert_eq!(near.rate(), cap);
        assert_eq!(far.rate(), IN_FLIGHT * 10);
        assert!(far.rate() < cap);
        let s = sim(u64::MAX, vec![near, far]);
        let o = s.run();
        let by = |n: &str| o.sites.iter().find(|r| r.name == n).unwrap();
        assert_eq!(by("near").done_at, Some(at(24 + 1, 0)));
        assert!(!by("near").misses_first_night);
        // three hours of bytes at the cap take 18 h at 20 MiB/s: three nights; at its cap it
        // would fit the first
        let far = by("far");
        assert_eq!(far.rate, IN_FLIGHT * 10);
        assert!(far.misses_first_night);
        assert_eq!(far.miss, Some(Miss::RoundTrip));
        let want = night()
            .finish_time(s.start, cap * 3 * 3600, IN_FLIGHT * 10, &Zone::utc())
            .unwrap();
        assert_eq!(far.done_at, Some(want));
        assert_eq!(far.nights, Some(3));
        check_invariants(&s, &o);
    }

    #[test]
    fn a_site_that_needs_two_nights_misses_the_first() {
        let cap = parse_rate("20Mbit").unwrap();
        let s = sim(
            u64::MAX,
            vec![
                site("fits", cap, cap * 8 * 3600),
                site("two", cap, cap * 8 * 3600 + 1),
                site("three", cap, cap * 16 * 3600 + 1),
                site("nothing", cap, 0),
            ],
        );
        let o = s.run();
        let by = |n: &str| o.sites.iter().find(|r| r.name == n).unwrap();
        let first_end = at(24 + 6, 0);
        assert_eq!(by("fits").first_night_opens, at(22, 0));
        assert_eq!(by("fits").first_night_end, first_end);
        assert_eq!(by("fits").first_night_open_seconds, 8 * 3600);
        assert_eq!(by("fits").done_at, Some(first_end));
        assert_eq!(by("fits").nights, Some(1));
        assert!(!by("fits").misses_first_night);
        assert_eq!(by("fits").miss, None);
        assert_eq!(by("two").done_at, Some(at(24 + 22, 0) + 1));
        assert_eq!(by("two").nights, Some(2));
        assert!(by("two").misses_first_night);
        assert_eq!(by("two").miss, Some(Miss::CapTooLow));
        assert_eq!(by("three").nights, Some(3));
        assert_eq!(
            (by("nothing").nights, by("nothing").misses_first_night),
            (Some(0), false)
        );
        assert_eq!(o.missing().count(), 2);
        check_invariants(&s, &o);
        // not done within the horizon: misses, no nights
        let mut short = sim(u64::MAX, vec![site("slow", cap, cap * 100 * 3600)]);
        short.horizon = 3 * 86_400;
        let o = short.run();
        assert_eq!((o.sites[0].done_at, o.sites[0].nights), (None, None));
        assert!(o.sites[0].misses_first_night);
        assert_eq!(o.end, short.start + 3 * 86_400);
    }

    #[test]
    fn the_first_night_of_a_site_open_at_the_start_includes_the_open_time() {
        // push at 04:00 local: 2 h of tonight's window, then the next full night
        let mut s = sim(u64::MAX, vec![site("east", 1000, 1000 * 9 * 3600)]);
        s.start = at(4, 0);
        let o = s.run();
        let r = &o.sites[0];
        assert_eq!(
            (r.first_night_opens, r.first_night_end),
            (at(22, 0), at(24 + 6, 0))
        );
        assert_eq!(r.first_night_open_seconds, 10 * 3600);
        assert_eq!(r.done_at, Some(at(24 + 5, 0)));
        assert_eq!((r.nights, r.misses_first_night), (Some(1), false));
        check_invariants(&s, &o);
    }

    #[test]
    fn zones_shift_when_a_site_pulls() {
        // UTC+4 (a zone with one fixed offset): its night opens at 18:00 UTC
        let mut east = site("east", 1000, 1000 * 3600);
        east.zone = Zone::fixed(4 * 3600).unwrap();
        let s = sim(u64::MAX, vec![east, site("utc", 1000, 1000 * 3600)]);
        let o = s.run();
        assert_eq!(o.sites[0].done_at, Some(at(19, 0)));
        assert_eq!(o.sites[1].done_at, Some(at(23, 0)));
        assert_eq!(o.peak_sites, 1);
        check_invariants(&s, &o);
    }

    #[test]
    fn sites_share_the_central_egress() {
        let egress = parse_rate("1Gbit").unwrap();
        let cap = egress * 3 / 4;
        let bytes = cap * 3600;
        let alone = sim(egress, vec![site("a", cap, bytes)]).run().sites[0]
            .done_at
            .unwrap();
        assert_eq!(alone, at(23, 0));
        let s = sim(egress, vec![site("a", cap, bytes), site("b", cap, bytes)]);
        let o = s.run();
        for r in &o.sites {
            assert!(r.done_at.unwrap() > alone, "{r:?}");
            assert_eq!(r.alone_done_at, Some(alone));
        }
        // each gets half the egress: 2 * cap * 3600 bytes at egress take 1.5 h
        assert_eq!(o.sites[0].done_at, Some(at(23, 30)));
        assert_eq!(o.peak_rate, egress);
        assert_eq!(o.peak_sites, 2);
        assert_eq!(o.saturated_seconds, 5400);
        check_invariants(&s, &o);
        // shared so much that a site fitting the night alone misses it: SharedEgress
        let bytes = cap * 7 * 3600;
        let s = sim(egress, vec![site("a", cap, bytes), site("b", cap, bytes)]);
        let o = s.run();
        for r in &o.sites {
            assert_eq!(r.miss, Some(Miss::SharedEgress), "{r:?}");
            assert_eq!(r.nights, Some(2));
        }
        check_invariants(&s, &o);
    }

    #[test]
    fn shares_scale_caps_down_to_exactly_the_egress() {
        assert_eq!(share(&[10, 20], 100), [10, 20]);
        assert_eq!(share(&[100, 100], 100), [50, 50]);
        // scaled by 100/700: 14.29, 42.86, 42.86, rounded down 14, 42, 42; the 2 bytes/s
        // left go to the largest remainders
        assert_eq!(share(&[100, 300, 300], 100), [14, 43, 43]);
        let caps = log_caps(94, 1_250_000, 125_000_000, 3);
        let r = share(&caps, 1_250_000_000);
        assert_eq!(r.iter().sum::<u64>(), 1_250_000_000);
        assert!(r.iter().zip(&caps).all(|(r, c)| r < c));
        assert_eq!(share(&[], 5), Vec::<u64>::new());
    }

    #[test]
    fn unique_bytes_count_shared_bases_once() {
        let c = Catalog::standard(8);
        assert_eq!(c.masters.len(), 8);
        let gib: Vec<u64> = (0..8).map(|m| c.master_bytes(m) / GIB).collect();
        assert_eq!(gib, [30, 12, 26, 9, 22, 7, 18, 5]);
        assert_eq!(c.listed_bytes(&c.all()), 129 * GIB);
        // bases 14 + 3, own parts 16 + 12 + 8 + 4 and 9 + 6 + 4 + 2
        assert_eq!(c.unique_bytes(&c.all()), 78 * GIB);
        assert_eq!(c.unique_bytes(&[0, 2]), (30 + 26 - 14) * GIB);
        assert_eq!(c.unique_bytes(&[]), 0);
        assert_eq!(Catalog::standard(10).masters[8].name, "win11-lab-2");
    }

    fn spec(scenario: Scenario, seed: u64) -> FleetSpec {
        FleetSpec {
            sites: 94,
            masters: 8,
            scenario,
            update_percent: 5.0,
            window: night(),
            central_egress: parse_rate("10Gbit").unwrap(),
            min_cap: parse_rate("10Mbit").unwrap(),
            max_cap: parse_rate("1Gbit").unwrap(),
            min_rtt_ms: 5,
            max_rtt_ms: 80,
            zone: ("UTC".into(), Zone::utc()),
            other_zones: vec![("UTC+4".into(), Zone::fixed(14_400).unwrap(), 3)],
            start: at(17, 0),
            horizon: 14 * 86_400,
            seed,
        }
    }

    #[test]
    fn an_update_moves_five_percent_of_the_unique_bytes() {
        let f = fleet(&spec(Scenario::Update, 1));
        let unique = f.catalog.unique_bytes(&f.catalog.all());
        for s in &f.sim.sites {
            let ratio = s.bytes as f64 / unique as f64;
            assert!((ratio - 0.05).abs() < 0.001, "{}: {ratio}", s.name);
        }
        let o = f.sim.run();
        assert_eq!(o.sites.iter().filter(|r| r.done_at.is_some()).count(), 94);
        let ratio = o.egress_bytes as f64 / (94 * unique) as f64;
        assert!((ratio - 0.05).abs() < 0.001, "{ratio}");
        check_invariants(&f.sim, &o);
        // seeding sends every unique byte, fewer than the masters' listed sizes
        let f = fleet(&spec(Scenario::Seed, 1));
        assert!(f.sim.sites.iter().all(|s| s.bytes == unique));
        assert!(unique < f.catalog.listed_bytes(&f.catalog.all()));
        let o = f.sim.run();
        check_invariants(&f.sim, &o);
        // 78 GiB in 8 h needs ~23 Mbit/s: the slowest sites miss the first night
        assert!(o.missing().count() > 5, "{}", o.missing().count());
        assert!(o.missing().all(|r| r.cap < parse_rate("100Mbit").unwrap()));
    }

    #[test]
    fn the_fleet_is_deterministic() {
        let caps = log_caps(94, 1_250_000, 125_000_000, 7);
        let mut sorted = caps.clone();
        sorted.sort();
        assert_eq!((sorted[0], sorted[93]), (1_250_000, 125_000_000));
        assert_ne!(caps, sorted, "shuffled");
        for w in sorted.windows(2) {
            // evenly spaced on a log scale: 100^(1/93) = 1.0508 apart
            let r = w[1] as f64 / w[0] as f64;
            assert!((r - 1.0508).abs() < 0.001, "{r}");
        }
        for scenario in [Scenario::Update, Scenario::Seed] {
            let (a, b) = (fleet(&spec(scenario, 1)), fleet(&spec(scenario, 1)));
            assert_eq!(a.sim, b.sim);
            assert_eq!(a.sim.run(), b.sim.run());
            let c = fleet(&spec(scenario, 2));
            assert_ne!(a.sim, c.sim, "another seed, another fleet");
        }
        let f = fleet(&spec(Scenario::Update, 1));
        assert_eq!(
            f.sim
                .sites
                .iter()
                .filter(|s| s.zone_name == "UTC+4")
                .count(),
            3
        );
        assert_eq!(f.sim.sites[0].name, "site-01");
    }
}
