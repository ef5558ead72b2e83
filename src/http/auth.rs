//! Staff credentials: the server's API token (created at first start in `DATA/api-token`, mode
//! 0600), how a request carries a token or a console session cookie, and secret comparison.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use axum::http::{header, HeaderMap};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the API token {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot create the API token {path}: {cause}")]
    Create {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the API token file {path} is empty or damaged; delete it and restart `bootcast serve` to make a new one")]
    Damaged { path: PathBuf },
    #[error("the API token {path} can be read by other users (mode {mode:o}); run `chmod 600 {path}`, and make a new token (delete the file, restart `bootcast serve`) if others may have read it")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("no API token yet in {dir}: it is created when `bootcast serve` first starts")]
    Missing { dir: PathBuf },
}

/// `DATA/api-token`.
pub fn token_path(data: &Path) -> PathBuf {
    data.join("api-token")
}

/// Reads the token; `Ok(None)` when none was created yet.
pub fn read_token(data: &Path) -> Result<Option<String>, TokenError> {
    let path = token_path(data);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode())
                .unwrap_or(0o600);
            if mode & 0o077 != 0 {
                return Err(TokenError::Exposed {
                    path,
                    mode: mode & 0o777,
                });
            }
            let t = s.trim().to_string();
            if t.len() < 32 || !t.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(TokenError::Damaged { path });
            }
            Ok(Some(t))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(cause) => Err(TokenError::Read { path, cause }),
    }
}

/// Reads the token, or creates one (256 random bits, hex) with mode 0600.
/// Returns the token and whether it was created now.
pub fn load_or_create_token(data: &Path) -> Result<(String, bool), TokenError> {
    if let Some(t) = read_token(data)? {
        return Ok((t, false));
    }
    let path = token_path(data);
    let mut bytes = [0u8; 32];
    getrandom(&mut bytes).map_err(|cause| TokenError::Create {
        path: path.clone(),
        cause,
    })?;
    let token = hex::encode(bytes);
    let create = |cause| TokenError::Create {
        path: path.clone(),
        cause,
    };
    std::fs::create_dir_all(data).map_err(create)?;
    let tmp = data.join(format!(
        ".api-token.{}",
        random_hex(8).map_err(|cause| TokenError::Create {
            path: path.clone(),
            cause,
        })?
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(create)?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(create)?;
    // hard link: fails if another process created the token meanwhile (then use theirs)
    match std::fs::hard_link(&tmp, &path) {
        Ok(()) => {
            let _ = std::fs::remove_file(&tmp);
            let _ = crate::store::durable::sync_dir(data);
            Ok((token, true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(&tmp);
            let t = read_token(data)?.ok_or(TokenError::Damaged { path })?;
            Ok((t, false))
        }
        Err(cause) => {
            let _ = std::fs::remove_file(&tmp);
            Err(create(cause))
        }
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// `n` random bytes from the kernel, as lower-case hex.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut b = vec![0u8; n];
    getrandom(&mut b)?;
    Ok(hex::encode(b))
}

/// [`random_hex`] while answering a request: no random bytes is an internal error (500).
pub fn random_hex_for_request(n: usize) -> Result<String, super::error::ApiError> {
    random_hex(n)
        .map_err(|e| super::error::ApiError::internal(format!("cannot read random bytes: {e}")))
}

/// Equal secrets, compared in constant time (`subtle`): how long a refusal takes says nothing
/// of how much of a guess was right.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// The session cookie of the staff console (see [`super::staff`]).
pub const SESSION_COOKIE: &str = "bootcast_session";
/// `POST` here with `{"user", "password"}` opens a console session.
pub const LOGIN_PATH: &str = "/api/v1/login";

/// The value of the session cookie, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v)
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_token(dir.path()).unwrap().is_none());
        let (t, created) = load_or_create_token(dir.path()).unwrap();
        assert!(created);
        assert_eq!(t.len(), 64);
        let mode = std::fs::metadata(token_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (t2, created2) = load_or_create_token(dir.path()).unwrap();
        assert_eq!((t2, created2), (t.clone(), false));
        let p = token_path(dir.path());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_token(dir.path()).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(token_path(dir.path()), "x\n").unwrap();
        assert!(matches!(
            read_token(dir.path()),
            Err(TokenError::Damaged { .. })
        ));
        assert!(
            same_secret(b"abc", b"abc")
                && !same_secret(b"abc", b"abd")
                && !same_secret(b"ab", b"abc")
        );
    }
}
