//! A simulated IOTA node REST API (chrysalis `/api/v1` and stardust `/api/core/v2`), for nodegate's
//! tests, benchmarks and demo. Its behaviour is switchable at run time through `/control/state`:
//! unsynced (milestone lag), slow, failing, PoW-enabled. Remote PoW does real CPU work.
//!
//! Debug routes let tests see what the gateway forwarded:
//! - `/debug/headers`: the method, target and headers received, as JSON;
//! - `/debug/echo`: the request body streamed back as it arrives;
//! - `/debug/count`: consumes the body, answers its length and SHA-256;
//! - `/debug/bytes?n=N`: a streamed body of N bytes;
//! - `/debug/status?code=N`, `/debug/sleep?ms=N`, `/debug/reset` (closes without answering).
#![forbid(unsafe_code)]

mod api;
mod grpc;
mod jsonrpc;
mod pow;
mod ws;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use pow::{meets_target, mine};

/// How a node starts; all of it can be changed later through `/control/state`.
#[derive(Debug, Clone)]
pub struct Options {
    pub name: String,
    pub synced: bool,
    pub delay: Duration,
    pub failing: bool,
    pub pow: bool,
    /// Leading zero bits a PoW hash needs; each bit doubles the expected work.
    pub pow_difficulty: u32,
    /// A file each `iota_executeTransactionBlock`'s transaction bytes (its first parameter) are
    /// appended to, a line each: what was submitted, kept across the node's restarts (bench/soak
    /// checks that no submission reached a node twice).
    pub submissions_log: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            name: "testnode".into(),
            synced: true,
            delay: Duration::ZERO,
            failing: false,
            pow: false,
            pow_difficulty: 16,
            submissions_log: None,
        }
    }
}

/// The node's switchable behaviour and its counters.
pub struct State {
    pub name: String,
    pub synced: AtomicBool,
    pub delay_ms: AtomicU64,
    pub failing: AtomicBool,
    /// Answers to API routes send their headers, then the connection drops before the body (a
    /// node killed mid-answer). Health probes are answered whole.
    pub cut_bodies: AtomicBool,
    pub pow: AtomicBool,
    pub pow_difficulty: AtomicU32,
    /// Requests to API routes (not control or debug, not health probes).
    pub requests: AtomicU64,
    /// Health probes: requests whose User-Agent is `nodegate-health`.
    pub probes: AtomicU64,
    /// Messages/blocks accepted.
    pub submissions: AtomicU64,
    /// Remote PoW jobs done.
    pub pow_jobs: AtomicU64,
    /// TCP connections accepted.
    pub connections: AtomicU64,
    pub(crate) messages: store::Store,
    /// iota-rebased: checkpoints this node is behind (its checkpoint is the clock's minus this).
    pub checkpoint_lag: AtomicU64,
    /// The minimum PoW score the info reports (`f64` bits); 0: Hornet's defaults (4000, 1500).
    pub min_pow_score: AtomicU64,
    /// The JSON-RPC methods called, newest last (at most 1,000).
    pub rpc_methods: std::sync::Mutex<std::collections::VecDeque<String>>,
    /// JSON-RPC calls that came with an `Authorization` or `X-API-Key` header (a gateway should
    /// keep its clients' credentials to itself).
    pub rpc_credentials: AtomicU64,
    pub(crate) submissions_log: Option<std::sync::Mutex<std::fs::File>>,
}

/// A snapshot of [`State`] as JSON, for `/control/state`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateView {
    pub name: String,
    pub synced: bool,
    pub delay_ms: u64,
    pub failing: bool,
    pub pow: bool,
    pub pow_difficulty: u32,
    pub requests: u64,
    pub probes: u64,
    pub submissions: u64,
    pub pow_jobs: u64,
    pub connections: u64,
    #[serde(default)]
    pub checkpoint_lag: u64,
    /// The JSON-RPC methods that reached this node, oldest first.
    #[serde(default)]
    pub rpc_methods: Vec<String>,
}

/// A change to the state; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatePatch {
    pub synced: Option<bool>,
    pub delay_ms: Option<u64>,
    pub failing: Option<bool>,
    pub pow: Option<bool>,
    pub pow_difficulty: Option<u32>,
    /// Set the counters back to zero.
    pub reset_counters: Option<bool>,
    /// iota-rebased: be this many checkpoints behind.
    pub checkpoint_lag: Option<u64>,
    /// The minimum PoW score the node's info reports.
    pub min_pow_score: Option<f64>,
}

