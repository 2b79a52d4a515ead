//! `[cluster] redis` with `[bans]`: a ban made by one gateway is enforced by every gateway of the
//! fleet, and a gateway started later loads the bans in force.
//!
//! In Redis (under `[cluster] key_prefix`): `bans`, a hash of network -> decision (JSON) holding
//! what is in force, and `bans:log`, a stream of every change (capped at 100,000 entries). A
//! gateway writes both in one script when it bans or lifts a ban itself; it reads the stream with
//! a blocking `XREAD`, so another gateway's ban arrives in milliseconds. At start, and after any
//! trouble with Redis, it reads the whole hash (dropping what has ended) and writes its own bans
//! in force, so bans made while Redis was away are shared once it is back. Locally, bans never
//! wait for Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{broadcast, watch};

use super::list::{BanList, Change, Decision, unix_now};
use super::rails::Rails;
use crate::shutdown::Phase;

/// KEYS: the hash, the stream. ARGV: the network, the decision (JSON), 1 to set or 0 to delete.
const WRITE: &str = r#"
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) else redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '100000', '*', 'd', ARGV[2])
return 1
"#;

/// How long a blocking read waits for news before it asks again.
const BLOCK: Duration = Duration::from_secs(1);

/// Starts sharing `list` through Redis; both tasks end when the gateway stops.
pub fn spawn(redis: &str, prefix: &str, list: Arc<BanList>, rails: Arc<Rails>, phase: watch::Receiver<Phase>) {
    let client = match redis::Client::open(redis) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "bans are not shared: bad [cluster] redis address");
            return;
        }
    };
    let keys = Keys { hash: format!("{prefix}bans"), stream: format!("{prefix}bans:log") };
    // A write that failed asks the reader for a full exchange (which writes our bans again).
    let resync = Arc::new(AtomicBool::new(false));
    let cm = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    match ConnectionManager::new_lazy_with_config(client.clone(), cm) {
        Ok(conn) => {
            let writer = Writer { conn, keys: keys.clone(), list: list.clone(), resync: resync.clone() };
            tokio::spawn(writer.run(phase.clone()));
        }
        Err(e) => tracing::error!(error = %e, "bans are not shared"),
    }
    tokio::spawn(read(client, keys, Shared { list, rails }, resync, phase));
}

#[derive(Clone)]
struct Keys {
    hash: String,
    stream: String,
}

struct Writer {
    conn: ConnectionManager,
    keys: Keys,
    list: Arc<BanList>,
    resync: Arc<AtomicBool>,
}

