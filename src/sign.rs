//! Signed versions and orders: what the central server vouches for, so that nothing between
//! it and a PC (a relay, even a compromised one, or anything on a WAN link) can make the PC
//! write a version the central server did not publish.
//!
//! The central server holds one ed25519 key ([`SigningKey`], `DATA/signing.key`, PKCS#8,
//! mode 0600, made at first start; `bootcast key show` prints its public half,
//! `bootcast key rotate` replaces it). It signs three kinds of [`Statement`]:
//! - [`Statement::Published`]: image name, version id, creation time; for every version it
//!   publishes (added by staff, or a capture once approved), sent with the manifest
//!   (`x-bootcast-signature`);
//! - [`Statement::Task`]: a reimage order: task id, MAC, image, version; in the hello answer;
//! - [`Statement::Push`]: a push order: push id, site, its versions; in the heartbeat reply.
//!
//! Orders are bound to their task or push id: an old order cannot stand for a new task (the
//! agent and the relay compare it with the task the boot is for), and no clock is involved,
//! so checks keep working while a site is cut off. Relays pin the central key
//! (`--upstream-key`, else the first one they hear, kept in `DATA/relay/upstream.key`) and
//! verify before they prestage or pass a hello answer on; agents get the key from the node
//! that boots them (`bootcast.key=` on the kernel command line) and verify before writing.
//!
//! The signed bytes are a domain tag and the fields, each as a u32 big-endian length and its
//! bytes, so no two statements share an encoding.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// The key file in the central server's data directory.
pub const KEY_FILE: &str = "signing.key";
/// Where a relay keeps the key it pinned on first contact.
pub const PINNED_FILE: &str = "relay/upstream.key";
/// Response header of a manifest: the [`Statement::Published`] signature of its version.
pub const SIGNATURE_HEADER: &str = "x-bootcast-signature";

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{what} {}: {cause}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        cause: std::io::Error,
    },
    #[error("{} is not an ed25519 key in PKCS#8 ({why}); move it away to make a new key (relays must then pin the new one)", path.display())]
    BadKeyFile { path: PathBuf, why: String },
    #[error("{0:?} is not a public key: expected ed25519: and 64 hex digits, as `bootcast key show` prints")]
    BadPublicKey(String),
    #[error("{0:?} is not a signature (128 hex digits)")]
    BadSignature(String),
    #[error("the random generator failed")]
    Random,
}

/// One ed25519 public key, written `ed25519:` and 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PublicKey {
    type Err = SignError;
    fn from_str(s: &str) -> Result<PublicKey, SignError> {
        let bad = || SignError::BadPublicKey(s.to_string());
        let h = s.trim().strip_prefix("ed25519:").ok_or_else(bad)?;
        let mut k = [0u8; 32];
        hex::decode_to_slice(h, &mut k).map_err(|_| bad())?;
        Ok(PublicKey(k))
    }
}

/// The keys a verifier accepts (several while a key is being replaced).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keys(Vec<PublicKey>);

impl Keys {
    pub fn new(keys: Vec<PublicKey>) -> Keys {
        Keys(keys)
    }

    /// Comma-separated keys (`--upstream-key`, `bootcast.key=`).
    pub fn parse(s: &str) -> Result<Keys, SignError> {
        s.split(',')
            .filter(|k| !k.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Keys)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.0
    }

    /// Whether `signature` (hex) is a valid signature of `statement` by one of the keys.
    pub fn verify(
        &self,
        statement: &Statement<'_>,
        signature: Option<&str>,
    ) -> Result<(), Refused> {
        let Some(sig) = signature else {
            return Err(Refused::Unsigned);
        };
        let mut bytes = [0u8; 64];
        hex::decode_to_slice(sig, &mut bytes).map_err(|_| Refused::Malformed)?;
        let msg = statement.encode();
        self.0
            .iter()
            .any(|k| {
                UnparsedPublicKey::new(&signature::ED25519, &k.0)
                    .verify(&msg, &bytes)
                    .is_ok()
            })
            .then_some(())
            .ok_or(Refused::Invalid)
    }
}

impl fmt::Display for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&all.join(","))
    }
}

/// Why a signature check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("it carries no signature")]
    Unsigned,
    #[error("its signature is not 128 hex digits")]
    Malformed,
    #[error("its signature does not verify against the central server's key (something between here and the central server altered or forged it)")]
    Invalid,
}

