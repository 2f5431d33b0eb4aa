//! The agents' QUIC endpoint: mutual TLS (only certificates chaining to our
//! CA, unexpired, not revoked), the version handshake, the control stream
//! (heartbeats, renewal), one task per connection.

use crate::fleet::{close, Fleet, Session};
use crate::pki::{cert_info, Ca};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use vesemir_protocol::control::{AgentMessage, CloseReason, ControllerMessage};
use vesemir_protocol::handshake::{check_version, Hello, Welcome};
use vesemir_protocol::PROTOCOL_VERSION;
use vesemir_wire::{read_frame, write_frame};

/// How long a new connection may take to open its control stream and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors setting up the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// TLS material is unusable.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind QUIC on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Client verifier: webpki chain + validity against our CA, plus the
/// revoked-serial set.
#[derive(Debug)]
struct RevocationAwareVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<RwLock<HashSet<String>>>,
}

impl ClientCertVerifier for RevocationAwareVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let info = cert_info(end_entity)
            .map_err(|e| rustls::Error::General(format!("unusable client certificate: {e}")))?;
        if self
            .revoked
            .read()
            .expect("revoked lock")
            .contains(&info.serial)
        {
            tracing::info!(agent = %info.common_name, serial = %info.serial, "refused revoked certificate");
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Parses PEM certificates.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, EndpointError> {
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EndpointError::Tls(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(EndpointError::Tls("no certificate in PEM".into()));
    }
    Ok(certs)
}

/// Parses a PEM private key.
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, EndpointError> {
    use rustls_pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| EndpointError::Tls(format!("bad private key PEM: {e}")))
}

/// The TLS material of the controller.
pub struct ServerTls {
    /// CA certificate PEM.
    pub ca_pem: String,
    /// Server certificate chain PEM.
    pub cert_pem: String,
    /// Server key PEM.
    pub key_pem: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the QUIC endpoint on `socket` (bound by the caller, or inherited
/// already bound: see `server::Listeners`).
pub fn endpoint(
    socket: std::net::UdpSocket,
    tls: &ServerTls,
    revoked: Arc<RwLock<HashSet<String>>>,
    reset_key: &[u8],
    idle_timeout: Duration,
) -> Result<quinn::Endpoint, EndpointError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_from_pem(&tls.ca_pem)? {
        roots
            .add(c)
            .map_err(|e| EndpointError::Tls(format!("bad CA certificate: {e}")))?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| EndpointError::Tls(e.to_string()))?;
    let verifier = Arc::new(RevocationAwareVerifier { inner, revoked });
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| EndpointError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs_from_pem(&tls.cert_pem)?, key_from_pem(&tls.key_pem)?)
        .map_err(|e| EndpointError::Tls(e.to_string()))?;
    server.alpn_protocols = vec![vesemir_protocol::ALPN.to_vec()];
    server.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server)
        .map_err(|e| EndpointError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(idle_timeout)
                .map_err(|e| EndpointError::Tls(e.to_string()))?,
        ))
        .max_concurrent_bidi_streams(4u32.into())
        .max_concurrent_uni_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    let listen = socket.local_addr().map_err(|source| EndpointError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let got = grow_udp_buffers(&socket, UDP_BUFFER_BYTES);
    if got < UDP_BUFFER_BYTES {
        tracing::info!(
            requested = UDP_BUFFER_BYTES,
            got,
            "UDP receive buffer capped by net.core.rmem_max; raise it for large fleets"
        );
    }
    // A stable reset key lets a restarted controller tell agents of the dead
    // one that their connection is gone, so they reconnect at once instead
    // of waiting for the idle timeout.
    // The connection-id generator's key must be stable too: the default one
    // is random per process and would make the new process drop old CIDs as
    // invalid instead of answering them with a reset.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key);
    let cid_key = u64::from_le_bytes(
        ring::hmac::sign(&key, b"vesemir cid generator").as_ref()[..8]
            .try_into()
            .expect("8 bytes"),
    );
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(key));
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    quinn::Endpoint::new(
        endpoint_config,
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| EndpointError::Bind {
        addr: listen,
        source,
    })
}

/// Socket buffer asked for on the QUIC socket. All agents share this one
/// socket: with the default (~208 KiB) a reconnect storm of thousands of
/// handshakes overflowed it, the kernel dropped datagrams, and handshakes
/// waited for retransmission timers (bench/RESULTS.md, reconnect storm).
pub const UDP_BUFFER_BYTES: usize = 8 << 20;

/// Asks for `bytes` of receive and send buffer on a UDP socket (the kernel
/// caps it at `net.core.rmem_max`/`wmem_max`); returns the receive buffer
/// granted, as the kernel counts it (half of what `getsockopt` reports).
pub fn grow_udp_buffers(socket: &std::net::UdpSocket, bytes: usize) -> usize {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: fd is a valid socket for the lifetime of `socket`; the
        // option value is a c_int of the given length.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &v as *const libc::c_int as *const libc::c_void,
                len,
            );
        }
    }
    let mut got: libc::c_int = 0;
    let mut got_len = len;
    // SAFETY: as above; `got` is a c_int and `got_len` its length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &mut got as *mut libc::c_int as *mut libc::c_void,
            &mut got_len,
        )
    };
    if rc == 0 {
        (got.max(0) as usize) / 2
    } else {
        0
    }
}

