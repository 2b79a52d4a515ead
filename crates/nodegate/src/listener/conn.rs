//! One client connection: hyper serves it while a watchdog enforces two guards hyper does not give us
//! for both protocols at once (over the shared state in `crate::conn`):
//! - header timeout: once a request head has started (or the connection is new), it must be complete
//!   within `header_timeout`, or the connection is dropped (slowloris);
//! - idle timeout: a connection with nothing in flight for `idle_timeout` is closed gracefully.
//!
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::caps::ConnSlot;
use super::{Accepted, Front, proxy_protocol};
use crate::conn::{ConnState, Scheme, Timeouts, WatchVerdict};
use crate::shutdown::Phase;

/// What an HTTP/2 client sends first (RFC 9113 section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The TCP stream, reporting reads to the watchdog.
struct WatchedIo {
    inner: TcpStream,
    state: Arc<ConnState>,
    /// The connection's place under the connection caps, and the PROXY-named client's. They live
    /// as long as the socket: a WebSocket tunnel (the same socket, upgraded) still counts.
    _slots: (ConnSlot, Option<ConnSlot>),
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
    slot: ConnSlot,
    phase: watch::Receiver<Phase>,
    alive: mpsc::Sender<()>,
) {
    let Accepted { proxy, builder, proxy_protocol, front, caps, .. } = accepted;
    let mut client_slot = None;
    if proxy_protocol {
        // Only a trusted balancer may say who the client is; anyone else is cut off.
        if !proxy.trusts(peer.ip()) {
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
    let scheme = if matches!(front, Front::Tls(_)) { Scheme::Https } else { Scheme::Http };
    let state = Arc::new(ConnState::new(peer, local, scheme, client_slot.is_some(), phase.clone(), alive));
    let timeouts = proxy.timeouts();
    let io = WatchedIo { inner: stream, state: state.clone(), _slots: (slot, client_slot), preface: Some(0) };
    let svc_state = state.clone();
    match front {
        Front::Plain => {
            let service = proxied(proxy, svc_state);
            drive(TokioIo::new(io), &builder, service, &state, timeouts, phase).await;
        }
        Front::Redirect(redirect) => {
            let service = hyper::service::service_fn(move |req| {
                let redirect = redirect.clone();
                async move { Ok::<_, Infallible>(redirect.answer(&req)) }
            });
            drive(TokioIo::new(io), &builder, service, &state, timeouts, phase).await;
        }
        Front::Tls(acceptor) => {
            // The handshake is part of the head: it must be done within the header timeout.
            let handshake = tokio_rustls::TlsAcceptor::from(acceptor.config()).accept(io);
            let metrics = proxy.metrics();
            let tls = match tokio::time::timeout(timeouts.header, handshake).await {
                Ok(Ok(tls)) => {
                    metrics.handshake(crate::metrics::Handshake::Done);
                    tls
                }
                Ok(Err(e)) => {
                    metrics.handshake(crate::metrics::Handshake::Failed);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.handshake(crate::metrics::Handshake::TimedOut);
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
            if let Some(id) = session.peer_certificates().and_then(|c| crate::tls::client_identity(c, &acceptor)) {
                let _ = state.cert.set(id);
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
                WatchVerdict::Fine => {}
                WatchVerdict::SlowHead => {
                    tracing::debug!(%peer, "closing connection: request head not received within the header timeout");
                    break;
                }
                WatchVerdict::SlowReader => {
                    tracing::debug!(%peer, "closing connection: the client did not read its response within the send timeout");
                    break;
                }
                WatchVerdict::Idle if closing => break,
                WatchVerdict::Idle => {
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
