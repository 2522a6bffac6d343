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
    let names = t.names.clone().unwrap_or_default();
    for (i, name) in names.iter().enumerate() {
        let dns = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !dns && name.parse::<IpAddr>().is_err() {
            ok = false;
            ctx.report(
                Rule::Tls,
                &path.key("names").index(i),
                format!(
                    "`{name}` is neither a DNS name nor an IP address: the certificate can name \
                     only those (e.g. `db.example.com` or `192.0.2.10`)"
                ),
            );
        }
    }
    if !names.is_empty() && given.len() == fields.len() {
        ctx.report(
            Rule::Tls,
            &path.key("names"),
            "tls.names adds names to the certificate swarmctl generates, and the tls section \
             gives your own: put the names in your certificate and remove tls.names"
                .to_string(),
        );
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
        names,
    })
}

#[cfg(test)]
mod tests {
    use crate::spec::{self, Rule};
    use pgswarm_contract::{Mode, Secret, Tls};

    fn tls_errors(text: &str) -> String {
        let e = spec::parse(text).unwrap_err();
        e.errors
            .iter()
            .filter(|p| p.rule == Rule::Tls)
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn tls_reaches_the_members_and_the_pooler_only_and_mounts_the_secrets_there() {
        let v =
            spec::parse("name: demo\ntopology: patroni\ntls:\n  require: true\n").expect("valid");
        let c = &v.cluster;
        let tls = c.tls.as_ref().expect("tls on");
        assert_eq!(tls.mode, Tls::Require);
        assert!(tls.own_secrets.is_none());
        for s in &c.services {
            let expected = matches!(s.mode(), Mode::Patroni | Mode::Pooler);
            assert_eq!(s.env.common.tls.is_some(), expected, "{}", s.name);
            assert_eq!(
                s.secrets().contains(&Secret::TlsKey),
                expected,
                "{}",
                s.name
            );
        }
        assert_eq!(c.secret_docker_name(Secret::TlsCa), "demo_tls_ca");
        let on = spec::parse("name: demo\ntopology: patroni\ntls: {}\n").expect("valid");
        assert_eq!(on.cluster.tls.as_ref().map(|t| t.mode), Some(Tls::On));
        let off =
            spec::parse("name: demo\ntopology: patroni\ntls:\n  enabled: false\n").expect("valid");
        assert!(off.cluster.tls.is_none());
        assert!(!off.cluster.secrets().contains(&Secret::TlsCa));
    }

    #[test]
    fn your_own_secrets_replace_the_generated_ones_in_the_stack() {
        let v = spec::parse(
            "name: demo\ntopology: patroni\ntls:\n  ca_secret: my_ca\n  cert_secret: my_cert\n  \
             key_secret: my_key\n",
        )
        .expect("valid");
        let c = &v.cluster;
        assert_eq!(c.secret_docker_name(Secret::TlsCa), "my_ca");
        assert_eq!(c.secret_docker_name(Secret::TlsCert), "my_cert");
        assert_eq!(c.secret_docker_name(Secret::TlsKey), "my_key");
        assert!(!c.generates(Secret::TlsKey));
        assert!(c.generates(Secret::SuperuserPassword));
        let stack = crate::render::stack_yaml(c).expect("renders");
        assert!(stack.contains("source: my_key"), "{stack}");
        assert!(stack.contains("target: tls_key"), "{stack}");
        assert!(!stack.contains("demo_tls_key"), "{stack}");
    }

    #[test]
    fn a_topology_without_tls_and_contradictions_are_refused_with_the_fix() {
        let all = tls_errors("name: demo\ntopology: citus\ncitus:\n  groups:\n    - group: 0\n      members: 3\n    - group: 1\n      members: 3\ntls: {}\n");
        assert!(
            all.contains("tls: TLS is supported with the `patroni` topology, not `citus`"),
            "{all}"
        );
        let all =
            tls_errors("name: demo\ntopology: patroni\ntls:\n  enabled: false\n  require: true\n");
        assert!(
            all.contains("tls.require: tls.require is true but tls.enabled is false"),
            "{all}"
        );
        let all = tls_errors(
            "name: demo\ntopology: patroni\ntls:\n  names: [db.example.com, 'not a name']\n",
        );
        assert!(
            all.contains("tls.names[1]: `not a name` is neither a DNS name nor an IP address"),
            "{all}"
        );
        let all = tls_errors(
            "name: demo\ntopology: patroni\ntls:\n  names: [db.example.com]\n  ca_secret: a\n  \
             cert_secret: b\n  key_secret: c\n",
        );
        assert!(all.contains("tls.names: tls.names adds names"), "{all}");
    }
}
