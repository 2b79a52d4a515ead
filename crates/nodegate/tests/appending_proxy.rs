//! End-to-end behind a real appending proxy: HAProxy (`option forwardfor`, which adds an
//! `X-Forwarded-For` line of its own) in front of the gateway. A client that rotates the forwarding
//! headers it writes itself still has one rate-limit budget: the one of the address HAProxy saw.

mod common;

use std::process::{Command, Stdio};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn haproxy_binary() -> &'static str {
    // Debian installs it in /usr/sbin, which not every PATH holds.
    if std::path::Path::new("/usr/sbin/haproxy").exists() { "/usr/sbin/haproxy" } else { "haproxy" }
}

async fn haproxy_in_front_of(gateway: std::net::SocketAddr) -> (KillOnDrop, u16) {
    let port = free_port();
    let dir = temp_dir("haproxy");
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 200\n\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\n\
             frontend f\n  bind 127.0.0.1:{port}\n  option forwardfor\n  default_backend b\n\n\
             backend b\n  server gw {gateway}\n"
        ),
    )
    .unwrap();
    let child = Command::new(haproxy_binary())
        .args(["-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy is not installed: scripts/test installs it (apt-get install haproxy)");
    let h = KillOnDrop(child);
    eventually(async || tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()).await;
    (h, port)
}

#[tokio::test]
async fn a_client_rotating_forwarding_headers_behind_haproxy_keeps_one_budget() {
    let n = node().await;
    let gw =
        gateway(&[n.url()], "trusted_proxies = [\"127.0.0.1\"]\n\n[rate_limit]\nper_client = \"1/min\"\nburst = 5")
            .await;
    let (_haproxy, port) = haproxy_in_front_of(addr(&gw)).await;
    // The client comes from 127.0.0.2, which is not trusted; HAProxy reaches the gateway from 127.0.0.1.
    let mut statuses = Vec::new();
    for i in 0..12 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
        let req = format!(
            "GET /api/v1/info HTTP/1.1\r\nhost: gw\r\nx-forwarded-for: 198.51.100.{i}\r\nforwarded: for=203.0.113.{i}\r\n\
             x-real-ip: 192.0.2.{i}\r\nconnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
        statuses.push(String::from_utf8_lossy(&out).get(9..12).unwrap_or("").to_owned());
    }
    let admitted = statuses.iter().filter(|s| *s == "200").count();
    let limited = statuses.iter().filter(|s| *s == "429").count();
    assert_eq!((admitted, limited), (5, 7), "{statuses:?}");
}
