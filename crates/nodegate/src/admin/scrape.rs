//! `GET /metrics`: the gateway's counters (`crate::metrics`) and what the running parts know
//! (nodes, bans, certificates, Redis), collected when Prometheus scrapes and written in its text
//! format by prometheus-client's encoder.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::events::RefusalReason;
use crate::metrics::{CLASSES, LIMITS, Metrics};

/// Everything a scrape reads, gathered from the running gateway.
pub struct Scrape {
    pub metrics: Arc<Metrics>,
    pub balancer: Arc<crate::balancer::Balancer>,
    pub bans: super::BanAdmin,
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
