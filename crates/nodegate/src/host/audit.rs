//! `nodegate audit`: what this host exposes, in node terms, each finding with its fix.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::Serialize;

use super::ports::{Exposure, Severity, known};
use super::sshd_config::SshdConfig;
use super::{Finding, socket_owners};
use crate::config::{Config, PortRange};
use crate::procnet::{self, Proto};

/// A listening socket as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Listening {
    pub proto: Proto,
    pub address: SocketAddr,
    pub family: &'static str,
    /// Bound to a wildcard or a non-loopback address: reachable from other hosts (unless a
    /// firewall says otherwise).
    pub exposed: bool,
    pub process: String,
    /// What it is, when it is a known node port.
    pub known: Option<&'static str>,
}

/// What the firewall looks like, as far as `nft` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FirewallView {
    /// `nft list ruleset` could be read.
    pub readable: bool,
    /// Tables with an input base chain whose policy is drop.
    pub input_drop: Vec<String>,
    /// Ports `nodegate firewall` keeps open, when its table is loaded.
    pub nodegate_open: Option<Vec<String>>,
    /// Ports Docker publishes (`8080/tcp`), from its DNAT rules.
    pub docker_published: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub listening: Vec<Listening>,
    pub firewall: FirewallView,
    pub sshd: Option<String>,
    pub findings: Vec<Finding>,
}

impl Report {
    /// 0 clean, 1 warnings, 2 critical.
    pub fn exit_code(&self) -> u8 {
        match self.findings.iter().map(|f| f.severity).max() {
            Some(Severity::Critical) => 2,
            Some(Severity::Warning) => 1,
            _ => 0,
        }
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        for severity in [Severity::Critical, Severity::Warning, Severity::Info] {
            let found: Vec<_> = self.findings.iter().filter(|f| f.severity == severity).collect();
            if found.is_empty() {
                continue;
            }
            s.push_str(&format!("{} ({}):\n", severity.name().to_uppercase(), found.len()));
            for f in found {
                s.push_str(&format!("  - {}\n    fix: {}\n    [{}]\n", f.message, f.fix, f.id));
            }
            s.push('\n');
        }
        if self.findings.is_empty() {
            s.push_str("No findings.\n\n");
        }
        s.push_str("Listening sockets:\n");
        for l in &self.listening {
            s.push_str(&format!(
                "  {:<4} {:<46} {:<8} {:<28} {}\n",
                l.proto.name(),
                l.address.to_string(),
                if l.exposed { "exposed" } else { "local" },
                l.process,
                l.known.unwrap_or("")
            ));
        }
        if let Some(src) = &self.sshd {
            s.push_str(&format!("\nsshd settings read from {src}\n"));
        }
        s
    }
}

/// Runs every check. `config`: the gateway's config, for what it fronts and trusts;
/// `sshd_file`: an sshd_config to read instead of asking sshd.
pub fn run(config: Option<&Config>, sshd_file: Option<&Path>) -> Report {
    let (owners, hidden) = socket_owners();
    let root = super::is_root();
    let mut listening = Vec::new();
    let mut seen = BTreeSet::new();
    for proto in [Proto::Tcp, Proto::Udp] {
        for s in procnet::sockets(proto) {
            let listens = match proto {
                Proto::Tcp => s.state == procnet::TCP_LISTEN,
                Proto::Udp => s.state == procnet::UDP_UNCONNECTED && s.remote.port() == 0,
            };
            if !listens || !seen.insert((proto, s.local)) {
                continue;
            }
            let process = match owners.get(&s.inode) {
                Some((pid, comm)) => format!("{comm} (pid {pid})"),
                None if hidden && !root => "unknown (run as root to see)".to_owned(),
                None if hidden => "unknown (hidden from this host's root: a container?)".to_owned(),
                None => "unknown".to_owned(),
            };
            let comm = owners.get(&s.inode).map(|(_, c)| c.as_str());
            listening.push(Listening {
                proto,
                address: s.local,
                family: if s.local.is_ipv4() { "ipv4" } else { "ipv6" },
                exposed: !s.local.ip().to_canonical().is_loopback(),
                process,
                known: known(s.local.port(), proto, comm).map(|k| k.what),
            });
        }
    }
    listening.sort_by_key(|l| (l.address.port(), l.proto, l.address));
    let firewall = read_firewall();
    let mut findings = Vec::new();
    port_findings(&listening, config, &firewall, &mut findings);
    let sshd = SshdConfig::load(sshd_file);
    if let Some(c) = &sshd {
        findings.extend(c.findings());
    }
    if let Some(c) = config {
        trust_findings(c, &mut findings);
    }
    firewall_findings(&listening, &firewall, &mut findings);
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then_with(|| a.id.cmp(&b.id)));
    Report { listening, firewall, sshd: sshd.map(|c| c.source), findings }
}

