//! The admin API's error type and the one place where failures become HTTP statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use raftcast_raft::{FailKind, Rejection};
use serde_json::json;

use crate::origin::proposer::ProposeError;

/// An error answered as `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the error object (e.g. the current version).
    pub details: Option<serde_json::Value>,
    /// Seconds for a `Retry-After` header (overload refusals).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: None, retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// Asks the client to retry after `secs` seconds (a `Retry-After` header).
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let (Some(serde_json::Value::Object(extra)), serde_json::Value::Object(map)) = (self.details, &mut error) {
            map.extend(extra);
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Unavailable(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", e.to_string()),
            ProposeError::Uncertain(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "outcome_unknown", e.to_string()),
            ProposeError::Failed { kind, message } => {
                let (status, code) = match kind {
                    FailKind::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
                    FailKind::NotFound => (StatusCode::NOT_FOUND, "unknown_node"),
                    FailKind::Conflict => (StatusCode::CONFLICT, "conflict"),
                    FailKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                    FailKind::Overloaded => {
                        return ApiError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", message).retry_after(1)
                    }
                };
                ApiError::new(status, code, message)
            }
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        let message = r.to_string();
        match r {
            Rejection::VersionMismatch { current } => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "version_mismatch", message)
                    .with_details(json!({ "current_version": current }))
            }
            Rejection::NotFound => ApiError::not_found(message),
            Rejection::StreamOwned { .. } => ApiError::new(StatusCode::CONFLICT, "stream_owned", message),
            Rejection::StaleEpoch { .. } => ApiError::new(StatusCode::CONFLICT, "stale_epoch", message),
            Rejection::PublishDenied => ApiError::new(StatusCode::FORBIDDEN, "publish_denied", message),
            Rejection::LimitExceeded { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded", message)
            }
            Rejection::QuotaExceeded { .. } => ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", message),
        }
    }
}
