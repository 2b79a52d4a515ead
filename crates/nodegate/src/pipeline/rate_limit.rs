//! Rate limits: GCRA (the generic cell rate algorithm, as in governor and redis-cell), keyed by
//! client address (IPv6 grouped by `ipv6_prefix`, default /64, since one subscriber holds a whole
//! /64) or by API key name when the client authenticated.
//!
//! GCRA keeps one number per client, its theoretical arrival time (TAT). A request of cost `c` at
//! `now` is admitted when `max(TAT, now) + c x interval - now <= burst x interval`, and moves the
//! TAT `c` intervals on. A steady client is admitted exactly `burst + rate x time` requests (tested
//! on a paused clock). The limit is given with each check, so one table serves clients whose API
//! keys carry limits of their own.
//!
//! Memory is bounded: at most `max_clients` entries. When the table is full, one pass drops every
//! entry whose TAT has passed; that costs no accuracy, since a fresh entry behaves the same. If that
//! frees less than a tenth of the table, a random tenth goes too, and those clients get a fresh
//! burst: an attacker who rotates addresses to flood the table can, at worst, give others `burst`
//! extra requests, never make memory grow. A pass is O(table) but frees room for a tenth of it, so
//! each new client costs O(1) amortized (evicting one entry per insert after a scan for idle ones
//! made a million rotating clients cost minutes of CPU: measured, and fixed).
//!
//! Shared limits (`[cluster] redis`, see `cluster`): a limiter made `shared` also counts what it
//! admitted per key since the last sync; the sync adds that to the fleet's TAT in Redis and moves
//! the local TAT up to the fleet's. Decisions stay local: Redis is never on a request's path.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Who a budget belongs to. Each kind of credential is its own namespace, and names are kept
/// exact, so no two clients share a budget by spelling (`John Smith` and `JohnSmith` differ, a
/// JWT issuer named like an API key is not that key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(u32),
    /// The address's first `ipv6_prefix` bits.
    V6(u128),
    /// An `[[api_key]]`, by name.
    ApiKey(String),
    /// A JWT: its `[[jwt]]` issuer's name and the token's subject (see [`ClientKey::jwt`]).
    Jwt(String),
    /// A client certificate's holder.
    Cert(String),
}

impl ClientKey {
    pub fn from_ip(ip: IpAddr, ipv6_prefix: u8) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(a) => ClientKey::V4(u32::from(a)),
            IpAddr::V6(a) => {
                let bits = u32::from(ipv6_prefix.min(128));
                let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
                ClientKey::V6(u128::from(a) & mask)
            }
        }
    }
}

impl ClientKey {
    /// A token's client: its issuer's name and its subject, each written so that different names
    /// stay different: bytes other than letters, digits and `-._@+` as `%XX` (so neither holds the
    /// `:` between them), and a name whose escaped form is over 192 bytes as `%%` and its SHA-256
    /// (the escaped form never holds `%%`).
    pub fn jwt(issuer: &str, subject: Option<&str>) -> ClientKey {
        let mut out = String::with_capacity(issuer.len() + subject.map_or(0, |s| s.len() + 1));
        escape_name(&mut out, issuer);
        if let Some(sub) = subject {
            out.push(':');
            escape_name(&mut out, sub);
        }
        ClientKey::Jwt(out)
    }
}

fn escape_name(out: &mut String, name: &str) {
    let start = out.len();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._@+".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = fmt::Write::write_fmt(out, format_args!("%{b:02X}"));
        }
    }
    if out.len() - start > 192 {
        use sha2::Digest;
        out.truncate(start);
        out.push_str("%%");
        for b in sha2::Sha256::digest(name.as_bytes()) {
            let _ = fmt::Write::write_fmt(out, format_args!("{b:02x}"));
        }
    }
}

