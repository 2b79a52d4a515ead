//! Safety rails: who is never banned, whatever a jail, an operator or a node says. The `[bans]
//! ignore` list, the trusted proxies and the configured nodes; and any address with a live SSH
//! session into this host (an established TCP connection on one of `ssh_ports`, read from the
//! kernel's socket tables), so that a typo in a password never locks out the operator who is logged
//! in to fix it.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::pipeline::ip_set::IpSet;

pub struct Rails {
    pub ignore: IpSet,
    /// Empty: live sessions are not protected (`protect_sessions = false`).
    pub ssh_ports: Vec<u16>,
    /// The peers read last, and when (read at most once a second).
    sessions: Mutex<Option<(Instant, HashSet<IpAddr>)>>,
}

impl Rails {
    pub fn new(ignore: IpSet, ssh_ports: Vec<u16>) -> Rails {
        Rails { ignore, ssh_ports, sessions: Mutex::new(None) }
    }

    /// Why `net` must not be banned, or `None` when it may be.
    pub async fn refuse(&self, net: &IpNet) -> Option<String> {
        if self.ignore.contains(net.network()) || self.ignore.contains(net.broadcast()) {
            return Some(format!("{net} is in [bans] ignore, or is a trusted proxy or a node: never banned"));
        }
        if self.ssh_ports.is_empty() {
            return None;
        }
        let peers = self.session_peers().await;
        let live = peers.iter().find(|p| net.contains(&p.to_canonical()))?;
        Some(format!("{live} has a live SSH session into this host (protect_sessions): not banned"))
    }

    async fn session_peers(&self) -> HashSet<IpAddr> {
        if let Some((at, peers)) = &*self.sessions.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < Duration::from_secs(1)
        {
            return peers.clone();
        }
        let ports = self.ssh_ports.clone();
        let peers = tokio::task::spawn_blocking(move || established_peers(&ports)).await.unwrap_or_default();
        *self.sessions.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), peers.clone()));
        peers
    }
}

/// The remote addresses of established TCP connections to one of `ports` on this host.
pub fn established_peers(ports: &[u16]) -> HashSet<IpAddr> {
    crate::procnet::sockets(crate::procnet::Proto::Tcp)
        .into_iter()
        .filter(|s| s.state == crate::procnet::TCP_ESTABLISHED && ports.contains(&s.local.port()))
        .map(|s| s.remote.ip().to_canonical())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_established_connection_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let peers = established_peers(&[port]);
        assert!(peers.contains(&client.local_addr().unwrap().ip()), "{peers:?}");
    }
}
