//! Configuration: a raw serde model that mirrors the TOML file (unknown keys are errors), validated
//! into the typed model the gateway runs on. Every error names `FILE:LINE:COLUMN` and the key.

mod raw;
pub mod units;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, Scheme};

pub use crate::access_log::LogFormat;
pub use crate::balancer::NodeSettings;
pub use crate::cluster::Cluster;
pub use crate::health::Health;
pub use crate::profile::Profile;
pub use crate::tls::{Acme, AcmeChallenge, CertFiles, ClientAuth, Tls};
pub use crate::upstream::Upstream;

use crate::pipeline::auth::{ApiKey, JwtKey, parse_hash};
use crate::pipeline::canonical_path::canonicalize;
use crate::pipeline::ip_set::IpSet;
use crate::pipeline::rate_limit::Limit;
use crate::pipeline::route_policy::{RoutePolicy, Rule};

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: Gateway,
    pub access: Access,
    /// `[[route]]` rules and the profile's defaults.
    pub routes: RoutePolicy,
    /// `[[api_key]]`: hashes and roles.
    pub api_keys: Vec<ApiKey>,
    /// `[[jwt]]`: trusted token issuers.
    pub jwts: Vec<JwtKey>,
    /// `[rate_limit]`; none when the section is absent.
    pub rate_limit: Option<RateLimit>,
    pub nodes: Vec<NodeSettings>,
    pub upstream: Upstream,
    pub health: Health,
    /// Where `/status` is served; no admin listener when `[admin]` is absent.
    pub admin: Option<SocketAddr>,
    /// `[cluster]`: limits shared with other gateways through Redis.
    pub cluster: Option<Cluster>,
    /// `[tls]`: the listen addresses serve HTTPS.
    pub tls: Option<Tls>,
    pub log: Log,
}

#[derive(Debug, Clone)]
pub struct Gateway {
    pub listen: Vec<SocketAddr>,
    pub profile: Profile,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: IpSet,
    /// The header a trusted proxy names the client in; others are ignored.
    pub client_ip_header: crate::pipeline::identity::ClientIpHeader,
    /// Whether a decoded path may still hold `%XX` (else 400).
    pub allow_encoded_percent: bool,
    /// Listeners that expect a PROXY protocol header before HTTP.
    pub listen_proxy_protocol: Vec<SocketAddr>,
    /// Plain-HTTP listeners that redirect to HTTPS.
    pub listen_http: Vec<SocketAddr>,
    pub max_body: u64,
    pub max_header_size: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    /// Runtime worker threads; 0 = one per core.
    pub workers: usize,
    /// Open client connections at most, over all listeners.
    pub max_connections: usize,
    /// Open connections at most from one address (trusted proxies are exempt).
    pub max_connections_per_client: usize,
    /// Requests in flight at most per client key; 0 = no cap.
    pub max_in_flight_per_client: usize,
    /// Longest gap between two pieces of a request body.
    pub body_timeout: Duration,
    /// Bytes per second a request body must average once `body_timeout` has passed; 0 = any.
    pub min_body_rate: u64,
    /// Bodies up to this size are read whole before a node is chosen.
    pub request_buffer: u64,
    pub h2_max_concurrent_streams: u32,
    /// Longest a response waits for the client to read it.
    pub send_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub limit: Limit,
    pub ipv6_prefix: u8,
    pub max_clients: usize,
    /// Remote proof-of-work budget per client.
    pub pow: Option<Limit>,
}

/// `[access]`: which client addresses may use the gateway at all; deny wins.
#[derive(Debug, Clone, PartialEq)]
pub struct Access {
    pub allow: IpSet,
    pub deny: IpSet,
}

