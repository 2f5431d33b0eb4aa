//! Chef server API client (signed requests) and Chef-backed inventory.
//!
//! Every call has one deadline, [`ChefConfig::timeout`], that covers all its
//! attempts: a resolve never takes longer than that, whatever the server does.
//! Retries (with exponential backoff and full jitter) happen only for
//! connection errors and 5xx answers; a 4xx, a timeout or a non-JSON answer
//! is final.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::time::Instant;

use super::query::selector_query;
use super::sign::{self, SignError, SignRequest, SignVersion, SigningKey};
use super::{pick_address, Host, Inventory, InventoryError, Resolution, Selector};

/// `X-Chef-Version` we announce. goiardi speaks the Chef 11 API.
pub const CHEF_VERSION: &str = "12.22.5";

/// First partial-search page size. goiardi ignores `sort` in partial search,
/// so paging is unsafe (rows repeat and go missing): we ask for everything in
/// one page and, if the page comes back full, ask again with a bigger page.
const FIRST_PAGE_ROWS: usize = 50_000;
/// Give up past this many matches rather than load the server forever.
const MAX_ROWS: usize = 1_600_000;

/// The `[chef]` table of `controller.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChefConfig {
    /// Chef server base URL; may carry a path prefix such as
    /// `https://chef.example/organizations/acme`.
    pub server_url: String,
    /// Client (or user) name the controller authenticates as.
    pub client_name: String,
    /// Path of that client's RSA private key (PKCS#1 or PKCS#8 PEM).
    pub client_key: PathBuf,
    /// Signing protocol: "1.0", "1.1" or "1.3" (default).
    #[serde(default)]
    pub sign_version: SignVersion,
    /// Deadline for one call, all retries included: "10s", "1m 30s" or seconds.
    #[serde(
        default = "default_timeout",
        deserialize_with = "de_duration",
        serialize_with = "vesemir_daemon::duration::serialize"
    )]
    pub timeout: Duration,
    /// Extra attempts after a connection error or a 5xx.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_retries() -> u32 {
    3
}

/// `timeout` as a number of seconds (TOML `10`, `2.5`) or a string read by
/// the one duration parser ([`vesemir_daemon::parse_duration`]: `"10"`,
/// `"500ms"`). Unlike [`vesemir_daemon::duration`] it takes bare numbers,
/// which chef configs have always accepted.
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        FracSecs(f64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::FracSecs(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
        Raw::FracSecs(s) => Err(serde::de::Error::custom(format!("invalid timeout {s}"))),
        Raw::Text(t) => vesemir_daemon::parse_duration(&t)
            .map_err(|e| serde::de::Error::custom(format!("invalid timeout: {e}"))),
    }
}

impl ChefConfig {
    /// A config with defaults for everything optional.
    pub fn new(
        server_url: impl Into<String>,
        client_name: impl Into<String>,
        client_key: impl Into<PathBuf>,
    ) -> Self {
        ChefConfig {
            server_url: server_url.into(),
            client_name: client_name.into(),
            client_key: client_key.into(),
            sign_version: SignVersion::default(),
            timeout: default_timeout(),
            retries: default_retries(),
        }
    }
}

