//! The relay's link to the server above it.
//!
//! Every chunk the relay reads from upstream (prestage and pull-through alike) comes through
//! one [`HttpSource`] whose batch bodies are read through one [`Limiter`]: a single token
//! bucket for all of the relay's upstream connections, so the site's cap holds for the link,
//! not per connection. The boot environment files of the file cache wait on the same bucket.
//! Heartbeats, manifests, boot scripts and agent reports are small and not counted against
//! the cap.
//!
//! An `https://` upstream's certificate is checked as `[relay] upstream_fingerprint` or
//! `upstream_ca` say (else against the public CAs), by both clients: one TLS configuration
//! ([`crate::tls::client_config`]).
//!
//! Every request carries the relay's site token ([`crate::proto::relay::RELAY_TOKEN_HEADER`]) and
//! URL ([`crate::proto::relay::RELAY_URL_HEADER`]), so the server above knows who pulls (and a relay
//! above passes manifests through to a relay below whatever its own policy).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::RelayConfig;
use crate::metrics::{Counter, Gauge};
use crate::rate::SharedBucket;
use crate::store::source::{HttpSource, Throttle};
use crate::store::StoreError;

use crate::proto::relay::{RELAY_TOKEN_HEADER, RELAY_URL_HEADER};

/// The relay's cap: one token bucket, or no cap.
pub struct Limiter {
    bucket: SharedBucket,
    /// Bytes per second; 0: no cap.
    rate: AtomicU64,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            bucket: SharedBucket::new(1),
            rate: AtomicU64::new(0),
        }
    }
}

impl Limiter {
    /// Sets the cap (`None`: none); a change forgets the bucket's credit and debt.
    pub fn set(&self, rate: Option<u64>) {
        let r = rate.unwrap_or(0);
        if self.rate.swap(r, Ordering::Relaxed) != r {
            if r > 0 {
                self.bucket.set_rate(r);
            }
            tracing::info!(
                "upstream cap: {}",
                rate.map_or("none".to_string(), crate::rate::format_rate)
            );
        }
    }

    pub fn rate(&self) -> Option<u64> {
        Some(self.rate.load(Ordering::Relaxed)).filter(|r| *r > 0)
    }

    /// Takes `n` bytes; how long the caller must wait before they pass.
    pub fn reserve(&self, n: u64) -> Duration {
        if self.rate.load(Ordering::Relaxed) == 0 {
            Duration::ZERO
        } else {
            self.bucket.reserve(n)
        }
    }
}

impl Throttle for Limiter {
    fn take(&self, n: u64) {
        let wait = self.reserve(n);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// The link upstream: the throttled chunk source, an async client for the rest, counters.
pub struct Link {
    /// The upstream's base URL.
    pub base: String,
    /// Chunks and manifests (blocking: use from threads or `spawn_blocking`).
    pub source: HttpSource,
    /// Heartbeats, proxied requests, file cache.
    pub client: reqwest::Client,
    pub limiter: Arc<Limiter>,
    /// Compressed chunk bytes received from upstream (prestage and pull-through, rejected
    /// frames included).
    pub upstream_bytes: Counter,
    /// Upstream chunks that failed verification.
    pub rejected: Counter,
    /// Compressed bytes of the chunks in the relay's store: listed at start, then kept up to
    /// date by what the relay stores and evicts (and set again by each eviction's listing).
    pub cache_bytes: Gauge,
}

impl Link {
    /// Blocking (makes a blocking HTTP client).
    pub fn new(config: &RelayConfig, url: &str) -> Result<Link, StoreError> {
        let limiter = Arc::new(Limiter::default());
        let headers = [
            (RELAY_TOKEN_HEADER, config.token.clone()),
            (RELAY_URL_HEADER, url.to_string()),
        ];
        let tls = crate::tls::client_config(&config.upstream_tls, crate::tls::Naming::UPSTREAM)
            .map_err(|e| StoreError::Fetch {
                url: config.upstream.clone(),
                reason: e.to_string(),
            })?;
        let source = HttpSource::with_options(
            &config.upstream,
            tls.clone(),
            &headers,
            Some(limiter.clone() as _),
        )?;
        let mut defaults = reqwest::header::HeaderMap::new();
        for (name, value) in &headers {
            if let Ok(v) = reqwest::header::HeaderValue::from_str(value) {
                defaults.insert(*name, v);
            }
        }
        // a request that sets these headers itself (one passed on for a relay below) keeps
        // its own
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .default_headers(defaults)
            .build()
            .map_err(|e| StoreError::Fetch {
                url: config.upstream.clone(),
                reason: format!("cannot make an HTTP client: {e}"),
            })?;
        Ok(Link {
            base: config.upstream.clone(),
            source,
            client,
            limiter,
            upstream_bytes: Counter::default(),
            rejected: Counter::default(),
            cache_bytes: Gauge::default(),
        })
    }

    /// `BASE{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}