impl Access {
    pub fn permits(&self, client: std::net::IpAddr) -> bool {
        self.allow.contains(client) && !self.deny.contains(client)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub format: LogFormat,
    pub access: bool,
    pub level: String,
}

/// A configuration error with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted key the error is about, when known (`gateway.listen`, `node[1].url`).
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            key: None,
            message: format!("cannot read config file: {e}"),
        })?;
        Config::parse(&src, &file)
    }

    /// Parses and validates config text; `file` is only used in error messages.
    pub fn parse(src: &str, file: &str) -> Result<Config, ConfigError> {
        let locate = Locator { src, file };
        let raw: raw::RawConfig = toml::from_str(src).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            // toml's message can span lines (it repeats the source); the first line is the point.
            let message = e.message().lines().next().unwrap_or("invalid config").to_string();
            locate.error(span.clone(), locate.key_at(span.start), message)
        })?;
        validate(raw, &locate)
    }
}

struct Locator<'a> {
    src: &'a str,
    file: &'a str,
}

impl Locator<'_> {
    fn error(&self, span: Range<usize>, key: Option<String>, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_column(self.src, span.start);
        ConfigError { file: self.file.to_string(), line, column, key, message: message.into() }
    }

    /// The dotted key whose line holds `offset`: the nearest `[table]` header above plus the key on
    /// the line. toml does not expose the key path of an error, the source does.
    fn key_at(&self, offset: usize) -> Option<String> {
        let offset = offset.min(self.src.len());
        let line_start = self.src[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line = self.src[line_start..].lines().next().unwrap_or("");
        let table = self.src[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
        let key =
            line.split_once('=').map(|(k, _)| k.trim().to_string()).filter(|k| !k.is_empty() && !k.starts_with('['));
        match (table, key) {
            (Some(t), Some(k)) => Some(format!("{t}.{k}")),
            (None, Some(k)) => Some(k),
            (_, None) if line.trim().starts_with('[') => {
                Some(line.trim().trim_matches(|c| c == '[' || c == ']').to_string())
            }
            (t, None) => t,
        }
    }
}

impl Locator<'_> {
    /// Where `key` is written: `gateway.header_timeout`, `route[2].burst` (the third `[[route]]`).
    /// For checks made after parsing, on values whose spans serde did not keep; the start of the
    /// file when the key is not written (a default).
    fn place(&self, key: &str) -> Range<usize> {
        let (table, field) = key.rsplit_once('.').unwrap_or(("", key));
        let (table, index) = match table.split_once('[') {
            Some((t, i)) => (t, i.trim_end_matches(']').parse::<usize>().unwrap_or(0)),
            None => (table, 0),
        };
        let (single, array) = (format!("[{table}]"), format!("[[{table}]]"));
        let mut seen = 0;
        let mut inside = false;
        let mut offset = 0;
        for line in self.src.split_inclusive('\n') {
            let t = line.trim();
            if t.starts_with('[') {
                inside = t == single
                    || (t == array && {
                        seen += 1;
                        seen == index + 1
                    });
            } else if inside
                && let Some(rest) = t.strip_prefix(field)
                && rest.trim_start().starts_with('=')
            {
                let at = offset + (line.len() - line.trim_start().len());
                return at..at + field.len();
            }
            offset += line.len();
        }
        0..0
    }

    /// An error at `key`'s place.
    fn at_key(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.error(self.place(key), Some(key.to_string()), message)
    }
}

/// Values that parse but make no sense: a zero timeout (every request would fail at once), probes
/// faster than 100 ms, and limits whose burst window would overflow the limiter's arithmetic.
fn check_bounds(c: &Config, at: &Locator) -> Result<(), ConfigError> {
    let g = &c.gateway;
    let u = &c.upstream;
    for (key, d) in [
        ("gateway.header_timeout", g.header_timeout),
        ("gateway.idle_timeout", g.idle_timeout),
        ("gateway.body_timeout", g.body_timeout),
        ("gateway.send_timeout", g.send_timeout),
        ("upstream.connect_timeout", u.connect_timeout),
        ("upstream.response_timeout", u.response_timeout),
        ("upstream.pool_idle_timeout", u.pool_idle_timeout),
        ("upstream.body_timeout", u.body_timeout),
        ("health.timeout", c.health.timeout),
        ("health.eject_for", c.health.eject_for),
    ] {
        if d.is_zero() {
            return Err(at.at_key(key, "must be above 0 (a zero timeout fails every request at once)"));
        }
    }
    if c.health.interval < Duration::from_millis(100) {
        return Err(at.at_key("health.interval", "must be at least 100ms (probes would flood the nodes)"));
    }
    let mut limits: Vec<(String, Limit)> = Vec::new();
    if let Some(rl) = &c.rate_limit {
        limits.push(("rate_limit.burst".into(), rl.limit));
        limits.extend(rl.pow.map(|l| ("rate_limit.pow_burst".into(), l)));
    }
    limits.extend(c.routes.rules().iter().filter_map(|r| Some((format!("route[{}].burst", r.id), r.limit?))));
    limits.extend(c.api_keys.iter().enumerate().filter_map(|(i, k)| Some((format!("api_key[{i}].burst"), k.limit?))));
    for (key, limit) in limits {
        // The limiter counts in nanoseconds in a u64: a full burst's window must fit, with room.
        if limit.interval.as_nanos() * u128::from(limit.burst) > MAX_LIMIT_WINDOW.as_nanos() {
            return Err(at.at_key(&key, "burst x interval must stay within a year: lower the burst or raise the rate"));
        }
    }
    Ok(())
}

