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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use http::Method;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

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
    fn each(&self) -> impl Iterator<Item = (&'static str, &'static str, String, u64)> + '_ {
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
    count: AtomicU64,
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

    fn encode(&self, encoder: &mut prometheus_client::encoding::MetricEncoder<'_>) -> fmt::Result {
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
    refusals: [AtomicU64; RefusalReason::ALL.len()],
    limits: [AtomicU64; LIMITS.len()],
    /// TLS handshakes done, failed, timed out.
    tls: [AtomicU64; 3],
    /// Config reloads applied and refused.
    reloads: [AtomicU64; 2],
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
            config_loaded: AtomicU64::new(unix_now()),
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
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
            self.config_loaded.store(unix_now(), Relaxed);
        }
    }

    /// The refusals so far, by reason (for the status page).
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        RefusalReason::ALL.iter().zip(&self.refusals).map(|(r, n)| (r.name(), n.load(Relaxed))).collect()
    }

    /// Every request answered so far, by anyone.
    pub fn requests(&self) -> u64 {
        self.latency.iter().map(|h| h.count.load(Relaxed)).sum()
    }
}

/// Everything a scrape reads, gathered from the running gateway.
pub struct Scrape {
    pub metrics: Arc<Metrics>,
    pub balancer: Arc<crate::balancer::Balancer>,
    pub bans: crate::admin::BanAdmin,
    pub cluster: Option<Arc<crate::cluster::ClusterState>>,
    pub tls: Option<Arc<crate::tls::TlsServer>>,
}

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

/// Writes one metric without labels.
fn single(e: &mut DescriptorEncoder, name: &str, help: &str, kind: MetricType, v: f64) -> fmt::Result {
    let m = e.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => ConstCounter::new(v).encode(m),
        _ => ConstGauge::new(v).encode(m),
    }
}

