//! Route policy on the canonical path: `[[route]]` rules first (first match wins), then the node
//! profile's defaults, then deny. Patterns are exact (`/api/v1/info`) or a prefix ending in `*`
//! (`/api/v1/messages*`), matched against the whole canonical path: no query string, nothing
//! unanchored, so `/api/v1/peers?x=/health` is `/api/v1/peers` and nothing else.

use std::net::IpAddr;

use http::Method;
use serde::Deserialize;

use super::ip_set::IpSet;

use crate::profile::Profile;

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Public,
    /// Any valid credential (API key or JWT with the `key` role).
    Key,
    /// A credential with the `admin` role.
    Admin,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub pattern: String,
    /// `None` matches every method.
    pub methods: Option<Vec<Method>>,
    pub access: Access,
    /// Addresses this route admits on top of `[access]`: `None` admits everyone `[access]` does.
    pub allow: Option<IpSet>,
    pub deny: IpSet,
    /// Send the client's credential on to the node (normally it is removed).
    pub pass_credential: bool,
    /// Position among the configured rules, naming its own limiter; `usize::MAX` for defaults.
    pub id: usize,
    /// This route's own per-client limit.
    pub limit: Option<super::rate_limit::Limit>,
    /// What a request here counts as against the per-client limit.
    pub cost: u32,
    /// JSON-RPC: the body's method decides access and cost (`[[method]]`), not this rule alone.
    pub jsonrpc: bool,
    /// gRPC: the path (`/package.Service/Method`) is the method `[[method]]` rules judge; the node
    /// is spoken to over HTTP/2.
    pub grpc: bool,
}

impl Rule {
    pub fn new(pattern: &str, access: Access) -> Rule {
        Rule {
            pattern: pattern.to_owned(),
            methods: None,
            access,
            allow: None,
            deny: IpSet::default(),
            pass_credential: false,
            id: usize::MAX,
            limit: None,
            cost: 1,
            jsonrpc: false,
            grpc: false,
        }
    }

    /// Whether the route's own address lists admit `client`.
    pub fn admits(&self, client: IpAddr) -> bool {
        self.allow.as_ref().is_none_or(|a| a.contains(client)) && !self.deny.contains(client)
    }
}

impl Rule {
    fn matches(&self, method: &Method, path: &str) -> bool {
        let path_ok = match self.pattern.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == self.pattern,
        };
        path_ok && self.methods.as_ref().is_none_or(|m| m.contains(method))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    rules: Vec<Rule>,
    defaults: Vec<Rule>,
}

impl RoutePolicy {
    pub fn new(rules: Vec<Rule>, profile: Profile) -> RoutePolicy {
        RoutePolicy { rules, defaults: defaults(profile) }
    }

    /// The configured rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The first rule that matches, configured ones before the profile's; `None` means deny.
    pub fn decide(&self, method: &Method, canonical_path: &str) -> Option<&Rule> {
        self.rules.iter().chain(&self.defaults).find(|r| r.matches(method, canonical_path))
    }
}

/// The nodes' own default public and protected routes (shared/design.md, node profiles).
fn defaults(profile: Profile) -> Vec<Rule> {
    let (public, admin): (&[&str], &[&str]) = match profile {
        Profile::IotaChrysalis => (
            &[
                "/health",
                "/api/v1/info",
                "/api/v1/tips",
                "/api/v1/messages*",
                "/api/v1/outputs*",
                "/api/v1/addresses*",
                "/api/v1/receipts*",
                "/api/v1/treasury",
                "/api/v1/transactions*",
                "/api/v1/milestones*",
                "/mqtt",
            ],
            &["/api/v1/peers*", "/api/v1/control/*", "/api/plugins/*"],
        ),
        Profile::IotaStardust => (
            &[
                "/health",
                "/api/core/v2/info",
                "/api/core/v2/tips",
                "/api/core/v2/blocks*",
                "/api/core/v2/outputs*",
                "/api/core/v2/receipts*",
                "/api/core/v2/treasury",
                "/api/core/v2/transactions*",
                "/api/core/v2/milestones*",
                "/api/indexer/v1/*",
                "/api/mqtt/v1",
            ],
            &["/api/core/v2/peers*", "/api/core/v2/control/*", "/api/plugins/*"],
        ),
        Profile::IotaRebased | Profile::Evm => {
            // Every call is a POST of JSON-RPC: the method policy decides (`pipeline::methods`).
            let (paths, ws): (&[&str], &str) = if profile == Profile::Evm {
                (&["/v1/chain/evm"], "/v1/chain/evm/ws")
            } else {
                (&["/", "/json-rpc", "/public"], "/subscribe")
            };
            let rpc =
                |p: &str, m: Method| Rule { methods: Some(vec![m]), jsonrpc: true, ..Rule::new(p, Access::Public) };
            // The WebSocket endpoint: each message is judged as a POST's body would be.
            let mut rules: Vec<Rule> =
                paths.iter().map(|p| rpc(p, Method::POST)).chain([rpc(ws, Method::GET)]).collect();
            if profile == Profile::IotaRebased {
                // iota-node's gRPC services.
                rules.push(Rule {
                    methods: Some(vec![Method::POST]),
                    grpc: true,
                    ..Rule::new("/iota.grpc.*", Access::Public)
                });
            }
            return rules;
        }
        Profile::Generic => (&[], &[]),
    };
    let rule = |access| move |p: &&str| Rule::new(p, access);
    public.iter().map(rule(Access::Public)).chain(admin.iter().map(rule(Access::Admin))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chrysalis_defaults() {
        let p = RoutePolicy::new(vec![], Profile::IotaChrysalis);
        let get = |path| p.decide(&Method::GET, path).map_or(Access::Deny, |r| r.access);
        assert_eq!(get("/api/v1/info"), Access::Public);
        assert_eq!(get("/api/v1/messages/abc/metadata"), Access::Public);
        assert_eq!(get("/api/v1/peers"), Access::Admin);
        assert_eq!(get("/api/v1/peers/12D3"), Access::Admin);
        assert_eq!(get("/api/v1/info/"), Access::Deny, "exact patterns are exact");
        assert_eq!(get("/API/V1/INFO"), Access::Deny);
        assert_eq!(get("/debug/headers"), Access::Deny);
        assert_eq!(get("/"), Access::Deny);
    }

    #[test]
    fn rules_come_first_and_can_name_methods() {
        let rules = vec![
            Rule { methods: Some(vec![Method::POST]), ..Rule::new("/api/v1/messages", Access::Key) },
            Rule::new("/api/v1/peers*", Access::Deny),
            Rule::new("/debug/*", Access::Public),
        ];
        let p = RoutePolicy::new(rules, Profile::IotaChrysalis);
        let decide = |m, path| p.decide(&m, path).map_or(Access::Deny, |r| r.access);
        assert_eq!(decide(Method::POST, "/api/v1/messages"), Access::Key);
        assert_eq!(decide(Method::GET, "/api/v1/messages"), Access::Public, "falls through to the profile");
        assert_eq!(decide(Method::GET, "/api/v1/peers"), Access::Deny);
        assert_eq!(decide(Method::GET, "/debug/headers"), Access::Public);
    }

    #[test]
    fn generic_exposes_only_what_is_configured() {
        let p = RoutePolicy::new(vec![], Profile::Generic);
        assert!(p.decide(&Method::GET, "/health").is_none());
    }
}
