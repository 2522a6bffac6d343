//! Certificates for the TLS inside a cluster: one private certificate authority per cluster
//! and leaf certificates it signs (server, client or both), all as PEM text ready to be stored
//! as Docker secrets. Nothing here knows which component uses them: a caller names the leaf
//! (common name, DNS names such as service names) and says what it is for.
//!
//! Keys are ECDSA P-256 (what every TLS stack in the image accepts: OpenSSL for PostgreSQL and
//! pgBackRest, Go for etcd). A CA can be loaded back from its PEM pair to sign more leaves later.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

/// How long a generated CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a generated leaf certificate is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// A certificate is valid from a little before it was made, so a peer whose clock is slightly
/// behind does not reject it as "not yet valid".
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// Why a certificate could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("`{name}` is not a valid DNS name or IP address for a certificate: {reason}")]
    BadName { name: String, reason: String },
    #[error("the CA's private key is not a PEM key this program can sign with")]
    BadCaKey(#[source] rcgen::Error),
    #[error("the CA certificate is not a PEM X.509 certificate")]
    BadCaCert(#[source] rcgen::Error),
    #[error("a leaf certificate needs at least one DNS name or IP address (for `{0}`)")]
    NoNames(String),
    #[error("generating {what} failed")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
}

/// What a leaf certificate may be used for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (`serverAuth`).
    Server,
    /// A TLS client authenticating with a certificate (`clientAuth`).
    Client,
    /// Both: a process that listens and also connects to its peers.
    ServerAndClient,
}

