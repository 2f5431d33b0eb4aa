//! Mixlib::Authentication request signing, the scheme every Chef server speaks.
//!
//! Pure: no IO, no clock. The caller passes the timestamp, so signatures are
//! reproducible and can be checked against the reference Ruby gem.
//!
//! Protocol 1.0 and 1.1 hash with SHA-1 and sign by RSA "private encrypt" of
//! the canonical string (PKCS#1 v1.5 padding, no DigestInfo); 1.1 also hashes
//! the user id. Protocol 1.3 hashes with SHA-256 and makes an ordinary
//! PKCS#1 v1.5 SHA-256 signature.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Server API version we announce and sign under protocol 1.3.
pub const SERVER_API_VERSION: &str = "1";

/// Which Mixlib::Authentication protocol version to sign with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SignVersion {
    /// SHA-1, user id in clear.
    #[serde(rename = "1.0")]
    V1_0,
    /// SHA-1, user id hashed.
    #[serde(rename = "1.1")]
    V1_1,
    /// SHA-256, standard RSA signature. What Chef 12+ clients use.
    #[default]
    #[serde(rename = "1.3")]
    V1_3,
}

impl SignVersion {
    /// The version as it appears in `X-Ops-Sign`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignVersion::V1_0 => "1.0",
            SignVersion::V1_1 => "1.1",
            SignVersion::V1_3 => "1.3",
        }
    }

    fn algorithm(self) -> &'static str {
        match self {
            SignVersion::V1_0 | SignVersion::V1_1 => "sha1",
            SignVersion::V1_3 => "sha256",
        }
    }

    fn digest_b64(self, data: &[u8]) -> String {
        match self {
            SignVersion::V1_0 | SignVersion::V1_1 => BASE64.encode(Sha1::digest(data)),
            SignVersion::V1_3 => BASE64.encode(Sha256::digest(data)),
        }
    }
}

impl fmt::Display for SignVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SignVersion {
    type Err = SignError;
    fn from_str(s: &str) -> Result<Self, SignError> {
        match s {
            "1.0" => Ok(SignVersion::V1_0),
            "1.1" => Ok(SignVersion::V1_1),
            "1.3" => Ok(SignVersion::V1_3),
            other => Err(SignError::UnsupportedVersion(other.to_string())),
        }
    }
}

/// Errors while loading a key or signing a request.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key file could not be read.
    #[error("cannot read Chef client key {path}: {source}")]
    ReadKey {
        /// The key file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The key file is not an RSA private key in PEM.
    #[error("Chef client key {path} is not an RSA private key in PEM (PKCS#1 \"BEGIN RSA PRIVATE KEY\" or PKCS#8 \"BEGIN PRIVATE KEY\")")]
    ParseKey {
        /// The key file (or "<memory>").
        path: String,
    },
    /// Asked for a protocol version we do not speak.
    #[error("unsupported Chef signing version {0:?}: use \"1.0\", \"1.1\" or \"1.3\"")]
    UnsupportedVersion(String),
    /// RSA refused to sign (for 1.0/1.1: canonical string longer than the key allows).
    #[error("RSA signing failed: {0}")]
    Rsa(#[from] rsa::Error),
}

/// A Chef client's RSA private key. Its `Debug` never shows key material.
#[derive(Clone)]
pub struct SigningKey {
    key: RsaPrivateKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(<redacted>, {} bits)", self.key.size() * 8)
    }
}

impl SigningKey {
    /// Parse a PEM key, PKCS#1 or PKCS#8.
    pub fn from_pem(pem: &str) -> Result<Self, SignError> {
        Self::parse(pem, "<memory>")
    }

    /// Read and parse a PEM key file, PKCS#1 or PKCS#8.
    pub fn from_file(path: &Path) -> Result<Self, SignError> {
        let pem = std::fs::read_to_string(path).map_err(|source| SignError::ReadKey {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&pem, &path.display().to_string())
    }

    fn parse(pem: &str, path: &str) -> Result<Self, SignError> {
        let key = RsaPrivateKey::from_pkcs1_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs8_pem(pem))
            .map_err(|_| SignError::ParseKey {
                path: path.to_string(),
            })?;
        Ok(SigningKey { key })
    }
}

