//! TLS for the connectors: one rustls stack with the aws-lc-rs provider.
//!
//! The broker clients (pulsar, fe2o3-amqp) and our own connections all use rustls 0.23. If
//! no process-wide provider is installed and more than one is compiled in, the first TLS
//! connection panics; [`install_provider`] installs aws-lc-rs once, before any connector
//! starts (it is idempotent and cheap to call again).
//!
//! Trust: the operating system's roots by default (`rustls-native-certs`), plus an optional
//! PEM file of extra CA certificates (`ca_file` in a connector's config), for private brokers
//! and for the tests' generated CA.

use std::path::Path;
use std::sync::{Arc, Once};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Installs aws-lc-rs as the process's rustls provider (once).
pub fn install_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider was installed first (by an embedding program): keep it.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// The CA file could not be read or holds no certificate.
    #[error("ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    /// No trust roots at all: the system has none and no CA file was given.
    #[error("no trusted CA certificates: the system store is empty and no ca_file is set")]
    NoRoots,
}

/// Reads every certificate of a PEM file.
pub(crate) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |reason: String| TlsError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(fail("holds no certificate".into()));
    }
    Ok(certs)
}

/// The trust roots: the system's (unless `system` is false) and the CA file's.
pub(crate) fn root_store(
    ca_file: Option<&Path>,
    system: bool,
) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    if system {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::debug!("Skipping a system CA certificate: {error}");
        }
        // Unparseable system certificates are skipped, as browsers do.
        roots.add_parsable_certificates(found.certs);
    }
    if let Some(path) = ca_file {
        for cert in read_certificates(path)? {
            roots.add(cert).map_err(|e| TlsError::CaFile {
                path: path.display().to_string(),
                reason: format!("a certificate is not a usable CA: {e}"),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    Ok(roots)
}

/// A client configuration trusting the system roots and `ca_file`.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    install_provider();
    let roots = root_store(ca_file, true)?;
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_named() {
        let error = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("ca_file /nonexistent/ca.pem: ")
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = client_config(Some(&path)).unwrap_err();
        assert!(
            error.to_string().contains("holds no certificate"),
            "{error}"
        );
    }
}
