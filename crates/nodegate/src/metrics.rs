//! What `GET /metrics` on the admin listener reports, in the Prometheus text format
//! (prometheus-client's encoder, collected at scrape time).
//!
//! Requests are counted where they end (`Pipeline::respond`) into fixed tables of atomics indexed
//! by route class, method and status, one table a node and one for requests no node answered:
//! one relaxed add a request and no lock or hash on the request path. Everything else (node
//! health and load, bans, certificates, Redis) is read from where it already lives when Prometheus
//! scrapes. Every label's values are bounded: route classes, methods and statuses are fixed lists
//! (a status outside the list is counted as its class, `4xx`), nodes, jails and certificates
//! come from the config. No client address or path is ever a label.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::Method;

use crate::events::RefusalReason;
use crate::pipeline::route_policy::Access;

/// The route classes: the access level of the rule that decided, or none.
pub const CLASSES: [&str; 5] = ["public", "key", "admin", "deny", "none"];
const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "OTHER"];
/// Statuses counted by their code; any other is counted under its class (`2xx` ... `5xx`).
const STATUSES: [u16; 28] = [
    101, 200, 201, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 411, 413, 414, 415, 421, 429, 431,
    500, 501, 502, 503, 504,
];
const STATUS_SLOTS: usize = STATUSES.len() + 5;
const SLOTS: usize = CLASSES.len() * METHODS.len() * STATUS_SLOTS;

/// Latency buckets, seconds (upper bounds; `+Inf` is implied).
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// The same bounds in nanoseconds, for the request path.
const BUCKETS_NS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

pub fn class_index(access: Option<Access>) -> usize {
    match access {
        Some(Access::Public) => 0,
        Some(Access::Key) => 1,
        Some(Access::Admin) => 2,
        Some(Access::Deny) => 3,
        None => 4,
    }
}

pub fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        _ => 7,
    }
}

fn status_index(status: u16) -> usize {
    match STATUSES.binary_search(&status) {
        Ok(i) => i,
        Err(_) => STATUSES.len() + usize::from((status / 100).clamp(1, 5)) - 1,
    }
}

fn status_label(slot: usize) -> String {
    match STATUSES.get(slot) {
        Some(s) => s.to_string(),
        None => format!("{}xx", slot - STATUSES.len() + 1),
    }
}

/// Requests by route class, method and status.
pub struct RequestCounts(Box<[AtomicU64]>);

impl Default for RequestCounts {
    fn default() -> Self {
        RequestCounts((0..SLOTS).map(|_| AtomicU64::new(0)).collect())
    }
}

impl RequestCounts {
    #[inline]
    pub fn count(&self, class: usize, method: usize, status: u16) {
        let i = (class * METHODS.len() + method) * STATUS_SLOTS + status_index(status);
        self.0[i].fetch_add(1, Relaxed);
    }

    /// Each non-zero count with its class, method and status.
    pub fn each(&self) -> impl Iterator<Item = (&'static str, &'static str, String, u64)> + '_ {
        self.0.iter().enumerate().filter_map(|(i, n)| {
            let n = n.load(Relaxed);
            (n > 0).then(|| {
                let (rest, status) = (i / STATUS_SLOTS, i % STATUS_SLOTS);
                let (class, method) = (rest / METHODS.len(), rest % METHODS.len());
                (CLASSES[class], METHODS[method], status_label(status), n)
            })
        })
    }
}

/// A latency histogram of atomics: an observation is two relaxed adds and a bucket add.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    pub count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    #[inline]
    pub fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        if let Some(i) = BUCKETS_NS.iter().position(|b| ns <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    pub fn encode(&self, encoder: &mut prometheus_client::encoding::MetricEncoder<'_>) -> fmt::Result {
        let mut seen = 0;
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(le, n)| {
                seen += n.load(Relaxed);
                (*le, seen)
            })
            .collect();
        // The count is read last: never below the cumulative buckets (`+Inf` is the count).
        let count = self.count.load(Relaxed).max(seen);
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }
}

/// The ways a request can go over a limit (`nodegate_limit_refusals_total{limit}`).
pub const LIMITS: [&str; 7] = ["per-client", "route", "pow", "method", "in-flight", "streams", "subscriptions"];

/// The gateway's own counts (node-level ones live with each node).
pub struct Metrics {
    /// Requests no node answered (refused, or no node available).
    pub unanswered: RequestCounts,
    /// Client-facing latency, to the response head, by route class.
    pub latency: [Histogram; CLASSES.len()],
    pub refusals: [AtomicU64; RefusalReason::ALL.len()],
    pub limits: [AtomicU64; LIMITS.len()],
    /// TLS handshakes done, failed, timed out.
    pub tls: [AtomicU64; 3],
    /// Config reloads applied and refused.
    pub reloads: [AtomicU64; 2],
    /// When the config in force was loaded (unix seconds).
    pub config_loaded: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            unanswered: RequestCounts::default(),
            latency: Default::default(),
            refusals: Default::default(),
            limits: Default::default(),
            tls: Default::default(),
            reloads: Default::default(),
            config_loaded: AtomicU64::new(crate::bans::list::unix_now()),
        }
    }
}

#[derive(Clone, Copy)]
pub enum Handshake {
    Done,
    Failed,
    TimedOut,
}

impl Metrics {
    pub fn refused(&self, reason: RefusalReason) {
        if let Some(i) = RefusalReason::ALL.iter().position(|r| *r == reason) {
            self.refusals[i].fetch_add(1, Relaxed);
        }
    }

    /// A request refused by a limit named in `LIMITS`.
    pub fn limited(&self, limit: &str) {
        if let Some(i) = LIMITS.iter().position(|l| *l == limit) {
            self.limits[i].fetch_add(1, Relaxed);
        }
    }

    pub fn handshake(&self, h: Handshake) {
        self.tls[h as usize].fetch_add(1, Relaxed);
    }

    pub fn reloaded(&self, applied: bool) {
        self.reloads[usize::from(!applied)].fetch_add(1, Relaxed);
        if applied {
            self.config_loaded.store(crate::bans::list::unix_now(), Relaxed);
        }
    }

    /// The refusals so far, by reason (for the status page).
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        RefusalReason::ALL.iter().zip(&self.refusals).map(|(r, n)| (r.name(), n.load(Relaxed))).collect()
    }

    /// Every refusal so far, whatever the reason.
    pub fn refused_total(&self) -> u64 {
        self.refusals.iter().map(|n| n.load(Relaxed)).sum()
    }

    /// Every request answered so far, by anyone.
    pub fn requests(&self) -> u64 {
        self.latency.iter().map(|h| h.count.load(Relaxed)).sum()
    }
}

pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_outside_the_list_count_as_their_class() {
        assert_eq!(status_label(status_index(200)), "200");
        assert_eq!(status_label(status_index(418)), "4xx");
        assert_eq!(status_label(status_index(599)), "5xx");
        assert_eq!(status_label(status_index(102)), "1xx");
        assert_eq!(status_label(status_index(0)), "1xx");
        assert_eq!(status_label(status_index(999)), "5xx");
    }

    #[test]
    fn a_histogram_is_cumulative_with_count_and_sum() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.count.load(Relaxed), 3);
        assert_eq!(h.buckets[0].load(Relaxed), 1);
        assert_eq!(h.buckets[3].load(Relaxed), 1);
        assert_eq!(h.buckets.iter().map(|b| b.load(Relaxed)).sum::<u64>(), 2, "60 s is above every bucket");
    }
}