/// Node ports by what they are, and node APIs the gateway fronts that are reachable beside it.
fn port_findings(listening: &[Listening], config: Option<&Config>, fw: &FirewallView, out: &mut Vec<Finding>) {
    // host:port of the nodes the gateway proxies to that are on this host.
    let fronted: Vec<u16> = config
        .map(|c| {
            c.nodes
                .iter()
                .filter(|n| {
                    let host = n.authority.host().trim_matches(['[', ']']);
                    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
                })
                .filter_map(|n| n.authority.port_u16())
                .collect()
        })
        .unwrap_or_default();
    let ours: Vec<u16> = config.map(gateway_ports).unwrap_or_default();
    for l in listening.iter().filter(|l| l.exposed) {
        let port = l.address.port();
        let comm = l.process.split(" (pid").next();
        let closed = fw
            .nodegate_open
            .as_ref()
            .is_some_and(|open| !open.iter().any(|o| PortRange::parse(o).is_ok_and(|r| r.contains(port, l.proto))));
        let at = format!("{} on {}/{}", l.process, l.address, l.proto.name());
        if comm == Some("docker-proxy") {
            out.push(Finding::new(
                &format!("docker.proxy.{port}-{}", l.proto.name()),
                Severity::Warning,
                format!("Docker publishes {}/{} (docker-proxy): reachable from outside whatever the input chain says", l.address, l.proto.name()),
                "publish it on 127.0.0.1 only (-p 127.0.0.1:PORT:PORT), or apply nodegate firewall, which filters the forward path of published ports".into(),
            ));
            continue;
        }
        if fronted.contains(&port) && l.proto == Proto::Tcp && !ours.contains(&port) {
            out.push(Finding::new(
                &format!("gateway.bypass.{port}"),
                if closed { Severity::Warning } else { Severity::Critical },
                format!(
                    "the gateway fronts the node API on 127.0.0.1:{port}, but it also listens on {}: clients can walk around the gateway's protections{}",
                    l.address,
                    if closed { " (nodegate's firewall closes it today)" } else { "" }
                ),
                format!("bind the node's API to 127.0.0.1:{port} in the node's config"),
            ));
            continue;
        }
        let Some(k) = known(port, l.proto, comm) else {
            if !ours.contains(&port) && !closed {
                out.push(Finding::new(
                    &format!("port.unknown.{port}-{}", l.proto.name()),
                    Severity::Info,
                    format!("{at} is reachable from other hosts"),
                    "close it if nothing outside needs it (nodegate firewall), or bind it to 127.0.0.1".into(),
                ));
            }
            continue;
        };
        match k.exposure {
            Exposure::Private(severity) => out.push(Finding::new(
                &format!("port.{}.exposed", k.id),
                if closed { Severity::Info } else { severity },
                format!(
                    "{} on {}: {}{}",
                    k.what,
                    l.address,
                    k.risk,
                    if closed { " (nodegate's firewall closes it today)" } else { "" }
                ),
                format!("bind it to 127.0.0.1:{port} in its config; reach it through an SSH tunnel"),
            )),
            Exposure::Api if !ours.contains(&port) && !closed => out.push(Finding::new(
                &format!("port.{}.public", k.id),
                Severity::Warning,
                format!(
                    "{} on {} faces the internet without the gateway: no rate limits, bans or route policy",
                    k.what, l.address
                ),
                format!("bind it to 127.0.0.1:{port} and put nodegate in front of it"),
            )),
            _ => {}
        }
    }
}

