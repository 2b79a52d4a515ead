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
}

impl BanList {
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if active.is_empty() {
            return false;
        }
        let ip = ip.to_canonical();
        let now = Instant::now();
        let lens: &[u8] = if ip.is_ipv4() { &[32] } else { &[128, 64, 48] };
        lens.iter()
            .filter_map(|len| IpNet::new(ip, *len).ok())
            .any(|net| active.get(&net.trunc()).is_some_and(|until| *until > now))
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
    fn failure(&mut self, ip: IpAddr) {
        let now = Instant::now();
        for ban in self.jail.failure(ip, now) {
            tracing::warn!(jail = %self.name, net = %ban.net, duration = ?ban.duration, step = ban.step, "banned");
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
                    self.failure(failure.ip);
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
                Ok(r) if reasons.is_empty() || reasons.contains(&r.reason) => self.failure(r.client),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(jail = %self.name, missed = n, "refusal events came faster than the jail read them");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
