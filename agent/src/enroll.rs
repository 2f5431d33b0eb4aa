//! `vesemir-agent enroll`: key generated here, CSR + token sent to the
//! controller over TLS that verifies the controller against the given CA;
//! key (0600), certificate, CA and agent.toml written on success.

use crate::config::{split_host_port, AgentConfig};
use crate::identity::{enroll_tls, new_key_and_csr, write_atomic, IdentityError};
use std::path::PathBuf;
use std::time::Duration;
use vesemir_protocol::enroll::{EnrollRequest, EnrollResponse};
use vesemir_protocol::PROTOCOL_VERSION;
use vesemir_wire::{read_frame, write_frame};

/// What enrollment needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// Controller `HOST:PORT`.
    pub controller: String,
    /// Enrollment token (secret).
    pub token: String,
    /// CA certificate file to verify the controller with.
    pub ca_cert: PathBuf,
    /// Node name.
    pub name: String,
    /// Where to write the identity and agent.toml.
    pub data_dir: PathBuf,
    /// Overwrite an existing enrollment.
    pub force: bool,
    /// Settings copied into agent.toml.
    pub playbook_dir: Option<PathBuf>,
    /// Service manager command for agent.toml.
    pub systemctl: Option<PathBuf>,
    /// HAProxy admin socket for agent.toml.
    pub haproxy_socket: Option<PathBuf>,
    /// Host variables for agent.toml.
    pub vars: std::collections::BTreeMap<String, String>,
}

/// Enrollment failures, each with what to do.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// Already enrolled.
    #[error("{0} already exists: this node is enrolled; pass --force to enroll again")]
    AlreadyEnrolled(PathBuf),
    /// Files and TLS material.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Could not reach the controller.
    #[error("cannot reach the controller at {addr}: {reason}")]
    Connect {
        /// Address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The controller said no.
    #[error("enrollment refused by the controller: {0}")]
    Refused(String),
}

/// Retries when the controller closes the connection before the handshake.
const ENROLL_RETRIES: u32 = 4;

/// Whether a TLS connect failed because the peer closed the TCP connection
/// without a TLS answer (not a certificate problem).
fn closed_early(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
    )
}

/// Enrolls and writes the agent's files. Returns the path of agent.toml.
pub async fn enroll(mut opts: EnrollOptions) -> Result<PathBuf, EnrollError> {
    // The controller certifies one spelling per node (`WEB-1.` is `web-1`);
    // the name in agent.toml must be the certified one. A name with no
    // canonical form goes as given: the controller is the one authority on
    // names, refuses it with its reason (before using the token) and logs
    // the attempt.
    if let Ok(canonical) = vesemir_protocol::enroll::canonical_node_name(&opts.name) {
        opts.name = canonical;
    }
    let (host, port) = split_host_port(&opts.controller).ok_or_else(|| {
        EnrollError::Usage(format!(
            "--controller {:?} is not HOST:PORT",
            opts.controller
        ))
    })?;
    std::fs::create_dir_all(&opts.data_dir).map_err(|source| IdentityError::Io {
        path: opts.data_dir.clone(),
        source,
    })?;
    // The data dir holds the key and agent.toml (which names the playbook
    // dir and the systemctl to run): 0700 whatever the umask.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&opts.data_dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| IdentityError::Io {
                path: opts.data_dir.clone(),
                source,
            },
        )?;
    }
    let data_dir = std::fs::canonicalize(&opts.data_dir).map_err(|source| IdentityError::Io {
        path: opts.data_dir.clone(),
        source,
    })?;
    let toml_path = data_dir.join("agent.toml");
    if toml_path.exists() && !opts.force {
        return Err(EnrollError::AlreadyEnrolled(toml_path));
    }
    let ca_pem = std::fs::read_to_string(&opts.ca_cert).map_err(|source| IdentityError::Io {
        path: opts.ca_cert.clone(),
        source,
    })?;
    let tls = enroll_tls(&ca_pem, &opts.ca_cert)?;
    let (key_pem, csr_pem) = new_key_and_csr(&opts.name)?;

    let addr = opts.controller.clone();
    let connect_err = |reason: String| EnrollError::Connect {
        addr: addr.clone(),
        reason,
    };
    let server_name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|e| EnrollError::Usage(format!("bad controller host {host:?}: {e}")))?;
    let resp = tokio::time::timeout(Duration::from_secs(20), async {
        let mut attempt = 0u32;
        let mut stream = loop {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            match tokio_rustls::TlsConnector::from(tls.clone())
                .connect(server_name.clone(), tcp)
                .await
            {
                Ok(s) => break s,
                // Closed before any TLS answer: the controller sheds extra
                // connections from one address (many VMs behind one NAT
                // enrolling at once). Try again shortly, with jitter.
                Err(e) if closed_early(&e) && attempt < ENROLL_RETRIES => {
                    attempt += 1;
                    // Half of 250 ms·2^attempt, plus the shared full jitter.
                    let base = Duration::from_millis(250);
                    let floor = Duration::from_millis(125u64 << attempt);
                    let jitter = vesemir_daemon::backoff(base, Duration::MAX, attempt);
                    tokio::time::sleep(floor + jitter).await;
                }
                Err(e) if closed_early(&e) => {
                    return Err(connect_err(format!(
                        "the controller closed the connection before the TLS handshake, {} times ({e}); \
                         it sheds connections when one address has too many enrollments in flight: retry in a minute",
                        attempt + 1
                    )))
                }
                Err(e) => {
                    return Err(connect_err(format!(
                        "TLS handshake failed ({e}); is --ca-cert the controller's ca.pem?"
                    )))
                }
            }
        };
        let req = EnrollRequest {
            protocol_version: PROTOCOL_VERSION,
            token: opts.token.clone(),
            node: opts.name.clone(),
            csr_pem,
        };
        write_frame(&mut stream, &req)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        read_frame::<EnrollResponse, _>(&mut stream)
            .await
            .map_err(|e| connect_err(e.to_string()))?
            .ok_or_else(|| {
                connect_err("the controller closed the connection without answering".into())
            })
    })
    .await
    .map_err(|_| connect_err("timed out after 20s".into()))??;

    let (cert_pem, ca_pem) = match resp {
        EnrollResponse::Accepted {
            cert_pem, ca_pem, ..
        } => (cert_pem, ca_pem),
        EnrollResponse::Refused { reason } => return Err(EnrollError::Refused(reason)),
    };
    let mut cfg = AgentConfig::new(opts.name.clone(), opts.controller.clone(), data_dir.clone());
    if let Some(p) = opts.playbook_dir {
        cfg.playbook_dir = p;
    }
    if let Some(s) = opts.systemctl {
        cfg.systemctl = s;
    }
    cfg.haproxy_socket = opts.haproxy_socket;
    cfg.vars = opts.vars;
    write_atomic(&cfg.path(&cfg.key), key_pem.as_bytes(), 0o600)?;
    write_atomic(&cfg.path(&cfg.cert), cert_pem.as_bytes(), 0o644)?;
    write_atomic(&cfg.path(&cfg.ca_cert), ca_pem.as_bytes(), 0o644)?;
    let text = toml::to_string_pretty(&cfg).expect("agent config serializes");
    write_atomic(&toml_path, text.as_bytes(), 0o644)?;
    Ok(toml_path)
}
