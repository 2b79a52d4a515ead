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
    // Only the configured header (X-Forwarded-For by default) is read: Forwarded is ignored.
    let a = get_from(local, g, "/debug/headers", "forwarded: for=198.51.100.4;proto=https\r\n").await;
    assert_eq!(header(&a, "x-forwarded-for"), ["127.0.0.1"], "{a}");
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
    // UNKNOWN, v2 LOCAL and AF_UNIX (the balancer's own requests): the balancer is the client, and
    // an X-Forwarded-For sent behind the header is believed no more than anywhere on this listener.
    let a = raw_from(ip("127.0.0.1"), pp, format!("PROXY UNKNOWN\r\n{http}").as_bytes()).await;
    assert_eq!(header(&a, "x-forwarded-for"), ["127.0.0.1"], "{a}");
    let mut local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
    local.extend_from_slice(http.as_bytes());
    let a = raw_from(ip("127.0.0.1"), pp, &local).await;
    assert_eq!(header(&a, "x-forwarded-for"), ["127.0.0.1"], "{a}");
    let mut unix = b"\r\n\r\n\0\r\nQUIT\n\x21\x31\x00\xd8".to_vec();
    unix.extend_from_slice(&[b'/'; 216]);
    unix.extend_from_slice(http.as_bytes());
    let a = raw_from(ip("127.0.0.1"), pp, &unix).await;
    assert_eq!(header(&a, "x-forwarded-for"), ["127.0.0.1"], "{a}");
    // A v2 header too short for its address family is no header: closed unanswered.
    let mut short = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\xcb\x00\x71\x05".to_vec();
    short.extend_from_slice(http.as_bytes());
    let a = raw_from(ip("127.0.0.1"), pp, &short).await;
    assert!(a.is_empty(), "{a}");
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

