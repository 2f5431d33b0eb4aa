//! Enrollment over TLS/TCP on the same port number as QUIC: the agent has no
//! certificate yet, so it can't reach the mutual-TLS QUIC endpoint. One
//! request, one response, then the connection closes.

use crate::pki::{valid_node_name, Ca};
use crate::quic::{certs_from_pem, key_from_pem, EndpointError, ServerTls};
use crate::store::Store;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use vesemir_protocol::enroll::{canonical_node_name, EnrollRequest, EnrollResponse};
use vesemir_protocol::PROTOCOL_VERSION;
use vesemir_wire::{read_frame, write_frame};

/// Deadline for the TLS handshake and the request frame together. A
/// legitimate agent sends both in milliseconds; a silent or trickling peer
/// holds its slot this long at most (it was 15 s, and 64 slots: 500 silent
/// connections starved enrollment for 20 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline for the whole exchange, signing and store writes included.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// Limits on connections that have not finished their exchange yet.
const LIMITS: Limits = Limits {
    total: 2048,
    per_source: 32,
};
/// Requests signed at once (CPU and store work). Waiting for one of these
/// never holds up the accept loop: only peers that already sent a complete
/// request wait here.
const MAX_SIGNING: usize = 32;

/// How often the count of connections cut before a request is logged.
const UNFINISHED_SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Where an exchange ended badly: before a complete request (a silent or
/// slow peer: counted, not logged one by one) or after it.
enum Stage {
    Unfinished(String),
    Failed(String),
}

/// Where a connection comes from, for the per-source limit: an IPv4
/// address, or the /64 of an IPv6 one (one host usually owns a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a peer address.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Source(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "{a}/64"),
        }
    }
}

/// Caps on unfinished enrollment connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From everyone together (bounds memory and file descriptors).
    pub total: usize,
    /// From one [`Source`], so one noisy host can't take every slot.
    pub per_source: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot is taken.
    Full,
    /// This source has `per_source` connections open; `first` is true for
    /// the first refusal since it last had none (log once, not per packet).
    PerSource {
        /// Whether to log it.
        first: bool,
    },
}

/// Admission of enrollment connections: pure bookkeeping, no IO, so the
/// accept loop decides at once and never waits for a slow peer.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    total: usize,
    /// Open connections per source, and whether it was refused since.
    per_source: HashMap<Source, (usize, bool)>,
}

impl Admission {
    /// Empty bookkeeping with these limits.
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            total: 0,
            per_source: HashMap::new(),
        }
    }

    /// Takes a slot for a connection from `source`, or says why not.
    pub fn admit(&mut self, source: Source) -> Result<(), Refusal> {
        if self.total >= self.limits.total {
            return Err(Refusal::Full);
        }
        let entry = self.per_source.entry(source).or_insert((0, false));
        if entry.0 >= self.limits.per_source {
            let first = !entry.1;
            entry.1 = true;
            return Err(Refusal::PerSource { first });
        }
        entry.0 += 1;
        self.total += 1;
        Ok(())
    }

    /// Gives back the slot of a connection from `source`.
    pub fn release(&mut self, source: Source) {
        if self.release_source(source) {
            self.total = self.total.saturating_sub(1);
        }
    }

    /// A connection from `source` delivered its complete request: it no
    /// longer counts against its source (many VMs behind one NAT enroll at
    /// once), only against the total until it ends ([`Admission::release_total`]).
    pub fn request_complete(&mut self, source: Source) {
        self.release_source(source);
    }

    /// Gives back the total slot of a connection already [`Admission::request_complete`].
    pub fn release_total(&mut self) {
        self.total = self.total.saturating_sub(1);
    }

    fn release_source(&mut self, source: Source) -> bool {
        let Some(entry) = self.per_source.get_mut(&source) else {
            return false;
        };
        entry.0 = entry.0.saturating_sub(1);
        if entry.0 == 0 {
            self.per_source.remove(&source);
        }
        true
    }

    /// Connections holding a slot.
    pub fn in_flight(&self) -> usize {
        self.total
    }
}

/// A slot held by one connection task; dropping it gives the slot back,
/// whichever way the task ends.
struct Slot {
    admission: Arc<Mutex<Admission>>,
    /// Still counted against its source (until the request is complete).
    source: Option<Source>,
}

