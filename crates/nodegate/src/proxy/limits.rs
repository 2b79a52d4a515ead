//! The `limit` phase and what else the proxy counts: rate limits (per client, per route, the
//! remote-PoW budget), the per-client in-flight cap, and what a refusal costs.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Response;

use super::{Ctx, Pipeline};
use crate::body::ProxyBody;
use crate::config::Config;
use crate::error::GatewayError;
use crate::events::RefusalReason;
use crate::pipeline::rate_limit::{ClientKey, Decision, Limit, LimitPolicy, RateLimiter};

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
    /// JSON-RPC methods' own rates (`MethodRule::limiter`); kept with or without `[rate_limit]`.
    pub methods: Vec<Arc<RateLimiter>>,
}

impl Limiters {
    pub(super) fn new(config: &Config) -> Limiters {
        let max_clients = config.rate_limit.map_or(100_000, |r| r.max_clients);
        let methods = super::rpc::method_limiters(config.methods.limiters(), max_clients);
        let Some(rl) = config.rate_limit else { return Limiters { methods, ..Limiters::default() } };
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
            methods,
        }
    }

    /// The limiters for `new`, a reloaded config: a limiter whose limit is the same as in `old`
    /// is kept, with every client's state in it (a reload is no fresh allowance); one whose
    /// limit changed starts afresh, as do new ones.
    pub(super) fn renewed(&self, old: &Config, new: &Config) -> Limiters {
        let mut fresh = Limiters::new(new);
        // A table is kept only where it is made the same way (size, shared or not).
        let table = |c: &Config| (c.rate_limit.map_or(100_000, |r| r.max_clients), c.cluster.is_some());
        if table(old) != table(new) {
            return fresh;
        }
        let rule_of =
            |c: &Config, i: usize| c.methods.all().find(|r| r.limiter == Some(i)).map(|r| (r.pattern.clone(), r.limit));
        for (i, made) in fresh.methods.iter_mut().enumerate() {
            let before = rule_of(old, i);
            if let Some(kept) = self.methods.get(i)
                && before.is_some()
                && before == rule_of(new, i)
            {
                *made = kept.clone();
            }
        }
        let (Some(o), Some(n)) = (old.rate_limit, new.rate_limit) else { return fresh };
        let keep = |same: bool, kept: &Option<Arc<RateLimiter>>, made: &mut Option<Arc<RateLimiter>>| {
            if same && kept.is_some() && made.is_some() {
                made.clone_from(kept);
            }
        };
        keep(o.limit == n.limit, &self.client, &mut fresh.client);
        keep(o.limit == n.limit, &self.refusals, &mut fresh.refusals);
        keep(o.pow == n.pow, &self.pow, &mut fresh.pow);
        let old_rules = old.routes.rules();
        for (rule, made) in new.routes.rules().iter().zip(fresh.routes.iter_mut()) {
            // The same route (same place, pattern and limit) keeps its limiter, under its name.
            let same = old_rules.get(rule.id).is_some_and(|r| r.pattern == rule.pattern && r.limit == rule.limit);
            if let Some(kept) = self.routes.get(rule.id) {
                keep(same, kept, made);
            }
        }
        fresh
    }

    /// All of them, for the cluster sync.
    pub fn all(&self) -> Vec<Arc<RateLimiter>> {
        self.client
            .iter()
            .chain(&self.pow)
            .chain(&self.refusals)
            .chain(self.routes.iter().flatten())
            .chain(&self.methods)
            .cloned()
            .collect()
    }
}

impl Pipeline {
    /// The route's own limit, then the client's (with the route's cost), then the in-flight cap.
    /// Keeps the tighter limit's state for the `RateLimit` headers.
    pub(super) fn limit(&self, ctx: &mut Ctx<'_>) -> Result<(), GatewayError> {
        let Some((key, own_limit)) = &ctx.client_key else { return Ok(()) };
        let mut tightest = None;
        if let Some(rl) = &self.config.rate_limit {
            let route = ctx.rule.and_then(|r| Some((self.limits.routes.get(r.id)?.as_ref()?, r.limit?)));
            if let Some((limiter, limit)) = route {
                match limiter.check(key, limit, 1) {
                    Decision::Admit { remaining } => tightest = Some((LimitPolicy::Route, limit, remaining)),
                    Decision::Reject { retry_after } => {
                        return Err(GatewayError::RateLimited { retry_after, limit, policy: LimitPolicy::Route });
                    }
                }
            }
            // A JSON-RPC call's cost is its method's, charged once its body is read (`rpc`).
            if let Some(limiter) = self.limits.client.as_ref().filter(|_| !ctx.jsonrpc && !ctx.grpc) {
                let limit = own_limit.unwrap_or(rl.limit);
                match limiter.check(key, limit, ctx.rule.map_or(1, |r| r.cost)) {
                    Decision::Admit { remaining } => {
                        if tightest.is_none_or(|(_, _, r)| remaining < r) {
                            tightest = Some((LimitPolicy::PerClient, limit, remaining));
                        }
                    }
                    Decision::Reject { retry_after } => {
                        return Err(GatewayError::RateLimited { retry_after, limit, policy: LimitPolicy::PerClient });
                    }
                }
            }
        }
        let slot = match &self.in_flight {
            Some(cap) => Some(cap.enter(key.clone()).ok_or(GatewayError::TooManyInFlight { limit: cap.max() })?),
            None => None,
        };
        ctx.rate_state = tightest;
        ctx.slot = slot;
        Ok(())
    }

