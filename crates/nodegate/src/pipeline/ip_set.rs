//! A set of IP prefixes as merged, sorted address ranges: a lookup is a binary search, so thousands
//! of prefixes cost a dozen comparisons. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a
//! dual-stack listener reports IPv4 clients) are looked up as the IPv4 address they are.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl IpSet {
    pub fn new(nets: &[IpNet]) -> IpSet {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => match n.network().to_ipv4_mapped() {
                    // A mapped prefix (::ffff:0:0/96 and longer) is an IPv4 prefix.
                    Some(v4net) if n.prefix_len() >= 96 => {
                        v4.push((u32::from(v4net), u32::from(n.broadcast().to_ipv4_mapped().unwrap_or(v4net))))
                    }
                    _ => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
                },
            }
        }
        IpSet { v4: merge(v4), v6: merge(v6) }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Both sets' addresses.
    pub fn union(&self, other: &IpSet) -> IpSet {
        let mut v4 = self.v4.clone();
        v4.extend_from_slice(&other.v4);
        let mut v6 = self.v6.clone();
        v6.extend_from_slice(&other.v6);
        IpSet { v4: merge(v4), v6: merge(v6) }
    }

    /// How many IPv4 and IPv6 addresses the set holds (IPv6 saturating at `u128::MAX`).
    pub fn size(&self) -> (u64, u128) {
        let v4 = self.v4.iter().map(|(a, b)| u64::from(b - a) + 1).sum();
        let v6 = self.v6.iter().fold(0u128, |n, (a, b)| n.saturating_add((b - a).saturating_add(1)));
        (v4, v6)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => within(&self.v4, u32::from(a)),
            IpAddr::V6(a) => within(&self.v6, u128::from(a)),
        }
    }
}

fn merge<T: Ord + Copy + num_one::One>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            // Overlapping or adjacent ranges become one.
            Some(last) if start <= last.1 || start == last.1.plus_one() => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

fn within<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The last range starting at or before x is the only one that can hold it.
    let i = ranges.partition_point(|r| r.0 <= x);
    i > 0 && x <= ranges[i - 1].1
}

mod num_one {
    pub trait One {
        fn plus_one(self) -> Self;
    }
    impl One for u32 {
        fn plus_one(self) -> Self {
            self.saturating_add(1)
        }
    }
    impl One for u128 {
        fn plus_one(self) -> Self {
            self.saturating_add(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nets: &[&str]) -> IpSet {
        IpSet::new(&nets.iter().map(|n| n.parse().unwrap()).collect::<Vec<_>>())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_v4_v6_and_mapped() {
        let s = set(&["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert!(s.contains(ip("10.1.2.3")));
        assert!(s.contains(ip("192.0.2.7")));
        assert!(!s.contains(ip("192.0.2.8")));
        assert!(!s.contains(ip("11.0.0.0")));
        assert!(s.contains(ip("2001:db8::1")));
        assert!(!s.contains(ip("2001:db9::1")));
        // A dual-stack listener reports IPv4 clients as mapped IPv6.
        assert!(s.contains(ip("::ffff:10.9.9.9")));
        assert!(!s.contains(ip("::ffff:11.9.9.9")));
        // A mapped prefix in the config is the IPv4 prefix.
        let m = set(&["::ffff:192.0.2.0/120"]);
        assert!(m.contains(ip("192.0.2.200")));
        assert!(!m.contains(ip("192.0.3.1")));
    }

    #[test]
    fn everything_and_nothing() {
        let all = set(&["0.0.0.0/0", "::/0"]);
        assert!(all.contains(ip("255.255.255.255")) && all.contains(ip("::")) && all.contains(ip("ffff::1")));
        assert!(!set(&[]).contains(ip("127.0.0.1")));
    }

    #[test]
    fn many_prefixes_agree_with_a_linear_scan() {
        let nets: Vec<IpNet> = (0..5000u32)
            .map(|i| {
                format!("{}.{}.{}.0/{}", 10 + i % 200, (i * 7) % 256, (i * 13) % 256, 20 + i % 5)
                    .parse::<IpNet>()
                    .unwrap()
                    .trunc()
            })
            .collect();
        let s = IpSet::new(&nets);
        for i in 0..2_000u32 {
            let a = IpAddr::from(fastrand::u32(..).to_be_bytes());
            let b = IpAddr::from([10 + (i % 200) as u8, (i * 7 % 256) as u8, fastrand::u8(..), fastrand::u8(..)]);
            for x in [a, b] {
                assert_eq!(s.contains(x), nets.iter().any(|n| n.contains(&x)), "{x}");
            }
        }
    }
}