/// Why a Chef server call failed. Each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum ChefError {
    /// `server_url` is not a usable URL.
    #[error("invalid Chef server_url {url:?}: {message}")]
    InvalidUrl {
        /// The configured URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// Key loading or signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot build HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// 401: the server does not know this client name.
    #[error("Chef server at {url} does not know client {client:?} (401: {server_message}); check [chef] client_name, and that the client exists on the server")]
    UnknownClient {
        /// Request URL.
        url: String,
        /// The client name we signed as.
        client: String,
        /// The server's words.
        server_message: String,
    },
    /// 401: the signature did not verify; almost always the wrong key.
    #[error("Chef server at {url} rejected the signature of client {client:?} (401: {server_message}); check that [chef] client_key is this client's current private key")]
    BadSignature {
        /// Request URL.
        url: String,
        /// The client name we signed as.
        client: String,
        /// The server's words.
        server_message: String,
    },
    /// 401: the request timestamp is too far from the server's clock.
    #[error("Chef server at {url} rejected the request time (401: {server_message}); local time used for signing was {local_time}{}; fix this machine's clock (NTP)", server_time.as_ref().map(|t| format!(", server time was {t}")).unwrap_or_default())]
    ClockSkew {
        /// Request URL.
        url: String,
        /// The timestamp we signed with (RFC 3339).
        local_time: String,
        /// The server's `Date` header, if it sent one.
        server_time: Option<String>,
        /// The server's words.
        server_message: String,
    },
    /// 401 for another reason.
    #[error(
        "Chef server at {url} refused authentication of client {client:?} (401: {server_message})"
    )]
    Unauthorized {
        /// Request URL.
        url: String,
        /// The client name we signed as.
        client: String,
        /// The server's words.
        server_message: String,
    },
    /// 403: authenticated but not allowed.
    #[error("client {client:?} is not allowed to {method} {url} (403: {server_message}); grant it read access to nodes (search)")]
    Forbidden {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// The client name.
        client: String,
        /// The server's words.
        server_message: String,
    },
    /// Any other non-success status (after retries, for 5xx).
    #[error("{method} {url} answered {status}: {server_message}")]
    Status {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The server's words (or the start of the body).
        server_message: String,
    },
    /// A 2xx whose body is not JSON: usually a wrong `server_url` path.
    #[error("{method} {url} answered {status} but not with JSON ({body_hint}); is [chef] server_url right? A Chef 12+ server needs /organizations/ORG in it, goiardi and Chef 11 need none")]
    NotJson {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// "empty body" or the start of the body.
        body_hint: String,
    },
    /// JSON, but not the shape the API documents.
    #[error("{url} answered unexpected JSON: {message}")]
    UnexpectedJson {
        /// Request URL.
        url: String,
        /// What was expected.
        message: String,
    },
    /// Could not connect (or the connection broke) on every attempt.
    #[error("cannot reach Chef server at {url} after {attempts} attempt(s): {message}; is it running and is [chef] server_url right?")]
    Unreachable {
        /// Request URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Last error.
        message: String,
    },
    /// The call's deadline passed.
    #[error("Chef server at {url} did not answer within {timeout:?} ([chef] timeout) after {attempts} attempt(s)")]
    Timeout {
        /// Request URL.
        url: String,
        /// The configured deadline.
        timeout: Duration,
        /// Attempts started.
        attempts: u32,
    },
    /// More matching nodes than we are willing to fetch in one search.
    #[error("search {query:?} matches more than {max} nodes; narrow the selector")]
    TooManyResults {
        /// The query.
        query: String,
        /// The limit.
        max: usize,
    },
}

type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// A Chef server API client that signs every request.
#[derive(Clone)]
pub struct ChefClient {
    /// Base URL, path prefix kept, no trailing slash.
    base: Url,
    /// Who we sign as.
    client_name: String,
    /// The client's private key (redacted in Debug).
    key: Arc<SigningKey>,
    /// Signing protocol.
    version: SignVersion,
    /// Deadline per call, retries included.
    timeout: Duration,
    /// Extra attempts on connection errors and 5xx.
    retries: u32,
    /// Connection pool.
    http: reqwest::Client,
    /// Source of signing timestamps; injectable for clock-skew tests.
    clock: Clock,
    /// Rows asked for in the first partial-search page.
    first_page_rows: usize,
}

impl fmt::Debug for ChefClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChefClient")
            .field("base", &self.base.as_str())
            .field("client_name", &self.client_name)
            .field("key", &self.key)
            .field("version", &self.version)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("first_page_rows", &self.first_page_rows)
            .finish_non_exhaustive()
    }
}

impl ChefClient {
    /// Build from config, reading the key file.
    pub fn new(cfg: &ChefConfig) -> Result<Self, ChefError> {
        let key = SigningKey::from_file(&cfg.client_key)?;
        Self::with_key(cfg, key)
    }

