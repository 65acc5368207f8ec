//! `kubernetes`: pod metadata from the API server.

use std::path::PathBuf;
use std::time::Duration;

use super::values::{choice, entries, non_empty, optional_string, string, uint};
use super::{Ctx, Env, Node, Setting, MAX_COUNT, MAX_MS};

pub(super) const SETTINGS: &[Setting] = &[
    Setting {
        section: "kubernetes",
        key: "enabled",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = choice(c, n, "kubernetes.enabled", &["auto", "true", "false"])
                .and_then(crate::resource::k8s::Enabled::parse)
            {
                c.cfg.kubernetes.enabled = v;
            }
        },
    },
    Setting {
        section: "kubernetes",
        key: "api_url",
        env: Env::Scalar,
        apply: |c, n| {
            let Some(v) = optional_string(c, n, "kubernetes.api_url", "to use KUBERNETES_SERVICE_HOST/PORT") else {
                return;
            };
            if let Some(url) = &v {
                let ok = url.parse::<http::Uri>().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
                });
                if !ok {
                    c.error(
                        n,
                        format!(
                            "`kubernetes.api_url` must be an http(s) URL such as https://10.0.0.1:443, got {url:?}"
                        ),
                    );
                    return;
                }
            }
            c.cfg.kubernetes.api_url = v;
        },
    },
    Setting {
        section: "kubernetes",
        key: "ca_file",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = absolute_path(c, n, "kubernetes.ca_file") {
                c.cfg.kubernetes.ca_file = v;
            }
        },
    },
    Setting {
        section: "kubernetes",
        key: "token_file",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = absolute_path(c, n, "kubernetes.token_file") {
                c.cfg.kubernetes.token_file = v;
            }
        },
    },
    Setting {
        section: "kubernetes",
        key: "node_name",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = optional_string(c, n, "kubernetes.node_name", "to use K8S_NODE_NAME") {
                c.cfg.kubernetes.node_name = v;
            }
        },
    },
    Setting {
        section: "kubernetes",
        key: "delete_grace_s",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = uint(c, n, "kubernetes.delete_grace_s", 0, MAX_MS / 1000) {
                c.cfg.kubernetes.delete_grace = Duration::from_secs(v);
            }
        },
    },
    Setting {
        section: "kubernetes",
        key: "max_pods",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = uint(c, n, "kubernetes.max_pods", 1, MAX_COUNT) {
                c.cfg.kubernetes.max_pods = v as usize;
            }
        },
    },
    Setting {
        section: "kubernetes",
        key: "attributes",
        env: Env::No,
        apply: |c, n| {
            let mut out = Vec::new();
            for (attr, key_node, value) in entries(c, n, "kubernetes.attributes") {
                if attr.trim().is_empty() {
                    c.error(key_node, "an attribute name in `kubernetes.attributes` is empty");
                    continue;
                }
                let Some(key) = string(c, value, &format!("the pod label/annotation key for `{attr}`")) else {
                    continue;
                };
                if let Err(why) = label_key(&key) {
                    c.error(
                        value,
                        format!(
                            "`kubernetes.attributes.{attr}`: {key:?} is not a Kubernetes label/annotation key: {why}"
                        ),
                    );
                    continue;
                }
                out.push((attr, key));
            }
            c.cfg.kubernetes.attributes = out;
        },
    },
];

/// A Kubernetes label or annotation key: an optional DNS-subdomain prefix and `/`, then a
/// name of at most 63 characters, alphanumeric at both ends, with `-`, `_`, `.` inside.
fn label_key(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if p.is_empty() || p.len() > 253 || !p.split('.').all(label_ok) {
            return Err("the prefix must be a lowercase DNS subdomain (example.com/)");
        }
    }
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 63 {
        return Err("the name must be 1 to 63 characters");
    }
    if !edge(name.bytes().next())
        || !edge(name.bytes().last())
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("the name must be alphanumeric at both ends, with only -, _ and . inside");
    }
    Ok(())
}

/// An absolute file path (a relative one would depend on the agent's working directory).
fn absolute_path(c: &mut Ctx, n: &Node, path: &str) -> Option<PathBuf> {
    let v = non_empty(c, n, &format!("`{path}`"))?;
    if !v.starts_with('/') {
        c.error(n, format!("`{path}` must be an absolute path, got {v:?}"));
        return None;
    }
    Some(PathBuf::from(v))
}