/// The longest a full burst may take to refill.
const MAX_LIMIT_WINDOW: Duration = Duration::from_secs(366 * 86_400);

fn line_column(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..].chars().count() + 1;
    (line, column)
}

fn validate(raw: raw::RawConfig, at: &Locator) -> Result<Config, ConfigError> {
    let g = raw.gateway;
    let mut listen = Vec::new();
    if g.listen.get_ref().is_empty() {
        return Err(at.error(g.listen.span(), Some("gateway.listen".into()), "needs at least one address"));
    }
    for addr in g.listen.get_ref() {
        listen.push(socket_addr(addr, "gateway.listen", at)?);
    }
    let max_header_size = usize::try_from(g.max_header_size.0).unwrap_or(usize::MAX);
    if max_header_size < 1024 {
        return Err(at.error(0..0, Some("gateway.max_header_size".into()), "must be at least 1KiB"));
    }

    if raw.node.is_empty() {
        return Err(at.error(
            0..0,
            Some("node".into()),
            "no [[node]] is configured: add at least one, with `name` and `url` (e.g. \"http://127.0.0.1:14265\")",
        ));
    }
    let mut nodes: Vec<NodeSettings> = Vec::with_capacity(raw.node.len());
    for (i, n) in raw.node.into_iter().enumerate() {
        let key = |field: &str| Some(format!("node[{i}].{field}"));
        let name = n.name.get_ref();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(at.error(
                n.name.span(),
                key("name"),
                format!("`{name}` must be non-empty letters, digits, `-`, `_` or `.`"),
            ));
        }
        if nodes.iter().any(|prev| prev.name == *name) {
            return Err(at.error(
                n.name.span(),
                key("name"),
                format!("duplicate node name `{name}`: each node needs its own"),
            ));
        }
        if *n.weight.get_ref() == 0 {
            return Err(at.error(
                n.weight.span(),
                key("weight"),
                "must be 1 or more (remove the node to stop using it)",
            ));
        }
        let (scheme, authority, base_path) =
            parse_node_url(n.url.get_ref()).map_err(|m| at.error(n.url.span(), key("url"), m))?;
        if *n.max_connections.get_ref() == 0 {
            return Err(at.error(n.max_connections.span(), key("max_connections"), "must be 1 or more"));
        }
        nodes.push(NodeSettings {
            name: name.clone(),
            scheme,
            authority,
            base_path,
            weight: *n.weight.get_ref(),
            pow: n.pow,
            max_connections: *n.max_connections.get_ref(),
        });
    }

    let trusted_proxies = ip_set(&g.trusted_proxies, "gateway.trusted_proxies", at)?;
    let mut listen_proxy_protocol = Vec::new();
    for addr in &g.listen_proxy_protocol {
        let parsed = socket_addr(addr, "gateway.listen_proxy_protocol", at)?;
        if trusted_proxies.is_empty() {
            return Err(at.error(
                addr.span(),
                Some("gateway.listen_proxy_protocol".into()),
                "PROXY headers are only believed from trusted_proxies: name the balancer's addresses there",
            ));
        }
        listen_proxy_protocol.push(parsed);
    }
    let access = Access {
        allow: ip_set(&raw.access.allow, "access.allow", at)?,
        deny: ip_set(&raw.access.deny, "access.deny", at)?,
    };
    let mut rules = Vec::with_capacity(raw.route.len());
    for (i, r) in raw.route.iter().enumerate() {
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
        });
    }
    let routes = RoutePolicy::new(rules, g.profile);
    let mut jwts = Vec::with_capacity(raw.jwt.len());
    for (i, j) in raw.jwt.iter().enumerate() {
        let key = |field: &str| Some(format!("jwt[{i}].{field}"));
        let need = |field: &str, what: Option<&toml::Spanned<String>>| {
            what.cloned().ok_or_else(|| {
                at.error(j.algorithm.span(), key(field), format!("{} needs `{field}`", j.algorithm.get_ref()))
            })
        };
        let (algorithm, decoding) = match j.algorithm.get_ref().as_str() {
            "HS256" => {
                let secret = need("secret", j.secret.as_ref())?;
                if secret.get_ref().len() < 32 {
                    return Err(at.error(secret.span(), key("secret"), "an HS256 secret needs at least 32 bytes"));
                }
                (jsonwebtoken::Algorithm::HS256, jsonwebtoken::DecodingKey::from_secret(secret.get_ref().as_bytes()))
            }
            "EdDSA" => {
                let path = need("public_key", j.public_key.as_ref())?;
                let pem = std::fs::read(path.get_ref()).map_err(|e| {
                    at.error(path.span(), key("public_key"), format!("cannot read `{}`: {e}", path.get_ref()))
                })?;
                let decoding = jsonwebtoken::DecodingKey::from_ed_pem(&pem).map_err(|e| {
                    at.error(
                        path.span(),
                        key("public_key"),
                        format!("`{}` is not an Ed25519 public key in PEM: {e}", path.get_ref()),
                    )
                })?;
                (jsonwebtoken::Algorithm::EdDSA, decoding)
            }
            other => {
                return Err(at.error(
                    j.algorithm.span(),
                    key("algorithm"),
                    format!("`{other}`: use \"HS256\" or \"EdDSA\""),
                ));
            }
        };
        jwts.push(JwtKey::new(
            j.name.get_ref().clone(),
            algorithm,
            decoding,
            j.issuer.as_deref(),
            j.audience.as_deref(),
        ));
    }
    let mut api_keys: Vec<ApiKey> = Vec::with_capacity(raw.api_key.len());
    for (i, k) in raw.api_key.iter().enumerate() {
        let key = |field: &str| Some(format!("api_key[{i}].{field}"));
        let name = k.name.get_ref();
        if name.is_empty() || api_keys.iter().any(|other| other.name == *name) {
            return Err(at.error(k.name.span(), key("name"), format!("`{name}` must be a non-empty name used once")));
        }
        let hash = parse_hash(k.hash.get_ref()).ok_or_else(|| {
            at.error(
                k.hash.span(),
                key("hash"),
                "must be `sha256:` and 64 hex digits, as `nodegate key hash` prints it (never the key itself)",
            )
        })?;
        if k.roles.get_ref().is_empty() {
            return Err(at.error(k.roles.span(), key("roles"), "needs at least one role: \"key\" or \"admin\""));
        }
        let limit = limit(k.rate, k.burst.as_ref(), &format!("api_key[{i}]"), at)?;
        api_keys.push(ApiKey { name: name.clone(), hash, roles: k.roles.get_ref().clone(), limit });
    }
    // One name, one client: a token issuer named like an API key (or like another issuer) would
    // read as the same client in logs, events and limits.
    for (i, j) in raw.jwt.iter().enumerate() {
        let name = j.name.get_ref();
        let clash = if api_keys.iter().any(|k| k.name == *name) {
            Some("an [[api_key]]")
        } else if raw.jwt[..i].iter().any(|o| o.name.get_ref() == name) {
            Some("another [[jwt]]")
        } else {
            None
        };
        if let Some(other) = clash {
            return Err(at.error(
                j.name.span(),
                Some(format!("jwt[{i}].name")),
                format!("`{name}` is also the name of {other}: give each credential its own"),
            ));
        }
    }
    let rate_limit = match raw.rate_limit {
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
    let cluster = match raw.cluster {
        None => None,
        Some(c) => {
            let url = c.redis.get_ref();
            if let Err(e) = redis::Client::open(url.as_str()) {
                return Err(at.error(c.redis.span(), Some("cluster.redis".into()), format!("`{url}`: {e}")));
            }
            if c.sync_interval.get_ref().0.is_zero() {
                return Err(at.error(c.sync_interval.span(), Some("cluster.sync_interval".into()), "must be above 0"));
            }
            Some(Cluster { redis: url.clone(), sync_interval: c.sync_interval.get_ref().0, key_prefix: c.key_prefix })
        }
    };
    let tls = match raw.tls {
        None => None,
        Some(t) => Some(tls_section(t, at)?),
    };
    let mut listen_http = Vec::new();
    for addr in &g.listen_http {
        if tls.is_none() {
            return Err(at.error(
                addr.span(),
                Some("gateway.listen_http".into()),
                "redirects to HTTPS: it needs a [tls] section",
            ));
        }
        listen_http.push(socket_addr(addr, "gateway.listen_http", at)?);
    }
    if listen_http.is_empty()
        && tls.as_ref().and_then(|t| t.acme.as_ref()).is_some_and(|a| a.challenge == AcmeChallenge::Http01)
    {
        return Err(at.error(
            0..0,
            Some("tls.acme.challenge".into()),
            "http-01 is answered on [gateway] listen_http (port 80 for a public CA): add it, or use \"tls-alpn-01\"",
        ));
    }
    let h = raw.health;
    for (key, v) in [
        ("health.healthy_threshold", h.healthy_threshold),
        ("health.unhealthy_threshold", h.unhealthy_threshold),
        ("health.eject_after", h.eject_after),
    ] {
        if v == 0 {
            return Err(at.error(0..0, Some(key.into()), "must be 1 or more"));
        }
    }
    if !h.path.starts_with('/') {
        return Err(at.error(0..0, Some("health.path".into()), format!("`{}` must start with /", h.path)));
    }
    let admin = match raw.admin {
        None => None,
        Some(a) => Some(socket_addr(&a.listen, "admin.listen", at)?),
    };
    let u = raw.upstream;
    let upstream_tls = if nodes.iter().any(|n| n.scheme == Scheme::HTTPS) || u.ca.is_some() {
        let ca = u.ca.as_ref();
        Some(
            crate::upstream::TlsClient::new(ca.map(|c| std::path::Path::new(c.get_ref().as_str())))
                .map_err(|e| at.error(ca.map_or(0..0, |c| c.span()), Some("upstream.ca".into()), e))?,
        )
    } else {
        None
    };
    let config = Config {
        access,
        routes,
        api_keys,
        jwts,
        rate_limit,
        cluster,
        tls,
        health: Health {
            active: h.active,
            interval: h.interval.0,
            timeout: h.timeout.0,
            max_milestone_lag: h.max_milestone_lag,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
            path: h.path,
            eject_after: h.eject_after,
            eject_for: h.eject_for.0,
        },
        admin,
        gateway: Gateway {
            listen,
            profile: g.profile,
            trusted_proxies,
            client_ip_header: g.client_ip_header,
            allow_encoded_percent: g.allow_encoded_percent,
            listen_proxy_protocol,
            listen_http,
            max_body: g.max_body.0,
            max_header_size,
            header_timeout: g.header_timeout.0,
            idle_timeout: g.idle_timeout.0,
            drain_timeout: g.drain_timeout.0,
            workers: g.workers,
            max_connections: g.max_connections.max(1),
            max_connections_per_client: g.max_connections_per_client.max(1),
            max_in_flight_per_client: g.max_in_flight_per_client,
            body_timeout: g.body_timeout.0,
            min_body_rate: g.min_body_rate.0,
            request_buffer: g.request_buffer.0,
            h2_max_concurrent_streams: g.h2_max_concurrent_streams.max(1),
            send_timeout: g.send_timeout.0,
        },
        nodes,
        upstream: Upstream {
            connect_timeout: u.connect_timeout.0,
            response_timeout: u.response_timeout.0,
            pool_idle_timeout: u.pool_idle_timeout.0,
            pool_max_idle_per_node: u.pool_max_idle_per_node,
            body_timeout: u.body_timeout.0,
            queue_timeout: u.queue_timeout.0,
            tls: upstream_tls,
        },
        log: Log { format: raw.log.format, access: raw.log.access, level: raw.log.level },
    };
    check_bounds(&config, at)?;
    Ok(config)
}

