//! The ban engine: jails fed by their sources (a followed sshd log, or the gateway's own
//! refusals), whose decisions go to the ban list (`list`), checked against the safety rails
//! (`rails`) first. The list is enforced by the gateway (connections from a banned address are
//! closed at accept, before TLS; a banned client named by a trusted proxy gets 403 before anything
//! else) and, with `firewall = "nftables"`, by the kernel (`nft`).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::follow::Follower;
use super::jail::{Jail, JailSettings};
use super::list::{BanList, Decision, Evidence, unix_now};
use super::rails::Rails;
use super::sshd::{Filter, Mode};
use crate::events::{Refusal, RefusalReason};
use crate::pipeline::ip_set::IpSet;
use crate::shutdown::Phase;
use ipnet::IpNet;

/// `[bans]` and its `[[jail]]`s.
#[derive(Debug, Clone)]
pub struct Bans {
    /// Where bans and their history are kept across restarts.
    pub state_dir: Option<PathBuf>,
    pub ignore: IpSet,
    pub firewall: Firewall,
    /// How often the firewall's sets are read back and repaired.
    pub verify_interval: Duration,
    /// Ports whose established connections protect their peers from bans; empty: none.
    pub ssh_ports: Vec<u16>,
    pub jails: Vec<JailConfig>,
}

/// `[bans] firewall`: where bans are enforced besides the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firewall {
    None,
    Nftables,
}

#[derive(Debug, Clone)]
pub struct JailConfig {
    pub name: String,
    pub source: Source,
    pub settings: JailSettings,
    /// Logs and counts what it would ban, bans nothing.
    pub dry_run: bool,
    /// A source that gave no line of its kind for this long says so (log, `/status`).
    pub blind_after: Duration,
}

/// Where a jail's failures come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// sshd's log file, followed from its end.
    Sshd { log: PathBuf, mode: Mode },
    /// sshd's entries in the journal (`journalctl -u UNIT -f`), from where the last run stopped.
    SshdJournal { unit: String, directory: Option<PathBuf>, mode: Mode },
    /// The gateway's refusals; all of them when `reasons` is empty.
    Gateway { reasons: Vec<RefusalReason> },
}

impl Source {
    fn kind(&self) -> &'static str {
        match self {
            Source::Sshd { .. } | Source::SshdJournal { .. } => "sshd",
            Source::Gateway { .. } => "gateway",
        }
    }
}

/// What a jail has done since the start (for `/status` and metrics).
#[derive(Default)]
pub struct JailStats {
    pub name: String,
    pub source: &'static str,
    pub dry_run: bool,
    /// Failures counted.
    pub failures: AtomicU64,
    pub bans: AtomicU64,
    /// Bans a dry-run jail would have made.
    pub would_ban: AtomicU64,
    /// Bans the safety rails refused.
    pub refused: AtomicU64,
    /// The source gave nothing of its kind for `blind_after`.
    pub blind: AtomicBool,
}

impl JailStats {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "source": self.source,
            "dry_run": self.dry_run,
            "failures": self.failures.load(Relaxed),
            "bans": self.bans.load(Relaxed),
            "would_ban": self.would_ban.load(Relaxed),
            "refused_by_rails": self.refused.load(Relaxed),
            "blind": self.blind.load(Relaxed),
        })
    }
}

/// The jails running, one task each; a reload stops the jails it changed or removed and starts
/// the changed and new ones, and leaves the others (and their counts of failures) running.
pub struct Jails {
    running: std::sync::Mutex<Vec<Running>>,
    list: Arc<BanList>,
    rails: Arc<Rails>,
    refusals: crate::events::Refusals,
    state_dir: Option<PathBuf>,
    phase: watch::Receiver<Phase>,
    /// Weak: held for good it would keep the gateway's shutdown waiting for ever.
    alive: tokio::sync::mpsc::WeakSender<()>,
}

struct Running {
    config: JailConfig,
    stats: Arc<JailStats>,
    /// The jail's own phase: `Draining` stops it, as the gateway's stop does.
    stop: watch::Sender<Phase>,
}

impl Jails {
    /// Starts one task per jail; each ends when the gateway stops or a reload removes it. A jail's
    /// history starts from the bans the list restored.
    pub fn start(
        bans: &Bans,
        list: Arc<BanList>,
        rails: Arc<Rails>,
        refusals: &crate::events::Refusals,
        phase: &watch::Sender<Phase>,
        alive: &tokio::sync::mpsc::Sender<()>,
    ) -> Arc<Jails> {
        let jails = Jails {
            running: std::sync::Mutex::new(Vec::new()),
            list,
            rails,
            refusals: refusals.clone(),
            state_dir: bans.state_dir.clone(),
            phase: phase.subscribe(),
            alive: alive.downgrade(),
        };
        let restored: Vec<(IpNet, String, u32, u64)> =
            jails.list.restored().iter().map(|d| (d.net, d.jail.clone(), d.step, d.until)).collect();
        let started = bans.jails.iter().map(|c| jails.spawn(c, &restored)).collect();
        *jails.running.lock().unwrap_or_else(|e| e.into_inner()) = started;
        Arc::new(jails)
    }