/// Writes one metric family: `(labels, value)` per series.
fn family<'a, L: prometheus_client::encoding::EncodeLabelSet + 'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, f64)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in series {
        let f = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(f)?,
            _ => ConstGauge::new(v).encode(f)?,
        }
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let m = &self.metrics;
        family(
            &mut e,
            "nodegate_build_info",
            "The running build (always 1)",
            Gauge,
            [([("version", env!("CARGO_PKG_VERSION"))], 1.0)],
        )?;
        let nodes = self.balancer.nodes();
        let mut requests: Vec<([(&str, String); 4], f64)> = Vec::new();
        for n in nodes.iter() {
            for (class, method, status, v) in n.counts.each() {
                let labels = [
                    ("class", class.to_owned()),
                    ("method", method.to_owned()),
                    ("status", status),
                    ("node", n.name.to_string()),
                ];
                requests.push((labels, v as f64));
            }
        }
        for (class, method, status, v) in m.unanswered.each() {
            let labels = [
                ("class", class.to_owned()),
                ("method", method.to_owned()),
                ("status", status),
                ("node", "none".into()),
            ];
            requests.push((labels, v as f64));
        }
        family(
            &mut e,
            "nodegate_requests",
            "Requests answered, by route class, method, status and the node that answered (none: refused or no node)",
            Counter,
            requests,
        )?;
        {
            let mut h = e.encode_descriptor(
                "nodegate_request_duration_seconds",
                "Time from the request to the response head, as the client sees it, by route class",
                None,
                MetricType::Histogram,
            )?;
            for (class, hist) in CLASSES.iter().zip(&m.latency) {
                if hist.count.load(Relaxed) > 0 {
                    let labels = [("class", *class)];
                    hist.encode(&mut h.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut h = e.encode_descriptor(
                "nodegate_node_response_seconds",
                "Time from sending a request to a node to its response head, by node",
                None,
                MetricType::Histogram,
            )?;
            for n in nodes.iter() {
                let labels = [("node", &*n.name)];
                n.latency_hist.encode(&mut h.encode_family(&labels)?)?;
            }
        }
        let statuses: Vec<_> = nodes.iter().map(|n| (n.name.clone(), n.status(), n.load_estimate())).collect();
        let per_node = |f: &dyn Fn(&crate::balancer::NodeStatus, f64) -> f64| {
            statuses.iter().map(move |(name, s, load)| ([("node", name.to_string())], f(s, *load))).collect::<Vec<_>>()
        };
        family(
            &mut e,
            "nodegate_node_healthy",
            "1 when the node's health check passes",
            Gauge,
            per_node(&|s, _| f64::from(u8::from(s.healthy))),
        )?;
        family(
            &mut e,
            "nodegate_node_ejected",
            "1 while the node is ejected after failures",
            Gauge,
            per_node(&|s, _| f64::from(u8::from(s.ejected))),
        )?;
        family(
            &mut e,
            "nodegate_node_in_flight",
            "Requests on the node now",
            Gauge,
            per_node(&|s, _| f64::from(s.in_flight)),
        )?;
        family(
            &mut e,
            "nodegate_node_latency_seconds",
            "The balancer's moving estimate of the node's response time",
            Gauge,
            per_node(&|s, _| s.latency_ms / 1e3),
        )?;
        family(
            &mut e,
            "nodegate_node_load_estimate_seconds",
            "The balancer's cost for the node: latency x (in-flight / weight + 1); the lowest gets the next request",
            Gauge,
            per_node(&|_, load| load),
        )?;
        family(
            &mut e,
            "nodegate_node_ejections",
            "Times the node was ejected after consecutive failures",
            Counter,
            per_node(&|s, _| s.ejections as f64),
        )?;
        family(
            &mut e,
            "nodegate_refusals",
            "Requests refused, by reason (the reasons [[jail]] reasons names)",
            Counter,
            RefusalReason::ALL.iter().zip(&m.refusals).map(|(r, n)| ([("reason", r.name())], n.load(Relaxed) as f64)),
        )?;
        family(
            &mut e,
            "nodegate_limit_refusals",
            "Requests refused by a rate limit or an in-flight cap, by limit",
            Counter,
            LIMITS.iter().zip(&m.limits).map(|(l, n)| ([("limit", *l)], n.load(Relaxed) as f64)),
        )?;
        single(&mut e, "nodegate_bans_active", "Bans in force", Gauge, self.bans.list.len() as f64)?;
        let jails = self.bans.jails.as_ref().map(|j| j.stats()).unwrap_or_default();
        family(
            &mut e,
            "nodegate_jail_bans",
            "Bans made, by jail",
            Counter,
            jails.iter().map(|j| ([("jail", j.name.clone())], j.bans.load(Relaxed) as f64)),
        )?;
        family(
            &mut e,
            "nodegate_jail_failures",
            "Failures a jail counted",
            Counter,
            jails.iter().map(|j| ([("jail", j.name.clone())], j.failures.load(Relaxed) as f64)),
        )?;
        if let Some(tls) = &self.tls {
            family(
                &mut e,
                "nodegate_tls_handshakes",
                "TLS handshakes, by result",
                Counter,
                ["done", "failed", "timeout"]
                    .iter()
                    .zip(&m.tls)
                    .map(|(r, n)| ([("result", *r)], n.load(Relaxed) as f64)),
            )?;
            family(
                &mut e,
                "nodegate_tls_certificate_expiry_timestamp_seconds",
                "When each certificate served expires (unix seconds), by its first name",
                Gauge,
                tls.resolver.expiries().into_iter().map(|(name, at)| {
                    let secs = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                    ([("name", name)], secs)
                }),
            )?;
        }
        if let Some(c) = &self.cluster {
            single(
                &mut e,
                "nodegate_cluster_redis_up",
                "1 when Redis answered the last limit sync, 0 when it did not",
                Gauge,
                f64::from(u8::from(c.redis() == "up")),
            )?;
        }
        single(
            &mut e,
            "nodegate_access_log_dropped_lines",
            "Access log lines dropped because the writer fell behind",
            Counter,
            crate::access_log::dropped_lines() as f64,
        )?;
        family(
            &mut e,
            "nodegate_config_reloads",
            "Config reloads, by result",
            Counter,
            ["applied", "refused"].iter().zip(&m.reloads).map(|(r, n)| ([("result", *r)], n.load(Relaxed) as f64)),
        )?;
        single(
            &mut e,
            "nodegate_config_loaded_timestamp_seconds",
            "When the config in force was loaded (unix seconds)",
            Gauge,
            m.config_loaded.load(Relaxed) as f64,
        )
    }
}

/// The text a scrape gets.
pub fn render(scrape: Scrape) -> Result<String, fmt::Error> {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
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
