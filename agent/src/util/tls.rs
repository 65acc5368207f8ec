//! rustls client configuration for the agent's own HTTPS clients that have no richer
//! error type of their own (the Alertmanager push): ring provider, the built-in webpki
//! roots (so no CA bundle is needed in the image) plus an optional PEM file for servers
//! behind a private CA.

use std::{path::Path, sync::Arc};

use anyhow::{bail, Context, Result};
use rustls::pki_types::{pem::PemObject, CertificateDer};

/// Reads `ca_file` (when given) up front, so a wrong path or a file without a certificate
/// shows at startup rather than as failed handshakes later.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        add_pem_roots(&mut roots, path, "the CA file")?;
    }
    with_roots(roots)
}

/// Adds every certificate of the PEM file `path` (`what` names it in errors) to `roots`;
/// a file without one is an error.
pub fn add_pem_roots(roots: &mut rustls::RootCertStore, path: &Path, what: &str) -> Result<()> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.with_context(|| format!("{}: not a PEM certificate", path.display()))?;
        roots.add(cert).with_context(|| format!("{}: unusable certificate", path.display()))?;
        added += 1;
    }
    if added == 0 {
        bail!("{}: no PEM certificate in {what}", path.display());
    }
    Ok(())
}

/// A client configuration on the ring provider trusting `roots`.
pub fn with_roots(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS configuration")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_its_path() {
        let path = std::env::temp_dir().join(format!("hoptrace-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = client_config(Some(&path)).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("no PEM certificate") && err.contains(&path.display().to_string()), "{err}");
        let missing = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err().to_string();
        assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
        assert!(client_config(None).is_ok());
    }
}