    /// Build from config with a key already in memory (`client_key` unused).
    pub fn with_key(cfg: &ChefConfig, key: SigningKey) -> Result<Self, ChefError> {
        let mut base = Url::parse(&cfg.server_url).map_err(|e| ChefError::InvalidUrl {
            url: cfg.server_url.clone(),
            message: e.to_string(),
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ChefError::InvalidUrl {
                url: cfg.server_url.clone(),
                message: "scheme must be http or https".to_string(),
            });
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(ChefError::InvalidUrl {
                url: cfg.server_url.clone(),
                message: "must not carry a query or fragment".to_string(),
            });
        }
        let trimmed = base.path().trim_end_matches('/').to_string();
        base.set_path(&trimmed);
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.timeout)
            .user_agent(concat!("vesemir-controller/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ChefError::Client)?;
        Ok(ChefClient {
            base,
            client_name: cfg.client_name.clone(),
            key: Arc::new(key),
            version: cfg.sign_version,
            timeout: cfg.timeout,
            retries: cfg.retries,
            http,
            clock: Arc::new(OffsetDateTime::now_utc),
            first_page_rows: FIRST_PAGE_ROWS,
        })
    }

    /// Replace the clock used for signing timestamps (tests; a host whose
    /// clock is known to be off).
    pub fn with_clock(
        mut self,
        clock: impl Fn() -> OffsetDateTime + Send + Sync + 'static,
    ) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Rows asked for in the first partial-search page (default 50,000). A
    /// full page is fetched again, twice as big; tests use a small value to
    /// exercise that path.
    pub fn with_first_page_rows(mut self, rows: usize) -> Self {
        self.first_page_rows = rows.max(1);
        self
    }

    /// The client name requests are signed as.
    pub fn client_name(&self) -> &str {
        &self.client_name
    }

    /// `path_and_query` relative to the base URL, e.g. `/search/node?q=x`.
    fn url(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        // An empty path reads back as "/", so trim again.
        let prefix = self.base.path().trim_end_matches('/');
        let full = format!("{prefix}/{}", path.trim_start_matches('/'));
        url.set_path(&full);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// GET a JSON document.
    pub async fn get(&self, path: &str) -> Result<Value, ChefError> {
        self.request(Method::GET, path, &[], None).await
    }

    /// POST a JSON document.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ChefError> {
        self.request(Method::POST, path, &[], Some(body)).await
    }

    /// PUT a JSON document.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ChefError> {
        self.request(Method::PUT, path, &[], Some(body)).await
    }

    /// DELETE a resource.
    pub async fn delete(&self, path: &str) -> Result<Value, ChefError> {
        self.request(Method::DELETE, path, &[], None).await
    }

