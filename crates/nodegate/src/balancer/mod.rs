//! Which node serves a request: power of two random choices over a load estimate that reflects
//! spare capacity.
//!
//! The estimator (after linkerd's and tower's peak-EWMA): each node keeps an exponentially weighted
//! moving average of its response latency (time to response headers) that jumps straight up to any
//! sample above it ("peak") and decays towards newer, lower samples with a 1 s time constant. When
//! the node gets no traffic the estimate decays towards zero as it is read, so an idle node that was
//! slow is tried again. (linkerd decays over 10 s; measured here, that let one outlier answer from a
//! busy node hold it back for many seconds and skewed weighted shares by 6%.)
//!
//! A node's cost is `max(latency, 1 ms) x (in-flight / weight + 1)`: latency times the load per unit
//! of capacity. The floor keeps in-flight counts decisive between nodes that all answer in
//! microseconds, where latency differences are noise. (Balancing `(in-flight + 1) / weight` instead
//! settles at in-flight counts of weight minus one, which at 16 requests in flight gave weights
//! 1:2:3 shares of 14/33/53%; this form settles at in-flight counts proportional to weight.) A node
//! that is slow because it is busy (PoW, heavy queries) shows a higher latency and more requests in
//! flight, so it is picked less within a few requests; two random candidates rather than the global
//! minimum keep a fresh fast node from being stampeded.
//!
//! Only nodes that are healthy (active probes, see health/) and not ejected (passive failures) are
//! candidates. Health and ejection state lives here; health/ and the proxy update it.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::time::Instant;

use crate::upstream::NodePool;
use crate::upstream::Upstream;

const DECAY: Duration = Duration::from_secs(1);
const LATENCY_FLOOR_NS: f64 = 1_000_000.0;
/// A new node starts at the floor: tried at once, and its first slow answer raises it at once (the
/// estimate jumps to peaks). A pessimistic start would starve it: the estimate moves with time, not
/// with the number of requests, so others' estimates would stay below it for seconds.
const INITIAL_LATENCY_NS: f64 = 0.0;

/// One node: how to reach it and what the gateway knows of it.
pub struct Node {
    pub name: Arc<str>,
    pub url: String,
    /// The node's own authority, sent as `Host`.
    pub host: HeaderValue,
    pub base_path: String,
    pub pool: Arc<NodePool>,
    /// Weight and `pow` can change on reload without losing the node's state.
    weight: AtomicU32,
    /// The operator allows remote PoW on this node (`pow = true`).
    pow_allowed: AtomicBool,
    /// Removed by a reload: its probes stop; requests already on it finish.
    retired: AtomicBool,
    healthy: AtomicBool,
    /// The node reports the PoW feature (from its info route).
    pow_feature: AtomicBool,
    /// The node's minimum PoW score (`f64` bits; 0: not known), from its info.
    min_pow_score: std::sync::atomic::AtomicU64,
    reason: Mutex<String>,
    in_flight: AtomicU32,
    latency: Mutex<Ewma>,
    requests: AtomicU64,
    failures_in_row: AtomicU32,
    /// Ejections since the node last answered well: the back-off's exponent.
    ejections_in_row: AtomicU32,
    ejections: AtomicU64,
    ejected_until: Mutex<Option<Instant>>,
    /// Requests this node answered, by route class, method and status (`/metrics`).
    pub counts: crate::metrics::RequestCounts,
    /// Its response times, to the response head.
    pub latency_hist: crate::metrics::Histogram,
}

struct Ewma {
    ns: f64,
    at: Instant,
}

impl Ewma {
    fn decayed(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.ns * (-elapsed / DECAY.as_secs_f64()).exp()
    }
}

/// What `/status` shows of a node.
#[derive(Debug, serde::Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub url: String,
    pub healthy: bool,
    pub ejected: bool,
    pub reason: String,
    pub in_flight: u32,
    pub latency_ms: f64,
    pub weight: u32,
    pub pow_allowed: bool,
    pub pow_feature: bool,
    pub requests: u64,
    pub ejections: u64,
}