/// What the central server vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement<'a> {
    /// Version `version` (full id) of image `image`, created at `created` (Unix seconds), is
    /// published.
    Published {
        image: &'a str,
        version: &'a str,
        created: i64,
    },
    /// Task `task`: the machine `mac` writes `version` of `image`.
    Task {
        task: i64,
        mac: &'a str,
        image: &'a str,
        version: &'a str,
    },
    /// Push `push`: site `site`'s relay prestages these versions (image, version).
    Push {
        push: i64,
        site: &'a str,
        versions: Vec<(&'a str, &'a str)>,
    },
}

impl Statement<'_> {
    /// The signed bytes.
    pub fn encode(&self) -> Vec<u8> {
        fn field(out: &mut Vec<u8>, b: &[u8]) {
            out.extend((b.len() as u32).to_be_bytes());
            out.extend(b);
        }
        let mut out = Vec::new();
        match self {
            Statement::Published {
                image,
                version,
                created,
            } => {
                field(&mut out, b"bootcast/published/1");
                field(&mut out, image.as_bytes());
                field(&mut out, version.as_bytes());
                field(&mut out, &created.to_be_bytes());
            }
            Statement::Task {
                task,
                mac,
                image,
                version,
            } => {
                field(&mut out, b"bootcast/task/1");
                field(&mut out, &task.to_be_bytes());
                field(&mut out, mac.as_bytes());
                field(&mut out, image.as_bytes());
                field(&mut out, version.as_bytes());
            }
            Statement::Push {
                push,
                site,
                versions,
            } => {
                field(&mut out, b"bootcast/push/1");
                field(&mut out, &push.to_be_bytes());
                field(&mut out, site.as_bytes());
                field(&mut out, &(versions.len() as u64).to_be_bytes());
                for (image, version) in versions {
                    field(&mut out, image.as_bytes());
                    field(&mut out, version.as_bytes());
                }
            }
        }
        out
    }
}

/// The central server's signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public())
    }
}

impl SigningKey {
    /// `DATA/signing.key`, made (mode 0600) if there is none; true when it was made now.
    pub fn load_or_create(data: &Path) -> Result<(SigningKey, bool), SignError> {
        let path = data.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(der) => Ok((Self::from_der(&der, &path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let der = Self::generate()?;
                std::fs::create_dir_all(data)
                    .and_then(|()| write_private(&path, &der))
                    .map_err(|cause| SignError::Io {
                        what: "writing",
                        path: path.clone(),
                        cause,
                    })?;
                Ok((Self::from_der(&der, &path)?, true))
            }
            Err(cause) => Err(SignError::Io {
                what: "reading",
                path,
                cause,
            }),
        }
    }

    /// An existing key only (`bootcast key show`): `None` when there is none yet.
    pub fn load(data: &Path) -> Result<Option<SigningKey>, SignError> {
        let path = data.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(der) => Self::from_der(&der, &path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(cause) => Err(SignError::Io {
                what: "reading",
                path,
                cause,
            }),
        }
    }

    /// Replaces the key: the old file is kept as `signing.key.retired-UNIX`; returns the new
    /// key and the old file's new path (if there was one).
    pub fn rotate(data: &Path, now: i64) -> Result<(SigningKey, Option<PathBuf>), SignError> {
        let path = data.join(KEY_FILE);
        let retired = data.join(format!("{KEY_FILE}.retired-{now}"));
        let moved = match std::fs::rename(&path, &retired) {
            Ok(()) => Some(retired),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(cause) => {
                return Err(SignError::Io {
                    what: "moving aside",
                    path,
                    cause,
                })
            }
        };
        let (key, _) = Self::load_or_create(data)?;
        Ok((key, moved))
    }

    fn generate() -> Result<Vec<u8>, SignError> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| SignError::Random)
    }

    fn from_der(der: &[u8], path: &Path) -> Result<SigningKey, SignError> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(|pair| SigningKey { pair })
            .map_err(|e| SignError::BadKeyFile {
                path: path.to_path_buf(),
                why: e.to_string(),
            })
    }

    /// A fresh key held in memory only (tests, and tools that sign nothing kept).
    pub fn ephemeral() -> Result<SigningKey, SignError> {
        let der = Self::generate()?;
        Self::from_der(&der, Path::new("(memory)"))
    }

    pub fn public(&self) -> PublicKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(k)
    }

    /// The signature of `statement`, in hex (ed25519 is deterministic: the same statement
    /// always gets the same signature).
    pub fn sign(&self, statement: &Statement<'_>) -> String {
        hex::encode(self.pair.sign(&statement.encode()).as_ref())
    }
}

