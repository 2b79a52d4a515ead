//! The TOML file as written. `deny_unknown_fields` everywhere: a typo is an error, not a silent default.

use serde::Deserialize;
use toml::Spanned;

use super::units::{Dur, Size};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub gateway: RawGateway,
    #[serde(default)]
    pub node: Vec<RawNode>,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub health: RawHealth,
    #[serde(default)]
    pub access: RawAccess,
    #[serde(default)]
    pub route: Vec<RawRoute>,
    #[serde(default)]
    pub method: Vec<RawMethod>,
    #[serde(default)]
    pub api_key: Vec<RawApiKey>,
    #[serde(default)]
    pub jwt: Vec<RawJwt>,
    pub rate_limit: Option<RawRateLimit>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub firewall: Option<RawFirewall>,
    pub cluster: Option<RawCluster>,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub log: RawLog,
    pub bans: Option<RawBans>,
    #[serde(default)]
    pub jail: Vec<RawJail>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBans {
    /// Where bans and their history are kept.
    pub state_dir: Option<Spanned<String>>,
    /// Never banned.
    #[serde(default)]
    pub ignore: Vec<Spanned<String>>,
    /// "nftables" or "none" (bans are enforced in the gateway only).
    #[serde(default)]
    pub firewall: Option<Spanned<String>>,
    #[serde(default = "one_min")]
    pub verify_interval: Dur,
    /// Never ban the peer of an established connection to `ssh_ports`.
    #[serde(default = "yes")]
    pub protect_sessions: bool,
    #[serde(default = "ssh_ports")]
    pub ssh_ports: Vec<u16>,
}

fn one_min() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}

fn one_hour() -> Dur {
    Dur(std::time::Duration::from_secs(3600))
}

fn ssh_ports() -> Vec<u16> {
    vec![22]
}

fn three() -> Spanned<u32> {
    Spanned::new(0..0, 3)
}

fn prefix64() -> Spanned<u8> {
    Spanned::new(0..0, 64)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJail {
    pub name: Spanned<String>,
    pub source: Spanned<String>,
    pub log: Option<Spanned<String>>,
    pub journal: Option<Spanned<String>>,
    /// Read the journal files in this directory (`journalctl --directory`) instead of the system's.
    pub journal_directory: Option<Spanned<String>>,
    #[serde(default)]
    pub mode: crate::bans::sshd::Mode,
    #[serde(default = "five")]
    pub maxretry: Spanned<u32>,
    #[serde(default = "ten_min")]
    pub findtime: Dur,
    #[serde(default = "ten_min")]
    pub bantime: Dur,
    #[serde(default)]
    pub increment: bool,
    #[serde(default = "one_week")]
    pub max_bantime: Dur,
    /// Gateway jails: which refusals count (all when absent).
    pub reasons: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default = "one_hour")]
    pub blind_after: Dur,
    #[serde(default = "three")]
    pub escalate_after: Spanned<u32>,
    /// What one IPv6 ban covers: 128 (the address) or 64 (its /64).
    #[serde(default = "prefix64")]
    pub ipv6_prefix: Spanned<u8>,
    /// Addresses with failures (and networks with bans) a jail keeps at most.
    #[serde(default = "jail_max_tracked")]
    pub max_tracked: Spanned<usize>,
}

fn jail_max_tracked() -> Spanned<usize> {
    Spanned::new(0..0, 100_000)
}

fn five() -> Spanned<u32> {
    Spanned::new(0..0, 5)
}

fn ten_min() -> Dur {
    Dur(std::time::Duration::from_secs(600))
}

