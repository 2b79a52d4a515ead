//! The way to the nodes: one pooled keep-alive HTTP/1.1 client for all of them, error classification
//! into the gateway's answers, and the byte tunnel behind a WebSocket upgrade.

pub mod headers;

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{mpsc, watch};

use crate::body::{BodyTooLarge, CappedBody, ClientBodyError};
use crate::config::Upstream;
use crate::error::GatewayError;
use crate::listener::Phase;

pub type UpstreamClient = Client<HttpConnector, CappedBody>;

pub fn client(cfg: &Upstream) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_node)
        .build(http)
}

/// Maps a failed exchange with a node to what the client is told.
pub fn classify(err: &hyper_util::client::legacy::Error, node: &str, cfg: &Upstream) -> GatewayError {
    if let Some(e) = find_source::<BodyTooLarge>(err) {
        return GatewayError::BodyTooLarge { limit: e.limit };
    }
    if find_source::<ClientBodyError>(err).is_some() {
        return GatewayError::ClientBodyAborted;
    }
    if err.is_connect() {
        let timed_out = find_source::<io::Error>(err).is_some_and(|e| e.kind() == io::ErrorKind::TimedOut);
        return if timed_out {
            GatewayError::NodeConnectTimeout { node: node.into(), timeout: cfg.connect_timeout }
        } else {
            GatewayError::NodeUnreachable { node: node.into() }
        };
    }
    GatewayError::NodeReset { node: node.into() }
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
    node: OnUpgrade,
    idle: Duration,
    mut phase: watch::Receiver<Phase>,
    alive: mpsc::Sender<()>,
) {
    tokio::spawn(async move {
        let _alive = alive;
        let (c, n) = match tokio::try_join!(client, node) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let (mut c, mut n) = (TokioIo::new(c), TokioIo::new(n));
        let copy = crate::upstream::copy_with_idle(&mut c, &mut n, idle);
        tokio::select! {
            res = copy => if let Err(e) = res {
                tracing::debug!(error = %e, "tunnel closed");
            },
            _ = async { while phase.changed().await.is_ok() && *phase.borrow() != Phase::Stopped {} } => {}
        }
    });
}

/// `copy_bidirectional`, closed when no byte has moved in either direction for `idle`.
async fn copy_with_idle<A, B>(a: &mut A, b: &mut B, idle: Duration) -> io::Result<()>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let mut abuf = vec![0u8; 16 * 1024];
    let mut bbuf = vec![0u8; 16 * 1024];
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        let step = tokio::time::timeout(idle, async {
            tokio::select! {
                n = ar.read(&mut abuf), if a_open => match n? {
                    0 => { a_open = false; bw.shutdown().await }
                    n => bw.write_all(&abuf[..n]).await,
                },
                n = br.read(&mut bbuf), if b_open => match n? {
                    0 => { b_open = false; aw.shutdown().await }
                    n => aw.write_all(&bbuf[..n]).await,
                },
            }
        })
        .await;
        match step {
            Ok(res) => res?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "tunnel idle timeout")),
        }
    }
    Ok(())
}
