//! The soak's clients: well-behaved ones over every protocol, and attackers. Each runs from an
//! address of its own on 127.0.0.0/8 (so limits and bans fall on it alone) until the deadline, and
//! records every request's outcome.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::Log;
use crate::setup::Env;

/// A request's whole budget: connect, send, answer and body.
const BUDGET: Duration = Duration::from_secs(15);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where a client goes and how.
#[derive(Clone, Copy)]
struct Target {
    gateway: SocketAddr,
    tls: bool,
    h2: bool,
    /// The last byte of the client's own address, 127.0.0.N.
    from: u8,
}

async fn tcp(from: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    tcp_from(Ipv4Addr::new(127, 0, 0, from), to).await
}

async fn tcp_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    let stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A connection to the target, TLS with the ALPN its protocol asks for when it is the HTTPS
/// gateway (the certificate shown is noted, to see renewals reach clients).
async fn open(env: &Env, log: &Log, t: Target) -> std::io::Result<Box<dyn Io>> {
    let stream = tcp(t.from, t.gateway).await?;
    if !t.tls {
        return Ok(Box::new(stream));
    }
    let mut config = (*env.client_tls).clone();
    config.alpn_protocols = vec![if t.h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, stream).await?;
    if let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        cert.as_ref().hash(&mut h);
        let mut certs = log.certs.lock().unwrap_or_else(|e| e.into_inner());
        if !certs.contains(&h.finish()) {
            certs.push(h.finish());
        }
    }
    Ok(Box::new(tls))
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn connect(env: &Env, log: &Log, t: Target) -> Result<Sender, String> {
        let io = TokioIo::new(open(env, log, t).await.map_err(|e| format!("connect: {}", e.kind()))?);
        if t.h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Sender::H2(send))
        } else {
            let (send, conn) =
                hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("h1 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Sender::H1(send))
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

fn rpc(id: u64, method: &str, params: serde_json::Value) -> Bytes {
    Bytes::from(serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string())
}

/// What a class sends and what it must get back.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `iota_getObject`: 200 with a result.
    Read,
    /// `iota_executeTransactionBlock` with transaction bytes of its own: 200 with a digest.
    Submit,
    /// `unsafe_moveCall` with the right key: 200 with a result.
    Keyed,
    /// `unsafe_moveCall` with a wrong key: 401 or 403.
    BadKey,
    /// Reads as fast as it can: 200 or 429.
    Flood,
}

/// One client sending JSON-RPC calls over one kept-alive connection (a new one when it closes).
async fn caller(
    env: Arc<Env>,
    log: Arc<Log>,
    class: &'static str,
    t: Target,
    kind: Kind,
    pause: Duration,
    deadline: Instant,
) {
    let mut sender: Option<Sender> = None;
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let began = log.now();
        let result = tokio::time::timeout(BUDGET, async {
            if sender.as_ref().is_none_or(Sender::is_closed) {
                sender = Some(Sender::connect(&env, &log, t).await?);
            }
            let s = sender.as_mut().expect("connected");
            let (body, tx) = match kind {
                Kind::Read | Kind::Flood => {
                    (rpc(n, "iota_getObject", serde_json::json!([format!("0x{:064x}", n), {"showType": true}])), None)
                }
                Kind::Submit => {
                    let tx = format!("soak-{class}-{}-{n}", t.from);
                    (
                        rpc(
                            n,
                            "iota_executeTransactionBlock",
                            serde_json::json!([tx, ["c2ln"], {}, "WaitForLocalExecution"]),
                        ),
                        Some(tx),
                    )
                }
                Kind::Keyed | Kind::BadKey => {
                    (rpc(n, "unsafe_moveCall", serde_json::json!(["0x1", "0x2", "m", "f", [], [], null, "1000"])), None)
                }
            };
            let key = match kind {
                Kind::Keyed => env.key.clone(),
                _ => "soak-wrong-key".to_owned(),
            };
            let host = if t.tls { "localhost" } else { "soak" };
            let mut req = Request::post(if t.h2 {
                format!("{}://{host}/", if t.tls { "https" } else { "http" })
            } else {
                "/".to_owned()
            })
            .header("content-type", "application/json");
            if !t.h2 {
                req = req.header("host", host);
            }
            if matches!(kind, Kind::Keyed | Kind::BadKey) {
                req = req.header("x-api-key", key);
            }
            let req = req.body(Full::new(body)).expect("a request");
            let answer = s.send(req).await;
            let answer = match answer {
                Ok(a) => a,
                Err(e) => {
                    sender = None;
                    if let Some(tx) = tx {
                        log.submitted.lock().unwrap_or_else(|e| e.into_inner()).push((tx, false));
                    }
                    return Err(format!("send: {}", short(&e)));
                }
            };
            let status = answer.status();
            let body = answer.into_body().collect().await.map_err(|e| format!("body: {}", short(&e)))?.to_bytes();
            let text = String::from_utf8_lossy(&body);
            let ok = match kind {
                Kind::Read | Kind::Keyed => status == StatusCode::OK && text.contains("\"result\""),
                Kind::Submit => status == StatusCode::OK && text.contains("digest"),
                Kind::BadKey => status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
                Kind::Flood => status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS,
            };
            if let Some(tx) = tx {
                log.submitted.lock().unwrap_or_else(|e| e.into_inner()).push((tx, ok));
            }
            if ok { Ok(()) } else { Err(format!("status {}", status.as_u16())) }
        })
        .await
        .unwrap_or_else(|_| {
            sender = None;
            Err("timeout".into())
        });
        log.record(class, began, result);
        tokio::time::sleep(pause).await;
    }
}