impl Node {
    pub fn new(n: &NodeSettings, upstream: &Upstream) -> Arc<Node> {
        Arc::new(Node {
            name: n.name.as_str().into(),
            url: format!("{}://{}{}", n.scheme, n.authority, n.base_path),
            host: HeaderValue::from_str(n.authority.as_str()).expect("an authority is a valid header value"),
            base_path: n.base_path.clone(),
            pool: NodePool::new(
                n.authority.host(),
                n.authority.port_u16().unwrap_or(if n.scheme == http::uri::Scheme::HTTPS { 443 } else { 80 }),
                n.scheme == http::uri::Scheme::HTTPS,
                n.max_connections,
                upstream,
            ),
            weight: AtomicU32::new(n.weight),
            pow_allowed: AtomicBool::new(n.pow),
            retired: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            pow_feature: AtomicBool::new(false),
            min_pow_score: std::sync::atomic::AtomicU64::new(0),
            reason: Mutex::new("not probed yet".into()),
            in_flight: AtomicU32::new(0),
            latency: Mutex::new(Ewma { ns: INITIAL_LATENCY_NS, at: Instant::now() }),
            requests: AtomicU64::new(0),
            failures_in_row: AtomicU32::new(0),
            ejections_in_row: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            ejected_until: Mutex::new(None),
            counts: Default::default(),
            latency_hist: Default::default(),
        })
    }

    fn cost(&self, now: Instant) -> f64 {
        let latency = self.latency.lock().unwrap_or_else(|e| e.into_inner()).decayed(now).max(LATENCY_FLOOR_NS);
        latency * (f64::from(self.in_flight.load(Relaxed)) / f64::from(self.weight()) + 1.0)
    }

    /// The balancer's cost for this node now, in seconds (`/metrics`).
    pub fn load_estimate(&self) -> f64 {
        self.cost(Instant::now()) / 1e9
    }

    fn available(&self, now: Instant, need_pow: bool) -> bool {
        self.healthy.load(Relaxed)
            && (!need_pow || (self.pow_allowed.load(Relaxed) && self.pow_feature.load(Relaxed)))
            && self.ejected_until.lock().unwrap_or_else(|e| e.into_inner()).is_none_or(|until| now >= until)
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Relaxed)
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        self.requests.fetch_add(1, Relaxed);
        InFlight { node: self.clone(), start: Instant::now() }
    }

    /// A latency sample: peak-sensitive, decaying towards lower samples.
    fn observe(&self, sample: Duration, now: Instant) {
        self.latency_hist.observe(sample);
        let sample = sample.as_nanos() as f64;
        let mut e = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let current = e.decayed(now);
        e.ns = if sample > current {
            sample
        } else {
            let w = (-now.saturating_duration_since(e.at).as_secs_f64() / DECAY.as_secs_f64()).exp();
            current * w + sample * (1.0 - w)
        };
        e.at = now;
    }

    /// The node answered; a run of failures, and of ejections, ends.
    pub fn success(&self) {
        if self.failures_in_row.load(Relaxed) != 0 {
            self.failures_in_row.store(0, Relaxed);
        }
        if self.ejections_in_row.load(Relaxed) != 0 {
            self.ejections_in_row.store(0, Relaxed);
        }
    }

    /// A connect failure or a 5xx. After `p.eject_after` in a row the node is ejected for
    /// `p.eject_for`, doubled for each ejection in a row, up to 16 times that.
    /// Failures reported while the node is ejected are the same outage (requests that were
    /// already on their way when it was ejected): they neither count nor eject it again.
    pub fn failure(&self, p: &Passive) {
        if self.ejected_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|until| Instant::now() < until) {
            return;
        }
        let n = self.failures_in_row.fetch_add(1, Relaxed) + 1;
        if n < p.eject_after {
            return;
        }
        self.failures_in_row.store(0, Relaxed);
        self.ejections.fetch_add(1, Relaxed);
        let k = self.ejections_in_row.fetch_add(1, Relaxed).min(4);
        let backoff = p.eject_for * (1u32 << k);
        *self.ejected_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + backoff);
        tracing::warn!(node = %self.name, failures = n, ?backoff, "node ejected after consecutive failures");
    }

    /// Set by the active health checks.
    pub fn set_min_pow_score(&self, score: f64) {
        self.min_pow_score.store(score.max(0.0).to_bits(), Relaxed);
    }

    /// The node's minimum PoW score; `None` until its info has said.
    pub fn min_pow_score(&self) -> Option<f64> {
        Some(f64::from_bits(self.min_pow_score.load(Relaxed))).filter(|s| *s > 0.0)
    }

    pub fn set_health(&self, healthy: bool, reason: String, pow_feature: bool) {
        let was = self.healthy.swap(healthy, Relaxed);
        self.pow_feature.store(pow_feature, Relaxed);
        if was != healthy {
            if healthy {
                tracing::info!(node = %self.name, "node healthy");
            } else {
                tracing::warn!(node = %self.name, %reason, "node unhealthy");
            }
        }
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    pub fn status(&self) -> NodeStatus {
        let now = Instant::now();
        NodeStatus {
            name: self.name.to_string(),
            url: self.url.clone(),
            healthy: self.healthy.load(Relaxed),
            ejected: self.ejected_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|u| now < u),
            reason: self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            in_flight: self.in_flight.load(Relaxed),
            latency_ms: self.latency.lock().unwrap_or_else(|e| e.into_inner()).decayed(now) / 1e6,
            weight: self.weight(),
            pow_allowed: self.pow_allowed.load(Relaxed),
            pow_feature: self.pow_feature.load(Relaxed),
            requests: self.requests.load(Relaxed),
            ejections: self.ejections.load(Relaxed),
        }
    }
}