fn tls_section(t: raw::RawTls, at: &Locator) -> Result<Tls, ConfigError> {
    let mut certs = Vec::new();
    let acme = match &t.acme {
        None => None,
        Some(a) => Some(acme_section(a, at)?),
    };
    let Some(c) = &t.cert else {
        if acme.is_none() {
            return Err(at.error(0..0, Some("tls.cert".into()), "needs `cert` and `key` (PEM files), or [tls.acme]"));
        }
        return Ok(Tls {
            certs,
            hsts: hsts(&t, at)?,
            reload_interval: t.reload_interval.0.max(Duration::from_millis(100)),
            client_auth: client_auth(t.client_auth, at)?,
            acme,
        });
    };
    let span = c.span();
    let check = |cert: &str, key: &str, names: Vec<String>, k: &str| {
        let files = CertFiles { cert: cert.into(), key: key.into(), names };
        crate::tls::load_pair(&files.cert, &files.key).map_err(|e| at.error(span.clone(), Some(k.into()), e))?;
        Ok::<_, ConfigError>(files)
    };
    match c.get_ref() {
        toml::Value::String(path) => {
            let Some(key) = &t.key else {
                return Err(at.error(span, Some("tls.key".into()), "needs `key` beside `cert`"));
            };
            certs.push(check(path, key.get_ref(), Vec::new(), "tls.cert")?);
        }
        toml::Value::Array(list) if !list.is_empty() => {
            if let Some(key) = &t.key {
                return Err(at.error(key.span(), Some("tls.key".into()), "with [[tls.cert]], each has its own `key`"));
            }
            for (i, one) in list.iter().enumerate() {
                let one: raw::RawTlsCert = one.clone().try_into().map_err(|e: toml::de::Error| {
                    at.error(span.clone(), Some(format!("tls.cert[{i}]")), e.message().to_owned())
                })?;
                certs.push(check(&one.cert, &one.key, one.names, &format!("tls.cert[{i}].cert"))?);
            }
        }
        _ => {
            return Err(at.error(
                span,
                Some("tls.cert".into()),
                "a PEM file (with `key` beside it), or [[tls.cert]] tables with `cert` and `key`",
            ));
        }
    }
    Ok(Tls {
        certs,
        hsts: hsts(&t, at)?,
        reload_interval: t.reload_interval.0.max(Duration::from_millis(100)),
        client_auth: client_auth(t.client_auth, at)?,
        acme,
    })
}

