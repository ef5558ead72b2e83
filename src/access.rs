//! Who may do what on the staff API and console: roles, the sites an operator is given, what
//! each route needs ([`Need`]), and the secrets staff hold (argon2 password hashes, personal
//! tokens). No I/O here: `db::staff` stores accounts, `http::staff` checks every request.
//!
//! | role | may |
//! |---|---|
//! | `admin` | everything |
//! | `operator` | read and change their sites' hosts, groups, tasks, rules and relays; read images and pushes |
//! | `viewer` | read everything, change nothing |

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod ldap;

/// A staff member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown role {0:?}: say admin, operator or viewer")]
pub struct BadRole(pub String);

impl FromStr for Role {
    type Err = BadRole;
    fn from_str(s: &str) -> Result<Role, BadRole> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            _ => Err(BadRole(s.to_string())),
        }
    }
}

/// What a staff route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any staff member; an operator sees only their sites' part of the answer.
    Read,
    /// A change within sites: admins, and operators for their own sites (the handler checks
    /// the sites with the caller's [`Scope`]).
    SiteChange,
    /// A change of region-wide things (images, pushes, users, relays' tokens): admins only.
    Admin,
}

/// The sites a caller's reads and changes are limited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every site, and the hosts of none.
    All,
    /// These sites only.
    Sites(Vec<String>),
}

impl Scope {
    /// May the caller see or change what belongs to `site` (`None`: a host of no site, which
    /// only region-wide callers may touch)?
    pub fn allows(&self, site: Option<&str>) -> bool {
        match (self, site) {
            (Scope::All, _) => true,
            (Scope::Sites(s), Some(site)) => s.iter().any(|x| x == site),
            (Scope::Sites(_), None) => false,
        }
    }

    /// The sites named, or `None` for every one.
    pub fn sites(&self) -> Option<&[String]> {
        match self {
            Scope::All => None,
            Scope::Sites(s) => Some(s),
        }
    }
}

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The server's API token (`DATA/api-token`): the first admin's, for scripts.
    ServerToken,
    /// A personal API token (`bootcast user token`).
    Token,
    /// A browser session (cookie), whose changes carry the session's CSRF token.
    Session,
}

/// The staff member behind a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub user: String,
    pub role: Role,
    /// An operator's sites (empty for the other roles).
    pub sites: Vec<String>,
    pub via: Via,
}

/// The name the server's API token acts as in the audit trail.
pub const SERVER_TOKEN_USER: &str = "admin";

impl Principal {
    /// The holder of the server's API token.
    pub fn server_token() -> Principal {
        Principal {
            user: SERVER_TOKEN_USER.into(),
            role: Role::Admin,
            sites: Vec::new(),
            via: Via::ServerToken,
        }
    }

    /// Does the role allow what the route needs? (Which sites: [`Principal::scope`].)
    pub fn may(&self, need: Need) -> bool {
        match need {
            Need::Read => true,
            Need::SiteChange => self.role >= Role::Operator,
            Need::Admin => self.role == Role::Admin,
        }
    }

    /// The sites this caller reads and changes.
    pub fn scope(&self) -> Scope {
        match self.role {
            Role::Operator => Scope::Sites(self.sites.clone()),
            Role::Admin | Role::Viewer => Scope::All,
        }
    }
}

/// Sites as stored (`a,b`): names in order, no empties.
pub fn parse_sites(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// A user name staff can type and logs can show: 1-64 of `a-z A-Z 0-9 . _ @ -`.
pub fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("a password needs at least {MIN_PASSWORD} characters")]
    TooShort,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 10;

/// An argon2id hash (PHC string, its own random salt) of `password`.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use std::io::Read;
    if password.chars().count() < MIN_PASSWORD {
        return Err(PasswordError::TooShort);
    }
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| PasswordError::Hash(format!("no random salt: {e}")))?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| PasswordError::Hash(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Does `password` match the stored `hash`? A damaged hash matches nothing.
pub fn check_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    match PasswordHash::new(hash) {
        Ok(h) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// Personal tokens start with this, so a leaked one is recognisable (secret scanners).
pub const TOKEN_PREFIX: &str = "bct_";

/// What is stored of a token or session secret: its SHA-256, hex. The secrets are 256 random
/// bits, so a plain hash is enough (no salt, no slow hash) and lookups stay indexed.
pub fn secret_hash(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_what_the_table_says() {
        let p = |role, sites: &[&str]| Principal {
            user: "u".into(),
            role,
            sites: sites.iter().map(|s| s.to_string()).collect(),
            via: Via::Session,
        };
        let admin = p(Role::Admin, &[]);
        let op = p(Role::Operator, &["lycee"]);
        let viewer = p(Role::Viewer, &[]);
        for need in [Need::Read, Need::SiteChange, Need::Admin] {
            assert!(admin.may(need));
        }
        assert!(op.may(Need::Read) && op.may(Need::SiteChange) && !op.may(Need::Admin));
        assert!(viewer.may(Need::Read) && !viewer.may(Need::SiteChange));
        assert!(!viewer.may(Need::Admin));
        assert!(op.scope().allows(Some("lycee")));
        assert!(!op.scope().allows(Some("college")));
        assert!(!op.scope().allows(None));
        assert!(viewer.scope().allows(None) && admin.scope().allows(Some("x")));
        assert_eq!("operator".parse(), Ok(Role::Operator));
        assert!("root"
            .parse::<Role>()
            .unwrap_err()
            .to_string()
            .contains("admin"));
        assert_eq!(parse_sites(" a, ,b,"), vec!["a", "b"]);
        assert!(valid_user_name("j.dupont@region") && !valid_user_name("a b"));
        assert!(!valid_user_name(""));
    }

    #[test]
    fn passwords_hash_with_a_salt_and_check() {
        assert!(matches!(
            hash_password("short"),
            Err(PasswordError::TooShort)
        ));
        let h1 = hash_password("correct horse").unwrap();
        let h2 = hash_password("correct horse").unwrap();
        assert_ne!(h1, h2, "each hash has its own salt");
        assert!(h1.starts_with("$argon2id$"));
        assert!(check_password("correct horse", &h1));
        assert!(!check_password("correct horsf", &h1));
        assert!(!check_password("correct horse", "not a hash"));
        assert_eq!(secret_hash("x").len(), 64);
    }
}
