//! JSON-RPC routes (`[[route]] jsonrpc`, the iota-rebased profile's `POST /`): once the body is
//! read, its envelope is judged by the method policy (`pipeline::methods`) before a node is
//! chosen: the method's access against the request's credential, its own rate, and its cost
//! against the client's budget. A batch (where a profile admits them) is judged whole: one denied
//! call refuses it, costs add up. Refusals answer in JSON-RPC's shape with the request's id.

use std::sync::Arc;

use http::HeaderMap;
use serde_json::value::RawValue;

use super::{Ctx, Proxy};
use crate::error::GatewayError;
use crate::pipeline::auth::{self, Verdict};
use crate::pipeline::jsonrpc::{self, Envelope};
use crate::pipeline::methods::MethodRule;
use crate::pipeline::rate_limit::{ClientKey, Decision, LimitPolicy, RateLimiter};
use crate::pipeline::route_policy::Access;
use crate::profile::Profile;

/// What a JSON-RPC request carries through the phases.
#[derive(Default)]
pub(super) struct RpcCtx {
    /// The request's id, echoed in a refusal.
    pub id: Option<Box<RawValue>>,
    /// The credential headers, taken before they are stripped for the node.
    pub credentials: HeaderMap,
}

/// One limiter per `[[method]]` with a rate (and one for each group of defaults with one).
pub fn method_limiters(count: usize, max_clients: usize) -> Vec<Arc<RateLimiter>> {
    (0..count).map(|i| Arc::new(RateLimiter::new(format!("method{i}"), max_clients))).collect()
}

impl Proxy {
    /// Judges the call(s) in `body`.
    pub(super) fn judge_rpc(&self, body: &[u8], ctx: &mut Ctx<'_>) -> Result<(), GatewayError> {
        // iota-node refuses batches itself; refusing them here costs the node nothing.
        let max_batch = match self.config.gateway.profile {
            Profile::IotaRebased => 0,
            _ => self.config.gateway.max_batch,
        };
        let envelope = match jsonrpc::parse(body, max_batch) {
            Ok(e) => e,
            Err((why, id)) => {
                if let Some(rpc) = ctx.rpc.as_mut() {
                    rpc.id = id;
                }
                return Err(GatewayError::Rpc(why));
            }
        };
        let calls = match envelope {
            Envelope::Single(mut call) => {
                if let Some(rpc) = ctx.rpc.as_mut() {
                    rpc.id = call.id.take();
                }
                vec![call]
            }
            Envelope::Batch(calls) => calls,
        };
        let mut rules: Vec<&MethodRule> = Vec::with_capacity(calls.len());
        let mut needed = Access::Public;
        let mut cost = 0u32;
        for call in &calls {
            let rule = self.config.methods.decide(&call.method).ok_or(GatewayError::MethodNotExposed)?;
            match rule.access {
                Access::Deny => return Err(GatewayError::MethodNotExposed),
                Access::Admin => needed = Access::Admin,
                Access::Key if needed == Access::Public => needed = Access::Key,
                _ => {}
            }
            cost = cost.saturating_add(rule.cost);
            rules.push(rule);
        }
        if self.config.gateway.profile == Profile::Evm && calls.iter().any(|c| c.method == "eth_getLogs") {
            self.logs_ranges(body)?;
        }
        if needed != Access::Public {
            self.authorize_call(needed, ctx)?;
        }
        let Some((key, own_limit)) = ctx.client_key.clone() else { return Ok(()) };
        // The methods' own rates, then the client's budget at the calls' cost.
        for rule in &rules {
            if let (Some(i), Some(limit)) = (rule.limiter, rule.limit)
                && let Some(limiter) = self.limits.methods.get(i)
                && let Decision::Reject { retry_after } = limiter.check(&key, limit, 1)
            {
                return Err(GatewayError::RateLimited { retry_after, limit, policy: LimitPolicy::Method });
            }
        }
        if let (Some(rl), Some(limiter)) = (&self.config.rate_limit, &self.limits.client) {
            let limit = own_limit.unwrap_or(rl.limit);
            match limiter.check(&key, limit, cost.max(1)) {
                Decision::Admit { remaining } => ctx.rate_state = Some((LimitPolicy::PerClient, limit, remaining)),
                Decision::Reject { retry_after } => {
                    return Err(GatewayError::RateLimited { retry_after, limit, policy: LimitPolicy::PerClient });
                }
            }
        }
        Ok(())
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

    /// A method that needs a credential: the one the request carried, or its client certificate.
    fn authorize_call(&self, needed: Access, ctx: &mut Ctx<'_>) -> Result<(), GatewayError> {
        self.address_exhausted(ctx.client)?;
        let credentials = ctx.rpc.as_ref().map(|r| &r.credentials);
        let empty = HeaderMap::new();
        match auth::authorize(&self.config.api_keys, &self.config.jwts, credentials.unwrap_or(&empty), needed) {
            Verdict::Allowed { key, api_key } => {
                ctx.client_key = Some((key, api_key.and_then(|k| k.limit)));
                Ok(())
            }
            Verdict::Unauthenticated => match ctx.conn.client_cert.get() {
                Some(id) if auth::opens(self.cert_roles(), needed) => {
                    ctx.client_key = Some((ClientKey::Cert(id.name.clone()), None));
                    Ok(())
                }
                Some(_) => Err(GatewayError::CredentialNotEnough),
                None => Err(GatewayError::CredentialMissing),
            },
            Verdict::Forbidden { .. } => Err(GatewayError::CredentialNotEnough),
        }
    }
}
