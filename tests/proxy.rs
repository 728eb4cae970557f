//! Black-box tests of the proxy data path: a real keygate process, real upstreams.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};

#[tokio::test]
async fn routes_by_host_path_and_method_and_strips_prefix() {
    let a = echo_upstream().await;
    let b = echo_upstream().await;
    let gw = Gateway::start(&format!(
        "routes:
  - {{ name: by-host, host: api.example.com, upstream: 'http://{a}/host', auth: none }}
  - {{ name: writes, path_prefix: /items, methods: [POST], upstream: 'http://{b}/w', auth: none }}
  - {{ name: items, path_prefix: /items, strip_prefix: true, upstream: 'http://{a}', auth: none }}
"
    ));
    let c = client();

    let r = send(
        &c,
        Request::get(gw.url("/items/1?q=x"))
            .header("host", "api.example.com")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/host/items/1");
    assert_eq!(r.json()["query"], "q=x");

    let r = send(
        &c,
        Request::post(gw.url("/items/1"))
            .body(Full::from("hi"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.json()["path"], "/w/items/1");
    assert_eq!(r.json()["method"], "POST");
    assert_eq!(r.json()["body"], "hi");

    let r = get(&c, &gw.url("/items/1?q=x")).await;
    assert_eq!(r.json()["path"], "/1");
    assert_eq!(r.json()["query"], "q=x");

    let r = get(&c, &gw.url("/itemsx")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "no_route");
}

#[tokio::test]
async fn forwarding_and_hop_by_hop_headers_are_rewritten() {
    let up = echo_upstream().await;
    let gw = Gateway::start(&format!(
        "routes:\n  - {{ name: api, upstream: 'http://{up}', auth: none }}\n"
    ));
    let c = client();
    let r = send(
        &c,
        Request::get(gw.url("/h"))
            .header("host", "public.example.com")
            .header("connection", "keep-alive, x-conn-secret")
            .header("x-conn-secret", "must not pass")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("te", "trailers")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-proto", "https")
            .header("x-request-id", "client-chosen-id")
            .header("x-keygate-user", "admin")
            .header("X-Keygate-Permissions", "*")
            .header("x_keygate_tenant", "other")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = &r.json()["headers"];
    for gone in [
        "connection",
        "x-conn-secret",
        "keep-alive",
        "proxy-authorization",
        "x-keygate-user",
        "x-keygate-permissions",
        "x_keygate_tenant",
    ] {
        assert!(
            seen.get(gone).is_none(),
            "{gone} reached the upstream: {seen}"
        );
    }
    assert_eq!(seen["te"][0], "trailers");
    assert_eq!(seen["x-forwarded-for"][0], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"][0], "http");
    assert_eq!(seen["x-forwarded-host"][0], "public.example.com");
    assert_eq!(
        seen["host"][0],
        up.to_string(),
        "Host is the upstream's unless preserve_host"
    );
    assert_eq!(seen["x-request-id"][0], "client-chosen-id");
    assert_eq!(r.headers["x-request-id"], "client-chosen-id");

    // A request without an id gets a fresh one, the same upstream and back to the client.
    let r = get(&c, &gw.url("/h")).await;
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36);
    assert_eq!(r.json()["headers"]["x-request-id"][0], id.as_str());
}

#[tokio::test]
async fn preserve_host_sends_the_clients_host() {
    let up = echo_upstream().await;
    let gw = Gateway::start(&format!(
        "routes:\n  - {{ name: api, upstream: 'http://{up}', auth: none, preserve_host: true }}\n"
    ));
    let r = send(
        &client(),
        Request::get(gw.url("/"))
            .header("host", "public.example.com")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.json()["headers"]["host"][0], "public.example.com");
}

#[tokio::test]
async fn upstream_failures_are_502_and_504_json() {
    let dead = closed_port();
    let hanging = upstream(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(Full::<Bytes>::default())
    })
    .await;
    let gw = Gateway::start(&format!(
        "routes:
  - {{ name: dead, path_prefix: /dead, upstream: 'http://{dead}', auth: none }}
  - {{ name: slow, path_prefix: /slow, upstream: 'http://{hanging}', auth: none, timeout: 300ms }}
"
    ));
    let c = client();
    let r = send(
        &c,
        Request::get(gw.url("/dead"))
            .header("x-request-id", "r-502")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json()["error"]["code"], "upstream_unavailable");
    assert_eq!(r.json()["request_id"], "r-502");

    let started = std::time::Instant::now();
    let r = get(&c, &gw.url("/slow")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(10));

    // The gateway stays healthy.
    assert_eq!(get(&c, &gw.status_url("/healthz")).await.status, 200);
}

const STREAM_BYTES: u64 = 100 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

fn chunked_body(
    total: u64,
) -> StreamBody<impl futures_util::Stream<Item = Result<http_body::Frame<Bytes>, std::io::Error>>> {
    let chunk = Bytes::from(vec![b'k'; CHUNK]);
    let count = total / CHUNK as u64;
    StreamBody::new(futures_util::stream::iter(
        (0..count).map(move |_| Ok(http_body::Frame::data(chunk.clone()))),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_100_mb_both_ways_with_flat_memory() {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let up = upstream(move |req: Request<hyper::body::Incoming>| {
        let counter = counter.clone();
        async move {
            if req.uri().path() == "/download" {
                return Response::new(http_body_util::Either::Left(chunked_body(STREAM_BYTES)));
            }
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    n += data.len() as u64;
                }
            }
            counter.store(n, Ordering::SeqCst);
            Response::new(http_body_util::Either::Right(Full::from(n.to_string())))
        }
    })
    .await;
    let gw = Gateway::start(&format!(
        "routes:\n  - {{ name: bulk, upstream: 'http://{up}', auth: none }}\n"
    ));

    // Warm up connections and allocator pools before taking the baseline.
    let plain: common::HttpClient = client();
    assert_eq!(get(&plain, &gw.url("/warm")).await.status, 200);
    let (baseline, _) = gw.memory_kib();

    let stream_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let upload = Request::post(gw.url("/upload"))
        .body(chunked_body(STREAM_BYTES))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(120), stream_client.request(upload))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed, STREAM_BYTES.to_string());
    assert_eq!(received.load(Ordering::SeqCst), STREAM_BYTES);

    let response = tokio::time::timeout(
        Duration::from_secs(120),
        plain.request(
            Request::get(gw.url("/download"))
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            n += data.len() as u64;
        }
    }
    assert_eq!(n, STREAM_BYTES);

    let (_, peak) = gw.memory_kib();
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    assert!(growth_mib < 32, "gateway memory grew by {growth_mib} MiB while streaming 100 MB each way (baseline {baseline} KiB, peak {peak} KiB)");
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    let gw = Gateway::start(&format!(
        "routes:\n  - {{ name: ws, upstream: 'http://{ws_addr}', auth: none }}\n"
    ));

    let (mut ws, response) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(format!("ws://{}/socket", gw.proxy)),
    )
    .await
    .unwrap()
    .expect("handshake through keygate");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "through", "the gateway"] {
        ws.send(Message::text(text)).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, Message::text(text));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn http2_on_both_sides() {
    let up = upstream(|req: Request<hyper::body::Incoming>| async move {
        Response::new(Full::from(format!("{:?}", req.version())))
    })
    .await;
    let gw = Gateway::start(&format!(
        "routes:
  - {{ name: grpc, path_prefix: /grpc, upstream: 'http://{up}', auth: none, upstream_http2: true }}
  - {{ name: rest, upstream: 'http://{up}', auth: none }}
"
    ));
    let h2 = h2c_client();
    let r = get(&h2, &gw.url("/grpc/svc.Method")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2, "client side");
    assert_eq!(r.text(), "HTTP/2.0", "upstream side");

    let r = get(&h2, &gw.url("/rest")).await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.text(), "HTTP/1.1", "plain routes speak HTTP/1.1 upstream");
}

