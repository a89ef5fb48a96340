//! Every error the origin answers with, turned into a response in one place.
//!
//! One JSON shape for all of them (`status`, `error`, `detail`, plus `parameter` and `value` for a bad
//! query parameter) so that a user reading a 400 through any load balancer, and a test, can tell what
//! to fix without the docs. Handlers and the parameter parser return data; only [`IntoResponse`] here
//! knows about status codes and bodies.

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A query parameter whose value the origin refuses: what was sent and what would have been accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidParameter {
    pub parameter: &'static str,
    pub value: String,
    /// The accepted form, completed by its bound when the value was out of range.
    pub expected: String,
}

/// Why a request gets no stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    InvalidParameter(InvalidParameter),
    NotFound {
        path: String,
    },
    MethodNotAllowed {
        method: Method,
        path: String,
        /// The methods the path does answer, for the message.
        allowed: &'static str,
    },
    /// No such job: never made, or deleted by retention.
    JobNotFound {
        id: String,
    },
    /// The client holds a position this store cannot serve: another epoch, or lines it never had.
    HistoryLost {
        detail: String,
    },
    /// The job store refuses more work for now.
    Unavailable {
        detail: String,
    },
    /// This client runs as many jobs as it may.
    TooManyJobs {
        detail: String,
    },
}

impl From<InvalidParameter> for ApiError {
    fn from(invalid: InvalidParameter) -> Self {
        Self::InvalidParameter(invalid)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    status: u16,
    error: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    detail: String,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::InvalidParameter(_) => StatusCode::BAD_REQUEST,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::JobNotFound { .. } => StatusCode::NOT_FOUND,
            Self::HistoryLost { .. } => StatusCode::CONFLICT,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyJobs { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn body(&self) -> ErrorBody<'_> {
        let status = self.status().as_u16();
        match self {
            Self::InvalidParameter(invalid) => ErrorBody {
                status,
                error: "invalid parameter",
                parameter: Some(invalid.parameter),
                value: Some(&invalid.value),
                detail: format!(
                    "{}={:?}: expected {}",
                    invalid.parameter, invalid.value, invalid.expected
                ),
            },
            Self::NotFound { path } => ErrorBody {
                status,
                error: "not found",
                parameter: None,
                value: None,
                detail: format!(
                    "no route for {path}; try /polls/, /polls/streamed, /healthz or /metrics"
                ),
            },
            Self::MethodNotAllowed {
                method,
                path,
                allowed,
            } => ErrorBody {
                status,
                error: "method not allowed",
                parameter: None,
                value: None,
                detail: format!("{method} {path}: this path answers {allowed}"),
            },
            Self::JobNotFound { id } => ErrorBody {
                status,
                error: "job not found",
                parameter: None,
                value: None,
                detail: format!(
                    "no job {id:?}: job ids are 16 hex digits from POST /jobs, and finished jobs \
                     are deleted after SERVER_JOB_RETENTION or beyond SERVER_JOB_MAX"
                ),
            },
            Self::HistoryLost { detail } => ErrorBody {
                status,
                error: "history lost",
                parameter: None,
                value: None,
                detail: detail.clone(),
            },
            Self::Unavailable { detail } => ErrorBody {
                status,
                error: "unavailable",
                parameter: None,
                value: None,
                detail: detail.clone(),
            },
            Self::TooManyJobs { detail } => ErrorBody {
                status,
                error: "too many jobs",
                parameter: None,
                value: None,
                detail: detail.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Serialising a struct of strings and integers into memory cannot fail.
        let json = serde_json::to_vec(&self.body()).expect("an error body serialises to JSON");
        (
            self.status(),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            json,
        )
            .into_response()
    }
}