/// Every port the gateway itself listens on.
pub fn gateway_ports(c: &Config) -> Vec<u16> {
    let mut ports: Vec<u16> = c
        .gateway
        .listen
        .iter()
        .chain(&c.gateway.listen_proxy_protocol)
        .chain(&c.gateway.listen_http)
        .chain(c.tls.iter().filter_map(|t| t.client_auth.as_ref()).flat_map(|a| &a.listen))
        .map(|a| a.port())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The gateway's own settings that widen what clients can do.
fn trust_findings(c: &Config, out: &mut Vec<Finding>) {
    let (v4, v6) = c.gateway.trusted_proxies.size();
    if v4 >= 1 << 32 || v6 == u128::MAX {
        out.push(Finding::new(
            "gateway.trusted-proxies.everyone",
            Severity::Critical,
            "trusted_proxies covers every address: any client can name any address as itself (rate limits, bans and allow lists bypassed)".into(),
            "list only your load balancers' addresses in [gateway] trusted_proxies".into(),
        ));
    } else if v4 > 1 << 16 || v6 > 1 << 96 {
        out.push(Finding::new(
            "gateway.trusted-proxies.wide",
            Severity::Warning,
            "trusted_proxies is wider than a /16 (IPv4) or a /32 (IPv6): whoever else is in it can choose their address".into(),
            "narrow [gateway] trusted_proxies to your proxies' own addresses".into(),
        ));
    }
    if let Some(admin) = c.admin
        && !admin.ip().is_loopback()
    {
        out.push(Finding::new(
            "gateway.admin.exposed",
            Severity::Warning,
            format!(
                "the admin API listens on {admin}: its credential is all that stands between the internet and your bans, reloads and clients' addresses"
            ),
            "[admin] listen = \"127.0.0.1:9090\"".into(),
        ));
    }
}

fn firewall_findings(listening: &[Listening], fw: &FirewallView, out: &mut Vec<Finding>) {
    if !fw.readable {
        out.push(Finding::new(
            "firewall.unreadable",
            Severity::Info,
            "the firewall's rules could not be read (nft list ruleset needs root)".into(),
            "run the audit as root to check the firewall".into(),
        ));
        return;
    }
    let exposed = listening.iter().filter(|l| l.exposed).count();
    if fw.input_drop.is_empty() && exposed > 0 {
        out.push(Finding::new(
            "firewall.none",
            Severity::Warning,
            format!("no input firewall (no input chain with policy drop): all {exposed} exposed sockets are reachable"),
            "nodegate firewall --print, then nodegate firewall --apply".into(),
        ));
    }
    for p in &fw.docker_published {
        out.push(Finding::new(
            &format!("docker.published.{}", p.replace('/', "-")),
            if fw.input_drop.is_empty() { Severity::Info } else { Severity::Warning },
            format!("Docker publishes {p}: reachable from outside whatever the input chain says (Docker's forward rules)"),
            "publish it on 127.0.0.1 only (-p 127.0.0.1:PORT:PORT), or apply nodegate firewall, which filters the forward path of published ports".into(),
        ));
    }
}

/// Reads the ruleset: input chains with policy drop, nodegate's own open ports, Docker's DNATs.
fn read_firewall() -> FirewallView {
    let mut view =
        FirewallView { readable: false, input_drop: Vec::new(), nodegate_open: None, docker_published: Vec::new() };
    let Ok(out) = std::process::Command::new("nft").args(["list", "ruleset"]).output() else { return view };
    if !out.status.success() {
        return view;
    }
    view.readable = true;
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut table, mut chain) = (String::new(), String::new());
    let mut published = BTreeSet::new();
    let mut open = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix("table ") {
            table = t.trim_end_matches(" {").to_owned();
        } else if let Some(c) = line.strip_prefix("chain ") {
            chain = c.trim_end_matches(" {").to_owned();
        } else if line.contains("hook input") && line.contains("policy drop") {
            view.input_drop.push(table.clone());
        } else if table == "inet nodegate" && chain == "input" && line.ends_with("accept") {
            open.extend(super::firewall::read_accept(line));
        } else if chain.starts_with("DOCKER") && line.contains("dnat to") {
            // `iifname != "docker0" tcp dport 8080 dnat ip to 172.17.0.2:80`
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == "dport")
                && let (Some(proto), Some(port)) = (words.get(i.wrapping_sub(1)), words.get(i + 1))
                && port.parse::<u16>().is_ok()
            {
                published.insert(format!("{port}/{proto}"));
            }
        }
    }
    if view.input_drop.iter().any(|t| t == "inet nodegate") {
        view.nodegate_open = Some(open);
    }
    view.docker_published = published.into_iter().collect();
    view
}
