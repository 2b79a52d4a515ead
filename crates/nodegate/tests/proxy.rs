//! End-to-end: a real gateway on 127.0.0.1:0 in front of real testnodes, asserting on what a client
//! sees and on what the node received.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::Method;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn get_and_post_pass_through_with_bodies_intact() {
    let n = node_with(testnode::Options { pow: true, pow_difficulty: 8, ..Default::default() }).await;
    let gw = gateway(&[n.url()], "").await;
    let c = client();

    let info = get(addr(&gw), "/api/v1/info").await;
    assert_eq!(info.status, 200);
    assert_eq!(info.json()["data"]["name"], "HORNET");

    let body = r#"{"networkId":"1","parentMessageIds":[],"payload":null,"nonce":"12345"}"#;
    let sub = send(
        &c,
        Method::POST,
        format!("http://{}/api/v1/messages", addr(&gw)),
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(sub.status, 201);
    let id = sub.json()["data"]["messageId"].as_str().unwrap().to_owned();
    assert_eq!(n.state().submissions.load(Relaxed), 1);
    let back = get(addr(&gw), &format!("/api/v1/messages/{id}")).await;
    assert_eq!(back.json()["data"]["nonce"], "12345");

    // Binary bodies, both directions, byte for byte.
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let echo = send(&c, Method::POST, format!("http://{}/debug/echo", addr(&gw)), &[], payload.clone()).await;
    assert_eq!(echo.status, 200);
    assert_eq!(echo.body, payload);
    let big = get(addr(&gw), "/debug/bytes?n=5000000").await;
    assert_eq!(big.body.len(), 5_000_000);

    // Query strings reach the node untouched.
    let q = get(addr(&gw), "/debug/headers?a=1&b=%2F").await;
    assert_eq!(q.json()["uri"], "/debug/headers?a=1&b=%2F");
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let n = node().await;
    let gw = gateway(&[n.url()], "").await;
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let r = send(&c, Method::GET, format!("http://{}/debug/headers", addr(&gw)), &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    // The node is spoken to in HTTP/1.1 whatever the client used.
    assert_eq!(r.json()["version"], "HTTP/1.1");
    assert_eq!(r.seen("x-forwarded-host").len(), 1);
}

#[tokio::test]
async fn hop_by_hop_and_connection_named_headers_do_not_reach_the_node() {
    let n = node().await;
    let gw = gateway(&[n.url()], "").await;
    let r = get_with(
        addr(&gw),
        "/debug/headers",
        &[
            ("connection", "keep-alive, X-Secret-Token, x-other"),
            ("x-secret-token", "hunter2"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ],
    )
    .await;
    let seen = r.seen_headers();
    for h in ["x-secret-token", "x-other", "keep-alive", "te", "proxy-authorization", "proxy-connection", "upgrade"] {
        assert!(seen.iter().all(|(k, _)| k != h), "{h} reached the node: {seen:?}");
    }
    assert_eq!(r.seen("x-kept"), ["yes"]);
    // What the node sends as hop-by-hop does not reach the client either: the node's response
    // carries no Connection header, and hyper's framing headers are its own.
    assert!(!r.headers.contains_key("keep-alive"));
}

#[tokio::test]
async fn forwarded_headers_are_set_and_spoofed_ones_replaced() {
    let n = node().await;
    let gw = gateway(&[n.url()], "").await;
    let r = get_with(
        addr(&gw),
        "/debug/headers",
        &[
            ("host", "api.example.org"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6;proto=https"),
        ],
    )
    .await;
    assert_eq!(r.seen("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(r.seen("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(r.seen("x-forwarded-proto"), ["http"]);
    assert_eq!(r.seen("x-forwarded-host"), ["api.example.org"]);
    assert_eq!(r.seen("forwarded"), ["for=127.0.0.1;proto=http;host=\"api.example.org\""]);
    // The node is addressed by its own authority.
    assert_eq!(r.seen("host"), [n.addr().to_string()]);
}

#[tokio::test]
async fn request_id_is_generated_when_absent_and_kept_when_sane() {
    let n = node().await;
    let gw = gateway(&[n.url()], NO_PROBES).await;
    let c = client();
    let url = format!("http://{}/debug/headers", addr(&gw));
    let r = send(&c, Method::GET, url.clone(), &[], Bytes::new()).await;
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(r.seen("x-request-id"), std::slice::from_ref(&id));
    let r2 = send(&c, Method::GET, url.clone(), &[], Bytes::new()).await;
    assert_ne!(r2.headers["x-request-id"], id.as_str(), "ids must differ between requests");

    let r = send(&c, Method::GET, url.clone(), &[("x-request-id", "trace-42")], Bytes::new()).await;
    assert_eq!(r.headers["x-request-id"], "trace-42");
    assert_eq!(r.seen("x-request-id"), ["trace-42"]);
    // An id that could inject into logs is replaced.
    let r = send(&c, Method::GET, url, &[("x-request-id", "a\"b c")], Bytes::new()).await;
    assert_eq!(r.seen("x-request-id")[0].len(), 32);
    // Errors the gateway makes itself carry an id too.
    n.kill().await;
    let e = get(addr(&gw), "/api/v1/info").await;
    e.assert_gateway_error(502);
    assert_eq!(e.headers["x-request-id"].len(), 32);
}

#[tokio::test]
async fn websocket_echo_through_mqtt_routes() {
    let n = node().await;
    // /mqtt is chrysalis's; stardust's /api/mqtt/v1 is made public here to test both in one go.
    let gw = gateway(&[n.url()], "\n[[route]]\npath = \"/api/mqtt/v1\"\naccess = \"public\"").await;
    for path in ["/mqtt", "/api/mqtt/v1"] {
        let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}{path}", addr(&gw))).await.unwrap();
        assert_eq!(resp.status(), 101);
        for i in 0..3 {
            ws.send(Message::text(format!("hello {i}"))).await.unwrap();
            let got = ws.next().await.unwrap().unwrap();
            assert_eq!(got.into_text().unwrap().as_str(), format!("hello {i}"));
        }
        ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap().into_data().as_ref(), [0u8, 1, 2, 255]);
        ws.close(None).await.unwrap();
    }
}

/// Active health probes off: what a request meets before any probe has noticed.
const NO_PROBES: &str = "\n[health]\nactive = false";

#[tokio::test]
async fn node_down_is_502_json() {
    let n = node().await;
    let url = n.url();
    n.kill().await;
    let gw = gateway(&[url], NO_PROBES).await;
    get(addr(&gw), "/api/v1/info").await.assert_gateway_error(502);
}

#[tokio::test]
async fn no_healthy_node_is_503_json_with_retry_after() {
    let n = node().await;
    let url = n.url();
    n.kill().await;
    let gw = gateway(&[url], "").await;
    // The probe at start finds the node down; from then on the gateway does not even try it.
    eventually(async || get(addr(&gw), "/api/v1/info").await.status == 503).await;
    let r = get(addr(&gw), "/api/v1/info").await;
    r.assert_gateway_error(503);
    assert!(r.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn node_resetting_the_connection_is_502_json() {
    let n = node().await;
    let gw = gateway(&[n.url()], NO_PROBES).await;
    get(addr(&gw), "/debug/reset").await.assert_gateway_error(502);
    // The pool recovers: the next request works.
    assert_eq!(get(addr(&gw), "/api/v1/info").await.status, 200);
}

#[tokio::test]
async fn slow_node_is_504_json() {
    let n = node().await;
    let gw = gateway(&[n.url()], &format!("[upstream]\nresponse_timeout = \"200ms\"{NO_PROBES}")).await;
    get(addr(&gw), "/debug/sleep?ms=3000").await.assert_gateway_error(504);
}

#[tokio::test]
async fn node_not_accepting_connections_is_504_json() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so connects hang.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(1).unwrap();
    let target = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(100), tokio::net::TcpStream::connect(target)).await
        {
            fillers.push(s);
        }
    }
    let gw =
        gateway(&[format!("http://{target}")], &format!("[upstream]\nconnect_timeout = \"200ms\"{NO_PROBES}")).await;
    let r = get(addr(&gw), "/api/v1/info").await;
    r.assert_gateway_error(504);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("connection"), "{:?}", r.body);
}

#[tokio::test]
async fn body_over_max_body_is_413_by_length_and_by_chunks() {
    let n = node().await;
    let gw = gateway(&[n.url()], "max_body = \"64KiB\"").await;
    let c = client();
    let url = format!("http://{}/debug/count", addr(&gw));
    // Declared too large: refused before anything reaches the node.
    let r = send(&c, Method::POST, url.clone(), &[], vec![0u8; 64 * 1024 + 1]).await;
    r.assert_gateway_error(413);
    assert_eq!(n.state().requests.load(Relaxed), 0);
    // Exactly at the limit passes.
    let r = send(&c, Method::POST, url, &[], vec![7u8; 64 * 1024]).await;
    assert_eq!(r.json()["bytes"], 64 * 1024);

    // Chunked, growing past the limit mid-stream.
    let mut req = b"POST /debug/count HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        req.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        req.extend_from_slice(&[1u8; 8192]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let out = raw(addr(&gw), &req, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("\"code\":\"413\""), "{out}");
}

