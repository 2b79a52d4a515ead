//! Pooled keep-alive HTTP/1.1 connections to one node.
//!
//! Leaner than hyper-util's general client, which is built for any host: no pool map to look up, no
//! task per connection (`h1`: the request's own task drives its exchange). A connection goes back
//! to the idle list when the answer's body has been read to its end (see `Lease`); one whose body
//! was abandoned is closed and never reused. Idle connections are taken last-in first-out (the
//! warmest), looked at before use (one the node closed or wrote to unasked is dropped), and a
//! reaper closes those idle past `pool_idle_timeout` or closed by the node meanwhile.
//!
//! At most `max_connections` connections to the node exist at once (in use, idle, or carrying a
//! WebSocket tunnel): each holds a permit. Past that, a request waits up to `queue_timeout` for a
//! connection to come back to the pool or to close, then gives up unsent (`SendError::Busy`).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::Upstream;
use super::h1::{self, Conn, Failed, H1Body};
use crate::http::headers::Stamp;
use crate::http::request_body::{BoxError, CappedBody};

/// Why an exchange with a node failed, and whether the request may have reached it.
#[derive(Debug)]
pub enum SendError {
    /// No connection: refused, unreachable, or a name that did not resolve. Nothing was sent.
    Connect(io::Error),
    /// No connection within the connect timeout. Nothing was sent.
    ConnectTimeout,
    /// The request was (at least partly) written: it may have reached the node.
    Sent(BoxError),
    /// Every connection the node may have was busy for `queue_timeout`. Nothing was sent.
    Busy,
}

pub struct NodePool {
    host: String,
    port: u16,
    /// Set when the node's host is an IP literal, so no lookup is needed.
    addr: Option<SocketAddr>,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    /// One permit per connection, `max_connections` in all.
    permits: Arc<Semaphore>,
    /// Woken when a connection goes back to the idle list, for requests waiting at the cap.
    returned: Notify,
    queue_timeout: Duration,
    idle_timeout: Duration,
    connect_timeout: Duration,
    /// For https:// nodes.
    tls: Option<super::TlsClient>,
    /// gRPC: one HTTP/2 connection, its streams shared by every call.
    h2: tokio::sync::Mutex<Option<hyper::client::conn::http2::SendRequest<CappedBody>>>,
}

enum Room {
    Permit(OwnedSemaphorePermit),
    Returned,
    None,
}

struct Idle {
    conn: Conn,
    since: Instant,
    permit: OwnedSemaphorePermit,
}

/// A connection's place in its pool while it is in use: given back with the connection once the
/// answer has ended cleanly (`H1Body`).
pub struct Lease {
    pool: Arc<NodePool>,
    permit: OwnedSemaphorePermit,
}

impl Lease {
    pub fn put_back(self, conn: Conn) {
        self.pool.put(conn, self.permit);
    }

    /// The connection became a tunnel: it keeps its place under the cap for as long as the
    /// returned permit lives.
    pub fn into_permit(self) -> OwnedSemaphorePermit {
        self.permit
    }
}

impl NodePool {
    pub fn new(host: &str, port: u16, https: bool, max_connections: usize, cfg: &Upstream) -> Arc<NodePool> {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let addr = host.parse().ok().map(|ip| SocketAddr::new(ip, port));
        let pool = Arc::new(NodePool {
            host,
            port,
            addr,
            idle: Mutex::new(Vec::new()),
            max_idle: cfg.pool_max_idle_per_node,
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            returned: Notify::new(),
            queue_timeout: cfg.queue_timeout,
            idle_timeout: cfg.pool_idle_timeout,
            connect_timeout: cfg.connect_timeout,
            tls: if https { cfg.tls.clone() } else { None },
            h2: tokio::sync::Mutex::new(None),
        });
        tokio::spawn(reap(Arc::downgrade(&pool)));
        pool
    }

