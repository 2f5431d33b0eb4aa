//! The error body every failing API call answers with:
//! `{"error": {"code": "...", "message": "..."}}`.

use serde::{Deserialize, Serialize};

/// `{"error": {...}}`: the whole body of an API error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code (`invalid_request`, `not_found`, …).
    pub code: String,
    /// What went wrong and what to do, for a human.
    pub message: String,
}

impl ErrorBody {
    /// A body with this code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_compatible_with_the_old_json_macro_body() {
        let ours = serde_json::to_string(&ErrorBody::new("not_found", "no such \"x\"")).unwrap();
        // What the controller sent before this type existed.
        let old = serde_json::json!({"error": {"code": "not_found", "message": "no such \"x\""}});
        assert_eq!(ours, serde_json::to_string(&old).unwrap());
        let back: ErrorBody = serde_json::from_str(&ours).unwrap();
        assert_eq!(back.error.code, "not_found");
    }
}