/// How a key is named in Redis: `192.0.2.1`, `2001:db8:1:2::` (the prefix), `key:wallet`,
/// `jwt:issuer:subject`, `cert:holder`.
impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::V4(a) => write!(f, "{}", std::net::Ipv4Addr::from(*a)),
            ClientKey::V6(a) => write!(f, "{}", std::net::Ipv6Addr::from(*a)),
            ClientKey::ApiKey(name) => write!(f, "key:{name}"),
            ClientKey::Jwt(name) => write!(f, "jwt:{name}"),
            ClientKey::Cert(name) => write!(f, "cert:{name}"),
        }
    }
}

/// Which limit answered, as the `RateLimit` headers and 429s name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitPolicy {
    /// `[rate_limit] per_client` (or an API key's own limit).
    PerClient,
    /// A `[[route]]`'s own limit.
    Route,
    /// The remote proof-of-work budget.
    Pow,
    /// A JSON-RPC method's own limit (`[[method]] rate`).
    Method,
}

impl LimitPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitPolicy::PerClient => "per-client",
            LimitPolicy::Route => "route",
            LimitPolicy::Pow => "pow",
            LimitPolicy::Method => "method",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Time between requests at the sustained rate.
    pub interval: Duration,
    pub burst: u32,
}

/// The outcome, with what the `RateLimit` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admit { remaining: u32 },
    Reject { retry_after: Duration },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Theoretical arrival time, in nanoseconds since the limiter's epoch.
    tat: u64,
    /// Shared limiters: intervals admitted since the last sync, in nanoseconds.
    pending: u64,
}

#[derive(Default)]
struct Table {
    map: HashMap<ClientKey, Entry>,
    /// Shared limiters: the keys with something pending, each once.
    dirty: Vec<ClientKey>,
}

pub struct RateLimiter {
    /// Which limit this is ("client", "pow", "route:/api/v1/messages"), for Redis and logs.
    name: String,
    max_clients: usize,
    shared: bool,
    epoch: Instant,
    table: Mutex<Table>,
}

/// What a shared limiter admitted for one key since the last sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub key: ClientKey,
    /// The time it used up: admitted cost x interval.
    pub used: Duration,
}

impl RateLimiter {
    pub fn new(name: impl Into<String>, max_clients: usize) -> RateLimiter {
        RateLimiter {
            name: name.into(),
            max_clients: max_clients.max(1),
            shared: false,
            epoch: Instant::now(),
            table: Mutex::new(Table::default()),
        }
    }

    /// Counts what is admitted per key, for `take_pending`.
    pub fn shared(mut self) -> RateLimiter {
        self.shared = true;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn now(&self) -> u64 {
        Instant::now().saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Admits a request of `cost` (1 for most) from `key` under `limit`, or says when to retry.
    pub fn check(&self, key: &ClientKey, limit: Limit, cost: u32) -> Decision {
        let now = self.now();
        let t = (limit.interval.as_nanos() as u64).max(1);
        let room = t * u64::from(limit.burst.max(1));
        // A cost above the whole burst takes the whole burst, or the route could never be used.
        let need = t * u64::from(cost.clamp(1, limit.burst.max(1)));
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let table = &mut *table;
        if !table.map.contains_key(key) && table.map.len() >= self.max_clients {
            evict(&mut table.map, now, self.max_clients);
        }
        let entry = match table.map.get_mut(key) {
            Some(e) => e,
            None => table.map.entry(key.clone()).or_insert(Entry { tat: 0, pending: 0 }),
        };
        let new_tat = entry.tat.max(now) + need;
        if new_tat - now > room {
            return Decision::Reject { retry_after: Duration::from_nanos(new_tat - now - room) };
        }
        entry.tat = new_tat;
        if self.shared {
            if entry.pending == 0 && table.dirty.len() < self.max_clients {
                table.dirty.push(key.clone());
            }
            entry.pending += need;
        }
        let used = (new_tat - now).div_ceil(t);
        Decision::Admit { remaining: u32::try_from(u64::from(limit.burst).saturating_sub(used)).unwrap_or(0) }
    }

    /// How long until `key` could be admitted one request under `limit`; `None` when it could be
    /// now. Changes nothing: for refusing early a client whose budget refusals already spent.
    pub fn exhausted(&self, key: &ClientKey, limit: Limit) -> Option<Duration> {
        let now = self.now();
        let t = (limit.interval.as_nanos() as u64).max(1);
        let room = t * u64::from(limit.burst.max(1));
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let tat = table.map.get(key)?.tat.max(now) + t;
        (tat - now > room).then(|| Duration::from_nanos(tat - now - room))
    }

    /// How many clients are tracked now.
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).map.len()
    }

