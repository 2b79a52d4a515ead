//! `nodegate firewall`: an nftables ruleset that keeps exactly what the node and the gateway need.
//!
//! Everything is in nodegate's own table, `inet nodegate` (the ban engine's sets and chains live
//! there too); no other table is touched. Input: policy drop; established and related traffic,
//! loopback, and the ICMP/ICMPv6 types IPv4 and IPv6 need accepted; banned sources dropped;
//! optionally new SSH connections limited per source; then the SSH ports, the gateway's
//! listeners and `[firewall] allow` accepted. Forward (`[firewall] forward`, on by default): a
//! connection DNATed to a container (a port Docker publishes) is dropped unless `allow` names its
//! published port, since Docker's own rules let it past any input chain.
//!
//! `--apply` loads the ruleset in one transaction and leaves a guard process behind: unless
//! `nodegate firewall --confirm` comes within the window (from a new SSH session, proving one can
//! still log in), the guard puts the table back as it was, as iptables-apply does. The guard is a
//! process of its own, so it outlives the SSH session that ran `--apply` being cut off.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, PortRange};
use crate::procnet::Proto;

/// What the ruleset opens, and from where each entry comes.
#[derive(Debug, Clone)]
pub struct Plan {
    pub ssh_ports: Vec<u16>,
    pub ssh_per_minute: Option<u32>,
    /// (range, why) for TCP and UDP.
    pub open: Vec<(PortRange, String)>,
    pub forward: bool,
}

/// The plan for `config`: sshd's ports from `[firewall] ssh_ports`, else sshd's own settings
/// (`sshd -T`, or `sshd_file`), else 22.
pub fn plan(config: &Config, sshd_file: Option<&Path>) -> Plan {
    let ssh_ports = match &config.firewall.ssh_ports {
        Some(p) => p.clone(),
        None => super::sshd_config::SshdConfig::load(sshd_file).map_or(vec![22], |c| c.ports().to_vec()),
    };
    let mut open = Vec::new();
    for p in &ssh_ports {
        open.push((PortRange { lo: *p, hi: *p, proto: Proto::Tcp }, "sshd".to_owned()));
    }
    for p in super::audit::gateway_ports(config) {
        open.push((PortRange { lo: p, hi: p, proto: Proto::Tcp }, "nodegate".to_owned()));
    }
    for a in &config.firewall.allow {
        open.push((*a, "[firewall] allow".to_owned()));
    }
    Plan { ssh_ports, ssh_per_minute: config.firewall.ssh_per_minute, open, forward: config.firewall.forward }
}

fn ports(plan: &Plan, proto: Proto) -> Vec<String> {
    let mut v: Vec<String> = plan.open.iter().filter(|(r, _)| r.proto == proto).map(|(r, _)| r.nft()).collect();
    v.sort_by_key(|p| p.split('-').next().and_then(|n| n.parse::<u16>().ok()));
    v.dedup();
    v
}

