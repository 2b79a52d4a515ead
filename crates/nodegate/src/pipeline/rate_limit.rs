//! Per-client rate limits: GCRA (the generic cell rate algorithm, as in governor and redis-cell),
//! keyed by client address (IPv6 grouped by `ipv6_prefix`, default /64, since one subscriber holds
//! a whole /64) or by API key name when the client authenticated.
//!
//! GCRA keeps one number per client, its theoretical arrival time (TAT). A request at `now` is
//! admitted when `max(TAT, now) - now <= (burst - 1) x interval`, and moves the TAT one interval on.
//! A steady client is admitted exactly `burst + rate x time` requests (tested on a paused clock).
//!
//! Memory is bounded: at most `max_clients` entries. When the table is full, one pass drops every
//! entry whose TAT has passed; that costs no accuracy, since a fresh entry behaves the same. If that
//! frees less than a tenth of the table, a random tenth goes too, and those clients get a fresh
//! burst: an attacker who rotates addresses to flood the table can, at worst, give others `burst`
//! extra requests, never make memory grow. A pass is O(table) but frees room for a tenth of it, so
//! each new client costs O(1) amortized (evicting one entry per insert after a scan for idle ones
//! made a million rotating clients cost minutes of CPU: measured, and fixed).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(u32),
    /// The address's first `ipv6_prefix` bits.
    V6(u128),
    ApiKey(String),
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

#[derive(Debug, Clone, Copy, PartialEq)]
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

pub struct RateLimiter {
    limit: Limit,
    max_clients: usize,
    epoch: Instant,
    /// Client -> TAT in nanoseconds since `epoch`.
    table: Mutex<HashMap<ClientKey, u64>>,
}

impl RateLimiter {
    pub fn new(limit: Limit, max_clients: usize) -> RateLimiter {
        RateLimiter { limit, max_clients: max_clients.max(1), epoch: Instant::now(), table: Mutex::new(HashMap::new()) }
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }

    pub fn check(&self, key: ClientKey) -> Decision {
        let now = Instant::now().saturating_duration_since(self.epoch).as_nanos() as u64;
        let t = self.limit.interval.as_nanos() as u64;
        let tau = t * u64::from(self.limit.burst.saturating_sub(1));
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if !table.contains_key(&key) && table.len() >= self.max_clients {
            evict(&mut table, now, self.max_clients);
        }
        let tat = table.entry(key).or_insert(0);
        let start = (*tat).max(now);
        if start - now > tau {
            return Decision::Reject { retry_after: Duration::from_nanos(start - now - tau) };
        }
        *tat = start + t;
        let used = (*tat - now).div_ceil(t.max(1));
        Decision::Admit { remaining: u32::try_from(u64::from(self.limit.burst).saturating_sub(used)).unwrap_or(0) }
    }

    /// How many clients are tracked now.
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn evict(table: &mut HashMap<ClientKey, u64>, now: u64, cap: usize) {
    let target = cap - cap / 10;
    table.retain(|_, tat| *tat > now);
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

    #[tokio::test(start_paused = true)]
    async fn a_steady_client_gets_exactly_rate_times_time_plus_burst() {
        // 20/s with a burst of 40, a request every millisecond from 0 to 10 s, both ends included.
        let l = RateLimiter::new(Limit { interval: Duration::from_millis(50), burst: 40 }, 1000);
        let key = ClientKey::from_ip(ip("192.0.2.1"), 64);
        let mut admitted = 0;
        for _ in 0..=10_000 {
            if matches!(l.check(key.clone()), Decision::Admit { .. }) {
                admitted += 1;
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(admitted, 40 + 20 * 10);
    }

    #[tokio::test(start_paused = true)]
    async fn clients_have_their_own_budgets_but_an_ipv6_64_shares_one() {
        let l = RateLimiter::new(Limit { interval: Duration::from_secs(1), burst: 2 }, 1000);
        let admit = |s: &str| matches!(l.check(ClientKey::from_ip(ip(s), 64)), Decision::Admit { .. });
        assert!(admit("192.0.2.1") && admit("192.0.2.1") && !admit("192.0.2.1"));
        assert!(admit("192.0.2.2"), "another client has its own budget");
        assert!(admit("::ffff:192.0.2.3") && admit("192.0.2.3") && !admit("192.0.2.3"), "mapped is the same client");
        assert!(admit("2001:db8:1:2::1") && admit("2001:db8:1:2:ffff::9"));
        assert!(!admit("2001:db8:1:2:abcd::7"), "the same /64 shares one budget");
        assert!(admit("2001:db8:1:3::1"), "the next /64 does not");
        match l.check(ClientKey::from_ip(ip("192.0.2.1"), 64)) {
            Decision::Reject { retry_after } => assert_eq!(retry_after, Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_million_distinct_clients_stay_under_the_cap() {
        // Every client mid-burst (no time passes): the hardest case for eviction.
        let cap = 10_000;
        let l = RateLimiter::new(Limit { interval: Duration::from_millis(100), burst: 5 }, cap);
        let mut most = 0;
        for i in 0..1_000_000u32 {
            l.check(ClientKey::V4(i));
            most = most.max(l.tracked());
        }
        assert!(most <= cap, "tracked {most} clients, cap {cap}");
    }
}