    /// One signed JSON request, with retries, under one deadline.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, ChefError> {
        let url = self.url(path, query);
        let body_bytes = match body {
            Some(v) => serde_json::to_vec(v).expect("a Value always serializes"),
            None => Vec::new(),
        };
        let deadline = Instant::now() + self.timeout;
        let mut attempts = 0u32;
        let outcome = tokio::time::timeout_at(deadline, async {
            loop {
                attempts += 1;
                match self.attempt(&method, &url, &body_bytes, deadline).await {
                    Ok(v) => return Ok(v),
                    Err(Attempt::Final(e)) => return Err(with_attempts(e, attempts)),
                    Err(Attempt::Retryable(e)) if attempts > self.retries => {
                        return Err(with_attempts(e, attempts))
                    }
                    Err(Attempt::Retryable(e)) => {
                        let wait = backoff(attempts);
                        tracing::debug!(%url, attempts, ?wait, error = %e, "Chef request failed, retrying");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        })
        .await;
        crate::metrics::chef_request(
            (Instant::now() + self.timeout).saturating_duration_since(deadline),
            &outcome,
        );
        match outcome {
            Ok(r) => r,
            Err(_elapsed) => Err(ChefError::Timeout {
                url: url.to_string(),
                timeout: self.timeout,
                attempts,
            }),
        }
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        body: &[u8],
        deadline: Instant,
    ) -> Result<Value, Attempt> {
        let now = (self.clock)();
        let headers = sign::sign(
            &self.key,
            self.version,
            &SignRequest {
                method: method.as_str(),
                path: url.path(),
                body,
                user_id: &self.client_name,
                timestamp: now,
            },
        )
        .map_err(|e| Attempt::Final(e.into()))?;
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .timeout(deadline.saturating_duration_since(Instant::now()))
            .header("Accept", "application/json")
            .header("X-Chef-Version", CHEF_VERSION);
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if !body.is_empty() || *method == Method::POST || *method == Method::PUT {
            req = req
                .header("Content-Type", "application/json")
                .body(body.to_vec());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.transport_error(url, e)),
        };
        let status = resp.status();
        let server_time = resp
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(self.transport_error(url, e)),
        };
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|_| {
                Attempt::Final(ChefError::NotJson {
                    method: method.to_string(),
                    url: url.to_string(),
                    status: status.as_u16(),
                    body_hint: body_hint(&bytes),
                })
            });
        }
        let server_message = server_message(&bytes);
        let url_s = url.to_string();
        let client = self.client_name.clone();
        let err = match status {
            StatusCode::UNAUTHORIZED => {
                let lower = server_message.to_ascii_lowercase();
                if lower.contains("clock") || lower.contains("timestamp") {
                    ChefError::ClockSkew {
                        url: url_s,
                        local_time: sign::canonical_time(now),
                        server_time,
                        server_message,
                    }
                } else if lower.contains("failed to authenticate as")
                    || lower.contains("not found")
                    || lower.contains("not recognized")
                {
                    ChefError::UnknownClient {
                        url: url_s,
                        client,
                        server_message,
                    }
                } else if ["verif", "signature", "crypto/rsa", "decrypt"]
                    .iter()
                    .any(|w| lower.contains(w))
                {
                    ChefError::BadSignature {
                        url: url_s,
                        client,
                        server_message,
                    }
                } else {
                    ChefError::Unauthorized {
                        url: url_s,
                        client,
                        server_message,
                    }
                }
            }
            StatusCode::FORBIDDEN => ChefError::Forbidden {
                method: method.to_string(),
                url: url_s,
                client,
                server_message,
            },
            s => {
                let e = ChefError::Status {
                    method: method.to_string(),
                    url: url_s,
                    status: s.as_u16(),
                    server_message,
                };
                if s.is_server_error() {
                    return Err(Attempt::Retryable(e));
                }
                e
            }
        };
        Err(Attempt::Final(err))
    }

    fn transport_error(&self, url: &Url, e: reqwest::Error) -> Attempt {
        if e.is_timeout() {
            // The outer deadline turns this into ChefError::Timeout.
            return Attempt::Final(ChefError::Timeout {
                url: url.to_string(),
                timeout: self.timeout,
                attempts: 0,
            });
        }
        let message = error_chain(&e);
        let err = ChefError::Unreachable {
            url: url.to_string(),
            attempts: 0,
            message,
        };
        // Connection refused/reset, or the connection dropped before an answer.
        if e.is_connect() || e.is_request() || e.is_body() {
            Attempt::Retryable(err)
        } else {
            Attempt::Final(err)
        }
    }

    /// Partial search: `POST /search/INDEX` with the wanted attribute paths.
    /// Returns each row's `data`, de-duplicated by `name` when `keys` has one.
    ///
    /// goiardi ignores `sort` here, so rows come in random order and paging
    /// can repeat or skip rows; we fetch everything in one page and, if the
    /// page is full, fetch again with a page twice as big. `start` is always
    /// 0, never past the end (which makes goiardi drop the connection).
    pub async fn partial_search(
        &self,
        index: &str,
        query: &str,
        keys: &BTreeMap<String, Vec<String>>,
    ) -> Result<Vec<Value>, ChefError> {
        let body = serde_json::to_value(keys).expect("a map of strings serializes");
        let path = format!("/search/{index}");
        let mut rows = self.first_page_rows;
        loop {
            let rows_s = rows.to_string();
            let answer = self
                .request(
                    Method::POST,
                    &path,
                    &[("q", query), ("rows", &rows_s), ("start", "0")],
                    Some(&body),
                )
                .await?;
            let page = answer
                .get("rows")
                .and_then(Value::as_array)
                .ok_or_else(|| ChefError::UnexpectedJson {
                    url: self.url(&path, &[]).to_string(),
                    message: "no \"rows\" array in search answer".to_string(),
                })?;
            if page.len() < rows {
                return Ok(page
                    .iter()
                    .map(|r| r.get("data").cloned().unwrap_or(Value::Null))
                    .collect());
            }
            if rows >= MAX_ROWS {
                return Err(ChefError::TooManyResults {
                    query: query.to_string(),
                    max: MAX_ROWS,
                });
            }
            rows = (rows * 2).min(MAX_ROWS);
        }
    }

    /// Create a node, or replace it if it exists (so a retried create is
    /// harmless). `node` is a Chef node document; `name` must be set.
    pub async fn upsert_node(&self, node: &Value) -> Result<(), ChefError> {
        let name =
            node.get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ChefError::UnexpectedJson {
                    url: self.url("/nodes", &[]).to_string(),
                    message: "node document without a \"name\"".to_string(),
                })?;
        match self.post("/nodes", node).await {
            Ok(_) => Ok(()),
            Err(ChefError::Status { status: 409, .. }) => {
                self.put(&format!("/nodes/{name}"), node).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }
}

