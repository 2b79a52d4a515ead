//! `soak`: nodegate under mixed traffic, attackers and a schedule of faults, for minutes on end, and
//! a report of what happened (bench/soak runs it; README "Soak").
//!
//! Two gateways (one plain for HTTP/1.1 and h2c, one HTTPS with HTTP/1.1 and h2 by ALPN), sharing
//! limits and bans through one Redis, in front of three testnodes (the iota-rebased profile's
//! JSON-RPC). Clients come from addresses of their own on 127.0.0.0/8, so each has its own limits:
//! readers over every protocol, submitters (each POST with its own transaction bytes, which the
//! nodes log), WebSocket sessions both ways, a keyed caller, a client that gets banned and let go;
//! and attackers: a flood, bad keys, path tricks, slowloris, a reader that stops reading, an HTTP/2
//! client that keeps its window at zero, a reader that is slow but keeps reading, and a flood from a new address for every request. Meanwhile the faults in [`SCHEDULE`] run in a loop.
//!
//! An error is "explained" only when it falls in the window of a fault that may cause errors (a
//! node killed or answering 5xx); every other error counts against the run (goal: 0).

mod clients;
mod faults;
mod report;
mod setup;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(about = "nodegate under mixed traffic, attackers and faults; writes a report")]
pub struct Args {
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// The nodegate binary.
    #[arg(long, default_value = "target/release/nodegate")]
    nodegate: String,
    /// The testnode binary.
    #[arg(long, default_value = "target/release/testnode")]
    testnode: String,
    /// Where the gateways' configs, logs and the report go (a fresh temporary directory by default).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Seconds in one round of the fault schedule (each fault's time is scaled to it).
    #[arg(long, default_value_t = 120.0)]
    cycle: f64,
}

/// One request (or WebSocket message, or attack) and how it ended.
#[derive(Debug, Clone)]
pub struct Rec {
    /// Seconds since the start.
    pub at: f64,
    pub class: &'static str,
    /// `ok`, or what went wrong (`status 502`, `timeout`, `connect: ...`).
    pub outcome: String,
    pub ok: bool,
    pub latency_ms: f64,
}

/// What the clients record into, and the clock they share.
pub struct Log {
    pub start: Instant,
    pub records: Mutex<Vec<Rec>>,
    /// Transaction bytes each submission carried, with whether the gateway answered 200.
    pub submitted: Mutex<Vec<(String, bool)>>,
    /// Fault windows: (start, end, name, may cause errors), seconds since the start.
    pub faults: Mutex<Vec<(f64, f64, String, bool)>>,
    /// Certificates the HTTPS clients were shown (their DER's hash), in order of first sight.
    pub certs: Mutex<Vec<u64>>,
}

impl Log {
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    pub fn record(&self, class: &'static str, began: f64, outcome: Result<(), String>) {
        let at = self.now();
        let (ok, outcome) = match outcome {
            Ok(()) => (true, "ok".to_owned()),
            Err(e) => (false, e),
        };
        let rec = Rec { at, class, outcome, ok, latency_ms: (at - began) * 1000.0 };
        self.records.lock().unwrap_or_else(|e| e.into_inner()).push(rec);
    }
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let code = rt.block_on(run(args));
    std::process::exit(code);
}

async fn run(args: Args) -> i32 {
    let env = match setup::Env::start(&args).await {
        Ok(env) => Arc::new(env),
        Err(e) => {
            eprintln!("soak: cannot set up: {e}");
            return 2;
        }
    };
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let log = Arc::new(Log {
        start: Instant::now(),
        records: Mutex::new(Vec::new()),
        submitted: Mutex::new(Vec::new()),
        faults: Mutex::new(Vec::new()),
        certs: Mutex::new(Vec::new()),
    });
    eprintln!(
        "soak: {:.1} minutes; gateways {} (h1, h2c) and {} (https); admin {} and {}; files in {}",
        args.minutes,
        env.plain,
        env.tls,
        env.admin,
        env.tls_admin,
        env.dir.display()
    );
    let deadline = log.start + duration;
    let samples = tokio::spawn(report::sample(env.clone(), log.clone(), deadline));
    let faults = tokio::spawn(faults::run(env.clone(), log.clone(), deadline, args.cycle));
    let clients = clients::spawn_all(env.clone(), log.clone(), deadline);
    for c in clients {
        let _ = c.await;
    }
    let _ = faults.await;
    let samples = samples.await.unwrap_or_default();
    let verdict = report::write(&env, &log, &samples, args.minutes).await;
    env.stop();
    verdict
}