/// A request in flight on a node; records its latency when the answer's head arrives and leaves
/// the in-flight count when dropped (after the response body).
pub struct InFlight {
    node: Arc<Node>,
    start: Instant,
}

impl InFlight {
    /// The exchange failed after the answer began (the body stalled or broke): a passive failure.
    pub fn failed(&self, p: &Passive) {
        self.node.failure(p);
    }

    pub fn answered(&self) {
        let now = Instant::now();
        self.node.observe(now - self.start, now);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.node.in_flight.fetch_sub(1, Relaxed);
    }
}

#[derive(Debug, Clone)]
/// One `[[node]]`, as the balancer runs it.
pub struct NodeSettings {
    pub name: String,
    /// Scheme and authority the node is reached at.
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path prefix requests are mounted under ("" when the URL has none).
    pub base_path: String,
    pub weight: u32,
    pub pow: bool,
    /// Connections to the node at most (in use, idle or tunnelling).
    pub max_connections: usize,
}

/// Passive health settings.
#[derive(Debug, Clone, Copy)]
pub struct Passive {
    pub eject_after: u32,
    pub eject_for: Duration,
}

/// The configured nodes; replaced whole on reload while requests read it without locking.
pub struct Balancer {
    nodes: ArcSwap<Vec<Arc<Node>>>,
}

/// What a reload changed.
#[derive(Default)]
pub struct Reloaded {
    pub added: Vec<Arc<Node>>,
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

impl Balancer {
    pub fn new(nodes: Vec<Arc<Node>>) -> Balancer {
        Balancer { nodes: ArcSwap::from_pointee(nodes) }
    }

    pub fn nodes(&self) -> Arc<Vec<Arc<Node>>> {
        self.nodes.load_full()
    }

    /// Takes a new node list: a node with the same name and URL keeps its state (health, latency,
    /// pooled connections) and takes the new weight and `pow`; others are added or retired.
    /// Requests in flight on a retired node finish normally.
    pub fn reload(&self, configs: &[NodeSettings], upstream: &Upstream) -> Reloaded {
        let old = self.nodes.load_full();
        let mut next = Vec::with_capacity(configs.len());
        let mut changes = Reloaded::default();
        for c in configs {
            let url = format!("{}://{}{}", c.scheme, c.authority, c.base_path);
            match old.iter().find(|n| *n.name == *c.name && n.url == url) {
                Some(n) => {
                    n.weight.store(c.weight, Relaxed);
                    n.pow_allowed.store(c.pow, Relaxed);
                    changes.kept.push(c.name.clone());
                    next.push(n.clone());
                }
                None => {
                    let n = Node::new(c, upstream);
                    changes.added.push(n.clone());
                    next.push(n);
                }
            }
        }
        for n in old.iter().filter(|n| !next.iter().any(|m| Arc::ptr_eq(m, n))) {
            n.retired.store(true, Relaxed);
            changes.removed.push(n.name.to_string());
        }
        self.nodes.store(Arc::new(next));
        changes
    }

