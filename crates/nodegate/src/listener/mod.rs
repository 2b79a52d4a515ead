//! Listeners: bind, accept, serve each connection with HTTP/1.1 or HTTP/2 (h2c prior knowledge), and
//! drain on shutdown. Connection guards (header-read and idle timeouts) live in [`conn`].

pub mod caps;
mod conn;
pub mod proxy_protocol;
pub mod redirect;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::proxy::Proxy;
use crate::shutdown::Phase;

/// What `bind_all` bound: the proxying listeners' addresses (`[gateway] listen`, then
/// `listen_proxy_protocol`, then `[tls.client_auth] listen`), the redirect listeners', and the
/// redirect's ACME HTTP-01 tokens.
pub struct Bound {
    pub addrs: Vec<SocketAddr>,
    pub redirect_addrs: Vec<SocketAddr>,
    pub http01: Arc<crate::tls::acme::Http01Tokens>,
    /// The connection caps every listener shares, for reloads.
    pub caps: Arc<caps::Caps>,
}

/// Binds every listener the config names and serves each with its own accept loop until the
/// phase leaves `Running`; every loop and connection holds `alive` while it lasts.
pub async fn bind_all(
    config: &Config,
    proxy: Arc<Proxy>,
    bans: Arc<crate::bans::list::BanList>,
    tls: Option<&crate::tls::TlsServer>,
    phase: &watch::Sender<Phase>,
    alive: mpsc::Sender<()>,
) -> io::Result<Bound> {
    let builder = Arc::new(http_builder(config));
    let g = &config.gateway;
    let caps = caps::Caps::new(g.max_connections, g.max_connections_per_client, g.trusted_proxies.clone());
    let front = match tls {
        Some(s) => Front::Tls(s.main.clone()),
        None => Front::Plain,
    };
    let mut listeners: Vec<(SocketAddr, bool, Front)> = Vec::new();
    listeners.extend(g.listen.iter().map(|a| (*a, false, front.clone())));
    listeners.extend(g.listen_proxy_protocol.iter().map(|a| (*a, true, front.clone())));
    if let (Some(t), Some(s)) = (&config.tls, tls)
        && let (Some(ca), Some(acceptor)) = (&t.client_auth, &s.client_auth)
    {
        let front = Front::Tls(acceptor.clone());
        listeners.extend(ca.listen.iter().map(|a| (*a, false, front.clone())));
    }
    let every: Vec<SocketAddr> = listeners.iter().map(|l| l.0).chain(g.listen_http.iter().copied()).collect();
    let mut addrs = Vec::new();
    for (addr, proxy_protocol, front) in listeners {
        let listener = bind(addr, &every).await?;
        let local = listener.local_addr()?;
        addrs.push(local);
        tracing::info!(%local, proxy_protocol, "listening");
        let (proxy, builder, caps, bans) = (proxy.clone(), builder.clone(), caps.clone(), bans.clone());
        let conns = Accepted { proxy, builder, proxy_protocol, caps, bans, front };
        tokio::spawn(accept_loop(listener, conns, phase.subscribe(), alive.clone()));
    }
    // The HTTPS port a redirect points to: the first `listen` address's.
    let https_port = addrs.first().map_or(443, |a: &SocketAddr| a.port());
    let redirect = Arc::new(redirect::Redirect::new(https_port));
    let mut redirect_addrs = Vec::new();
    for addr in &g.listen_http {
        let listener = bind(*addr, &every).await?;
        let local = listener.local_addr()?;
        redirect_addrs.push(local);
        tracing::info!(%local, "listening (redirect to HTTPS)");
        let front = Front::Redirect(redirect.clone());
        let (proxy, builder, caps, bans) = (proxy.clone(), builder.clone(), caps.clone(), bans.clone());
        let conns = Accepted { proxy, builder, proxy_protocol: false, caps, bans, front };
        tokio::spawn(accept_loop(listener, conns, phase.subscribe(), alive.clone()));
    }
    Ok(Bound { addrs, redirect_addrs, http01: redirect.tokens.clone(), caps })
}

/// Binds and listens. "Address in use" is retried four times, 500 ms apart, as nginx does: right
/// after a restart the port can still be held for a moment by the previous process's closing
/// connections (seen in tests that restart a gateway on the same port).
///
/// An IPv6 address is dual-stack (it takes IPv4 clients too, as `::ffff:a.b.c.d`) unless `others`
/// listen on the same port over IPv4: then it is IPv6 only (`IPV6_V6ONLY`, nginx's default), or
/// the second bind fails with "address in use" on Linux's default `bindv6only = 0`.
async fn bind(addr: SocketAddr, others: &[SocketAddr]) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let v6_only = addr.is_ipv6() && addr.port() != 0 && others.iter().any(|o| o.is_ipv4() && o.port() == addr.port());
    let attempt = || {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(v6_only)?;
        }
        socket.set_tcp_nodelay(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    };
    let mut tries = 1;
    loop {
        match attempt() {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < 5 => {
                tracing::warn!(%addr, error = %e, "address in use: trying again in 500 ms");
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))),
            ok => return ok,
        }
    }
}