#[tokio::test]
async fn metrics_count_what_was_sent() {
    let up = echo_upstream().await;
    let gw = Gateway::start(&format!(
        "routes:\n  - {{ name: counted, path_prefix: /c, upstream: 'http://{up}', auth: none }}\n"
    ));
    let c = client();
    for _ in 0..7 {
        assert_eq!(get(&c, &gw.url("/c/x")).await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(&c, &gw.url("/elsewhere")).await.status, 404);
    }
    let text = get(&c, &gw.status_url("/metrics")).await.text();
    assert_eq!(
        metric_value(
            &text,
            r#"keygate_http_requests_total{route="counted",code="200"}"#
        ),
        Some(7.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            r#"keygate_http_requests_total{route="_none",code="404"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            r#"keygate_http_request_duration_seconds_count{route="counted"}"#
        ),
        Some(7.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            r#"keygate_upstream_request_duration_seconds_count{route="counted"}"#
        ),
        Some(7.0),
        "{text}"
    );
}

/// Reads one bodiless HTTP/1.1 response (the echo upstream's `Content-Length` answer) and
/// returns its status line; bounded in time and size.
async fn read_one_response(conn: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(
                n > 0 && got.len() < 64 * 1024,
                "connection ended early: {got:?}"
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    return head.lines().next().unwrap_or_default().to_owned();
                }
            }
        }
    })
    .await
    .expect("response within 10 s")
}

