//! The request flow, one phase after another (shared/design.md):
//!
//! ```text
//! handle:  identify -> filter -> route -> authorize -> limit -> prepare -> forward -> respond
//!                      \________ admit (no waiting) ________/   \____ forward ____/
//!          who it is   address,   canonical  credential  rates,     body, PoW,  node,      refusal
//!                      size,      path and   and roles   in-flight  headers     exchange,  accounting,
//!                      method,    its rule                                      retry      log, headers
//!                      Host
//! ```
//!
//! Each phase takes the request's [`Ctx`] and either returns what the next one needs or a
//! [`GatewayError`], which `respond` turns into the node API's error shape. The phases are small
//! functions here; rate limits are in `limits`, the exchange with the nodes in `exchange`.

mod exchange;
mod limits;
mod rpc;

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Version};
use hyper::body::{Body as _, Incoming};

pub use limits::Limiters;

use crate::access_log::{AccessRecord, RequestGuard};
use crate::balancer::{Balancer, Passive};
use crate::body::ProxyBody;
use crate::config::Config;
use crate::conn::{ConnState, Scheme};
use crate::error::GatewayError;
use crate::events::Refusals;
use crate::http::headers::{self as hdr, X_REQUEST_ID};
use crate::http::request_body::{CappedBody, Pace};
use crate::pipeline::auth::{self, Verdict};
use crate::pipeline::canonical_path::{canonicalize, refuse_double_encoding};
use crate::pipeline::identity;
use crate::pipeline::in_flight::{InFlightCap, InFlightSlot};
use crate::pipeline::rate_limit::{ClientKey, Limit, LimitPolicy};
use crate::pipeline::route_policy::{Access, Rule};
use crate::profile;

/// The running proxy: the [`Pipeline`] built from the config in force, swapped whole by a reload.
/// A request takes the pipeline in force when it starts and keeps it to its end; the next request,
/// on any connection (those open before the reload too), gets the new one. A key revoked by a
/// reload is refused from the next request on.
pub struct Proxy {
    current: arc_swap::ArcSwap<Pipeline>,
}

impl Proxy {
    /// Serves with `pipeline` until a reload renews it.
    pub fn new(pipeline: Pipeline) -> Proxy {
        Proxy { current: arc_swap::ArcSwap::from_pointee(pipeline) }
    }

    /// Serves one request with the pipeline in force. Never fails: every problem becomes a JSON
    /// answer. (No future of its own around the pipeline's: that would copy it once more.)
    #[inline(always)]
    pub fn handle(
        &self,
        req: Request<Incoming>,
        conn: Arc<ConnState>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
        self.current.load_full().handle(req, conn)
    }

    /// Puts `config`'s pipeline in force, keeping what carries over (see `Pipeline::renewed`).
    pub fn reload(&self, config: Arc<Config>) {
        let renewed = self.current.load().renewed(config);
        self.current.store(Arc::new(renewed));
    }

    /// Every rate limiter in force, for the cluster sync.
    pub fn limiters(&self) -> Vec<Arc<crate::pipeline::rate_limit::RateLimiter>> {
        self.current.load().limits.all()
    }

    /// Every refusal, as it happens (see `events`); the same channel across reloads.
    pub fn refusals(&self) -> Refusals {
        self.current.load().refusals.clone()
    }

    /// The gateway's counts (`/metrics`).
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.current.load().metrics.clone()
    }

    /// Whether `ip` is a trusted proxy (PROXY protocol headers are read from these only).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.current.load().config.gateway.trusted_proxies.contains(ip)
    }

    pub fn timeouts(&self) -> crate::conn::Timeouts {
        let current = self.current.load();
        let g = &current.config.gateway;
        crate::conn::Timeouts { header: g.header_timeout, idle: g.idle_timeout, send: g.send_timeout }
    }
}