    /// A submission that asks a node for remote PoW spends the client's PoW budget.
    pub(super) fn pow_budget(&self, ctx: &Ctx<'_>) -> Result<(), GatewayError> {
        let (Some(pow), Some(limit), Some((key, _))) =
            (&self.limits.pow, self.config.rate_limit.and_then(|r| r.pow), &ctx.client_key)
        else {
            return Ok(());
        };
        match pow.check(key, limit, 1) {
            Decision::Admit { .. } => Ok(()),
            Decision::Reject { retry_after } => {
                Err(GatewayError::RateLimited { retry_after, limit, policy: LimitPolicy::Pow })
            }
        }
    }

    /// The `RateLimit` headers of an admitted request, naming the tightest limit that applied.
    pub(super) fn rate_limit_headers(&self, resp: &mut Response<ProxyBody>, state: Option<(LimitPolicy, Limit, u32)>) {
        let Some((policy, limit, remaining)) = state else { return };
        let default = self.config.rate_limit.map(|r| r.limit);
        let policy_value = match &self.client_policy {
            Some(v) if policy == LimitPolicy::PerClient && Some(limit) == default => v.clone(),
            _ => crate::error::policy_header(policy, limit),
        };
        crate::error::rate_limit_headers(resp.headers_mut(), policy, policy_value, remaining, Duration::ZERO);
    }

    /// A refusal costs the client (by address: a credential that was refused names no one) one
    /// request of its `per_client` budget, so a flood of bad keys or paths is limited like any
    /// other flood; once the budget is spent the answer is 429. Each refusal is also an event.
    pub(super) fn refused(&self, err: GatewayError, reason: RefusalReason, client: IpAddr, path: &str) -> GatewayError {
        tracing::debug!(target: "nodegate::denial", %client, reason = %err, "request refused");
        self.refusals.send(client, reason, path);
        if reason == RefusalReason::RateLimited {
            return err;
        }
        let Some(rl) = self.config.rate_limit else { return err };
        let key = ClientKey::from_ip(client, rl.ipv6_prefix);
        let mut over = None;
        for limiter in self.limits.client.iter().chain(&self.limits.refusals) {
            if let Decision::Reject { retry_after } = limiter.check(&key, rl.limit, 1) {
                over = Some(over.map_or(retry_after, |o: Duration| o.max(retry_after)));
            }
        }
        match over {
            None => err,
            Some(retry_after) => {
                GatewayError::RateLimited { retry_after, limit: rl.limit, policy: LimitPolicy::PerClient }
            }
        }
    }

    /// Before a credential is verified (a signature check for a JWT), a client whose address has
    /// spent a whole budget on refusals is refused at once.
    pub(super) fn address_exhausted(&self, client: IpAddr) -> Result<(), GatewayError> {
        address_exhausted(self.limits.refusals.as_ref(), self.config.rate_limit, client)
    }
}

/// Whether `client`'s address has spent a whole `per_client` budget on refusals (HTTP requests and
/// WebSocket calls alike).
pub(super) fn address_exhausted(
    refusals: Option<&Arc<RateLimiter>>,
    rate_limit: Option<crate::config::RateLimit>,
    client: IpAddr,
) -> Result<(), GatewayError> {
    let (Some(limiter), Some(rl)) = (refusals, rate_limit) else { return Ok(()) };
    match limiter.exhausted(&ClientKey::from_ip(client, rl.ipv6_prefix), rl.limit) {
        None => Ok(()),
        Some(retry_after) => {
            Err(GatewayError::RateLimited { retry_after, limit: rl.limit, policy: LimitPolicy::PerClient })
        }
    }
}
