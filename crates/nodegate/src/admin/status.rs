//! What the status page shows beyond the counters: the last minute's request and refusal rates
//! (sampled every 5 s), the clients refused most lately (a bounded table fed by the refusal
//! events), and the page itself (`status.html`: one file, no external assets, no build step).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

use crate::events::Refusal;
use crate::metrics::Metrics;
use crate::shutdown::Phase;

/// The page, served at `GET /` on the admin listener.
pub const PAGE: &str = include_str!("status.html");

/// The page's `Content-Security-Policy`: nothing loads but the page's own inline script and style
/// (allowed by their hashes) and its requests to the admin API itself.
pub static CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = |open: &str, close: &str| {
        use base64::Engine as _;
        use sha2::Digest as _;
        let start = PAGE.find(open).map_or(0, |i| i + open.len());
        let end = PAGE[start..].find(close).map_or(start, |i| start + i);
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&PAGE.as_bytes()[start..end]))
    };
    format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; connect-src 'self'; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        hash("<script>", "</script>"),
        hash("<style>", "</style>")
    )
});

/// Request and refusal totals every 5 s, the last minute of them.
#[derive(Default)]
pub struct Rates {
    samples: Mutex<VecDeque<(Instant, u64, u64)>>,
}

const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const WINDOW: Duration = Duration::from_secs(60);

impl Rates {
    fn sample(&self, metrics: &Metrics) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        s.push_back((now, metrics.requests(), metrics.refused_total()));
        while s.front().is_some_and(|(t, ..)| now.duration_since(*t) > WINDOW + SAMPLE_EVERY) {
            s.pop_front();
        }
    }

    /// Requests and refusals a second over the last minute (or as much of it as was seen).
    pub fn per_second(&self, metrics: &Metrics) -> (f64, f64) {
        let (now, requests, refused) = (Instant::now(), metrics.requests(), metrics.refused_total());
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let Some((t, r0, f0)) = s.iter().find(|(t, ..)| now.duration_since(*t) <= WINDOW).copied() else {
            return (0.0, 0.0);
        };
        let secs = now.duration_since(t).as_secs_f64().max(1.0);
        ((requests.saturating_sub(r0)) as f64 / secs, (refused.saturating_sub(f0)) as f64 / secs)
    }
}

/// The clients refused most in the last ten minutes: at most `CAP` addresses; when full, the
/// ones not refused for ten minutes go first, else the least refused (a flood of distinct
/// addresses cannot grow it).
#[derive(Default)]
pub struct TopRefused {
    clients: Mutex<HashMap<IpAddr, Seen>>,
}

struct Seen {
    count: u64,
    last: Instant,
    reason: &'static str,
}

const CAP: usize = 1024;
const FORGET: Duration = Duration::from_secs(600);

impl TopRefused {
    pub fn record(&self, r: &Refusal) {
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= CAP && !clients.contains_key(&r.client) {
            clients.retain(|_, s| now.duration_since(s.last) < FORGET);
            if clients.len() >= CAP
                && let Some(least) = clients.iter().min_by_key(|(_, s)| (s.count, s.last)).map(|(ip, _)| *ip)
            {
                clients.remove(&least);
            }
        }
        let seen = clients.entry(r.client).or_insert(Seen { count: 0, last: now, reason: r.reason.name() });
        if now.duration_since(seen.last) >= FORGET {
            seen.count = 0;
        }
        seen.count += 1;
        seen.last = now;
        seen.reason = r.reason.name();
    }

    /// The `n` most refused, most first.
    pub fn top(&self, n: usize) -> Vec<serde_json::Value> {
        let now = Instant::now();
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = clients.iter().filter(|(_, s)| now.duration_since(s.last) < FORGET).collect();
        all.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(b.1.last.cmp(&a.1.last)));
        all.into_iter()
            .take(n)
            .map(|(ip, s)| {
                serde_json::json!({
                    "client": ip.to_string(),
                    "refusals": s.count,
                    "last_reason": s.reason,
                    "seconds_ago": now.duration_since(s.last).as_secs(),
                })
            })
            .collect()
    }
}

/// Samples the rates and follows the refusals until the gateway stops.
pub fn spawn(
    metrics: Arc<Metrics>,
    rates: Arc<Rates>,
    top: Arc<TopRefused>,
    mut refusals: broadcast::Receiver<Refusal>,
    mut phase: watch::Receiver<Phase>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => rates.sample(&metrics),
                r = refusals.recv() => match r {
                    Ok(r) => top.record(&r),
                    // Fell behind a flood: the table misses some, the counters do not.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = phase.wait_for(|p| *p != Phase::Running) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::RefusalReason;

    #[test]
    fn a_flood_of_distinct_addresses_keeps_the_table_bounded_and_the_worst_in_it() {
        let top = TopRefused::default();
        let refusal = |client: IpAddr| Refusal {
            client,
            reason: RefusalReason::NotExposed,
            route: String::new(),
            time: std::time::SystemTime::now(),
        };
        let worst: IpAddr = "203.0.113.9".parse().unwrap();
        for _ in 0..50 {
            top.record(&refusal(worst));
        }
        for i in 0..20_000u32 {
            top.record(&refusal(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))));
        }
        assert!(top.clients.lock().unwrap().len() <= CAP);
        let first = &top.top(1)[0];
        assert_eq!(first["client"], "203.0.113.9");
        assert_eq!(first["refusals"], 50);
    }

    #[test]
    fn the_policy_hashes_the_inline_script_and_style() {
        assert!(PAGE.contains("<script>") && PAGE.contains("<style>"));
        let csp = &*CSP;
        assert!(csp.contains("script-src 'sha256-") && csp.contains("style-src 'sha256-"), "{csp}");
        assert!(!csp.contains("unsafe-inline"));
    }
}
