//! A jail's arithmetic: failures counted per address within `findtime`, a ban at `maxretry`, a
//! longer ban for each repeat offence, and escalation from IPv6 addresses to their /64 and from
//! /64s to their /48, since one IPv6 client holds far more than one address. Time is tokio's, so
//! tests run on a paused clock.
//!
//! The ban history is ordered by network, so the bans inside a prefix are one range look-up (and
//! that range is small: a prefix is banned once `escalate_after` of its parts are). A network's
//! history is forgotten once it has been quiet for `max_bantime` after its last ban ended.
//!
//! Memory is bounded: at most `max_tracked` addresses with failures in the window, and as many with
//! a ban history. When full, entries whose window has passed go first (no accuracy lost), then a
//! random tenth: an attacker rotating addresses can make the jail forget some failures, never grow.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use tokio::time::Instant;

/// A jail's settings (`[[jail]]`).
#[derive(Debug, Clone)]
pub struct JailSettings {
    pub maxretry: u32,
    pub findtime: Duration,
    pub bantime: Duration,
    /// Repeat offenders: `bantime x 2^(bans so far)`, up to `max_bantime`.
    pub increment: bool,
    pub max_bantime: Duration,
    /// Banned addresses of one /64 (and /64s of one /48) after which the wider prefix is banned.
    pub escalate_after: u32,
    /// What one IPv6 ban covers: 128 (the address) or 64 (its /64); failures are counted per
    /// that unit.
    pub ipv6_prefix: u8,
    pub max_tracked: usize,
}

/// A decision: ban `net` for `duration`; `step` is how many bans its key had before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub net: IpNet,
    pub duration: Duration,
    pub step: u32,
}

pub struct Jail {
    s: JailSettings,
    /// Failure times within the window, per address.
    failures: HashMap<IpAddr, Times>,
    /// Failure times count in tenths of a second from here.
    epoch: Instant,
    /// Bans so far, per banned network, and until when the last one runs.
    history: BTreeMap<IpNet, (u32, Instant)>,
}

impl Jail {
    pub fn new(s: JailSettings) -> Jail {
        Jail { s, failures: HashMap::new(), epoch: Instant::now(), history: BTreeMap::new() }
    }

    /// Counts one failure of `ip` at `now`; returns the bans it causes (the address, and the
    /// wider prefixes it tips over).
    pub fn failure(&mut self, ip: IpAddr, now: Instant) -> Vec<Ban> {
        let ip = ip.to_canonical();
        let unit = match ip {
            IpAddr::V6(_) if self.s.ipv6_prefix == 64 => IpNet::new(ip, 64).map_or(IpNet::from(ip), |n| n.trunc()),
            _ => IpNet::from(ip),
        };
        let ip = unit.network();
        if self.is_banned(ip, now) {
            return Vec::new();
        }
        let tick = Times::tick(now.saturating_duration_since(self.epoch));
        let window = Times::tick(self.s.findtime).max(1);
        if !self.failures.contains_key(&ip) && self.failures.len() >= self.s.max_tracked {
            evict(&mut self.failures, self.s.max_tracked, |times| tick - times.last() < window);
        }
        let times = self
            .failures
            .entry(ip)
            .and_modify(|t| t.rest.push(tick))
            .or_insert(Times { first: tick, rest: Vec::new() });
        // The newest is never out of the window, so this stops with at least one.
        while tick - times.first >= window && !times.rest.is_empty() {
            times.first = times.rest.remove(0);
        }
        if (times.rest.len() as u32 + 1) < self.s.maxretry.max(1) {
            return Vec::new();
        }
        self.failures.remove(&ip);
        let mut bans = vec![self.ban(unit, now)];
        if ip.is_ipv6() {
            for (narrow, wide) in [(128u8, 64u8), (64, 48)].into_iter().filter(|(n, _)| *n <= unit.prefix_len()) {
                let Ok(wider) = IpNet::new(ip, wide).map(|n| n.trunc()) else { break };
                let banned = self
                    .history
                    .range(IpNet::from(wider.network())..=IpNet::from(wider.broadcast()))
                    .filter(|(net, (_, until))| net.prefix_len() == narrow && *until > now && wider.contains(*net))
                    .count();
                if (banned as u32) < self.s.escalate_after.max(1) || self.is_banned_net(&wider, now) {
                    break;
                }
                bans.push(self.ban(wider, now));
            }
        }
        bans
    }

