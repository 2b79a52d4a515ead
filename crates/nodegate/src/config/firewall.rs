//! `[firewall]`: what `nodegate firewall` keeps open beside the gateway's listeners and sshd.

use super::{ConfigError, Locator, raw};
use crate::procnet::Proto;

/// `[firewall]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FirewallSettings {
    /// Ports that must stay public (P2P, gossip), beside the listeners and sshd.
    pub allow: Vec<PortRange>,
    /// sshd's ports; `None`: from `sshd -T` (or sshd_config), else 22.
    pub ssh_ports: Option<Vec<u16>>,
    /// New SSH connections a source may open a minute (`ssh_rate = "10/min"`); `None`: no limit.
    pub ssh_per_minute: Option<u32>,
    /// Filter the forward path too (ports published by containers): only what `allow` names.
    pub forward: bool,
}

/// `8084/udp`, `15600` (TCP), `30000-30100/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
    pub proto: Proto,
}

impl PortRange {
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let (ports, proto) = match s.split_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some(_) => return Err(format!("`{s}`: the protocol is tcp or udp (\"8084/udp\")")),
            None => (s, Proto::Tcp),
        };
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0);
        let (lo, hi) = match ports.split_once('-') {
            Some((a, b)) => (port(a), port(b)),
            None => (port(ports), port(ports)),
        };
        match (lo, hi) {
            (Some(lo), Some(hi)) if lo <= hi => Ok(PortRange { lo, hi, proto }),
            _ => Err(format!("`{s}`: a port (1-65535) or a range \"30000-30100\", then /tcp or /udp")),
        }
    }

    pub fn contains(&self, port: u16, proto: Proto) -> bool {
        self.proto == proto && (self.lo..=self.hi).contains(&port)
    }

    /// As nft writes it: `8084` or `30000-30100`.
    pub fn nft(&self) -> String {
        if self.lo == self.hi { self.lo.to_string() } else { format!("{}-{}", self.lo, self.hi) }
    }
}

pub(super) fn firewall(f: Option<raw::RawFirewall>, at: &Locator) -> Result<FirewallSettings, ConfigError> {
    let Some(f) = f else { return Ok(FirewallSettings { forward: true, ..FirewallSettings::default() }) };
    let mut allow = Vec::new();
    for a in &f.allow {
        allow.push(PortRange::parse(a.get_ref()).map_err(|e| at.error(a.span(), Some("firewall.allow".into()), e))?);
    }
    if let Some(ports) = &f.ssh_ports
        && ports.contains(&0)
    {
        return Err(at.at_key("firewall.ssh_ports", "ports are 1-65535"));
    }
    let ssh_per_minute = match &f.ssh_rate {
        None => None,
        Some(r) => {
            let interval = super::units::parse_rate(r.get_ref())
                .map_err(|e| at.error(r.span(), Some("firewall.ssh_rate".into()), e))?;
            let per_minute = (60_000 / interval.as_millis().max(1)) as u32;
            if per_minute == 0 {
                return Err(at.error(r.span(), Some("firewall.ssh_rate".into()), "at least 1/min"));
            }
            Some(per_minute)
        }
    };
    Ok(FirewallSettings { allow, ssh_ports: f.ssh_ports.clone(), ssh_per_minute, forward: f.forward })
}