impl Slot {
    fn request_complete(&mut self) {
        if let Some(source) = self.source.take() {
            self.admission
                .lock()
                .expect("admission lock")
                .request_complete(source);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut admission = self.admission.lock().expect("admission lock");
        match self.source {
            Some(source) => admission.release(source),
            None => admission.release_total(),
        }
    }
}

/// Hash under which a secret token is stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The TLS acceptor for enrollment (server auth only).
pub fn acceptor(tls: &ServerTls) -> Result<tokio_rustls::TlsAcceptor, EndpointError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| EndpointError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs_from_pem(&tls.cert_pem)?, key_from_pem(&tls.key_pem)?)
        .map_err(|e| EndpointError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![vesemir_protocol::ENROLL_ALPN.to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Serves enrollments until the listener task is dropped. The loop only
/// accepts and admits: every handshake runs in its own task under
/// [`HANDSHAKE_TIMEOUT`], so no peer, however slow, delays the next accept.
pub async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    store: Store,
    ca: Arc<Ca>,
    cert_ttl: Duration,
) {
    let admission = Arc::new(Mutex::new(Admission::new(LIMITS)));
    let signing = Arc::new(Semaphore::new(MAX_SIGNING));
    let unfinished = Arc::new(AtomicU64::new(0));
    let mut summary = tokio::time::interval(UNFINISHED_SUMMARY_EVERY);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = summary.tick() => {
                let n = unfinished.swap(0, Ordering::Relaxed);
                if n > 0 {
                    tracing::warn!(
                        count = n,
                        "enrollment connections closed without a complete request in the last minute (silent, slow, or not a vesemir agent)"
                    );
                }
                continue;
            }
        };
        let (tcp, remote) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off a little
                // rather than spin.
                tracing::warn!(error = %e, "enrollment accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = Source::of(remote.ip());
        let admitted = admission.lock().expect("admission lock").admit(source);
        match admitted {
            Ok(()) => {}
            Err(Refusal::Full) => {
                tracing::debug!(%remote, "enrollment refused: every slot is taken");
                drop(tcp);
                continue;
            }
            Err(Refusal::PerSource { first }) => {
                if first {
                    tracing::warn!(
                        %source,
                        limit = LIMITS.per_source,
                        "too many unfinished enrollment connections from one source; closing the extra ones"
                    );
                }
                drop(tcp);
                continue;
            }
        }
        let mut slot = Slot {
            admission: admission.clone(),
            source: Some(source),
        };
        let (acceptor, store, ca, signing, unfinished) = (
            acceptor.clone(),
            store.clone(),
            ca.clone(),
            signing.clone(),
            unfinished.clone(),
        );
        tokio::spawn(async move {
            let result = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
                let (mut tls, req) = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                    let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
                    let req: EnrollRequest = read_frame(&mut tls)
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or("connection closed before the request")?;
                    Ok::<_, String>((tls, req))
                })
                .await
                .map_err(|_| {
                    Stage::Unfinished(format!(
                        "no complete request within {}s; closed",
                        HANDSHAKE_TIMEOUT.as_secs()
                    ))
                })?
                .map_err(Stage::Unfinished)?;
                slot.request_complete();
                let _signing = signing
                    .acquire()
                    .await
                    .map_err(|e| Stage::Failed(e.to_string()))?;
                let node = req.node.clone();
                let resp = enroll(&store, &ca, cert_ttl, req).await;
                if let EnrollResponse::Refused { reason } = &resp {
                    tracing::warn!(%remote, node = %node, %reason, "enrollment refused");
                    crate::metrics::enrollment(crate::metrics::Enrollment::Refused);
                } else {
                    tracing::info!(%remote, node = %node, "agent enrolled");
                    crate::metrics::enrollment(crate::metrics::Enrollment::Enrolled);
                }
                write_frame(&mut tls, &resp)
                    .await
                    .map_err(|e| Stage::Failed(e.to_string()))?;
                tokio::io::AsyncWriteExt::shutdown(&mut tls)
                    .await
                    .map_err(|e| Stage::Failed(e.to_string()))
            })
            .await;
            if !matches!(result, Ok(Ok(()))) {
                crate::metrics::enrollment(crate::metrics::Enrollment::Failed)
            }
            match result {
                Ok(Ok(())) => {}
                // One line per silent peer would let a flood fill the disk:
                // counted, and summed up once a minute by the accept loop.
                Ok(Err(Stage::Unfinished(e))) => {
                    unfinished.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%remote, error = %e, "enrollment connection closed before a request");
                }
                Ok(Err(Stage::Failed(e))) => {
                    tracing::info!(%remote, error = %e, "enrollment connection failed")
                }
                Err(_) => tracing::info!(%remote, "enrollment timed out"),
            }
        });
    }
}

