//! The ban engine: jails fed by their sources (a followed sshd log, or the gateway's own refusals),
//! and the list of active bans the gateway enforces (connections from a banned address are closed
//! at accept, before TLS; a banned client named by a trusted proxy gets 403 before anything else).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::follow::Follower;
use super::jail::{Jail, JailSettings};
use super::sshd::{Filter, Mode};
use crate::events::{Refusal, RefusalReason};
use crate::pipeline::ip_set::IpSet;
use crate::shutdown::Phase;

/// `[bans]` and its `[[jail]]`s.
#[derive(Debug, Clone)]
pub struct Bans {
    /// Where bans will be kept across restarts (persistence is still to come).
    pub state_dir: Option<PathBuf>,
    pub ignore: IpSet,
    pub jails: Vec<JailConfig>,
}

#[derive(Debug, Clone)]
pub struct JailConfig {
    pub name: String,
    pub source: Source,
    pub settings: JailSettings,
}

/// Where a jail's failures come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// sshd's log file, followed from its end.
    Sshd { log: PathBuf, mode: Mode },
    /// The gateway's refusals; all of them when `reasons` is empty.
    Gateway { reasons: Vec<RefusalReason> },
}

/// The active bans; read at every accept and request, written when a jail bans.
#[derive(Default)]
pub struct BanList {
    /// Banned network -> until when. Bans are on an address, or an IPv6 /64 or /48.
    active: Mutex<HashMap<IpNet, Instant>>,
    /// `[bans] state_dir`'s ban file: each ban is appended (and synced) as it is made.
    file: Option<PathBuf>,
}

/// One line of the ban file.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    net: IpNet,
    /// Seconds since the Unix epoch.
    until: u64,
    jail: String,
}