#[tokio::test]
async fn oversized_headers_are_431_json() {
    let n = node().await;
    let gw = gateway(&[n.url()], "max_header_size = \"4KiB\"").await;
    let c = client();
    let big = "a".repeat(5000);
    let r =
        send(&c, Method::GET, format!("http://{}/api/v1/info", addr(&gw)), &[("x-big", big.as_str())], Bytes::new())
            .await;
    r.assert_gateway_error(431);
    // Many small headers add up too (fewer than hyper's 100-header cap, which answers 431 itself).
    let many: Vec<(String, String)> = (0..60).map(|i| (format!("x-h{i}"), "v".repeat(80))).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    send(&c, Method::GET, format!("http://{}/api/v1/info", addr(&gw)), &refs, Bytes::new())
        .await
        .assert_gateway_error(431);
    // A head too big even to buffer is refused by the parser (431, empty body), not served.
    let huge = format!("GET /api/v1/info HTTP/1.1\r\nhost: x\r\nx-huge: {}\r\n\r\n", "b".repeat(64 * 1024));
    let out = raw(addr(&gw), huge.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(n.state().requests.load(Relaxed), 0);
}

#[tokio::test]
async fn connect_method_is_refused() {
    let n = node().await;
    let gw = gateway(&[n.url()], "").await;
    let out =
        raw(addr(&gw), b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nhost: 127.0.0.1:22\r\n\r\n", Duration::from_secs(2)).await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert!(out.contains("\"code\":\"405\""), "{out}");
}

