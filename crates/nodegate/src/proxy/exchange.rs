//! The `forward` phase: choose a node, exchange the request with it over its pool, retry on another
//! node where that is safe, and clean the answer's head for the client.

use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::{Body as _, Incoming};

use super::{Ctx, Pipeline, Prepared};
use crate::balancer::{InFlight, Node};
use crate::body::{ProxyBody, Stall};
use crate::error::GatewayError;
use crate::http::headers as hdr;
use crate::http::request_body::CappedBody;
use crate::upstream::{self, NodeBody};

/// What a node answered: headers with the body still to stream from it, or read whole already.
enum Answer {
    Stream(Response<NodeBody>, InFlight),
    Buffered(Response<bytes::Bytes>),
}

impl Pipeline {
    /// Prepares the request (`prepare`, `read_first`), then exchanges it with a node.
    pub(super) async fn forward(
        &self,
        req: Request<Incoming>,
        target: PathAndQuery,
        ctx: &mut Ctx<'_>,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let mut p = self.prepare(req, target, ctx)?;
        if p.read_first {
            // Boxed: most requests have no body, and inline it made every request's future larger.
            crate::cold::rare(self.read_first(&mut p, ctx)).await?;
        }
        let Prepared { request: up, target, client_upgrade, need_pow, client_host, forwarding, .. } = p;
        let stamp = hdr::Stamp {
            forwarding: forwarding.as_ref().unwrap_or(&ctx.conn.forwarding),
            client_host: client_host.as_ref(),
            request_id: &ctx.request_id,
        };
        let no_node = || if need_pow { GatewayError::NoPowNode } else { GatewayError::NoNode };
        let node = self.balancer.pick(need_pow, None).ok_or_else(no_node)?;
        // An idempotent request with no body can be rebuilt for a retry if its connection breaks
        // before any answer; copying its head is only worth it when there is another node to try.
        let websocket = client_upgrade.is_some();
        let idempotent = matches!(*up.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        let copy = (idempotent && up.body().is_end_stream() && self.balancer.nodes().len() > 1 && !websocket)
            .then(|| (up.method().clone(), up.headers().clone()));
        // Small answers to reads are read whole before the client sees anything (see `send`), where
        // another node could be tried if the body breaks off.
        let buffer = copy.is_some() && *up.method() != Method::HEAD;
        let (answer, node) = match self.send(&node, up, &target, buffer, stamp).await {
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
                        match crate::cold::rare(self.send(&other, req, &target, buffer, stamp)).await {
                            Ok(answer) => (answer, other),
                            Err((err, _)) => {
                                ctx.node = Some(other.clone());
                                return Err(err);
                            }
                        }
                    }
                    _ => {
                        ctx.node = Some(node.clone());
                        return Err(err);
                    }
                }
            }
        };
        ctx.node = Some(node.clone());

        let (mut resp, in_flight) = match answer {
            Answer::Stream(resp, in_flight) => (resp, in_flight),
            Answer::Buffered(mut resp) => {
                hdr::strip_hop_by_hop(resp.headers_mut());
                let mut resp = resp.map(ProxyBody::full);
                self.rate_limit_headers(&mut resp, ctx.rate_state);
                return Ok(resp);
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The connection becomes the tunnel; it never goes back to the pool, and keeps its
            // place under the node's connection cap while it lasts.
            match (client_upgrade, resp.body_mut().take_tunnel()) {
                (Some(client_upgrade), Some((node_upgrade, permit))) => {
                    if ctx.jsonrpc {
                        // JSON-RPC over WebSocket: every message judged, not a blind tunnel.
                        self.spawn_rpc_relay(ctx, client_upgrade, node_upgrade, (ctx.conn.alive.clone(), permit));
                    } else {
                        upstream::spawn_tunnel(
                            client_upgrade,
                            node_upgrade,
                            self.config.gateway.idle_timeout,
                            ctx.conn.phase.clone(),
                            (ctx.conn.alive.clone(), permit),
                        );
                    }
                    hdr::strip_hop_by_hop(resp.headers_mut());
                    hdr::set_websocket_upgrade(resp.headers_mut());
                }
                _ => {
                    let what = "101 Switching Protocols to a request that asked for no upgrade";
                    return Err(GatewayError::NodeBadAnswer { node: node.name.to_string(), what });
                }
            }
        } else {
            hdr::strip_hop_by_hop(resp.headers_mut());
        }
        // A gRPC call's status: in the headers of a trailers-only answer (how gRPC servers answer
        // a call that fails before any message), judged at once; else in the trailers.
        let mut tally = None;
        if ctx.grpc {
            let t = self.grpc_tally(ctx);
            if resp.headers().contains_key("grpc-status") {
                t.judge(resp.headers());
            } else {
                tally = Some(t);
            }
        }
        let stall = Stall::new(self.config.upstream.body_timeout, self.passive);
        let mut resp = resp.map(|b| ProxyBody::stream(b, in_flight, stall));
        if let Some(tally) = tally {
            resp = resp.map(|b| b.on_trailers(Box::new(move |trailers| tally.judge(trailers))));
        }
        self.rate_limit_headers(&mut resp, ctx.rate_state);
        Ok(resp)
    }

    /// What judging a gRPC call's final status needs, owned so it can wait for a stream's end.
    fn grpc_tally(&self, ctx: &Ctx<'_>) -> GrpcTally {
        let budget = match (self.config.rate_limit, &self.limits.client, &ctx.client_key) {
            (Some(rl), Some(limiter), Some((key, own))) => {
                Some((limiter.clone(), key.clone(), own.unwrap_or(rl.limit)))
            }
            _ => None,
        };
        GrpcTally { refusals: self.refusals.clone(), metrics: self.metrics.clone(), client: ctx.client, budget }
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
        stamp: hdr::Stamp<'_>,
    ) -> Result<Answer, (GatewayError, Option<Request<CappedBody>>)> {
        *req.uri_mut() =
            node_uri(node, target).map_err(|_| (GatewayError::BadRequest("the request target is not valid"), None))?;
        // The node gets its own authority as Host; the client's goes into X-Forwarded-Host.
        let timeout = self.config.upstream.response_timeout;
        let in_flight = node.start();
        if req.version() == http::Version::HTTP_2 {
            stamp.apply(&node.host, req.headers_mut());
            // Boxed: inline, this rare path's future made every request's future larger (and
            // HTTP/2 moves it several times a request: bench/callgrind PROTO=h2).
            return crate::cold::rare(self.send_grpc(node, req, in_flight, timeout)).await;
        }
        // Pinned where it is made: handing the (large) future to `timeout` by value copied it twice
        // a request (bench/callgrind).
        let exchange = node.pool.send(req, &stamp, &node.host);
        tokio::pin!(exchange);
        match tokio::time::timeout(timeout, exchange.as_mut()).await {
            Ok(Ok(resp)) => {
                in_flight.answered();
                if resp.status().is_server_error() {
                    node.failure(&self.passive);
                } else {
                    node.success();
                }
                let small = |n: u64| n > 0 && n <= self.config.gateway.request_buffer;
                if buffer && !resp.body().is_end_stream() && resp.body().size_hint().exact().is_some_and(small) {
                    return crate::cold::rare(self.read_whole(node, resp.map(NodeBody::H1)))
                        .await
                        .map_err(|e| (e, None));
                }
                Ok(Answer::Stream(resp.map(NodeBody::H1), in_flight))
            }
            Ok(Err((e, unsent))) => Err((self.failed(node, &e), unsent)),
            Err(_) => Err((self.timed_out(node, timeout), None)),
        }
    }

    /// An exchange that failed, as the client is told, and counted against the node when it was
    /// the node's fault.
    fn failed(&self, node: &Node, e: &upstream::SendError) -> GatewayError {
        tracing::debug!(node = %node.name, error = ?e, "upstream request failed");
        let err = upstream::classify(e, &node.name, &self.config.upstream);
        if err.is_node_fault() {
            node.failure(&self.passive);
        }
        err
    }

    /// A node that did not answer within `timeout`: its failure, and the client's 504.
    fn timed_out(&self, node: &Node, timeout: std::time::Duration) -> GatewayError {
        node.failure(&self.passive);
        GatewayError::NodeResponseTimeout { node: node.name.to_string(), timeout }
    }

    /// A gRPC call on the node's shared HTTP/2 connection. Never retried: a call may have run.
    async fn send_grpc(
        &self,
        node: &Arc<Node>,
        mut req: Request<CappedBody>,
        in_flight: InFlight,
        timeout: std::time::Duration,
    ) -> Result<Answer, (GatewayError, Option<Request<CappedBody>>)> {
        // HTTP/2 carries scheme and authority as pseudo-headers: the target goes absolute.
        let absolute = node.host.to_str().ok().and_then(|host| {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let scheme = if node.url.starts_with("https://") { "https" } else { "http" };
            Uri::try_from(format!("{scheme}://{host}{pq}")).ok()
        });
        match absolute {
            Some(uri) => *req.uri_mut() = uri,
            None => return Err((GatewayError::BadRequest("the request target is not valid"), None)),
        }
        match tokio::time::timeout(timeout, node.pool.send_h2(req)).await {
            Ok(Ok(resp)) => {
                in_flight.answered();
                node.success();
                Ok(Answer::Stream(resp.map(NodeBody::H2), in_flight))
            }
            Ok(Err(e)) => Err((self.failed(node, &e), None)),
            Err(_) => Err((self.timed_out(node, timeout), None)),
        }
    }

    /// Reads a small answer's body whole (within the upstream body timeout); the connection goes
    /// back to the pool. A body that breaks off is the node's failure and a `NodeReset`, which the
    /// caller may retry.
    async fn read_whole(&self, node: &Node, resp: Response<NodeBody>) -> Result<Answer, GatewayError> {
        let (parts, body) = resp.into_parts();
        let mut read = std::pin::pin!(read_body(body));
        // Nearly always the body is in already: no timer unless the node makes the gateway wait.
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await;
        let result = match first {
            std::task::Poll::Ready(r) => Ok(r),
            std::task::Poll::Pending => tokio::time::timeout(self.config.upstream.body_timeout, read).await,
        };
        match result {
            Ok(Some(data)) => Ok(Answer::Buffered(Response::from_parts(parts, data))),
            failed => {
                tracing::debug!(node = %node.name, timed_out = failed.is_err(), "node broke off a small answer's body");
                node.failure(&self.passive);
                Err(GatewayError::NodeReset { node: node.name.to_string() })
            }
        }
    }
}

