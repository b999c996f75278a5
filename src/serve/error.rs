//! Errors as OpenAI's API returns them: a status and `{"error": {"message", "type", "param",
//! "code"}}`, the message naming what was wrong and how to fix it, `param` the request field.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use spectra_core::Error;

use super::worker::Refusal;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    /// Seconds to wait before trying again, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// 400: the request is wrong at `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param.into()),
            retry_after: None,
        }
    }

    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::NOT_FOUND => "not_found_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind(),
                "param": self.param,
                "code": null,
            }
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A spectra error of the request's making: a 400 naming the field.
impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidInput { name, message } => {
                let text = format!("`{name}`: {message}");
                ApiError::invalid(name, text)
            }
            other => ApiError::invalid("body", other.to_string()),
        }
    }
}

/// Why the engine did not take a request.
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Busy => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: "the server's queue is full; try again shortly".into(),
                param: None,
                retry_after: Some(1),
            },
            Refusal::Draining => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "the server is shutting down".into(),
                param: None,
                retry_after: Some(5),
            },
            Refusal::Invalid(e) => e.into(),
        }
    }
}
