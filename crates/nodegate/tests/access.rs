//! End-to-end: who the client is (trusted proxies), and `[access]` allow/deny by address.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw GET from a chosen local address (127.0.0.2, ::1, ...); returns the whole answer.
async fn get_from(local: IpAddr, gw: SocketAddr, path: &str, headers: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nhost: gw\r\n{headers}connection: close\r\n\r\n");
    raw_from(local, gw, req.as_bytes()).await
}

/// Raw bytes from a chosen local address; returns all the gateway answered before closing.
async fn raw_from(local: IpAddr, gw: SocketAddr, bytes: &[u8]) -> String {
    let socket =
        if local.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }.unwrap();
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    let mut s = socket.connect(gw).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ =
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("the gateway did not close");
    String::from_utf8_lossy(&out).into_owned()
}

/// The values of `name` the node received, from its /debug/headers answer.
fn header(answer: &str, name: &str) -> Vec<String> {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"));
    let pairs: Vec<(String, String)> = serde_json::from_value(v["headers"].clone()).unwrap();
    pairs.into_iter().filter(|(k, _)| k == name).map(|(_, v)| v).collect()
}

fn status(answer: &str) -> &str {
    answer.get(9..12).unwrap_or("")
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_and_others_cannot() {
    let n = node().await;
    let gw = gateway(&[n.url()], "trusted_proxies = [\"127.0.0.1/32\"]").await;
    let g = addr(&gw);
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    // From the trusted proxy: the right-most address it did not add itself.
    let a = get_from(local, g, "/debug/headers", "x-forwarded-for: 6.6.6.6, 203.0.113.9\r\n").await;
    assert_eq!(header(&a, "x-forwarded-for"), ["203.0.113.9"], "{a}");
    assert_eq!(header(&a, "x-real-ip"), ["203.0.113.9"]);
    let a = get_from(local, g, "/debug/headers", "forwarded: for=198.51.100.4;proto=https\r\n").await;
    assert_eq!(header(&a, "x-forwarded-for"), ["198.51.100.4"], "{a}");
    // The same headers from a peer that is not trusted are ignored and replaced.
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let a = get_from(other, g, "/debug/headers", "x-forwarded-for: 6.6.6.6, 203.0.113.9\r\n").await;
    assert_eq!(header(&a, "x-forwarded-for"), ["127.0.0.2"], "{a}");
    assert_eq!(header(&a, "x-real-ip"), ["127.0.0.2"]);
}

#[tokio::test]
async fn deny_wins_over_allow_for_ipv4_ipv6_and_mapped_addresses() {
    let n = node().await;
    let toml = format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\", \"[::]:0\"]\n\n[[node]]\nname = \"a\"\nurl = \"{}\"\n\n\
         [access]\nallow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.2\"]\n\n[log]\naccess = false\n",
        n.url()
    );
    let gw = nodegate::Gateway::start(nodegate::Config::parse(&toml, "access.toml").unwrap()).await.unwrap();
    let (v4, dual) = (gw.local_addrs()[0], gw.local_addrs()[1]);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(status(&get_from(ip("127.0.0.1"), v4, "/api/v1/info", "").await), "200");
    let denied = get_from(ip("127.0.0.2"), v4, "/api/v1/info", "").await;
    assert_eq!(status(&denied), "403", "{denied}");
    assert!(denied.contains("\"code\":\"403\""), "{denied}");
    // IPv6 loopback is not in the IPv4-only allow list.
    assert_eq!(status(&get_from(ip("::1"), dual, "/api/v1/info", "").await), "403");
    // On a dual-stack listener an IPv4 client arrives as ::ffff:127.0.0.x and is judged as IPv4.
    let dual_v4 = SocketAddr::new(ip("127.0.0.1"), dual.port());
    assert_eq!(status(&get_from(ip("127.0.0.1"), dual_v4, "/api/v1/info", "").await), "200");
    assert_eq!(status(&get_from(ip("127.0.0.2"), dual_v4, "/api/v1/info", "").await), "403");
    // Nothing that was denied reached the node.
    assert_eq!(n.state().requests.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_client_named_by_a_trusted_proxy_is_filtered_as_itself() {
    let n = node().await;
    let gw = gateway(&[n.url()], "trusted_proxies = [\"127.0.0.1\"]\n\n[access]\ndeny = [\"203.0.113.0/24\"]").await;
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let a = get_from(local, addr(&gw), "/api/v1/info", "x-forwarded-for: 203.0.113.9\r\n").await;
    assert_eq!(status(&a), "403", "{a}");
    let a = get_from(local, addr(&gw), "/api/v1/info", "x-forwarded-for: 198.51.100.1\r\n").await;
    assert_eq!(status(&a), "200", "{a}");
}

#[tokio::test]
async fn a_proxy_protocol_listener_takes_the_client_from_a_trusted_balancer_only() {
    let n = node().await;
    let gw = gateway(
        &[n.url()],
        "trusted_proxies = [\"127.0.0.1\"]\nlisten_proxy_protocol = [\"127.0.0.1:0\"]\nheader_timeout = \"500ms\"\n\n[access]\ndeny = [\"198.51.100.0/24\"]",
    )
    .await;
    let pp = gw.local_addrs()[1];
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let http = "GET /debug/headers HTTP/1.1\r\nhost: gw\r\nx-forwarded-for: 6.6.6.6\r\nconnection: close\r\n\r\n";
    // v1: the balancer names the client.
    let a =
        raw_from(ip("127.0.0.1"), pp, format!("PROXY TCP4 203.0.113.5 127.0.0.1 5555 80\r\n{http}").as_bytes()).await;
    assert_eq!(header(&a, "x-forwarded-for"), ["203.0.113.5"], "{a}");
    // v2, IPv6.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    v2.extend_from_slice(&"2001:db8::5".parse::<std::net::Ipv6Addr>().unwrap().octets());
    v2.extend_from_slice(&[0u8; 16]);
    v2.extend_from_slice(&[0x15, 0xb3, 0x00, 0x50]);
    v2.extend_from_slice(http.as_bytes());
    let a = raw_from(ip("127.0.0.1"), pp, &v2).await;
    assert_eq!(header(&a, "x-forwarded-for"), ["2001:db8::5"], "{a}");
    // UNKNOWN (the balancer's own requests): the peer is the trusted balancer, so the
    // X-Forwarded-For it sends is believed, as on any listener; above, the client named by the
    // header is not trusted, so the same X-Forwarded-For was ignored.
    let a = raw_from(ip("127.0.0.1"), pp, format!("PROXY UNKNOWN\r\n{http}").as_bytes()).await;
    assert_eq!(header(&a, "x-forwarded-for"), ["6.6.6.6"], "{a}");
    // The named client is filtered as itself.
    let a = raw_from(ip("127.0.0.1"), pp, format!("PROXY TCP4 198.51.100.9 127.0.0.1 1 80\r\n{http}").as_bytes()).await;
    assert_eq!(status(&a), "403", "{a}");
    // Not trusted, no header, or not a PROXY header: the connection is closed unanswered.
    let untrusted =
        raw_from(ip("127.0.0.2"), pp, format!("PROXY TCP4 203.0.113.5 127.0.0.1 5555 80\r\n{http}").as_bytes()).await;
    assert!(untrusted.is_empty(), "{untrusted}");
    assert!(raw_from(ip("127.0.0.1"), pp, http.as_bytes()).await.is_empty());
    assert!(raw_from(ip("127.0.0.1"), pp, b"PROXY TCP4 nonsense\r\n").await.is_empty());
    // A header that never finishes is cut off at the header timeout.
    assert!(raw_from(ip("127.0.0.1"), pp, b"PROXY TCP4 203.0.1").await.is_empty());
}