fn hsts(t: &raw::RawTls, at: &Locator) -> Result<Option<http::HeaderValue>, ConfigError> {
    let Some(v) = &t.hsts else { return Ok(None) };
    http::HeaderValue::from_str(v.get_ref()).ok().filter(|_| v.get_ref().starts_with("max-age=")).map(Some).ok_or_else(
        || at.error(v.span(), Some("tls.hsts".into()), "write it as \"max-age=<seconds>[; includeSubDomains]\""),
    )
}

fn client_auth(c: Option<raw::RawClientAuth>, at: &Locator) -> Result<Option<ClientAuth>, ConfigError> {
    let Some(c) = c else { return Ok(None) };
    crate::tls::load_roots(c.ca.get_ref().as_ref())
        .map_err(|e| at.error(c.ca.span(), Some("tls.client_auth.ca".into()), e))?;
    let mut listen = Vec::new();
    for addr in c.listen.get_ref() {
        listen.push(socket_addr(addr, "tls.client_auth.listen", at)?);
    }
    if listen.is_empty() {
        return Err(at.error(c.listen.span(), Some("tls.client_auth.listen".into()), "needs at least one address"));
    }
    Ok(Some(ClientAuth { ca: c.ca.get_ref().into(), listen, required: c.required, roles: c.roles }))
}

