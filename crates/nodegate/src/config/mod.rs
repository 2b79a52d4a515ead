//! Configuration: a raw serde model that mirrors the TOML file (unknown keys are errors), validated
//! into the typed model the gateway runs on. Every error names `FILE:LINE:COLUMN` and the key.

mod bans;
mod credentials;
mod firewall;
mod limits;
mod nodes;
mod raw;
mod routes;
mod tls;
pub mod units;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

pub use crate::access_log::LogFormat;
pub use crate::balancer::NodeSettings;
pub use crate::cluster::Cluster;
pub use crate::health::Health;
pub use crate::profile::Profile;
pub use crate::tls::{Acme, AcmeChallenge, CertFiles, ClientAuth, Tls};
pub use crate::upstream::Upstream;
pub use firewall::{FirewallSettings, PortRange};

use crate::pipeline::auth::{ApiKey, JwtKey};
use crate::pipeline::ip_set::IpSet;
use crate::pipeline::rate_limit::Limit;
use crate::pipeline::route_policy::RoutePolicy;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewaySettings,
    pub access: AddressFilter,
    /// `[[route]]` rules and the profile's defaults.
    pub routes: RoutePolicy,
    /// `[[method]]` and the profile's JSON-RPC method defaults.
    pub methods: crate::pipeline::methods::MethodPolicy,
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
    /// `[firewall]`: what `nodegate firewall` keeps open.
    pub firewall: FirewallSettings,
    /// `[bans]` with its `[[jail]]`s; none without a `[[jail]]`.
    pub bans: Option<crate::bans::engine::Bans>,
    /// The file this was read from (`Config::load`), which a reload reads again.
    pub source: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone)]
/// `[gateway]`: listeners, the client's identity, and the per-connection guards.
pub struct GatewaySettings {
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
    /// JSON-RPC batches: calls a batch may hold (iota-rebased refuses batches whatever this says).
    pub max_batch: usize,
    /// evm: the widest block range an `eth_getLogs` may ask for.
    pub max_logs_range: u64,
    /// JSON-RPC over WebSocket: live subscriptions a client may hold.
    pub max_subscriptions_per_client: u32,
    /// gRPC: server streams (`Stream*`, `Subscribe*` methods) a client may hold open.
    pub max_streams_per_client: usize,
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
pub struct AddressFilter {
    pub allow: IpSet,
    pub deny: IpSet,
}

impl AddressFilter {
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
        let mut config = Config::parse(&src, &file)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
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

    let nodes = nodes::nodes(raw.node, at)?;
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
    let access = AddressFilter {
        allow: ip_set(&raw.access.allow, "access.allow", at)?,
        deny: ip_set(&raw.access.deny, "access.deny", at)?,
    };
    let routes = routes::routes(&raw.route, g.profile, at)?;
    let methods = routes::methods(&raw.method, g.profile, at)?;
    let jwts = credentials::jwts(&raw.jwt, at)?;
    let api_keys = credentials::api_keys(&raw.api_key, &raw.jwt, at)?;
    let rate_limit = limits::rate_limit(raw.rate_limit, &routes, &api_keys, at)?;
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
        Some(t) => Some(tls::tls_section(t, at)?),
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
    let health = nodes::health(raw.health, at)?;
    let admin = match raw.admin {
        None => None,
        Some(a) => Some(socket_addr(&a.listen, "admin.listen", at)?),
    };
    let upstream = nodes::upstream(raw.upstream, at)?;
    let bans = bans::bans(raw.bans, raw.jail, at)?;
    let firewall = firewall::firewall(raw.firewall, at)?;
    let config = Config {
        source: None,
        firewall,
        access,
        routes,
        methods,
        api_keys,
        jwts,
        rate_limit,
        cluster,
        tls,
        health,
        admin,
        gateway: GatewaySettings {
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
            max_batch: g.max_batch,
            max_logs_range: g.max_logs_range,
            max_subscriptions_per_client: g.max_subscriptions_per_client,
            max_streams_per_client: g.max_streams_per_client.max(1),
            h2_max_concurrent_streams: g.h2_max_concurrent_streams.max(1),
            send_timeout: g.send_timeout.0,
        },
        nodes,
        upstream,
        log: Log { format: raw.log.format, access: raw.log.access, level: raw.log.level },
        bans,
    };
    // Off loopback the admin API takes admin credentials only: without any it could never be used.
    if let Some(a) = config.admin
        && !a.ip().to_canonical().is_loopback()
        && config.jwts.is_empty()
        && !config.api_keys.iter().any(|k| k.roles.contains(&crate::pipeline::auth::Role::Admin))
    {
        return Err(at.error(
            at.place("admin.listen"),
            Some("admin.listen".into()),
            format!("{a} is not loopback, so the admin API needs an `admin` credential: add an [[api_key]] with roles = [\"admin\"] (or a [[jwt]] issuer), or listen on 127.0.0.1"),
        ));
    }
    // A directive tracing would skip in silence (and log nothing it was meant to) is an error here.
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        return Err(at.error(
            at.place("log.level"),
            Some("log.level".into()),
            format!("not a log level or filter: {e}"),
        ));
    }
    check_bounds(&config, at)?;
    Ok(config)
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
