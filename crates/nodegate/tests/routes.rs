//! End-to-end: route policy on the canonical path, and a corpus of tricks aimed at reaching an
//! admin route without a credential. None may reach the node.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;

/// Request targets that try to reach an admin route (`/api/v1/peers`, `/api/v1/control/*`,
/// `/api/plugins/*`) by looking like something else.
const BYPASS_TARGETS: &[&str] = &[
    "/api/v1/peers",
    "/api/v1/peers/",
    "/api/v1/peers/12D3KooW",
    "/api/v1/peers?x=/health",
    "/api/v1/peers?/api/v1/info",
    "//api/v1/peers",
    "/api//v1/peers",
    "/api/v1//peers",
    "/./api/v1/peers",
    "/api/./v1/peers",
    "/health/../api/v1/peers",
    "/health/%2e%2e/api/v1/peers",
    "/health/%2E%2E/api/v1/peers",
    "/health/.%2e/api/v1/peers",
    "/health/%2e./api/v1/peers",
    "/api/v1/info/../peers",
    "/api/v1/info/%2e%2e/peers",
    "/api/v1/messages/../peers",
    "/api/v1/messages/%2e%2e/peers",
    "/api/v1/messages/..%2fpeers",
    "/api/v1/messages/%2e%2e%2fpeers",
    "/mqtt/../api/v1/peers",
    "/api/v1/%70eers",
    "/api/v1/peer%73",
    "/%61pi/v1/peers",
    "/api%2fv1%2fpeers",
    "/api/v1%2Fpeers",
    "/api%5cv1%5cpeers",
    "/api/v1/peers%00",
    "/api/v1/peers%00.json",
    "/api/v1/peers;",
    "/api/v1/peers;.json",
    "/api/v1;x/peers",
    "/API/V1/PEERS",
    "/Api/v1/Peers",
    "/api/v1/PEERS",
    "/api/v1/peers%20",
    "/api/v1/peers%09",
    "/api/v1/peers/.",
    "/api/v1/peers/..;/",
    "/api/v1/peers%3F/health",
    "/api/v1/peers%23/health",
    "/api/v1/peers%2f..",
    "/api/v1/control/database/prune",
    "/api/v1/control/../control/snapshots/create",
    "/api/plugins/spammer/start",
    "/health/../api/plugins/spammer/start",
    "/api/v1/peers%",
    "/api/v1/peers%zz",
    "/api/v1/%252e%252e/peers",
    "/api/v1/messages/..%252fpeers",
    "/api/v1/messages/%252e%252e%252fpeers",
    "/api/v1/messages/%25%32%65%25%32%65%25%32%66peers",
];

async fn status_of(gw: std::net::SocketAddr, request: &str) -> String {
    let out = raw(gw, request.as_bytes(), Duration::from_secs(5)).await;
    out.get(9..12).unwrap_or("(no answer)").to_owned()
}

#[tokio::test]
async fn no_trick_reaches_an_admin_route_without_a_credential() {
    let n = node().await;
    let gw = gateway(&[n.url()], "\n[health]\nactive = false").await;
    let g = addr(&gw);
    let mut answers = Vec::new();
    for target in BYPASS_TARGETS {
        let req = format!("GET {target} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n");
        answers.push((*target, status_of(g, &req).await));
    }
    // The same, in absolute form and with Host games.
    for (req, what) in [
        ("GET http://127.0.0.1/api/v1/peers HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n", "absolute-form"),
        (
            "GET http://gw/health/../api/v1/peers HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
            "absolute-form with dots",
        ),
        (
            "GET /api/v1/peers HTTP/1.1\r\nhost: localhost\r\nx-original-url: /health\r\nx-rewrite-url: /health\r\nconnection: close\r\n\r\n",
            "rewrite headers",
        ),
        ("GET /api/v1/peers HTTP/1.0\r\n\r\n", "HTTP/1.0 without Host"),
        ("POST /api/v1/peers HTTP/1.1\r\nhost: gw\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}", "POST"),
        ("DELETE /api/v1/peers/12D3 HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n", "DELETE"),
    ] {
        answers.push((what, status_of(g, req).await));
    }
    let bad: Vec<_> = answers.iter().filter(|(_, s)| !["400", "401", "404"].contains(&s.as_str())).collect();
    assert!(bad.is_empty(), "answered other than 400/401/404: {bad:?}");
    assert_eq!(n.state().requests.load(Relaxed), 0, "an admin request reached the node: {answers:?}");
    assert!(answers.len() >= 56, "{} tricks", answers.len());
}

