//! The kernel's socket tables, /proc/net/{tcp,tcp6,udp,udp6}, for the current network namespace:
//! who listens where (the host audit) and who is connected to what (the bans' live-session rail).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One line of a socket table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub proto: Proto,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The kernel's state number: TCP 0x0A is LISTEN, 0x01 ESTABLISHED; UDP 0x07 is unconnected.
    pub state: u8,
    /// The socket's inode, as /proc/PID/fd/N links name it (`socket:[INODE]`).
    pub inode: u64,
}

pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_LISTEN: u8 = 0x0A;
pub const UDP_UNCONNECTED: u8 = 0x07;

/// Every socket of `proto` (both families); unreadable files count as empty.
pub fn sockets(proto: Proto) -> Vec<Socket> {
    let files = match proto {
        Proto::Tcp => ["/proc/net/tcp", "/proc/net/tcp6"],
        Proto::Udp => ["/proc/net/udp", "/proc/net/udp6"],
    };
    let mut out = Vec::new();
    for file in files {
        if let Ok(text) = std::fs::read_to_string(file) {
            out.extend(text.lines().skip(1).filter_map(|l| parse_line(l, proto)));
        }
    }
    out
}

/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`.
pub fn parse_line(line: &str, proto: Proto) -> Option<Socket> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (local, remote) = (hex_endpoint(f.get(1)?)?, hex_endpoint(f.get(2)?)?);
    let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
    let inode = f.get(9).and_then(|i| i.parse().ok()).unwrap_or(0);
    Some(Socket { proto, local, remote, state, inode })
}

/// `ADDR:PORT` in hex, the address in 32-bit words of host byte order.
fn hex_endpoint(s: &str) -> Option<SocketAddr> {
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
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_each_family_parse_and_bad_ones_are_skipped() {
        if cfg!(target_endian = "big") {
            return;
        }
        let v4 = "   0: 0100007F:0016 0300007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4242 1";
        let s = parse_line(v4, Proto::Tcp).unwrap();
        assert_eq!(
            (s.local, s.remote, s.state, s.inode),
            ("127.0.0.1:22".parse().unwrap(), "127.0.0.3:54321".parse().unwrap(), 1, 4242)
        );
        // ::ffff:192.0.2.7 (mapped), listening on [::]:9000.
        let v6 = "   1: 00000000000000000000000000000000:2328 0000000000000000FFFF0000070200C0:0000 0A 0 0 0 0 0 77";
        let s = parse_line(v6, Proto::Tcp).unwrap();
        assert_eq!(s.local, "[::]:9000".parse().unwrap());
        assert_eq!(s.remote.ip().to_canonical(), "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(s.state, TCP_LISTEN);
        assert!(parse_line("   0: 0000000000000000FFFF00000700C0:0016 x 01", Proto::Tcp).is_none(), "30 hex digits");
        assert!(parse_line("garbage", Proto::Udp).is_none());
    }
}
