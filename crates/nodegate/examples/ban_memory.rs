//! What bans cost in memory and on the accept path, at the sizes issue 13 names: 100,000 bans in
//! force (each with evidence) and a jail tracking 1,000,000 addresses with failures, then
//! 2,000,000 more addresses to show the tables stay bounded. Run by `bench/bans`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use nodegate::bans::jail::{Jail, JailSettings};
use nodegate::bans::list::{BanList, Decision, Evidence, unix_now};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let base = rss_kib();
    let list = BanList::default();
    let line = "Nov 27 09:00:01 host sshd[4242]: Failed password for invalid user administrator from 203.0.113.77 port 52144 ssh2";
    let now = time::OffsetDateTime::now_utc();
    for i in 0..100_000u32 {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i));
        let events = (0..5).map(|_| Evidence::new(now, line)).collect();
        let d = Decision {
            net: ip.into(),
            until: unix_now() + 3600,
            jail: "sshd".into(),
            reason: "5 failures within 10m".into(),
            step: 0,
            events,
            by: list.id().to_owned(),
            removed: false,
        };
        list.ban(d).await;
    }
    let bans = rss_kib();
    println!(
        "100,000 bans in force (each with 5 log lines of evidence; the newest 10,000 keep theirs): {:.1} MiB",
        mib(bans - base)
    );

    let start = Instant::now();
    let mut hits = 0;
    for i in 0..1_000_000u32 {
        hits += list.is_banned(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i * 7 % 200_000))) as u32;
    }
    let per = start.elapsed() / 1_000_000;
    println!("the accept path's check with 100,000 bans: {per:?} a connection ({hits} of 1,000,000 banned)");

    let mut jail = Jail::new(JailSettings {
        maxretry: 5,
        findtime: Duration::from_secs(600),
        bantime: Duration::from_secs(600),
        increment: true,
        max_bantime: Duration::from_secs(7 * 86_400),
        escalate_after: 3,
        ipv6_prefix: 64,
        max_tracked: 1_000_000,
    });
    let before = rss_kib();
    let t = tokio::time::Instant::now();
    for i in 0..1_000_000u32 {
        jail.failure(IpAddr::V4(Ipv4Addr::from(0x0c00_0000 + i)), t);
    }
    let tracked = rss_kib();
    println!(
        "a jail tracking 1,000,000 addresses with failures: {:.1} MiB ({} tracked)",
        mib(tracked - before),
        jail.tracked().0
    );
    let start = Instant::now();
    for i in 0..2_000_000u32 {
        jail.failure(IpAddr::V4(Ipv4Addr::from(0x0d00_0000 + i)), t);
    }
    println!(
        "2,000,000 more addresses: {} tracked, {:.1} MiB over the 1,000,000 ({:?} a failure)",
        jail.tracked().0,
        mib(rss_kib().saturating_sub(tracked)),
        start.elapsed() / 2_000_000
    );
}
