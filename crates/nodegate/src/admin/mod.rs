//! The admin listener (`[admin] listen`; configure it on loopback): `GET /status` shows what the
//! gateway knows of each node, whether Redis answers when limits are shared (`[cluster]`), the
//! access log lines dropped and the bans in force; `/bans` manages bans (see `bans`);
//! `POST /reload` reads the config file again and applies it, as SIGHUP does, and answers what
//! it applied, what takes a restart, or why the file was refused (its file, line and column).

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

/// What the admin API reads and drives.
pub struct Parts {
    pub balancer: Arc<Balancer>,
    pub cluster: Option<Arc<crate::cluster::ClusterState>>,
    pub bans: BanAdmin,
    pub reloader: Arc<dyn Reload>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub tls: Option<Arc<crate::tls::TlsServer>>,
}

/// Binds the admin listener and serves it until the gateway stops; returns the bound address.
pub async fn start(addr: SocketAddr, parts: Parts, mut phase: watch::Receiver<Phase>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr} (admin): {e}")))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "admin listening");
    let admin = Arc::new(Admin { parts });
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
    parts: Parts,
}

/// What `POST /reload` calls: reads the config file again and applies it (the gateway's
/// reloader; a trait so that this module does not reach back into the one that starts it).
pub trait Reload: Send + Sync + 'static {
    /// What was applied and what takes a restart, as JSON; or why the file was refused.
    fn reload_file(&self) -> Result<serde_json::Value, String>;
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
        let Parts { balancer, cluster, bans, reloader, metrics, tls } = &self.parts;
        if let Some(resp) = bans.handle(&parts.method, path, peer, &body).await {
            return resp;
        }
        match (&parts.method, path) {
            (&Method::GET, "/status") => {
                let nodes: Vec<_> = balancer.nodes().iter().map(|n| n.status()).collect();
                let healthy = nodes.iter().filter(|n| n.healthy && !n.ejected).count();
                let mut body = serde_json::json!({
                    "nodes": nodes,
                    "available": healthy,
                    "access_log": {"dropped": crate::access_log::dropped_lines()},
                    "bans": bans.status(),
                });
                if let Some(c) = cluster {
                    body["cluster"] = serde_json::json!({"redis": c.redis()});
                }
                bans::json(StatusCode::OK, &body)
            }
            (&Method::GET, "/metrics") => {
                let scrape = crate::metrics::Scrape {
                    metrics: metrics.clone(),
                    balancer: balancer.clone(),
                    bans: bans.clone(),
                    cluster: cluster.clone(),
                    tls: tls.clone(),
                };
                match crate::metrics::render(scrape) {
                    Ok(text) => {
                        let mut resp = Response::new(ProxyBody::full(text));
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                        );
                        resp
                    }
                    Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "the metrics could not be written"),
                }
            }
            (&Method::POST, "/reload") => {
                if !peer.ip().to_canonical().is_loopback() {
                    return json_error(StatusCode::FORBIDDEN, "reloads are accepted from loopback only");
                }
                let reloader = reloader.clone();
                // File reads off the workers; one reload at a time (the reloader's lock).
                match tokio::task::spawn_blocking(move || reloader.reload_file()).await {
                    Ok(Ok(done)) => bans::json(StatusCode::OK, &done),
                    Ok(Err(why)) => {
                        json_error(StatusCode::BAD_REQUEST, &format!("reload refused, the running config stays: {why}"))
                    }
                    Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "the reload task failed"),
                }
            }
            _ => json_error(
                StatusCode::NOT_FOUND,
                "admin routes: GET /status, GET /metrics, POST /reload, GET|POST /bans, GET|DELETE /bans/ADDR",
            ),
        }
    }
}
