//! The deploy request as the store keeps it: a versioned envelope, so a
//! future change to [`DeployRequest`] can still read rows written today.

use crate::deploy::DeployRequest;
use serde::Serialize;

/// A stored deploy request: `{"version": 1, ...the request's fields}`.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredRequest {
    /// The first versioned form: today's [`DeployRequest`].
    V1(DeployRequest),
}

/// The envelope as written: the version number next to the fields.
#[derive(Serialize)]
struct Envelope<'a> {
    version: u32,
    #[serde(flatten)]
    request: &'a DeployRequest,
}

/// A stored request that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StoredRequestError {
    /// Neither a versioned envelope nor a pre-versioning raw body.
    #[error("not a deploy request: {0}")]
    Unreadable(#[source] serde_json::Error),
    /// A version this controller does not know (written by a newer one).
    #[error("stored request has version {0}, which this controller does not know: upgrade it")]
    UnknownVersion(serde_json::Value),
}

impl StoredRequest {
    /// The current form of a request.
    pub fn new(req: DeployRequest) -> Self {
        StoredRequest::V1(req)
    }

    /// As the store keeps it.
    pub fn to_json(&self) -> String {
        // A derived Serialize of plain data into a String cannot fail.
        let StoredRequest::V1(request) = self;
        serde_json::to_string(&Envelope {
            version: 1,
            request,
        })
        .expect("stored request serializes")
    }

    /// Reads a stored row: a versioned envelope, or a raw request body as
    /// rows written before versioning hold (no `version` field).
    pub fn parse(s: &str) -> Result<StoredRequest, StoredRequestError> {
        let mut v: serde_json::Value =
            serde_json::from_str(s).map_err(StoredRequestError::Unreadable)?;
        let version = v.as_object_mut().and_then(|o| o.remove("version"));
        match version {
            None => {}
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(1) => {}
            Some(other) => return Err(StoredRequestError::UnknownVersion(other)),
        }
        serde_json::from_value(v)
            .map(StoredRequest::V1)
            .map_err(StoredRequestError::Unreadable)
    }

    /// The request inside, whatever version it was stored as.
    pub fn into_request(self) -> DeployRequest {
        match self {
            StoredRequest::V1(r) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> String {
        serde_json::json!({
            "application": "pay", "environment": "prod", "team": "t",
            "selector": {"tags": ["app:pay"]}, "concurrency": "50%",
            "changeset": {"version": "1.0", "url": "http://x/a.tgz", "sha256": "a".repeat(64)}
        })
        .to_string()
    }

    #[test]
    fn versioned_round_trip() {
        let req = StoredRequest::parse(&raw()).unwrap().into_request();
        let stored = StoredRequest::new(req.clone()).to_json();
        let v: serde_json::Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["application"], "pay");
        assert_eq!(
            StoredRequest::parse(&stored).unwrap(),
            StoredRequest::V1(req)
        );
    }

    #[test]
    fn rows_from_before_versioning_still_load() {
        // A raw request body, as rows written before the envelope hold.
        let r = StoredRequest::parse(&raw()).unwrap().into_request();
        assert_eq!(r.application, "pay");
        assert_eq!(r.playbook, "deploy.yml");
    }

    #[test]
    fn unknown_versions_and_junk_are_errors() {
        let mut v: serde_json::Value = serde_json::from_str(&raw()).unwrap();
        v["version"] = 2.into();
        let e = StoredRequest::parse(&v.to_string()).unwrap_err();
        assert!(matches!(e, StoredRequestError::UnknownVersion(_)), "{e}");
        assert!(e.to_string().contains("upgrade"), "{e}");
        assert!(matches!(
            StoredRequest::parse("{nope"),
            Err(StoredRequestError::Unreadable(_))
        ));
    }
}