/// hyper's error and its source, without the nesting's repetition.
fn short(e: &(dyn std::error::Error + 'static)) -> String {
    match e.source() {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

/// WebSocket sessions on `/subscribe`: a subscription (its notification must come), then calls
/// answered in turn; a session of 20 calls, then a new one.
async fn websocket(env: Arc<Env>, log: Arc<Log>, class: &'static str, t: Target, deadline: Instant) {
    while Instant::now() < deadline {
        let began = log.now();
        let session = tokio::time::timeout(BUDGET, async {
            let io = open(&env, &log, t).await.map_err(|e| format!("connect: {}", e.kind()))?;
            let url = if t.tls { "wss://localhost/subscribe" } else { "ws://soak/subscribe" };
            let (ws, _) = tokio_tungstenite::client_async(url, io).await.map_err(|e| format!("upgrade: {e}"))?;
            Ok::<_, String>(ws)
        })
        .await
        .unwrap_or_else(|_| Err("timeout".into()));
        let mut ws = match session {
            Ok(ws) => ws,
            Err(e) => {
                log.record(class, began, Err(e));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // The server's push: a subscription's notification.
        let began = log.now();
        let sub = rpc(0, "iotax_subscribeEvent", serde_json::json!([{"All": []}]));
        let pushed = ws_exchange(&mut ws, &sub, |t| t.contains("\"subscription\"").then_some(Ok(()))).await;
        let broken = pushed.is_err();
        log.record("ws-push", began, pushed);
        if broken {
            continue;
        }
        for id in 1..=20u64 {
            if Instant::now() >= deadline {
                break;
            }
            let began = log.now();
            let call = rpc(id, "iota_getObject", serde_json::json!([format!("0x{id:064x}")]));
            let answered = ws_exchange(&mut ws, &call, |t| {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(t) else { return Some(Err("not JSON".into())) };
                (v.get("id") == Some(&serde_json::json!(id)))
                    .then(|| if v.get("result").is_some() { Ok(()) } else { Err(format!("answer: {t}")) })
            })
            .await;
            let broken = answered.is_err();
            log.record(class, began, answered);
            if broken {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = ws.close(None).await;
    }
}

/// Sends `message` and reads text messages until `settles` says one settles the exchange (others,
/// such as notifications, are skipped), within the budget.
async fn ws_exchange(
    ws: &mut tokio_tungstenite::WebSocketStream<Box<dyn Io>>,
    message: &[u8],
    settles: impl Fn(&str) -> Option<Result<(), String>>,
) -> Result<(), String> {
    let exchange = async {
        ws.send(Message::text(String::from_utf8_lossy(message).into_owned()))
            .await
            .map_err(|e| format!("send: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if let Some(settled) = settles(&t) {
                        return settled;
                    }
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("receive: {e}")),
                None => return Err("closed".into()),
            }
        }
    };
    tokio::time::timeout(BUDGET, exchange).await.unwrap_or_else(|_| Err("timeout".into()))
}

/// Request targets aimed at the testnode's control routes, which no route exposes: each must be
/// refused (4xx), or the connection closed once the tricks jail has banned this client.
const TRICKS: &[&str] = &[
    "/control/state",
    "//control/state",
    "/%2e%2e/control/state",
    "/debug/../control/state",
    "/debug/%2e%2e/control/state",
    "/control%2fstate",
    "/./control/state",
    "/debug/..%2fcontrol/state",
    "/control/state;x=1",
    "/control/state?/debug/headers",
    "/%63ontrol/state",
];

async fn tricks(log: Arc<Log>, t: Target, deadline: Instant) {
    let mut i = 0;
    while Instant::now() < deadline {
        let target = TRICKS[i % TRICKS.len()];
        i += 1;
        let began = log.now();
        let req = format!("GET {target} HTTP/1.1\r\nhost: soak\r\nconnection: close\r\n\r\n");
        let result = tokio::time::timeout(BUDGET, async {
            let mut s = tcp(t.from, t.gateway).await.map_err(|e| format!("connect: {}", e.kind()))?;
            let _ = s.write_all(req.as_bytes()).await;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            let status = String::from_utf8_lossy(out.get(9..12).unwrap_or_default()).into_owned();
            match status.as_bytes().first() {
                // Banned: closed before a word.
                None => Ok(()),
                Some(b'4') => Ok(()),
                _ => Err(format!("{target} answered {status}")),
            }
        })
        .await
        .unwrap_or_else(|_| Err("timeout".into()));
        log.record("attack-tricks", began, result);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A flood of distinct addresses (127.1.0.1 onwards, a new one for every request): each is a new
/// client to every per-client table (limits, in-flight counts, refusals), which must stay within
/// their caps (the soak sets `max_clients = 20000`) so memory stays flat. Each call is answered
/// 200 or 429.
async fn many_addresses(log: Arc<Log>, gateway: SocketAddr, deadline: Instant) {
    let body = rpc(1, "iota_getObject", serde_json::json!(["0x1"]));
    let req = format!(
        "POST / HTTP/1.1\r\nhost: soak\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        body.len(),
        String::from_utf8_lossy(&body)
    );
    let mut i: u32 = 0;
    while Instant::now() < deadline {
        // 127.1.0.1 .. 127.200.255.254: about 13 million addresses before one comes back.
        let from = Ipv4Addr::new(127, 1 + (i / 65_024 % 200) as u8, (i / 254 % 256) as u8, (i % 254 + 1) as u8);
        i = i.wrapping_add(1);
        let began = log.now();
        let result = tokio::time::timeout(BUDGET, async {
            let mut s = tcp_from(from, gateway).await.map_err(|e| format!("connect: {}", e.kind()))?;
            s.write_all(req.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            match out.get(9..12) {
                Some(b"200") | Some(b"429") => Ok(()),
                Some(status) => Err(format!("status {}", String::from_utf8_lossy(status))),
                None => Err("no answer".to_owned()),
            }
        })
        .await
        .unwrap_or_else(|_| Err("timeout".into()));
        log.record("attack-many-addresses", began, result);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Slowloris: a request head dribbled a header line a second. The gateway must close it within
/// `header_timeout` (3 s) and a margin.
async fn slowloris(env: Arc<Env>, log: Arc<Log>, t: Target, deadline: Instant) {
    while Instant::now() < deadline {
        let began = log.now();
        let result = async {
            let mut io = open(&env, &log, t).await.map_err(|e| format!("connect: {}", e.kind()))?;
            let opened = Instant::now();
            io.write_all(b"POST / HTTP/1.1\r\nhost: soak\r\n").await.map_err(|_| "closed at once".to_owned())?;
            let mut buf = [0u8; 1024];
            loop {
                match tokio::time::timeout(Duration::from_secs(1), io.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => continue,
                    Err(_) => {
                        if opened.elapsed() > Duration::from_secs(20) {
                            return Err("held 20 s".to_owned());
                        }
                        if io.write_all(b"x-slow: 1\r\n").await.is_err() {
                            break;
                        }
                    }
                }
            }
            let held = opened.elapsed();
            if held > Duration::from_secs(6) { Err(format!("held {} s", held.as_secs())) } else { Ok(()) }
        }
        .await;
        log.record("attack-slowloris", began, result);
    }
}

/// A reader that takes the head of a long answer and then stops reading for ten seconds: the
/// gateway must give up on it (`send_timeout`, 4 s) rather than hold the node's answer open.
async fn stalled_reader(log: Arc<Log>, t: Target, deadline: Instant) {
    const LONG: u64 = 512 << 20;
    while Instant::now() < deadline {
        let began = log.now();
        let result = async {
            let mut s = tcp(t.from, t.gateway).await.map_err(|e| format!("connect: {}", e.kind()))?;
            let req = format!("GET /debug/bytes?n={LONG} HTTP/1.1\r\nhost: soak\r\nconnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
            let mut buf = vec![0u8; 64 << 10];
            let mut got = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))? as u64;
            tokio::time::sleep(Duration::from_secs(10)).await;
            let drained = tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n as u64,
                    }
                }
            })
            .await;
            match drained {
                Err(_) => Err("still sending after 30 s".to_owned()),
                Ok(()) if got >= LONG => Err("served whole to a reader that stalled".to_owned()),
                Ok(()) => Ok(()),
            }
        }
        .await;
        log.record("attack-stalled-reader", began, result);
    }
}

/// A reader that is slow but keeps reading (16 KiB every 50 ms) a 4 MB answer: it must get it
/// whole (a gateway must not take slow for stalled), and the gateway must not hold the node's
/// answer in memory meanwhile (the RSS samples show it).
async fn slow_reader(log: Arc<Log>, t: Target, deadline: Instant) {
    const SIZE: usize = 4_000_000;
    while Instant::now() < deadline {
        let began = log.now();
        let result = tokio::time::timeout(Duration::from_secs(60), async {
            let mut s = tcp(t.from, t.gateway).await.map_err(|e| format!("connect: {}", e.kind()))?;
            let req = format!("GET /debug/bytes?n={SIZE} HTTP/1.1\r\nhost: soak\r\nconnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
            let mut buf = vec![0u8; 16 << 10];
            let mut got = Vec::with_capacity(SIZE + 1024);
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => return Err(format!("cut after {} bytes: {}", got.len(), e.kind())),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let body = body_len(&got).ok_or_else(|| format!("not an answer: {} bytes", got.len()))?;
            if body == SIZE { Ok(()) } else { Err(format!("cut after {body} of {SIZE} bytes")) }
        })
        .await
        .unwrap_or_else(|_| Err("not done in 60 s".into()));
        log.record("attack-slow-reader", began, result);
    }
}

/// The length of a raw HTTP/1.1 answer's body: as it came, or its chunks' data when it is chunked
/// (`None` when the head or the chunking is broken).
fn body_len(raw: &[u8]) -> Option<usize> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let mut body = &raw[end..];
    if !head.contains("transfer-encoding: chunked") {
        return Some(body.len());
    }
    let mut total = 0;
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&body[..line_end]).ok()?.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        if size == 0 {
            return Some(total);
        }
        total += size;
        body = body.get(line_end + 2 + size + 2..)?;
    }
}

/// An HTTP/2 client that opens its streams with a window of zero and never widens it: the
/// answers' bodies can never be sent. The gateway must reset them (`send_timeout`) and go on.
async fn zero_window(env: Arc<Env>, log: Arc<Log>, t: Target, deadline: Instant) {
    while Instant::now() < deadline {
        let began = log.now();
        let result = async {
            let io = TokioIo::new(open(&env, &log, t).await.map_err(|e| format!("connect: {}", e.kind()))?);
            let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(0)
                .adaptive_window(false)
                .handshake(io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            let opened = Instant::now();
            let mut streams = Vec::new();
            for _ in 0..4 {
                send.ready().await.map_err(|e| format!("ready: {e}"))?;
                let req =
                    Request::get("http://soak/debug/bytes?n=1000000").body(Full::new(Bytes::new())).expect("a request");
                streams.push(send.send_request(req));
            }
            for s in streams {
                let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(20), s).await else {
                    continue;
                };
                let mut body = answer.into_body();
                // Nothing may arrive; the end must be an error (the stream reset) in time.
                let ended = tokio::time::timeout(Duration::from_secs(20), async {
                    loop {
                        match body.frame().await {
                            Some(Ok(_)) => continue,
                            Some(Err(_)) | None => return,
                        }
                    }
                })
                .await;
                if ended.is_err() {
                    return Err("held 20 s".to_owned());
                }
            }
            let held = opened.elapsed();
            if held > Duration::from_secs(10) { Err(format!("held {} s", held.as_secs())) } else { Ok(()) }
        }
        .await;
        log.record("attack-zero-window", began, result);
    }
}

/// Every client, started.
pub fn spawn_all(env: Arc<Env>, log: Arc<Log>, deadline: Instant) -> Vec<JoinHandle<()>> {
    let plain = |from, h2| Target { gateway: env.plain, tls: false, h2, from };
    let tls = |from, h2| Target { gateway: env.tls, tls: true, h2, from };
    let ms = Duration::from_millis;
    let callers: Vec<(&'static str, Target, Kind, Duration)> = vec![
        ("h1-read", plain(2, false), Kind::Read, ms(10)),
        ("h1-read", plain(3, false), Kind::Read, ms(10)),
        ("h1-read", plain(4, false), Kind::Read, ms(10)),
        ("h2c-read", plain(5, true), Kind::Read, ms(5)),
        ("h2c-read", plain(6, true), Kind::Read, ms(5)),
        ("https-h1-read", tls(7, false), Kind::Read, ms(10)),
        ("https-h2-read", tls(8, true), Kind::Read, ms(5)),
        ("https-h2-read", tls(9, true), Kind::Read, ms(5)),
        // The heavy methods' own limit is 2 a second a client.
        ("submit-h1", plain(10, false), Kind::Submit, ms(700)),
        ("submit-https-h2", tls(11, true), Kind::Submit, ms(700)),
        ("keyed", plain(14, false), Kind::Keyed, ms(50)),
        ("banned-client", plain(200, false), Kind::Read, ms(20)),
        ("attack-flood", plain(150, false), Kind::Flood, ms(1)),
        ("attack-bad-key", plain(151, true), Kind::BadKey, ms(50)),
    ];
    let mut tasks = Vec::new();
    for (class, t, kind, pause) in callers {
        tasks.push(tokio::spawn(caller(env.clone(), log.clone(), class, t, kind, pause, deadline)));
    }
    tasks.push(tokio::spawn(websocket(env.clone(), log.clone(), "ws", plain(12, false), deadline)));
    tasks.push(tokio::spawn(websocket(env.clone(), log.clone(), "wss", tls(13, false), deadline)));
    tasks.push(tokio::spawn(tricks(log.clone(), plain(152, false), deadline)));
    tasks.push(tokio::spawn(many_addresses(log.clone(), env.plain, deadline)));
    tasks.push(tokio::spawn(slowloris(env.clone(), log.clone(), plain(153, false), deadline)));
    tasks.push(tokio::spawn(slowloris(env.clone(), log.clone(), tls(154, false), deadline)));
    tasks.push(tokio::spawn(stalled_reader(log.clone(), plain(155, false), deadline)));
    tasks.push(tokio::spawn(slow_reader(log.clone(), plain(157, false), deadline)));
    tasks.push(tokio::spawn(zero_window(env.clone(), log.clone(), plain(156, true), deadline)));
    tasks
}

/// One HTTP/1.1 exchange on a new connection (`connection: close`), for control and admin calls.
pub async fn call(
    to: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let run = async {
        let mut s = TcpStream::connect(to).await.map_err(|e| format!("connect {to}: {e}"))?;
        let body = body.unwrap_or("");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {to}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.get(9..12).and_then(|s| s.parse().ok()).ok_or(format!("no answer: {text:?}"))?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), run).await.unwrap_or_else(|_| Err(format!("{to}: no answer in 10 s")))
}

#[cfg(test)]
mod tests {
    use super::body_len;

    #[test]
    fn body_lengths_of_plain_and_chunked_answers() {
        assert_eq!(body_len(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc"), Some(3));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\na\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(body_len(chunked), Some(13));
        // Cut inside a chunk, or no head at all: not an answer.
        assert_eq!(body_len(&chunked[..chunked.len() - 12]), None);
        assert_eq!(body_len(b"HTTP/1.1 200 OK\r\n"), None);
    }
}
