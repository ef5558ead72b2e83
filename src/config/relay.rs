//! `[relay]`: a site relay's validated settings and their checks.

use super::validate::parse_size;
use super::*;

/// A site relay's settings (`bootcast relay`).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Base URL of the server above (the central server or another relay), no trailing `/`.
    pub upstream: String,
    /// How an `https://` upstream's certificate is checked (a pin, a CA, or public CAs).
    pub upstream_tls: crate::tls::TlsClient,
    pub site: String,
    /// The site relay token.
    pub token: String,
    /// Base URL at which the site's machines reach this relay; `None`: from `advertise` or
    /// the HTTP listen address, once bound.
    pub url: Option<String>,
    /// Compressed bytes of chunks the store may hold before eviction.
    pub quota: Option<u64>,
    pub incomplete: IncompletePolicy,
    /// The central server's signing keys (`--upstream-key`); `None`: the relay pins the first
    /// key it hears ([`crate::sign::pinned`]).
    pub upstream_key: Option<crate::sign::Keys>,
}

/// What a relay answers for a version it does not hold completely yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncompletePolicy {
    /// 503: the version arrives with the push.
    Wait,
    /// Pull it through from upstream.
    Upstream,
}

impl IncompletePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            IncompletePolicy::Wait => "wait",
            IncompletePolicy::Upstream => "upstream",
        }
    }
}

impl RelayConfig {
    /// The warning to log when the upstream is plain HTTP to another machine: the site token
    /// and the boot nonces cross the network in clear (and a current server refuses the relay
    /// protocol over plain HTTP from anywhere but its own machine).
    pub fn plain_upstream_warning(&self) -> Option<String> {
        let rest = self.upstream.strip_prefix("http://")?;
        let host = rest.split('/').next().unwrap_or(rest);
        let host = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        (!loopback).then(|| {
            format!(
                "the upstream {} is plain HTTP: the site token and the PCs' boot nonces cross the network in clear, and a bootcast server refuses the relay protocol over plain HTTP from other machines; use its HTTPS URL (https://HOST:{}) with --upstream-fingerprint sha256:... as its start banner prints it",
                self.upstream,
                DEFAULT_TLS_PORT
            )
        })
    }
}

