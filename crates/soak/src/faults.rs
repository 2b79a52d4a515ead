//! The fault schedule, run in rounds until the deadline. Each fault's window is logged; only the
//! ones marked `may fail` excuse errors (and for a few seconds after they end).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Log;
use crate::clients::call;
use crate::setup::{Env, Service};

/// What the schedule does.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGHUP to both gateways.
    Reload,
    /// A node killed (SIGKILL), restarted when the fault ends.
    KillNode(usize),
    /// A node answering 400 ms late.
    SlowNode(usize),
    /// A node answering 500 to everything (and 503 to health checks).
    FailingNode(usize),
    /// Redis killed (SIGKILL), restarted when the fault ends.
    KillRedis,
    /// Redis frozen (SIGSTOP), thawed (SIGCONT) when the fault ends.
    FreezeRedis,
    /// The HTTPS gateway's certificate and key replaced on disk.
    RenewCert,
    /// The client at 127.0.0.200 banned through the plain gateway's admin API, for the fault's
    /// length (the ban expires by itself; the other gateway learns it through Redis).
    Ban,
}

impl Fault {
    fn name(self) -> String {
        match self {
            Fault::Reload => "reload (SIGHUP)".into(),
            Fault::KillNode(i) => format!("node n{i} killed"),
            Fault::SlowNode(i) => format!("node n{i} 400 ms slow"),
            Fault::FailingNode(i) => format!("node n{i} answering 5xx"),
            Fault::KillRedis => "redis killed".into(),
            Fault::FreezeRedis => "redis frozen (SIGSTOP)".into(),
            Fault::RenewCert => "certificate renewed".into(),
            Fault::Ban => "127.0.0.200 banned".into(),
        }
    }

    /// Whether clients may see errors while it lasts: a request in flight to a node that dies, or
    /// a 5xx passed on before the node is ejected. Nothing else excuses an error.
    fn may_fail(self) -> bool {
        matches!(self, Fault::KillNode(_) | Fault::FailingNode(_))
    }
}

/// (offset, length) in seconds of a 120 s round, scaled to the round's length.
const SCHEDULE: &[(f64, f64, Fault)] = &[
    (0.0, 0.0, Fault::Reload),
    (10.0, 10.0, Fault::KillNode(1)),
    (30.0, 0.0, Fault::Reload),
    (32.0, 10.0, Fault::SlowNode(0)),
    (50.0, 10.0, Fault::FailingNode(2)),
    (60.0, 0.0, Fault::Reload),
    (65.0, 10.0, Fault::KillRedis),
    (80.0, 10.0, Fault::FreezeRedis),
    (90.0, 0.0, Fault::Reload),
    (95.0, 0.0, Fault::RenewCert),
    (100.0, 10.0, Fault::Ban),
];

pub async fn run(env: Arc<Env>, log: Arc<Log>, deadline: Instant, cycle: f64) {
    let scale = cycle / 120.0;
    let mut round = 0.0;
    'rounds: loop {
        for &(offset, length, fault) in SCHEDULE {
            let at = log.start + Duration::from_secs_f64(round + offset * scale);
            let until = at + Duration::from_secs_f64(length * scale);
            if until + Duration::from_secs(2) > deadline {
                break 'rounds;
            }
            tokio::time::sleep_until(at.into()).await;
            let began = log.now();
            if let Err(e) = begin(&env, fault, length * scale).await {
                eprintln!("soak: {} failed to start: {e}", fault.name());
            }
            if length > 0.0 {
                // Faults overlap only with instantaneous ones (reloads): wait in a task of its own.
                let (env, log) = (env.clone(), log.clone());
                tokio::spawn(async move {
                    tokio::time::sleep_until(until.into()).await;
                    if let Err(e) = end(&env, fault).await {
                        eprintln!("soak: {} failed to end: {e}", fault.name());
                    }
                    let mut faults = log.faults.lock().unwrap_or_else(|e| e.into_inner());
                    faults.push((began, log.now(), fault.name(), fault.may_fail()));
                });
            } else {
                let mut faults = log.faults.lock().unwrap_or_else(|e| e.into_inner());
                faults.push((began, began, fault.name(), false));
            }
        }
        round += cycle;
    }
    // Let the last fault's end land.
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn set_node(env: &Env, i: usize, patch: &str) -> Result<(), String> {
    let (status, body) = call(env.nodes[i], "POST", "/control/state", Some(patch), &[]).await?;
    (status == 200).then_some(()).ok_or(format!("control/state answered {status}: {body}"))
}

async fn begin(env: &Env, fault: Fault, length: f64) -> Result<(), String> {
    match fault {
        Fault::Reload => env.signal_gateways("HUP"),
        Fault::KillNode(i) => env.kill(Service::Node(i)),
        Fault::SlowNode(i) => set_node(env, i, r#"{"delay_ms":400}"#).await?,
        Fault::FailingNode(i) => set_node(env, i, r#"{"failing":true}"#).await?,
        Fault::KillRedis => env.kill(Service::Redis),
        Fault::FreezeRedis => env.signal(Service::Redis, "STOP"),
        Fault::RenewCert => env.renew_cert().map_err(|e| e.to_string())?,
        Fault::Ban => {
            let body = format!(r#"{{"address":"127.0.0.200","for":"{}s","reason":"soak"}}"#, length.round().max(1.0));
            let (status, text) = call(env.admin, "POST", "/bans", Some(&body), &[]).await?;
            if status != 200 && status != 201 {
                return Err(format!("POST /bans answered {status}: {text}"));
            }
        }
    }
    Ok(())
}

async fn end(env: &Env, fault: Fault) -> Result<(), String> {
    match fault {
        Fault::KillNode(i) => env.restart(Service::Node(i)).await?,
        Fault::SlowNode(i) => set_node(env, i, r#"{"delay_ms":0}"#).await?,
        Fault::FailingNode(i) => set_node(env, i, r#"{"failing":false}"#).await?,
        Fault::KillRedis => env.restart(Service::Redis).await?,
        Fault::FreezeRedis => env.signal(Service::Redis, "CONT"),
        Fault::Reload | Fault::RenewCert | Fault::Ban => {}
    }
    Ok(())
}