impl State {
    fn new(o: &Options) -> Self {
        State {
            name: o.name.clone(),
            synced: AtomicBool::new(o.synced),
            delay_ms: AtomicU64::new(o.delay.as_millis() as u64),
            failing: AtomicBool::new(o.failing),
            cut_bodies: AtomicBool::new(false),
            pow: AtomicBool::new(o.pow),
            pow_difficulty: AtomicU32::new(o.pow_difficulty),
            requests: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            submissions: AtomicU64::new(0),
            pow_jobs: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            messages: store::Store::default(),
            checkpoint_lag: AtomicU64::new(0),
            min_pow_score: AtomicU64::new(0),
            rpc_methods: std::sync::Mutex::new(std::collections::VecDeque::new()),
            rpc_credentials: AtomicU64::new(0),
            submissions_log: o.submissions_log.as_ref().map(|p| {
                let file = std::fs::OpenOptions::new().create(true).append(true).open(p);
                std::sync::Mutex::new(file.unwrap_or_else(|e| panic!("testnode: cannot open {}: {e}", p.display())))
            }),
        }
    }

    pub fn view(&self) -> StateView {
        StateView {
            name: self.name.clone(),
            synced: self.synced.load(Relaxed),
            delay_ms: self.delay_ms.load(Relaxed),
            failing: self.failing.load(Relaxed),
            pow: self.pow.load(Relaxed),
            pow_difficulty: self.pow_difficulty.load(Relaxed),
            requests: self.requests.load(Relaxed),
            probes: self.probes.load(Relaxed),
            submissions: self.submissions.load(Relaxed),
            pow_jobs: self.pow_jobs.load(Relaxed),
            connections: self.connections.load(Relaxed),
            checkpoint_lag: self.checkpoint_lag.load(Relaxed),
            rpc_methods: self.rpc_methods.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect(),
        }
    }

    pub fn apply(&self, p: &StatePatch) {
        if let Some(v) = p.synced {
            self.synced.store(v, Relaxed);
        }
        if let Some(v) = p.delay_ms {
            self.delay_ms.store(v, Relaxed);
        }
        if let Some(v) = p.failing {
            self.failing.store(v, Relaxed);
        }
        if let Some(v) = p.pow {
            self.pow.store(v, Relaxed);
        }
        if let Some(v) = p.pow_difficulty {
            self.pow_difficulty.store(v.min(40), Relaxed);
        }
        if let Some(v) = p.min_pow_score {
            self.min_pow_score.store(v.to_bits(), Relaxed);
        }
        if let Some(v) = p.checkpoint_lag {
            self.checkpoint_lag.store(v, Relaxed);
        }
        if p.reset_counters == Some(true) {
            self.rpc_methods.lock().unwrap_or_else(|e| e.into_inner()).clear();
            self.requests.store(0, Relaxed);
            self.probes.store(0, Relaxed);
            self.submissions.store(0, Relaxed);
            self.pow_jobs.store(0, Relaxed);
            self.connections.store(0, Relaxed);
        }
    }
}

/// Stored messages, bounded so a long benchmark cannot grow the node without limit.
mod store {
    use std::collections::{HashMap, VecDeque};
    use std::sync::Mutex;

    const CAP: usize = 10_000;

    #[derive(Default)]
    pub struct Store(Mutex<(HashMap<String, serde_json::Value>, VecDeque<String>)>);

    impl Store {
        pub fn insert(&self, id: String, msg: serde_json::Value) {
            let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if g.1.len() >= CAP
                && let Some(old) = g.1.pop_front()
            {
                g.0.remove(&old);
            }
            g.1.push_back(id.clone());
            g.0.insert(id, msg);
        }
        pub fn get(&self, id: &str) -> Option<serde_json::Value> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).0.get(id).cloned()
        }
        pub fn ids(&self, max: usize) -> Vec<String> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).1.iter().rev().take(max).cloned().collect()
        }
    }
}

/// A running test node.
pub struct TestNode {
    addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TestNode {
    /// Binds `addr` (port 0 for any) and serves until stopped or dropped.
    pub async fn start(addr: SocketAddr, options: Options) -> io::Result<TestNode> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(&options));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, state.clone(), stop_rx));
        Ok(TestNode { addr, state, stop, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Stops accepting and closes every connection at once (as a crashed node would).
    pub async fn kill(mut self) {
        self.stop.send_replace(true);
        let _ = (&mut self.task).await;
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn serve(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let mut conns = tokio::task::JoinSet::new();
    let conn_stop = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                state.connections.fetch_add(1, Relaxed);
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let builder = builder.clone();
                let mut stop = conn_stop.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| api::handle(state.clone(), req));
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                });
            }
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

/// The error a handler gives hyper to make it drop the connection without answering.
#[derive(Debug)]
pub struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset on purpose")
    }
}

impl std::error::Error for Reset {}
