//! The one error answer of every HTTP handler, on the server and on a relay: a status and a
//! JSON body `{"error": "..."}` whose message says what is wrong and how to fix it.
//!
//! Handlers return [`ApiResult`] and use `?`: database, store and blocking-task errors convert
//! into [`ApiError`] with the status their cause calls for (and are logged when they are the
//! server's fault, not the client's).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::db::DbError;
use crate::mac::BadMac;
use crate::store::{ChunkId, StoreError};

/// A refused or failed request: the status and the message of its `{"error": ...}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// More fields of the body beside `"error"` (a JSON object, as text).
    detail: Option<String>,
}

/// What a handler returns.
pub type ApiResult<T = Response> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            detail: None,
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: no credential, or not a valid one.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 503: not available here now (it will be: a boot environment to build, a version on
    /// its way to a relay).
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 403: the caller may not do this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    /// 404: no such thing here.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 409: it exists, but its state does not allow this.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    /// 413: the request carries more than a limit allows.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// 429: too many attempts; try later.
    pub fn too_many(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
    }

    /// 502: the node above (a relay's upstream) failed.
    pub fn bad_gateway(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_GATEWAY, message)
    }

    /// 500: this server's fault; logged.
    pub fn internal(message: impl Into<String>) -> ApiError {
        let e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message);
        tracing::error!("{}", e.message);
        e
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The same refusal with the fields of `detail` (a JSON object) in its body too, for
    /// clients that act on them (a bulk action's `confirm` count).
    pub fn with_detail(mut self, detail: serde_json::Value) -> ApiError {
        self.detail = Some(detail.to_string());
        self
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(serde_json::Value::Object(more)) = self
            .detail
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
        {
            for (k, v) in more {
                body[k] = v;
            }
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> ApiError {
        ApiError::internal(e.to_string())
    }
}

/// Unknown names 404, bad input 400, the rest 500.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match &e {
            StoreError::UnknownImage(_) | StoreError::UnknownVersion { .. } => {
                ApiError::not_found(e.to_string())
            }
            StoreError::BadName(_) | StoreError::AmbiguousVersion { .. } => {
                ApiError::bad_request(e.to_string())
            }
            StoreError::NotApproved { .. } | StoreError::AwaitsApproval { .. } => {
                ApiError::conflict(e.to_string())
            }
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> ApiError {
        ApiError::internal(format!("internal error: {e}"))
    }
}

impl From<BadMac> for ApiError {
    fn from(e: BadMac) -> ApiError {
        ApiError::bad_request(e.to_string())
    }
}

/// A MAC from a path or a body: 400 naming the expected form otherwise.
pub fn parse_mac(s: &str) -> ApiResult<crate::mac::Mac> {
    Ok(s.parse()?)
}

/// An architecture name as iPXE or `uname -m` print it (`x86_64`), else 400.
pub fn check_arch(arch: &str) -> ApiResult<()> {
    match crate::proto::agent::valid_arch(arch) {
        true => Ok(()),
        false => Err(ApiError::bad_request(format!(
            "arch {arch:?} is not an architecture name like x86_64"
        ))),
    }
}

/// A chunk id from a path: exactly 64 hex digits.
pub fn parse_chunk_id(s: &str) -> ApiResult<ChunkId> {
    match s.parse::<ChunkId>() {
        Ok(id) if s.len() == 64 => Ok(id),
        _ => Err(ApiError::bad_request(format!(
            "{s:?} is not a chunk id: expected 64 hex digits (a BLAKE3 hash)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: ApiError) -> (StatusCode, serde_json::Value) {
        let r = e.into_response();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn answers_status_and_json_error() {
        let (s, v) = body(ApiError::conflict("task 3 is already done; reboot")).await;
        assert_eq!(s, StatusCode::CONFLICT);
        assert_eq!(
            v,
            serde_json::json!({ "error": "task 3 is already done; reboot" })
        );
    }

    #[tokio::test]
    async fn store_errors_map_to_their_status() {
        let unknown: ApiError = StoreError::UnknownImage("win11".into()).into();
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        assert!(unknown.message().contains("win11"), "{unknown}");
        let bad: ApiError = StoreError::BadName("a/b".into()).into();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn chunk_ids_are_64_hex_digits() {
        let id = ChunkId::of(b"x");
        assert_eq!(parse_chunk_id(&id.to_hex()).unwrap(), id);
        let e = parse_chunk_id(&id.to_hex()[..10]).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.message().contains("64 hex digits"), "{e}");
    }

    #[test]
    fn macs_are_checked() {
        let e = parse_mac("nope").unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}