/// Every phase of a request, for one config.
pub struct Pipeline {
    config: Arc<Config>,
    balancer: Arc<Balancer>,
    passive: Passive,
    limits: Limiters,
    in_flight: Option<Arc<InFlightCap>>,
    /// `RateLimit-Policy` for `per_client`, made once.
    client_policy: Option<HeaderValue>,
    refusals: Refusals,
    bans: Arc<crate::bans::list::BanList>,
    /// JSON-RPC routes' method policy and the limiters it spends.
    judge: rpc::Judge,
    /// gRPC server streams per client.
    streams: Arc<InFlightCap>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// What one request carries from phase to phase.
struct Ctx<'a> {
    conn: &'a ConnState,
    /// The client as identified: the peer, or whom a trusted proxy named.
    client: IpAddr,
    request_id: HeaderValue,
    /// The request's one Host header, for the forwarding headers.
    host: Option<HeaderValue>,
    /// The route rule that decided, when one did.
    rule: Option<&'a Rule>,
    /// Whose budget the request spends, and that credential's own limit: set by `authorize`.
    client_key: Option<(ClientKey, Option<Limit>)>,
    /// The tightest limit that applied, for the `RateLimit` headers.
    rate_state: Option<(LimitPolicy, Limit, u32)>,
    /// The client's place under `max_in_flight_per_client`, freed with the response.
    slot: Option<InFlightSlot>,
    /// The node that answered or failed, for the access log and the metrics.
    node: Option<Arc<crate::balancer::Node>>,
    /// When the request began, for the latency metrics.
    start: std::time::Instant,
    /// A JSON-RPC route's request, judged once its body is read (or message by message, a
    /// WebSocket).
    jsonrpc: bool,
    /// What a JSON-RPC request needs beyond its body, made only when it does (a refused call's
    /// id, a WebSocket's credentials).
    rpc: Option<Box<rpc::RpcCtx>>,
    /// A gRPC call: refused in gRPC's form, sent to the node over HTTP/2.
    grpc: bool,
    /// A gRPC server stream's place under `max_streams_per_client`.
    stream_slot: Option<InFlightSlot>,
}

/// A request ready for a node: the cleaned request, the client's target (each node puts its base
/// path in front), and the client's side of a WebSocket upgrade.
struct Prepared {
    request: Request<CappedBody>,
    target: http::Uri,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    need_pow: bool,
    /// The body is read whole before a node is chosen (see `read_first`).
    read_first: bool,
    /// A message submission: its body says whether it asks for remote PoW.
    submission: bool,
    /// The Host (or authority) the client sent, for the forwarding headers.
    client_host: Option<HeaderValue>,
    /// Who a trusted proxy named as the client; `None`: the peer (the connection's own).
    forwarding: Option<hdr::Forwarding>,
}

