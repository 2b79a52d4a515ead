//! JSON-RPC routes (`[[route]] jsonrpc`, the iota-rebased and evm profiles' endpoints): each
//! call is judged by the method policy (`pipeline::methods`) before a node sees it: the method's
//! access against the request's credential, its own rate, and its cost against the client's
//! budget. A batch (where a profile admits them) is judged whole: one denied call refuses it,
//! costs add up. Over HTTP the body is judged once read; over WebSocket every message the client
//! sends is (`relay`), with the same budget: switching transports buys no fresh allowance.
//! Refusals answer in JSON-RPC's shape with the call's id.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use hyper::upgrade::OnUpgrade;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::{Ctx, Pipeline};
use crate::config::Config;
use crate::error::GatewayError;
use crate::events::Refusals;
use crate::pipeline::auth::{self, Verdict};
use crate::pipeline::jsonrpc::{self, Envelope};
use crate::pipeline::rate_limit::{ClientKey, Decision, Limit, LimitPolicy, RateLimiter};
use crate::pipeline::route_policy::Access;
use crate::profile::Profile;
use crate::shutdown::Phase;

/// What a JSON-RPC request carries through the phases, where it needs more than its body (made
/// only then: the usual call needs neither).
#[derive(Default)]
pub(super) struct RpcCtx {
    /// A refused call's id (its JSON text), echoed in the error.
    pub id: Option<Box<str>>,
    /// A WebSocket's credential headers, taken before they are stripped for the node: its relay
    /// judges every message with them.
    pub credentials: HeaderMap,
}

/// One limiter per `[[method]]` with a rate (and one for each group of defaults with one).
pub fn method_limiters(count: usize, max_clients: usize) -> Vec<Arc<RateLimiter>> {
    (0..count).map(|i| Arc::new(RateLimiter::new(format!("method{i}"), max_clients))).collect()
}

/// The method policy with the limiters it spends: shared by HTTP requests and WebSocket relays.
#[derive(Clone)]
pub(super) struct Judge {
    config: Arc<Config>,
    client: Option<Arc<RateLimiter>>,
    refusals_limiter: Option<Arc<RateLimiter>>,
    methods: Vec<Arc<RateLimiter>>,
    heads: Arc<crate::health::Checkpoints>,
    /// Live WebSocket subscriptions per client, capped by `max_subscriptions_per_client`.
    subscriptions: Arc<Mutex<HashMap<ClientKey, u32>>>,
}

/// Who is calling: the client, its credential, and whose budget it spends (set once a call needs
/// a credential, else by address).
pub(super) struct Caller<'h> {
    pub client: IpAddr,
    pub credentials: &'h HeaderMap,
    /// The verified client certificate's name, when there is one.
    pub cert: Option<&'h str>,
    pub key: Option<(ClientKey, Option<Limit>)>,
}

impl<'h> Caller<'h> {
    /// The request's client and certificate, with the credential headers and budget given.
    fn of(ctx: &Ctx<'h>, credentials: &'h HeaderMap, key: Option<(ClientKey, Option<Limit>)>) -> Caller<'h> {
        Caller { client: ctx.client, credentials, cert: ctx.conn.client_cert().map(|c| c.name.as_str()), key }
    }
}

/// What an admitted request did: the tightest limit's state, and the subscriptions it opens or
/// closes.
pub(super) struct Judged {
    pub rate_state: Option<(LimitPolicy, Limit, u32)>,
    pub subscribes: u32,
    pub unsubscribes: u32,
}

type Refused = (GatewayError, Option<Box<str>>);

impl Judge {
    pub fn new(config: Arc<Config>, limits: &super::Limiters, heads: Arc<crate::health::Checkpoints>) -> Judge {
        Judge {
            config,
            client: limits.client.clone(),
            refusals_limiter: limits.refusals.clone(),
            methods: limits.methods.clone(),
            heads,
            subscriptions: Arc::default(),
        }
    }

    /// The judge for a reloaded config: live subscriptions are kept (they are still open).
    pub fn renewed(&self, config: Arc<Config>, limits: &super::Limiters) -> Judge {
        Judge { subscriptions: self.subscriptions.clone(), ..Judge::new(config, limits, self.heads.clone()) }
    }

    /// Judges the call(s) in `body` for `caller`; the refusal carries the call's id. `ws`: count
    /// the subscriptions it opens and closes (a WebSocket's message).
    pub fn judge(&self, body: &[u8], caller: &mut Caller<'_>, ws: bool) -> Result<Judged, Refused> {
        // iota-node refuses batches itself; refusing them here costs the node nothing.
        let max_batch = match self.config.gateway.profile {
            Profile::IotaRebased => 0,
            _ => self.config.gateway.max_batch,
        };
        let owned = |id: Option<&str>| id.map(Box::from);
        let envelope = match jsonrpc::parse(body, max_batch) {
            Ok(e) => e,
            Err((why, id)) => return Err((GatewayError::Rpc(why), owned(id))),
        };
        let (calls, id) = match &envelope {
            Envelope::Single(call) => (std::slice::from_ref(call), call.id),
            Envelope::Batch(calls) => (calls.as_slice(), None),
        };
        self.judge_calls(body, calls, caller, ws).map_err(|e| (e, owned(id)))
    }