/// What is signed: one HTTP request.
#[derive(Debug, Clone, Copy)]
pub struct SignRequest<'a> {
    /// HTTP method, any case.
    pub method: &'a str,
    /// URL path, without the query string.
    pub path: &'a str,
    /// Exact request body bytes (empty for GET).
    pub body: &'a [u8],
    /// Chef client (or user) name.
    pub user_id: &'a str,
    /// Signing time; truncated to whole seconds, UTC.
    pub timestamp: OffsetDateTime,
}

/// Collapse repeated slashes and drop a trailing one, as the gem does.
pub fn canonical_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut prev_slash = false;
    for c in path.chars() {
        if c == '/' {
            if !prev_slash {
                out.push(c);
            }
            prev_slash = true;
        } else {
            out.push(c);
            prev_slash = false;
        }
    }
    if out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    out
}

/// ISO 8601 UTC with whole seconds and a `Z`, e.g. `2013-03-12T17:13:28Z`.
pub fn canonical_time(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .expect("0 ns is valid");
    t.format(&Rfc3339).expect("UTC time formats as RFC 3339")
}

/// The string that gets signed.
pub fn canonical_request(version: SignVersion, req: &SignRequest<'_>) -> String {
    let method = req.method.to_ascii_uppercase();
    let path = canonical_path(req.path);
    let content_hash = version.digest_b64(req.body);
    let ts = canonical_time(req.timestamp);
    match version {
        SignVersion::V1_3 => format!(
            "Method:{method}\nPath:{path}\nX-Ops-Content-Hash:{content_hash}\n\
             X-Ops-Sign:version=1.3\nX-Ops-Timestamp:{ts}\nX-Ops-UserId:{}\n\
             X-Ops-Server-API-Version:{SERVER_API_VERSION}",
            req.user_id
        ),
        SignVersion::V1_0 | SignVersion::V1_1 => {
            let user = if version == SignVersion::V1_1 {
                version.digest_b64(req.user_id.as_bytes())
            } else {
                req.user_id.to_string()
            };
            format!(
                "Method:{method}\nHashed Path:{}\nX-Ops-Content-Hash:{content_hash}\n\
                 X-Ops-Timestamp:{ts}\nX-Ops-UserId:{user}",
                version.digest_b64(path.as_bytes())
            )
        }
    }
}

