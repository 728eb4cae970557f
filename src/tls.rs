//! TLS termination for the proxy listener (rustls, ALPN h2 + http/1.1), with certificates
//! that can be replaced while running (config reload): new handshakes get the new pair,
//! established connections keep theirs.

use std::io;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// The proxy's TLS acceptor and the handle to swap its certificate.
pub struct ServerTls {
    pub acceptor: TlsAcceptor,
    cert: Arc<SwappableCert>,
}

impl ServerTls {
    /// Loads the PEM certificate chain and private key named in `proxy.tls`.
    pub fn load(files: &TlsFiles) -> io::Result<Self> {
        let cert = Arc::new(SwappableCert(ArcSwap::from_pointee(load_pair(files)?)));
        let mut config = rustls::ServerConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert,
        })
    }

    /// Loads a replacement certificate without using it yet (see [`ServerTls::commit`]).
    pub fn prepare(&self, files: &TlsFiles) -> io::Result<CertifiedKey> {
        load_pair(files)
    }

    /// Uses `pair` for new handshakes; established connections keep theirs.
    pub fn commit(&self, pair: CertifiedKey) {
        self.cert.0.store(Arc::new(pair));
    }
}

#[derive(Debug)]
struct SwappableCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

fn load_pair(files: &TlsFiles) -> io::Result<CertifiedKey> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("proxy.tls.{what} {}: {e}", path.display()),
            )
        })
    };
    let cert_pem = read(&files.cert_file, "cert_file")?;
    let key_pem = read(&files.key_file, "key_file")?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "proxy.tls.cert_file {}: no certificate in it",
                files.cert_file.display()
            ),
        ));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "proxy.tls.key_file {}: no private key in it",
                files.key_file.display()
            ),
        )
    })?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("proxy.tls.key_file: {e}"),
        )
    })?;
    let pair = CertifiedKey::new(certs, signing_key);
    // A key that does not belong to the certificate would fail every handshake.
    pair.keys_match().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("proxy.tls: certificate and key do not match: {e}"),
        )
    })?;
    Ok(pair)
}
