//! The `tls` section: on or required, generated certificates or the user's own Docker
//! secrets, and the PostgreSQL parameters TLS owns.

use super::*;
use pgswarm_contract::Tls;

/// PostgreSQL parameters pgswarm sets itself while TLS is on.
const TLS_PARAMETERS: [&str; 4] = ["ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file"];

/// Checks the `tls` section; `None` when it is absent or disabled.
pub(super) fn check_tls(
    ctx: &mut Ctx,
    raw: &RawSpec,
    topology: Topology,
    root: &FieldPath,
) -> Option<ClusterTls> {
    let t = raw.tls.as_ref()?;
    let path = root.key("tls");
    if t.enabled == Some(false) {
        if t.require == Some(true) {
            ctx.report(
                Rule::Tls,
                &path.key("require"),
                "tls.require is true but tls.enabled is false: TLS cannot be required while \
                 it is off; remove one of the two"
                    .to_string(),
            );
        }
        return None;
    }
    if topology != Topology::Patroni {
        ctx.report(
            Rule::Tls,
            &path,
            format!(
                "TLS is supported with the `patroni` topology, not `{topology}`: remove the \
                 `tls` section or set `tls.enabled: false`"
            ),
        );
        return None;
    }
    let fields = [
        ("ca_secret", &t.ca_secret),
        ("cert_secret", &t.cert_secret),
        ("key_secret", &t.key_secret),
    ];
    let given: Vec<&str> = fields
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(f, _)| *f)
        .collect();
    let mut ok = true;
    if !given.is_empty() && given.len() != fields.len() {
        ok = false;
        let missing: Vec<&str> = fields
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(f, _)| *f)
            .collect();
        ctx.report(
            Rule::Tls,
            &path,
            format!(
                "tls gives {} but not {}: your own certificates are three existing Docker \
                 secrets (the CA certificate, the server certificate and its key, PEM); give \
                 all three, or none and swarmctl generates them",
                given.join(", "),
                missing.join(", ")
            ),
        );
    }
    for (field, value) in fields {
        if let Some(name) = value {
            if !is_secret_name(name) {
                ok = false;
                ctx.report(
                    Rule::Tls,
                    &path.key(field),
                    format!(
                        "`{name}` is not a Docker secret name: use letters, digits, `-`, `_` \
                         and `.`, starting with a letter or digit (at most 64 characters)"
                    ),
                );
            }
        }
    }
    if let Some(params) = raw.postgres.as_ref().map(|p| &p.parameters) {
        for name in params.keys() {
            if TLS_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) {
                ctx.report(
                    Rule::Tls,
                    &root.key("postgres").key("parameters").key(name),
                    format!(
                        "`{name}` is set by pgswarm while TLS is on (the certificate comes from \
                         the tls section's secrets): remove it, or set `tls.enabled: false`"
                    ),
                );
            }
        }
    }
    let own_secrets = match (&t.ca_secret, &t.cert_secret, &t.key_secret) {
        (Some(ca), Some(cert), Some(key)) if ok => Some([ca.clone(), cert.clone(), key.clone()]),
        _ => None,
    };
    Some(ClusterTls {
        mode: if t.require == Some(true) {
            Tls::Require
        } else {
            Tls::On
        },
        own_secrets,
    })
}
