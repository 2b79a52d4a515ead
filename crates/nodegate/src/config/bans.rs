//! `[bans]` and `[[jail]]`: which failures ban whom, for how long.

use super::{ConfigError, Locator, ip_set, raw};
use crate::bans::engine::{Bans, Firewall, JailConfig, Source};
use crate::bans::jail::JailSettings;
use crate::events::RefusalReason;

pub(super) fn bans(
    b: Option<raw::RawBans>,
    jails: Vec<raw::RawJail>,
    at: &Locator,
) -> Result<Option<Bans>, ConfigError> {
    let ignore = match &b {
        Some(b) => ip_set(&b.ignore, "bans.ignore", at)?,
        None => crate::pipeline::ip_set::IpSet::default(),
    };
    let firewall = match b.as_ref().and_then(|b| b.firewall.as_ref()) {
        None => Firewall::None,
        Some(fw) => match fw.get_ref().as_str() {
            "none" => Firewall::None,
            "nftables" => Firewall::Nftables,
            _ => return Err(at.error(fw.span(), Some("bans.firewall".into()), "must be \"nftables\" or \"none\"")),
        },
    };
    if let Some(b) = &b
        && b.verify_interval.0 < std::time::Duration::from_millis(100)
    {
        return Err(at.at_key("bans.verify_interval", "must be 100ms or more"));
    }
    if jails.is_empty() {
        return Ok(None);
    }
    let mut out: Vec<JailConfig> = Vec::with_capacity(jails.len());
    for (i, j) in jails.into_iter().enumerate() {
        let key = |field: &str| Some(format!("jail[{i}].{field}"));
        let name = j.name.get_ref();
        if name.is_empty() || out.iter().any(|o| o.name == *name) {
            return Err(at.error(j.name.span(), key("name"), format!("`{name}` must be a non-empty name used once")));
        }
        if *j.maxretry.get_ref() == 0 {
            return Err(at.error(j.maxretry.span(), key("maxretry"), "must be 1 or more"));
        }
        for (field, d) in [("findtime", j.findtime.0), ("bantime", j.bantime.0), ("max_bantime", j.max_bantime.0)] {
            if d.is_zero() {
                return Err(at.at_key(&format!("jail[{i}].{field}"), "must be above 0"));
            }
        }
        let source = match j.source.get_ref().as_str() {
            "sshd" => {
                if j.reasons.is_some() {
                    return Err(at.error(j.source.span(), key("reasons"), "`reasons` is for gateway jails"));
                }
                match (&j.log, &j.journal) {
                    (Some(log), None) => {
                        if let Some(d) = &j.journal_directory {
                            return Err(at.error(d.span(), key("journal_directory"), "goes with `journal`, not `log`"));
                        }
                        Source::Sshd { log: log.get_ref().into(), mode: j.mode }
                    }
                    (None, Some(unit)) => {
                        if unit.get_ref().is_empty() || unit.get_ref().starts_with('-') {
                            return Err(at.error(unit.span(), key("journal"), "a systemd unit, e.g. \"ssh.service\""));
                        }
                        Source::SshdJournal {
                            unit: unit.get_ref().clone(),
                            directory: j.journal_directory.as_ref().map(|d| d.get_ref().into()),
                            mode: j.mode,
                        }
                    }
                    (Some(_), Some(unit)) => {
                        return Err(at.error(unit.span(), key("journal"), "one source: `log` or `journal`, not both"));
                    }
                    (None, None) => {
                        return Err(at.error(
                            j.source.span(),
                            key("log"),
                            "an sshd jail needs `log` (e.g. \"/var/log/auth.log\") or `journal` (e.g. \"ssh.service\")",
                        ));
                    }
                }
            }
            "gateway" => {
                let mut reasons = Vec::new();
                for r in j.reasons.iter().flatten() {
                    reasons.push(reason(r.get_ref()).ok_or_else(|| {
                        at.error(
                            r.span(),
                            key("reasons"),
                            format!("`{}`: one of address-denied, bad-request, credential-missing, credential-not-enough, not-exposed, rate-limited, node-refused", r.get_ref()),
                        )
                    })?);
                }
                Source::Gateway { reasons }
            }
            other => {
                return Err(at.error(j.source.span(), key("source"), format!("`{other}`: \"sshd\" or \"gateway\"")));
            }
        };
        if !matches!(*j.ipv6_prefix.get_ref(), 64 | 128) {
            return Err(at.error(j.ipv6_prefix.span(), key("ipv6_prefix"), "must be 64 or 128"));
        }
        if !(1000..=10_000_000).contains(j.max_tracked.get_ref()) {
            return Err(at.error(j.max_tracked.span(), key("max_tracked"), "must be between 1000 and 10000000"));
        }
        if *j.escalate_after.get_ref() == 0 {
            return Err(at.error(j.escalate_after.span(), key("escalate_after"), "must be 1 or more"));
        }
        let settings = JailSettings {
            maxretry: *j.maxretry.get_ref(),
            findtime: j.findtime.0,
            bantime: j.bantime.0,
            increment: j.increment,
            max_bantime: j.max_bantime.0.max(j.bantime.0),
            escalate_after: *j.escalate_after.get_ref(),
            ipv6_prefix: *j.ipv6_prefix.get_ref(),
            max_tracked: *j.max_tracked.get_ref(),
        };
        out.push(JailConfig { name: name.clone(), source, settings, dry_run: j.dry_run, blind_after: j.blind_after.0 });
    }
    let (verify_interval, ssh_ports) = match &b {
        Some(b) => (b.verify_interval.0, if b.protect_sessions { b.ssh_ports.clone() } else { Vec::new() }),
        None => (std::time::Duration::from_secs(60), vec![22]),
    };
    let state_dir = b.and_then(|b| b.state_dir).map(|d| d.into_inner().into());
    Ok(Some(Bans { state_dir, ignore, firewall, verify_interval, ssh_ports, jails: out }))
}

fn reason(name: &str) -> Option<RefusalReason> {
    RefusalReason::ALL.into_iter().find(|r| r.name() == name)
}
