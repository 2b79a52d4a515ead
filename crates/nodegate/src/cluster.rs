//! `[cluster] redis`: rate limits held for a fleet of gateways, not just one.
//!
//! Decisions stay local: a request never waits for Redis. Every `sync_interval` each gateway sends
//! Redis what each client used since the last sync (admitted cost x interval, per limiter and key);
//! one Lua script adds that to the client's fleet-wide GCRA time (TAT) in Redis' own clock and
//! answers how far ahead of now it stands; the gateway moves its local TAT up to that. So every
//! admission anywhere is charged to the fleet within one interval, and the fleet admits the same
//! `burst + rate x time` as one gateway would, plus what the gateways admit before they hear of
//! each other.
//!
//! Error bound: with `G` gateways, a client that spreads its requests over all of them is admitted
//! at most `(G - 1) x (burst + rate x sync_interval)` more than the limit, and only in the interval
//! in which it starts (or returns after a quiet spell): later intervals are paid for in full,
//! because an overdraft pushes the fleet TAT ahead and every gateway waits it out. Each gateway's
//! own limit always holds.
//!
//! If Redis goes away, each gateway goes on with its local limits (which still hold per gateway),
//! logs it once, drops what it could not report (so that a long outage does not come back as a
//! block), and tries again every interval; once Redis answers it logs that too and limits are
//! fleet-wide again. Keys expire in Redis when their TAT passes, so Redis' memory is bounded by
//! the clients active within one burst window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;

use crate::pipeline::rate_limit::RateLimiter;
use crate::shutdown::Phase;

/// KEYS: one per client and limiter. ARGV[1]: the latest Redis time (microseconds) at which the
/// call may still count; then microseconds each key used. Answers Redis' now, then, per key, how
/// many microseconds its fleet TAT is ahead of it. A call that runs after its deadline (Redis was
/// frozen, or the call sat in a socket) changes nothing and answers Redis' now alone: usage from
/// the past charged at Redis' present would push clients under their limit into 429s.
const SYNC: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {now}
if now > tonumber(ARGV[1]) then return out end
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or '0') or 0
  if tat < now then tat = now end
  tat = tat + tonumber(ARGV[i + 1])
  redis.call('SET', key, string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1)
  out[i + 1] = tat - now
end
return out
"#;

/// This machine's clock in microseconds since the Unix epoch.
fn local_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// Keys per script call: large enough to cover a busy interval in a few round trips, small enough
/// not to hold Redis (single-threaded) for long.
const BATCH: usize = 512;

#[derive(Debug, Clone, PartialEq)]
/// `[cluster]`.
pub struct Cluster {
    pub redis: String,
    pub sync_interval: Duration,
    pub key_prefix: String,
}

/// Whether Redis answered the last sync or ping; for `/status` and tests.
#[derive(Default)]
pub struct ClusterState {
    /// 0: not asked yet, 1: up, 2: down.
    redis: AtomicU8,
}

impl ClusterState {
    /// `"unknown"` (not asked yet), `"up"` or `"down"`.
    pub fn redis(&self) -> &'static str {
        match self.redis.load(Relaxed) {
            1 => "up",
            2 => "down",
            _ => "unknown",
        }
    }
}

/// `limiters`: the rate limiters in force, replaced by a reload.
pub fn spawn(
    config: &Cluster,
    limiters: watch::Receiver<Vec<Arc<RateLimiter>>>,
    phase: watch::Receiver<Phase>,
) -> Arc<ClusterState> {
    let state = Arc::new(ClusterState::default());
    // Validated with the config, so this cannot fail here; stay local if it somehow does.
    let client = match redis::Client::open(config.redis.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cluster: bad redis URL; limits stay local");
            return state;
        }
    };
    let timeout = config.sync_interval.max(Duration::from_millis(500));
    let cm = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(config.sync_interval);
    let conn = match ConnectionManager::new_lazy_with_config(client, cm) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cluster: cannot set up redis; limits stay local");
            return state;
        }
    };
    let sync = Sync { conn, limiters, prefix: config.key_prefix.clone(), timeout, state: state.clone() };
    tokio::spawn(sync.run(config.sync_interval, phase));
    state
}