fn acme_section(a: &raw::RawAcme, at: &Locator) -> Result<Acme, ConfigError> {
    let domains: Vec<String> = a.domains.get_ref().iter().map(|d| d.trim().to_ascii_lowercase()).collect();
    if domains.is_empty() {
        return Err(at.error(a.domains.span(), Some("tls.acme.domains".into()), "needs at least one domain"));
    }
    for d in &domains {
        let ok = !d.is_empty()
            && d.len() <= 253
            && d.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !ok {
            return Err(at.error(
                a.domains.span(),
                Some("tls.acme.domains".into()),
                format!("`{d}` is not a domain name"),
            ));
        }
    }
    let directory = a.directory.get_ref();
    if !directory.starts_with("https://") {
        return Err(at.error(a.directory.span(), Some("tls.acme.directory".into()), "must be an https:// URL"));
    }
    if let Some(ca) = &a.directory_ca {
        crate::tls::load_roots(ca.get_ref().as_ref())
            .map_err(|e| at.error(ca.span(), Some("tls.acme.directory_ca".into()), e))?;
    }
    Ok(Acme {
        domains,
        email: a.email.clone(),
        directory: directory.clone(),
        state_dir: a.state_dir.get_ref().into(),
        challenge: a.challenge,
        directory_ca: a.directory_ca.as_ref().map(|c| c.get_ref().into()),
        renew_before: a.renew_before.0,
    })
}

