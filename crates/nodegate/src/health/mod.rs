//! Active health checks, per node profile, pushed to the balancer by a background task per node
//! (requests never wait for a probe).
//!
//! - iota-chrysalis: `GET /health` is 200, and `GET /api/v1/info` has `data.isHealthy` true and
//!   `latestMilestoneIndex - confirmedMilestoneIndex <= max_milestone_lag`; `features` containing
//!   "PoW" means the node can do remote PoW.
//! - iota-stardust: the same on `/api/core/v2/info` (`status.isHealthy`,
//!   `status.latestMilestone.index`, `status.confirmedMilestone.index`, feature "pow").
//! - iota-rebased: `iota_getLatestCheckpointSequenceNumber` (JSON-RPC) answers a number, at most
//!   `max_checkpoint_lag` behind the highest any node reported lately (`Checkpoints`).
//! - evm: `eth_blockNumber` on `/v1/chain/evm`, at most `max_block_lag` behind the best node.
//! - generic: `[health] path` answers 2xx.
//!
//! A healthy node turns unhealthy after `unhealthy_threshold` failed probes in a row (default 1:
//! an unsynced node is out after one interval) and back after `healthy_threshold` passed probes in a
//! row (default 2). Nodes count as healthy until their first probe, which runs at start.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::watch;

use crate::balancer::Node;
use crate::profile::Profile;
use crate::shutdown::Phase;

#[derive(Debug, Clone, PartialEq)]
/// `[health]`.
pub struct Health {
    /// Active probes on or off; passive ejection works either way.
    pub active: bool,
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
    pub max_milestone_lag: u64,
    /// iota-rebased: checkpoints a node may be behind the best node.
    pub max_checkpoint_lag: u64,
    /// evm: blocks a node may be behind the best node.
    pub max_block_lag: u64,
    /// Consecutive passed probes that make an unhealthy node healthy.
    pub healthy_threshold: u32,
    /// Consecutive failed probes that make a healthy node unhealthy.
    pub unhealthy_threshold: u32,
    /// Health route for the generic profile.
    pub path: String,
    /// Consecutive connect failures or 5xx answers that eject a node between probes.
    pub eject_after: u32,
    /// First ejection's length; doubled for each ejection in a row, up to 16 times.
    pub eject_for: std::time::Duration,
}

/// What a passed probe learned.
#[derive(Debug)]
struct Passed {
    pow_feature: bool,
    /// The node's minimum PoW score (legacy profiles), when its info says.
    min_pow_score: Option<f64>,
}

/// The latest checkpoint each node reported, and when: the best recent one is what the others are
/// measured against (iota-rebased).
#[derive(Default)]
pub struct Checkpoints(std::sync::Mutex<std::collections::HashMap<Arc<str>, (u64, std::time::Instant)>>);

impl Checkpoints {
    /// The highest recently reported (the chain's head as the nodes know it); 0 when none has.
    pub fn best(&self) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).values().map(|(c, _)| *c).max().unwrap_or(0)
    }

    /// Records `node`'s checkpoint; returns the highest reported within `recent` (its own included).
    fn report(&self, node: &Arc<str>, checkpoint: u64, recent: std::time::Duration) -> u64 {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.insert(node.clone(), (checkpoint, std::time::Instant::now()));
        all.retain(|_, (_, at)| at.elapsed() <= recent);
        all.values().map(|(c, _)| *c).max().unwrap_or(checkpoint)
    }
}

/// Probes `node` every interval until the gateway stops or a reload removes the node.
pub fn spawn(
    node: Arc<Node>,
    profile: Profile,
    cfg: Health,
    checkpoints: Arc<Checkpoints>,
    mut phase: watch::Receiver<Phase>,
) {
    tokio::spawn(async move {
        let (mut passed_in_row, mut failed_in_row, mut first) = (0u32, 0u32, true);
        while !node.is_retired() {
            let result = match tokio::time::timeout(cfg.timeout, probe(&node, profile, &cfg, &checkpoints)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", cfg.timeout)),
            };
            let healthy = node.is_healthy();
            match result {
                Ok(p) => {
                    if let Some(min) = p.min_pow_score {
                        node.set_min_pow_score(min);
                    }
                    passed_in_row += 1;
                    failed_in_row = 0;
                    if first || healthy || passed_in_row >= cfg.healthy_threshold {
                        node.set_health(true, "ok".into(), p.pow_feature);
                    } else {
                        node.set_health(
                            false,
                            format!("recovering: {passed_in_row} of {} probes passed", cfg.healthy_threshold),
                            false,
                        );
                    }
                }
                Err(reason) => {
                    failed_in_row += 1;
                    passed_in_row = 0;
                    if first || !healthy || failed_in_row >= cfg.unhealthy_threshold {
                        node.set_health(false, reason, false);
                    }
                }
            }
            first = false;
            tokio::select! {
                _ = tokio::time::sleep(cfg.interval) => {}
                _ = phase.wait_for(|p| *p != Phase::Running) => return,
            }
        }
    });
}