fn one_week() -> Dur {
    Dur(std::time::Duration::from_secs(7 * 86_400))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGateway {
    pub listen: Spanned<Vec<Spanned<String>>>,
    pub profile: crate::profile::Profile,
    /// CIDRs whose forwarding headers are believed.
    pub trusted_proxies: Vec<Spanned<String>>,
    /// The one header a trusted proxy names the client in.
    pub client_ip_header: crate::pipeline::identity::ClientIpHeader,
    /// A path still holding `%XX` once decoded is refused (400) unless this is true.
    pub allow_encoded_percent: bool,
    /// Listeners that expect a PROXY protocol header (from a trusted proxy) before HTTP.
    pub listen_proxy_protocol: Vec<Spanned<String>>,
    /// Plain-HTTP listeners that only redirect to HTTPS (and answer ACME HTTP-01 challenges).
    pub listen_http: Vec<Spanned<String>>,
    pub max_body: Size,
    pub max_header_size: Size,
    pub header_timeout: Dur,
    pub idle_timeout: Dur,
    pub drain_timeout: Dur,
    pub workers: usize,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// Requests one client (address, /64 or API key) may have in flight at once; 0 = no cap.
    pub max_in_flight_per_client: usize,
    /// Longest wait for the next piece of a request body.
    pub body_timeout: Dur,
    /// Slowest average a request body may arrive at, once `body_timeout` has passed (0 = any).
    pub min_body_rate: super::units::ByteRate,
    /// Request bodies up to this size are read whole before a node is chosen, so that a slow
    /// upload holds no node connection; larger ones stream.
    pub request_buffer: Size,
    /// JSON-RPC batches: calls a batch may hold (where the profile admits batches at all).
    pub max_batch: usize,
    /// evm: the widest block range an `eth_getLogs` may ask for.
    pub max_logs_range: u64,
    /// JSON-RPC over WebSocket: live subscriptions a client may hold.
    pub max_subscriptions_per_client: u32,
    /// gRPC: server streams (`Stream*`, `Subscribe*` methods) a client may hold open.
    pub max_streams_per_client: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// Longest a response may wait for the client to read it before the connection is closed.
    pub send_timeout: Dur,
}

impl Default for RawGateway {
    fn default() -> Self {
        RawGateway {
            listen: Spanned::new(0..0, vec![Spanned::new(0..0, "0.0.0.0:8080".to_string())]),
            profile: crate::profile::Profile::IotaChrysalis,
            trusted_proxies: Vec::new(),
            client_ip_header: Default::default(),
            allow_encoded_percent: false,
            listen_proxy_protocol: Vec::new(),
            listen_http: Vec::new(),
            max_body: Size(1 << 20),
            max_header_size: Size(32 << 10),
            header_timeout: Dur(std::time::Duration::from_secs(10)),
            idle_timeout: Dur(std::time::Duration::from_secs(60)),
            drain_timeout: Dur(std::time::Duration::from_secs(30)),
            workers: 0,
            max_connections: 10_000,
            max_connections_per_client: 256,
            max_in_flight_per_client: 128,
            body_timeout: Dur(std::time::Duration::from_secs(10)),
            min_body_rate: super::units::ByteRate(1024),
            request_buffer: Size(64 << 10),
            max_batch: 50,
            max_logs_range: 1000,
            max_subscriptions_per_client: 10,
            max_streams_per_client: 10,
            h2_max_concurrent_streams: 128,
            send_timeout: Dur(std::time::Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub name: Spanned<String>,
    pub url: Spanned<String>,
    #[serde(default = "one")]
    pub weight: Spanned<u32>,
    #[serde(default)]
    pub pow: bool,
    /// Connections to this node at most; past it requests wait up to `[upstream] queue_timeout`.
    #[serde(default = "five_hundred_twelve")]
    pub max_connections: Spanned<usize>,
}

fn five_hundred_twelve() -> Spanned<usize> {
    Spanned::new(0..0, 512)
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub connect_timeout: Dur,
    pub response_timeout: Dur,
    pub pool_idle_timeout: Dur,
    pub pool_max_idle_per_node: usize,
    /// Longest a node may pause in the middle of a response body.
    pub body_timeout: Dur,
    /// Longest a request waits for a connection to a node at its `max_connections`.
    pub queue_timeout: Dur,
    /// PEM CA bundle for https:// nodes; the system's roots when absent.
    pub ca: Option<Spanned<String>>,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            connect_timeout: Dur(std::time::Duration::from_secs(2)),
            response_timeout: Dur(std::time::Duration::from_secs(30)),
            pool_idle_timeout: Dur(std::time::Duration::from_secs(90)),
            pool_max_idle_per_node: 256,
            body_timeout: Dur(std::time::Duration::from_secs(30)),
            queue_timeout: Dur(std::time::Duration::from_secs(1)),
            ca: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub format: crate::access_log::LogFormat,
    pub access: bool,
    /// tracing filter directive, e.g. "info" or "nodegate=debug".
    pub level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog { format: crate::access_log::LogFormat::Text, access: true, level: "info".into() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    /// Active probes on or off; passive ejection works either way.
    pub active: bool,
    pub interval: Dur,
    pub timeout: Dur,
    pub max_milestone_lag: u64,
    /// iota-rebased: checkpoints behind the best node before a node is out.
    pub max_checkpoint_lag: u64,
    /// evm: blocks behind the best node before a node is out.
    pub max_block_lag: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// The generic profile's health route.
    pub path: String,
    pub eject_after: u32,
    pub eject_for: Dur,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            active: true,
            interval: Dur(std::time::Duration::from_secs(5)),
            timeout: Dur(std::time::Duration::from_secs(2)),
            max_milestone_lag: 2,
            max_checkpoint_lag: 30,
            max_block_lag: 30,
            healthy_threshold: 2,
            unhealthy_threshold: 1,
            path: "/health".into(),
            eject_after: 5,
            eject_for: Dur(std::time::Duration::from_secs(10)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMethod {
    /// Exact, or a prefix ending in `*`.
    pub name: Spanned<String>,
    pub access: crate::pipeline::route_policy::Access,
    pub cost: Option<Spanned<u32>>,
    pub rate: Option<super::units::Rate>,
    pub burst: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFirewall {
    /// Ports that must stay public: "8084/udp", "15600", "30000-30100/tcp".
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    pub ssh_ports: Option<Vec<u16>>,
    /// New SSH connections per source: "10/min".
    pub ssh_rate: Option<Spanned<String>>,
    #[serde(default = "yes")]
    pub forward: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default = "admin_listen")]
    pub listen: Spanned<String>,
}

fn admin_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9090".into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccess {
    pub allow: Vec<Spanned<String>>,
    pub deny: Vec<Spanned<String>>,
}

impl Default for RawAccess {
    fn default() -> Self {
        RawAccess {
            allow: vec![Spanned::new(0..0, "0.0.0.0/0".into()), Spanned::new(0..0, "::/0".into())],
            deny: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: Spanned<String>,
    pub access: crate::pipeline::route_policy::Access,
    pub methods: Option<Vec<Spanned<String>>>,
    pub allow: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    #[serde(default)]
    pub pass_credential: bool,
    /// A JSON-RPC endpoint: `[[method]]` rules decide each call.
    #[serde(default)]
    pub jsonrpc: bool,
    /// gRPC services under this path: `[[method]]` rules decide each call by its path.
    #[serde(default)]
    pub grpc: bool,
    /// This route's own per-client limit, on top of `[rate_limit] per_client`.
    pub rate: Option<super::units::Rate>,
    /// Its burst; one second's worth of `rate` when not given.
    pub burst: Option<Spanned<u32>>,
    /// How many requests one request here counts as against `per_client`.
    pub cost: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub name: Spanned<String>,
    pub hash: Spanned<String>,
    pub roles: Spanned<Vec<crate::pipeline::auth::Role>>,
    /// This key's own limit instead of `[rate_limit] per_client`.
    pub rate: Option<super::units::Rate>,
    pub burst: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub name: Spanned<String>,
    /// "HS256" or "EdDSA".
    pub algorithm: Spanned<String>,
    /// HS256: the shared secret.
    pub secret: Option<Spanned<String>>,
    /// EdDSA: a PEM file holding the issuer's Ed25519 public key.
    pub public_key: Option<Spanned<String>>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub per_client: super::units::Rate,
    pub burst: Spanned<u32>,
    #[serde(default = "sixty_four")]
    pub ipv6_prefix: Spanned<u8>,
    #[serde(default = "hundred_thousand")]
    pub max_clients: usize,
    /// Remote proof-of-work budget per client: submissions that ask a node to do the PoW.
    pub pow: Option<super::units::Rate>,
    pub pow_burst: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// `redis://host:port/db`: limits are shared through it.
    pub redis: Spanned<String>,
    /// How often each gateway tells Redis what it admitted and learns what the others did.
    #[serde(default = "hundred_ms")]
    pub sync_interval: Spanned<Dur>,
    /// Prefix of every Redis key nodegate writes.
    #[serde(default = "key_prefix")]
    pub key_prefix: String,
}

fn hundred_ms() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(std::time::Duration::from_millis(100)))
}

fn key_prefix() -> String {
    "nodegate:".into()
}

fn sixty_four() -> Spanned<u8> {
    Spanned::new(0..0, 64)
}

fn hundred_thousand() -> usize {
    100_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// One certificate file (with `key` beside it), or `[[tls.cert]]` tables, one per certificate.
    /// (Read as a TOML value, then as a path or a list: serde's untagged enums lose the spans.)
    pub cert: Option<Spanned<toml::Value>>,
    pub key: Option<Spanned<String>>,
    /// The `Strict-Transport-Security` value sent on HTTPS answers, e.g. "max-age=31536000".
    pub hsts: Option<Spanned<String>>,
    /// How often certificate files are checked for changes.
    #[serde(default = "two_s")]
    pub reload_interval: Dur,
    pub client_auth: Option<RawClientAuth>,
    pub acme: Option<RawAcme>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub domains: Spanned<Vec<String>>,
    pub email: Option<String>,
    #[serde(default = "letsencrypt")]
    pub directory: Spanned<String>,
    pub state_dir: Spanned<String>,
    #[serde(default)]
    pub challenge: crate::config::AcmeChallenge,
    /// A CA to trust for the directory's own HTTPS (a private or test ACME server).
    pub directory_ca: Option<Spanned<String>>,
    #[serde(default = "thirty_days")]
    pub renew_before: Dur,
}

fn letsencrypt() -> Spanned<String> {
    Spanned::new(0..0, "https://acme-v02.api.letsencrypt.org/directory".into())
}

fn thirty_days() -> Dur {
    Dur(std::time::Duration::from_secs(30 * 86_400))
}

fn two_s() -> Dur {
    Dur(std::time::Duration::from_secs(2))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsCert {
    pub cert: String,
    pub key: String,
    /// SNI names this certificate serves; by default the DNS names it holds.
    #[serde(default)]
    pub names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    /// PEM file of the CAs whose client certificates are accepted.
    pub ca: Spanned<String>,
    /// HTTPS listeners that ask for client certificates.
    pub listen: Spanned<Vec<Spanned<String>>>,
    /// Refuse the handshake without a valid certificate (else it is optional).
    #[serde(default = "yes")]
    pub required: bool,
    /// Roles a verified certificate holder has (as an API key's).
    #[serde(default)]
    pub roles: Vec<crate::pipeline::auth::Role>,
}

fn yes() -> bool {
    true
}
