//! The process-wide TLS crypto provider. kube-rs, reqwest and async-nats all use rustls; the
//! workspace compiles only its `ring` provider (no C toolchain needed for aws-lc), and rustls
//! wants it installed once per process before the first client is built. Every constructor of
//! an HTTP client in the workspace calls [`ensure_crypto_provider`].

/// Installs rustls' ring provider as the process default, if none is installed yet. Idempotent
/// and cheap; safe to call from any thread.
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread installing the same provider is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