impl RawConfig {
    pub(super) fn validate_relay(&self, p: &mut dyn FnMut(String)) -> Option<RelayConfig> {
        let r = &self.relay;
        let http_url = |key: &str, v: &str, p: &mut dyn FnMut(String)| -> Option<String> {
            let v = v.trim().trim_end_matches('/');
            let rest = v
                .strip_prefix("http://")
                .or_else(|| v.strip_prefix("https://"));
            match rest {
                Some(host) if !host.is_empty() && !host.contains(['/', ' ', '?', '#']) => {
                    Some(v.to_string())
                }
                _ => {
                    p(format!(
                        "{key} = {v:?}: write the base URL, https://HOST:PORT or http://HOST:PORT (e.g. https://10.0.0.5:8443)"
                    ));
                    None
                }
            }
        };
        let upstream = match r.upstream.as_deref() {
            Some(u) => http_url("relay.upstream (--upstream)", u, p),
            None => {
                p("relay.upstream (--upstream URL) is missing: the central server (or the relay above this one) as https://HOST:8443".into());
                None
            }
        };
        let pins = r.upstream_fingerprint.as_deref().map(|list| {
            let mut fingerprints = Vec::new();
            for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                match crate::tls::Fingerprint::parse(f) {
                    Ok(fp) => fingerprints.push(fp),
                    Err(e) => p(format!("relay.upstream_fingerprint (--upstream-fingerprint): {e}")),
                }
            }
            if fingerprints.is_empty() {
                p("relay.upstream_fingerprint (--upstream-fingerprint) is empty: give sha256:HEX as upstream's start banner prints it".into());
            }
            fingerprints
        });
        let ca = r
            .upstream_ca
            .as_deref()
            .map(|path| match crate::tls::load_ca(path) {
                Ok(roots) => Some((path.to_path_buf(), roots)),
                Err(e) => {
                    p(format!("relay.upstream_ca (--upstream-ca): {e}"));
                    None
                }
            });
        let upstream_tls = match (pins, ca) {
            (Some(_), Some(_)) => {
                p("relay.upstream_fingerprint (--upstream-fingerprint) and relay.upstream_ca (--upstream-ca) are both set: give one (the pin for a self-signed certificate, the CA for one your own CA issued)".into());
                crate::tls::TlsClient::Roots
            }
            (Some(fingerprints), None) => {
                crate::tls::TlsClient::Pinned(crate::tls::Pins { fingerprints })
            }
            (None, Some(Some((path, roots)))) => crate::tls::TlsClient::Ca { path, roots },
            (None, Some(None)) | (None, None) => crate::tls::TlsClient::Roots,
        };
        if let Some(u) = &upstream {
            if u.starts_with("http://") && !matches!(upstream_tls, crate::tls::TlsClient::Roots) {
                p(format!("relay.upstream = {u:?} is plain HTTP, so no certificate is checked: give upstream's HTTPS URL (https://HOST:{DEFAULT_TLS_PORT}) with the pin or CA"));
            }
        }
        let site = match r.site.as_deref() {
            Some(s)
                if !s.is_empty()
                    && s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
            {
                Some(s.to_string())
            }
            Some(s) => {
                p(format!("relay.site (--site) = {s:?}: a site name is 1-64 characters from A-Z a-z 0-9 . _ -, as `bootcast site add` made it"));
                None
            }
            None => {
                p("relay.site (--site NAME) is missing: the site this relay serves (`bootcast site list` on the central server)".into());
                None
            }
        };
        let token = match r.token.as_deref() {
            Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(t.to_string())
            }
            Some(_) => {
                p("relay.token (--token-file, BOOTCAST_RELAY_TOKEN): the site relay token is printable ASCII without spaces, as `bootcast site add` or `bootcast site token NAME --rotate` on the central server printed it".into());
                None
            }
            None => {
                p("relay.token (--token-file FILE or BOOTCAST_RELAY_TOKEN) is missing: `bootcast site token NAME --rotate` on the central server makes one".into());
                None
            }
        };
        let url = r
            .url
            .as_deref()
            .map(|u| http_url("relay.url (--url)", u, p));
        let quota = r.quota.as_deref().map(|q| match parse_size(q) {
            Ok(n) => Some(n),
            Err(e) => {
                p(format!("relay.quota (--quota): {e}"));
                None
            }
        });
        let incomplete = match r.incomplete.as_deref() {
            None | Some("wait") => IncompletePolicy::Wait,
            Some("upstream") => IncompletePolicy::Upstream,
            Some(other) => {
                p(format!("relay.incomplete (--incomplete) = {other:?}: use \"wait\" (clients get 503 until the push brings the version) or \"upstream\" (pull it through)"));
                IncompletePolicy::Wait
            }
        };
        let upstream_key = r.upstream_key.as_deref().map(|k| match crate::sign::Keys::parse(k) {
            Ok(keys) if !keys.is_empty() => Some(keys),
            Ok(_) => {
                p("relay.upstream_key (--upstream-key) is empty: give ed25519:HEX as `bootcast key show` on the central server prints it".into());
                None
            }
            Err(e) => {
                p(format!("relay.upstream_key (--upstream-key): {e}"));
                None
            }
        });
        Some(RelayConfig {
            upstream_key: match upstream_key {
                Some(k) => Some(k?),
                None => None,
            },
            upstream: upstream?,
            upstream_tls,
            site: site?,
            token: token?,
            url: match url {
                Some(u) => Some(u?),
                None => None,
            },
            quota: match quota {
                Some(q) => Some(q?),
                None => None,
            },
            incomplete,
        })
    }
}
