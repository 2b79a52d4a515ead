//! Helpers for end-to-end tests: real testnodes, a real gateway on 127.0.0.1:0, and a client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nodegate::{Config, Gateway};
use testnode::{Options, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How many cases each property test runs: `NODEGATE_FUZZ_CASES`, 256 by default (scripts/test
/// runs them briefly; a longer hunt sets it higher).
pub fn fuzz_cases() -> u32 {
    std::env::var("NODEGATE_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256)
}

pub async fn node() -> TestNode {
    node_with(Options::default()).await
}

pub async fn node_with(options: Options) -> TestNode {
    TestNode::start("127.0.0.1:0".parse().unwrap(), options).await.unwrap()
}

/// Config text for a gateway on port 0 in front of `urls`, with `extra` TOML appended to `[gateway]`
/// (so `extra` may set gateway keys first, then open other tables).
pub fn config_text(urls: &[String], extra: &str) -> String {
    let mut s = format!("[gateway]\nlisten = [\"127.0.0.1:0\"]\n{extra}\n");
    for (i, u) in urls.iter().enumerate() {
        s.push_str(&format!("\n[[node]]\nname = \"n{i}\"\nurl = \"{u}\"\n"));
    }
    // The simulated node's debug routes, which tests use to see what a node received.
    s.push_str(DEBUG_ROUTES);
    s
}

/// A `[[route]]` making testnode's `/debug/*` routes public (no node profile exposes them).
pub const DEBUG_ROUTES: &str = "\n[[route]]\npath = \"/debug/*\"\naccess = \"public\"\n";

/// An in-process gateway; its access log is off (it would write to the test's stderr) unless
/// `extra` configures `[log]` itself. tests/binary.rs checks the access log.
pub async fn gateway(urls: &[String], extra: &str) -> Gateway {
    let mut text = config_text(urls, extra);
    if !extra.contains("[log]") {
        text.push_str("\n[log]\naccess = false\n");
    }
    let config = Config::parse(&text, "test.toml").unwrap();
    Gateway::start(config).await.unwrap()
}

pub fn addr(gw: &Gateway) -> SocketAddr {
    gw.local_addrs()[0]
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// Asserts this is one of the gateway's own errors: status, JSON content type, node API shape.
    pub fn assert_gateway_error(&self, status: u16) {
        assert_eq!(self.status.as_u16(), status, "body: {:?}", self.body);
        assert_eq!(self.headers["content-type"], "application/json");
        let j = self.json();
        assert_eq!(j["error"]["code"], status.to_string());
        let message = j["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty());
        // Node names are internal: the tests' nodes are n0, n1, ... and no answer may name one.
        let names_a_node = message
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| w.len() > 1 && w.starts_with('n') && w[1..].bytes().all(|b| b.is_ascii_digit()));
        assert!(!names_a_node, "the answer names a node: {message}");
    }

    /// Headers the node saw, from its `/debug/headers` answer (lower-case names, in order).
    pub fn seen_headers(&self) -> Vec<(String, String)> {
        serde_json::from_value(self.json()["headers"].clone()).unwrap()
    }

    pub fn seen(&self, name: &str) -> Vec<String> {
        self.seen_headers().into_iter().filter(|(k, _)| k == name).map(|(_, v)| v).collect()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(
    c: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: String,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c.request(req.body(Full::new(body.into())).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    Reply { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
}

pub async fn get(gw: SocketAddr, path: &str) -> Reply {
    get_with(gw, path, &[]).await
}

/// A GET with the given request headers.
pub async fn get_with(gw: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(&client(), Method::GET, format!("http://{gw}{path}"), headers, Bytes::new()).await
}

/// Writes raw bytes and reads until the server closes (or `limit` passes), for requests no
/// well-behaved client library would send.
pub async fn raw(gw: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(gw).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `f` until it returns true or 5 s pass.
pub async fn eventually<F: AsyncFnMut() -> bool>(mut f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "condition not met within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A gateway over `nodes`, each `(url, weight, pow)`, with fast probes.
pub async fn gateway_over(nodes: &[(String, u32, bool)], health: &str) -> nodegate::Gateway {
    let mut toml = String::from("[gateway]\nlisten = [\"127.0.0.1:0\"]\n");
    for (i, (url, weight, pow)) in nodes.iter().enumerate() {
        toml.push_str(&format!("\n[[node]]\nname = \"n{i}\"\nurl = \"{url}\"\nweight = {weight}\npow = {pow}\n"));
    }
    toml.push_str(&format!("\n[health]\ninterval = \"100ms\"\n{health}\n\n[log]\naccess = false\n"));
    nodegate::Gateway::start(nodegate::Config::parse(&toml, "balance.toml").unwrap()).await.unwrap()
}

/// Sends `total` GETs from `concurrency` clients; returns how many were not 200.
pub async fn load(gw: std::net::SocketAddr, path: &'static str, total: usize, concurrency: usize) -> usize {
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (failures, next) = (failures.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let r = send(&c, Method::GET, format!("http://{gw}{path}"), &[], Bytes::new()).await;
                if r.status != 200 {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    failures.load(std::sync::atomic::Ordering::Relaxed)
}

/// Waits until each node has been probed `rounds` more times (a probe round is two requests).
pub async fn probed(nodes: &[&TestNode], rounds: u64) {
    let start: Vec<u64> = nodes.iter().map(|n| n.state().probes.load(std::sync::atomic::Ordering::Relaxed)).collect();
    eventually(async || {
        nodes
            .iter()
            .zip(&start)
            .all(|(n, s)| n.state().probes.load(std::sync::atomic::Ordering::Relaxed) >= s + 2 * rounds)
    })
    .await;
}

pub fn served(nodes: &[&TestNode]) -> Vec<u64> {
    nodes.iter().map(|n| n.state().requests.load(std::sync::atomic::Ordering::Relaxed)).collect()
}

/// A free loopback port for a server that cannot be told port 0 (Redis, Pebble), or that must come
/// back on the same port after a restart. It is taken below the kernel's ephemeral range: a port
/// from that range can be handed to any outgoing connection while its server is down, and the
/// restart then fails with "address in use" (seen in CI).
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (start, end) = (low.saturating_sub(12_000).max(1024), low.max(1025));
    // Never the same port twice in one test process.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = fastrand::u16(start..end);
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// A fresh, empty directory for this test process under the system's temp dir.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("nodegate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A child process (a real Redis, HAProxy, ...) killed and reaped when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A GET from the loopback address `local` (127.0.0.x) with extra header lines (each ending in
/// CRLF); the answer's status, or "" when the gateway closed the connection without answering.
pub async fn status_from_addr(local: &str, gw: SocketAddr, path: &str, headers: &str) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local.parse().unwrap(), 0)).unwrap();
    let mut s = socket.connect(gw).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: gw\r\n{headers}connection: close\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).get(9..12).unwrap_or("").to_owned()
}

/// Set in the environment of a test run inside a network namespace by `run_in_netns`.
pub const IN_NETNS: &str = "NODEGATE_TEST_IN_NETNS";

/// Runs this test binary's `test` (an `#[ignore]`d test that checks `IN_NETNS`) in a user and
/// network namespace of its own (`unshare -rn`: no privilege needed, the host untouched); fails
/// with its output unless it passed. Returns its standard output.
pub fn run_in_netns(test: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("unshare")
        .arg("-rn")
        .arg(&exe)
        .args([test, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .output()
        .expect("unshare (util-linux) runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("1 passed"), "in the namespace:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

/// Runs a shell command; its standard output. Fails the test when it fails.
pub fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
