//! A test certificate authority and a TLS server certificate for `127.0.0.1`/`localhost`, so the
//! test API server can serve HTTPS as kube-apiserver does. HTTPS matters for identities: kubectl
//! (client-go) never sends a bearer token over plain HTTP.

use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA and the server configuration of a certificate it signed.
pub struct TestTls {
    /// The CA certificate in PEM (a kubeconfig's `certificate-authority-data`, base64-encoded).
    pub ca_pem: String,
    /// The rustls server configuration (HTTP/2 and HTTP/1.1 by ALPN).
    pub server_config: Arc<rustls::ServerConfig>,
    /// The server certificate and the CA's, in PEM (a file server's certificate chain).
    pub chain_pem: String,
    /// The server's private key in PEM (PKCS#8).
    pub key_pem: String,
}

impl TestTls {
    /// Generates a fresh CA and a server certificate for `127.0.0.1`, `::1` and `localhost`.
    pub fn generate() -> anyhow::Result<Self> {
        let ca_key = rcgen::KeyPair::generate().context("CA key")?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).context("CA")?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "testbed CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).context("CA cert")?;

        let key = rcgen::KeyPair::generate().context("server key")?;
        let mut params = rcgen::CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "::1".to_string(),
            "localhost".to_string(),
        ])
        .context("server cert params")?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "testbed-apiserver");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca).context("server cert")?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), CertificateDer::from(ca.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .context("server TLS config")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            ca_pem: ca.pem(),
            server_config: Arc::new(config),
            chain_pem: format!("{}{}", cert.pem(), ca.pem()),
            key_pem: key.serialize_pem(),
        })
    }
}
