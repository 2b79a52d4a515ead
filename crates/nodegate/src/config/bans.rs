//! `[bans]` and `[[jail]]`: which failures ban whom, for how long.

use super::{ConfigError, Locator, ip_set, raw};
use crate::bans::engine::{Bans, JailConfig, Source};
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
    if let Some(fw) = b.as_ref().and_then(|b| b.firewall.as_ref())
        && fw.get_ref() != "none"
    {
        let message = match fw.get_ref().as_str() {
            "nftables" => "nftables enforcement is not built yet: use \"none\" (bans are enforced in the gateway)",
            _ => "must be \"nftables\" or \"none\"",
        };
        return Err(at.error(fw.span(), Some("bans.firewall".into()), message));
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
        if let Some(journal) = &j.journal {
            return Err(at.error(
                journal.span(),
                key("journal"),
                "journal sources are not built yet: name the log file with `log`",
            ));
        }
        let source = match j.source.get_ref().as_str() {
            "sshd" => {
                let Some(log) = &j.log else {
                    return Err(at.error(
                        j.source.span(),
                        key("log"),
                        "an sshd jail needs `log` (e.g. \"/var/log/auth.log\")",
                    ));
                };
                if j.reasons.is_some() {
                    return Err(at.error(j.source.span(), key("reasons"), "`reasons` is for gateway jails"));
                }
                Source::Sshd { log: log.get_ref().into(), mode: j.mode }
            }
            "gateway" => {
                let mut reasons = Vec::new();
                for r in j.reasons.iter().flatten() {
                    reasons.push(reason(r.get_ref()).ok_or_else(|| {
                        at.error(
                            r.span(),
                            key("reasons"),
                            format!("`{}`: one of address-denied, bad-request, credential-missing, credential-not-enough, not-exposed, rate-limited", r.get_ref()),
                        )
                    })?);
                }
                Source::Gateway { reasons }
            }
            other => {
                return Err(at.error(j.source.span(), key("source"), format!("`{other}`: \"sshd\" or \"gateway\"")));
            }
        };
        let settings = JailSettings {
            maxretry: *j.maxretry.get_ref(),
            findtime: j.findtime.0,
            bantime: j.bantime.0,
            increment: j.increment,
            max_bantime: j.max_bantime.0.max(j.bantime.0),
            escalate_after: 3,
            ignore: crate::pipeline::ip_set::IpSet::default(),
            max_tracked: 100_000,
        };
        out.push(JailConfig { name: name.clone(), source, settings });
    }
    let state_dir = b.and_then(|b| b.state_dir).map(|d| d.into_inner().into());
    Ok(Some(Bans { state_dir, ignore, jails: out }))
}

fn reason(name: &str) -> Option<RefusalReason> {
    Some(match name {
        "address-denied" => RefusalReason::AddressDenied,
        "bad-request" => RefusalReason::BadRequest,
        "credential-missing" => RefusalReason::CredentialMissing,
        "credential-not-enough" => RefusalReason::CredentialNotEnough,
        "not-exposed" => RefusalReason::NotExposed,
        "rate-limited" => RefusalReason::RateLimited,
        _ => return None,
    })
}