    /// The node's `host:port`, for connections outside the pool (health probes).
    pub fn address(&self) -> String {
        match self.addr {
            Some(addr) => addr.to_string(),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// Sends `req` on an idle connection, or a new one. A reused connection that turns out closed
    /// hands the request back unsent, so trying the next one is safe for any method. When no
    /// connection could be made the request comes back with the error: it never left.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<CappedBody>,
        stamp: &Stamp<'_>,
        host: &http::HeaderValue,
    ) -> Result<Response<H1Body>, (SendError, Option<Request<CappedBody>>)> {
        let mut deadline = None;
        loop {
            while let Some((conn, permit)) = self.take() {
                match h1::exchange(conn, req, (stamp, host), Lease { pool: self.clone(), permit }).await {
                    Ok(resp) => return Ok(resp),
                    Err(Failed::Unsent(unsent, e)) => {
                        tracing::debug!(error = %e, "idle node connection was closed; trying another");
                        req = *unsent;
                    }
                    Err(Failed::Sent(e)) => return Err((SendError::Sent(e), None)),
                }
            }
            let permit = match self.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                // At the cap: boxed, as it is rare, and inline it made every request's future
                // larger (moved several times a request).
                Err(_) => match crate::cold::rare(self.wait_for_room(&mut deadline)).await {
                    Room::Permit(p) => p,
                    Room::Returned => continue,
                    Room::None => return Err((SendError::Busy, Some(req))),
                },
            };
            let conn = match crate::cold::rare(self.open()).await {
                Ok(stream) => Conn::new(stream),
                Err(e) => return Err((e, Some(req))),
            };
            return match h1::exchange(conn, req, (stamp, host), Lease { pool: self.clone(), permit }).await {
                Ok(resp) => Ok(resp),
                // A new connection that took nothing: the request never left.
                Err(Failed::Unsent(unsent, e)) => Err((SendError::Connect(e), Some(*unsent))),
                Err(Failed::Sent(e)) => Err((SendError::Sent(e), None)),
            };
        }
    }

    /// At the cap: waits for a connection to come back to the idle list, for one to close, or
    /// for the queue timeout (counted from the first wait of this request).
    async fn wait_for_room(&self, deadline: &mut Option<Instant>) -> Room {
        // Registered first, then one more look, so a connection returned in between is not missed.
        let returned = self.returned.notified();
        tokio::pin!(returned);
        returned.as_mut().enable();
        if !self.idle.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return Room::Returned;
        }
        let until = *deadline.get_or_insert_with(|| Instant::now() + self.queue_timeout);
        tokio::select! {
            p = self.permits.clone().acquire_owned() => p.map_or(Room::None, Room::Permit),
            _ = returned => Room::Returned,
            _ = tokio::time::sleep_until(until) => Room::None,
        }
    }

    fn take(&self) -> Option<(Conn, OwnedSemaphorePermit)> {
        loop {
            // Looked at outside the lock: the look may be a system call.
            let mut i = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if i.conn.is_usable() {
                return Some((i.conn, i.permit));
            }
        }
    }

    fn put(&self, conn: Conn, permit: OwnedSemaphorePermit) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle { conn, since: Instant::now(), permit });
            drop(idle);
            self.returned.notify_one();
        }
    }

    /// A new connection to the node (TLS handshake included for https://), within the connect
    /// timeout; health probes use it too.
    pub async fn open(&self) -> Result<super::NodeStream, SendError> {
        self.open_for(false).await
    }

    /// A new connection that will speak HTTP/2 when `h2` (over TLS, agreed by ALPN).
    async fn open_for(&self, h2: bool) -> Result<super::NodeStream, SendError> {
        let connect = async {
            let stream = match self.addr {
                Some(addr) => TcpStream::connect(addr).await?,
                None => TcpStream::connect((self.host.as_str(), self.port)).await?,
            };
            stream.set_nodelay(true)?;
            match &self.tls {
                Some(tls) => tls.connect(&self.host, stream, h2).await,
                None => Ok(super::NodeStream::Plain(stream)),
            }
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(SendError::Connect(e)),
            Err(_) => Err(SendError::ConnectTimeout),
        }
    }

    /// Sends a gRPC call over the node's HTTP/2 connection (h2c, or h2 over TLS for https://
    /// nodes), made when there is none or the last one closed. Streams and trailers pass as the
    /// node sends them.
    pub async fn send_h2(&self, req: Request<CappedBody>) -> Result<Response<Incoming>, SendError> {
        let mut sender = {
            let mut h2 = self.h2.lock().await;
            match h2.as_ref().filter(|s| !s.is_closed()) {
                Some(s) => s.clone(),
                None => {
                    let stream = self.open_for(true).await?;
                    let (sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| SendError::Connect(io::Error::other(e)))?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    *h2 = Some(sender.clone());
                    sender
                }
            }
        };
        sender.ready().await.map_err(|e| SendError::Sent(e.into()))?;
        sender.send_request(req).await.map_err(|e| SendError::Sent(e.into()))
    }
}

/// Closes connections idle longer than the pool's idle timeout; ends with the pool.
async fn reap(pool: Weak<NodePool>) {
    let period = match pool.upgrade() {
        Some(p) => (p.idle_timeout / 2).max(Duration::from_millis(500)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        let timeout = pool.idle_timeout;
        pool.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain_mut(|i| i.since.elapsed() < timeout && i.conn.is_usable());
    }
}