/// The keys a relay in `data` pinned: `configured` (`--upstream-key`) if given, else the
/// pinned file's; `None` when neither (the relay pins the first key it hears).
pub fn pinned(data: &Path, configured: Option<&Keys>) -> Result<Option<Keys>, SignError> {
    if let Some(k) = configured.filter(|k| !k.is_empty()) {
        return Ok(Some(k.clone()));
    }
    let path = data.join(PINNED_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => Keys::parse(&s.replace('\n', ",")).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(cause) => Err(SignError::Io {
            what: "reading",
            path,
            cause,
        }),
    }
}

/// Keeps `keys` as the relay's pinned keys (first contact).
pub fn pin(data: &Path, keys: &Keys) -> Result<(), SignError> {
    let path = data.join(PINNED_FILE);
    let text: String = keys.keys().iter().map(|k| format!("{k}\n")).collect();
    std::fs::create_dir_all(path.parent().expect("a file in a directory"))
        .and_then(|()| write_private(&path, text.as_bytes()))
        .map_err(|cause| SignError::Io {
            what: "writing",
            path,
            cause,
        })
}

/// Writes `bytes` to `path`, readable by its owner only, atomically (temp file, fsync,
/// rename).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task<'a>(task: i64, version: &'a str) -> Statement<'a> {
        Statement::Task {
            task,
            mac: "52:54:00:aa:bb:cc",
            image: "win11",
            version,
        }
    }

    #[test]
    fn a_signature_verifies_only_for_its_statement_and_key() {
        let (k, other) = (
            SigningKey::ephemeral().unwrap(),
            SigningKey::ephemeral().unwrap(),
        );
        let keys = Keys::new(vec![k.public()]);
        let v = "ab".repeat(32);
        let sig = k.sign(&task(7, &v));
        assert_eq!(sig.len(), 128);
        assert_eq!(sig, k.sign(&task(7, &v)), "deterministic");
        assert_eq!(keys.verify(&task(7, &v), Some(&sig)), Ok(()));
        // another task, another version, another key, no signature, damaged hex
        assert_eq!(keys.verify(&task(8, &v), Some(&sig)), Err(Refused::Invalid));
        assert_eq!(
            keys.verify(&task(7, &"cd".repeat(32)), Some(&sig)),
            Err(Refused::Invalid)
        );
        assert_eq!(
            Keys::new(vec![other.public()]).verify(&task(7, &v), Some(&sig)),
            Err(Refused::Invalid)
        );
        assert_eq!(keys.verify(&task(7, &v), None), Err(Refused::Unsigned));
        assert_eq!(
            keys.verify(&task(7, &v), Some(&sig[1..])),
            Err(Refused::Malformed)
        );
        // either of two keys (rotation)
        let both = Keys::parse(&format!("{},{}", other.public(), k.public())).unwrap();
        assert_eq!(both.verify(&task(7, &v), Some(&sig)), Ok(()));
    }

    #[test]
    fn statements_never_share_an_encoding() {
        let v = "ab".repeat(32);
        let all = [
            task(1, &v).encode(),
            Statement::Published {
                image: "win11",
                version: &v,
                created: 1,
            }
            .encode(),
            Statement::Push {
                push: 1,
                site: "s",
                versions: vec![("win11", &v)],
            }
            .encode(),
            // fields cannot slide into each other
            Statement::Push {
                push: 1,
                site: "s",
                versions: vec![("win1", &v)],
            }
            .encode(),
            Statement::Push {
                push: 1,
                site: "sw",
                versions: vec![("in11", &v)],
            }
            .encode(),
        ];
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
    }

    #[test]
    fn keys_parse_and_print() {
        let k = SigningKey::ephemeral().unwrap().public();
        let s = k.to_string();
        assert!(s.starts_with("ed25519:") && s.len() == 8 + 64, "{s}");
        assert_eq!(s.parse::<PublicKey>().unwrap(), k);
        for bad in ["", "ed25519:", "ed25519:zz", &s[8..], "rsa:00"] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad:?}");
        }
        assert_eq!(Keys::parse(&format!("{s}, {s}")).unwrap().keys().len(), 2);
    }

    #[test]
    fn the_key_file_is_made_once_private_and_rotates() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, made) = SigningKey::load_or_create(dir.path()).unwrap();
        assert!(made);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, made) = SigningKey::load_or_create(dir.path()).unwrap();
        assert!(!made);
        assert_eq!(again.public(), a.public());
        let (b, old) = SigningKey::rotate(dir.path(), 5).unwrap();
        assert_ne!(b.public(), a.public());
        assert!(old.unwrap().ends_with("signing.key.retired-5"));
        assert_eq!(
            SigningKey::load(dir.path()).unwrap().unwrap().public(),
            b.public()
        );
        std::fs::write(dir.path().join(KEY_FILE), b"junk").unwrap();
        let e = SigningKey::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not an ed25519 key"), "{e}");
    }
}