#[tokio::test]
async fn answers_and_what_the_node_is_sent() {
    let n = node().await;
    let gw = gateway(&[n.url()], "\n[health]\nactive = false").await;
    let g = addr(&gw);
    // Admin routes want a credential: 401 with a challenge.
    let r = get(g, "/api/v1/peers").await;
    r.assert_gateway_error(401);
    assert!(r.headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    // Routes the profile does not expose: 404 from the gateway, not the node.
    get(g, "/api/v2/whatever").await.assert_gateway_error(404);
    get(g, "/control/state").await.assert_gateway_error(404);
    // Encoded slashes are refused.
    let out =
        raw(g, b"GET /api%2fv1/info HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n", Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 400") && out.contains("encoded slash"), "{out}");
    // The node is sent the canonical path, so what was checked is what is served.
    let r = get(g, "/debug/../debug/./headers?a=%2F").await;
    assert_eq!(r.json()["uri"], "/debug/headers?a=%2F");
    let r = get(g, "//debug//%68eaders").await;
    assert_eq!(r.json()["uri"], "/debug/headers");
    assert_eq!(get(g, "/api/v1/%69nfo").await.status, 200);
}

#[tokio::test]
async fn the_same_tricks_over_http2_reach_nothing_either() {
    let n = node().await;
    let gw = gateway(&[n.url()], "\n[health]\nactive = false").await;
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut sent = 0;
    for target in BYPASS_TARGETS {
        // HTTP/2 carries the target in :path; the ones a URI can hold go as they are.
        let Ok(uri) = format!("http://{}{target}", addr(&gw)).parse::<http::Uri>() else { continue };
        let req = http::Request::get(uri).body(Default::default()).unwrap();
        let status = c.request(req).await.map(|r| r.status().as_u16()).unwrap_or(400);
        assert!([400, 401, 404].contains(&status), "{target} over HTTP/2 answered {status}");
        sent += 1;
    }
    // :authority games: a Host header that disagrees with the :authority pseudo-header.
    let req = http::Request::get(format!("http://{}/api/v1/peers", addr(&gw)))
        .header("host", "localhost")
        .body(Default::default())
        .unwrap();
    assert_eq!(c.request(req).await.unwrap().status(), 401);
    assert!(sent >= 40, "only {sent} targets went over HTTP/2");
    assert_eq!(n.state().requests.load(Relaxed), 0);
}

#[tokio::test]
async fn a_path_encoded_twice_is_refused_unless_allowed() {
    let n = node().await;
    let gw = gateway(&[n.url()], "\n[health]\nactive = false").await;
    // Decoded once this is a message id; a node or middlebox decoding again would reach /api/v1/peers.
    for target in ["/api/v1/messages/..%252fpeers", "/api/v1/messages/%252e%252e%252fpeers", "/api/v1/messages/%2541"] {
        let r = get(addr(&gw), target).await;
        r.assert_gateway_error(400);
        assert!(r.json()["error"]["message"].as_str().unwrap().contains("%25"), "{target}: {:?}", r.body);
    }
    assert_eq!(n.state().requests.load(Relaxed), 0);
    // A literal percent that escapes nothing is fine.
    assert_eq!(get(addr(&gw), "/debug/headers?q=%2541").await.status, 200);
    let open = gateway(&[n.url()], "allow_encoded_percent = true\n\n[health]\nactive = false").await;
    let r = get(addr(&open), "/api/v1/messages/%2541").await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert_eq!(n.state().requests.load(Relaxed), 1, "the node saw it once allowed");
}

#[tokio::test]
async fn methods_are_case_sensitive_and_only_the_apis_own_pass() {
    let n = node().await;
    let extra = "\n[health]\nactive = false\n\n[[route]]\npath = \"/api/v1/messages\"\nmethods = [\"POST\"]\naccess = \"key\"\n";
    let gw = gateway(&[n.url()], extra).await;
    let g = addr(&gw);
    let body = r#"{"payload":null}"#;
    // A lower-case `post` skipped the POST rule and reached the node as a submission.
    let req = format!(
        "post /api/v1/messages HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let a = raw(g, req.as_bytes(), Duration::from_secs(5)).await;
    assert!(a.starts_with("HTTP/1.1 400"), "{a}");
    for method in ["FOO", "TRACE", "PROPFIND", "CONNECT"] {
        let target = if method == "CONNECT" { "gw:443" } else { "/api/v1/info" };
        let a = raw(
            g,
            format!("{method} {target} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert!(a.starts_with("HTTP/1.1 405"), "{method}: {a}");
        assert!(a.to_ascii_lowercase().contains("allow: get, head, post, put, delete, options, patch"), "{a}");
    }
    for method in ["Get", "gET", "options"] {
        let a = raw(
            g,
            format!("{method} /api/v1/info HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert!(a.starts_with("HTTP/1.1 400"), "{method}: {a}");
    }
    assert_eq!(n.state().requests.load(Relaxed), 0);
}

#[tokio::test]
async fn an_http11_request_needs_exactly_one_host() {
    let n = node().await;
    let gw = gateway(&[n.url()], "\n[health]\nactive = false").await;
    let g = addr(&gw);
    let none = raw(g, b"GET /api/v1/info HTTP/1.1\r\nconnection: close\r\n\r\n", Duration::from_secs(5)).await;
    assert!(none.starts_with("HTTP/1.1 400") && none.contains("Host"), "{none}");
    let two =
        raw(g, b"GET /api/v1/info HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n", Duration::from_secs(5))
            .await;
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    assert_eq!(n.state().requests.load(Relaxed), 0);
    // HTTP/1.0 had no Host requirement.
    let old = raw(g, b"GET /api/v1/info HTTP/1.0\r\n\r\n", Duration::from_secs(5)).await;
    assert!(old.starts_with("HTTP/1.0 200") || old.starts_with("HTTP/1.1 200"), "{old}");
}
