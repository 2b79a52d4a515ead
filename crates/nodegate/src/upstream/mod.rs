//! The way to the nodes: a pool of keep-alive HTTP/1.1 connections per node, error classification
//! into the gateway's answers, and the byte tunnel behind a WebSocket upgrade.

mod h1;
mod pool;
mod tls;

pub use h1::{H1Body, NodeTunnel};
pub use pool::{NodePool, SendError};
pub use tls::{NodeStream, TlsClient};

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};

use crate::error::GatewayError;
use crate::http::request_body::{BodyTooLarge, BodyTooSlow, ClientBodyError};
use crate::shutdown::Phase;

#[derive(Debug, Clone, PartialEq)]
/// `[upstream]`: how the gateway talks to its nodes.
pub struct Upstream {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_node: usize,
    /// Longest a node may pause in the middle of a response body.
    pub body_timeout: Duration,
    /// Longest a request waits for a connection at a node's `max_connections`.
    pub queue_timeout: Duration,
    /// The TLS client for https:// nodes (built when any node is one).
    pub tls: Option<TlsClient>,
}

impl Upstream {
    /// These settings ready for use: with a TLS client on the system's roots when some node is
    /// https:// and no `[upstream] ca` was given (loaded here, at start, not by validation).
    pub fn ready(&self, https_nodes: bool) -> Result<Upstream, String> {
        let mut ready = self.clone();
        if ready.tls.is_none() && https_nodes {
            ready.tls = Some(TlsClient::new(None)?);
        }
        Ok(ready)
    }
}

/// A node's answer body: from the pool's own HTTP/1.1 client, or a gRPC stream over hyper's
/// HTTP/2 client.
pub enum NodeBody {
    H1(H1Body),
    H2(hyper::body::Incoming),
}

impl NodeBody {
    /// After a 101 to a WebSocket upgrade: the node's side of the tunnel and its connection's
    /// place under the node's cap.
    pub fn take_tunnel(&mut self) -> Option<(NodeTunnel, Option<tokio::sync::OwnedSemaphorePermit>)> {
        match self {
            NodeBody::H1(b) => b.take_tunnel(),
            NodeBody::H2(_) => None,
        }
    }
}

impl http_body::Body for NodeBody {
    type Data = bytes::Bytes;
    type Error = crate::http::request_body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        match self.get_mut() {
            NodeBody::H1(b) => std::pin::Pin::new(b).poll_frame(cx),
            NodeBody::H2(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            NodeBody::H1(b) => b.is_end_stream(),
            NodeBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            NodeBody::H1(b) => b.size_hint(),
            NodeBody::H2(b) => b.size_hint(),
        }
    }
}

/// Maps a failed exchange with a node to what the client is told.
pub fn classify(err: &SendError, node: &str, cfg: &Upstream) -> GatewayError {
    let sent = match err {
        SendError::Connect(_) => return GatewayError::NodeUnreachable { node: node.into() },
        SendError::ConnectTimeout => {
            return GatewayError::NodeConnectTimeout { node: node.into(), timeout: cfg.connect_timeout };
        }
        SendError::Sent(e) => e,
        SendError::Busy => return GatewayError::NodeBusy,
    };
    // The client's own body failed (too large, or the client went away): not the node's doing.
    let sent: &(dyn StdError + 'static) = &**sent;
    if find_source::<BodyTooLarge>(sent).is_some()
        || find_source::<BodyTooSlow>(sent).is_some()
        || find_source::<ClientBodyError>(sent).is_some()
    {
        return classify_body(sent);
    }
    GatewayError::NodeReset { node: node.into() }
}

/// Maps a failure reading the client's body (before any node was involved).
pub fn classify_body(err: &(dyn StdError + 'static)) -> GatewayError {
    if let Some(e) = find_source::<BodyTooLarge>(err) {
        return GatewayError::BodyTooLarge { limit: e.limit };
    }
    if find_source::<BodyTooSlow>(err).is_some() {
        return GatewayError::BodyTooSlow;
    }
    GatewayError::ClientBodyAborted
}

fn find_source<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

/// Joins the client's and the node's upgraded connections and copies bytes both ways until either
/// side closes, the tunnel sits idle past `idle`, or the gateway stops.
pub fn spawn_tunnel(
    client: OnUpgrade,
    node: NodeTunnel,
    idle: Duration,
    mut phase: watch::Receiver<Phase>,
    held: (mpsc::Sender<()>, Option<tokio::sync::OwnedSemaphorePermit>),
) {
    tokio::spawn(async move {
        // Kept while the tunnel lasts: the server's drain waits for it, and the node's connection
        // cap counts it.
        let _held = held;
        let Some(mut c) = upgraded(client).await else { return };
        let mut n = node;
        let copy = crate::upstream::copy_with_idle(&mut c, &mut n, idle);
        tokio::select! {
            res = copy => if let Err(e) = res {
                tracing::debug!(error = %e, "tunnel closed");
            },
            _ = async { while phase.changed().await.is_ok() && *phase.borrow() != Phase::Stopped {} } => {}
        }
    });
}

/// The client's side of an upgrade once it has switched; `None` (logged) when it did not.
pub async fn upgraded(client: OnUpgrade) -> Option<TokioIo<hyper::upgrade::Upgraded>> {
    match client.await {
        Ok(upgraded) => Some(TokioIo::new(upgraded)),
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            None
        }
    }
}

/// `tokio::io::copy_bidirectional` (both directions at once, each with its own buffer, so a
/// direction whose reader is slow never holds up the other), closed when no byte has moved in
/// either direction for `idle`.
async fn copy_with_idle<A, B>(a: &mut A, b: &mut B, idle: Duration) -> io::Result<()>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let moved = Moved::default();
    let (mut a, mut b) = (Counted { io: a, moved: &moved }, Counted { io: b, moved: &moved });
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let mut seen = moved.get();
    loop {
        tokio::select! {
            res = copy.as_mut() => return res.map(|_| ()),
            _ = tokio::time::sleep(idle) => {
                let now = moved.get();
                if now == seen {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "tunnel idle timeout"));
                }
                seen = now;
            }
        }
    }
}

/// Bytes moved through a tunnel, both ways (one task touches it; atomic only to be `Sync`).
#[derive(Default)]
struct Moved(std::sync::atomic::AtomicU64);

impl Moved {
    fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn add<T>(&self, res: &std::task::Poll<io::Result<T>>, n: impl FnOnce(&T) -> usize) {
        if let std::task::Poll::Ready(Ok(v)) = res {
            self.0.fetch_add(n(v) as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// One side of a tunnel, counting what moves through it.
struct Counted<'a, T> {
    io: &'a mut T,
    moved: &'a Moved,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<'_, T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut *self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.moved.add(&res, |_| n);
        res
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<'_, T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let res = std::pin::Pin::new(&mut *self.io).poll_write(cx, buf);
        self.moved.add(&res, |n| *n);
        res
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}