    fn ban(&mut self, net: IpNet, now: Instant) -> Ban {
        let forgive = self.s.max_bantime.max(self.s.bantime);
        if !self.history.contains_key(&net) && self.history.len() >= self.s.max_tracked {
            let target = self.s.max_tracked - self.s.max_tracked / 10;
            self.history.retain(|_, (_, until)| *until + forgive > now);
            while self.history.len() > target {
                self.history.retain(|_, _| fastrand::u8(..) >= 26);
            }
        }
        let (step, until) = self.history.entry(net).or_insert((0, now));
        if *until + forgive <= now {
            *step = 0;
        }
        let factor = if self.s.increment { 1u32.checked_shl((*step).min(31)).unwrap_or(u32::MAX) } else { 1 };
        let duration = self.s.bantime.saturating_mul(factor).min(self.s.max_bantime.max(self.s.bantime));
        let ban = Ban { net, duration, step: *step };
        *step += 1;
        *until = now + duration;
        ban
    }

    /// Whether a ban of this jail covers `ip` at `now`: the networks a ban can be on are the
    /// address itself and, for IPv6, its /64 and /48, so this is at most three look-ups.
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        ban_nets(ip).any(|net| self.is_banned_net(&net, now))
    }

    fn is_banned_net(&self, net: &IpNet, now: Instant) -> bool {
        self.history.get(net).is_some_and(|(_, until)| *until > now)
    }

    /// Takes back a ban made before a restart: `step` bans so far, the last one running until
    /// `until` (in the past when it has ended).
    pub fn restore(&mut self, net: IpNet, step: u32, until: Instant) {
        if self.history.len() < self.s.max_tracked {
            let e = self.history.entry(net).or_insert((step, until));
            *e = (e.0.max(step), e.1.max(until));
        }
    }

    /// Addresses with failures in the window, and networks with a ban history (for `/status`).
    pub fn tracked(&self) -> (usize, usize) {
        (self.failures.len(), self.history.len())
    }
}

/// An address's failure times within the window, oldest first, in tenths of a second since the
/// jail started (13 years of range). The first is inline: an address seen once, as each of a
/// flood of rotating addresses is, takes no allocation (56 bytes a table entry).
struct Times {
    first: u32,
    rest: Vec<u32>,
}

impl Times {
    fn tick(d: Duration) -> u32 {
        u32::try_from(d.as_millis() / 100).unwrap_or(u32::MAX)
    }

    fn last(&self) -> u32 {
        self.rest.last().copied().unwrap_or(self.first)
    }
}

/// The networks a ban on `ip` can be on: the address itself and, for IPv6, its /64 and /48.
pub fn ban_nets(ip: IpAddr) -> impl Iterator<Item = IpNet> {
    let ip = ip.to_canonical();
    let lens: &'static [u8] = if ip.is_ipv4() { &[32] } else { &[128, 64, 48] };
    lens.iter().filter_map(move |len| IpNet::new(ip, *len).ok()).map(|net| net.trunc())
}

