//! The admin listener (`[admin] listen`): `GET /` is the status page (one HTML file that refreshes
//! itself from `GET /status`); `GET /status` shows what the gateway knows of each node, the last
//! minute's rates, the clients refused most, bans, certificates and the config in force;
//! `GET /metrics` is for Prometheus; `/bans` manages bans (see `bans`); `POST /reload` reads the
//! config file again and applies it, as SIGHUP does, and answers what it applied, what takes a
//! restart, or why the file was refused (its file, line and column).
//!
//! On a loopback address the admin API is open to whoever can reach it (the host's own users).
//! On any other address every route needs an `admin` credential: an API key or JWT with the
//! `admin` role, in `Authorization: Bearer`, `X-API-Key`, or as the password of HTTP Basic (so a
//! browser asks for it and the status page's own requests carry it). Without one: 401 with a
//! Basic challenge; with a weaker one: 403. Changes (bans, reload) from a peer that is not
//! loopback need the credential in any case.

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
pub mod scrape;
pub mod status;

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
    pub refusals: crate::events::Refusals,
}

/// Binds the admin listener and serves it until the gateway stops; returns the bound address.
pub async fn start(addr: SocketAddr, parts: Parts, mut phase: watch::Receiver<Phase>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr} (admin): {e}")))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "admin listening");
    let (rates, top) = (Arc::<status::Rates>::default(), Arc::<status::TopRefused>::default());
    status::spawn(parts.metrics.clone(), rates.clone(), top.clone(), parts.refusals.subscribe(), phase.clone());
    let admin = Arc::new(Admin { open: local.ip().to_canonical().is_loopback(), parts, rates, top });
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
    /// Bound to loopback: no credential needed.
    open: bool,
    rates: Arc<status::Rates>,
    top: Arc<status::TopRefused>,
}

/// What `POST /reload` calls: reads the config file again and applies it (the gateway's
/// reloader; a trait so that this module does not reach back into the one that starts it).
pub trait Reload: Send + Sync + 'static {
    /// What was applied and what takes a restart, as JSON; or why the file was refused.
    fn reload_file(&self) -> Result<serde_json::Value, String>;
    /// The config in force (its keys judge admin credentials).
    fn config(&self) -> Arc<crate::config::Config>;
}

/// The largest request body the admin API reads.
const MAX_BODY: usize = 1 << 20;

