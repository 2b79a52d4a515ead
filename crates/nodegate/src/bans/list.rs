//! The decisions in force: which networks are banned, until when, by whom and why. Read at every
//! accept and request (one atomic load when nothing is banned), written when a jail bans, an
//! operator adds or removes a ban, a node's traffic controller reports an address, or another
//! gateway shares one.
//!
//! Persistence (`[bans] state_dir`): every change is one JSON line appended to `bans.jsonl` and
//! synced before it is enforced, so a ban anyone has seen in force survives `kill -9`. At start
//! the file is read back: bans still running are enforced with their remaining time; ended ones
//! within `history` are kept as the jails' history (incremental bantime goes on across restarts);
//! the file is then written anew with only those, so it does not grow without end. A line that
//! does not parse is never dropped silently: the file is kept aside and the error names it.
//!
//! Every change is also sent on a broadcast channel: the nftables enforcer and the Redis sharer
//! follow it.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::time::Instant;

/// One ban, as kept on disk, shared through Redis and shown to operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub net: IpNet,
    /// When it ends, in seconds since the Unix epoch.
    pub until: u64,
    /// The jail that made it, or `manual` (`nodegate bans add`), or `remote-fw` (a node's
    /// traffic controller).
    pub jail: String,
    #[serde(default)]
    pub reason: String,
    /// How many bans this network had before this one (incremental bantime's exponent).
    #[serde(default)]
    pub step: u32,
    /// What led to it (the last failures the jail saw), newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Evidence>,
    /// The gateway that made it (a random id per process); a gateway ignores its own echoes.
    #[serde(default)]
    pub by: String,
    /// A removal (`nodegate bans remove`), not a ban.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

impl Decision {
    /// The lifting of the ban on `net`, as gateway `by` decided it.
    pub fn removal(net: IpNet, by: String) -> Decision {
        Decision {
            net,
            until: 0,
            jail: "manual".into(),
            reason: String::new(),
            step: 0,
            events: Vec::new(),
            by,
            removed: true,
        }
    }
}

/// One failure that counted towards a ban.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// RFC 3339, as the source dated it (or when it was read).
    pub time: String,
    /// The log line, or the refusal (`not-exposed GET /admin`), at most 240 bytes.
    pub text: String,
}

impl Evidence {
    pub fn new(time: time::OffsetDateTime, text: &str) -> Evidence {
        let mut end = text.len().min(240);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let time = time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        Evidence { time, text: text[..end].to_owned() }
    }
}

/// A change to the list, as its followers see it.
#[derive(Debug, Clone)]
pub enum Change {
    Ban(Arc<Decision>),
    /// `by`: the gateway that lifted it.
    Unban {
        net: IpNet,
        by: String,
    },
}

/// Decisions whose evidence is kept whole; older ones keep their other fields. Bounds memory at
/// 100,000 bans to what their addresses take.
const EVIDENCE_KEPT: usize = 10_000;
/// Decisions remembered after they end or are removed, for `bans why`.
const PAST_KEPT: usize = 10_000;
const BAN_FILE: &str = "bans.jsonl";

/// Lines appended to the ban file after which it is written anew with what still matters.
const COMPACT_EVERY: usize = 10_000;