fn http_builder(config: &Config) -> auto::Builder<BoxingExecutor> {
    let g = &config.gateway;
    let mut b = auto::Builder::new(BoxingExecutor { send_timeout: g.send_timeout });
    // Our own check answers 431 with a JSON body at max_header_size; hyper's cap, at twice that,
    // is the backstop for heads too large to even buffer (hyper's own 431 has an empty body).
    let hard_cap = g.max_header_size.saturating_mul(2).max(8192);
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None) // the connection watchdog does this for both protocols
        .max_buf_size(hard_cap)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(hard_cap).unwrap_or(u32::MAX))
        .max_concurrent_streams(g.h2_max_concurrent_streams)
        // Rapid reset (CVE-2023-44487): streams a client opens and cancels before they are
        // served; past 20 pending the connection gets GOAWAY (ENHANCE_YOUR_CALM).
        .max_pending_accept_reset_streams(20)
        // Streams the gateway had to reset for protocol errors, per connection, before GOAWAY.
        .max_local_error_reset_streams(256);
    b
}

/// Runs hyper's HTTP/2 stream tasks as boxed futures. A stream's future holds the request's
/// (several KB), and `tokio::spawn` moves the future it is given several times while it builds the
/// task: given a box, each move is a pointer. 4,400 fewer instructions a request on HTTP/2
/// (bench/callgrind, PROTO=h2); HTTP/1.1 spawns nothing per request and is not affected.
///
/// Each stream is also watched: a response the client's flow-control window keeps shut (it never
/// sends WINDOW_UPDATE) would otherwise hold the stream, and the node request behind it, for as
/// long as the client likes, since the socket itself never blocks. When a response body is pending
/// for `send_timeout` with no frame taken from it and not waiting on its node, the stream's task
/// ends: h2 resets the stream (CANCEL) and the node's request is released.
#[derive(Clone, Copy)]
pub(crate) struct BoxingExecutor {
    pub send_timeout: std::time::Duration,
}

impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let watch = Arc::new(crate::body::StreamWatch::default());
        // The stream's own (large) future is boxed alone, as before the watch: a box grown past
        // malloc's small sizes cost more than the watch itself (bench/callgrind PROTO=h2).
        let inner = crate::body::STREAM.scope(watch.clone(), Box::pin(fut));
        tokio::spawn(Watched { inner, watch, timeout: self.send_timeout, sleep: None, seen: 0 });
    }
}

pin_project_lite::pin_project! {
    struct Watched<F> {
        #[pin]
        inner: F,
        watch: Arc<crate::body::StreamWatch>,
        timeout: std::time::Duration,
        // Made only when a body is blocked by the client: most streams never need one.
        sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
        seen: u64,
    }
}

impl<F: std::future::Future> std::future::Future for Watched<F> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let this = self.project();
        if this.inner.poll(cx).is_ready() {
            return std::task::Poll::Ready(());
        }
        let w = &**this.watch;
        if !w.armed.load(Relaxed) || w.waiting_on_node.load(Relaxed) {
            *this.sleep = None;
            return std::task::Poll::Pending;
        }
        let progress = w.progress.load(Relaxed);
        let deadline = tokio::time::Instant::now() + *this.timeout;
        match this.sleep {
            None => {
                *this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline)));
                *this.seen = progress;
            }
            Some(s) if progress != *this.seen => {
                s.as_mut().reset(deadline);
                *this.seen = progress;
            }
            Some(_) => {}
        }
        if this.sleep.as_mut().is_some_and(|s| s.as_mut().poll(cx).is_ready()) {
            tracing::debug!(timeout = ?this.timeout, "HTTP/2 response blocked by the client's flow control: stream reset");
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    }
}

/// What every connection a listener accepts is served with.
#[derive(Clone)]
pub(crate) struct Accepted {
    pub proxy: Arc<Proxy>,
    pub builder: Arc<auto::Builder<BoxingExecutor>>,
    /// The connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
    pub caps: Arc<caps::Caps>,
    pub bans: Arc<crate::bans::list::BanList>,
    pub front: Front,
}

/// What a listener speaks.
#[derive(Clone)]
pub(crate) enum Front {
    /// HTTP/1.1 and h2c, proxied.
    Plain,
    /// HTTPS, proxied.
    Tls(Arc<crate::tls::Acceptor>),
    /// `listen_http` with `[tls]`: redirects to HTTPS, answers ACME HTTP-01 challenges.
    Redirect(Arc<redirect::Redirect>),
}

/// The next connection. A failed `accept` (out of file descriptors, above all) is logged and tried
/// again after a pause, never the end of the listener; the pause keeps a full descriptor table from
/// turning the loop into a spin.
pub async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(pair) => return pair,
            Err(e) => {
                tracing::warn!(error = %e, local = ?listener.local_addr().ok(), "accept failed: trying again in 50 ms");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    conns: Accepted,
    mut phase: watch::Receiver<Phase>,
    alive: mpsc::Sender<()>,
) {
    loop {
        tokio::select! {
            (stream, peer) = accept(&listener) => {
                // A banned address is closed here, before any TLS or HTTP work.
                if conns.bans.is_banned(peer.ip()) {
                    tracing::debug!(%peer, "banned: closed at accept");
                    continue;
                }
                // Over a connection cap: closed here, before any work is spent on it.
                let Some(slot) = conns.caps.admit(peer.ip()) else {
                    tracing::debug!(%peer, "connection cap reached: closed at accept");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(conn::serve(stream, peer, conns.clone(), slot, phase.clone(), alive.clone()));
            }
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() != Phase::Running {
                    break;
                }
            }
        }
    }
}
