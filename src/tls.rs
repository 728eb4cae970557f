//! TLS termination for the proxy listener (rustls, ALPN h2 + http/1.1).

use std::io;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// Loads the PEM certificate chain and private key named in `proxy.tls`.
pub fn acceptor(files: &TlsFiles) -> io::Result<TlsAcceptor> {
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
    let mut config = rustls::ServerConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .map_err(|e| io::Error::other(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("proxy.tls: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
