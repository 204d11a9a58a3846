//! The API's error: a protocol code and a message that says what was wrong.

use crate::edges::devices::queries::QueryError;
use crate::node::PublishError;
use herald_protocol::ErrorCode;
use serde_json::{json, Value};

/// An API error: a protocol code with a message that says what was wrong.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub(super) fn new(code: ErrorCode) -> ApiError {
        ApiError {
            code,
            message: code.message().to_string(),
        }
    }

    pub(super) fn bad(detail: impl std::fmt::Display) -> ApiError {
        ApiError {
            code: ErrorCode::BadRequest,
            message: format!("bad request: {detail}"),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({"error": {"code": self.code.code(), "message": self.message}})
    }
}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        ApiError::new(code)
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        ApiError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        ApiError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}
