//! TLS material shared by the gRPC and HTTP transports: rustls on the ring provider, the
//! built-in webpki roots (so the agent needs no CA bundle in its image), plus an optional
//! PEM file for collectors behind a private CA.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::config::ConfigError;

/// Reads the CA file and checks that it holds at least one parsable certificate, so a
/// wrong path or file shows at startup rather than as failed handshakes.
pub(crate) fn read_ca_pem(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let err = |reason: String| ConfigError::CaFile { path: path.to_owned(), reason };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = parse_certs(&pem).map_err(err)?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in file".into()));
    }
    Ok(pem)
}

fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
}

/// Client configuration for OTLP/HTTP over https.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let err = |reason: String| ConfigError::CaFile { path: path.to_owned(), reason };
        let pem = read_ca_pem(path)?;
        for cert in parse_certs(&pem).map_err(err)? {
            roots.add(cert).map_err(|e| err(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