    /// Shared limiters: what each key used since the last call, and resets that count.
    pub fn take_pending(&self) -> Vec<Pending> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let table = &mut *table;
        let dirty = std::mem::take(&mut table.dirty);
        dirty
            .into_iter()
            .filter_map(|key| {
                // An entry evicted since it was counted is skipped: its use is lost to the fleet.
                let e = table.map.get_mut(&key)?;
                let used = std::mem::take(&mut e.pending);
                (used > 0).then(|| Pending { key, used: Duration::from_nanos(used) })
            })
            .collect()
    }

    /// The fleet's TAT for `key` is `ahead` from now: never let the local one be earlier.
    pub fn apply_fleet(&self, key: &ClientKey, ahead: Duration) {
        let now = self.now();
        let fleet = now + ahead.as_nanos() as u64;
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = table.map.get_mut(key) {
            e.tat = e.tat.max(fleet);
        }
    }
}

fn evict(table: &mut HashMap<ClientKey, Entry>, now: u64, cap: usize) {
    let target = cap - cap / 10;
    table.retain(|_, e| e.tat > now);
    while table.len() > target {
        // Drop about a tenth, at random: no client can predict or aim at the choice.
        table.retain(|_, _| fastrand::u8(..) >= 26);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn token_subjects_keep_their_own_budgets() {
        let keys: Vec<ClientKey> = ["John Smith", "JohnSmith", "böb", "bb", "b%C3%B6b", "a:b", "a%3Ab", ""]
            .iter()
            .map(|s| ClientKey::jwt("issuer", Some(s)))
            .chain([
                ClientKey::jwt("issuer", None),
                ClientKey::jwt("issuer:x", None),
                ClientKey::jwt("issuer", Some("x")),
            ])
            .collect();
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
                assert_ne!(a.to_string(), b.to_string());
            }
        }
        // Bounded, and still distinct, for subjects of any length.
        let (long_a, long_b) = ("x".repeat(10_000), format!("{}y", "x".repeat(9_999)));
        let (a, b) = (ClientKey::jwt("i", Some(&long_a)), ClientKey::jwt("i", Some(&long_b)));
        assert_ne!(a, b);
        assert!(a.to_string().len() < 100, "{a}");
        // A JWT issuer and an API key of one name are different clients.
        assert_ne!(ClientKey::jwt("wallet", None).to_string(), ClientKey::ApiKey("wallet".into()).to_string());
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_client_gets_exactly_rate_times_time_plus_burst() {
        // 20/s with a burst of 40, a request every millisecond from 0 to 10 s, both ends included.
        let l = RateLimiter::new("client", 1000);
        let limit = Limit { interval: Duration::from_millis(50), burst: 40 };
        let key = ClientKey::from_ip(ip("192.0.2.1"), 64);
        let mut admitted = 0;
        for _ in 0..=10_000 {
            if matches!(l.check(&key, limit, 1), Decision::Admit { .. }) {
                admitted += 1;
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(admitted, 40 + 20 * 10);
    }

    #[tokio::test(start_paused = true)]
    async fn clients_have_their_own_budgets_but_an_ipv6_64_shares_one() {
        let l = RateLimiter::new("client", 1000);
        let limit = Limit { interval: Duration::from_secs(1), burst: 2 };
        let admit = |s: &str| matches!(l.check(&ClientKey::from_ip(ip(s), 64), limit, 1), Decision::Admit { .. });
        assert!(admit("192.0.2.1") && admit("192.0.2.1") && !admit("192.0.2.1"));
        assert!(admit("192.0.2.2"), "another client has its own budget");
        assert!(admit("::ffff:192.0.2.3") && admit("192.0.2.3") && !admit("192.0.2.3"), "mapped is the same client");
        assert!(admit("2001:db8:1:2::1") && admit("2001:db8:1:2:ffff::9"));
        assert!(!admit("2001:db8:1:2:abcd::7"), "the same /64 shares one budget");
        assert!(admit("2001:db8:1:3::1"), "the next /64 does not");
        match l.check(&ClientKey::from_ip(ip("192.0.2.1"), 64), limit, 1) {
            Decision::Reject { retry_after } => assert_eq!(retry_after, Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_million_distinct_clients_stay_under_the_cap() {
        // Every client mid-burst (no time passes): the hardest case for eviction.
        let cap = 10_000;
        let l = RateLimiter::new("client", cap);
        let limit = Limit { interval: Duration::from_millis(100), burst: 5 };
        let mut most = 0;
        for i in 0..1_000_000u32 {
            l.check(&ClientKey::V4(i), limit, 1);
            most = most.max(l.tracked());
        }
        assert!(most <= cap, "tracked {most} clients, cap {cap}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_costly_route_spends_its_cost_and_retry_after_says_when_it_is_affordable() {
        let l = RateLimiter::new("client", 1000);
        let limit = Limit { interval: Duration::from_secs(1), burst: 10 };
        let key = ClientKey::V4(1);
        assert_eq!(l.check(&key, limit, 4), Decision::Admit { remaining: 6 });
        assert_eq!(l.check(&key, limit, 4), Decision::Admit { remaining: 2 });
        assert_eq!(l.check(&key, limit, 4), Decision::Reject { retry_after: Duration::from_secs(2) });
        assert_eq!(l.check(&key, limit, 1), Decision::Admit { remaining: 1 }, "a cheap request still fits");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(l.check(&key, limit, 4), Decision::Admit { remaining: 0 });
        // A cost above the whole burst takes the whole burst instead of never passing.
        let other = ClientKey::V4(2);
        assert_eq!(l.check(&other, limit, 50), Decision::Admit { remaining: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_limiter_reports_use_once_and_takes_the_fleets_tat() {
        let l = RateLimiter::new("client", 1000).shared();
        let limit = Limit { interval: Duration::from_secs(1), burst: 5 };
        let (a, b) = (ClientKey::V4(1), ClientKey::ApiKey("wallet".into()));
        l.check(&a, limit, 1);
        l.check(&a, limit, 2);
        l.check(&b, limit, 1);
        let mut p = l.take_pending();
        p.sort_by_key(|p| p.used);
        assert_eq!(
            p,
            vec![
                Pending { key: b.clone(), used: Duration::from_secs(1) },
                Pending { key: a.clone(), used: Duration::from_secs(3) }
            ]
        );
        assert!(l.take_pending().is_empty(), "reported twice");
        // Other gateways used four more of a's budget: one is left here.
        l.apply_fleet(&a, Duration::from_secs(4));
        assert_eq!(l.check(&a, limit, 1), Decision::Admit { remaining: 0 });
        assert!(matches!(l.check(&a, limit, 1), Decision::Reject { .. }));
        // A fleet TAT behind the local one changes nothing.
        l.apply_fleet(&b, Duration::ZERO);
        assert_eq!(l.check(&b, limit, 1), Decision::Admit { remaining: 3 });
        assert_eq!(ClientKey::V6(0x2001_0db8_0001_0002u128 << 64).to_string(), "2001:db8:1:2::");
        assert_eq!(b.to_string(), "key:wallet");
    }
}