#[tokio::test]
async fn slow_request_head_is_cut_off_at_the_header_timeout() {
    let n = node().await;
    let gw = gateway(&[n.url()], "header_timeout = \"300ms\"\nidle_timeout = \"30s\"").await;
    let start = tokio::time::Instant::now();
    // Half a request head, then silence (slowloris).
    let out = raw(addr(&gw), b"GET /api/v1/info HTTP/1.1\r\nhost: x\r\n", Duration::from_secs(5)).await;
    let waited = start.elapsed();
    assert!(out.is_empty(), "got {out}");
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(4), "closed after {waited:?}");
    // A connection that never sends anything is cut off the same way.
    let start = tokio::time::Instant::now();
    let out = raw(addr(&gw), b"", Duration::from_secs(5)).await;
    assert!(out.is_empty() && start.elapsed() < Duration::from_secs(4));
    assert_eq!(n.state().requests.load(Relaxed), 0);
}

#[tokio::test]
async fn slow_head_on_a_kept_alive_connection_is_cut_off_within_two_header_timeouts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let n = node().await;
    let gw = gateway(&[n.url()], "header_timeout = \"300ms\"\nidle_timeout = \"30s\"").await;
    let mut s = tokio::net::TcpStream::connect(addr(&gw)).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let k = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..k]).starts_with("HTTP/1.1 200"));
    // Half of a second head, then silence.
    s.write_all(b"GET /health HTTP/1.1\r\nhost:").await.unwrap();
    let start = tokio::time::Instant::now();
    let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("not closed").unwrap();
    assert_eq!(k, 0, "got {:?}", String::from_utf8_lossy(&buf[..k]));
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_millis(1500), "closed after {waited:?}");
}