/// A node document for [`ChefClient::upsert_node`].
pub fn node_document(
    name: &str,
    environment: &str,
    run_list: &[String],
    normal: Value,
    automatic: Value,
) -> Value {
    serde_json::json!({
        "name": name,
        "chef_type": "node",
        "json_class": "Chef::Node",
        "chef_environment": environment,
        "run_list": run_list,
        "normal": normal,
        "automatic": automatic,
        "default": {},
        "override": {},
    })
}

/// Fill in how many attempts were made, known only to the retry loop.
fn with_attempts(e: ChefError, n: u32) -> ChefError {
    match e {
        ChefError::Unreachable { url, message, .. } => ChefError::Unreachable {
            url,
            attempts: n,
            message,
        },
        ChefError::Timeout { url, timeout, .. } => ChefError::Timeout {
            url,
            timeout,
            attempts: n,
        },
        e => e,
    }
}

enum Attempt {
    Retryable(ChefError),
    Final(ChefError),
}

/// The daemons' full-jitter backoff: uniform in [0, 100 ms × 2^(n-1)], capped at 2 s.
fn backoff(attempt: u32) -> Duration {
    vesemir_daemon::backoff(
        Duration::from_millis(100),
        Duration::from_secs(2),
        attempt.saturating_sub(1),
    )
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        src = s.source();
    }
    out
}

fn body_hint(bytes: &[u8]) -> String {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        "empty body".to_string()
    } else {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]);
        format!("body starts {text:?}")
    }
}