impl Writer {
    async fn run(mut self, mut phase: watch::Receiver<Phase>) {
        let mut changes = self.list.subscribe();
        loop {
            let change = tokio::select! {
                c = changes.recv() => c,
                _ = phase.wait_for(|p| *p != Phase::Running) => return,
            };
            let decision = match change {
                // Only what this gateway decided: what others decided is theirs to share.
                Ok(Change::Ban(d)) if d.by == self.list.id() => (*d).clone(),
                Ok(Change::Unban { net, by }) if by == self.list.id() => Decision::removal(net, by),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.resync.store(true, Relaxed);
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if !write(&mut self.conn, &self.keys, &decision).await {
                self.resync.store(true, Relaxed);
            }
        }
    }
}

async fn write<C: redis::aio::ConnectionLike>(conn: &mut C, keys: &Keys, d: &Decision) -> bool {
    let Ok(json) = serde_json::to_string(&Decision { events: Vec::new(), ..d.clone() }) else { return false };
    let script = redis::Script::new(WRITE);
    let mut call = script.key(&keys.hash);
    call.key(&keys.stream).arg(d.net.to_string()).arg(json).arg(if d.removed { "0" } else { "1" });
    matches!(tokio::time::timeout(Duration::from_secs(2), call.invoke_async::<i64>(conn)).await, Ok(Ok(_)))
}

/// One stream entry: its id and its field-value pairs.
type Entry = (String, Vec<String>);

/// Where shared decisions go: the list, past this gateway's own safety rails (its nodes, trusted
/// proxies and live sessions may differ from the gateway that banned).
struct Shared {
    list: Arc<BanList>,
    rails: Arc<Rails>,
}

async fn read(
    client: redis::Client,
    keys: Keys,
    list: Shared,
    resync: Arc<AtomicBool>,
    mut phase: watch::Receiver<Phase>,
) {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(BLOCK + Duration::from_secs(2)));
    let mut up = None::<bool>;
    let mut say = |now_up: bool, error: Option<String>| {
        if up != Some(now_up) {
            match error {
                Some(e) if !now_up => {
                    tracing::warn!(error = %e, "bans are not shared while Redis is away; local bans go on")
                }
                _ => tracing::info!("bans are shared through Redis"),
            }
        }
        up = Some(now_up);
    };
    'connect: loop {
        if *phase.borrow() != Phase::Running {
            return;
        }
        let mut conn = match client.get_multiplexed_async_connection_with_config(&config).await {
            Ok(c) => c,
            Err(e) => {
                say(false, Some(e.to_string()));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'connect,
                    _ = phase.wait_for(|p| *p != Phase::Running) => return,
                }
            }
        };
        resync.store(false, Relaxed);
        let mut last = match exchange(&mut conn, &keys, &list).await {
            Ok(last) => last,
            Err(e) => {
                say(false, Some(e.to_string()));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue 'connect;
            }
        };
        say(true, None);
        loop {
            let mut xread = redis::cmd("XREAD");
            xread.arg("BLOCK").arg(BLOCK.as_millis() as u64).arg("COUNT").arg(1000);
            xread.arg("STREAMS").arg(&keys.stream).arg(&last);
            let news = tokio::select! {
                r = xread.query_async::<Option<Vec<(String, Vec<Entry>)>>>(&mut conn) => r,
                _ = phase.wait_for(|p| *p != Phase::Running) => return,
            };
            match news {
                Ok(streams) => {
                    for (id, fields) in streams.into_iter().flatten().flat_map(|(_, entries)| entries) {
                        last = id;
                        if let Some(d) = fields.chunks(2).find(|kv| kv[0] == "d").and_then(|kv| kv.get(1)) {
                            apply(&list, d).await;
                        }
                    }
                }
                Err(e) => {
                    say(false, Some(e.to_string()));
                    continue 'connect;
                }
            }
            if resync.swap(false, Relaxed) {
                match exchange(&mut conn, &keys, &list).await {
                    Ok(l) => last = l,
                    Err(e) => {
                        say(false, Some(e.to_string()));
                        continue 'connect;
                    }
                }
            }
        }
    }
}

/// The full exchange: note where the stream stands, take every ban in force from the hash (and
/// drop the ended ones), write ours. Returns the stream id to read on from.
async fn exchange(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    shared: &Shared,
) -> redis::RedisResult<String> {
    let list = &shared.list;
    let newest: Vec<Entry> =
        redis::cmd("XREVRANGE").arg(&keys.stream).arg("+").arg("-").arg("COUNT").arg(1).query_async(conn).await?;
    let last = newest.into_iter().next().map_or_else(|| "0-0".to_owned(), |(id, _)| id);
    let all: HashMap<String, String> = redis::cmd("HGETALL").arg(&keys.hash).query_async(conn).await?;
    let unix = unix_now();
    let mut ended = Vec::new();
    for (net, json) in &all {
        match serde_json::from_str::<Decision>(json) {
            Ok(d) if d.until > unix => apply_decision(shared, d).await,
            _ => ended.push(net.clone()),
        }
    }
    if !ended.is_empty() {
        redis::cmd("HDEL").arg(&keys.hash).arg(&ended).query_async::<i64>(conn).await?;
    }
    for (d, _) in list.active() {
        if d.by == list.id() && !write(conn, keys, &d).await {
            return Err(redis::RedisError::from((redis::ErrorKind::Io, "writing a ban failed")));
        }
    }
    Ok(last)
}

async fn apply(shared: &Shared, json: &str) {
    match serde_json::from_str::<Decision>(json) {
        Ok(d) => apply_decision(shared, d).await,
        Err(e) => tracing::warn!(error = %e, "a shared ban that does not parse: skipped"),
    }
}

async fn apply_decision(shared: &Shared, d: Decision) {
    let list = &shared.list;
    if d.by == list.id() {
        return;
    }
    if d.removed {
        if list.unban_from(d.net, &d.by).await {
            tracing::info!(net = %d.net, by = %d.by, "ban lifted by another gateway");
        }
    } else if let Some(why) = shared.rails.refuse(&d.net).await {
        tracing::warn!(net = %d.net, by = %d.by, "shared ban not applied here: {why}");
    } else {
        let (net, jail) = (d.net, d.jail.clone());
        if list.ban(d).await {
            tracing::info!(%net, %jail, "ban shared by another gateway");
        }
    }
}