/// A node's body read to its end (one frame is taken as it is, more are joined); `None` when it
/// broke off.
async fn read_body(mut body: NodeBody) -> Option<bytes::Bytes> {
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

/// A gRPC call's end, judged: one the node refused as the client's fault is an event
/// (`node-refused`, for jails) and one request of the client's budget, so floods of failing calls
/// are limited and banned like any other refusals, whether the status came at once (trailers-only)
/// or after a stream's messages.
struct GrpcTally {
    refusals: crate::events::Refusals,
    metrics: Arc<crate::metrics::Metrics>,
    client: std::net::IpAddr,
    budget: Option<(
        Arc<crate::pipeline::rate_limit::RateLimiter>,
        crate::pipeline::rate_limit::ClientKey,
        crate::pipeline::rate_limit::Limit,
    )>,
}

impl GrpcTally {
    fn judge(self, status: &http::HeaderMap) {
        let code = status.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u8>().ok());
        // INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, FAILED_PRECONDITION,
        // OUT_OF_RANGE, UNAUTHENTICATED: what a client asked for wrongly, not the node failing.
        if !matches!(code, Some(3 | 5 | 6 | 7 | 9 | 11 | 16)) {
            return;
        }
        self.refusals.send(self.client, crate::events::RefusalReason::NodeRefused, "(grpc)");
        self.metrics.refused(crate::events::RefusalReason::NodeRefused);
        if let Some((limiter, key, limit)) = &self.budget {
            let _ = limiter.check(key, *limit, 1);
        }
    }
}

/// The origin-form target a node is sent: its base path, then the client's path and query.
fn node_uri(node: &Node, target: &Uri) -> Result<Uri, http::Error> {
    if node.base_path.is_empty() {
        return Ok(target.clone());
    }
    let pq = target.path_and_query().map_or("/", |p| p.as_str());
    Ok(Uri::from(PathAndQuery::try_from(format!("{}{pq}", node.base_path))?))
}
