//! The command line's side of the admin API (`nodegate bans ...`): one request to the running
//! gateway's admin listener, its JSON answer back.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// The address to reach an admin listener bound to `listen` from this host: a wildcard address
/// is reached on loopback.
pub fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => SocketAddr::from(([127, 0, 0, 1], listen.port())),
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port())),
        _ => listen,
    }
}

/// Sends one request; the status and the JSON body, or why there is none.
pub async fn call(
    admin: SocketAddr,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value), String> {
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(admin))
        .await
        .map_err(|_| format!("{admin}: no answer within 5 s"))?
        .map_err(|e| {
            format!("cannot reach the admin listener at {admin}: {e} (is the gateway running, with [admin]?)")
        })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("{admin}: {e}"))?;
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, admin.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .map_err(|_| format!("{admin}: no answer within 10 s"))?
        .map_err(|e| format!("{admin}: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map_err(|e| format!("{admin}: {e}"))?.to_bytes();
    let json = serde_json::from_slice(&bytes).map_err(|_| format!("{admin}: answered {status} without JSON"))?;
    Ok((status, json))
}
