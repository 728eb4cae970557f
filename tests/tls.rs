//! TLS termination on the proxy listener and TLS to upstreams, with certificates made here.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

struct TestCert {
    cert_pem: String,
    key_pem: String,
    der: rustls::pki_types::CertificateDer<'static>,
}

fn self_signed() -> TestCert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    TestCert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
        der: ck.cert.der().clone(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::ring::default_provider().into()
}

/// A client that trusts only `cert` and offers only h2 or only http/1.1 by ALPN.
fn client_trusting(
    cert: &TestCert,
    h2: bool,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let https = if h2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(https)
}

#[tokio::test]
async fn terminates_tls_with_http1_and_h2_by_alpn() {
    let cert = self_signed();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &cert.cert_pem).unwrap();
    std::fs::write(&key_path, &cert.key_pem).unwrap();
    let up = echo_upstream().await;
    let gw = Gateway::start(&format!(
        "proxy:\n  listen: '127.0.0.1:0'\n  tls: {{ cert_file: '{}', key_file: '{}' }}\nroutes:\n  - {{ name: api, upstream: 'http://{up}', auth: none }}\n",
        cert_path.display(),
        key_path.display()
    ));
    let url = format!("https://localhost:{}/secure?x=1", gw.proxy.port());

    for (h2, version) in [
        (true, http::Version::HTTP_2),
        (false, http::Version::HTTP_11),
    ] {
        let c = client_trusting(&cert, h2);
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            c.request(Request::get(&url).body(Full::default()).unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), version);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["path"], "/secure");
        assert_eq!(json["headers"]["x-forwarded-proto"][0], "https");
    }

    // Plain HTTP on the TLS port does not get through.
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        client().request(Request::get(gw.url("/")).body(Full::default()).unwrap()),
    )
    .await
    .unwrap();
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}

#[tokio::test]
async fn forwards_to_an_https_upstream_trusting_ca_file() {
    let cert = self_signed();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_path, &cert.cert_pem).unwrap();

    // A TLS upstream that answers with the protocol it saw.
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der.clone()],
            rustls_pemfile::private_key(&mut cert.key_pem.as_bytes())
                .unwrap()
                .unwrap(),
        )
        .unwrap();
    server_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::<Bytes>::from(
                            format!("tls upstream saw {}", req.uri().path()),
                        )))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });

    let gw = Gateway::start(&format!(
        "upstream: {{ ca_file: '{}' }}\nroutes:\n  - {{ name: secure-up, upstream: 'https://localhost:{port}', auth: none }}\n",
        ca_path.display()
    ));
    let r = get(&client(), &gw.url("/over-tls")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "tls upstream saw /over-tls");

    // Without the CA the upstream's certificate is not trusted: 502, not a silent pass.
    let untrusting = Gateway::start(&format!(
        "routes:\n  - {{ name: secure-up, upstream: 'https://localhost:{port}', auth: none }}\n"
    ));
    let r = get(&client(), &untrusting.url("/over-tls")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "upstream_unavailable");
}

#[tokio::test]
async fn echo_command_serves_json() {
    // `keygate echo` as users run it: a child process on a port it picks.
    let mut child = std::process::Command::new(BIN)
        .args(["echo", "--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let addr = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if let Some(addr) = line.split("addr=").nth(1) {
                return addr.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("echo never said where it listens");
    })
    .await
    .unwrap();
    let r = send(
        &client(),
        Request::put(format!("http://{addr}/a/b?c=d"))
            .header("x-one", "1")
            .body(Full::from("payload"))
            .unwrap(),
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let json = r.json();
    assert_eq!(json["method"], "PUT");
    assert_eq!(json["path"], "/a/b");
    assert_eq!(json["query"], "c=d");
    assert_eq!(json["headers"]["x-one"], serde_json::json!(["1"]));
    assert_eq!(json["body"], "payload");
}
