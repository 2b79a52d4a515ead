//! The admin listener (`[admin] listen`; configure it on loopback): `GET /status` shows what the
//! gateway knows of each node, whether Redis answers when limits are shared (`[cluster]`), the
//! access log lines dropped and the bans in force; `/bans` manages bans (see `bans`).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod bans;
pub mod client;

pub use bans::BanAdmin;
use http_body_util::BodyExt;

use crate::balancer::Balancer;
use crate::body::ProxyBody;
use crate::body::json_error;
use crate::shutdown::Phase;

/// Binds the admin listener and serves it until the gateway stops; returns the bound address.
pub async fn start(
    addr: SocketAddr,
    balancer: Arc<Balancer>,
    cluster: Option<Arc<crate::cluster::ClusterState>>,
    bans: BanAdmin,
    mut phase: watch::Receiver<Phase>,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr} (admin): {e}")))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "admin listening");
    let admin = Arc::new(Admin { balancer, cluster, bans });
    tokio::spawn(async move {
        loop {
            tokio::select! {
                (stream, peer) = crate::listener::accept(&listener) => {
                    let admin = admin.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        let admin = admin.clone();
                        async move { Ok::<_, Infallible>(admin.handle(req, peer).await) }
                    });
                    tokio::spawn(async move {
                        let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
                    });
                }
                _ = phase.wait_for(|p| *p != Phase::Running) => return,
            }
        }
    });
    Ok(local)
}

struct Admin {
    balancer: Arc<Balancer>,
    cluster: Option<Arc<crate::cluster::ClusterState>>,
    bans: BanAdmin,
}

/// The largest request body the admin API reads.
const MAX_BODY: usize = 1 << 20;

impl Admin {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return json_error(StatusCode::PAYLOAD_TOO_LARGE, "the admin API reads bodies up to 1 MiB"),
        };
        let path = parts.uri.path();
        if let Some(resp) = self.bans.handle(&parts.method, path, peer, &body).await {
            return resp;
        }
        match (&parts.method, path) {
            (&Method::GET, "/status") => {
                let nodes: Vec<_> = self.balancer.nodes().iter().map(|n| n.status()).collect();
                let healthy = nodes.iter().filter(|n| n.healthy && !n.ejected).count();
                let mut body = serde_json::json!({
                    "nodes": nodes,
                    "available": healthy,
                    "access_log": {"dropped": crate::access_log::dropped_lines()},
                    "bans": self.bans.status(),
                });
                if let Some(c) = &self.cluster {
                    body["cluster"] = serde_json::json!({"redis": c.redis()});
                }
                bans::json(StatusCode::OK, &body)
            }
            _ => json_error(StatusCode::NOT_FOUND, "admin routes: GET /status, GET|POST /bans, GET|DELETE /bans/ADDR"),
        }
    }
}