impl Pipeline {
    pub fn new(
        config: Arc<Config>,
        balancer: Arc<Balancer>,
        bans: Arc<crate::bans::list::BanList>,
        heads: Arc<crate::health::Checkpoints>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Pipeline {
        let passive = Passive { eject_after: config.health.eject_after, eject_for: config.health.eject_for };
        let limits = Limiters::new(&config);
        let max = config.gateway.max_in_flight_per_client;
        let in_flight = (max > 0).then(|| InFlightCap::new(max));
        let client_policy = config.rate_limit.map(|r| crate::error::policy_header(LimitPolicy::PerClient, r.limit));
        let judge = rpc::Judge::new(config.clone(), &limits, heads);
        let streams = InFlightCap::new(config.gateway.max_streams_per_client);
        Pipeline {
            config,
            balancer,
            passive,
            limits,
            in_flight,
            client_policy,
            refusals: Refusals::default(),
            bans,
            judge,
            streams,
            metrics,
        }
    }

    /// The pipeline for a reloaded `config`: what is shared across reloads is kept (the nodes,
    /// bans, the refusal channel, the checkpoints seen, live WebSocket subscriptions and gRPC
    /// streams), rate limiters whose limit did not change keep every client's state, and caps whose
    /// size did not change keep their places.
    fn renewed(&self, config: Arc<Config>) -> Pipeline {
        let limits = self.limits.renewed(&self.config, &config);
        let max = config.gateway.max_in_flight_per_client;
        let in_flight = match &self.in_flight {
            Some(cap) if cap.max() == max => Some(cap.clone()),
            _ => (max > 0).then(|| InFlightCap::new(max)),
        };
        let streams = match config.gateway.max_streams_per_client {
            same if same == self.streams.max() => self.streams.clone(),
            other => InFlightCap::new(other),
        };
        Pipeline {
            passive: Passive { eject_after: config.health.eject_after, eject_for: config.health.eject_for },
            client_policy: config.rate_limit.map(|r| crate::error::policy_header(LimitPolicy::PerClient, r.limit)),
            judge: self.judge.renewed(config.clone(), &limits),
            balancer: self.balancer.clone(),
            refusals: self.refusals.clone(),
            bans: self.bans.clone(),
            metrics: self.metrics.clone(),
            limits,
            in_flight,
            streams,
            config,
        }
    }

    /// Serves one request. Never fails: every problem becomes a JSON answer.
    async fn handle(self: Arc<Self>, req: Request<Incoming>, conn: Arc<ConnState>) -> Response<ProxyBody> {
        let guard = RequestGuard::new(conn.clone());
        let identified = self.identify(&req, &conn);
        let client = *identified.as_ref().unwrap_or_else(|(_, peer)| peer);
        let mut ctx = Ctx {
            conn: &conn,
            client,
            request_id: hdr::request_id(req.headers()),
            host: None,
            rule: None,
            client_key: None,
            rate_state: None,
            slot: None,
            node: None,
            start: std::time::Instant::now(),
            jsonrpc: false,
            rpc: None,
            grpc: false,
            stream_slot: None,
        };
        let record = self.config.log.access.then(|| self.access_record(&req, &ctx));
        // Kept for the refusal event (a reference count, not a copy) and the metrics.
        let uri = req.uri().clone();
        let method = crate::metrics::method_index(req.method());
        // The request moves once, into `forward`: a future of its own around the phases would
        // copy it once more (bench/callgrind).
        let result = match identified.map_err(|(err, _)| err).and_then(|_| self.admit(&req, &mut ctx)) {
            Ok(target) => self.forward(req, target, &mut ctx).await,
            Err(err) => Err(err),
        };
        self.respond(result, ctx, (uri.path(), method), guard, record)
    }

    /// The phases that decide without waiting, in order; returns the target the nodes are sent.
    fn admit<'a>(&'a self, req: &Request<Incoming>, ctx: &mut Ctx<'a>) -> Result<PathAndQuery, GatewayError> {
        let target = self.filter(req, ctx)?;
        let target = self.route(req, target, ctx)?;
        self.authorize(req, ctx)?;
        if ctx.grpc {
            // The method is the path: judged now, its cost in place of the route's.
            self.judge_grpc(req, target.path(), ctx)?;
        }
        self.limit(ctx)?;
        Ok(target)
    }

    /// Who the client is (`pipeline::identity`). A broken forwarding chain is refused, and logged
    /// as the proxy's (the peer, the error's second half).
    fn identify(&self, req: &Request<Incoming>, conn: &ConnState) -> Result<IpAddr, (GatewayError, IpAddr)> {
        let g = &self.config.gateway;
        let peer = conn.peer.ip().to_canonical();
        if g.trusted_proxies.is_empty() || conn.proxy_protocol {
            return Ok(peer);
        }
        identity::client_ip(conn.peer.ip(), req.headers(), &g.trusted_proxies, g.client_ip_header)
            .map_err(|identity::BrokenChain| (GatewayError::BrokenForwardingChain, peer))
    }

    /// Address, head size, method and Host; returns the request's target.
    fn filter(&self, req: &Request<Incoming>, ctx: &mut Ctx<'_>) -> Result<PathAndQuery, GatewayError> {
        let g = &self.config.gateway;
        // A banned peer's new connections are closed at accept; its requests on a connection
        // made before the ban (HTTP/2, keep-alive) and a banned client behind a trusted proxy
        // are refused here, before anything else. One atomic load while nothing is banned.
        if self.bans.is_banned(ctx.client) {
            return Err(GatewayError::Banned);
        }
        if !self.config.access.permits(ctx.client) {
            return Err(GatewayError::AddressDenied);
        }
        if head_size(req) > g.max_header_size {
            return Err(GatewayError::HeadersTooLarge { limit: g.max_header_size });
        }
        check_method(req.method())?;
        // RFC 9112 section 3.2: an HTTP/1.1 request carries exactly one Host; none or several is 400.
        let mut hosts = req.headers().get_all(header::HOST).iter();
        ctx.host = hosts.next().cloned();
        if hosts.next().is_some() || (ctx.host.is_none() && req.version() == Version::HTTP_11) {
            return Err(GatewayError::BadRequest("an HTTP/1.1 request needs exactly one Host header"));
        }
        req.uri()
            .path_and_query()
            .filter(|p| p.as_str().starts_with('/'))
            .cloned()
            .ok_or(GatewayError::BadRequest("the request target must be a path"))
    }