/// Accepts connections until the endpoint is closed.
pub async fn serve(endpoint: quinn::Endpoint, fleet: Arc<Fleet>, ca: Arc<Ca>, cert_ttl: Duration) {
    while let Some(incoming) = endpoint.accept().await {
        let fleet = fleet.clone();
        let ca = ca.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => handle_connection(conn, fleet, ca, cert_ttl).await,
                Err(e) => tracing::info!(%remote, error = %e, "agent handshake refused"),
            }
        });
    }
}

async fn handle_connection(
    conn: quinn::Connection,
    fleet: Arc<Fleet>,
    ca: Arc<Ca>,
    cert_ttl: Duration,
) {
    let remote = conn.remote_address();
    let Some(info) = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().and_then(|c| cert_info(c).ok()))
    else {
        close(&conn, CloseReason::ProtocolViolation);
        return;
    };
    let name = info.common_name.clone();
    let span = tracing::info_span!("agent", agent = %name, %remote);
    let _e = span.enter();
    drop(_e);

    let opened = tokio::time::timeout(HELLO_TIMEOUT, async {
        let (send, mut recv) = conn.accept_bi().await.ok()?;
        let hello: Hello = read_frame(&mut recv).await.ok()??;
        Some((send, recv, hello))
    })
    .await;
    let Ok(Some((mut send, mut recv, hello))) = opened else {
        tracing::info!(agent = %name, %remote, "no valid hello; closing");
        close(&conn, CloseReason::ProtocolViolation);
        return;
    };
    if let Err(e) = check_version(hello.protocol_version, true) {
        tracing::warn!(agent = %name, %remote, error = %e, "refusing agent");
        close(&conn, CloseReason::VersionMismatch);
        return;
    }
    if hello.node != name {
        tracing::warn!(agent = %name, claimed = %hello.node, "hello names another node; closing");
        close(&conn, CloseReason::IdentityMismatch);
        return;
    }
    match fleet.store().get_agent(&name).await {
        Ok(Some(rec)) if rec.revoked_at.is_none() => {}
        Ok(_) => {
            tracing::warn!(agent = %name, "certificate is valid but the agent is unknown or revoked");
            close(&conn, CloseReason::Revoked);
            return;
        }
        Err(e) => {
            tracing::error!(agent = %name, error = %e, "store unavailable; dropping agent for now");
            close(&conn, CloseReason::Shutdown);
            return;
        }
    }
    let welcome = Welcome {
        protocol_version: PROTOCOL_VERSION,
        controller_version: env!("CARGO_PKG_VERSION").to_string(),
        heartbeat_secs: fleet.heartbeat.as_secs() as u32,
    };
    if write_frame(&mut send, &welcome).await.is_err() {
        return;
    }
    let session = fleet.register(
        &name,
        conn.clone(),
        &info.serial,
        &hello.agent_version,
        hello.instance,
    );
    // A revocation between the store check above and the registration found
    // no session to close: check again now that we are registered (revoke
    // updates the serial set before it looks for the session).
    if fleet.is_revoked(&info.serial) {
        fleet.unregister(&session);
        close(&conn, CloseReason::Revoked);
        return;
    }
    tracing::info!(agent = %name, %remote, version = %hello.agent_version, "agent connected");

    let reason = control_loop(&fleet, &session, &ca, cert_ttl, &mut send, &mut recv).await;
    fleet.unregister(&session);
    match reason {
        Some(r) => {
            tracing::warn!(agent = %name, reason = r.text(), "closing agent connection");
            close(&conn, r);
        }
        None => tracing::info!(agent = %name, "agent disconnected"),
    }
}

/// Serves the control stream. Returns a reason when we must close the
/// connection, None when the agent went away.
async fn control_loop(
    fleet: &Fleet,
    session: &Session,
    ca: &Ca,
    cert_ttl: Duration,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Option<CloseReason> {
    loop {
        let msg: AgentMessage = match read_frame(recv).await {
            Ok(Some(m)) => m,
            Ok(None) => return None,
            Err(vesemir_wire::WireError::Frame(e)) => {
                tracing::warn!(agent = %session.name, error = %e, "bad frame from agent");
                return Some(CloseReason::ProtocolViolation);
            }
            Err(_) => return None,
        };
        match msg {
            AgentMessage::Heartbeat(facts) => fleet.heartbeat(session, facts),
            AgentMessage::RenewRequest { csr_pem } => {
                let reply = renew(fleet, session, ca, cert_ttl, &csr_pem).await;
                if write_frame(send, &reply).await.is_err() {
                    return None;
                }
            }
        }
    }
}

async fn renew(
    fleet: &Fleet,
    session: &Session,
    ca: &Ca,
    cert_ttl: Duration,
    csr_pem: &str,
) -> ControllerMessage {
    if fleet.is_revoked(&session.serial) {
        return ControllerMessage::RenewRefused {
            reason: "certificate revoked".into(),
        };
    }
    let issued = match ca.sign_agent(csr_pem, &session.name, cert_ttl) {
        Ok(i) => i,
        Err(e) => {
            return ControllerMessage::RenewRefused {
                reason: e.to_string(),
            }
        }
    };
    match fleet
        .store()
        .record_certificate(
            &session.name,
            &issued.serial,
            &issued.fingerprint,
            issued.not_after * 1000,
            false,
        )
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return ControllerMessage::RenewRefused {
                reason: "agent revoked".into(),
            }
        }
        Err(e) => {
            tracing::error!(agent = %session.name, error = %e, "cannot record renewed certificate");
            return ControllerMessage::RenewRefused {
                reason: "controller store unavailable; retry later".into(),
            };
        }
    }
    tracing::info!(agent = %session.name, serial = %issued.serial, "certificate renewed");
    ControllerMessage::Renewed {
        cert_pem: issued.cert_pem,
    }
}