/// Reads the ban file and writes it anew with what still matters: the latest decision of each
/// network whose ban runs or ended within `history`. Returns those decisions. A line that does not
/// parse is never dropped silently: the file is kept aside (renamed `.corrupt-<time>`), the error
/// names it and the line, and its readable lines are kept.
fn compact(path: &Path, history: Duration) -> Result<Vec<Decision>, String> {
    let unix = unix_now();
    let mut latest: HashMap<IpNet, Decision> = HashMap::new();
    let mut bad = None;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                match serde_json::from_str::<Decision>(line) {
                    Ok(d) if d.removed => {
                        // A removal ends the ban but not the history.
                        if let Some(old) = latest.get_mut(&d.net) {
                            old.until = old.until.min(unix);
                        }
                    }
                    Ok(d) => match latest.get(&d.net) {
                        Some(old) if old.until >= d.until && old.step >= d.step => {}
                        _ => {
                            latest.insert(d.net, d);
                        }
                    },
                    Err(e) => {
                        bad.get_or_insert((i + 1, e.to_string()));
                    }
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read `{}`: {e}", path.display())),
    }
    if let Some((line, error)) = bad {
        let aside = path.with_extension(format!("jsonl.corrupt-{unix}"));
        std::fs::rename(path, &aside).map_err(|e| format!("cannot move `{}` aside: {e}", path.display()))?;
        tracing::error!(file = %path.display(), line, %error, kept_as = %aside.display(), "ban file damaged: kept aside, its readable bans loaded");
    }
    let kept: Vec<Decision> =
        latest.into_values().filter(|d| d.until.saturating_add(history.as_secs()) > unix).collect();
    let mut text = String::new();
    for d in &kept {
        text.push_str(&serde_json::to_string(d).map_err(|e| e.to_string())?);
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    Ok(kept)
}

/// `[bans] state_dir`'s ban file: appended as decisions are made, compacted now and then.
struct BanFile {
    path: PathBuf,
    history: Duration,
    appended: AtomicUsize,
    compact_every: usize,
    /// Appends and compaction never overlap.
    lock: Mutex<()>,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A ban in force and the time it has left.
pub type Running = (Arc<Decision>, Duration);

struct Entry {
    until: Instant,
    decision: Arc<Decision>,
}

#[derive(Default)]
struct Inner {
    active: HashMap<IpNet, Entry>,
    /// Networks in the order their evidence was added (to drop the oldest evidence first).
    evidence: VecDeque<IpNet>,
    /// Ended and removed decisions, newest last.
    past: VecDeque<Arc<Decision>>,
    /// When ended bans are next cleared out (once a second at most: a pass over all of them).
    next_prune: Option<Instant>,
}

pub struct BanList {
    inner: Mutex<Inner>,
    /// How many entries `active` holds (some may have just ended): the accept path's fast check.
    count: AtomicUsize,
    file: Option<Arc<BanFile>>,
    changes: broadcast::Sender<Change>,
    /// This process's id in shared decisions.
    id: String,
    /// Bans read back at start (running and recently ended), for the jails' history.
    restored: Vec<Decision>,
}

impl Default for BanList {
    fn default() -> Self {
        BanList::new(None, Vec::new(), HashMap::new())
    }
}

impl BanList {
    fn new(file: Option<Arc<BanFile>>, restored: Vec<Decision>, active: HashMap<IpNet, Entry>) -> BanList {
        let count = AtomicUsize::new(active.len());
        let id = format!("{:016x}", fastrand::u64(..));
        let inner = Inner { active, ..Inner::default() };
        BanList { inner: Mutex::new(inner), count, file, changes: broadcast::channel(4096).0, id, restored }
    }

    /// The bans kept in `dir`: those still running are enforced, those that ended within
    /// `history` are kept for the jails. See the module's documentation.
    pub fn with_state(dir: &Path, history: Duration) -> Result<BanList, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create state_dir `{}`: {e}", dir.display()))?;
        let path = dir.join(BAN_FILE);
        let (now, unix) = (Instant::now(), unix_now());
        let restored = compact(&path, history)?;
        let active: HashMap<IpNet, Entry> = restored
            .iter()
            .filter(|d| d.until > unix)
            .map(|d| (d.net, Entry { until: now + Duration::from_secs(d.until - unix), decision: Arc::new(d.clone()) }))
            .collect();
        if !active.is_empty() {
            tracing::info!(bans = active.len(), file = %path.display(), "bans restored");
        }
        let file = BanFile {
            path,
            history,
            appended: AtomicUsize::new(0),
            compact_every: COMPACT_EVERY,
            lock: Mutex::new(()),
        };
        Ok(BanList::new(Some(Arc::new(file)), restored, active))
    }

    /// This gateway's id, as `Decision::by` names it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Follows every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The bans read back at start, running or recently ended.
    pub fn restored(&self) -> &[Decision] {
        &self.restored
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_banned(&self, ip: IpAddr) -> bool {
        if self.count.load(Relaxed) == 0 {
            return false;
        }
        let inner = self.lock();
        let now = Instant::now();
        super::jail::ban_nets(ip).any(|net| inner.active.get(&net).is_some_and(|e| e.until > now))
    }

    /// Enforces a decision: written to the state file first (off the workers), then in force,
    /// then told to the followers. A decision that does not outlast the one in force changes
    /// nothing (returns false).
    pub async fn ban(&self, decision: Decision) -> bool {
        let unix = unix_now();
        if decision.until <= unix || decision.removed {
            return false;
        }
        {
            let inner = self.lock();
            if let Some(e) = inner.active.get(&decision.net)
                && e.decision.until >= decision.until
            {
                return false;
            }
        }
        self.write(&decision).await;
        let decision = Arc::new(decision);
        let until = Instant::now() + Duration::from_secs(decision.until - unix);
        {
            let mut inner = self.lock();
            let now = Instant::now();
            if inner.next_prune.is_none_or(|at| at <= now) {
                inner.next_prune = Some(now + Duration::from_secs(1));
                let mut ended = Vec::new();
                inner.active.retain(|_, e| {
                    let running = e.until > now;
                    if !running {
                        ended.push(e.decision.clone());
                    }
                    running
                });
                for d in ended {
                    remember(&mut inner.past, d);
                }
            }
            if !decision.events.is_empty() {
                inner.evidence.push_back(decision.net);
                while inner.evidence.len() > EVIDENCE_KEPT {
                    let Some(old) = inner.evidence.pop_front() else { break };
                    if let Some(e) = inner.active.get_mut(&old) {
                        let mut lean = (*e.decision).clone();
                        lean.events = Vec::new();
                        e.decision = Arc::new(lean);
                    }
                }
            }
            inner.active.insert(decision.net, Entry { until, decision: decision.clone() });
            self.count.store(inner.active.len(), Relaxed);
        }
        let _ = self.changes.send(Change::Ban(decision));
        true
    }

    /// Lifts the ban on `net` (this gateway's decision); false when there was none.
    pub async fn unban(&self, net: IpNet) -> bool {
        let id = self.id.clone();
        self.unban_from(net, &id).await
    }

    /// Lifts the ban on `net` as gateway `by` decided.
    pub async fn unban_from(&self, net: IpNet, by: &str) -> bool {
        let running = {
            let inner = self.lock();
            inner.active.get(&net).is_some_and(|e| e.until > Instant::now())
        };
        if !running {
            return false;
        }
        let removal = Decision::removal(net, by.to_owned());
        self.write(&removal).await;
        {
            let mut inner = self.lock();
            if let Some(e) = inner.active.remove(&net) {
                remember(&mut inner.past, e.decision);
            }
            self.count.store(inner.active.len(), Relaxed);
        }
        let _ = self.changes.send(Change::Unban { net, by: by.to_owned() });
        true
    }

    async fn write(&self, d: &Decision) {
        let Some(file) = self.file.clone() else { return };
        let line = match serde_json::to_vec(d) {
            Ok(mut line) => {
                line.push(b'\n');
                line
            }
            Err(e) => {
                tracing::error!(error = %e, "ban not written");
                return;
            }
        };
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let _only = file.lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&file.path)?;
            f.write_all(&line)?;
            f.sync_data()?;
            if file.appended.fetch_add(1, Relaxed) + 1 >= file.compact_every {
                file.appended.store(0, Relaxed);
                if let Err(e) = compact(&file.path, file.history) {
                    tracing::error!(error = %e, "ban file not compacted");
                }
            }
            Ok::<(), std::io::Error>(())
        })
        .await;
        if let Ok(Err(e)) = written {
            tracing::error!(net = %d.net, error = %e, "ban not written to state_dir: it holds until a restart");
        }
    }

    /// The bans in force, each with the time it has left.
    pub fn active(&self) -> Vec<Running> {
        let inner = self.lock();
        let now = Instant::now();
        let mut out: Vec<_> =
            inner.active.values().filter(|e| e.until > now).map(|e| (e.decision.clone(), e.until - now)).collect();
        out.sort_by_key(|(d, _)| d.net);
        out
    }

    /// The bans covering `ip` now, and the ended or removed ones this process still remembers.
    pub fn why(&self, ip: IpAddr) -> (Vec<Running>, Vec<Arc<Decision>>) {
        let inner = self.lock();
        let now = Instant::now();
        let nets: Vec<IpNet> = super::jail::ban_nets(ip).collect();
        let running = nets
            .iter()
            .filter_map(|n| inner.active.get(n))
            .filter(|e| e.until > now)
            .map(|e| (e.decision.clone(), e.until - now))
            .collect();
        let mut past: Vec<_> = inner.past.iter().filter(|d| nets.contains(&d.net)).cloned().collect();
        past.extend(
            self.restored.iter().filter(|d| nets.contains(&d.net) && d.until <= unix_now()).cloned().map(Arc::new),
        );
        (running, past)
    }

    /// How many bans are in force now.
    pub fn len(&self) -> usize {
        if self.count.load(Relaxed) == 0 {
            return 0;
        }
        let now = Instant::now();
        self.lock().active.values().filter(|e| e.until > now).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn remember(past: &mut VecDeque<Arc<Decision>>, d: Arc<Decision>) {
    past.push_back(d);
    while past.len() > PAST_KEPT {
        past.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(list: &BanList, i: u8) -> Decision {
        Decision {
            net: IpNet::from(IpAddr::from([192, 0, 2, i])),
            until: unix_now() + 3600,
            jail: "t".into(),
            reason: String::new(),
            step: 0,
            events: Vec::new(),
            by: list.id().to_owned(),
            removed: false,
        }
    }

    #[tokio::test]
    async fn the_ban_file_is_compacted_as_it_grows_and_keeps_what_is_in_force() {
        let dir = std::env::temp_dir().join(format!("nodegate-banfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut list = BanList::with_state(&dir, Duration::ZERO).unwrap();
        if let Some(f) = list.file.as_mut().and_then(Arc::get_mut) {
            f.compact_every = 10;
        }
        for i in 0..30 {
            assert!(list.ban(decision(&list, i)).await);
        }
        for i in 5..30 {
            assert!(list.unban(IpNet::from(IpAddr::from([192, 0, 2, i]))).await);
        }
        let lines = std::fs::read_to_string(dir.join(BAN_FILE)).unwrap().lines().count();
        // 55 lines appended; at the last compaction (the 50th) 10 bans were in force, then 5 more
        // lines: without compaction the file would hold all 55.
        assert_eq!(lines, 15, "the file grows without end");
        let again = BanList::with_state(&dir, Duration::ZERO).unwrap();
        let mut nets: Vec<String> = again.active().iter().map(|(d, _)| d.net.to_string()).collect();
        nets.sort();
        assert_eq!(nets, (0..5).map(|i| format!("192.0.2.{i}/32")).collect::<Vec<_>>());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
