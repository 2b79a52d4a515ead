//! The request flow, read top to bottom (shared/design.md): address filter, size guards, route
//! policy on the canonical path, authorization, rate limit, then pick a node, clean and forward
//! the request, clean and return the response, telling the balancer how the node did.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Incoming};

use crate::access_log::{AccessRecord, RequestGuard};
use crate::balancer::{Balancer, InFlight, Node, Passive};
use crate::body::{ProxyBody, Stall};
use crate::config::Config;
use crate::conn::{ConnState, Scheme};
use crate::error::GatewayError;
use crate::events::{RefusalReason, Refusals};
use crate::http::headers::{self as hdr, X_REQUEST_ID};
use crate::http::request_body::{CappedBody, Pace};
use crate::pipeline::auth::{self, Verdict};
use crate::pipeline::canonical_path::{canonicalize, refuse_double_encoding};
use crate::pipeline::identity;
use crate::pipeline::in_flight::{InFlightCap, Slot};
use crate::pipeline::rate_limit::{ClientKey, Decision as RateDecision, Limit, RateLimiter};
use crate::pipeline::route_policy::Access;
use crate::profile;
use crate::upstream::{self, Lease};

pub struct Proxy {
    config: Arc<Config>,
    balancer: Arc<Balancer>,
    passive: Passive,
    limits: Limiters,
    in_flight: Option<Arc<InFlightCap>>,
    /// `RateLimit-Policy` for `per_client`, made once.
    client_policy: Option<HeaderValue>,
    refusals: Refusals,
}

/// Every rate limiter the config asks for, one table each.
#[derive(Default)]
pub struct Limiters {
    /// `[rate_limit] per_client` (and API keys' own limits).
    pub client: Option<Arc<RateLimiter>>,
    /// `[rate_limit] pow`.
    pub pow: Option<Arc<RateLimiter>>,
    /// `[[route]] rate`, by the rule's position.
    pub routes: Vec<Option<Arc<RateLimiter>>>,
    /// Refusals alone, by address, under `per_client`: a client that spent it is refused before
    /// its credential is checked, while a good key behind a busy address keeps its own budget.
    pub refusals: Option<Arc<RateLimiter>>,
}

impl Limiters {
    fn new(config: &Config) -> Limiters {
        let Some(rl) = config.rate_limit else { return Limiters::default() };
        let shared = config.cluster.is_some();
        let make = |name: String| {
            let l = RateLimiter::new(name, rl.max_clients);
            Arc::new(if shared { l.shared() } else { l })
        };
        Limiters {
            client: Some(make("client".into())),
            pow: rl.pow.map(|_| make("pow".into())),
            refusals: Some(make("refusals".into())),
            routes: config.routes.rules().iter().map(|r| r.limit.map(|_| make(format!("route{}", r.id)))).collect(),
        }
    }

    /// All of them, for the cluster sync.
    pub fn all(&self) -> Vec<Arc<RateLimiter>> {
        self.client.iter().chain(&self.pow).chain(&self.refusals).chain(self.routes.iter().flatten()).cloned().collect()
    }
}

impl Proxy {
    pub fn new(config: Arc<Config>, balancer: Arc<Balancer>) -> Proxy {
        let passive = Passive { eject_after: config.health.eject_after, eject_for: config.health.eject_for };
        let limits = Limiters::new(&config);
        let max = config.gateway.max_in_flight_per_client;
        let in_flight = (max > 0).then(|| InFlightCap::new(max));
        let client_policy = config.rate_limit.map(|r| crate::error::policy_header("per-client", r.limit));
        Proxy { config, balancer, passive, limits, in_flight, client_policy, refusals: Refusals::default() }
    }

    /// Every refusal, as it happens (see `events`).
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    pub fn limiters(&self) -> &Limiters {
        &self.limits
    }