#[tokio::test]
async fn a_first_byte_like_the_http2_preface_does_not_shed_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let n = node().await;
    let gw = gateway(&[n.url()], "header_timeout = \"300ms\"\nidle_timeout = \"30s\"").await;
    let mut s = tokio::net::TcpStream::connect(addr(&gw)).await.unwrap();
    // `P` alone, then the rest of an HTTP/1.1 request: it is not HTTP/2.
    s.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"UT /health HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let k = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..k]).starts_with("HTTP/1.1 "), "{:?}", String::from_utf8_lossy(&buf[..k]));
    // A slow second head is cut off as on any HTTP/1.1 connection.
    s.write_all(b"GET /health HTTP/1.1\r\nhost:").await.unwrap();
    let start = tokio::time::Instant::now();
    let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("not closed").unwrap();
    assert_eq!(k, 0, "got {:?}", String::from_utf8_lossy(&buf[..k]));
    assert!(start.elapsed() < Duration::from_millis(1500), "closed after {:?}", start.elapsed());
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout_not_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let n = node().await;
    let gw = gateway(&[n.url()], "header_timeout = \"200ms\"\nidle_timeout = \"700ms\"").await;
    let mut s = tokio::net::TcpStream::connect(addr(&gw)).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let k = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..k]).starts_with("HTTP/1.1 200"));
    // Idle longer than the header timeout: still open, a second request is served.
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let k = s.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..k]).starts_with("HTTP/1.1 200"),
        "keep-alive connection was closed too early"
    );
    // Then idle past the idle timeout: the gateway closes it.
    let start = tokio::time::Instant::now();
    let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("not closed").unwrap();
    assert_eq!(k, 0);
    assert!(start.elapsed() >= Duration::from_millis(600), "closed after {:?}", start.elapsed());
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_and_refuses_new_ones() {
    let n = node_with(testnode::Options { delay: Duration::from_millis(500), ..Default::default() }).await;
    let gw = gateway(&[n.url()], "drain_timeout = \"10s\"").await;
    let a = addr(&gw);
    let slow = tokio::spawn(async move { get(a, "/api/v1/info").await });
    // Shut down only once the request is in flight at the node.
    eventually(async || n.state().requests.load(Relaxed) == 1).await;
    let shutdown = tokio::spawn(gw.shutdown());
    // New connections are refused once the listener is closed.
    eventually(async || tokio::net::TcpStream::connect(a).await.is_err()).await;
    assert!(!slow.is_finished(), "the in-flight request should still be waiting on the node");
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "in-flight request was cut: {:?}", r.body);
    assert_eq!(r.json()["data"]["name"], "HORNET");
    tokio::time::timeout(Duration::from_secs(5), shutdown).await.expect("shutdown did not finish").unwrap();
}

#[tokio::test]
async fn drain_timeout_bounds_shutdown() {
    let n = node_with(testnode::Options { delay: Duration::from_secs(20), ..Default::default() }).await;
    let gw = gateway(&[n.url()], "drain_timeout = \"300ms\"").await;
    let a = addr(&gw);
    let stuck = tokio::spawn(async move {
        let c = client();
        c.request(http::Request::get(format!("http://{a}/api/v1/info")).body(Default::default()).unwrap()).await
    });
    eventually(async || n.state().requests.load(Relaxed) == 1).await;
    let start = tokio::time::Instant::now();
    gw.shutdown().await;
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "shutdown took {took:?}");
    // The stuck request was cut, not answered.
    assert!(tokio::time::timeout(Duration::from_secs(3), stuck).await.unwrap().unwrap().is_err());
}

#[tokio::test]
async fn uploads_stream_to_the_node_intact() {
    // 20 MiB through the in-process gateway, checked by hash at the node; the 100 MiB memory test
    // runs the real binary (tests/memory.rs).
    let n = node().await;
    let gw = gateway(&[n.url()], "max_body = \"1GiB\"").await;
    let data: Vec<u8> = (0..20u32 << 20).map(|i| (i % 253) as u8).collect();
    let r = send(&client(), Method::POST, format!("http://{}/debug/count", addr(&gw)), &[], data.clone()).await;
    assert_eq!(r.json()["bytes"], data.len());
    let hex: String = Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(r.json()["sha256"], hex);
}

