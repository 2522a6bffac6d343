//! TLS of client and replication connections (the spec's `tls` section): the files PostgreSQL
//! and PgBouncer read, copied from the secrets into the run directory, and the connector the
//! sidecar's own TCP connections use, trusting the cluster CA only.
//!
//! PostgreSQL refuses a key file that others may read (it wants 0600, or 0640 owned by root),
//! and Docker mounts secrets 0444 owned by root: the key is copied to a 0600 file owned by the
//! service user. Nothing here is written outside the run directory (the container's own files,
//! never the data volume), like the other files holding credentials.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, Context as _};
use pgswarm_contract::{Common, Secret};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::secrets::Secrets;
use crate::templates;

/// The TLS files of PostgreSQL and PgBouncer in the run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where the files go.
pub fn files(common: &Common) -> TlsFiles {
    let dir = Path::new(&common.run_dir).join("tls");
    TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    }
}

/// Writes the CA, the certificate and the key from the secrets (0600, owned by the user the
/// sidecar runs as); `None` when TLS is off.
pub fn write_files(common: &Common, secrets: &Secrets) -> anyhow::Result<Option<TlsFiles>> {
    if common.tls.is_none() {
        return Ok(None);
    }
    let tls = files(common);
    if let Some(dir) = tls.ca.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for (secret, path) in [
        (Secret::TlsCa, &tls.ca),
        (Secret::TlsCert, &tls.cert),
        (Secret::TlsKey, &tls.key),
    ] {
        let mut pem = secrets.get(secret)?.expose().to_string();
        pem.push('\n');
        templates::write_private(path, pem.as_bytes())?;
    }
    Ok(Some(tls))
}

/// A connector that trusts only the certificates in `ca_pem` and checks the host name the
/// connection was made to (libpq's `verify-full`).
pub fn connector(ca_pem: &str) -> anyhow::Result<MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    let mut any = false;
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| anyhow!("the cluster CA is not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| anyhow!("the cluster CA is not a usable certificate: {e}"))?;
        any = true;
    }
    if !any {
        return Err(anyhow!("the cluster CA holds no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

static CONNECTOR: OnceLock<MakeRustlsConnect> = OnceLock::new();

/// Makes the sidecar's own TCP connections use TLS, trusting `ca_pem` (once per process; a
/// later call keeps the first).
pub fn install(ca_pem: &str) -> anyhow::Result<()> {
    let c = connector(ca_pem)?;
    let _ = CONNECTOR.set(c);
    Ok(())
}

/// Installs the connector from the secrets when TLS is on.
pub fn install_from_secrets(common: &Common, secrets: &Secrets) -> anyhow::Result<()> {
    if common.tls.is_some() {
        install(secrets.get(Secret::TlsCa)?.expose())?;
    }
    Ok(())
}

/// Installs the connector from the CA's secret file when TLS is on (the `ctl` commands,
/// which read their secrets from the files).
pub fn install_from_file(common: &Common) -> anyhow::Result<()> {
    if common.tls.is_none() {
        return Ok(());
    }
    let path = common.secret_path(Secret::TlsCa);
    let pem = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the cluster CA from {path}"))?;
    install(&pem)
}

/// Connects with `config` and drives the connection in a task: over TLS verified against
/// the cluster CA when one is installed (tokio-postgres's default `sslmode=prefer`: a server
/// that offers no TLS is used in plaintext, one that offers it must present a certificate the
/// CA signed for that host); a Unix socket never uses TLS.
pub async fn connect(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    fn drive<F>(connection: F)
    where
        F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
    {
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed");
            }
        });
    }
    match CONNECTOR.get() {
        Some(tls) => {
            let (client, connection) = config.connect(tls.clone()).await?;
            drive(connection);
            Ok(client)
        }
        None => {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            drive(connection);
            Ok(client)
        }
    }
}
