//! Safety rails: who is never banned, whatever a jail, an operator or a node says. The `[bans]
//! ignore` list, the trusted proxies and the configured nodes; and any address with a live SSH
//! session into this host (an established TCP connection on one of `ssh_ports`, read from the
//! kernel's socket tables), so that a typo in a password never locks out the operator who is logged
//! in to fix it.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

/// The remote addresses of established TCP connections to one of `ports` on this host, from
/// /proc/net/tcp and tcp6 (unreadable files count as none).
pub fn established_peers(ports: &[u16]) -> HashSet<IpAddr> {
    let mut peers = HashSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            peers.extend(text.lines().skip(1).filter_map(|l| established(l, ports)));
        }
    }
    peers
}

/// One line of /proc/net/tcp{,6}: `sl local rem st ...`, addresses as hex `ADDR:PORT` with the
/// address in 32-bit words of host byte order; state 01 is ESTABLISHED.
fn established(line: &str, ports: &[u16]) -> Option<IpAddr> {
    let mut f = line.split_whitespace();
    let (_sl, local, remote, state) = (f.next()?, f.next()?, f.next()?, f.next()?);
    if state != "01" {
        return None;
    }
    let (_, local_port) = hex_endpoint(local)?;
    if !ports.contains(&local_port) {
        return None;
    }
    Some(hex_endpoint(remote)?.0.to_canonical())
}

fn hex_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_name_established_ssh_peers() {
        // Little-endian machines write 127.0.0.1 as 0100007F.
        if cfg!(target_endian = "little") {
            let v4 = "   0: 0100007F:0016 0300007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1 1";
            assert_eq!(established(v4, &[22]), Some("127.0.0.3".parse().unwrap()));
            assert_eq!(established(v4, &[2222]), None, "another port");
            let listen = v4.replace(" 01 ", " 0A ");
            assert_eq!(established(&listen, &[22]), None, "LISTEN is not a session");
            // ::ffff:192.0.2.7 (mapped) is the IPv4 client.
            let mapped = "   0: 00000000000000000000000001000000:0016 0000000000000000FFFF0000070200C0:D431 01";
            assert_eq!(established(mapped, &[22]), Some("192.0.2.7".parse().unwrap()));
            let short = "   0: 00000000000000000000000001000000:0016 0000000000000000FFFF00000700C0:D431 01";
            assert_eq!(established(short, &[22]), None, "a malformed address is skipped, not misread");
        }
    }

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