/// The ruleset, as `nft -f` takes it.
pub fn ruleset(plan: &Plan, source: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# nodegate firewall, from {source}. Only table inet nodegate is touched.");
    for (r, why) in &plan.open {
        let _ = writeln!(s, "#   open {}/{}: {why}", r.nft(), r.proto.name());
    }
    s.push_str("table inet nodegate {\n");
    for (set, ty) in
        [("banned4", "ipv4_addr"), ("banned6", "ipv6_addr"), ("banned6_64", "ipv6_addr"), ("banned6_48", "ipv6_addr")]
    {
        let _ = writeln!(s, "\tset {set} {{ type {ty}; flags timeout; }}");
    }
    if plan.ssh_per_minute.is_some() {
        for (set, ty) in [("ssh_rate4", "ipv4_addr"), ("ssh_rate6", "ipv6_addr")] {
            let _ = writeln!(s, "\tset {set} {{ type {ty}; size 65535; flags dynamic,timeout; timeout 1m; }}");
        }
    }
    s.push_str("\tchain input { type filter hook input priority filter; policy drop; }\n");
    s.push_str("\tchain forward { type filter hook forward priority filter; policy accept; }\n}\n");
    // The chains are emptied and filled in the same transaction: no moment without rules.
    s.push_str("flush chain inet nodegate input\nflush chain inet nodegate forward\n");
    s.push_str("table inet nodegate {\n\tchain input {\n");
    s.push_str("\t\tct state established,related accept\n\t\tct state invalid drop\n\t\tiif \"lo\" accept\n");
    s.push_str("\t\tip saddr @banned4 drop\n\t\tip6 saddr @banned6 drop\n");
    s.push_str(
        "\t\tip6 saddr & ffff:ffff:ffff:ffff:: @banned6_64 drop\n\t\tip6 saddr & ffff:ffff:ffff:: @banned6_48 drop\n",
    );
    s.push_str("\t\ticmp type { echo-request, destination-unreachable, time-exceeded, parameter-problem } accept\n");
    s.push_str("\t\ticmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-request, nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept\n");
    let ssh: Vec<String> = plan.ssh_ports.iter().map(u16::to_string).collect();
    if let Some(n) = plan.ssh_per_minute {
        for (set, field) in [("ssh_rate4", "ip saddr"), ("ssh_rate6", "ip6 saddr")] {
            let _ = writeln!(
                s,
                "\t\ttcp dport {{ {} }} ct state new add @{set} {{ {field} limit rate over {n}/minute burst {} packets }} drop",
                ssh.join(", "),
                n.div_ceil(2).max(1)
            );
        }
    }
    for proto in [Proto::Tcp, Proto::Udp] {
        let open = ports(plan, proto);
        if !open.is_empty() {
            let _ = writeln!(s, "\t\t{} dport {{ {} }} accept", proto.name(), open.join(", "));
        }
    }
    s.push_str("\t}\n\tchain forward {\n");
    if plan.forward {
        s.push_str("\t\tct state established,related accept\n");
        for proto in [Proto::Tcp, Proto::Udp] {
            let allowed: Vec<String> = plan
                .open
                .iter()
                .filter(|(r, why)| r.proto == proto && why == "[firewall] allow")
                .map(|(r, _)| r.nft())
                .collect();
            let name = proto.name();
            if allowed.is_empty() {
                let _ = writeln!(s, "\t\tct status dnat meta l4proto {name} drop");
            } else {
                let _ = writeln!(
                    s,
                    "\t\tct status dnat meta l4proto {name} ct original proto-dst != {{ {} }} drop",
                    allowed.join(", ")
                );
            }
        }
    }
    s.push_str("\t}\n}\n");
    s
}

/// The ports an `accept` rule of nodegate's input chain opens, as `8080/tcp` or `30000-30100/tcp`.
pub fn read_accept(line: &str) -> Vec<String> {
    let line = line.trim();
    let Some(rest) = line.strip_suffix("accept") else { return Vec::new() };
    let proto = match rest.split_whitespace().next() {
        Some("tcp") => "tcp",
        Some("udp") => "udp",
        _ => return Vec::new(),
    };
    let Some(after) = rest.split_once(" dport ").map(|(_, a)| a.trim()) else { return Vec::new() };
    if after.contains(" ct ") || after.contains('@') {
        return Vec::new();
    }
    after
        .trim_start_matches('{')
        .trim_end_matches('}')
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| format!("{p}/{proto}"))
        .collect()
}