/// Sign a request. Returns the authentication headers in a stable order:
/// `X-Ops-Sign`, `X-Ops-Userid`, `X-Ops-Timestamp`, `X-Ops-Content-Hash`,
/// `X-Ops-Authorization-1..N` (the base64 signature in 60-character lines)
/// and, for 1.3, `X-Ops-Server-API-Version`.
pub fn sign(
    key: &SigningKey,
    version: SignVersion,
    req: &SignRequest<'_>,
) -> Result<Vec<(String, String)>, SignError> {
    let canonical = canonical_request(version, req);
    let mut rng = rand::thread_rng();
    let signature = match version {
        SignVersion::V1_3 => key.key.sign_with_rng(
            &mut rng,
            Pkcs1v15Sign::new::<Sha256>(),
            &Sha256::digest(canonical.as_bytes()),
        )?,
        // "private encrypt": PKCS#1 v1.5 type 1 padding over the raw string.
        SignVersion::V1_0 | SignVersion::V1_1 => key.key.sign_with_rng(
            &mut rng,
            Pkcs1v15Sign::new_unprefixed(),
            canonical.as_bytes(),
        )?,
    };
    let mut headers = vec![
        (
            "X-Ops-Sign".to_string(),
            format!("algorithm={};version={};", version.algorithm(), version),
        ),
        ("X-Ops-Userid".to_string(), req.user_id.to_string()),
        ("X-Ops-Timestamp".to_string(), canonical_time(req.timestamp)),
        (
            "X-Ops-Content-Hash".to_string(),
            version.digest_b64(req.body),
        ),
    ];
    let encoded = BASE64.encode(signature);
    for (i, line) in encoded.as_bytes().chunks(60).enumerate() {
        headers.push((
            format!("X-Ops-Authorization-{}", i + 1),
            String::from_utf8(line.to_vec()).expect("base64 is ASCII"),
        ));
    }
    if version == SignVersion::V1_3 {
        headers.push((
            "X-Ops-Server-API-Version".to_string(),
            SERVER_API_VERSION.to_string(),
        ));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn req(body: &[u8]) -> SignRequest<'_> {
        SignRequest {
            method: "post",
            path: "//organizations/acme//search/node/",
            body,
            user_id: "spec-user",
            timestamp: datetime!(2009-01-01 12:00:00.75 UTC),
        }
    }

    #[test]
    fn canonical_path_collapses_and_trims() {
        for (input, want) in [
            ("/", "/"),
            ("//", "/"),
            ("/nodes/", "/nodes"),
            ("//a///b/", "/a/b"),
            ("/a/b", "/a/b"),
        ] {
            assert_eq!(canonical_path(input), want, "{input}");
        }
    }

    #[test]
    fn canonical_time_is_utc_whole_seconds() {
        let t = datetime!(2009-01-01 14:00:00.999 +02:00);
        assert_eq!(canonical_time(t), "2009-01-01T12:00:00Z");
    }

    #[test]
    fn canonical_string_1_0() {
        let s = canonical_request(SignVersion::V1_0, &req(b"Spec Body"));
        assert_eq!(
            s,
            format!(
                "Method:POST\nHashed Path:{}\nX-Ops-Content-Hash:{}\n\
                 X-Ops-Timestamp:2009-01-01T12:00:00Z\nX-Ops-UserId:spec-user",
                BASE64.encode(Sha1::digest(b"/organizations/acme/search/node")),
                BASE64.encode(Sha1::digest(b"Spec Body")),
            )
        );
    }

    #[test]
    fn canonical_string_1_1_hashes_user() {
        let s = canonical_request(SignVersion::V1_1, &req(b""));
        let user = BASE64.encode(Sha1::digest(b"spec-user"));
        assert!(s.ends_with(&format!("X-Ops-UserId:{user}")), "{s}");
        // SHA-1 of the empty string, the content hash of every GET.
        assert!(s.contains("X-Ops-Content-Hash:2jmj7l5rSw0yVb/vlWAYkK/YBwk="));
    }

    #[test]
    fn canonical_string_1_3() {
        let s = canonical_request(SignVersion::V1_3, &req(b""));
        assert_eq!(
            s,
            "Method:POST\nPath:/organizations/acme/search/node\n\
             X-Ops-Content-Hash:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\
             X-Ops-Sign:version=1.3\nX-Ops-Timestamp:2009-01-01T12:00:00Z\n\
             X-Ops-UserId:spec-user\nX-Ops-Server-API-Version:1"
        );
    }

    #[test]
    fn version_parses_and_defaults_to_1_3() {
        assert_eq!(SignVersion::default(), SignVersion::V1_3);
        assert_eq!("1.1".parse::<SignVersion>().unwrap(), SignVersion::V1_1);
        assert!("1.2".parse::<SignVersion>().is_err());
    }

    #[test]
    fn key_debug_is_redacted() {
        let key = SigningKey {
            key: RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap(),
        };
        let dbg = format!("{key:?}");
        assert_eq!(dbg, "SigningKey(<redacted>, 1024 bits)");
    }

    #[test]
    fn signature_lines_are_60_chars_and_verify() {
        let rsa = RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let key = SigningKey { key: rsa.clone() };
        let r = req(b"{}");
        let headers = sign(&key, SignVersion::V1_3, &r).unwrap();
        let auth: Vec<&str> = headers
            .iter()
            .filter(|(k, _)| k.starts_with("X-Ops-Authorization-"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(auth[..auth.len() - 1].iter().all(|l| l.len() == 60));
        let sig = BASE64.decode(auth.concat()).unwrap();
        let digest = Sha256::digest(canonical_request(SignVersion::V1_3, &r).as_bytes());
        rsa.to_public_key()
            .verify(Pkcs1v15Sign::new::<Sha256>(), &digest, &sig)
            .unwrap();
    }
}