    /// Each jail's counts.
    pub fn stats(&self) -> Vec<Arc<JailStats>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|r| r.stats.clone()).collect()
    }

    /// Puts reloaded `[[jail]]`s in force: an unchanged jail keeps running with its counts; a
    /// changed one starts again from the bans it has in force (so its next ban still escalates);
    /// a removed one stops (its bans run their course). Returns the names started and stopped.
    pub fn reload(&self, jails: &[JailConfig]) -> (Vec<String>, Vec<String>) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let active: Vec<(IpNet, String, u32, u64)> =
            self.list.active().iter().map(|(d, _)| (d.net, d.jail.clone(), d.step, d.until)).collect();
        let same = |a: &JailConfig, b: &JailConfig| format!("{a:?}") == format!("{b:?}");
        let mut next = Vec::with_capacity(jails.len());
        let (mut started, mut stopped) = (Vec::new(), Vec::new());
        let mut old: Vec<Running> = std::mem::take(&mut *running);
        for config in jails {
            match old.iter().position(|r| same(&r.config, config)) {
                Some(i) => next.push(old.swap_remove(i)),
                None => {
                    started.push(config.name.clone());
                    next.push(self.spawn(config, &active));
                }
            }
        }
        for r in old {
            r.stop.send_replace(Phase::Draining);
            if !started.contains(&r.config.name) {
                stopped.push(r.config.name.clone());
            }
        }
        *running = next;
        (started, stopped)
    }

    /// Starts one jail's task. `history`: bans by net, jail, step and end (unix seconds).
    fn spawn(&self, config: &JailConfig, history: &[(IpNet, String, u32, u64)]) -> Running {
        let mut jail = Jail::new(config.settings.clone());
        let (now, unix) = (Instant::now(), unix_now());
        for (net, _, step, until) in history.iter().filter(|h| h.1 == config.name) {
            let until = if *until > unix {
                now + Duration::from_secs(until - unix)
            } else {
                now.checked_sub(Duration::from_secs(unix - until)).unwrap_or(now)
            };
            jail.restore(*net, step + 1, until);
        }
        let stats = Arc::new(JailStats {
            name: config.name.clone(),
            source: config.source.kind(),
            dry_run: config.dry_run,
            ..JailStats::default()
        });
        let run = JailTask {
            config: config.clone(),
            jail,
            list: self.list.clone(),
            rails: self.rails.clone(),
            stats: stats.clone(),
            recent: VecDeque::new(),
        };
        // The jail stops when the gateway does or when a reload stops it, whichever comes first.
        let (stop, phase) = watch::channel(Phase::Running);
        let mut gateway = self.phase.clone();
        let forward = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                Ok(p) = gateway.wait_for(|p| *p != Phase::Running) => { forward.send_replace(*p); }
                _ = forward.closed() => {}
            }
        });
        match &config.source {
            Source::Sshd { log, mode } => {
                // The end is taken now: what is written once the jail has started is news.
                let follower = Follower::from_end(log);
                if !log.exists() {
                    tracing::warn!(jail = %config.name, log = %log.display(), "the log does not exist (yet): it is read once it appears; on Debian 12 and later sshd logs to the journal only (journal = \"ssh.service\")");
                }
                tokio::spawn(run.follow_sshd(follower, log.clone(), *mode, phase));
            }
            Source::SshdJournal { unit, directory, mode } => {
                let journal = super::journal::Journal {
                    unit: unit.clone(),
                    directory: directory.clone(),
                    cursor_file: self.state_dir.as_ref().map(|d| d.join(format!("journal-{}.cursor", config.name))),
                };
                // Where to start is taken now, as for a log file: later entries are news.
                let start = journal.start();
                // Held until the cursor is saved on stop: the gateway's shutdown waits for it. None
                // when the gateway is already gone.
                if let Some(alive) = self.alive.upgrade() {
                    tokio::spawn(run.follow_journal(journal, start, *mode, phase, alive));
                }
            }
            Source::Gateway { reasons } => {
                tokio::spawn(run.watch_refusals(self.refusals.subscribe(), reasons.clone(), phase));
            }
        }
        Running { config: config.clone(), stats, stop }
    }
}

/// Failures kept per jail as evidence for the next ban (the newest).
const RECENT: usize = 1024;

struct JailTask {
    config: JailConfig,
    jail: Jail,
    list: Arc<BanList>,
    rails: Arc<Rails>,
    stats: Arc<JailStats>,
    recent: VecDeque<(IpAddr, Evidence)>,
}

