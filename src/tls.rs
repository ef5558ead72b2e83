//! TLS (rustls with the ring provider): the server's certificate, fingerprints, and the one
//! builder of every outbound client's TLS configuration.
//!
//! **Server side.** `serve` and `relay` serve HTTPS with the certificate and key of `[tls] cert`
//! and `key` (PEM files), or, when none are configured, a self-signed certificate made at
//! the first start in `DATA/tls/cert.pem` and `DATA/tls/key.pem` (mode 0600) and reused at
//! every later start ([`server_cert`]). Its [`Fingerprint`] (`sha256:HEX` of the DER end-entity
//! certificate) is printed in the start banner: relays pin it.
//!
//! **Client side.** [`client_config`] makes the `rustls::ClientConfig` of every outbound
//! client (relay upstream, `image export --from`, webhooks, GLPI) from a validated
//! [`TlsClient`]:
//! - [`TlsClient::Roots`]: public CAs (Mozilla's roots, built in, and the system's);
//! - [`TlsClient::Pinned`]: the server's end-entity certificate must have one of the pinned
//!   fingerprints (self-signed certificates; no CA, name or expiry check, the handshake
//!   signature is still verified with the provider's algorithms);
//! - [`TlsClient::Ca`]: a certificate chaining to one of the given CA certificates (a
//!   site's own CA), name checked.
//!
//! A pin that does not match fails the handshake with [`PinMismatch`], whose message says what
//! the server presented and what to pin; a certificate no root vouches for fails with the same
//! kind of hint ([`Untrusted`]).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use sha2::{Digest, Sha256};

/// Why a TLS setting cannot be used; each names the file or value and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {cause}")]
    Read {
        what: &'static str,
        path: PathBuf,
        cause: String,
    },
    #[error("{path} holds no {what} in PEM form (-----BEGIN ...-----); give a PEM file")]
    Empty { what: &'static str, path: PathBuf },
    #[error("cannot write the self-signed certificate into {dir}: {cause}")]
    Write { dir: PathBuf, cause: std::io::Error },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    #[error("the TLS key {path} can be read by other users (mode {mode:o}); run `chmod 600 {path}`, and if others may have read it replace the key and its certificate (the self-signed pair: delete DATA/tls/ and restart)")]
    KeyExposed { path: PathBuf, mode: u32 },
    #[error("{present} is there but {missing} is not: delete {present} to have a new self-signed certificate made at the next start, or put the missing file back")]
    HalfPair { present: PathBuf, missing: PathBuf },
    #[error("the certificate {cert} and the key {key} cannot serve TLS: {cause} (is the key the certificate's?)")]
    Server {
        cert: PathBuf,
        key: PathBuf,
        cause: rustls::Error,
    },
    #[error("TLS client configuration: {0}")]
    Client(String),
}

/// The SHA-256 of a DER certificate: what a relay pins.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// `sha256:HEX` (64 hex digits, either case; `:` between byte pairs allowed, as openssl
    /// prints them), or the bare hex.
    pub fn parse(s: &str) -> Result<Fingerprint, String> {
        let t = s.trim();
        let hex_part = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .or_else(|| t.strip_prefix("sha256//"))
            .unwrap_or(t);
        let digits: String = hex_part.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&digits).ok().filter(|b| b.len() == 32);
        match bytes {
            Some(b) => {
                let mut a = [0u8; 32];
                a.copy_from_slice(&b);
                Ok(Fingerprint(a))
            }
            None => Err(format!(
                "{s:?} is not a certificate fingerprint: write sha256: and the 64 hex digits of the SHA-256 of the certificate, as the server's start banner prints it"
            )),
        }
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How an outbound client checks the server's certificate (validated once, with the
/// configuration).
#[derive(Debug, Clone)]
pub enum TlsClient {
    /// Public CAs: the built-in Mozilla roots and the system's.
    Roots,
    /// The server's end-entity certificate must be one of these.
    Pinned(Pins),
    /// Certificates issued by these CAs (PEM file `path`), names checked.
    Ca {
        path: PathBuf,
        roots: Vec<CertificateDer<'static>>,
    },
}

/// Pinned fingerprints.
#[derive(Debug, Clone)]
pub struct Pins {
    pub fingerprints: Vec<Fingerprint>,
}

/// What a client's hints call the setting and the server (relay upstream, `image export`).
#[derive(Debug, Clone, Copy)]
pub struct Naming {
    /// "upstream", "the server"
    pub who: &'static str,
    /// "--upstream-fingerprint", "--fingerprint"; `None`: no pin can be set (webhooks).
    pub flag: Option<&'static str>,
}

