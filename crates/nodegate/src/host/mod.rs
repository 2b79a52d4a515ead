//! The node host itself, beside the gateway: `nodegate audit` (what the host exposes, in node
//! terms: listeners, known node ports, sshd's settings, Docker's published ports, the firewall,
//! the gateway's own trust settings) and `nodegate firewall` (an nftables ruleset that keeps
//! exactly what the node and the gateway need, applied with an automatic rollback).

pub mod audit;
pub mod firewall;
pub mod ports;
pub mod sshd_config;

use std::collections::HashMap;

pub use ports::Severity;

/// One thing the audit found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Finding {
    /// Stable across runs and versions: scripts match on it.
    pub id: String,
    pub severity: Severity,
    pub message: String,
    pub fix: String,
}

impl Finding {
    pub fn new(id: &str, severity: Severity, message: String, fix: String) -> Finding {
        Finding { id: id.to_owned(), severity, message, fix }
    }
}

/// Which process owns each socket inode, from /proc/PID/fd; and whether some processes could not
/// be read (another user's, without root).
pub fn socket_owners() -> (HashMap<u64, (u32, String)>, bool) {
    let mut owners = HashMap::new();
    let mut hidden = false;
    let Ok(procs) = std::fs::read_dir("/proc") else { return (owners, true) };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let fds = match std::fs::read_dir(p.path().join("fd")) {
            Ok(fds) => fds,
            Err(_) => {
                hidden = true;
                continue;
            }
        };
        let comm = std::fs::read_to_string(p.path().join("comm")).map(|c| c.trim().to_owned()).unwrap_or_default();
        for fd in fds.flatten() {
            let link = match std::fs::read_link(fd.path()) {
                Ok(l) => l,
                Err(e) => {
                    hidden |= e.kind() == std::io::ErrorKind::PermissionDenied;
                    continue;
                }
            };
            let link = link.to_string_lossy();
            if let Some(inode) =
                link.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')).and_then(|i| i.parse().ok())
            {
                owners.entry(inode).or_insert((pid, comm.clone()));
            }
        }
    }
    (owners, hidden)
}

/// Whether this process runs as root (its real uid, from /proc/self/status).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|u| u.split_whitespace().next() == Some("0")))
        .unwrap_or(false)
}