/// Makes room in a full table: drops what `live` says is over, then a random tenth.
fn evict<K, V>(table: &mut HashMap<K, V>, cap: usize, live: impl Fn(&V) -> bool) {
    let target = cap - cap / 10;
    table.retain(|_, v| live(v));
    while table.len() > target {
        table.retain(|_, _| fastrand::u8(..) >= 26);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> JailSettings {
        JailSettings {
            maxretry: 3,
            findtime: Duration::from_secs(600),
            bantime: Duration::from_secs(600),
            increment: true,
            max_bantime: Duration::from_secs(7 * 86_400),
            escalate_after: 3,
            ipv6_prefix: 128,
            max_tracked: 1000,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn maxretry_within_findtime_bans_and_repeat_offences_ban_longer() {
        let mut j = Jail::new(settings());
        let a = ip("203.0.113.5");
        assert!(j.failure(a, Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(599)).await;
        assert!(j.failure(a, Instant::now()).is_empty());
        // The first failure falls out of the window: still two.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(j.failure(a, Instant::now()).is_empty());
        let bans = j.failure(a, Instant::now());
        assert_eq!(
            bans,
            vec![Ban { net: "203.0.113.5/32".parse().unwrap(), duration: Duration::from_secs(600), step: 0 }]
        );
        assert!(j.is_banned(a, Instant::now()));
        // Failures while banned change nothing.
        assert!(j.failure(a, Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(601)).await;
        assert!(!j.is_banned(a, Instant::now()));
        for _ in 0..2 {
            assert!(j.failure(a, Instant::now()).is_empty());
        }
        assert_eq!(j.failure(a, Instant::now())[0].duration, Duration::from_secs(1200), "second ban doubled");
    }

    #[tokio::test(start_paused = true)]
    async fn history_is_forgiven_after_a_quiet_max_bantime_and_survives_a_restore() {
        let s = JailSettings { maxretry: 1, max_bantime: Duration::from_secs(3600), ..settings() };
        let mut j = Jail::new(s.clone());
        let a = ip("203.0.113.9");
        assert_eq!(j.failure(a, Instant::now())[0].step, 0);
        tokio::time::advance(Duration::from_secs(601)).await;
        assert_eq!(j.failure(a, Instant::now())[0].step, 1, "a repeat offence");
        // The second ban (1200 s) ends, then an hour of quiet: a first offence again.
        tokio::time::advance(Duration::from_secs(1200 + 3600)).await;
        assert_eq!(j.failure(a, Instant::now())[0].step, 0);
        // A restarted jail told of two earlier bans goes on at the third step.
        let mut fresh = Jail::new(s);
        fresh.restore(IpNet::from(a), 2, Instant::now() - Duration::from_secs(10));
        let ban = fresh.failure(a, Instant::now()).remove(0);
        assert_eq!((ban.step, ban.duration), (2, Duration::from_secs(2400)));
    }

    #[tokio::test(start_paused = true)]
    async fn with_ipv6_prefix_64_failures_count_per_64_and_bans_cover_it() {
        let mut j = Jail::new(JailSettings { ipv6_prefix: 64, ..settings() });
        let now = Instant::now();
        // Three addresses of one /64, one failure each: the /64 is one offender.
        assert!(j.failure(ip("2001:db8:5:5::1"), now).is_empty());
        assert!(j.failure(ip("2001:db8:5:5::2"), now).is_empty());
        let bans = j.failure(ip("2001:db8:5:5::3"), now);
        assert_eq!(bans[0].net.to_string(), "2001:db8:5:5::/64");
        assert!(j.is_banned(ip("2001:db8:5:5::abcd"), now));
        // IPv4 is still per address.
        for _ in 0..2 {
            assert!(j.failure(ip("192.0.2.1"), now).is_empty());
        }
        assert_eq!(j.failure(ip("192.0.2.1"), now)[0].net.to_string(), "192.0.2.1/32");
    }

    #[tokio::test(start_paused = true)]
    async fn bans_grow_up_to_max_bantime() {
        let mut j = Jail::new(JailSettings { maxretry: 1, ..settings() });
        let a = ip("198.51.100.1");
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            let ban = j.failure(a, Instant::now()).remove(0);
            last = ban.duration;
            tokio::time::advance(ban.duration + Duration::from_secs(1)).await;
        }
        assert_eq!(last, Duration::from_secs(7 * 86_400));
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_addresses_escalate_to_their_64_and_64s_to_their_48() {
        let mut j = Jail::new(JailSettings { maxretry: 1, ..settings() });
        let now = Instant::now();
        assert_eq!(j.failure(ip("2001:db8:1:1::1"), now).len(), 1);
        assert_eq!(j.failure(ip("2001:db8:1:1::2"), now).len(), 1);
        let third = j.failure(ip("2001:db8:1:1::3"), now);
        assert_eq!(
            third.iter().map(|b| b.net.to_string()).collect::<Vec<_>>(),
            ["2001:db8:1:1::3/128", "2001:db8:1:1::/64"]
        );
        // Anything else in that /64 is banned already.
        assert!(j.is_banned(ip("2001:db8:1:1::99"), now));
        assert!(j.failure(ip("2001:db8:1:1::99"), now).is_empty());
        // Two more /64s of the same /48: the /48 goes.
        for net in ["2001:db8:1:2::", "2001:db8:1:3::"] {
            let mut last = Vec::new();
            for i in 1..=3 {
                last = j.failure(ip(&format!("{net}{i}")), now);
            }
            if net.ends_with("3::") {
                assert_eq!(last.last().unwrap().net.to_string(), "2001:db8:1::/48");
            }
        }
        assert!(j.is_banned(ip("2001:db8:1:ffff::1"), now));
        assert!(!j.is_banned(ip("2001:db8:2::1"), now));
    }

    #[tokio::test(start_paused = true)]
    async fn a_million_rotating_addresses_never_grow_the_tables() {
        let mut j = Jail::new(JailSettings { max_tracked: 10_000, ..settings() });
        let now = Instant::now();
        for i in 0..1_000_000u32 {
            j.failure(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), now);
        }
        let (failures, history) = j.tracked();
        assert!(failures <= 10_000 && history <= 10_000, "{failures} {history}");
    }
}