/// A `rate` and `burst` pair; the burst defaults to one second's worth of the rate (at least 1).
fn limit(
    rate: Option<units::Rate>,
    burst: Option<&toml::Spanned<u32>>,
    table: &str,
    at: &Locator,
) -> Result<Option<Limit>, ConfigError> {
    limit_with("rate", "burst", rate, burst, table, at)
}

fn limit_with(
    rate_key: &str,
    burst_key: &str,
    rate: Option<units::Rate>,
    burst: Option<&toml::Spanned<u32>>,
    table: &str,
    at: &Locator,
) -> Result<Option<Limit>, ConfigError> {
    match (rate, burst) {
        (None, None) => Ok(None),
        (None, Some(b)) => {
            Err(at.error(b.span(), Some(format!("{table}.{burst_key}")), format!("needs `{rate_key}` beside it")))
        }
        (Some(_), Some(b)) if *b.get_ref() == 0 => {
            Err(at.error(b.span(), Some(format!("{table}.{burst_key}")), "must be 1 or more"))
        }
        (Some(r), b) => {
            let per_second = (Duration::from_secs(1).as_nanos() / r.0.as_nanos().max(1)).max(1);
            let burst = b.map_or(u32::try_from(per_second).unwrap_or(u32::MAX), |b| *b.get_ref());
            Ok(Some(Limit { interval: r.0, burst }))
        }
    }
}

/// A listen address, its error at its own place.
fn socket_addr(item: &toml::Spanned<String>, key: &str, at: &Locator) -> Result<SocketAddr, ConfigError> {
    item.get_ref().parse::<SocketAddr>().map_err(|_| {
        at.error(
            item.span(),
            Some(key.into()),
            format!("`{}` is not an address:port (e.g. \"0.0.0.0:8080\" or \"[::]:8080\")", item.get_ref()),
        )
    })
}

/// CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or single addresses, each error at its own place.
fn ip_set(items: &[toml::Spanned<String>], key: &str, at: &Locator) -> Result<IpSet, ConfigError> {
    let mut nets = Vec::with_capacity(items.len());
    for item in items {
        let text = item.get_ref().trim();
        let net = text
            .parse::<ipnet::IpNet>()
            .map(|n| n.trunc())
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                at.error(
                    item.span(),
                    Some(key.into()),
                    format!("`{text}` is not an IP address or CIDR (e.g. \"10.0.0.0/8\")"),
                )
            })?;
        nets.push(net);
    }
    Ok(IpSet::new(&nets))
}