/// Chef errors are `{"error": ["message", ...]}` (or a string).
fn server_message(bytes: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        match v.get("error") {
            Some(Value::Array(a)) => {
                return a
                    .iter()
                    .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
            Some(Value::String(s)) => return s.clone(),
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    if text.trim().is_empty() {
        "no message".to_string()
    } else {
        text.trim().to_string()
    }
}

/// Inventory backed by Chef search.
#[derive(Debug, Clone)]
pub struct ChefInventory {
    /// The signed API client.
    client: ChefClient,
}

impl ChefInventory {
    /// Build from config, reading the key file.
    pub fn new(cfg: &ChefConfig) -> Result<Self, ChefError> {
        Ok(ChefInventory {
            client: ChefClient::new(cfg)?,
        })
    }

    /// Wrap an existing client.
    pub fn from_client(client: ChefClient) -> Self {
        ChefInventory { client }
    }

    /// The underlying client.
    pub fn client(&self) -> &ChefClient {
        &self.client
    }

    /// Resolve a selector with a partial node search.
    pub async fn resolve(&self, sel: &Selector) -> Result<Resolution, InventoryError> {
        let query = selector_query(sel)?;
        self.resolve_query(query).await
    }

    /// Resolve an already built query (sent as is).
    pub async fn resolve_query(&self, query: String) -> Result<Resolution, InventoryError> {
        let keys: BTreeMap<String, Vec<String>> = [
            ("name", "name"),
            ("ipaddress", "ipaddress"),
            ("fqdn", "fqdn"),
            ("hostname", "hostname"),
            ("tags", "tags"),
            ("chef_environment", "chef_environment"),
            ("run_list", "run_list"),
            ("roles", "roles"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
        .collect();
        let started = std::time::Instant::now();
        let rows = self.client.partial_search("node", &query, &keys).await?;
        let fetched = rows.len();
        let mut hosts = BTreeMap::new();
        for row in rows {
            if let Some(host) = host_from_row(&row) {
                hosts.entry(host.name.clone()).or_insert(host);
            }
        }
        tracing::debug!(%query, fetched, unique = hosts.len(), elapsed = ?started.elapsed(), "Chef search resolved");
        Ok(Resolution {
            query,
            hosts: hosts.into_values().collect(),
        })
    }
}

impl Inventory for ChefInventory {
    fn resolve(
        &self,
        sel: &Selector,
    ) -> impl std::future::Future<Output = Result<Resolution, InventoryError>> + Send {
        ChefInventory::resolve(self, sel)
    }
}

fn str_field<'a>(row: &'a Value, key: &str) -> Option<&'a str> {
    row.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn str_list(row: &Value, key: &str) -> Vec<String> {
    row.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn host_from_row(row: &Value) -> Option<Host> {
    let name = str_field(row, "name")?.to_string();
    let ip = str_field(row, "ipaddress");
    let fqdn = str_field(row, "fqdn");
    let hostname = str_field(row, "hostname");
    let mut roles: Vec<String> = str_list(row, "run_list")
        .iter()
        .filter_map(|item| {
            item.strip_prefix("role[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect();
    roles.extend(str_list(row, "roles"));
    roles.sort();
    roles.dedup();
    Some(Host {
        address: pick_address(&name, ip, fqdn, hostname),
        fqdn: fqdn.map(str::to_string),
        hostname: hostname.map(str::to_string),
        tags: str_list(row, "tags"),
        roles,
        environment: str_field(row, "chef_environment").map(str::to_string),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_with_defaults_and_humantime() {
        let cfg: ChefConfig = toml::from_str(
            r#"
            server_url = "https://chef.example/organizations/acme"
            client_name = "vesemir"
            client_key = "/etc/vesemir/chef.pem"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.sign_version, SignVersion::V1_3);
        assert_eq!(cfg.timeout, Duration::from_secs(10));
        assert_eq!(cfg.retries, 3);
        let cfg: ChefConfig = toml::from_str(
            r#"
            server_url = "http://127.0.0.1:4545"
            client_name = "vesemir"
            client_key = "k.pem"
            sign_version = "1.0"
            timeout = "1m 30s"
            retries = 0
            "#,
        )
        .unwrap();
        assert_eq!(cfg.sign_version, SignVersion::V1_0);
        assert_eq!(cfg.timeout, Duration::from_secs(90));
        let cfg: ChefConfig =
            toml::from_str("server_url='x'\nclient_name='c'\nclient_key='k'\ntimeout=5").unwrap();
        assert_eq!(cfg.timeout, Duration::from_secs(5));
        // Round trip through TOML (what `init` writes).
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(toml::from_str::<ChefConfig>(&text).unwrap(), cfg);
        assert!(toml::from_str::<ChefConfig>(
            "server_url='x'\nclient_name='c'\nclient_key='k'\nsign_version='2.0'"
        )
        .is_err());
    }

    #[test]
    fn urls_keep_the_path_prefix() {
        let key = SigningKey::from_pem(include_str!("../../../tests/fixtures/chef/fixed-key.pem"))
            .unwrap();
        for (base, path, want) in [
            (
                "http://h:1/organizations/acme/",
                "/search/node",
                "http://h:1/organizations/acme/search/node",
            ),
            ("http://h:1", "/nodes", "http://h:1/nodes"),
            ("http://h:1/", "nodes/x", "http://h:1/nodes/x"),
        ] {
            let c = ChefClient::with_key(&ChefConfig::new(base, "c", "k"), key.clone()).unwrap();
            assert_eq!(c.url(path, &[]).as_str(), want);
        }
        let c = ChefClient::with_key(&ChefConfig::new("http://h:1/o/a", "c", "k"), key).unwrap();
        let u = c.url("/search/node", &[("q", r"tags:app\:pay AND NOT x")]);
        assert_eq!(u.path(), "/o/a/search/node");
        assert_eq!(
            u.query_pairs().next().unwrap().1,
            r"tags:app\:pay AND NOT x"
        );
        // The key never shows up in Debug.
        assert!(format!("{c:?}").contains("<redacted>"));
    }

    #[test]
    fn host_from_partial_search_row() {
        let row = serde_json::json!({
            "name": "web-1", "ipaddress": null, "fqdn": "web-1.example", "hostname": "web-1",
            "tags": ["app:payments"], "chef_environment": "production",
            "run_list": ["role[web]", "recipe[haproxy]", "role[base]"], "roles": ["web", "nested"],
        });
        let h = host_from_row(&row).unwrap();
        assert_eq!(h.address, "web-1.example");
        assert_eq!(h.roles, ["base", "nested", "web"]);
        assert_eq!(h.environment.as_deref(), Some("production"));
        assert!(host_from_row(&serde_json::json!({"ipaddress": "1.2.3.4"})).is_none());
    }

    #[test]
    fn backoff_is_bounded() {
        for n in 1..20 {
            assert!(backoff(n) <= Duration::from_secs(2));
        }
    }

    #[test]
    fn server_messages_are_extracted() {
        assert_eq!(server_message(br#"{"error":["a","b"]}"#), "a; b");
        assert_eq!(server_message(br#"{"error":"x"}"#), "x");
        assert_eq!(server_message(b""), "no message");
    }
}
