//! The cluster's Docker secrets: which exist, and creating the missing ones with strong
//! random passwords. A generated password is handed to the daemon and dropped; it is never
//! printed or written anywhere else. It can be read back only from inside a container that
//! mounts it (`docker exec CONTAINER cat /run/secrets/superuser_password`).

use std::collections::{BTreeSet, HashMap};

use anyhow::Context;
use bollard::models::SecretSpec;
use pgswarm_contract::Secret;

use crate::render::labels;
use crate::spec::{Cluster, ServiceKind};

use super::certs::{CertificateAuthority, LeafRequest, Usage};

use super::Engine;

/// Random bytes per password: 24 bytes = 192 bits, 32 characters once encoded.
const PASSWORD_BYTES: usize = 24;

/// Alphabet of generated passwords: letters and digits only, so a password needs no quoting
/// in a connection string, a shell or a YAML file (base64's `+/=` would).
const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A random password of 32 letters and digits from the operating system's random source.
pub fn random_password() -> anyhow::Result<String> {
    let mut out = String::with_capacity(32);
    // Rejection sampling keeps every character equally likely.
    while out.len() < 32 {
        let mut buf = [0u8; PASSWORD_BYTES];
        getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no random source: {e}"))?;
        for b in buf {
            if (b as usize) < 4 * ALPHABET.len() && out.len() < 32 {
                out.push(ALPHABET[(b as usize) % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

/// Standard base64 (the Engine API's encoding of secret data).
pub fn base64(data: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(TABLE[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Names of the Docker secrets that exist.
pub async fn existing(engine: &Engine) -> anyhow::Result<BTreeSet<String>> {
    let secrets = engine
        .docker
        .list_secrets(None::<bollard::query_parameters::ListSecretsOptions>)
        .await
        .context("cannot list the Docker secrets")?;
    Ok(secrets
        .into_iter()
        .filter_map(|s| s.spec.and_then(|spec| spec.name))
        .collect())
}

/// The Docker secret names `cluster` needs that do not exist yet.
pub async fn missing(engine: &Engine, cluster: &Cluster) -> anyhow::Result<Vec<Secret>> {
    let existing = existing(engine).await?;
    Ok(cluster
        .secrets()
        .into_iter()
        .filter(|s| !existing.contains(&cluster.secret_docker_name(*s)))
        .collect())
}

/// Creates the missing secrets of `cluster` (its own and the generated role passwords);
/// returns the names created. A role's `password_secret` must exist: it is the user's.
pub async fn create_missing(engine: &Engine, cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let existing = existing(engine).await?;
    let absent: Vec<String> = cluster
        .role_secrets
        .iter()
        .filter(|r| !r.generated && !existing.contains(&r.docker_name))
        .map(|r| {
            format!(
                "role {}: its password_secret `{}` does not exist (create it: `printf %s \
                 PASSWORD | docker secret create {} -`, or leave password_secret out and \
                 swarmctl generates one)",
                r.role, r.docker_name, r.docker_name
            )
        })
        .collect();
    if !absent.is_empty() {
        anyhow::bail!("{}", absent.join("\n"));
    }
    let missing = missing(engine, cluster).await?;
    let not_yours: Vec<String> = missing
        .iter()
        .filter(|s| !cluster.generates(**s))
        .map(|s| cluster.secret_docker_name(*s))
        .collect();
    if !not_yours.is_empty() {
        anyhow::bail!(
            "the tls section names your own certificate secrets, and {} does not exist: create \
             it from a PEM file (`docker secret create NAME FILE`), or remove ca_secret, \
             cert_secret and key_secret from the spec and swarmctl generates them",
            not_yours.join(", ")
        );
    }
    let mut certificates = Vec::new();
    if group_missing(
        cluster,
        &missing,
        &Secret::CLUSTER_TLS,
        "TLS secrets (the cluster CA, the server certificate and its key)",
    )? {
        certificates.extend(cluster_tls(cluster)?);
    }
    if group_missing(
        cluster,
        &missing,
        &Secret::BACKUP_TLS,
        "backup TLS secrets (a CA, a certificate and its key)",
    )? {
        certificates.extend(backup_tls(cluster)?);
    }
    let mut names: Vec<String> = missing
        .into_iter()
        .filter(|s| !s.is_certificate())
        .map(|s| s.docker_name(&cluster.name))
        .collect();
    names.extend(
        cluster
            .role_secrets
            .iter()
            .filter(|r| r.generated && !existing.contains(&r.docker_name))
            .map(|r| r.docker_name.clone()),
    );
    let mut created = Vec::new();
    for (secret, pem) in certificates {
        let name = secret.docker_name(&cluster.name);
        create(engine, cluster, &name, pem.as_bytes()).await?;
        tracing::info!(secret = %name, "created a Docker secret with a generated certificate or key");
        created.push(name);
    }
    for name in names {
        let password = random_password()?;
        create(engine, cluster, &name, password.as_bytes()).await?;
        tracing::info!(secret = %name, "created a Docker secret with a random password");
        created.push(name);
    }
    Ok(created)
}

/// Creates one Docker secret of `cluster`.
async fn create(engine: &Engine, cluster: &Cluster, name: &str, data: &[u8]) -> anyhow::Result<()> {
    engine
        .docker
        .create_secret(SecretSpec {
            name: Some(name.to_string()),
            labels: Some(HashMap::from([(
                labels::CLUSTER.to_string(),
                cluster.name.clone(),
            )])),
            data: Some(base64(data)),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create the Docker secret {name}"))?;
    Ok(())
}

/// The CA, certificate and key of pgBackRest's TLS for `cluster` (PEM): one certificate for
/// every server and client of the cluster, named after the repository and every data member
/// (short and full service names), with the common name the servers admit. The CA's key is
/// dropped once the certificate is signed: nothing else can be signed by it.
pub fn backup_tls(cluster: &Cluster) -> anyhow::Result<Vec<(Secret, String)>> {
    let names: Vec<String> = cluster
        .services
        .iter()
        .filter(|s| matches!(s.kind, ServiceKind::Data { .. } | ServiceKind::Backup))
        .flat_map(|s| [s.name.clone(), super::service_name(&cluster.name, &s.name)])
        .collect();
    let ca = CertificateAuthority::generate(&format!("pgswarm {} backup CA", cluster.name))?;
    let leaf = ca.issue(&LeafRequest {
        common_name: pgswarm_contract::backup::tls_common_name(&cluster.name),
        names,
        usage: Usage::ServerAndClient,
    })?;
    Ok(vec![
        (Secret::BackupTlsCa, ca.cert_pem().to_string()),
        (Secret::BackupTlsCert, leaf.cert_pem),
        (Secret::BackupTlsKey, leaf.key_pem),
    ])
}

/// The common name of the cluster's server certificate.
pub fn tls_common_name(cluster: &str) -> String {
    format!("pgswarm-{cluster}-server")
}

/// The names the cluster's server certificate is valid for: every data member, the router
/// and the pooler, each as its short name (the stack's network alias), its stack-prefixed
/// service name and the `tasks.` forms of both; and loopback (`localhost`, `127.0.0.1`), for
/// the connections a container makes to its own PostgreSQL or PgBouncer; and the spec's
/// `tls.names` (the addresses clients reach the published ports by).
pub fn tls_names(cluster: &Cluster) -> Vec<String> {
    let mut names: Vec<String> = cluster
        .services
        .iter()
        .filter(|s| {
            matches!(
                s.kind,
                ServiceKind::Data { .. } | ServiceKind::Router | ServiceKind::Pooler
            )
        })
        .flat_map(|s| {
            let full = super::service_name(&cluster.name, &s.name);
            [
                s.name.clone(),
                format!("tasks.{}", s.name),
                format!("tasks.{full}"),
                full,
            ]
        })
        .collect();
    names.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    if let Some(tls) = &cluster.tls {
        names.extend(tls.names.iter().cloned());
    }
    names
}

/// The CA, server certificate and key of the cluster's client and replication TLS (PEM):
/// one certificate for PostgreSQL on every member and for PgBouncer, named by
/// [`tls_names`]. The CA's key is dropped once the certificate is signed: nothing else can be
/// signed by it (a new member needs the three secrets made again, with the stack down).
pub fn cluster_tls(cluster: &Cluster) -> anyhow::Result<Vec<(Secret, String)>> {
    let ca = CertificateAuthority::generate(&format!("pgswarm {} CA", cluster.name))?;
    let leaf = ca.issue(&LeafRequest {
        common_name: tls_common_name(&cluster.name),
        names: tls_names(cluster),
        usage: Usage::Server,
    })?;
    Ok(vec![
        (Secret::TlsCa, ca.cert_pem().to_string()),
        (Secret::TlsCert, leaf.cert_pem),
        (Secret::TlsKey, leaf.key_pem),
    ])
}

/// Removes the Docker secrets of `cluster` that exist; returns the names removed.
pub async fn remove(engine: &Engine, cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let existing = existing(engine).await?;
    let mut removed = Vec::new();
    // The user's own certificate secrets stay: they are not the cluster's to remove.
    let names = cluster
        .secrets()
        .into_iter()
        .filter(|s| cluster.generates(*s))
        .map(|s| s.docker_name(&cluster.name))
        .chain(
            cluster
                .role_secrets
                .iter()
                .filter(|r| r.generated)
                .map(|r| r.docker_name.clone()),
        );
    for name in names {
        if existing.contains(&name) {
            engine
                .docker
                .delete_secret(&name)
                .await
                .with_context(|| format!("cannot remove the Docker secret {name}"))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// The command that prints a secret of `cluster` from inside one of its containers.
pub fn read_command(cluster: &Cluster, secret: Secret, member: &str) -> String {
    format!(
        "docker exec $(docker ps -q -f label={}={} | head -n1) cat {}",
        super::SERVICE_NAME_LABEL,
        super::service_name(&cluster.name, member),
        secret.default_path()
    )
}

/// Whether the certificate secrets of `group` are all missing (to be generated together);
/// an error naming the ones to remove when only some exist: a certificate is made with its
/// key and CA, never alone.
fn group_missing(
    cluster: &Cluster,
    missing: &[Secret],
    group: &[Secret],
    what: &str,
) -> anyhow::Result<bool> {
    let absent = group.iter().filter(|s| missing.contains(s)).count();
    if absent == 0 {
        return Ok(false);
    }
    if absent != group.len() {
        let present: Vec<String> = group
            .iter()
            .filter(|s| !missing.contains(s))
            .map(|s| s.docker_name(&cluster.name))
            .collect();
        anyhow::bail!(
            "the {what} are made together, and only some exist: remove {} (`docker secret rm \
             {}`, with the stack down) so swarmctl generates all three again",
            present.join(", "),
            present.join(" ")
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_examples() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn backup_tls_names_the_repository_and_every_member() {
        let text = "name: demo\ntopology: patroni\nmembers: 2\nbackup: {}\n";
        let cluster = crate::spec::parse(text).expect("valid").cluster;
        let pems = backup_tls(&cluster).expect("certificates");
        let cert = &pems[1].1;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).expect("PEM");
        let x509 = pem.parse_x509().expect("X.509");
        let names: Vec<String> = x509
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        for name in ["backup", "demo_backup", "pg1", "demo_pg1", "pg2"] {
            assert!(
                names.contains(&format!("DNSName({name})")),
                "{name}: {names:?}"
            );
        }
        assert_eq!(x509.subject().to_string(), "CN=pgswarm-demo-backup");
        assert!(pems[2].1.contains("PRIVATE KEY"));
    }

    #[test]
    fn cluster_tls_names_every_member_the_router_the_pooler_and_loopback() {
        let text = "name: demo\ntopology: patroni\nmembers: 2\ntls:\n  names: [db.example.com, \
                    192.0.2.10]\n";
        let cluster = crate::spec::parse(text).expect("valid").cluster;
        let pems = cluster_tls(&cluster).expect("certificates");
        assert_eq!(
            pems.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            Secret::CLUSTER_TLS
        );
        let (_, pem) = x509_parser::pem::parse_x509_pem(pems[1].1.as_bytes()).expect("PEM");
        let x509 = pem.parse_x509().expect("X.509");
        let names: Vec<String> = x509
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        for name in [
            "pg1",
            "demo_pg1",
            "tasks.demo_pg1",
            "pg2",
            "router",
            "demo_router",
            "tasks.router",
            "tasks.demo_router",
            "pooler",
            "demo_pooler",
            "tasks.pooler",
            "localhost",
            "db.example.com",
        ] {
            assert!(
                names.contains(&format!("DNSName({name})")),
                "{name}: {names:?}"
            );
        }
        // IP addresses print as hex octets: 127.0.0.1 and 192.0.2.10.
        assert!(
            names.contains(&"IPAddress(7f:00:00:01)".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"IPAddress(c0:00:02:0a)".to_string()),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.contains("etcd")), "{names:?}");
        assert_eq!(x509.subject().to_string(), "CN=pgswarm-demo-server");
        // Signed by the CA that comes with it.
        let (_, ca) = x509_parser::pem::parse_x509_pem(pems[0].1.as_bytes()).expect("PEM");
        let ca = ca.parse_x509().expect("X.509");
        assert_eq!(x509.issuer(), ca.subject());
        x509.verify_signature(Some(ca.public_key()))
            .expect("signed by the CA");
        assert!(pems[2].1.contains("PRIVATE KEY"));
    }

    #[test]
    fn passwords_are_long_alphanumeric_and_differ() {
        let a = random_password().expect("random");
        let b = random_password().expect("random");
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