    /// A gRPC call: its path is the method.
    pub fn judge_method(&self, method: &str, caller: &mut Caller<'_>) -> Result<Judged, GatewayError> {
        let call = jsonrpc::Call { method: std::borrow::Cow::Borrowed(method), id: None };
        self.judge_calls(b"", std::slice::from_ref(&call), caller, false)
    }

    fn judge_calls(
        &self,
        body: &[u8],
        calls: &[jsonrpc::Call<'_>],
        caller: &mut Caller<'_>,
        ws: bool,
    ) -> Result<Judged, GatewayError> {
        let mut needed = Access::Public;
        let mut cost = 0u32;
        let (mut subscribes, mut unsubscribes) = (0, 0);
        // The first call's rule is kept for the rates below (most requests are one call).
        let mut first = None;
        for call in calls {
            let rule = self.config.methods.decide(&call.method).ok_or(GatewayError::MethodNotExposed)?;
            first.get_or_insert(rule);
            match rule.access {
                Access::Deny => return Err(GatewayError::MethodNotExposed),
                Access::Admin => needed = Access::Admin,
                Access::Key if needed == Access::Public => needed = Access::Key,
                _ => {}
            }
            cost = cost.saturating_add(rule.cost);
            if ws {
                if contains_ignore_case(&call.method, "unsubscribe") {
                    unsubscribes += 1;
                } else if contains_ignore_case(&call.method, "subscribe") {
                    subscribes += 1;
                }
            }
        }
        if self.config.gateway.profile == Profile::Evm && calls.iter().any(|c| c.method == "eth_getLogs") {
            self.logs_ranges(body)?;
        }
        if needed != Access::Public {
            self.authorize(needed, caller)?;
        }
        let Some((key, own_limit)) = caller.key.clone() else {
            return Ok(Judged { rate_state: None, subscribes, unsubscribes });
        };
        // The methods' own rates, then the client's budget at the calls' cost.
        for (n, call) in calls.iter().enumerate() {
            let rule = if n == 0 { first } else { self.config.methods.decide(&call.method) };
            let Some(rule) = rule else { continue };
            if let (Some(i), Some(limit)) = (rule.limiter, rule.limit)
                && let Some(limiter) = self.methods.get(i)
                && let Decision::Reject { retry_after } = limiter.check(&key, limit, 1)
            {
                return Err(GatewayError::RateLimited { retry_after, limit, policy: LimitPolicy::Method });
            }
        }
        let mut rate_state = None;
        if let (Some(rl), Some(limiter)) = (&self.config.rate_limit, &self.client) {
            let limit = own_limit.unwrap_or(rl.limit);
            match limiter.check(&key, limit, cost.max(1)) {
                Decision::Admit { remaining } => rate_state = Some((LimitPolicy::PerClient, limit, remaining)),
                Decision::Reject { retry_after } => {
                    return Err(GatewayError::RateLimited { retry_after, limit, policy: LimitPolicy::PerClient });
                }
            }
        }
        Ok(Judged { rate_state, subscribes, unsubscribes })
    }

    /// A method that needs a credential: the one the request carried, or its client certificate.
    fn authorize(&self, needed: Access, caller: &mut Caller<'_>) -> Result<(), GatewayError> {
        super::limits::address_exhausted(self.refusals_limiter.as_ref(), self.config.rate_limit, caller.client)?;
        match auth::authorize(&self.config.api_keys, &self.config.jwts, caller.credentials, needed) {
            Verdict::Allowed { key, api_key } => {
                caller.key = Some((key, api_key.and_then(|k| k.limit)));
                Ok(())
            }
            Verdict::Unauthenticated => match &caller.cert {
                Some(name) if auth::opens(super::cert_roles(&self.config), needed) => {
                    caller.key = Some((ClientKey::Cert(name.to_string()), None));
                    Ok(())
                }
                Some(_) => Err(GatewayError::CredentialNotEnough),
                None => Err(GatewayError::CredentialMissing),
            },
            Verdict::Forbidden { .. } => Err(GatewayError::CredentialNotEnough),
        }
    }

    /// evm: every `eth_getLogs` in `body` asks for at most `max_logs_range` blocks. Tags count as
    /// the chain's head as the health checks last saw it; a range from `earliest` to a head not
    /// yet known is refused; a `blockHash` filter is one block. Only read for `eth_getLogs`, and
    /// the body has passed the envelope's checks (depth, duplicates) already.
    fn logs_ranges(&self, body: &[u8]) -> Result<(), GatewayError> {
        use serde_json::Value;
        let max = self.config.gateway.max_logs_range;
        let doc: Value = serde_json::from_slice(body).map_err(|_| GatewayError::Rpc(jsonrpc::Invalid::Parse))?;
        let calls: Vec<&Value> = match &doc {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        let head = self.heads.best();
        for filter in calls.iter().filter(|c| c["method"] == "eth_getLogs").map(|c| &c["params"][0]) {
            if filter.get("blockHash").is_some() {
                continue;
            }
            let block = |key: &str| -> Option<u64> {
                match filter.get(key).and_then(Value::as_str) {
                    None | Some("latest" | "pending" | "safe" | "finalized") => (head > 0).then_some(head),
                    Some("earliest") => Some(0),
                    Some(n) => n.strip_prefix("0x").and_then(|h| u64::from_str_radix(h, 16).ok()),
                }
            };
            let refused = match (block("fromBlock"), block("toBlock")) {
                (Some(from), Some(to)) => to.saturating_sub(from) > max,
                (Some(0), None) => true,
                _ => false,
            };
            if refused {
                return Err(GatewayError::LogsRange { max });
            }
        }
        Ok(())
    }

    /// A refused WebSocket message costs its address one request of `per_client`, as a refused
    /// HTTP request does; true once that budget is spent (the relay then closes the connection).
    fn charge_refusal(&self, client: IpAddr) -> bool {
        let Some(rl) = self.config.rate_limit else { return false };
        let key = ClientKey::from_ip(client, rl.ipv6_prefix);
        let mut over = false;
        for limiter in self.client.iter().chain(&self.refusals_limiter) {
            over |= matches!(limiter.check(&key, rl.limit, 1), Decision::Reject { .. });
        }
        over
    }

    /// Takes `n` more subscriptions for `key` if the cap allows.
    fn subscribe(&self, key: &ClientKey, n: u32) -> bool {
        let max = self.config.gateway.max_subscriptions_per_client;
        let mut all = self.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        let live = all.entry(key.clone()).or_insert(0);
        if *live + n > max {
            return false;
        }
        *live += n;
        true
    }

    fn unsubscribe(&self, key: &ClientKey, n: u32) {
        let mut all = self.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(live) = all.get_mut(key) {
            *live = live.saturating_sub(n);
            if *live == 0 {
                all.remove(key);
            }
        }
    }
}

fn contains_ignore_case(hay: &str, needle: &str) -> bool {
    hay.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

impl Pipeline {
    /// Judges the call(s) in the body of an HTTP request, with its credential headers.
    pub(super) fn judge_rpc(&self, body: &[u8], headers: &HeaderMap, ctx: &mut Ctx<'_>) -> Result<(), GatewayError> {
        let key = ctx.client_key.take();
        let mut caller = Caller::of(ctx, headers, key);
        let judged = self.judge.judge(body, &mut caller, false);
        ctx.client_key = caller.key;
        match judged {
            Ok(j) => {
                ctx.rate_state = j.rate_state.or(ctx.rate_state);
                Ok(())
            }
            Err((err, id)) => {
                if id.is_some() {
                    ctx.rpc.get_or_insert_with(Box::default).id = id;
                }
                Err(err)
            }
        }
    }

    /// A gRPC call, judged by its path before any node sees it (no body needed).
    pub(super) fn judge_grpc(
        &self,
        req: &http::Request<hyper::body::Incoming>,
        path: &str,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), GatewayError> {
        let key = ctx.client_key.take();
        let mut caller = Caller::of(ctx, req.headers(), key);
        let judged = self.judge.judge_method(path, &mut caller);
        ctx.client_key = caller.key;
        let j = judged?;
        ctx.rate_state = j.rate_state.or(ctx.rate_state);
        // Server streams (by gRPC's naming, `Stream*` and `Subscribe*` methods) hold a place
        // until they end: a client cannot park unbounded streams on the node.
        let method = path.rsplit('/').next().unwrap_or_default();
        if method.starts_with("Stream") || method.starts_with("Subscribe") {
            let key = ctx.client_key.as_ref().map_or_else(
                || ClientKey::from_ip(ctx.client, self.config.rate_limit.map_or(64, |r| r.ipv6_prefix)),
                |(k, _)| k.clone(),
            );
            let slot = self.streams.enter(key).ok_or(GatewayError::TooManyStreams { limit: self.streams.max() })?;
            ctx.stream_slot = Some(slot);
        }
        Ok(())
    }

    /// A JSON-RPC route's WebSocket: every client message judged, never a way around the policy.
    pub(super) fn spawn_rpc_relay(
        &self,
        ctx: &mut Ctx<'_>,
        client: OnUpgrade,
        node: crate::upstream::NodeTunnel,
        held: (mpsc::Sender<()>, Option<tokio::sync::OwnedSemaphorePermit>),
    ) {
        let credentials = ctx.rpc.as_mut().map(|r| std::mem::take(&mut r.credentials)).unwrap_or_default();
        let relay = Relay {
            judge: self.judge.clone(),
            refusals: self.refusals.clone(),
            client: ctx.client,
            credentials,
            cert: ctx.conn.client_cert().map(|c| c.name.clone()),
            key: ctx.client_key.clone(),
            idle: self.config.gateway.idle_timeout,
            max_message: self.config.gateway.max_body as usize,
        };
        tokio::spawn(relay.run(client, node, ctx.conn.phase.clone(), held));
    }
}

struct Relay {
    judge: Judge,
    refusals: Refusals,
    /// Who is calling (see `Caller`): the budget is set once a call needs a credential.
    client: IpAddr,
    credentials: HeaderMap,
    cert: Option<String>,
    key: Option<(ClientKey, Option<Limit>)>,
    idle: Duration,
    max_message: usize,
}

impl Relay {
    async fn run(
        mut self,
        client: OnUpgrade,
        node: crate::upstream::NodeTunnel,
        mut phase: watch::Receiver<Phase>,
        held: (mpsc::Sender<()>, Option<tokio::sync::OwnedSemaphorePermit>),
    ) {
        let _held = held;
        let Some(c) = crate::upstream::upgraded(client).await else { return };
        let config =
            WebSocketConfig::default().max_message_size(Some(self.max_message)).max_frame_size(Some(self.max_message));
        let mut c = WebSocketStream::from_raw_socket(c, Role::Server, Some(config)).await;
        let mut n = WebSocketStream::from_raw_socket(node, Role::Client, Some(config)).await;
        // Subscriptions this connection holds, given back when it ends.
        let mut live = 0u32;
        loop {
            let event = tokio::select! {
                m = c.next() => Some((true, m)),
                m = n.next() => Some((false, m)),
                _ = tokio::time::sleep(self.idle) => None,
                _ = async { while phase.changed().await.is_ok() && *phase.borrow() != Phase::Stopped {} } => None,
            };
            let Some((from_client, msg)) = event else { break };
            let msg = match msg {
                Some(Ok(m)) => m,
                _ => break,
            };
            if !from_client {
                let close = msg.is_close();
                if (msg.is_text() || msg.is_binary() || close) && c.send(msg).await.is_err() || close {
                    break;
                }
                continue;
            }
            let data: &[u8] = match &msg {
                Message::Text(t) => t.as_bytes(),
                Message::Binary(b) => b,
                Message::Close(_) => {
                    let _ = n.send(msg).await;
                    break;
                }
                _ => continue,
            };
            let mut caller = Caller {
                client: self.client,
                credentials: &self.credentials,
                cert: self.cert.as_deref(),
                key: self.key.take(),
            };
            let judged = self.judge.judge(data, &mut caller, true);
            self.key = caller.key;
            match judged {
                Ok(j) => {
                    let key = self.key();
                    if j.subscribes > 0 && !self.judge.subscribe(&key, j.subscribes) {
                        let err = GatewayError::TooManySubscriptions {
                            limit: self.judge.config.gateway.max_subscriptions_per_client,
                        };
                        if c.send(Message::text(err.rpc_json(None))).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    live += j.subscribes;
                    let gone = j.unsubscribes.min(live);
                    if gone > 0 {
                        self.judge.unsubscribe(&key, gone);
                        live -= gone;
                    }
                    if n.send(msg).await.is_err() {
                        break;
                    }
                }
                Err((err, id)) => {
                    let reason = err.refusal_reason();
                    if let Some(reason) = reason {
                        self.refusals.send(self.client, reason, "(websocket)");
                    }
                    // Refusals cost as over HTTP; a client that spent its budget on them is
                    // cut off: a WebSocket is no cheaper place to flood.
                    let over = reason.is_some_and(|r| r != crate::events::RefusalReason::RateLimited)
                        && self.judge.charge_refusal(self.client);
                    if c.send(Message::text(err.rpc_json(id.as_deref()))).await.is_err() || over {
                        break;
                    }
                }
            }
        }
        if live > 0 {
            self.judge.unsubscribe(&self.key(), live);
        }
        let _ = c.close(None).await;
        let _ = n.close(None).await;
    }

    fn key(&self) -> ClientKey {
        self.key.as_ref().map(|(k, _)| k.clone()).unwrap_or_else(|| {
            ClientKey::from_ip(self.client, self.judge.config.rate_limit.map_or(64, |r| r.ipv6_prefix))
        })
    }
}
