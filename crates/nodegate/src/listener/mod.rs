//! Listeners: bind, accept, serve each connection with HTTP/1.1 or HTTP/2 (h2c prior knowledge), and
//! drain on shutdown. Connection guards (header-read and idle timeouts) live in [`conn`].

mod caps;
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

use crate::balancer::{Balancer, Node};
use crate::config::Config;
use crate::proxy::Proxy;
use crate::shutdown::Phase;
use crate::{admin, health};

/// A started gateway.
pub struct Gateway {
    addrs: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    config: Arc<Config>,
    balancer: Arc<Balancer>,
    phase: watch::Sender<Phase>,
    /// Every accept loop and connection holds a sender; `recv` returning `None` means all are gone.
    alive: mpsc::Receiver<()>,
    drain_timeout: std::time::Duration,
    cluster: Option<Arc<crate::cluster::ClusterState>>,
    tls: Option<Arc<crate::tls::TlsServer>>,
    redirect_addrs: Vec<SocketAddr>,
    refusals: crate::events::Refusals,
}

impl Gateway {
    /// Binds every `[gateway] listen` address and starts serving.
    pub async fn start(config: Config) -> io::Result<Gateway> {
        let config = Arc::new(config);
        let nodes = config.nodes.iter().map(|n| Node::new(n, &config.upstream)).collect();
        let balancer = Arc::new(Balancer::new(nodes));
        let proxy = Arc::new(Proxy::new(config.clone(), balancer.clone()));
        let refusals = proxy.refusals().clone();
        let (phase, _) = watch::channel(Phase::Running);
        if config.health.active {
            for node in balancer.nodes().iter() {
                health::spawn(node.clone(), config.gateway.profile, config.health.clone(), phase.subscribe());
            }
        }
        let cluster =
            config.cluster.as_ref().map(|c| crate::cluster::spawn(c, proxy.limiters().all(), phase.subscribe()));
        let admin = match config.admin {
            Some(addr) => Some(admin::start(addr, balancer.clone(), cluster.clone(), phase.subscribe()).await?),
            None => None,
        };
        let (alive_tx, alive) = mpsc::channel::<()>(1);
        let builder = Arc::new(http_builder(&config));
        let g = &config.gateway;
        let caps = caps::Caps::new(g.max_connections, g.max_connections_per_client, g.trusted_proxies.clone());
        let tls = match &config.tls {
            Some(t) => {
                let server = crate::tls::TlsServer::new(t).map_err(io::Error::other)?;
                if let Some(acme) = &t.acme {
                    crate::tls::acme::preload(acme, &server.resolver);
                }
                server.watch(t.reload_interval, phase.subscribe());
                Some(server)
            }
            None => None,
        };
        let front = match &tls {
            Some(s) => Kind::Tls(tokio_rustls::TlsAcceptor::from(s.config.clone())),
            None => Kind::Plain,
        };
        let mut listeners: Vec<(SocketAddr, bool, Kind)> = Vec::new();
        listeners.extend(config.gateway.listen.iter().map(|a| (*a, false, front.clone())));
        listeners.extend(config.gateway.listen_proxy_protocol.iter().map(|a| (*a, true, front.clone())));
        if let (Some(t), Some(s)) = (&config.tls, &tls)
            && let (Some(ca), Some(ca_config)) = (&t.client_auth, &s.client_auth_config)
        {
            let kind = Kind::Tls(tokio_rustls::TlsAcceptor::from(ca_config.clone()));
            listeners.extend(ca.listen.iter().map(|a| (*a, false, kind.clone())));
        }
        let mut addrs = Vec::new();
        let mut redirect_addrs = Vec::new();
        let every: Vec<SocketAddr> =
            listeners.iter().map(|l| l.0).chain(config.gateway.listen_http.iter().copied()).collect();
        for (addr, proxy_protocol, kind) in listeners {
            let listener = bind(addr, &every)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            let local = listener.local_addr()?;
            addrs.push(local);
            tracing::info!(%local, proxy_protocol, "listening");
            let conns =
                Accepted { proxy: proxy.clone(), builder: builder.clone(), proxy_protocol, caps: caps.clone(), kind };
            tokio::spawn(accept_loop(listener, conns, phase.subscribe(), alive_tx.clone()));
        }
        // The HTTPS port a redirect points to: the first `listen` address's.
        let https_port = addrs.first().map_or(443, |a: &SocketAddr| a.port());
        let redirect = Arc::new(redirect::Redirect::new(https_port));
        for addr in &config.gateway.listen_http {
            let listener = bind(*addr, &every)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            let local = listener.local_addr()?;
            redirect_addrs.push(local);
            tracing::info!(%local, "listening (redirect to HTTPS)");
            let kind = Kind::Redirect(redirect.clone());
            let conns = Accepted {
                proxy: proxy.clone(),
                builder: builder.clone(),
                proxy_protocol: false,
                caps: caps.clone(),
                kind,
            };
            tokio::spawn(accept_loop(listener, conns, phase.subscribe(), alive_tx.clone()));
        }
        if let (Some(acme), Some(server)) = (config.tls.as_ref().and_then(|t| t.acme.clone()), &tls) {
            let responders =
                crate::tls::acme::Responders { tls: server.resolver.clone(), http: redirect.tokens.clone() };
            crate::tls::acme::spawn(acme, responders, phase.subscribe());
        }
        let drain_timeout = config.gateway.drain_timeout;
        Ok(Gateway {
            addrs,
            redirect_addrs,
            admin,
            config,
            balancer,
            phase,
            alive,
            drain_timeout,
            cluster,
            tls,
            refusals,
        })
    }