async fn enroll(store: &Store, ca: &Ca, cert_ttl: Duration, req: EnrollRequest) -> EnrollResponse {
    let refuse = |reason: String| EnrollResponse::Refused { reason };
    if req.protocol_version != PROTOCOL_VERSION {
        return refuse(format!(
            "protocol version mismatch: controller speaks v{PROTOCOL_VERSION}, agent v{}; \
             install matching releases",
            req.protocol_version
        ));
    }
    // One node, one spelling: `WEB-1` or `web-1.` must not enroll as a
    // second node next to `web-1`. Agents canonicalize before they ask; a
    // request that didn't is refused with the spelling to use.
    match canonical_node_name(&req.node) {
        Ok(c) if c == req.node && valid_node_name(&c) => {}
        Ok(c) => {
            return refuse(format!(
                "node name {:?} is not canonical: node names are lower case without a trailing dot; enroll as {c:?}",
                req.node
            ))
        }
        Err(e) => return refuse(e.to_string()),
    }
    // A name already enrolled can't be taken over by whoever holds a token.
    match store.get_agent(&req.node).await {
        Ok(None) => {}
        Ok(Some(a)) if a.revoked_at.is_some() => {
            return refuse(format!(
                "node {} was revoked; if this VM was rebuilt, an admin runs `vesemir agents forget {}` before it enrolls again",
                req.node, req.node
            ))
        }
        Ok(Some(_)) => {
            return refuse(format!(
                "node {} is already enrolled; to replace it (a rebuilt VM), an admin runs `vesemir agents revoke {}` and `vesemir agents forget {}` first",
                req.node, req.node, req.node
            ))
        }
        Err(e) => {
            tracing::error!(error = %e, "store error during enrollment");
            return refuse("controller store unavailable; retry later".into());
        }
    }
    let hash = token_hash(&req.token);
    match store.consume_enrollment_token(&hash).await {
        Ok(Ok(())) => {}
        Ok(Err(refusal)) => return refuse(refusal.to_string()),
        Err(e) => {
            tracing::error!(error = %e, "store error during enrollment");
            return refuse("controller store unavailable; retry later".into());
        }
    }
    let issued = match ca.sign_agent(&req.csr_pem, &req.node, cert_ttl) {
        Ok(i) => i,
        Err(e) => {
            let _ = store.refund_enrollment_token(&hash).await;
            return refuse(e.to_string());
        }
    };
    match store
        .record_certificate(
            &req.node,
            &issued.serial,
            &issued.fingerprint,
            issued.not_after * 1000,
            true,
        )
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            // Another enrollment of the same name won the race.
            let _ = store.refund_enrollment_token(&hash).await;
            return refuse(format!("node {} is already enrolled", req.node));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot record enrolled agent");
            let _ = store.refund_enrollment_token(&hash).await;
            return refuse("controller store unavailable; retry later".into());
        }
    }
    EnrollResponse::Accepted {
        cert_pem: issued.cert_pem,
        ca_pem: ca.cert_pem.clone(),
        not_after_unix: issued.not_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    #[test]
    fn per_source_limit_refuses_the_extra_ones_and_logs_once() {
        let mut a = Admission::new(Limits {
            total: 10,
            per_source: 2,
        });
        assert_eq!(a.admit(src("10.0.0.1")), Ok(()));
        assert_eq!(a.admit(src("10.0.0.1")), Ok(()));
        assert_eq!(
            a.admit(src("10.0.0.1")),
            Err(Refusal::PerSource { first: true })
        );
        assert_eq!(
            a.admit(src("10.0.0.1")),
            Err(Refusal::PerSource { first: false })
        );
        // Another source is not affected.
        assert_eq!(a.admit(src("10.0.0.2")), Ok(()));
        a.release(src("10.0.0.1"));
        assert_eq!(a.admit(src("10.0.0.1")), Ok(()));
        a.release(src("10.0.0.1"));
        a.release(src("10.0.0.1"));
        a.release(src("10.0.0.2"));
        assert_eq!(a.in_flight(), 0);
        // Back to none: a new burst is logged again.
        a.admit(src("10.0.0.1")).unwrap();
        a.admit(src("10.0.0.1")).unwrap();
        assert_eq!(
            a.admit(src("10.0.0.1")),
            Err(Refusal::PerSource { first: true })
        );
    }

    #[test]
    fn a_complete_request_frees_its_source_but_not_the_total() {
        let mut a = Admission::new(Limits {
            total: 3,
            per_source: 1,
        });
        a.admit(src("10.0.0.1")).unwrap();
        assert!(a.admit(src("10.0.0.1")).is_err());
        a.request_complete(src("10.0.0.1"));
        assert_eq!(a.admit(src("10.0.0.1")), Ok(()));
        assert_eq!(a.in_flight(), 2);
        a.release_total();
        a.release(src("10.0.0.1"));
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn total_limit_bounds_everyone_together() {
        let mut a = Admission::new(Limits {
            total: 3,
            per_source: 2,
        });
        for s in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            a.admit(src(s)).unwrap();
        }
        assert_eq!(a.admit(src("10.0.0.4")), Err(Refusal::Full));
        a.release(src("10.0.0.2"));
        assert_eq!(a.admit(src("10.0.0.4")), Ok(()));
        // Releasing a source that holds nothing changes nothing.
        a.release(src("192.0.2.1"));
        assert_eq!(a.in_flight(), 3);
    }

    #[test]
    fn ipv6_sources_are_their_64_and_mapped_v4_is_v4() {
        assert_eq!(src("2001:db8:1:2::1"), src("2001:db8:1:2:ffff::9"));
        assert_ne!(src("2001:db8:1:2::1"), src("2001:db8:1:3::1"));
        assert_eq!(src("::ffff:10.0.0.1"), src("10.0.0.1"));
        assert_eq!(src("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    }
}