const BAN_FILE: &str = "bans.jsonl";

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl BanList {
    /// The bans kept in `dir` that are still in force, and a file to keep new ones in. A line that
    /// does not parse is never dropped silently: the whole file is kept aside (renamed with
    /// `.corrupt-<time>`), the error names it and the line, and the good lines are loaded.
    pub fn with_state(dir: &std::path::Path) -> Result<BanList, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create state_dir `{}`: {e}", dir.display()))?;
        let path = dir.join(BAN_FILE);
        let mut active = HashMap::new();
        let (now, unix) = (Instant::now(), unix_now());
        let mut bad = None;
        if let Ok(text) = std::fs::read_to_string(&path) {
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                match serde_json::from_str::<Stored>(line) {
                    Ok(s) if s.until > unix => {
                        let until = now + Duration::from_secs(s.until - unix);
                        let e = active.entry(s.net).or_insert(until);
                        *e = (*e).max(until);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        bad.get_or_insert((i + 1, e.to_string()));
                    }
                }
            }
        }
        if let Some((line, error)) = bad {
            let aside = dir.join(format!("{BAN_FILE}.corrupt-{unix}"));
            std::fs::rename(&path, &aside).map_err(|e| format!("cannot move `{}` aside: {e}", path.display()))?;
            tracing::error!(file = %path.display(), line, %error, kept_as = %aside.display(), "ban file damaged: kept aside, its readable bans loaded");
        }
        // Written anew with what is in force, so that the file does not grow without end.
        let mut text = String::new();
        for (net, until) in &active {
            let stored = Stored {
                net: *net,
                until: unix + until.saturating_duration_since(now).as_secs(),
                jail: "restored".into(),
            };
            text.push_str(&serde_json::to_string(&stored).map_err(|e| e.to_string())?);
            text.push('\n');
        }
        let tmp = dir.join(format!("{BAN_FILE}.tmp"));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
        if !active.is_empty() {
            tracing::info!(bans = active.len(), file = %path.display(), "bans restored");
        }
        Ok(BanList { active: Mutex::new(active), file: Some(path) })
    }

    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if active.is_empty() {
            return false;
        }
        let now = Instant::now();
        super::jail::ban_nets(ip).any(|net| active.get(&net).is_some_and(|until| *until > now))
    }

    /// Appends a ban to the ban file and syncs it, so that it survives a crash (blocking: run off
    /// the workers).
    fn persist(path: &std::path::Path, net: IpNet, duration: Duration, jail: &str) -> std::io::Result<()> {
        use std::io::Write;
        let stored = Stored { net, until: unix_now() + duration.as_secs().max(1), jail: jail.to_owned() };
        let mut line = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(&line)?;
        f.sync_data()
    }

    fn insert(&self, net: IpNet, until: Instant) {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        active.retain(|_, u| *u > now);
        let entry = active.entry(net).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// How many bans are in force now.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.active.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|u| **u > now).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Starts one task per jail; each ends when the gateway stops.
pub fn spawn(bans: &Bans, list: Arc<BanList>, refusals: &crate::events::Refusals, phase: &watch::Sender<Phase>) {
    for jail in &bans.jails {
        let mut settings = jail.settings.clone();
        // `[bans] ignore` holds for every jail.
        settings.ignore = settings.ignore.union(&bans.ignore);
        let run = JailTask { name: jail.name.clone(), jail: Jail::new(settings), list: list.clone() };
        match &jail.source {
            Source::Sshd { log, mode } => {
                tokio::spawn(run.follow_sshd(log.clone(), *mode, phase.subscribe()));
            }
            Source::Gateway { reasons } => {
                tokio::spawn(run.watch_refusals(refusals.subscribe(), reasons.clone(), phase.subscribe()));
            }
        }
    }
}

struct JailTask {
    name: String,
    jail: Jail,
    list: Arc<BanList>,
}

impl JailTask {
    async fn failure(&mut self, ip: IpAddr) {
        let now = Instant::now();
        for ban in self.jail.failure(ip, now) {
            tracing::warn!(jail = %self.name, net = %ban.net, duration = ?ban.duration, step = ban.step, "banned");
            // On disk first, then enforced: a ban anyone has seen in force survives a crash.
            if let Some(path) = self.list.file.clone() {
                let name = self.name.clone();
                let written =
                    tokio::task::spawn_blocking(move || BanList::persist(&path, ban.net, ban.duration, &name)).await;
                if let Ok(Err(e)) = written {
                    tracing::error!(jail = %self.name, error = %e, "ban not written to state_dir: it holds until a restart");
                }
            }
            self.list.insert(ban.net, now + ban.duration);
        }
    }

    async fn follow_sshd(mut self, log: PathBuf, mode: Mode, mut phase: watch::Receiver<Phase>) {
        let mut follower = Some(Follower::from_end(&log));
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = phase.wait_for(|p| *p != Phase::Running) => return,
            }
            // The file is read on the blocking pool, never on a worker.
            let Some(mut f) = follower.take() else { return };
            let Ok((f, lines)) = tokio::task::spawn_blocking(move || {
                let lines = f.poll();
                (f, lines)
            })
            .await
            else {
                return;
            };
            follower = Some(f);
            let lines = match lines {
                Ok(lines) => lines,
                Err(e) => {
                    tracing::warn!(jail = %self.name, log = %log.display(), error = %e, "cannot read the log");
                    continue;
                }
            };
            let filter = Filter::new(mode, time::OffsetDateTime::now_utc());
            for line in lines {
                if let Some(failure) = filter.failure(&line) {
                    self.failure(failure.ip).await;
                }
            }
        }
    }

    async fn watch_refusals(
        mut self,
        mut events: broadcast::Receiver<Refusal>,
        reasons: Vec<RefusalReason>,
        mut phase: watch::Receiver<Phase>,
    ) {
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = phase.wait_for(|p| *p != Phase::Running) => return,
            };
            match event {
                Ok(r) if reasons.is_empty() || reasons.contains(&r.reason) => self.failure(r.client).await,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(jail = %self.name, missed = n, "refusal events came faster than the jail read them");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
