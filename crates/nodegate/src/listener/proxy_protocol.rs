//! The PROXY protocol (v1 text and v2 binary, haproxy.org's spec), for listeners behind an L4
//! balancer: the first bytes of a connection name the client's address. Only believed from
//! `[gateway] trusted_proxies`; anything else on such a listener closes the connection.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX: usize = 107;

/// What a PROXY header says: the client's address, or `None` for `LOCAL`/`UNKNOWN` (the
/// balancer's own health checks), where the socket's peer stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    Client(SocketAddr),
    Local,
}

/// Reads and consumes the PROXY header at the start of `stream`, within `timeout`.
pub async fn read(stream: &mut TcpStream, timeout: Duration) -> io::Result<Header> {
    tokio::time::timeout(timeout, read_inner(stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no PROXY header in time"))?
}

async fn read_inner(stream: &mut TcpStream) -> io::Result<Header> {
    // Read exactly the header and not one byte more: the HTTP bytes behind it are hyper's. The
    // shortest header is v1's `PROXY UNKNOWN\r\n` (15 bytes); after that the format says how much
    // follows (v2: a length; v1: up to the line end, read a byte at a time, once per connection).
    let mut buf = vec![0u8; 15];
    stream.read_exact(&mut buf).await?;
    loop {
        match parse(&buf) {
            Parsed::Done(header, len) if len == buf.len() => return Ok(header),
            Parsed::Done(..) | Parsed::Invalid => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "not a valid PROXY header"));
            }
            Parsed::NeedMore => {
                let more = if buf.len() >= 16 && buf.starts_with(V2_SIGNATURE) {
                    16 + u16::from_be_bytes([buf[14], buf[15]]) as usize - buf.len()
                } else {
                    1
                };
                let at = buf.len();
                buf.resize(at + more, 0);
                stream.read_exact(&mut buf[at..]).await?;
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Done(Header, usize),
    NeedMore,
    Invalid,
}

pub fn parse(b: &[u8]) -> Parsed {
    if b.len() >= 12 && &b[..12] == V2_SIGNATURE {
        return parse_v2(b);
    }
    if V2_SIGNATURE.starts_with(&b[..b.len().min(12)]) && b.len() < 12 {
        return Parsed::NeedMore;
    }
    parse_v1(b)
}

fn parse_v1(b: &[u8]) -> Parsed {
    if !b"PROXY ".starts_with(&b[..b.len().min(6)]) {
        return Parsed::Invalid;
    }
    let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
        return if b.len() < V1_MAX { Parsed::NeedMore } else { Parsed::Invalid };
    };
    if end + 2 > V1_MAX {
        return Parsed::Invalid;
    }
    let Ok(line) = std::str::from_utf8(&b[..end]) else { return Parsed::Invalid };
    let parts: Vec<&str> = line.split(' ').collect();
    let header = match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Header::Local,
        ["PROXY", proto @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let (Ok(ip), Ok(port)) = (src.parse::<IpAddr>(), sport.parse::<u16>()) else { return Parsed::Invalid };
            if (*proto == "TCP4") != ip.is_ipv4() {
                return Parsed::Invalid;
            }
            Header::Client(SocketAddr::new(ip, port))
        }
        _ => return Parsed::Invalid,
    };
    Parsed::Done(header, end + 2)
}

fn parse_v2(b: &[u8]) -> Parsed {
    if b.len() < 16 {
        return Parsed::NeedMore;
    }
    let (ver_cmd, family) = (b[12], b[13]);
    let len = u16::from_be_bytes([b[14], b[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Parsed::Invalid;
    }
    if b.len() < 16 + len {
        return Parsed::NeedMore;
    }
    let body = &b[16..16 + len];
    let header = match (ver_cmd & 0x0f, family) {
        (0, _) => Header::Local,
        // An address family whose addresses do not fit in the length given: a broken header.
        (1, 0x11) if len < 12 => return Parsed::Invalid,
        (1, 0x21) if len < 36 => return Parsed::Invalid,
        (1, 0x11) => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Header::Client(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([body[8], body[9]])))
        }
        (1, 0x21) => {
            let octets: [u8; 16] = body[..16].try_into().expect("16 bytes");
            Header::Client(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        // Other families (UNIX sockets, UNSPEC) name no IP client: the peer stands.
        (1, _) => Header::Local,
        _ => return Parsed::Invalid,
    };
    Parsed::Done(header, 16 + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1() {
        let h = b"PROXY TCP4 203.0.113.5 192.0.2.1 5555 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(parse(h), Parsed::Done(Header::Client("203.0.113.5:5555".parse().unwrap()), 43));
        let h = b"PROXY TCP6 2001:db8::5 2001:db8::1 5555 443\r\n";
        assert_eq!(parse(h), Parsed::Done(Header::Client("[2001:db8::5]:5555".parse().unwrap()), h.len()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Parsed::Done(Header::Local, 15));
        assert_eq!(parse(b"PROXY TCP4 203.0.1"), Parsed::NeedMore);
        assert_eq!(parse(b"PRO"), Parsed::NeedMore);
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 2001:db8::5 192.0.2.1 1 2\r\n",
            b"PROXY TCP4 x y 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n",
        ] {
            assert_eq!(parse(bad), Parsed::Invalid, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            parse(&[b'P', b'R', b'O', b'X', b'Y', b' '].iter().chain([b'A'; 200].iter()).copied().collect::<Vec<_>>()),
            Parsed::Invalid
        );
    }

    #[test]
    fn v2() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 5, 192, 0, 2, 1, 0x15, 0xb3, 0x01, 0xbb]);
        h.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(parse(&h), Parsed::Done(Header::Client("203.0.113.5:5555".parse().unwrap()), 28));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Parsed::Done(Header::Local, 16));
        assert_eq!(parse(&h[..20]), Parsed::NeedMore);
        let mut bad_version = V2_SIGNATURE.to_vec();
        bad_version.extend_from_slice(&[0x11, 0x11, 0, 0]);
        assert_eq!(parse(&bad_version), Parsed::Invalid);
        // Lengths too short for the family's addresses.
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 203, 0, 113, 5]);
        assert_eq!(parse(&short), Parsed::Invalid);
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x21, 0, 12]);
        short.extend_from_slice(&[0; 12]);
        assert_eq!(parse(&short), Parsed::Invalid);
        // AF_UNIX names no IP client: the balancer stands.
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.extend_from_slice(&[0; 216]);
        assert_eq!(parse(&unix), Parsed::Done(Header::Local, 232));
    }
}