    pub fn trusted_proxies(&self) -> &crate::pipeline::ip_set::IpSet {
        &self.config.gateway.trusted_proxies
    }

    pub fn timeouts(&self) -> crate::conn::Timeouts {
        let g = &self.config.gateway;
        crate::conn::Timeouts { header: g.header_timeout, idle: g.idle_timeout, send: g.send_timeout }
    }

    /// Serves one request. Never fails: every problem becomes a JSON answer.
    pub async fn handle(&self, req: Request<Incoming>, conn: Arc<ConnState>) -> Response<ProxyBody> {
        let mut guard = RequestGuard::new(conn.clone());
        let request_id = hdr::request_id(req.headers());
        let g = &self.config.gateway;
        let (client, broken_chain) = if g.trusted_proxies.is_empty() || conn.proxy_protocol {
            (conn.peer.ip().to_canonical(), false)
        } else {
            match identity::client_ip(conn.peer.ip(), req.headers(), &g.trusted_proxies, g.client_ip_header) {
                Ok(ip) => (ip, false),
                // Who sent it is unknown: refused, and logged as the proxy's.
                Err(identity::BrokenChain) => (conn.peer.ip().to_canonical(), true),
            }
        };
        let mut record = self.config.log.access.then(|| {
            Box::new(AccessRecord {
                format: self.config.log.format,
                client,
                method: req.method().clone(),
                path: req.uri().path().chars().take(512).collect(),
                status: 0,
                node: None,
                request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
                start: tokio::time::Instant::now(),
            })
        });
        let mut slot = None;
        // Kept for the refusal event (a reference count, not a copy).
        let uri = req.uri().clone();
        let forwarded = if broken_chain {
            Err((GatewayError::BrokenForwardingChain, None))
        } else {
            self.forward(req, &conn, client, request_id.clone(), &mut slot).await
        };
        let (mut resp, node) = match forwarded {
            Ok((resp, node)) => (resp, Some(node)),
            Err((err, node)) => {
                let err = match err.refusal_reason() {
                    Some(reason) => self.refused(err, reason, client, uri.path()),
                    None => err,
                };
                (crate::body::answer(&err), node)
            }
        };
        if conn.scheme == Scheme::Https
            && let Some(hsts) = self.config.tls.as_ref().and_then(|t| t.hsts.clone())
        {
            resp.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, hsts);
        }
        // Unique per response: HTTP/2's HPACK would only churn its table indexing it.
        let mut request_id = request_id;
        request_id.set_sensitive(true);
        resp.headers_mut().insert(&X_REQUEST_ID, request_id);
        if let Some(r) = &mut record {
            r.status = resp.status().as_u16();
            r.node = node;
        }
        guard.record = record;
        guard.slot = slot;
        resp.map(|b| b.with_guard(guard))
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnState,
        client: IpAddr,
        request_id: HeaderValue,
        slot: &mut Option<Slot>,
    ) -> Result<(Response<ProxyBody>, Arc<str>), (GatewayError, Option<Arc<str>>)> {
        let g = &self.config.gateway;
        if !self.config.access.permits(client) {
            return Err((GatewayError::AddressDenied, None));
        }
        if head_size(&req) > g.max_header_size {
            return Err((GatewayError::HeadersTooLarge { limit: g.max_header_size }, None));
        }
        check_method(req.method()).map_err(|e| (e, None))?;
        // RFC 9112 section 3.2: an HTTP/1.1 request carries exactly one Host; none or several is 400.
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let host = hosts.next().cloned();
        if hosts.next().is_some() || (host.is_none() && req.version() == Version::HTTP_11) {
            return Err((GatewayError::BadRequest("an HTTP/1.1 request needs exactly one Host header"), None));
        }
        let Some(target) = req.uri().path_and_query().filter(|p| p.as_str().starts_with('/')).cloned() else {
            return Err((GatewayError::BadRequest("the request target must be a path"), None));
        };
        // Route policy decides on the canonical path, and the node is sent that same path.
        let canonical = canonicalize(target.path()).map_err(|e| (GatewayError::BadPath(e), None))?;
        if !g.allow_encoded_percent {
            refuse_double_encoding(&canonical).map_err(|e| (GatewayError::BadPath(e), None))?;
        }
        let rule = self.config.routes.decide(req.method(), &canonical.decoded);
        if rule.is_some_and(|r| !r.admits(client)) {
            return Err((GatewayError::AddressDenied, None));
        }
        let mut principal: Option<(ClientKey, Option<Limit>)> = None;
        // A verified client certificate (`[tls.client_auth]`) is a credential too, with its roles.
        let cert = conn.client_cert.get();
        match rule.map_or(Access::Deny, |r| r.access) {
            Access::Public => {}
            needed @ (Access::Key | Access::Admin) => {
                self.address_exhausted(client).map_err(|e| (e, None))?;
                match auth::authorize(&self.config.api_keys, &self.config.jwts, req.headers(), needed) {
                    Verdict::Allowed { key, api_key } => principal = Some((key, api_key.and_then(|k| k.limit))),
                    Verdict::Unauthenticated => match cert {
                        Some(_) if auth::opens(self.cert_roles(), needed) => {}
                        Some(_) => return Err((GatewayError::CredentialNotEnough, None)),
                        None => return Err((GatewayError::CredentialMissing, None)),
                    },
                    Verdict::Forbidden { .. } => return Err((GatewayError::CredentialNotEnough, None)),
                }
            }
            Access::Deny => return Err((GatewayError::NotExposed, None)),
        }
        if principal.is_none()
            && let Some(id) = cert
        {
            principal = Some((ClientKey::Cert(id.name.clone()), None));
        }
        let pass_credential = rule.is_some_and(|r| r.pass_credential);
        // Limits are per credential when the client authenticated, else per address (or /64); an
        // API key may carry a limit of its own.
        let ipv6_prefix = self.config.rate_limit.map_or(64, |r| r.ipv6_prefix);
        let (client_key, own_limit) = principal.unwrap_or_else(|| (ClientKey::from_ip(client, ipv6_prefix), None));
        let rate_headers = self.check_rates(rule, &client_key, own_limit)?;
        if let Some(cap) = &self.in_flight {
            match cap.enter(client_key.clone()) {
                Some(s) => *slot = Some(s),
                None => return Err((GatewayError::TooManyInFlight { limit: cap.max() }, None)),
            }
        }
        // An already canonical path keeps the target as it came, query and all.
        let path_and_query = match target.query() {
            _ if canonical.encoded == target.path() => target,
            None => PathAndQuery::try_from(canonical.encoded.as_ref())
                .map_err(|_| (GatewayError::BadRequest("the request target is not valid"), None))?,
            Some(q) => PathAndQuery::try_from(format!("{}?{q}", canonical.encoded))
                .map_err(|_| (GatewayError::BadRequest("the request target is not valid"), None))?,
        };
        let declared_len = content_length(req.headers())?;
        if let Some(len) = declared_len
            && len > g.max_body
        {
            return Err((GatewayError::BodyTooLarge { limit: g.max_body }, None));
        }

        let websocket = req.version() <= Version::HTTP_11 && hdr::wants_websocket(req.headers());
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let original_host =
            req.uri().authority().map(|a| a.as_str().to_owned()).and_then(|a| HeaderValue::from_str(&a).ok()).or(host);

        let (parts, body) = req.into_parts();
        let pace = (!body.is_end_stream()).then(|| Pace::new(g.body_timeout, g.min_body_rate));
        let mut body = CappedBody::new(body, g.max_body, pace);
        // A submission's body decides whether it asks for remote PoW, so it is read before a node
        // is chosen (it is capped by max_body); read whole, it can also be resent.
        let mut need_pow = false;
        let submission = profile::is_submission(g.profile, &parts.method, path_and_query.path());
        // Small bodies are read whole first, so a slow upload holds no node connection.
        let small = declared_len.is_some_and(|n| n <= g.request_buffer);
        if !submission && small && !body.is_end_stream() {
            let data = Box::pin(body.read_all()).await.map_err(|e| (upstream::classify_body(&*e), None))?;
            body = CappedBody::buffered(data);
        }
        if submission {
            let data = Box::pin(body.read_all()).await.map_err(|e| (upstream::classify_body(&*e), None))?;
            need_pow = profile::needs_pow(parts.headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()), &data);
            body = CappedBody::buffered(data);
            if need_pow
                && let (Some(pow), Some(limit)) = (&self.limits.pow, self.config.rate_limit.and_then(|r| r.pow))
                && let RateDecision::Reject { retry_after } = pow.check(&client_key, limit, 1)
            {
                return Err((GatewayError::RateLimited { retry_after, limit, policy: "pow" }, None));
            }
        }

        // The client's target; each node it is sent to puts its own base path in front (in `send`).
        let target = Uri::from(path_and_query);
        let mut up = Request::new(body);
        *up.method_mut() = parts.method;
        *up.version_mut() = Version::HTTP_11;
        let headers = up.headers_mut();
        *headers = parts.headers;
        hdr::strip_hop_by_hop(headers);
        headers.remove(header::EXPECT);
        // The credential was for the gateway; the node sees it only where a route says so.
        if !pass_credential {
            auth::strip(headers);
        }
        if websocket {
            hdr::set_websocket_upgrade(headers);
        }
        // The connection's precomputed values, unless a trusted proxy named another client.
        if client == conn.peer.ip().to_canonical() {
            hdr::set_forwarded(headers, &conn.forwarding, original_host);
        } else {
            hdr::set_forwarded(headers, &hdr::Forwarding::new(client, conn.scheme.as_str()), original_host);
        }
        headers.insert(&X_REQUEST_ID, request_id);

        let no_node = || if need_pow { GatewayError::NoPowNode } else { GatewayError::NoNode };
        let node = self.balancer.pick(need_pow, None).ok_or_else(|| (no_node(), None))?;
        // An idempotent request with no body can be rebuilt for a retry if its connection breaks
        // before any answer; copying its head is only worth it when there is another node to try.
        let idempotent = matches!(*up.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        let copy = (idempotent && up.body().is_end_stream() && self.balancer.nodes().len() > 1 && !websocket)
            .then(|| (up.method().clone(), up.headers().clone()));

        // Small answers to reads are read whole before the client sees anything (see `send`), where
        // another node could be tried if the body breaks off.
        let buffer = copy.is_some() && *up.method() != Method::HEAD;
        let (answer, node) = match self.send(&node, up, &target, buffer).await {
            Ok(answer) => (answer, node),
            Err((err, unsent)) => {
                // Retry once on another node: a request that never left (no connection), or an
                // idempotent one whose connection broke before any answer. A POST that may have
                // reached a node is never resent: a message must not be submitted twice.
                let again = match unsent {
                    Some(req) => Some(req),
                    None if matches!(err, GatewayError::NodeReset { .. }) => copy.map(|(method, headers)| {
                        let mut req = Request::new(CappedBody::buffered(bytes::Bytes::new()));
                        *req.method_mut() = method;
                        *req.headers_mut() = headers;
                        req
                    }),
                    None => None,
                };
                let other = self.balancer.pick(need_pow, Some(&node));
                match (again, other) {
                    (Some(req), Some(other)) => {
                        tracing::debug!(from = %node.name, to = %other.name, error = %err, "retrying on another node");
                        // Boxed: the retry path is rare, and an inline second exchange made every request's
                        // future 2.8 KB larger (it is moved several times a request).
                        match Box::pin(self.send(&other, req, &target, buffer)).await {
                            Ok(answer) => (answer, other),
                            Err((err, _)) => return Err((err, Some(other.name.clone()))),
                        }
                    }
                    _ => return Err((err, Some(node.name.clone()))),
                }
            }
        };
        let name = node.name.clone();
        let fail = |e: GatewayError| (e, Some(name.clone()));

        let (mut resp, lease, in_flight) = match answer {
            Answer::Stream(resp, lease, in_flight) => (resp, Some(lease), in_flight),
            Answer::Buffered(mut resp) => {
                hdr::strip_hop_by_hop(resp.headers_mut());
                let mut resp = resp.map(ProxyBody::full);
                self.rate_limit_headers(&mut resp, rate_headers);
                return Ok((resp, name));
            }
        };
        let mut lease = lease;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The connection becomes the tunnel; it never goes back to the pool, and keeps its
            // place under the node's connection cap while it lasts.
            let permit = lease.take().map(Lease::into_permit);
            match client_upgrade {
                Some(client_upgrade) => {
                    let node_upgrade = hyper::upgrade::on(&mut resp);
                    upstream::spawn_tunnel(
                        client_upgrade,
                        node_upgrade,
                        g.idle_timeout,
                        conn.phase.clone(),
                        (conn.alive.clone(), permit),
                    );
                    hdr::strip_hop_by_hop(resp.headers_mut());
                    hdr::set_websocket_upgrade(resp.headers_mut());
                }
                None => {
                    let what = "101 Switching Protocols to a request that asked for no upgrade";
                    return Err(fail(GatewayError::NodeBadAnswer { node: name.to_string(), what }));
                }
            }
        } else {
            hdr::strip_hop_by_hop(resp.headers_mut());
        }
        let stall = Stall::new(self.config.upstream.body_timeout, self.passive);
        let mut resp = resp.map(|b| ProxyBody::stream(b, lease, in_flight, stall));
        self.rate_limit_headers(&mut resp, rate_headers);
        Ok((resp, name))
    }

    /// The `RateLimit` headers of an admitted request, naming the tightest limit that applied.
    fn rate_limit_headers(&self, resp: &mut Response<ProxyBody>, state: Option<(&'static str, Limit, u32)>) {
        let Some((policy, limit, remaining)) = state else { return };
        let default = self.config.rate_limit.map(|r| r.limit);
        let policy_value = match &self.client_policy {
            Some(v) if policy == "per-client" && Some(limit) == default => v.clone(),
            _ => crate::error::policy_header(policy, limit),
        };
        crate::error::rate_limit_headers(resp.headers_mut(), policy, policy_value, remaining, Duration::ZERO);
    }

    /// A refusal costs the client (by address: a credential that was refused names no one) one
    /// request of its `per_client` budget, so a flood of bad keys or paths is limited like any
    /// other flood; once the budget is spent the answer is 429. Each refusal is also an event.
    fn refused(&self, err: GatewayError, reason: RefusalReason, client: IpAddr, path: &str) -> GatewayError {
        tracing::debug!(target: "nodegate::denial", %client, reason = %err, "request refused");
        self.refusals.send(client, reason, path);
        if reason == RefusalReason::RateLimited {
            return err;
        }
        let Some(rl) = self.config.rate_limit else { return err };
        let key = ClientKey::from_ip(client, rl.ipv6_prefix);
        let mut over = None;
        for limiter in self.limits.client.iter().chain(&self.limits.refusals) {
            if let RateDecision::Reject { retry_after } = limiter.check(&key, rl.limit, 1) {
                over = Some(over.map_or(retry_after, |o: Duration| o.max(retry_after)));
            }
        }
        match over {
            None => err,
            Some(retry_after) => GatewayError::RateLimited { retry_after, limit: rl.limit, policy: "per-client" },
        }
    }

    /// Before a credential is verified (a signature check for a JWT), a client whose address has
    /// spent a whole budget on refusals is refused at once.
    fn address_exhausted(&self, client: IpAddr) -> Result<(), GatewayError> {
        let (Some(limiter), Some(rl)) = (&self.limits.refusals, self.config.rate_limit) else { return Ok(()) };
        match limiter.exhausted(&ClientKey::from_ip(client, rl.ipv6_prefix), rl.limit) {
            None => Ok(()),
            Some(retry_after) => Err(GatewayError::RateLimited { retry_after, limit: rl.limit, policy: "per-client" }),
        }
    }

    /// Reads a small answer's body whole (within the upstream body timeout); the connection goes
    /// back to the pool. A body that breaks off is the node's failure and a `NodeReset`, which the
    /// caller may retry.
    async fn read_whole(&self, node: &Node, resp: Response<Incoming>, lease: Lease) -> Result<Answer, GatewayError> {
        let (parts, body) = resp.into_parts();
        let mut read = std::pin::pin!(read_body(body));
        // Nearly always the body is in already: no timer unless the node makes the gateway wait.
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await;
        let result = match first {
            std::task::Poll::Ready(r) => Ok(r),
            std::task::Poll::Pending => tokio::time::timeout(self.config.upstream.body_timeout, read).await,
        };
        match result {
            Ok(Some(data)) => {
                lease.release();
                Ok(Answer::Buffered(Response::from_parts(parts, data)))
            }
            failed => {
                tracing::debug!(node = %node.name, timed_out = failed.is_err(), "node broke off a small answer's body");
                node.failure(&self.passive);
                Err(GatewayError::NodeReset { node: node.name.to_string() })
            }
        }
    }

    fn cert_roles(&self) -> &[auth::Role] {
        self.config.tls.as_ref().and_then(|t| t.client_auth.as_ref()).map_or(&[], |c| &c.roles)
    }

    /// The route's own limit, then the client's (with the route's cost). Returns the tighter one's
    /// state for the `RateLimit` headers.
    #[allow(clippy::type_complexity)]
    fn check_rates(
        &self,
        rule: Option<&crate::pipeline::route_policy::Rule>,
        key: &ClientKey,
        own_limit: Option<Limit>,
    ) -> Result<Option<(&'static str, Limit, u32)>, (GatewayError, Option<Arc<str>>)> {
        let Some(rl) = &self.config.rate_limit else { return Ok(None) };
        let mut tightest: Option<(&'static str, Limit, u32)> = None;
        let route = rule.and_then(|r| Some((self.limits.routes.get(r.id)?.as_ref()?, r.limit?)));
        if let Some((limiter, limit)) = route {
            match limiter.check(key, limit, 1) {
                RateDecision::Admit { remaining } => tightest = Some(("route", limit, remaining)),
                RateDecision::Reject { retry_after } => {
                    return Err((GatewayError::RateLimited { retry_after, limit, policy: "route" }, None));
                }
            }
        }
        if let Some(limiter) = &self.limits.client {
            let limit = own_limit.unwrap_or(rl.limit);
            match limiter.check(key, limit, rule.map_or(1, |r| r.cost)) {
                RateDecision::Admit { remaining } => {
                    if tightest.is_none_or(|(_, _, r)| remaining < r) {
                        tightest = Some(("per-client", limit, remaining));
                    }
                }
                RateDecision::Reject { retry_after } => {
                    return Err((GatewayError::RateLimited { retry_after, limit, policy: "per-client" }, None));
                }
            }
        }
        Ok(tightest)
    }

    /// One exchange with one node, reported to the balancer: `target` under the node's base path.
    /// On failure, the request comes back if it never left the gateway.
    ///
    /// With `buffer` (a GET or OPTIONS), an answer that declares a body of at most
    /// `request_buffer` is read whole before the client sees its headers: a node that dies
    /// between its headers and the end of its body is then a failed exchange, retried on another
    /// node like a refused connection, instead of a truncated answer (nginx and HAProxy truncate).
    async fn send(
        &self,
        node: &Arc<Node>,
        mut req: Request<CappedBody>,
        target: &Uri,
        buffer: bool,
    ) -> Result<Answer, (GatewayError, Option<Request<CappedBody>>)> {
        *req.uri_mut() =
            node_uri(node, target).map_err(|_| (GatewayError::BadRequest("the request target is not valid"), None))?;
        // The node gets its own authority as Host; the client's went into X-Forwarded-Host.
        req.headers_mut().insert(header::HOST, node.host.clone());
        let timeout = self.config.upstream.response_timeout;
        let in_flight = node.start();
        // Pinned where it is made: handing the (large) future to `timeout` by value copied it twice
        // a request (bench/callgrind).
        let exchange = node.pool.send(req);
        tokio::pin!(exchange);
        match tokio::time::timeout(timeout, exchange.as_mut()).await {
            Ok(Ok((resp, lease))) => {
                in_flight.answered();
                if resp.status().is_server_error() {
                    node.failure(&self.passive);
                } else {
                    node.success();
                }
                let small = |n: u64| n > 0 && n <= self.config.gateway.request_buffer;
                if buffer && !resp.body().is_end_stream() && resp.body().size_hint().exact().is_some_and(small) {
                    return Box::pin(self.read_whole(node, resp, lease)).await.map_err(|e| (e, None));
                }
                Ok(Answer::Stream(resp, lease, in_flight))
            }
            Ok(Err((e, unsent))) => {
                tracing::debug!(node = %node.name, error = ?e, "upstream request failed");
                let err = upstream::classify(&e, &node.name, &self.config.upstream);
                if err.is_node_fault() {
                    node.failure(&self.passive);
                }
                Err((err, unsent))
            }
            Err(_) => {
                node.failure(&self.passive);
                Err((GatewayError::NodeResponseTimeout { node: node.name.to_string(), timeout }, None))
            }
        }
    }
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

/// A node's body read to its end (one frame is taken as it is, more are joined); `None` when it
/// broke off.
async fn read_body(mut body: Incoming) -> Option<bytes::Bytes> {
    use http_body_util::BodyExt;
    let mut first: Option<bytes::Bytes> = None;
    let mut more: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.ok()?.into_data() else { continue };
        match (&mut first, &mut more) {
            (None, None) => first = Some(data),
            (Some(f), None) => {
                let mut joined = bytes::BytesMut::with_capacity(f.len() + data.len());
                joined.extend_from_slice(f);
                joined.extend_from_slice(&data);
                first = None;
                more = Some(joined);
            }
            (_, Some(m)) => m.extend_from_slice(&data),
        }
    }
    Some(more.map_or_else(|| first.unwrap_or_default(), bytes::BytesMut::freeze))
}

/// What a node answered: headers with the body still to stream from it, or read whole already.
enum Answer {
    Stream(Response<Incoming>, Lease, InFlight),
    Buffered(Response<bytes::Bytes>),
}

/// The origin-form target a node is sent: its base path, then the client's path and query.
fn node_uri(node: &Node, target: &Uri) -> Result<Uri, http::Error> {
    if node.base_path.is_empty() {
        return Ok(target.clone());
    }
    let pq = target.path_and_query().map_or("/", |p| p.as_str());
    Ok(Uri::from(PathAndQuery::try_from(format!("{}{pq}", node.base_path))?))
}

/// Bytes of the request head as sent: request line plus `name: value\r\n` for each header.
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len()) + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + target + 20;
    req.headers().iter().fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

fn content_length(headers: &http::HeaderMap) -> Result<Option<u64>, (GatewayError, Option<Arc<str>>)> {
    let Some(v) = headers.get(header::CONTENT_LENGTH) else { return Ok(None) };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or((GatewayError::BadRequest("invalid Content-Length"), None))
}
