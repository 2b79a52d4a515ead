//! The request flow's checks, one file each (shared/design.md): identity, ip_filter, route_policy,
//! auth, rate_limit. Issue 5 builds them; `canonical_path` comes first, because every route
//! decision is made on its output.

pub mod auth;
pub mod canonical_path;
pub mod identity;
pub mod in_flight;
pub mod ip_set;
pub mod jsonrpc;
pub mod jsonscan;
pub mod methods;
pub mod rate_limit;
pub mod route_policy;
