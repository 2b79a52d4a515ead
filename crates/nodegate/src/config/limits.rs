//! `[rate_limit]`: the per-client limit, the remote-PoW budget, and what routes and keys may add.

use super::{ConfigError, Locator, RateLimit, limit_with, raw};
use crate::pipeline::auth::ApiKey;
use crate::pipeline::rate_limit::Limit;
use crate::pipeline::route_policy::RoutePolicy;

pub(super) fn rate_limit(
    raw_limit: Option<raw::RawRateLimit>,
    routes: &RoutePolicy,
    api_keys: &[ApiKey],
    at: &Locator,
) -> Result<Option<RateLimit>, ConfigError> {
    let rate_limit = match raw_limit {
        None => None,
        Some(r) => {
            if *r.burst.get_ref() == 0 {
                return Err(at.error(r.burst.span(), Some("rate_limit.burst".into()), "must be 1 or more"));
            }
            if *r.ipv6_prefix.get_ref() > 128 {
                return Err(at.error(r.ipv6_prefix.span(), Some("rate_limit.ipv6_prefix".into()), "must be 0 to 128"));
            }
            Some(RateLimit {
                limit: Limit { interval: r.per_client.0, burst: *r.burst.get_ref() },
                ipv6_prefix: *r.ipv6_prefix.get_ref(),
                max_clients: r.max_clients,
                pow: limit_with("pow", "pow_burst", r.pow, r.pow_burst.as_ref(), "rate_limit", at)?,
            })
        }
    };
    if rate_limit.is_none() {
        let limited = routes.rules().iter().any(|r| r.limit.is_some() || r.cost != 1)
            || api_keys.iter().any(|k| k.limit.is_some());
        if limited {
            return Err(at.error(0..0, Some("rate_limit".into()), "route and key limits need a [rate_limit] section"));
        }
    }
    Ok(rate_limit)
}
