//! End-to-end: per-client rate limits (exact counts are tested on a paused clock in
//! pipeline/rate_limit.rs; here, what a client sees).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use nodegate::pipeline::auth::hash;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn status_from(local: &str, gw: SocketAddr) -> String {
    let local: IpAddr = local.parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    let mut s = socket.connect(gw).await.unwrap();
    // A connection the gateway refuses is closed or reset: either way, no answer.
    let _ = s.write_all(b"GET /api/v1/info HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("no close within 5 s");
    String::from_utf8_lossy(&out).get(9..12).unwrap_or("").to_owned()
}

#[tokio::test]
async fn a_client_over_its_limit_gets_429_with_retry_after_and_others_do_not() {
    let n = node().await;
    let extra = format!(
        "\n[rate_limit]\nper_client = \"1/min\"\nburst = 3\n\
         \n[[api_key]]\nname = \"wallet\"\nhash = \"{}\"\nroles = [\"key\"]\n\
         \n[[route]]\npath = \"/api/v1/tips\"\naccess = \"key\"\n",
        hash("wallet-secret")
    );
    let gw = gateway(&[n.url()], &extra).await;
    let g = addr(&gw);
    for left in [2, 1, 0] {
        let r = get(g, "/api/v1/info").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["ratelimit-policy"], "\"per-client\";q=3;w=180");
        assert_eq!(r.headers["ratelimit"].to_str().unwrap(), format!("\"per-client\";r={left};t=0"));
    }
    let r = get(g, "/api/v1/info").await;
    r.assert_gateway_error(429);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((59..=60).contains(&retry), "retry-after {retry}");
    assert!(r.headers.contains_key("ratelimit"));
    assert_eq!(n.state().requests.load(Relaxed), 3, "the refused request reached the node");
    // Another address has its own budget.
    assert_eq!(status_from("127.0.0.2", g).await, "200");
    // An authenticated client is limited by its key, not its address.
    for _ in 0..3 {
        assert_eq!(get_with(g, "/api/v1/tips", &[("x-api-key", "wallet-secret")]).await.status, 200);
    }
    get_with(g, "/api/v1/tips", &[("x-api-key", "wallet-secret")]).await.assert_gateway_error(429);
}

/// Connects from `local`; `true` if the gateway serves a request on it, `false` if it closed it.
async fn served_from(local: &str, gw: SocketAddr) -> bool {
    status_from(local, gw).await == "200"
}

#[tokio::test]
async fn connections_over_the_per_client_cap_are_closed_and_others_still_served() {
    let n = node().await;
    let gw = gateway(&[n.url()], "max_connections_per_client = 3").await;
    let g = addr(&gw);
    // Three idle connections from 127.0.0.1 fill its share.
    let mut held = Vec::new();
    for _ in 0..3 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        held.push(s.connect(g).await.unwrap());
    }
    // Give the gateway the moment it needs to accept them.
    eventually(async || !served_from("127.0.0.1", g).await).await;
    assert!(!served_from("127.0.0.1", g).await, "a fourth connection from the same address was served");
    assert!(served_from("127.0.0.2", g).await, "another address was refused");
    // One closes: there is room again.
    held.pop();
    eventually(async || served_from("127.0.0.1", g).await).await;
}

#[tokio::test]
async fn websocket_tunnels_still_count_against_the_connection_cap() {
    let n = node().await;
    let gw = gateway(&[n.url()], "max_connections_per_client = 2").await;
    let g = addr(&gw);
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{g}/mqtt")).await.unwrap();
        tunnels.push(ws);
    }
    // Upgraded, the connections are tunnels now, but still this client's two.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!served_from("127.0.0.1", g).await, "a third connection was served beside two tunnels");
    assert!(served_from("127.0.0.2", g).await);
    tunnels.pop().unwrap().close(None).await.unwrap();
    eventually(async || served_from("127.0.0.1", g).await).await;
}

#[tokio::test]
async fn a_client_that_does_not_read_its_response_is_cut_off_at_the_send_timeout() {
    let n = node().await;
    let gw = gateway(&[n.url()], "send_timeout = \"500ms\"\nheader_timeout = \"1s\"").await;
    let g = addr(&gw);
    let mut s = tokio::net::TcpStream::connect(g).await.unwrap();
    s.write_all(b"GET /debug/bytes?n=100000000 HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
    // Read nothing while the gateway fills the socket buffers and waits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(k) => got += k,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was still open after {got} bytes");
    assert!(got < 50_000_000, "{got} bytes: the response was not cut off");
    // The gateway still serves others.
    assert_eq!(get(g, "/api/v1/info").await.status, 200);
}