impl Admin {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        let loopback = peer.ip().to_canonical().is_loopback();
        // Judged only where it decides something: a loopback peer on a loopback listener may do
        // everything without one (no hashing or token check for it).
        let credential = if self.open && loopback {
            Credential::None
        } else {
            admin_credential(&self.parts.reloader.config(), &parts.headers)
        };
        if !self.open && credential != Credential::Admin {
            let mut resp = match credential {
                Credential::Weaker => {
                    json_error(StatusCode::FORBIDDEN, "the admin API needs a credential with the admin role")
                }
                _ => json_error(StatusCode::UNAUTHORIZED, "the admin API needs an admin credential off loopback"),
            };
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"nodegate admin\", charset=\"UTF-8\""),
            );
            return resp;
        }
        let trusted = loopback || credential == Credential::Admin;
        let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return json_error(StatusCode::PAYLOAD_TOO_LARGE, "the admin API reads bodies up to 1 MiB"),
        };
        let path = parts.uri.path();
        let Parts { balancer, cluster, bans, reloader, metrics, tls, .. } = &self.parts;
        if let Some(resp) = bans.handle(&parts.method, path, trusted, &body).await {
            return resp;
        }
        match (&parts.method, path) {
            (&Method::GET, "/") => page(),
            (&Method::GET, "/status") => bans::json(StatusCode::OK, &self.status()),
            (&Method::GET, "/metrics") => {
                let scrape = scrape::Scrape {
                    metrics: metrics.clone(),
                    balancer: balancer.clone(),
                    bans: bans.clone(),
                    cluster: cluster.clone(),
                    tls: tls.clone(),
                };
                match scrape::render(scrape) {
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
                if !trusted {
                    return json_error(
                        StatusCode::FORBIDDEN,
                        "reloads are accepted from loopback or with an admin credential",
                    );
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
                "admin routes: GET / (status page), GET /status, GET /metrics, POST /reload, GET|POST /bans, GET|DELETE /bans/ADDR",
            ),
        }
    }

    /// `GET /status`: what the status page shows.
    fn status(&self) -> serde_json::Value {
        let Parts { balancer, cluster, bans, reloader, metrics, tls, .. } = &self.parts;
        let nodes: Vec<_> = balancer.nodes().iter().map(|n| n.status()).collect();
        let healthy = nodes.iter().filter(|n| n.healthy && !n.ejected).count();
        let (requests, refusals) = self.rates.per_second(metrics);
        let now = std::time::SystemTime::now();
        let certificates: Vec<_> = tls
            .iter()
            .flat_map(|t| t.resolver.expiries())
            .map(|(name, at)| {
                let expires = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let left = at.duration_since(now).map_or(0, |d| d.as_secs());
                serde_json::json!({"name": name, "expires": expires, "seconds_left": left})
            })
            .collect();
        let mut bans_json = bans.status();
        bans_json["list"] = bans.listed(50);
        let config = reloader.config();
        let mut body = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "nodes": nodes,
            "available": healthy,
            "rates": {"requests_per_second": requests, "refusals_per_second": refusals},
            "refusals": metrics.refusals().iter().map(|(r, n)| serde_json::json!({"reason": r, "count": n})).collect::<Vec<_>>(),
            "top_refused": self.top.top(10),
            "access_log": {"dropped": crate::access_log::dropped_lines()},
            "bans": bans_json,
            "certificates": certificates,
            "config": {
                "source": config.source.as_ref().map(|p| p.display().to_string()),
                "loaded": metrics.config_loaded.load(std::sync::atomic::Ordering::Relaxed),
            },
        });
        if let Some(c) = cluster {
            body["cluster"] = serde_json::json!({"redis": c.redis()});
        }
        body
    }
}

/// The status page, with headers that keep it to itself: its own script and style only, no
/// framing, no caching, no sniffing.
fn page() -> Response<ProxyBody> {
    use http::header::{
        CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
    };
    let mut resp = Response::new(ProxyBody::full(status::PAGE));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, http::HeaderValue::from_static("text/html; charset=utf-8"));
    if let Ok(csp) = http::HeaderValue::from_str(&status::CSP) {
        h.insert(CONTENT_SECURITY_POLICY, csp);
    }
    h.insert(CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    h.insert(X_CONTENT_TYPE_OPTIONS, http::HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, http::HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, http::HeaderValue::from_static("no-referrer"));
    resp
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    None,
    /// Valid, without the `admin` role.
    Weaker,
    Admin,
}

/// The request's credential judged against the config's API keys and JWT issuers for the
/// `admin` role; HTTP Basic's password counts as an API key or token.
fn admin_credential(config: &crate::config::Config, headers: &http::HeaderMap) -> Credential {
    use crate::pipeline::auth::{self, Verdict};
    use crate::pipeline::route_policy::Access;
    let basic = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, b64)| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| pair.split_once(':').map(|(_, password)| password.to_owned()))
        .and_then(|password| http::HeaderValue::from_str(&password).ok());
    let mut from_basic = http::HeaderMap::new();
    let headers = match basic {
        Some(password) => {
            from_basic.insert(auth::API_KEY_HEADER, password);
            &from_basic
        }
        None => headers,
    };
    match auth::authorize(&config.api_keys, &config.jwts, headers, Access::Admin) {
        Verdict::Allowed { .. } => Credential::Admin,
        Verdict::Forbidden { .. } => Credential::Weaker,
        Verdict::Unauthenticated => Credential::None,
    }
}