/// `count` connections to the proxy, opened one after another and each answered a `GET
/// path` before the next opens, so every placement over the workers sees the ones before it.
async fn served_connections(gw: &Gateway, path: &str, count: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut conns = Vec::new();
    for _ in 0..count {
        let mut conn = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_one_response(&mut conn).await, "HTTP/1.1 200 OK");
        conns.push(conn);
    }
    conns
}

#[tokio::test]
async fn client_connections_spread_evenly_over_the_workers() {
    use tokio::io::AsyncWriteExt;
    let up = echo_upstream().await;
    let gw = Gateway::start(&format!(
        "proxy: {{ listen: \"127.0.0.1:0\", workers: 2 }}\n\
         routes:\n  - {{ name: open, path_prefix: /o, upstream: 'http://{up}', auth: none }}\n"
    ));
    let c = client();
    let open_per_worker = |text: &str| {
        [0, 1].map(|w| {
            metric_value(
                text,
                &format!(r#"keygate_proxy_connections{{worker="{w}"}}"#),
            )
            .unwrap_or(0.0)
        })
    };
    // Opened one after another and each used, so every placement sees the ones before it;
    // the workers share one socket, so either may accept any of them.
    let mut conns = served_connections(&gw, "/o/x", 8).await;
    let text = get(&c, &gw.status_url("/metrics")).await.text();
    assert_eq!(open_per_worker(&text), [4.0, 4.0], "{text}");
    // A connection served by the other worker keeps working there.
    for conn in &mut conns {
        conn.write_all(b"GET /o/y HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_one_response(conn).await, "HTTP/1.1 200 OK");
    }
    drop(conns);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = get(&c, &gw.status_url("/metrics")).await.text();
        if open_per_worker(&text) == [0.0, 0.0] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "closed connections still counted: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The CPU lists of keygate's `workers` proxy workers, read once each has served a
/// connection (a worker ties itself to its CPU as it starts, before it serves anything).
/// The connections stay open while they are placed, so each goes to a worker without one.
async fn proxy_worker_cpus(gw: &Gateway, workers: usize) -> Vec<String> {
    let _conns = served_connections(gw, "/x", workers).await;
    gw.thread_cpus()
        .into_iter()
        .filter(|(name, _)| name.starts_with("keygate-proxy-"))
        .map(|(_, cpus)| cpus)
        .collect()
}

/// A cache filling from empty must not wait for the kernel to zero 2 MiB huge pages inside
/// requests (`src/huge_pages.rs`): the served process has transparent huge pages off.
#[tokio::test]
async fn the_gateway_runs_without_transparent_huge_pages() {
    let gw = Gateway::start(
        "proxy: { listen: \"127.0.0.1:0\" }\nroutes:\n  - { name: a, upstream: 'http://127.0.0.1:9', auth: none }\n",
    );
    // Kernels before 5.0 do not report it; there is nothing to check on them.
    if let Some(thp) = gw.status_field("THP_enabled") {
        assert_eq!(thp, "0", "THP_enabled of the keygate process");
    }
}

#[tokio::test]
async fn proxy_workers_are_tied_one_per_cpu_only_when_they_match_the_cpus() {
    let up = echo_upstream().await;
    let usable = own_cpu_list();
    let cpus = cpu_count(&usable);
    let start = |workers: usize, affinity: &str| {
        Gateway::start(&format!(
            "proxy: {{ listen: '127.0.0.1:0', workers: {workers}{affinity} }}\n\
             routes:\n  - {{ name: open, upstream: 'http://{up}', auth: none }}\n"
        ))
    };

    if cpus > 1 {
        // As many workers as CPUs: each worker on a CPU of its own, the rest of keygate free.
        let gw = start(cpus, "");
        let tied = proxy_worker_cpus(&gw, cpus).await;
        assert_eq!(tied.len(), cpus, "{:?}", gw.thread_cpus());
        assert!(tied.iter().all(|l| cpu_count(l) == 1), "{tied:?}");
        let mut distinct = tied.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), cpus, "one CPU each: {tied:?}");
        let others: Vec<_> = gw
            .thread_cpus()
            .into_iter()
            .filter(|(name, _)| !name.starts_with("keygate-proxy-"))
            .collect();
        assert!(others.iter().all(|(_, l)| *l == usable), "{others:?}");
    }

    // Turned off, or more workers than CPUs: every worker may run on every CPU.
    for (workers, affinity) in [(cpus, ", cpu_affinity: off"), (cpus + 1, "")] {
        let gw = start(workers, affinity);
        let free = proxy_worker_cpus(&gw, workers).await;
        assert_eq!(free.len(), workers, "{:?}", gw.thread_cpus());
        assert!(
            free.iter().all(|l| *l == usable),
            "{workers}{affinity}: {free:?}"
        );
    }
}

#[tokio::test]
async fn oversized_request_head_is_refused_with_431() {
    let up = echo_upstream().await;
    let gw = Gateway::start(&format!(
        "proxy: {{ listen: '127.0.0.1:0', max_header_bytes: 16384 }}\nroutes:\n  - {{ name: api, upstream: 'http://{up}', auth: none }}\n"
    ));
    let r = send(
        &client(),
        Request::get(gw.url("/"))
            .header("x-big", "a".repeat(20_000))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(get(&client(), &gw.url("/")).await.status, 200);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_while_readyz_is_503() {
    let slow = upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Response::new(Full::from("finished"))
    })
    .await;
    let mut gw = Gateway::start(&format!(
        "shutdown: {{ delay: 500ms, grace: 10s }}\nroutes:\n  - {{ name: slow, upstream: 'http://{slow}', auth: none }}\n"
    ));
    // Ready once the store has answered its first ping, a moment after the listeners bind.
    wait_for_status(&client(), &gw.status_url("/readyz"), StatusCode::OK).await;

    let url = gw.url("/work");
    let in_flight = tokio::spawn(async move { get(&client(), &url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.sigterm();

    wait_for_status(
        &client(),
        &gw.status_url("/readyz"),
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(
        get(&client(), &gw.status_url("/healthz")).await.status,
        200,
        "alive while draining"
    );

    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "finished");
    let exit = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(exit.success(), "exit status {exit}");
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "routes:\n  - name: api\n    upstream: http://127.0.0.1:9\n    auth: none\n    colour: blue\n").unwrap();
    let (status, _out, err) = run_cli(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("routes[0].colour"), "{err}");

    std::fs::write(&path, "routes:\n  - name: api\n    upstream: http://127.0.0.1:9\n    auth: none\n    timeout: soon\n").unwrap();
    let (status, _out, err) = run_cli(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("routes[0].timeout"), "{err}");

    std::fs::write(
        &path,
        "routes:\n  - name: api\n    upstream: http://127.0.0.1:9\n    auth: none\n",
    )
    .unwrap();
    let (status, out, err) = run_cli(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(out.contains("header_prefix: X-Keygate-"), "{out}");
}

#[test]
fn serve_refuses_a_broken_config_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "routes:\n  - name: api\n    upstream: http://127.0.0.1:9\n    auth: sometimes\n",
    )
    .unwrap();
    let (status, _out, err) = run_cli(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("routes[0].auth"), "{err}");
}

#[tokio::test]
async fn dot_segments_cannot_escape_a_route() {
    let public = echo_upstream().await;
    let gw = Gateway::start(&format!("routes:\n  - {{ name: public, path_prefix: /public, upstream: 'http://{public}', auth: none }}\n"));
    let c = client();
    for sneaky in [
        "/public/../admin/x",
        "/public/%2e%2e/admin",
        "/public/%2E./admin",
        "/public/./../admin",
    ] {
        let r = get(&c, &gw.url(sneaky)).await;
        assert_eq!(
            r.status,
            404,
            "{sneaky} must be routed as /admin…: {}",
            r.text()
        );
    }
    let r = get(&c, &gw.url("/public/a/../b?x=1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["path"],
        "/public/b",
        "the upstream sees the path that was routed"
    );
    assert_eq!(r.json()["query"], "x=1");
}