#[tokio::test]
async fn node_connections_are_pooled_and_reused() {
    let n = node().await;
    // Probes open connections of their own; only the proxy's are counted here.
    let gw = gateway(&[n.url()], NO_PROBES).await;
    let c = client();
    for i in 0..30 {
        let (method, path) = if i % 3 == 0 { (Method::HEAD, "/health") } else { (Method::GET, "/api/v1/info") };
        let r = send(&c, method, format!("http://{}{path}", addr(&gw)), &[], Bytes::new()).await;
        assert_eq!(r.status, 200);
    }
    // Empty-bodied answers (204, and a Content-Length: 0 error) go back to the pool too.
    for _ in 0..5 {
        assert_eq!(get(addr(&gw), "/debug/status?code=204").await.status, 204);
    }
    assert_eq!(n.state().connections.load(Relaxed), 1, "sequential requests should share one node connection");
    // A response abandoned mid-body closes its connection rather than returning it dirty.
    let mut s = tokio::net::TcpStream::connect(addr(&gw)).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /debug/bytes?n=50000000 HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let _ = s.read(&mut buf).await.unwrap();
    drop(s);
    for _ in 0..3 {
        assert_eq!(get(addr(&gw), "/api/v1/info").await.status, 200);
    }
    assert_eq!(n.state().connections.load(Relaxed), 2);
}

#[tokio::test]
async fn a_restarted_node_is_reached_through_new_connections_without_errors() {
    // A port outside the ephemeral range, so no outgoing connection takes it while the node is down.
    let node_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let n = testnode::TestNode::start(node_addr, testnode::Options::default()).await.unwrap();
    let gw = gateway(&[n.url()], NO_PROBES).await;
    for _ in 0..5 {
        assert_eq!(get(addr(&gw), "/api/v1/info").await.status, 200);
    }
    // The node restarts: every pooled connection is now dead.
    n.kill().await;
    let n2 = testnode::TestNode::start(node_addr, testnode::Options::default()).await.unwrap();
    for _ in 0..5 {
        let r = get(addr(&gw), "/api/v1/info").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert_eq!(n2.state().requests.load(Relaxed), 5);
}

#[tokio::test]
async fn hop_by_hop_headers_from_the_node_do_not_reach_the_client() {
    let n = node().await;
    let gw = gateway(&[n.url()], "").await;
    let r = get(addr(&gw), "/debug/hop-headers").await;
    assert_eq!(r.status, 200);
    for h in ["x-node-secret", "keep-alive", "proxy-authenticate"] {
        assert!(!r.headers.contains_key(h), "{h} reached the client: {:?}", r.headers);
    }
    assert_eq!(r.headers["x-node-kept"], "1");
    assert!(r.headers.get("connection").is_none_or(|v| v != "x-node-secret"));
}

#[tokio::test]
async fn listens_on_ipv4_and_ipv6_at_once() {
    let n = node().await;
    let toml = format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\", \"[::1]:0\"]\n\n[[node]]\nname = \"a\"\nurl = \"{}\"\n\n[log]\naccess = false\n{DEBUG_ROUTES}",
        n.url()
    );
    let gw = nodegate::Gateway::start(nodegate::Config::parse(&toml, "t.toml").unwrap()).await.unwrap();
    let [v4, v6] = gw.local_addrs() else { panic!("two listeners expected") };
    assert!(v4.is_ipv4() && v6.is_ipv6());
    for a in [*v4, *v6] {
        let r = get(a, "/debug/headers").await;
        assert_eq!(r.status, 200);
        let expected = if a.is_ipv4() { "127.0.0.1" } else { "::1" };
        assert_eq!(r.seen("x-forwarded-for"), [expected]);
    }
    let r = get(*v6, "/debug/headers").await;
    assert_eq!(r.seen("forwarded")[0].split(';').next().unwrap(), "for=\"[::1]\"");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_request_to_the_node() {
    let n = node().await;
    let gw = gateway(&[n.url()], "").await;
    // The body, read by Content-Length, would end early and leave a second request behind; read
    // as chunked it ends at `0`. Either way the node must see exactly one request per request the
    // gateway accepted, framed by the gateway, never the bytes the client chose.
    let smuggled = "GET /api/v1/peers HTTP/1.1\r\nhost: x\r\n\r\n";
    let body = format!("0\r\n\r\n{smuggled}");
    let req = format!(
        "POST /debug/count HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    // hyper takes the chunked framing (RFC 9112 section 6.3), drops Content-Length, and closes the
    // connection after answering (raw() returns only when it does): the bytes after the chunked
    // body are never read as another request.
    let out = raw(addr(&gw), req.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"bytes\":0"), "framed by Content-Length instead of chunked: {out}");
    assert!(out.to_ascii_lowercase().contains("connection: close"), "{out}");
    assert_eq!(out.matches("HTTP/1.1").count(), 1, "a second response means a second request was read: {out}");
    assert_eq!(n.state().requests.load(Relaxed), 0, "the node served a smuggled request: {out}");
}

#[tokio::test]
async fn a_node_that_stops_mid_body_is_cut_off_at_the_upstream_body_timeout() {
    let n = node().await;
    let extra = "\n[upstream]\nbody_timeout = \"300ms\"\n\n[health]\nactive = false\neject_after = 1\n\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n";
    let gw = gateway(&[n.url()], extra).await;
    let c = client();
    let req = http::Request::get(format!("http://{}/debug/stall?n=100000&sent=10", addr(&gw)))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "the headers came through");
    let start = tokio::time::Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(5), http_body_util::BodyExt::collect(resp.into_body()))
        .await
        .expect("the client was pinned by a stalled node");
    assert!(body.is_err(), "a cut-off body must not look complete");
    assert!(start.elapsed() < Duration::from_secs(2), "cut off after {:?}", start.elapsed());
    // The node's in-flight count is released and the stall counted as its failure.
    let status = get(gw.admin_addr().unwrap(), "/status").await.json();
    assert_eq!(status["nodes"][0]["in_flight"], 0, "{status}");
    assert_eq!(status["nodes"][0]["ejections"], 1, "{status}");
}

