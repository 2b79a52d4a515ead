//! One client connection: hyper serves it while a watchdog enforces two guards hyper does not give us
//! for both protocols at once:
//! - header timeout: once a request head has started (or the connection is new), it must be complete
//!   within `header_timeout`, or the connection is dropped (slowloris);
//! - idle timeout: a connection with nothing in flight for `idle_timeout` is closed gracefully.
//!
//! The watchdog sleeps until the next deadline and is not woken per request (that cost 10% of the
//! instructions a proxied request takes, measured by bench/callgrind). Without a wake-up when a
//! new head begins on a kept-alive connection, the watchdog looks again at least every header
//! timeout, so such a slow head is cut off between one and two header timeouts after it began;
//! the first head of a connection is cut off on time.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::caps::Slot;
use super::{Accepted, Kind, proxy_protocol};
use crate::shutdown::Phase;
use crate::upstream::headers::Forwarding;

/// What an HTTP/2 client sends first (RFC 9113 section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the connection's watchdog and its requests share.
pub struct ConnState {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The forwarding headers' values for this client, computed once.
    pub forwarding: Forwarding,
    /// "https" on TLS listeners, else "http".
    pub scheme: &'static str,
    /// On a PROXY protocol listener the PROXY header alone names the client (`peer`): no
    /// forwarding header is read, whoever the balancer names.
    pub proxy_protocol: bool,
    /// The client certificate's holder, on a `[tls.client_auth]` listener.
    pub client_cert: std::sync::OnceLock<crate::tls::ClientIdentity>,
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch`, plus one, when an unanswered request head began; 0 = none.
    head_since: AtomicU64,
    /// Milliseconds since `epoch` when the last request finished.
    idle_since: AtomicU64,
    h2: AtomicBool,
    /// Milliseconds since `epoch`, plus one, since a write to the client has been waiting for the
    /// client to read; 0 = not waiting.
    write_blocked_since: AtomicU64,
    /// The connection's place under the connection caps. It lives as long as this state, which
    /// the socket wrapper holds: a WebSocket tunnel (the same socket, upgraded) still counts.
    _slot: Slot,
    /// The PROXY-named client's own place under `max_connections_per_client`.
    _client_slot: Option<Slot>,
    /// For work that outlives the request (WebSocket tunnels): the server's phase, and a handle that
    /// keeps the server's drain waiting while held.
    pub(crate) phase: watch::Receiver<Phase>,
    pub(crate) alive: mpsc::Sender<()>,
}

enum Verdict {
    Fine,
    SlowHead,
    /// The client has not read what the gateway is sending for `send_timeout`.
    SlowReader,
    Idle,
}

impl ConnState {
    fn new(
        peer: SocketAddr,
        local: SocketAddr,
        scheme: &'static str,
        slots: (Slot, Option<Slot>),
        phase: watch::Receiver<Phase>,
        alive: mpsc::Sender<()>,
    ) -> Self {
        ConnState {
            peer,
            local,
            forwarding: Forwarding::new(peer.ip(), scheme),
            scheme,
            proxy_protocol: slots.1.is_some(),
            client_cert: std::sync::OnceLock::new(),
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            // A new connection must send its first request head within the header timeout.
            head_since: AtomicU64::new(1),
            idle_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            write_blocked_since: AtomicU64::new(0),
            _slot: slots.0,
            _client_slot: slots.1,
            phase,
            alive,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn write_result<T>(&self, res: &Poll<io::Result<T>>) {
        match res {
            Poll::Pending => {
                if self.write_blocked_since.load(Relaxed) == 0 {
                    self.write_blocked_since.store(self.now_ms() + 1, Relaxed);
                }
            }
            Poll::Ready(_) => {
                if self.write_blocked_since.load(Relaxed) != 0 {
                    self.write_blocked_since.store(0, Relaxed);
                }
            }
        }
    }

    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.head_since.store(0, Relaxed);
    }

    pub fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.idle_since.store(self.now_ms(), Relaxed);
        }
    }

    fn bytes_read(&self) {
        // HTTP/2 frames (pings, window updates) arrive between requests: only HTTP/1 bytes read on
        // an idle connection mean a new request head has begun.
        if self.in_flight.load(Relaxed) == 0 && self.head_since.load(Relaxed) == 0 && !self.h2.load(Relaxed) {
            self.head_since.store(self.now_ms() + 1, Relaxed);
        }
    }

    /// When the watchdog should look next. Without a head in progress it looks again within one
    /// header timeout, since a new head may begin at any moment without telling it.
    fn deadline(&self, t: &Timeouts) -> Instant {
        let ms = |v: u64| self.epoch + Duration::from_millis(v);
        let soon = Instant::now() + t.header;
        if self.in_flight.load(Relaxed) > 0 {
            return match self.write_blocked_since.load(Relaxed) {
                0 => soon,
                since => (ms(since - 1) + t.send).min(soon),
            };
        }
        match self.head_since.load(Relaxed) {
            0 => (ms(self.idle_since.load(Relaxed)) + t.idle).min(soon),
            since => ms(since - 1) + t.header,
        }
    }

    fn verdict(&self, t: &Timeouts) -> Verdict {
        let now = Instant::now();
        let ms = |v: u64| self.epoch + Duration::from_millis(v);
        if self.in_flight.load(Relaxed) > 0 {
            return match self.write_blocked_since.load(Relaxed) {
                since if since > 0 && now >= ms(since - 1) + t.send => Verdict::SlowReader,
                _ => Verdict::Fine,
            };
        }
        match self.head_since.load(Relaxed) {
            0 if now >= ms(self.idle_since.load(Relaxed)) + t.idle => Verdict::Idle,
            0 => Verdict::Fine,
            since if now >= ms(since - 1) + t.header => Verdict::SlowHead,
            _ => Verdict::Fine,
        }
    }
}

#[derive(Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
    /// Longest a response may wait for the client to read.
    pub send: Duration,
}

/// The TCP stream, reporting reads to the watchdog.
struct WatchedIo {
    inner: TcpStream,
    state: Arc<ConnState>,
    /// How much of the HTTP/2 preface the connection's first bytes matched so far; `None` once
    /// decided. Only the whole preface makes it HTTP/2: a client that sends `P` and then an
    /// HTTP/1.1 request must not shed the header timeout of its later requests.
    preface: Option<usize>,
}

impl WatchedIo {
    fn look_for_preface(&mut self, read: &[u8]) {
        let Some(matched) = self.preface else { return };
        let want = &H2_PREFACE[matched..];
        let n = read.len().min(want.len());
        if read[..n] != want[..n] {
            self.preface = None;
        } else if n == want.len() {
            self.preface = None;
            self.state.h2.store(true, Relaxed);
        } else {
            self.preface = Some(matched + n);
        }
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res
            && buf.filled().len() > before
        {
            if self.preface.is_some() {
                let this = &mut *self;
                this.look_for_preface(&buf.filled()[before..]);
            }
            self.state.bytes_read();
        }
        res
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.state.write_result(&res);
        res
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.state.write_result(&res);
        res
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub(super) async fn serve(
    mut stream: TcpStream,
    mut peer: SocketAddr,
    accepted: Accepted,
    slot: Slot,
    phase: watch::Receiver<Phase>,
    alive: mpsc::Sender<()>,
) {
    let Accepted { proxy, builder, proxy_protocol, kind, caps } = accepted;
    let mut client_slot = None;
    if proxy_protocol {
        // Only a trusted balancer may say who the client is; anyone else is cut off.
        if !proxy.trusted_proxies().contains(peer.ip()) {
            tracing::debug!(%peer, "PROXY listener: connection from an untrusted peer closed");
            return;
        }
        let named = match proxy_protocol::read(&mut stream, proxy.timeouts().header).await {
            Ok(proxy_protocol::Header::Client(client)) => client,
            // The balancer's own connection (health checks): it is the client.
            Ok(proxy_protocol::Header::Local) => peer,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "PROXY listener: connection closed");
                return;
            }
        };
        // The balancer is exempt from the per-client cap; the client it names is not.
        let Some(s) = caps.admit_named(named.ip()) else {
            tracing::debug!(client = %named, "connection cap reached for the client a PROXY header names: closed");
            return;
        };
        client_slot = Some(s);
        peer = named;
    }
    let local = stream.local_addr().unwrap_or(peer);
    let scheme = if matches!(kind, Kind::Tls(_)) { "https" } else { "http" };
    let state = Arc::new(ConnState::new(peer, local, scheme, (slot, client_slot), phase.clone(), alive));
    let timeouts = proxy.timeouts();
    let io = WatchedIo { inner: stream, state: state.clone(), preface: Some(0) };
    let svc_state = state.clone();
    match kind {
        Kind::Plain => {
            let service = proxied(proxy, svc_state);
            drive(TokioIo::new(io), &builder, service, &state, timeouts, phase).await;
        }
        Kind::Redirect(redirect) => {
            let service = hyper::service::service_fn(move |req| {
                let redirect = redirect.clone();
                async move { Ok::<_, Infallible>(redirect.answer(&req)) }
            });
            drive(TokioIo::new(io), &builder, service, &state, timeouts, phase).await;
        }
        Kind::Tls(acceptor) => {
            // The handshake is part of the head: it must be done within the header timeout.
            let tls = match tokio::time::timeout(timeouts.header, acceptor.accept(io)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake not done within the header timeout");
                    return;
                }
            };
            let (_, session) = tls.get_ref();
            if session.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
                // An ACME CA checking a TLS-ALPN-01 answer: the handshake was the whole answer.
                return;
            }
            if session.alpn_protocol() == Some(crate::tls::ALPN_H2) {
                state.h2.store(true, Relaxed);
            }
            if let Some(id) = session.peer_certificates().and_then(crate::tls::client_identity) {
                let _ = state.client_cert.set(id);
            }
            let service = proxied(proxy, svc_state);
            drive(TokioIo::new(tls), &builder, service, &state, timeouts, phase).await;
        }
    }
}

/// The service of a proxying connection (plain or TLS): every request goes through the proxy.
fn proxied(
    proxy: Arc<crate::proxy::Proxy>,
    state: Arc<ConnState>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<crate::body::ProxyBody>,
    Error = Infallible,
    Future: Send,
> + Send
+ 'static {
    hyper::service::service_fn(move |req| {
        let proxy = proxy.clone();
        let state = state.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req, state).await) }
    })
}

/// Serves one connection with hyper while the watchdog enforces the timeouts and the drain.
async fn drive<I, S, B>(
    io: I,
    builder: &hyper_util::server::conn::auto::Builder<super::BoxingExecutor>,
    service: S,
    state: &ConnState,
    timeouts: Timeouts,
    mut phase: watch::Receiver<Phase>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let peer = state.peer;
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    // A connection accepted just as the drain began is closed like any other.
    if *phase.borrow() != Phase::Running {
        conn.as_mut().graceful_shutdown();
        closing = true;
    }
    loop {
        let deadline = state.deadline(&timeouts);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = tokio::time::sleep_until(deadline) => match state.verdict(&timeouts) {
                Verdict::Fine => {}
                Verdict::SlowHead => {
                    tracing::debug!(%peer, "closing connection: request head not received within the header timeout");
                    break;
                }
                Verdict::SlowReader => {
                    tracing::debug!(%peer, "closing connection: the client did not read its response within the send timeout");
                    break;
                }
                Verdict::Idle if closing => break,
                Verdict::Idle => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            },
            changed = phase.changed() => match changed.map(|_| *phase.borrow()) {
                Ok(Phase::Running) => {}
                Ok(Phase::Draining) => {
                    if !closing {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
                Ok(Phase::Stopped) | Err(_) => break,
            },
        }
    }
}