    /// The bound addresses: `[gateway] listen`, then `listen_proxy_protocol`, then
    /// `[tls.client_auth] listen`, in order (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The bound `listen_http` (redirect) addresses.
    pub fn redirect_addrs(&self) -> &[SocketAddr] {
        &self.redirect_addrs
    }

    /// Loads the TLS certificate files again now (as SIGHUP does); an error keeps the old ones.
    pub fn reload_certificates(&self) -> Result<(), String> {
        match &self.tls {
            Some(t) => t.reload(),
            None => Ok(()),
        }
    }

    /// Applies a new config's `[[node]]` list without dropping anything in flight: nodes are added,
    /// removed or re-weighted (see `Balancer::reload`). Other sections take a restart; a change to
    /// them is reported as a warning and left alone.
    pub fn reload(&self, new: &Config) {
        if let Err(e) = self.reload_certificates() {
            tracing::warn!(error = %e, "TLS certificates not reloaded: keeping the ones in use");
        }
        let changes = self.balancer.reload(&new.nodes, &self.config.upstream);
        if self.config.health.active {
            for node in &changes.added {
                health::spawn(
                    node.clone(),
                    self.config.gateway.profile,
                    self.config.health.clone(),
                    self.phase.subscribe(),
                );
            }
        }
        let added: Vec<&str> = changes.added.iter().map(|n| &*n.name).collect();
        tracing::info!(?added, removed = ?changes.removed, kept = ?changes.kept, "nodes reloaded");
        let old = &self.config;
        if new.gateway.listen != old.gateway.listen
            || new.gateway.profile != old.gateway.profile
            || new.admin != old.admin
            || new.cluster != old.cluster
            || format!("{:?}{:?}{:?}{:?}", new.upstream, new.health, new.log, new.rate_limit)
                != format!("{:?}{:?}{:?}{:?}", old.upstream, old.health, old.log, old.rate_limit)
        {
            tracing::warn!("reload applies [[node]] changes only; other changed settings take a restart");
        }
    }

    /// Whether Redis answered the last limit sync: `"unknown"`, `"up"` or `"down"`; `None`
    /// without `[cluster]`.
    pub fn redis_status(&self) -> Option<&'static str> {
        self.cluster.as_ref().map(|c| c.redis())
    }

    /// Every request refused from now on, as a typed event (the ban engine's input).
    pub fn refusals(&self) -> tokio::sync::broadcast::Receiver<crate::events::Refusal> {
        self.refusals.subscribe()
    }

    /// The admin listener's bound address, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Stops accepting, lets in-flight requests finish for up to the drain timeout, then closes
    /// whatever is left. Returns once every connection is gone.
    pub async fn shutdown(mut self) {
        self.phase.send_replace(Phase::Draining);
        let drained = tokio::time::timeout(self.drain_timeout, self.alive.recv()).await.is_ok();
        if !drained {
            tracing::warn!(timeout = ?self.drain_timeout, "drain timeout passed; closing remaining connections");
            self.phase.send_replace(Phase::Stopped);
            self.alive.recv().await;
        }
        tracing::info!("stopped");
    }
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
            other => return other,
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
    pub kind: Kind,
}

/// What a listener speaks.
#[derive(Clone)]
pub(crate) enum Kind {
    /// HTTP/1.1 and h2c, proxied.
    Plain,
    /// HTTPS, proxied.
    Tls(tokio_rustls::TlsAcceptor),
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