impl Naming {
    pub const UPSTREAM: Naming = Naming {
        who: "upstream",
        flag: Some("--upstream-fingerprint"),
    };
    pub const EXPORT: Naming = Naming {
        who: "the server",
        flag: Some("--fingerprint"),
    };
    /// Webhooks, GLPI: public CAs and the system's store only.
    pub const PUBLIC: Naming = Naming {
        who: "the server",
        flag: None,
    };
}

/// The server presented a certificate other than the pinned one(s). (Its `Debug` is its
/// message too: rustls shows the cause of a certificate error with `Debug`.)
#[derive(Clone)]
pub struct PinMismatch {
    pub presented: Fingerprint,
    pub expected: Vec<Fingerprint>,
    pub naming: Naming,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expected: Vec<String> = self.expected.iter().map(|e| e.to_string()).collect();
        write!(
            f,
            "{} presented certificate {}, expected {}; if the server's certificate changed, pin the new one with {} {}",
            self.naming.who,
            self.presented,
            expected.join(" or "),
            self.naming.flag.unwrap_or("the pin setting"),
            self.presented
        )
    }
}

impl fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for PinMismatch {}

/// The server's certificate is not one the roots vouch for (`Debug` as `Display`).
#[derive(Clone)]
pub struct Untrusted {
    pub presented: Fingerprint,
    pub cause: rustls::Error,
    pub naming: Naming,
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.naming.flag {
            Some(flag) => write!(
                f,
                "{} presented certificate {} which is not trusted here ({}); if it is the server's own (self-signed: its start banner prints the fingerprint), pin it with {flag} {}",
                self.naming.who, self.presented, self.cause, self.presented
            ),
            None => write!(
                f,
                "{} presented certificate {} which is not trusted here ({}); give that server a certificate from a public CA, or add its CA to this machine's store (/usr/local/share/ca-certificates, then update-ca-certificates)",
                self.naming.who, self.presented, self.cause
            ),
        }
    }
}

impl fmt::Debug for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Untrusted {}

/// The provider every TLS endpoint here uses.
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The client configuration of webhooks and GLPI forwarding: public CAs and the system's.
pub fn public_client_config() -> rustls::ClientConfig {
    client_config(&TlsClient::Roots, Naming::PUBLIC)
        .expect("the built-in roots make a valid configuration")
}

/// Mozilla's roots (built in) and the system's, read once.
fn public_roots() -> Arc<rustls::RootCertStore> {
    static R: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    R.get_or_init(|| {
        let mut store = rustls::RootCertStore::empty();
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        // the system's store, where there is one (none in the boot environment)
        let native = rustls_native_certs::load_native_certs();
        let _ = store.add_parsable_certificates(native.certs);
        Arc::new(store)
    })
    .clone()
}