struct Sync {
    conn: ConnectionManager,
    limiters: watch::Receiver<Vec<Arc<RateLimiter>>>,
    prefix: String,
    timeout: Duration,
    state: Arc<ClusterState>,
}

impl Sync {
    async fn run(mut self, every: Duration, mut phase: watch::Receiver<Phase>) {
        let script = redis::Script::new(SYNC);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Assume up until a sync fails, so the first failure is the one logged.
        let mut up = true;
        // With nothing to report, Redis is still pinged every second, so that `/status` and the
        // logs tell the truth on a quiet gateway too.
        let mut last_ping: Option<tokio::time::Instant> = None;
        // Redis' clock minus this machine's, learned from each answer (the round trip is its error).
        let mut offset: Option<i64> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = phase.changed() => if changed.is_err() || *phase.borrow() != Phase::Running { return },
            }
            let mut work = Vec::new();
            let limiters = self.limiters.borrow_and_update().clone();
            for l in &limiters {
                work.extend(l.take_pending().into_iter().map(|p| (l.clone(), p)));
            }
            let mut ok = true;
            if work.is_empty() {
                if last_ping.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                    continue;
                }
                last_ping = Some(tokio::time::Instant::now());
                let cmd = redis::cmd("PING");
                let ping = cmd.query_async::<String>(&mut self.conn);
                ok = matches!(tokio::time::timeout(self.timeout, ping).await, Ok(Ok(_)));
                if !ok && up {
                    tracing::warn!("redis unreachable: limits hold per gateway until it is back");
                }
            }
            if !work.is_empty() && offset.is_none() {
                // Redis' time, to put deadlines in it; a Redis that does not answer gets none.
                let cmd = redis::cmd("TIME");
                let before = local_micros();
                if let Ok(Ok((secs, micros))) =
                    tokio::time::timeout(self.timeout, cmd.query_async::<(i64, i64)>(&mut self.conn)).await
                {
                    offset = Some(secs * 1_000_000 + micros - (before + local_micros()) / 2);
                }
            }
            for chunk in work.chunks(BATCH) {
                let Some(off) = offset else {
                    ok = false;
                    break;
                };
                let mut call = script.prepare_invoke();
                call.arg(local_micros() + off + self.timeout.as_micros() as i64);
                for (l, p) in chunk {
                    call.key(format!("{}rl:{}:{}", self.prefix, l.name(), p.key));
                    call.arg(p.used.as_micros().max(1) as u64);
                }
                match tokio::time::timeout(self.timeout, call.invoke_async::<Vec<i64>>(&mut self.conn)).await {
                    Ok(Ok(answer)) => {
                        let Some((&now, ahead)) = answer.split_first() else { continue };
                        offset = Some(now - local_micros());
                        if ahead.is_empty() {
                            tracing::debug!("redis ran a sync after its deadline: dropped");
                            continue;
                        }
                        for ((l, p), us) in chunk.iter().zip(ahead) {
                            l.apply_fleet(&p.key, Duration::from_micros((*us).max(0) as u64));
                        }
                    }
                    Ok(Err(e)) => {
                        ok = false;
                        if up {
                            tracing::warn!(error = %e, "redis unreachable: limits hold per gateway until it is back");
                        }
                        break;
                    }
                    Err(_) => {
                        ok = false;
                        if up {
                            tracing::warn!(timeout = ?self.timeout, "redis did not answer: limits hold per gateway until it does");
                        }
                        break;
                    }
                }
            }
            if ok && !up {
                tracing::info!("redis reachable again: limits are fleet-wide");
            }
            up = ok;
            self.state.redis.store(if ok { 1 } else { 2 }, Relaxed);
        }
    }
}
