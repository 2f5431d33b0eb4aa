//! The agent's identity on disk (key, certificate, CA) and the TLS client
//! configurations built from it. The private key is generated here and never
//! leaves the VM.

use crate::config::AgentConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Identity errors.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Filesystem.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Unusable PEM/TLS material.
    #[error("{0}")]
    Tls(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a file atomically (temp + fsync + rename) with `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(contents).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// A fresh key and a CSR for `node`.
pub fn new_key_and_csr(node: &str) -> Result<(String, String), IdentityError> {
    let key = rcgen::KeyPair::generate().map_err(|e| IdentityError::Tls(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node);
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| IdentityError::Tls(e.to_string()))?;
    Ok((key.serialize_pem(), csr))
}

/// Paths of the key/cert pair, and of the pair staged during a renewal.
struct Pair {
    key: PathBuf,
    cert: PathBuf,
}

impl Pair {
    fn of(cfg: &AgentConfig) -> Pair {
        Pair {
            key: cfg.path(&cfg.key),
            cert: cfg.path(&cfg.cert),
        }
    }
    fn staged(p: &Path) -> PathBuf {
        let mut s = p.as_os_str().to_owned();
        s.push(".next");
        PathBuf::from(s)
    }
}

/// Installs a renewed key+certificate. Both are staged first, then renamed
/// key first, certificate second; [`recover_renewal`] completes a rename
/// interrupted by a crash, so key and certificate always match on start.
pub fn install_renewed(
    cfg: &AgentConfig,
    key_pem: &str,
    cert_pem: &str,
) -> Result<(), IdentityError> {
    let pair = Pair::of(cfg);
    let (key_next, cert_next) = (Pair::staged(&pair.key), Pair::staged(&pair.cert));
    write_atomic(&key_next, key_pem.as_bytes(), 0o600)?;
    write_atomic(&cert_next, cert_pem.as_bytes(), 0o644)?;
    std::fs::rename(&key_next, &pair.key).map_err(io(&pair.key))?;
    std::fs::rename(&cert_next, &pair.cert).map_err(io(&pair.cert))
}

/// Finishes a renewal interrupted between its renames.
pub fn recover_renewal(cfg: &AgentConfig) -> Result<(), IdentityError> {
    let pair = Pair::of(cfg);
    let (key_next, cert_next) = (Pair::staged(&pair.key), Pair::staged(&pair.cert));
    match (key_next.exists(), cert_next.exists()) {
        // Key renamed, cert not yet: finish.
        (false, true) => std::fs::rename(&cert_next, &pair.cert).map_err(io(&pair.cert)),
        // Crashed while staging: the old pair is intact.
        (true, _) => {
            let _ = std::fs::remove_file(&key_next);
            let _ = std::fs::remove_file(&cert_next);
            Ok(())
        }
        (false, false) => Ok(()),
    }
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn certs(pem: &str, what: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Tls(format!("{}: bad certificate PEM: {e}", what.display())))?;
    if certs.is_empty() {
        return Err(IdentityError::Tls(format!(
            "{}: no certificate found",
            what.display()
        )));
    }
    Ok(certs)
}

/// Validity (not before, not after) of a PEM certificate, Unix seconds.
pub fn validity(cert_pem: &str) -> Option<(i64, i64)> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
    let (_, c) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some((
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    ))
}

/// A root store holding only the controller's CA.
pub fn ca_roots(ca_pem: &str, what: &Path) -> Result<rustls::RootCertStore, IdentityError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem, what)? {
        roots
            .add(c)
            .map_err(|e| IdentityError::Tls(format!("{}: bad CA: {e}", what.display())))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The loaded identity: what a connection needs.
pub struct Identity {
    /// TLS client config with our certificate, trusting only our CA.
    pub tls: Arc<rustls::ClientConfig>,
    /// Validity of our certificate, Unix seconds.
    pub not_before: i64,
    /// Expiry of our certificate, Unix seconds.
    pub not_after: i64,
}

/// Loads key, certificate and CA and builds the mutual-TLS client config.
pub fn load(cfg: &AgentConfig) -> Result<Identity, IdentityError> {
    recover_renewal(cfg)?;
    let (ca_path, cert_path, key_path) = (
        cfg.path(&cfg.ca_cert),
        cfg.path(&cfg.cert),
        cfg.path(&cfg.key),
    );
    let roots = ca_roots(&read(&ca_path)?, &ca_path)?;
    let chain = certs(&read(&cert_path)?, &cert_path)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| IdentityError::Tls(format!("{}: {e}", cert_path.display())))?;
    let (not_before, not_after) = (
        parsed.validity().not_before.timestamp(),
        parsed.validity().not_after.timestamp(),
    );
    let key = PrivateKeyDer::from_pem_slice(read(&key_path)?.as_bytes())
        .map_err(|e| IdentityError::Tls(format!("{}: bad key: {e}", key_path.display())))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| IdentityError::Tls(format!("certificate and key do not match: {e}")))?;
    tls.alpn_protocols = vec![vesemir_protocol::ALPN.to_vec()];
    Ok(Identity {
        tls: Arc::new(tls),
        not_before,
        not_after,
    })
}

/// TLS client config for enrollment: server auth against the CA only.
pub fn enroll_tls(ca_pem: &str, what: &Path) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .with_root_certificates(ca_roots(ca_pem, what)?)
        .with_no_client_auth();
    tls.alpn_protocols = vec![vesemir_protocol::ENROLL_ALPN.to_vec()];
    Ok(Arc::new(tls))
}