/// The client configuration for `tls`; `naming` words the hints of a refusal.
pub fn client_config(tls: &TlsClient, naming: Naming) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Client(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match tls {
        TlsClient::Pinned(pins) => Arc::new(PinVerifier {
            pins: pins.fingerprints.clone(),
            naming,
            algorithms: provider().signature_verification_algorithms,
        }),
        TlsClient::Roots => explained(public_roots(), naming)?,
        TlsClient::Ca { path, roots } => {
            let mut store = rustls::RootCertStore::empty();
            for c in roots {
                store.add(c.clone()).map_err(|e| {
                    TlsError::Client(format!(
                        "a CA certificate of {} cannot be used: {e}",
                        path.display()
                    ))
                })?;
            }
            explained(Arc::new(store), naming)?
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn explained(
    roots: Arc<rustls::RootCertStore>,
    naming: Naming,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Client(e.to_string()))?;
    Ok(Arc::new(Explained { inner, naming }))
}

/// Accepts exactly the pinned end-entity certificates; the handshake's signatures are
/// verified as usual.
#[derive(Debug)]
struct PinVerifier {
    pins: Vec<Fingerprint>,
    naming: Naming,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of(end_entity);
        if self.pins.contains(&presented) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch {
                    presented,
                    expected: self.pins.clone(),
                    naming: self.naming,
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// webpki's verifier, whose refusals say what the server presented and how to pin it.
#[derive(Debug)]
struct Explained {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    naming: Naming,
}

impl ServerCertVerifier for Explained {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|cause| match cause {
                rustls::Error::InvalidCertificate(_) => rustls::Error::InvalidCertificate(
                    CertificateError::Other(OtherError(Arc::new(Untrusted {
                        presented: Fingerprint::of(end_entity),
                        cause,
                        naming: self.naming,
                    }))),
                ),
                other => other,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The cause a verifier here gave for refusing a certificate ([`PinMismatch`] or
/// [`Untrusted`]), found in an error's chain of causes (a reqwest error, an I/O error).
fn refusal<T: std::error::Error + Clone + 'static>(
    e: &(dyn std::error::Error + 'static),
) -> Option<T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(p) = err.downcast_ref::<T>() {
            return Some(p.clone());
        }
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(o))) =
            err.downcast_ref::<rustls::Error>()
        {
            if let Some(p) = o.0.downcast_ref::<T>() {
                return Some(p.clone());
            }
        }
        // an I/O error's `source` skips the error it wraps: look into it
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// The [`PinMismatch`] in an error's chain, if a pin did not match.
pub fn pin_mismatch(e: &(dyn std::error::Error + 'static)) -> Option<PinMismatch> {
    refusal::<PinMismatch>(e)
}

/// What to tell the user when an error's chain holds a certificate refusal of ours (a pin
/// that did not match, a certificate no root vouches for): the message alone, without the
/// layers of the HTTP client around it.
pub fn explain(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    pin_mismatch(e)
        .map(|p| p.to_string())
        .or_else(|| refusal::<Untrusted>(e).map(|u| u.to_string()))
}

/// Reads the CA certificates of a PEM file (`--upstream-ca`, `--ca`).
pub fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = read_certs(path, "CA certificates")?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what: "certificate",
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |cause: String| TlsError::Read {
        what,
        path: path.to_path_buf(),
        cause,
    };
    CertificateDer::pem_file_iter(path)
        .map_err(|e| read(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(e.to_string()))
}

/// The server's certificate, ready to serve.
pub struct ServerCert {
    pub config: Arc<rustls::ServerConfig>,
    /// Of the end-entity certificate (the first of the chain).
    pub fingerprint: Fingerprint,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// Made by bootcast (self-signed), not configured.
    pub self_signed: bool,
    /// Made at this start.
    pub created: bool,
}

/// `DATA/tls`: the self-signed certificate and its key.
pub fn self_signed_dir(data: &Path) -> PathBuf {
    data.join("tls")
}

/// The configured certificate and key (`files`), or the self-signed pair of `DATA/tls`, made
/// now (for `names`: host names and addresses it is for) if there is none.
pub fn server_cert(
    files: Option<(&Path, &Path)>,
    data: &Path,
    names: &[String],
) -> Result<ServerCert, TlsError> {
    let (cert_path, key_path, self_signed, created) = match files {
        Some((c, k)) => (c.to_path_buf(), k.to_path_buf(), false, false),
        None => {
            let dir = self_signed_dir(data);
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            let created = match (c.exists(), k.exists()) {
                (true, true) => false,
                (false, false) => {
                    make_self_signed(&dir, &c, &k, names)?;
                    true
                }
                (true, false) => {
                    return Err(TlsError::HalfPair {
                        present: c,
                        missing: k,
                    })
                }
                (false, true) => {
                    return Err(TlsError::HalfPair {
                        present: k,
                        missing: c,
                    })
                }
            };
            (c, k, true, created)
        }
    };
    let chain = read_certs(&cert_path, "the TLS certificate")?;
    let Some(first) = chain.first() else {
        return Err(TlsError::Empty {
            what: "certificate",
            path: cert_path,
        });
    };
    let fingerprint = Fingerprint::of(first);
    if let Ok(meta) = std::fs::metadata(&key_path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TlsError::KeyExposed {
                path: key_path,
                mode,
            });
        }
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "private key",
            path: key_path.clone(),
        },
        e => TlsError::Read {
            what: "the TLS key",
            path: key_path.clone(),
            cause: e.to_string(),
        },
    })?;
    let server = |cause| TlsError::Server {
        cert: cert_path.clone(),
        key: key_path.clone(),
        cause,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(server)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(server)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerCert {
        config: Arc::new(config),
        fingerprint,
        cert_path,
        key_path,
        self_signed,
        created,
    })
}

/// Makes a self-signed certificate (ECDSA P-256) for `names` in `dir`: the key with mode
/// 0600, each file written whole then renamed into place, the key first.
fn make_self_signed(dir: &Path, cert: &Path, key: &Path, names: &[String]) -> Result<(), TlsError> {
    let write = |cause| TlsError::Write {
        dir: dir.to_path_buf(),
        cause,
    };
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("bootcast {host}").trim().to_string(),
    );
    let pair = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let made = params
        .self_signed(&pair)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(write)?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let put = |path: &Path, text: &str, mode: u32| -> std::io::Result<()> {
        let tmp = path.with_extension("pem.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    put(key, &pair.serialize_pem(), 0o600).map_err(write)?;
    put(cert, &made.pem(), 0o644).map_err(write)?;
    // the renames themselves durable
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_the_forms_people_paste() {
        let f = Fingerprint::of(b"certificate");
        let s = f.to_string();
        assert!(s.starts_with("sha256:") && s.len() == 7 + 64, "{s}");
        assert_eq!(Fingerprint::parse(&s).unwrap(), f);
        assert_eq!(Fingerprint::parse(&s.to_uppercase()).unwrap(), f);
        let colons: Vec<String> = f.0.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(Fingerprint::parse(&colons.join(":")).unwrap(), f);
        let e = Fingerprint::parse("sha256:abcd").unwrap_err();
        assert!(e.contains("64 hex digits"), "{e}");
    }

    #[test]
    fn the_self_signed_certificate_is_made_once_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let a = server_cert(None, dir.path(), &names).unwrap();
        assert!(a.self_signed && a.created);
        let mode = std::fs::metadata(&a.key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let pem = std::fs::read(&a.cert_path).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        assert_eq!(Fingerprint::of(&der), a.fingerprint);
        // reused at the next start
        let b = server_cert(None, dir.path(), &names).unwrap();
        assert!(!b.created);
        assert_eq!(b.fingerprint, a.fingerprint);
        // a key others can read is refused
        std::fs::set_permissions(&a.key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = server_cert(None, dir.path(), &names)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("chmod 600"), "{e}");
        // half a pair is named
        std::fs::remove_file(&a.key_path).unwrap();
        let e = server_cert(None, dir.path(), &names)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cert.pem") && e.contains("key.pem"), "{e}");
    }

    #[test]
    fn a_pin_mismatch_says_what_was_presented_and_what_to_pin() {
        let presented = Fingerprint::of(b"new");
        let expected = Fingerprint::of(b"old");
        let v = PinVerifier {
            pins: vec![expected],
            naming: Naming::UPSTREAM,
            algorithms: provider().signature_verification_algorithms,
        };
        let cert = CertificateDer::from(b"new".to_vec());
        let e = v
            .verify_server_cert(
                &cert,
                &[],
                &ServerName::try_from("localhost").unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_err();
        let io = std::io::Error::other(e);
        let m = pin_mismatch(&io).expect("found in the chain");
        assert_eq!(m.presented, presented);
        let text = m.to_string();
        assert_eq!(
            text,
            format!("upstream presented certificate {presented}, expected {expected}; if the server's certificate changed, pin the new one with --upstream-fingerprint {presented}")
        );
        assert!(io.to_string().contains(&text), "{io}");
    }

    /// Through reqwest and a real handshake, the refusals are found in the error's chain.
    #[tokio::test]
    async fn a_client_sees_why_its_handshake_was_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = server_cert(None, dir.path(), &["localhost".into()]).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(cert.config.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let _ = acceptor.accept(s).await;
            }
        });
        let attempt = |tls: TlsClient| async move {
            let config = client_config(&tls, Naming::UPSTREAM).unwrap();
            let client = reqwest::Client::builder()
                .use_preconfigured_tls(config)
                .build()
                .unwrap();
            client
                .get(format!("https://{addr}/"))
                .send()
                .await
                .unwrap_err()
        };
        let wrong = Fingerprint([0; 32]);
        let e = attempt(TlsClient::Pinned(Pins {
            fingerprints: vec![wrong],
        }))
        .await;
        let m = pin_mismatch(&e).expect("a pin mismatch in the chain");
        assert_eq!((m.presented, &m.expected), (cert.fingerprint, &vec![wrong]));
        assert_eq!(explain(&e), Some(m.to_string()));
        let e = attempt(TlsClient::Roots).await;
        assert!(pin_mismatch(&e).is_none());
        let why = explain(&e).expect("an untrusted certificate in the chain");
        assert!(
            why.contains(&format!(
                "pin it with --upstream-fingerprint {}",
                cert.fingerprint
            )),
            "{why}"
        );
    }
}
