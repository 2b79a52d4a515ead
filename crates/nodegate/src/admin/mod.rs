//! The admin listener (`[admin] listen`; configure it on loopback): `GET /status` shows what the
//! gateway knows of each node, whether Redis answers when limits are shared (`[cluster]`), the
//! access log lines dropped and the bans in force.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::balancer::Balancer;
use crate::body::ProxyBody;
use crate::body::json_error;
use crate::shutdown::Phase;

/// Binds the admin listener and serves it until the gateway stops; returns the bound address.
pub async fn start(
    addr: SocketAddr,
    balancer: Arc<Balancer>,
    cluster: Option<Arc<crate::cluster::ClusterState>>,
    bans: Arc<crate::bans::engine::BanList>,
    mut phase: watch::Receiver<Phase>,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr} (admin): {e}")))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "admin listening");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                (stream, _) = crate::listener::accept(&listener) => {
                    let (balancer, cluster, bans) = (balancer.clone(), cluster.clone(), bans.clone());
                    let svc = hyper::service::service_fn(move |req| {
                        let (balancer, cluster, bans) = (balancer.clone(), cluster.clone(), bans.clone());
                        async move { Ok::<_, Infallible>(handle(&balancer, cluster.as_deref(), &bans, &req)) }
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

fn handle(
    balancer: &Balancer,
    cluster: Option<&crate::cluster::ClusterState>,
    bans: &crate::bans::engine::BanList,
    req: &Request<Incoming>,
) -> Response<ProxyBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => {
            let nodes: Vec<_> = balancer.nodes().iter().map(|n| n.status()).collect();
            let healthy = nodes.iter().filter(|n| n.healthy && !n.ejected).count();
            let mut body = serde_json::json!({
                "nodes": nodes,
                "available": healthy,
                "access_log": {"dropped": crate::access_log::dropped_lines()},
                "bans": {"active": bans.len()},
            });
            if let Some(c) = cluster {
                body["cluster"] = serde_json::json!({"redis": c.redis()});
            }
            let mut resp = Response::new(ProxyBody::full(body.to_string()));
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        _ => json_error(StatusCode::NOT_FOUND, "admin routes: GET /status"),
    }
}