/// One leaf certificate to issue.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// The subject's common name (some servers authorize clients by it, e.g. pgBackRest's
    /// `tls-server-auth`, PostgreSQL's `clientcert=verify-full`).
    pub common_name: String,
    /// Subject alternative names: DNS names (service names) or IP addresses. Clients check the
    /// host they connect to against these.
    pub names: Vec<String>,
    pub usage: Usage,
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCertificate {
    // Never print a private key, even in a debug log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A certificate authority that signs a cluster's leaf certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl CertificateAuthority {
    /// A new self-signed CA named `common_name` (for example `pgswarm <cluster> CA`).
    pub fn generate(common_name: &str) -> Result<Self, CertError> {
        let generate = |source| CertError::Generate {
            what: format!("the CA `{common_name}`"),
            source,
        };
        let key = KeyPair::generate().map_err(generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = named(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(generate)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA loaded back from its certificate and private key (both PEM), to sign more leaves.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(CertError::BadCaKey)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(CertError::BadCaCert)?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate (PEM): what every peer trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PEM, PKCS#8): keep it secret, or drop it once the leaves are made.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A new leaf certificate and key signed by this CA.
    pub fn issue(&self, leaf: &LeafRequest) -> Result<IssuedCertificate, CertError> {
        if leaf.names.is_empty() {
            return Err(CertError::NoNames(leaf.common_name.clone()));
        }
        let mut params = CertificateParams::default();
        for name in &leaf.names {
            let bad = |reason: String| CertError::BadName {
                name: name.clone(),
                reason,
            };
            if name.parse::<std::net::IpAddr>().is_err() && !is_dns_name(name) {
                return Err(bad(
                    "use letters, digits, `-`, `_` and `.` (a service name or host name)".into(),
                ));
            }
            let one = CertificateParams::new(vec![name.clone()]).map_err(|e| bad(e.to_string()))?;
            params.subject_alt_names.extend(one.subject_alt_names);
        }
        params.distinguished_name = named(&leaf.common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = match leaf.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        set_validity(&mut params, LEAF_VALIDITY);
        let generate = |source| CertError::Generate {
            what: format!("the certificate `{}`", leaf.common_name),
            source,
        };
        let key = KeyPair::generate().map_err(generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A DNS name as service and host names are spelled (Swarm service names hold `_`).
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn named(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = SystemTime::now();
    params.not_before = OffsetDateTime::from(now - CLOCK_SKEW);
    params.not_after = OffsetDateTime::from(now + validity);
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::parse_x509_pem;

    fn leaf(usage: Usage) -> LeafRequest {
        LeafRequest {
            common_name: "db_backup".into(),
            names: vec!["db_backup".into(), "backup".into(), "127.0.0.1".into()],
            usage,
        }
    }

    fn parse(pem: &str) -> x509_parser::pem::Pem {
        let (rest, pem) = parse_x509_pem(pem.as_bytes()).expect("PEM");
        assert!(rest.iter().all(u8::is_ascii_whitespace), "one PEM block");
        pem
    }

    #[test]
    fn ca_is_a_ca_and_signs_itself() {
        let ca = CertificateAuthority::generate("pgswarm db CA").unwrap();
        let pem = parse(ca.cert_pem());
        let cert = pem.parse_x509().unwrap();
        assert_eq!(
            cert.subject().to_string(),
            "CN=pgswarm db CA",
            "subject names the CA"
        );
        assert_eq!(cert.subject(), cert.issuer());
        assert!(cert.is_ca());
        cert.verify_signature(None).expect("self-signed");
        assert!(cert.validity().is_valid(), "valid now");
        assert!(ca.key_pem().contains("BEGIN PRIVATE KEY"));
    }

    #[test]
    fn leaf_is_signed_by_the_ca_with_its_names_and_usage() {
        let ca = CertificateAuthority::generate("pgswarm db CA").unwrap();
        let ca_pem = parse(ca.cert_pem());
        let ca_cert = ca_pem.parse_x509().unwrap();
        for usage in [Usage::Server, Usage::Client, Usage::ServerAndClient] {
            let issued = ca.issue(&leaf(usage)).unwrap();
            let pem = parse(&issued.cert_pem);
            let cert = pem.parse_x509().unwrap();
            assert_eq!(cert.subject().to_string(), "CN=db_backup");
            assert_eq!(cert.issuer(), ca_cert.subject());
            assert!(!cert.is_ca());
            cert.verify_signature(Some(ca_cert.public_key()))
                .expect("signed by the CA");
            assert!(cert.validity().is_valid());
            let sans: Vec<String> = cert
                .subject_alternative_name()
                .unwrap()
                .expect("SAN extension")
                .value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(d) => d.to_string(),
                    GeneralName::IPAddress(ip) => format!("{ip:?}"),
                    other => format!("{other:?}"),
                })
                .collect();
            assert_eq!(sans, ["db_backup", "backup", "[127, 0, 0, 1]"]);
            let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
            assert_eq!(
                (eku.server_auth, eku.client_auth),
                match usage {
                    Usage::Server => (true, false),
                    Usage::Client => (false, true),
                    Usage::ServerAndClient => (true, true),
                }
            );
            assert!(issued.key_pem.contains("BEGIN PRIVATE KEY"));
            assert!(
                !format!("{issued:?}").contains("PRIVATE KEY"),
                "key redacted"
            );
        }
    }

    #[test]
    fn a_ca_loaded_back_from_pem_signs_leaves_the_original_ca_verifies() {
        let ca = CertificateAuthority::generate("pgswarm db CA").unwrap();
        let again = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        let issued = again.issue(&leaf(Usage::Server)).unwrap();
        let ca_pem = parse(ca.cert_pem());
        let ca_cert = ca_pem.parse_x509().unwrap();
        let pem = parse(&issued.cert_pem);
        let cert = pem.parse_x509().unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
    }

    #[test]
    fn bad_inputs_are_named() {
        let ca = CertificateAuthority::generate("pgswarm db CA").unwrap();
        let mut no_names = leaf(Usage::Server);
        no_names.names.clear();
        let err = ca.issue(&no_names).unwrap_err().to_string();
        assert!(err.contains("at least one DNS name"), "{err}");
        let mut bad = leaf(Usage::Server);
        bad.names = vec!["not a host name".into()];
        let err = ca.issue(&bad).unwrap_err().to_string();
        assert!(err.contains("`not a host name`"), "{err}");
        let err = CertificateAuthority::from_pem(ca.cert_pem(), "garbage")
            .err()
            .expect("bad key refused")
            .to_string();
        assert!(err.contains("private key"), "{err}");
        let err = CertificateAuthority::from_pem("garbage", &ca.key_pem())
            .err()
            .expect("bad cert refused")
            .to_string();
        assert!(err.contains("CA certificate"), "{err}");
    }

    /// The certificates are accepted by OpenSSL (what PostgreSQL and pgBackRest use): the
    /// chain verifies for the purpose the leaf was issued for.
    #[test]
    fn openssl_verifies_the_chain() {
        let Ok(status) = std::process::Command::new("openssl")
            .arg("version")
            .stdout(std::process::Stdio::null())
            .status()
        else {
            panic!("needs the openssl command (ca-certificates, in scripts/install-host-deps.sh, depends on it)");
        };
        assert!(status.success());
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("pgswarm db CA").unwrap();
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        for (usage, purpose) in [(Usage::Server, "sslserver"), (Usage::Client, "sslclient")] {
            let issued = ca.issue(&leaf(usage)).unwrap();
            let leaf_file = dir.path().join("leaf.crt");
            std::fs::write(&leaf_file, &issued.cert_pem).unwrap();
            let out = std::process::Command::new("openssl")
                .args(["verify", "-purpose", purpose, "-CAfile"])
                .arg(&ca_file)
                .arg(&leaf_file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl verify -purpose {purpose}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