/// Runs `program` with `args` and `input` on its standard input; its output, or its error output.
fn run(program: &str, args: &[&str], input: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(input.as_bytes()).map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Runs `nft` with `args` and `input`; its output, or its error.
fn nft(args: &[&str], input: &str) -> Result<String, String> {
    run("nft", args, input).map_err(|e| {
        if e.starts_with("cannot run nft") { format!("{e} (Debian: apt-get install nftables)") } else { e }
    })
}

/// Validates the ruleset without applying it (`nft -c`); where that is not permitted (not root),
/// in a user and network namespace of its own (`unshare -rn`), which checks the same syntax and
/// kernel support without touching anything.
pub fn check(script: &str) -> Result<(), String> {
    match nft(&["-c", "-f", "-"], script) {
        Ok(_) => Ok(()),
        Err(e) if e.contains("Operation not permitted") || e.contains("Permission denied") => {
            run("unshare", &["-rn", "nft", "-c", "-f", "-"], script)
                .map(|_| ())
                .map_err(|e2| format!("{e}; then in a namespace: {e2}"))
        }
        Err(e) => Err(e),
    }
}

/// Files of a pending apply in the state dir.
struct Files {
    previous: PathBuf,
    pending: PathBuf,
    confirmed: PathBuf,
    log: PathBuf,
}

fn files(dir: &Path) -> Files {
    Files {
        previous: dir.join("previous.nft"),
        pending: dir.join("pending"),
        confirmed: dir.join("confirmed"),
        log: dir.join("rollback.log"),
    }
}

/// Applies `script` atomically, saving the table as it was, and starts the guard that restores it
/// unless confirmed within `window`. Returns the apply's id.
pub fn apply(script: &str, dir: &Path, window: Duration) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let f = files(dir);
    // The table as it is now (none is fine: the rollback then removes ours).
    let before = nft(&["list", "table", "inet", "nodegate"], "").unwrap_or_default();
    let restore = format!("add table inet nodegate\ndelete table inet nodegate\n{before}");
    std::fs::write(&f.previous, restore).map_err(|e| format!("cannot save the current rules: {e}"))?;
    let id = format!("{:016x}", fastrand::u64(..));
    let deadline = crate::bans::list::unix_now() + window.as_secs().max(1);
    let _ = std::fs::remove_file(&f.confirmed);
    std::fs::write(&f.pending, format!("{id} {deadline}\n")).map_err(|e| e.to_string())?;
    nft(&["-f", "-"], script).map_err(|e| format!("nft refused the ruleset, nothing changed: {e}"))?;
    // The guard: this binary again, in a process group of its own, outliving this session.
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let spawned = std::process::Command::new(exe)
        .args(["firewall", "--guard", &id, "--state-dir"])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        let _ = nft(&["-f", &f.previous.display().to_string()], "");
        return Err(format!("cannot start the rollback guard ({e}): the previous rules are back"));
    }
    Ok(id)
}

/// Confirms the pending apply: the guard leaves the new rules in place.
pub fn confirm(dir: &Path) -> Result<String, String> {
    let f = files(dir);
    let pending =
        std::fs::read_to_string(&f.pending).map_err(|_| "no firewall apply is waiting for confirmation".to_string())?;
    let id = pending.split_whitespace().next().unwrap_or_default().to_owned();
    std::fs::write(&f.confirmed, &id).map_err(|e| e.to_string())?;
    // The guard reads the confirmation first, so the pending file can go now.
    let _ = std::fs::remove_file(&f.pending);
    Ok(id)
}

/// The guard: waits for the confirmation of apply `id` until its deadline; without it, restores
/// the previous table. Blocking; runs in its own process.
pub fn guard(dir: &Path, id: &str) -> Result<bool, String> {
    let f = files(dir);
    let pending = std::fs::read_to_string(&f.pending).map_err(|e| e.to_string())?;
    let mut parts = pending.split_whitespace();
    if parts.next() != Some(id) {
        return Ok(true); // Another apply replaced this one; its guard decides.
    }
    let deadline: u64 = parts.next().and_then(|d| d.parse().ok()).unwrap_or(0);
    loop {
        if std::fs::read_to_string(&f.confirmed).is_ok_and(|c| c.trim() == id) {
            let _ = std::fs::remove_file(&f.pending);
            return Ok(true);
        }
        // A newer apply took over.
        if !std::fs::read_to_string(&f.pending).is_ok_and(|p| p.starts_with(id)) {
            return Ok(true);
        }
        if crate::bans::list::unix_now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let restored = nft(&["-f", &f.previous.display().to_string()], "");
    let _ = std::fs::remove_file(&f.pending);
    let line = match &restored {
        Ok(_) => format!("{} apply {id} not confirmed: previous rules restored\n", crate::bans::list::unix_now()),
        Err(e) => format!("{} apply {id} not confirmed: RESTORE FAILED: {e}\n", crate::bans::list::unix_now()),
    };
    use std::io::Write;
    if let Ok(mut log) = std::fs::OpenOptions::new().create(true).append(true).open(&f.log) {
        let _ = log.write_all(line.as_bytes());
    }
    restored.map(|_| false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_rules_read_back_into_ports() {
        assert_eq!(
            read_accept("tcp dport { 22, 8080, 30000-30100 } accept"),
            ["22/tcp", "8080/tcp", "30000-30100/tcp"]
        );
        assert_eq!(read_accept("udp dport 8084 accept"), ["8084/udp"]);
        assert!(
            read_accept("tcp dport 22 ct state new add @ssh_rate4 { ip saddr limit rate over 10/minute } drop")
                .is_empty()
        );
        assert!(read_accept("iif \"lo\" accept").is_empty());
    }
}