#[tokio::test]
async fn connections_to_a_node_are_capped_and_requests_queue_then_get_503() {
    let n = node().await;
    let toml = format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\n\n[[node]]\nname = \"a\"\nurl = \"{}\"\nmax_connections = 2\n\n\
         [upstream]\nqueue_timeout = \"300ms\"\n\n[health]\nactive = false\n\n[log]\naccess = false\n{DEBUG_ROUTES}",
        n.url()
    );
    let gw = nodegate::Gateway::start(nodegate::Config::parse(&toml, "cap.toml").unwrap()).await.unwrap();
    let g = addr(&gw);
    // Three slow requests at once: two hold the node's two connections, the third waits, then 503.
    let slow = || get(g, "/debug/sleep?ms=1500");
    let (a, b, c) = tokio::join!(slow(), slow(), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = tokio::time::Instant::now();
        (get(g, "/debug/sleep?ms=1500").await, start.elapsed())
    });
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));
    let (c, waited) = c;
    c.assert_gateway_error(503);
    assert_eq!(c.headers["retry-after"], "1");
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_millis(1200), "waited {waited:?}");
    assert!(n.state().connections.load(Relaxed) <= 2, "the node got more connections than its cap");
    // A request that queues gets the connection another one gives back.
    let quick = || get(g, "/debug/sleep?ms=100");
    let (a, b, c) = tokio::join!(quick(), quick(), quick());
    assert_eq!((a.status.as_u16(), b.status.as_u16(), c.status.as_u16()), (200, 200, 200));
    assert!(n.state().connections.load(Relaxed) <= 2, "the node got more connections than its cap");
}

/// A node that upgrades any request to a WebSocket tunnel, then streams `flood` bytes at the client
/// and reports every byte it receives on `got`.
async fn flooding_upgrade_node(flood: usize) -> (String, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, got) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        let (mut r, mut w) = s.into_split();
        tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            let mut left = flood;
            while left > 0 {
                let n = left.min(chunk.len());
                if w.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                left -= n;
            }
        });
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    (url, got)
}

#[tokio::test]
async fn a_websocket_tunnel_moves_both_ways_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The node pours 32 MiB at a client that is not reading yet: that direction fills every buffer
    // on the way and blocks. The other direction must still carry the client's message.
    let (url, mut got) = flooding_upgrade_node(32 << 20).await;
    let gw = gateway(&[url], "\n[health]\nactive = false").await;
    let mut s = tokio::net::TcpStream::connect(addr(&gw)).await.unwrap();
    s.write_all(b"GET /mqtt HTTP/1.1\r\nhost: gw\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    // Let the flood fill the buffers toward the client.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(b"ping from the client").await.unwrap();
    let mut seen = Vec::new();
    let arrived = tokio::time::timeout(Duration::from_secs(3), async {
        while !seen.ends_with(b"ping from the client") {
            seen.extend(got.recv().await.expect("the node's side closed"));
        }
    })
    .await;
    assert!(arrived.is_ok(), "the client's message was held up behind the other direction");
}
