//! TLS material for the peers the tests run over TLS (the Pulsar test broker, RabbitMQ,
//! mosquitto, the cloud API servers): a generated CA and a server certificate for
//! `localhost` and 127.0.0.1 it signs (rustls refuses a self-signed CA used as the server
//! certificate).

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A generated CA and the server certificate it signs.
pub struct TestCa {
    /// The CA certificate, PEM: what a client must trust.
    pub ca_pem: String,
    /// The server certificate, PEM.
    server_pem: String,
    /// The server's private key, PKCS#8 PEM.
    key_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// Generates a CA and a server certificate it signs.
    pub fn generate() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "iotrules test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let server_key = KeyPair::generate().expect("server key");
        let server_cert =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params")
                .signed_by(&server_key, &ca)
                .expect("server certificate");
        iotrules::tls::install_provider();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![server_cert.der().clone(), ca.der().clone()], key)
            .expect("server TLS config");
        TestCa {
            ca_pem: ca.pem(),
            server_pem: server_cert.pem(),
            key_pem: server_key.serialize_pem(),
            server: Arc::new(server),
        }
    }

    /// Writes `ca.pem`, `server.pem` and `server.key` into `dir`, for a peer that reads its
    /// TLS material from files; returns the CA file.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &self.ca_pem).expect("write ca.pem");
        std::fs::write(dir.join("server.pem"), &self.server_pem).expect("write server.pem");
        std::fs::write(dir.join("server.key"), &self.key_pem).expect("write server.key");
        ca_file
    }

    /// An acceptor that serves TLS with the server certificate (and the CA behind it).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }
}