async fn probe(node: &Node, profile: Profile, cfg: &Health, checkpoints: &Checkpoints) -> Result<Passed, String> {
    match profile {
        Profile::IotaRebased | Profile::Evm => {
            let (path, method, what, max_lag, key) = if profile == Profile::Evm {
                ("/v1/chain/evm", "eth_blockNumber", "block", cfg.max_block_lag, "max_block_lag")
            } else {
                (
                    "/",
                    "iota_getLatestCheckpointSequenceNumber",
                    "checkpoint",
                    cfg.max_checkpoint_lag,
                    "max_checkpoint_lag",
                )
            };
            let call = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":[]}}"#);
            let body = request(node, http::Method::POST, path, Some(call)).await?;
            let answer: Value = serde_json::from_slice(&body).map_err(|e| format!("JSON-RPC: not JSON: {e}"))?;
            let height = match &answer["result"] {
                Value::String(s) => match s.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).ok(),
                    None => s.parse::<u64>().ok(),
                },
                Value::Number(n) => n.as_u64(),
                _ => None,
            }
            .ok_or_else(|| {
                format!("{method}: no {what} in {}", answer.to_string().chars().take(200).collect::<String>())
            })?;
            let best = checkpoints.report(&node.name, height, cfg.interval * 3 + cfg.timeout);
            let lag = best.saturating_sub(height);
            if lag > max_lag {
                return Err(format!("{what} {height} is {lag} behind the best node's {best} ({key} {max_lag})"));
            }
            Ok(Passed { pow_feature: false, min_pow_score: None })
        }
        Profile::Generic => {
            get(node, &cfg.path).await?;
            Ok(Passed { pow_feature: false, min_pow_score: None })
        }
        Profile::IotaChrysalis | Profile::IotaStardust => {
            get(node, "/health").await?;
            let info_path = if profile == Profile::IotaChrysalis { "/api/v1/info" } else { "/api/core/v2/info" };
            let body = get(node, info_path).await?;
            let info: Value = serde_json::from_slice(&body).map_err(|e| format!("{info_path}: not JSON: {e}"))?;
            judge_info(&info, profile, cfg.max_milestone_lag).map_err(|e| format!("{info_path}: {e}"))
        }
    }
}

/// Reads an info document: healthy, synced within `max_lag` milestones, and whether it offers PoW.
fn judge_info(info: &Value, profile: Profile, max_lag: u64) -> Result<Passed, String> {
    let (healthy, latest, confirmed, features) = match profile {
        Profile::IotaChrysalis => {
            let d = &info["data"];
            (&d["isHealthy"], &d["latestMilestoneIndex"], &d["confirmedMilestoneIndex"], &d["features"])
        }
        _ => {
            let s = &info["status"];
            (&s["isHealthy"], &s["latestMilestone"]["index"], &s["confirmedMilestone"]["index"], &info["features"])
        }
    };
    if healthy.as_bool() != Some(true) {
        return Err("the node reports itself unhealthy".into());
    }
    let (Some(latest), Some(confirmed)) = (latest.as_u64(), confirmed.as_u64()) else {
        return Err("no milestone indexes".into());
    };
    let lag = latest.saturating_sub(confirmed);
    if lag > max_lag {
        return Err(format!("milestone lag {lag} is over max_milestone_lag {max_lag}"));
    }
    let pow_feature = features
        .as_array()
        .is_some_and(|f| f.iter().any(|v| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("pow"))));
    let min_pow_score = match profile {
        Profile::IotaChrysalis => info["data"]["minPoWScore"].as_f64(),
        _ => info["protocol"]["minPowScore"].as_f64(),
    };
    Ok(Passed { pow_feature, min_pow_score })
}

/// One GET on a fresh connection (a probe also checks that the node accepts connections);
/// the body is capped at 1 MiB.
async fn get(node: &Node, path: &str) -> Result<Bytes, String> {
    request(node, http::Method::GET, path, None).await
}

async fn request(node: &Node, method: http::Method, path: &str, body: Option<String>) -> Result<Bytes, String> {
    let stream = node.pool.open().await.map_err(|e| format!("connect: {e:?}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(format!("{}{path}", node.base_path))
        .header(http::header::HOST, node.host.clone())
        .header(http::header::USER_AGENT, "nodegate-health")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| format!("{path}: {e}"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| format!("{path}: reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("{path} answered {status}"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chrysalis_info_is_judged() {
        let ok = json!({"data": {"isHealthy": true, "latestMilestoneIndex": 10, "confirmedMilestoneIndex": 9, "features": ["PoW"]}});
        assert!(judge_info(&ok, Profile::IotaChrysalis, 2).unwrap().pow_feature);
        let lagging = json!({"data": {"isHealthy": true, "latestMilestoneIndex": 10, "confirmedMilestoneIndex": 5, "features": []}});
        assert!(judge_info(&lagging, Profile::IotaChrysalis, 2).unwrap_err().contains("lag 5"));
        let sick = json!({"data": {"isHealthy": false, "latestMilestoneIndex": 10, "confirmedMilestoneIndex": 10}});
        assert!(judge_info(&sick, Profile::IotaChrysalis, 2).is_err());
        assert!(judge_info(&json!({}), Profile::IotaChrysalis, 2).is_err());
    }

    #[test]
    fn stardust_info_is_judged() {
        let ok = json!({"status": {"isHealthy": true, "latestMilestone": {"index": 7}, "confirmedMilestone": {"index": 7}}, "features": ["pow"]});
        assert!(judge_info(&ok, Profile::IotaStardust, 2).unwrap().pow_feature);
        let no_pow = json!({"status": {"isHealthy": true, "latestMilestone": {"index": 7}, "confirmedMilestone": {"index": 6}}, "features": []});
        assert!(!judge_info(&no_pow, Profile::IotaStardust, 2).unwrap().pow_feature);
    }
}
