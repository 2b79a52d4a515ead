//! `[[route]]`: rules on the canonical path, before the node profile's defaults.

use super::{ConfigError, Locator, ip_set, limit, raw};
use crate::pipeline::canonical_path::canonicalize;
use crate::pipeline::methods::{MethodPolicy, MethodRule};
use crate::pipeline::route_policy::{RoutePolicy, Rule};
use crate::profile::Profile;

pub(super) fn routes(raw_routes: &[raw::RawRoute], profile: Profile, at: &Locator) -> Result<RoutePolicy, ConfigError> {
    let mut rules = Vec::with_capacity(raw_routes.len());
    for (i, r) in raw_routes.iter().enumerate() {
        let key = |field: &str| Some(format!("route[{i}].{field}"));
        let pattern = r.path.get_ref();
        let prefix = pattern.strip_suffix('*').unwrap_or(pattern);
        if prefix.contains('*') {
            return Err(at.error(r.path.span(), key("path"), format!("`{pattern}`: `*` may only end a pattern")));
        }
        let canonical =
            canonicalize(prefix).map_err(|e| at.error(r.path.span(), key("path"), format!("`{pattern}`: {e}")))?;
        // A pattern is matched against canonical paths, so one in any other form would never match.
        if canonical.decoded != prefix {
            return Err(at.error(
                r.path.span(),
                key("path"),
                format!(
                    "`{pattern}` is not in canonical form; write `{}{}`",
                    canonical.decoded,
                    if pattern.ends_with('*') { "*" } else { "" }
                ),
            ));
        }
        let methods = match &r.methods {
            None => None,
            Some(ms) => Some(
                ms.iter()
                    .map(|m| {
                        let name = m.get_ref();
                        http::Method::from_bytes(name.as_bytes())
                            .ok()
                            .filter(|_| name.bytes().all(|b| b.is_ascii_uppercase()))
                            .ok_or_else(|| {
                                at.error(
                                    m.span(),
                                    key("methods"),
                                    format!("`{name}` is not an HTTP method (e.g. \"GET\")"),
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let allow = match &r.allow {
            Some(list) => Some(ip_set(list, &format!("route[{i}].allow"), at)?),
            None => None,
        };
        let deny = ip_set(&r.deny, &format!("route[{i}].deny"), at)?;
        let limit = limit(r.rate, r.burst.as_ref(), &format!("route[{i}]"), at)?;
        let cost = match &r.cost {
            None => 1,
            Some(c) if *c.get_ref() == 0 => return Err(at.error(c.span(), key("cost"), "must be 1 or more")),
            Some(c) => *c.get_ref(),
        };
        rules.push(Rule {
            id: i,
            limit,
            cost,
            pattern: pattern.clone(),
            methods,
            access: r.access,
            allow,
            deny,
            pass_credential: r.pass_credential,
            jsonrpc: r.jsonrpc,
            grpc: r.grpc,
        });
    }
    let routes = RoutePolicy::new(rules, profile);
    Ok(routes)
}

/// `[[method]]`: JSON-RPC method rules, before the profile's defaults.
pub(super) fn methods(raw: &[raw::RawMethod], profile: Profile, at: &Locator) -> Result<MethodPolicy, ConfigError> {
    let mut rules = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let key = |field: &str| Some(format!("method[{i}].{field}"));
        let name = m.name.get_ref();
        let prefix = name.strip_suffix('*').unwrap_or(name);
        if prefix.contains('*') || name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(at.error(
                m.name.span(),
                key("name"),
                format!("`{name}`: a method name, or a prefix ending in `*`"),
            ));
        }
        let cost = match &m.cost {
            None => 1,
            Some(c) if *c.get_ref() == 0 => return Err(at.error(c.span(), key("cost"), "must be 1 or more")),
            Some(c) => *c.get_ref(),
        };
        let limit = limit(m.rate, m.burst.as_ref(), &format!("method[{i}]"), at)?;
        rules.push(MethodRule { pattern: name.clone(), access: m.access, cost, limit, limiter: None });
    }
    Ok(MethodPolicy::new(rules, profile))
}