/// A GET from 127.0.0.1 over HTTP/2 (prior knowledge) with the given headers: (status, body).
async fn h2_get(gw: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut req = http::Request::get(format!("http://{gw}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c.request(req.body(Default::default()).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

#[tokio::test]
async fn a_client_written_forwarded_header_does_not_pass_the_proxys_x_forwarded_for() {
    let n = node().await;
    let gw = gateway(&[n.url()], "trusted_proxies = [\"127.0.0.1\"]\n\n[access]\ndeny = [\"203.0.113.66\"]").await;
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    // The proxy in front appended the client's real address; the client wrote a Forwarded of its own.
    let spoof = "forwarded: for=198.51.100.1\r\nx-forwarded-for: 203.0.113.66\r\n";
    let a = get_from(local, addr(&gw), "/api/v1/info", spoof).await;
    assert_eq!(status(&a), "403", "{a}");
    let (status, _) =
        h2_get(addr(&gw), "/api/v1/info", &[("forwarded", "for=198.51.100.1"), ("x-forwarded-for", "203.0.113.66")])
            .await;
    assert_eq!(status, 403, "over HTTP/2");
    assert_eq!(n.state().requests.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test]
async fn client_ip_header_picks_forwarded_or_x_real_ip_and_ignores_the_others() {
    let n = node().await;
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let both = "forwarded: for=\"[2001:db8::7]:4711\"\r\nx-forwarded-for: 198.51.100.9\r\nx-real-ip: 192.0.2.44\r\n";
    for (which, expect) in
        [("forwarded", "2001:db8::7"), ("x-real-ip", "192.0.2.44"), ("x-forwarded-for", "198.51.100.9")]
    {
        let extra = format!("trusted_proxies = [\"127.0.0.1\"]\nclient_ip_header = \"{which}\"");
        let gw = gateway(&[n.url()], &extra).await;
        let a = get_from(local, addr(&gw), "/debug/headers", both).await;
        assert_eq!(header(&a, "x-forwarded-for"), [expect], "{which}: {a}");
        let (_, seen) = h2_get(
            addr(&gw),
            "/debug/headers",
            &[
                ("forwarded", "for=\"[2001:db8::7]:4711\""),
                ("x-forwarded-for", "198.51.100.9"),
                ("x-real-ip", "192.0.2.44"),
            ],
        )
        .await;
        let xff: Vec<String> = serde_json::from_value::<Vec<(String, String)>>(seen["headers"].clone())
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k == "x-forwarded-for")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(xff, [expect], "{which} over HTTP/2");
    }
    let bad = gateway_err("trusted_proxies = [\"127.0.0.1\"]\nclient_ip_header = \"x-client-ip\"");
    assert!(bad.contains("client_ip_header"), "{bad}");
}

fn gateway_err(extra: &str) -> String {
    let text = config_text(&["http://127.0.0.1:1".to_string()], extra);
    nodegate::Config::parse(&text, "test.toml").unwrap_err().to_string()
}

#[tokio::test]
async fn a_broken_forwarding_chain_is_refused_never_blamed_on_the_proxy() {
    let n = node().await;
    // The proxy's own address is denied nothing and limited nothing: being taken for it is the prize.
    let gw = gateway(
        &[n.url()],
        "trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n\n[access]\ndeny = [\"203.0.113.0/24\"]",
    )
    .await;
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    for chain in ["garbage, 10.9.9.9", "203.0.113.9, unknown", "203.0.113.9,,10.1.1.1", "203.0.113.9:70000"] {
        let a = get_from(local, addr(&gw), "/api/v1/info", &format!("x-forwarded-for: {chain}\r\n")).await;
        assert_eq!(status(&a), "400", "{chain}: {a}");
        assert!(a.contains("\"code\":\"400\"") && a.contains("forwarding header"), "{a}");
    }
    let (status_h2, body) = h2_get(addr(&gw), "/api/v1/info", &[("x-forwarded-for", "garbage, 10.9.9.9")]).await;
    assert_eq!(status_h2, 400, "over HTTP/2: {body}");
    // Several lines are one list, in order: the denied client hides in the first line.
    let a = get_from(local, addr(&gw), "/api/v1/info", "x-forwarded-for: 203.0.113.9\r\nx-forwarded-for: 10.0.0.5\r\n")
        .await;
    assert_eq!(status(&a), "403", "{a}");
    // Garbage left of the client is the client's own writing and changes nothing.
    let a = get_from(local, addr(&gw), "/api/v1/info", "x-forwarded-for: garbage, 198.51.100.1, 10.0.0.5\r\n").await;
    assert_eq!(status(&a), "200", "{a}");
    // An empty header from the proxy: the proxy is the client.
    let a = get_from(local, addr(&gw), "/api/v1/info", "x-forwarded-for: \r\n").await;
    assert_eq!(status(&a), "200", "{a}");
    assert_eq!(n.state().requests.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test]
async fn max_connections_per_client_counts_the_client_a_proxy_header_names() {
    let n = node().await;
    let gw = gateway(
        &[n.url()],
        "trusted_proxies = [\"127.0.0.1\"]\nlisten_proxy_protocol = [\"127.0.0.1:0\"]\nmax_connections_per_client = 2",
    )
    .await;
    let pp = gw.local_addrs()[1];
    let open = async |client: &str| {
        let mut s = tokio::net::TcpStream::connect(pp).await.unwrap();
        let req = format!("PROXY TCP4 {client} 127.0.0.1 5555 80\r\nGET /api/v1/info HTTP/1.1\r\nhost: gw\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = [0u8; 12];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap_or(0);
        (s, String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let (_a, first) = open("203.0.113.5").await;
    let (_b, second) = open("203.0.113.5").await;
    assert!(first.starts_with("HTTP/1.1 200") && second.starts_with("HTTP/1.1 200"), "{first} / {second}");
    // A third kept-open connection for the same client is over its cap, though the balancer is exempt.
    let (_c, third) = open("203.0.113.5").await;
    assert_eq!(third, "", "the third connection of one client was served");
    let (_d, other) = open("203.0.113.6").await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
}