    /// Picks the cheaper of two available nodes drawn at random in proportion to their weights,
    /// never one in `exclude` (a node a retry already failed on). `None` when none is available.
    ///
    /// Drawing by weight, as well as weighing the load, is what makes shares follow weights: with
    /// uniform draws a heavy node is not even a candidate often enough (measured: 18/37/45% for
    /// weights 1:2:3).
    pub fn pick(&self, need_pow: bool, exclude: Option<&Node>) -> Option<Arc<Node>> {
        let now = Instant::now();
        let nodes = self.nodes.load();
        let ok = |n: &&Arc<Node>| n.available(now, need_pow) && !exclude.is_some_and(|x| std::ptr::eq(x, &***n));
        let total: u64 = nodes.iter().filter(ok).map(|n| u64::from(n.weight())).sum();
        if total == 0 {
            return None;
        }
        let x = draw(&nodes, total, None, &ok)?;
        let rest = total - u64::from(x.weight());
        if rest == 0 {
            return Some(x.clone());
        }
        let y = draw(&nodes, rest, Some(x), &ok)?;
        // `x` was drawn first: it wins ties, so equal nodes are picked in proportion to weight.
        Some(if y.cost(now) < x.cost(now) { y.clone() } else { x.clone() })
    }
}

/// One available node drawn with probability weight / `total`, skipping `skip`.
fn draw<'a>(
    nodes: &'a [Arc<Node>],
    total: u64,
    skip: Option<&Arc<Node>>,
    ok: &impl Fn(&&Arc<Node>) -> bool,
) -> Option<&'a Arc<Node>> {
    let mut ticket = fastrand::u64(..total);
    for n in nodes.iter().filter(ok) {
        if skip.is_some_and(|s| Arc::ptr_eq(s, n)) {
            continue;
        }
        let w = u64::from(n.weight());
        if ticket < w {
            return Some(n);
        }
        ticket -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(weights: &[u32]) -> Balancer {
        let cfg = crate::Config::parse(
            &weights
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    format!("[[node]]\nname = \"n{i}\"\nurl = \"http://127.0.0.1:{}\"\nweight = {w}\n", 1000 + i)
                })
                .collect::<String>(),
            "t.toml",
        )
        .unwrap();
        Balancer::new(cfg.nodes.iter().map(|n| Node::new(n, &cfg.upstream)).collect())
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_node_gets_less_traffic() {
        let b = nodes(&[1, 1, 1]);
        let mut picks = [0u32; 3];
        for _ in 0..3000 {
            let n = b.pick(false, None).unwrap().clone();
            let i = n.name[1..].parse::<usize>().unwrap();
            picks[i] += 1;
            let guard = n.start();
            // Node 0 answers in 20 ms, the others in 1 ms.
            tokio::time::advance(if i == 0 { Duration::from_millis(20) } else { Duration::from_millis(1) }).await;
            guard.answered();
        }
        assert!(picks[0] < 300, "slow node got {} of 3000: {picks:?}", picks[0]);
    }

    #[tokio::test(start_paused = true)]
    async fn weights_are_honoured_on_equal_nodes() {
        let b = nodes(&[1, 2, 3]);
        let mut picks = [0u32; 3];
        let mut in_flight = std::collections::VecDeque::new();
        for _ in 0..6000 {
            let n = b.pick(false, None).unwrap().clone();
            picks[n.name[1..].parse::<usize>().unwrap()] += 1;
            in_flight.push_back(n.start());
            // Twelve requests in flight at a time, all answered in 1 ms.
            if in_flight.len() > 12 {
                tokio::time::advance(Duration::from_millis(1)).await;
                let g = in_flight.pop_front().unwrap();
                g.answered();
            }
        }
        let total: u32 = picks.iter().sum();
        for (i, w) in [1.0, 2.0, 3.0].iter().enumerate() {
            let share = f64::from(picks[i]) / f64::from(total);
            let want = w / 6.0;
            assert!((share - want).abs() < want * 0.1, "node {i}: share {share:.3}, want {want:.3} ({picks:?})");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_outage_is_one_ejection() {
        let b = nodes(&[1, 1]);
        let p = Passive { eject_after: 2, eject_for: Duration::from_secs(10) };
        // Ten requests that were in flight when the node died all fail together.
        for _ in 0..10 {
            b.nodes()[1].failure(&p);
        }
        assert_eq!(b.nodes()[1].status().ejections, 1);
        // The first ejection's back-off, not a doubled one.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!((0..50).any(|_| &*b.pick(false, None).unwrap().name == "n1"));
        // Still failing after it: a second ejection, now doubled.
        b.nodes()[1].failure(&p);
        b.nodes()[1].failure(&p);
        assert_eq!(b.nodes()[1].status().ejections, 2);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!((0..50).all(|_| &*b.pick(false, None).unwrap().name == "n0"));
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_nodes_are_never_picked() {
        let b = nodes(&[1, 1, 1]);
        b.nodes()[1].set_health(false, "unsynced".into(), false);
        let p = Passive { eject_after: 2, eject_for: Duration::from_secs(10) };
        b.nodes()[2].failure(&p);
        b.nodes()[2].failure(&p);
        for _ in 0..100 {
            assert_eq!(&*b.pick(false, None).unwrap().name, "n0");
        }
        assert!(b.pick(false, Some(&b.nodes()[0])).is_none());
        // No node has both pow = true and the PoW feature.
        assert!(b.pick(true, None).is_none());
        // The ejection ends after its back-off.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!((0..50).any(|_| &*b.pick(false, None).unwrap().name == "n2"));
    }
}