impl JailTask {
    async fn failure(&mut self, ip: IpAddr, evidence: Evidence) {
        let ip = ip.to_canonical();
        // What a ban already stops does not count again (no feedback loop).
        if self.list.is_banned(ip) {
            return;
        }
        self.stats.failures.fetch_add(1, Relaxed);
        self.recent.push_back((ip, evidence));
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        let now = Instant::now();
        for ban in self.jail.failure(ip, now) {
            let name = &self.config.name;
            if let Some(why) = self.rails.refuse(&ban.net).await {
                self.stats.refused.fetch_add(1, Relaxed);
                tracing::warn!(jail = %name, net = %ban.net, "{why}");
                continue;
            }
            let keep = self.config.settings.maxretry.max(1) as usize;
            let mut events: Vec<Evidence> = self
                .recent
                .iter()
                .rev()
                .filter(|(a, _)| ban.net.contains(a))
                .take(keep)
                .map(|(_, e)| e.clone())
                .collect();
            events.reverse();
            let decision = Decision {
                net: ban.net,
                until: unix_now() + ban.duration.as_secs().max(1),
                jail: name.clone(),
                reason: format!(
                    "{} failures within {:?}",
                    self.config.settings.maxretry, self.config.settings.findtime
                ),
                step: ban.step,
                events,
                by: self.list.id().to_owned(),
                removed: false,
            };
            if self.config.dry_run {
                self.stats.would_ban.fetch_add(1, Relaxed);
                tracing::warn!(jail = %name, net = %ban.net, duration = ?ban.duration, step = ban.step, "would ban (dry_run)");
                continue;
            }
            tracing::warn!(jail = %name, net = %ban.net, duration = ?ban.duration, step = ban.step, "banned");
            if self.list.ban(decision).await {
                self.stats.bans.fetch_add(1, Relaxed);
            }
        }
    }

    async fn follow_sshd(mut self, follower: Follower, log: PathBuf, mode: Mode, mut phase: watch::Receiver<Phase>) {
        let mut follower = Some(follower);
        // A stat every 50 ms: a failure is read (and banned) within 50 ms of being written.
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut last_seen = Instant::now();
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
                    tracing::warn!(jail = %self.config.name, log = %log.display(), error = %e, "cannot read the log");
                    continue;
                }
            };
            let now = time::OffsetDateTime::now_utc();
            let filter = Filter::new(mode, now);
            for line in lines {
                if !filter.is_sshd(&line) {
                    continue;
                }
                last_seen = Instant::now();
                if let Some(failure) = filter.failure(&line) {
                    self.failure(failure.ip, Evidence::new(failure.time.unwrap_or(now), line.trim_end())).await;
                }
            }
            self.watch_blind(last_seen, log.exists());
        }
    }

    async fn follow_journal(
        mut self,
        journal: super::journal::Journal,
        start: Option<String>,
        mode: Mode,
        mut phase: watch::Receiver<Phase>,
        alive: tokio::sync::mpsc::Sender<()>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let journal_phase = phase.clone();
        tokio::spawn(async move {
            journal.run(start, tx, journal_phase).await;
            drop(alive);
        });
        let mut last_seen = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let entry = tokio::select! {
                e = rx.recv() => e,
                _ = tick.tick() => {
                    self.watch_blind(last_seen, true);
                    continue;
                }
                _ = phase.wait_for(|p| *p != Phase::Running) => return,
            };
            let Some(entry) = entry else { return };
            if !Filter::is_sshd_process(&entry.identifier) {
                continue;
            }
            last_seen = Instant::now();
            let now = time::OffsetDateTime::now_utc();
            let filter = Filter::new(mode, now);
            if let Some(failure) = filter.message_failure(&entry.message, entry.time) {
                let text = format!("{}[{}]: {}", entry.identifier, entry.pid, entry.message);
                self.failure(failure.ip, Evidence::new(failure.time.unwrap_or(now), &text)).await;
            }
        }
    }

    /// Says once, loudly, when a source that exists has given nothing of its kind for
    /// `blind_after` (sshd logging elsewhere, a wrong file, a journal-only host), and once when it
    /// sees again.
    fn watch_blind(&self, last_seen: Instant, exists: bool) {
        let blind = exists && last_seen.elapsed() >= self.config.blind_after;
        if self.stats.blind.swap(blind, Relaxed) != blind {
            if blind {
                tracing::warn!(jail = %self.config.name, after = ?self.config.blind_after, "blind: no sshd line in the source; is sshd logging there (on Debian 12+, use the journal)?");
            } else {
                tracing::info!(jail = %self.config.name, "the source gives sshd lines again");
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
                Ok(r) if reasons.is_empty() || reasons.contains(&r.reason) => {
                    let text = format!("{} {}", r.reason.name(), r.route);
                    self.failure(r.client, Evidence::new(r.time.into(), &text)).await;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(jail = %self.config.name, missed = n, "refusal events came faster than the jail read them");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
