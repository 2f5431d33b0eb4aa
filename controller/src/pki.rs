//! The controller's own certificate authority: creates the CA and the server
//! certificate at init, signs agents' certificate requests at enrollment and
//! renewal.
//!
//! Architecture invariant: private keys of agents never come here; only CSRs.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use std::time::Duration;
use time::OffsetDateTime;

/// Errors of the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused something.
    #[error("certificate error: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The CSR is unusable.
    #[error("invalid certificate request: {0}")]
    BadCsr(String),
    /// A certificate could not be parsed.
    #[error("invalid certificate: {0}")]
    BadCert(String),
}

/// A loaded CA able to sign.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The CA certificate as PEM, exactly as distributed.
    pub cert_pem: String,
}

/// A certificate issued to an agent.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM of the certificate.
    pub cert_pem: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "vesemir");
    dn
}

impl Ca {
    /// Creates a new CA valid for ten years.
    pub fn generate() -> Result<(Ca, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("vesemir controller CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok((
            Ca {
                cert,
                key,
                cert_pem,
            },
            key_pem,
        ))
    }

    /// Loads the CA from its PEM files' contents.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        // Re-signing the parsed params gives an issuer object with the same
        // name and key; only those matter for issuing.
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert,
            key,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// Issues the controller's server certificate for the given names/IPs.
    pub fn issue_server(&self, sans: &[String]) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("vesemir controller");
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(s.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(825);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs an agent's CSR. The certificate's identity is `node` (CN); what
    /// the CSR asks for beyond its public key is ignored.
    pub fn sign_agent(&self, csr_pem: &str, node: &str, ttl: Duration) -> Result<Issued, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(node);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        let not_after = now + time::Duration::seconds(ttl.as_secs() as i64);
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        csr.params = params;
        let cert = csr.signed_by(&self.cert, &self.key)?;
        let info = cert_info(cert.der())?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial: info.serial,
            fingerprint: info.fingerprint,
            not_after: not_after.unix_timestamp(),
        })
    }
}

/// What the controller needs to know about a presented certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Common name: the node name.
    pub common_name: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
}

/// Reads identity facts out of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::BadCert(e.to_string()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| PkiError::BadCert("certificate has no common name".into()))?
        .to_string();
    Ok(CertInfo {
        common_name,
        serial: hex::encode(cert.raw_serial()),
        fingerprint: hex::encode(Sha256::digest(der)),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Valid node names: what Chef accepts for node names, and nothing that could
/// confuse logs, file names or HAProxy commands.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        && !name.starts_with('.')
        && !name.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_a_csr_with_the_node_as_identity() {
        let (ca, key_pem) = Ca::generate().unwrap();
        let ca = Ca::load(&ca.cert_pem, &key_pem).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = dn("someone-else");
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let issued = ca
            .sign_agent(&csr, "web-1", Duration::from_secs(3600))
            .unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
            .map(|c: rustls_pki_types::CertificateDer| c.to_vec())
            .unwrap();
        let info = cert_info(&der).unwrap();
        assert_eq!(info.common_name, "web-1");
        assert_eq!(info.serial, issued.serial);
        assert!(ca
            .sign_agent("garbage", "web-1", Duration::from_secs(60))
            .is_err());
    }

    #[test]
    fn node_names() {
        for ok in ["web-1", "web1.example.com", "a_b", "node:1"] {
            assert!(valid_node_name(ok), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "a\nb", "ä"] {
            assert!(!valid_node_name(bad), "{bad:?}");
        }
    }
}