    /// Route policy on the canonical path; returns the target the nodes are sent: that same
    /// canonical path, with the query.
    fn route<'a>(
        &'a self,
        req: &Request<Incoming>,
        target: PathAndQuery,
        ctx: &mut Ctx<'a>,
    ) -> Result<PathAndQuery, GatewayError> {
        let canonical = canonicalize(target.path()).map_err(GatewayError::BadPath)?;
        if !self.config.gateway.allow_encoded_percent {
            refuse_double_encoding(&canonical).map_err(GatewayError::BadPath)?;
        }
        ctx.rule = self.config.routes.decide(req.method(), &canonical.decoded);
        ctx.jsonrpc = ctx.rule.is_some_and(|r| r.jsonrpc);
        ctx.grpc = ctx.rule.is_some_and(|r| r.grpc);
        if ctx.rule.is_some_and(|r| !r.admits(ctx.client)) {
            return Err(GatewayError::AddressDenied);
        }
        // An already canonical path keeps the target as it came, query and all.
        let invalid = |_| GatewayError::BadRequest("the request target is not valid");
        match target.query() {
            _ if canonical.encoded == target.path() => Ok(target),
            None => PathAndQuery::try_from(canonical.encoded.as_ref()).map_err(invalid),
            Some(q) => PathAndQuery::try_from(format!("{}?{q}", canonical.encoded)).map_err(invalid),
        }
    }

    /// The route's access level against the request's credential (API key, JWT, client
    /// certificate); sets whose budget the request spends.
    fn authorize(&self, req: &Request<Incoming>, ctx: &mut Ctx<'_>) -> Result<(), GatewayError> {
        // A verified client certificate (`[tls.client_auth]`) is a credential too, with its roles.
        let cert = ctx.conn.client_cert();
        match ctx.rule.map_or(Access::Deny, |r| r.access) {
            Access::Public => {}
            needed @ (Access::Key | Access::Admin) => {
                self.address_exhausted(ctx.client)?;
                match auth::authorize(&self.config.api_keys, &self.config.jwts, req.headers(), needed) {
                    Verdict::Allowed { key, api_key } => ctx.client_key = Some((key, api_key.and_then(|k| k.limit))),
                    Verdict::Unauthenticated => match cert {
                        Some(_) if auth::opens(self.cert_roles(), needed) => {}
                        Some(_) => return Err(GatewayError::CredentialNotEnough),
                        None => return Err(GatewayError::CredentialMissing),
                    },
                    Verdict::Forbidden { .. } => return Err(GatewayError::CredentialNotEnough),
                }
            }
            Access::Deny => return Err(GatewayError::NotExposed),
        }
        if ctx.client_key.is_none() {
            // Limits are per credential when the client authenticated, else per address (or /64).
            ctx.client_key = Some(match cert {
                Some(id) => (ClientKey::Cert(id.name.clone()), None),
                None => (ClientKey::from_ip(ctx.client, self.config.rate_limit.map_or(64, |r| r.ipv6_prefix)), None),
            });
        }
        Ok(())
    }

    /// The body and the headers the node is sent. A small body, or one that decides about remote
    /// PoW, is marked to be read whole before a node is chosen (`read_first`).
    fn prepare(
        &self,
        mut req: Request<Incoming>,
        target: PathAndQuery,
        ctx: &mut Ctx<'_>,
    ) -> Result<Prepared, GatewayError> {
        let g = &self.config.gateway;
        let declared_len = content_length(req.headers())?;
        if let Some(len) = declared_len
            && len > g.max_body
        {
            return Err(GatewayError::BodyTooLarge { limit: g.max_body });
        }
        let websocket = req.version() <= Version::HTTP_11 && hdr::wants_websocket(req.headers());
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let original_host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .and_then(|a| HeaderValue::from_str(&a).ok())
            .or(ctx.host.take());

        let (parts, body) = req.into_parts();
        let pace = (!body.is_end_stream()).then(|| Pace::new(g.body_timeout, g.min_body_rate));
        let body = CappedBody::new(body, g.max_body, pace);
        let submission = profile::is_submission(g.profile, &parts.method, target.path());
        // Small bodies are read whole first, so a slow upload holds no node connection.
        let small = declared_len.is_some_and(|n| n <= g.request_buffer);
        // A JSON-RPC call is judged on its body before any node sees it.
        let read_first = submission || (ctx.jsonrpc && !websocket) || (small && !body.is_end_stream());

        let mut up = Request::new(body);
        *up.method_mut() = parts.method;
        // gRPC needs HTTP/2 to the node (streams, trailers); everything else goes over HTTP/1.1.
        *up.version_mut() = if ctx.grpc { Version::HTTP_2 } else { Version::HTTP_11 };
        let headers = up.headers_mut();
        *headers = parts.headers;
        hdr::strip_hop_by_hop(headers);
        headers.remove(header::EXPECT);
        if ctx.grpc {
            // gRPC's one hop-by-hop header: the node must know the client takes trailers.
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if ctx.jsonrpc && websocket {
            // Its relay judges every message with them, after the node no longer sees them.
            ctx.rpc.get_or_insert_with(Box::default).credentials = auth::credentials(headers);
        }
        // The credential was for the gateway; the node sees it only where a route says so. A
        // JSON-RPC call's is stripped once its body has been judged with it (`read_first`).
        let judged_later = ctx.jsonrpc && !websocket;
        if !ctx.rule.is_some_and(|r| r.pass_credential) && !judged_later {
            auth::strip(headers);
        }
        if websocket {
            hdr::set_websocket_upgrade(headers);
        }
        // The connection's precomputed values, unless a trusted proxy named another client. The
        // forwarding headers are written when the request is sent (`hdr::Stamp`).
        let forwarding = (ctx.client != ctx.conn.peer.ip().to_canonical())
            .then(|| hdr::Forwarding::new(ctx.client, ctx.conn.scheme.as_str()));
        let target = http::Uri::from(target);
        Ok(Prepared {
            request: up,
            target,
            client_upgrade,
            need_pow: false,
            read_first,
            submission,
            client_host: original_host,
            forwarding,
        })
    }

    /// Reads the body whole (capped by `max_body`, paced by the slow-body guards), so that it can be
    /// resent and, for a submission, so that it says whether it asks for remote PoW (which then
    /// spends the client's PoW budget).
    async fn read_first(&self, p: &mut Prepared, ctx: &mut Ctx<'_>) -> Result<(), GatewayError> {
        let body = std::mem::replace(p.request.body_mut(), CappedBody::buffered(bytes::Bytes::new()));
        let data = body.read_all().await.map_err(|e| crate::upstream::classify_body(&*e))?;
        if ctx.jsonrpc && p.client_upgrade.is_none() {
            self.judge_rpc(&data, p.request.headers(), ctx)?;
            if !ctx.rule.is_some_and(|r| r.pass_credential) {
                auth::strip(p.request.headers_mut());
            }
        }
        if p.submission {
            let content_type = p.request.headers().get(header::CONTENT_TYPE).map(|v| v.as_bytes());
            p.need_pow = profile::needs_pow(content_type, &data);
            if p.need_pow {
                self.pow_budget(ctx)?;
            } else if profile::is_binary(content_type) {
                self.pow_score(&data)?;
            }
        }
        *p.request.body_mut() = CappedBody::buffered(data);
        Ok(())
    }

    /// A binary submission that carries its own PoW scores at least what the most lenient node
    /// requires (TIP-12), or is refused here: its verification never costs a node. Nodes that have
    /// not said their minimum yet are no reason to refuse.
    fn pow_score(&self, message: &[u8]) -> Result<(), GatewayError> {
        let nodes = self.balancer.nodes();
        let Some(min) = nodes.iter().filter_map(|n| n.min_pow_score()).min_by(f64::total_cmp) else { return Ok(()) };
        let score = profile::pow_score::score(message).unwrap_or(0.0);
        if score < min {
            return Err(GatewayError::PowScoreTooLow { score, min });
        }
        Ok(())
    }

    /// The answer as the client gets it: a refusal costs the client and is an event, HSTS on
    /// HTTPS, the request id, and the access log line and in-flight slot closed with the body.
    #[inline(always)]
    fn respond(
        &self,
        result: Result<Response<ProxyBody>, GatewayError>,
        ctx: Ctx<'_>,
        (path, method): (&str, usize),
        mut guard: RequestGuard,
        mut record: Option<Box<AccessRecord>>,
    ) -> Response<ProxyBody> {
        let mut resp = match result {
            Ok(resp) => resp,
            Err(err) => {
                let err = match err.refusal_reason() {
                    Some(reason) => {
                        self.metrics.refused(reason);
                        self.refused(err, reason, ctx.client, path)
                    }
                    None => err,
                };
                if let Some(limit) = err.limit_name() {
                    self.metrics.limited(limit);
                }
                if ctx.jsonrpc {
                    crate::body::answer_rpc(&err, ctx.rpc.as_ref().and_then(|r| r.id.as_deref()))
                } else if ctx.grpc {
                    crate::body::answer_grpc(&err)
                } else {
                    crate::body::answer(&err)
                }
            }
        };
        if ctx.conn.scheme == Scheme::Https
            && let Some(hsts) = self.config.tls.as_ref().and_then(|t| t.hsts.clone())
        {
            resp.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, hsts);
        }
        // Unique per response: HTTP/2's HPACK would only churn its table indexing it.
        let mut request_id = ctx.request_id;
        request_id.set_sensitive(true);
        resp.headers_mut().insert(&X_REQUEST_ID, request_id);
        if let Some(r) = &mut record {
            r.status = resp.status().as_u16();
            r.node = ctx.node.as_ref().map(|n| n.name.clone());
        }
        // Counted as the client gets it (hyper sends the head next): by class, method, status and node.
        let class = crate::metrics::class_index(ctx.rule.map(|r| r.access));
        let counts = ctx.node.as_ref().map_or(&self.metrics.unanswered, |n| &n.counts);
        counts.count(class, method, resp.status().as_u16());
        self.metrics.latency[class].observe(ctx.start.elapsed());
        guard.record = record;
        guard.slot = ctx.slot;
        guard.stream_slot = ctx.stream_slot;
        resp.map(|b| b.with_guard(guard))
    }

    fn access_record(&self, req: &Request<Incoming>, ctx: &Ctx<'_>) -> Box<AccessRecord> {
        Box::new(AccessRecord {
            format: self.config.log.format,
            client: ctx.client,
            method: req.method().clone(),
            path: req.uri().path().chars().take(512).collect(),
            status: 0,
            node: None,
            request_id: String::from_utf8_lossy(ctx.request_id.as_bytes()).into_owned(),
            start: tokio::time::Instant::now(),
        })
    }

    fn cert_roles(&self) -> &[auth::Role] {
        cert_roles(&self.config)
    }
}

/// The roles a verified client certificate carries (`[tls.client_auth] roles`).
fn cert_roles(config: &Config) -> &[auth::Role] {
    config.tls.as_ref().and_then(|t| t.client_auth.as_ref()).map_or(&[], |c| &c.roles)
}

/// Only the methods a node's API uses pass, spelled as registered (methods are case-sensitive: a
/// `post` would slip past a rule for `POST` and still be read as one by a lenient node). CONNECT
/// and TRACE never pass a gateway.
fn check_method(method: &Method) -> Result<(), GatewayError> {
    match *method {
        Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::DELETE | Method::OPTIONS | Method::PATCH => {
            Ok(())
        }
        _ if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) => {
            Err(GatewayError::BadRequest("methods are case-sensitive: write them in capitals (GET, POST)"))
        }
        _ => Err(GatewayError::MethodNotAllowed),
    }
}

/// Bytes of the request head as sent: request line plus `name: value\r\n` for each header.
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len()) + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + target + 20;
    req.headers().iter().fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

fn content_length(headers: &http::HeaderMap) -> Result<Option<u64>, GatewayError> {
    let Some(v) = headers.get(header::CONTENT_LENGTH) else { return Ok(None) };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or(GatewayError::BadRequest("invalid Content-Length"))
}