fn parse_node_url(url: &str) -> Result<(Scheme, Authority, String), String> {
    let uri: Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let scheme = uri.scheme().cloned().ok_or_else(|| format!("`{url}` needs a scheme: http://host:port"))?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(format!("`{url}`: node URLs are http:// or https://"));
    }
    let authority = uri.authority().cloned().ok_or_else(|| format!("`{url}` needs a host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("`{url}`: credentials in node URLs are not allowed"));
    }
    if authority.host().is_empty() {
        return Err(format!("`{url}` needs a host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}`: a node URL cannot have a query string"));
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok((scheme, authority, base_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("[[node]]\nname = \"a\"\nurl = \"http://127.0.0.1:14265\"\n", "t.toml").unwrap();
        assert_eq!(c.gateway.listen, vec!["0.0.0.0:8080".parse().unwrap()]);
        assert_eq!(c.gateway.max_body, 1 << 20);
        assert_eq!(c.nodes[0].authority.as_str(), "127.0.0.1:14265");
        assert_eq!(c.nodes[0].base_path, "");
        assert_eq!(c.nodes[0].weight, 1);
        assert!(c.log.access);
    }

    #[test]
    fn values_that_make_no_sense_are_refused_at_their_place() {
        let node = "\n[[node]]\nname = \"a\"\nurl = \"http://127.0.0.1:14265\"\n";
        for (text, key, line) in [
            ("[gateway]\nheader_timeout = \"0s\"\n", "gateway.header_timeout", 2),
            ("[gateway]\nlisten = [\"127.0.0.1:1\"]\nsend_timeout = \"0ms\"\n", "gateway.send_timeout", 3),
            ("[upstream]\nresponse_timeout = \"0s\"\n", "upstream.response_timeout", 2),
            ("[health]\ninterval = \"50ms\"\n", "health.interval", 2),
            ("[rate_limit]\nper_client = \"1/h\"\nburst = 4000000000\n", "rate_limit.burst", 3),
            (
                "[rate_limit]\nper_client = \"1/s\"\nburst = 1\n\n[[route]]\npath = \"/a\"\naccess = \"public\"\n\n[[route]]\npath = \"/b\"\naccess = \"public\"\nrate = \"1/h\"\nburst = 100000\n",
                "route[1].burst",
                13,
            ),
        ] {
            let e = Config::parse(&format!("{text}{node}"), "t.toml").unwrap_err();
            assert_eq!((e.key.as_deref(), e.line), (Some(key), line), "{e}");
        }
        // At the edges: allowed.
        let ok = "[health]\ninterval = \"100ms\"\n\n[rate_limit]\nper_client = \"1/h\"\nburst = 8000\n";
        Config::parse(&format!("{ok}{node}"), "t.toml").unwrap();
    }

    #[test]
    fn a_name_is_one_credential_across_kinds() {
        let node = "\n[[node]]\nname = \"a\"\nurl = \"http://127.0.0.1:14265\"\n";
        let key = format!(
            "[[api_key]]\nname = \"wallet\"\nhash = \"{}\"\nroles = [\"key\"]\n",
            crate::pipeline::auth::hash("x")
        );
        let jwt = |name: &str| {
            format!(
                "\n[[jwt]]\nname = \"{name}\"\nalgorithm = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n"
            )
        };
        let e = Config::parse(&format!("{key}{}{node}", jwt("wallet")), "t.toml").unwrap_err();
        assert_eq!((e.key.as_deref(), e.line), (Some("jwt[0].name"), 7), "{e}");
        assert!(e.message.contains("[[api_key]]"), "{e}");
        let e = Config::parse(&format!("{key}{}{}{node}", jwt("issuer"), jwt("issuer")), "t.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("jwt[1].name"), "{e}");
        Config::parse(&format!("{key}{}{node}", jwt("issuer")), "t.toml").unwrap();
    }

    #[test]
    fn line_columns_are_one_based() {
        assert_eq!(line_column("a\nbc\n", 0), (1, 1));
        assert_eq!(line_column("a\nbc\n", 3), (2, 2));
    }
}
