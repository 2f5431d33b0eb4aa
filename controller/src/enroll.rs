//! Enrollment over TLS/TCP on the same port number as QUIC: the agent has no
//! certificate yet, so it can't reach the mutual-TLS QUIC endpoint. One
//! request, one response, then the connection closes.

use crate::pki::{valid_node_name, Ca};
use crate::quic::{certs_from_pem, key_from_pem, EndpointError, ServerTls};
use crate::store::Store;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use vesemir_protocol::enroll::{EnrollRequest, EnrollResponse};
use vesemir_protocol::PROTOCOL_VERSION;
use vesemir_wire::{read_frame, write_frame};

/// How long one enrollment exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// Enrollments handled at once; more wait for the TCP accept.
const MAX_CONCURRENT: usize = 64;

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

/// Serves enrollments until the listener task is dropped.
pub async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    store: Store,
    ca: Arc<Ca>,
    cert_ttl: Duration,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        let permit = match permits.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let (tcp, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "enrollment accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, store, ca) = (acceptor.clone(), store.clone(), ca.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let result = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
                let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
                let req: EnrollRequest = read_frame(&mut tls)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("connection closed before the request")?;
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
                    .map_err(|e| e.to_string())?;
                tokio::io::AsyncWriteExt::shutdown(&mut tls)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
            if !matches!(result, Ok(Ok(()))) {
                crate::metrics::enrollment(crate::metrics::Enrollment::Failed)
            }
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::info!(%remote, error = %e, "enrollment connection failed"),
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
    if !valid_node_name(&req.node) {
        return refuse(format!(
            "invalid node name {:?}: use letters, digits, '-', '_', '.', ':'",
            req.node
        ));
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
