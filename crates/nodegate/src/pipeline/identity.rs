//! Who the client is: the TCP peer, unless the peer is a trusted proxy (`[gateway] trusted_proxies`).
//! Then one header names the client, the one `[gateway] client_ip_header` picks (as nginx's
//! `real_ip_header`): any other forwarding header a client wrote is ignored. The header is walked
//! right to left, skipping trusted proxies; the first hop that is not one is the client. Right to
//! left, because each proxy appends: everything left of the last trusted hop was written by whoever
//! sent the request, and may be a lie. A hop that does not parse before that point breaks the chain:
//! the request is refused rather than blamed on the proxy (whose address would pass every check).

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};

use super::ip_set::IpSet;

/// The one header a trusted proxy names the client in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
    /// `X-Real-IP: client` (one address, set by the proxy).
    XRealIp,
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

impl ClientIpHeader {
    fn name(self) -> &'static HeaderName {
        match self {
            ClientIpHeader::XForwardedFor => &X_FORWARDED_FOR,
            ClientIpHeader::Forwarded => &FORWARDED,
            ClientIpHeader::XRealIp => &X_REAL_IP,
        }
    }
}

/// A trusted proxy sent a forwarding chain with a hop that names no address before any untrusted
/// hop: who the client is cannot be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokenChain;

/// The client's address, as `peer` and (from a trusted peer) the chosen header say.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &IpSet,
    header: ClientIpHeader,
) -> Result<IpAddr, BrokenChain> {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return Ok(peer);
    }
    // Several lines of the header are one comma list, in order; the last line is the nearest.
    let lines = headers.get_all(header.name());
    let mut client = peer;
    for line in lines.iter().rev() {
        let Ok(line) = line.to_str() else { return Err(BrokenChain) };
        if line.trim().is_empty() {
            continue;
        }
        for hop in line.rsplit(',') {
            let ip = match header {
                ClientIpHeader::Forwarded => forwarded_for(hop),
                _ => parse_hop(hop.trim()),
            };
            let ip = ip.ok_or(BrokenChain)?.to_canonical();
            client = ip;
            if !trusted.contains(ip) {
                return Ok(ip);
            }
        }
    }
    // Every hop trusted: the left-most is as far as anyone vouches; no header at all: the peer.
    Ok(client)
}

/// The address in a `Forwarded` element's `for=` pair (RFC 7239); `None` when it has none, or an
/// obfuscated or `unknown` one.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        key.trim().eq_ignore_ascii_case("for").then(|| parse_hop(value.trim().trim_matches('"')))?
    })
}

/// `203.0.113.9`, `203.0.113.9:4711`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        return (after.is_empty() || after.strip_prefix(':').is_some_and(is_port)).then(|| ip.parse().ok())?;
    }
    let (ip, port) = hop.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ClientIpHeader::*;
    use http::HeaderValue;

    fn trusted() -> IpSet {
        IpSet::new(&["127.0.0.1/32".parse().unwrap(), "10.0.0.0/8".parse().unwrap()])
    }

    fn with(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in lines {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn from_proxy(lines: &[(&'static str, &'static str)], header: ClientIpHeader) -> Result<IpAddr, BrokenChain> {
        client_ip(ip("127.0.0.1"), &with(lines), &trusted(), header)
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_say() {
        let h = with(&[("x-forwarded-for", "6.6.6.6")]);
        assert_eq!(client_ip(ip("198.51.100.1"), &h, &trusted(), XForwardedFor), Ok(ip("198.51.100.1")));
        let h = with(&[("x-forwarded-for", "garbage")]);
        assert_eq!(client_ip(ip("198.51.100.1"), &h, &trusted(), XForwardedFor), Ok(ip("198.51.100.1")));
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        assert_eq!(
            from_proxy(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.1.1")], XForwardedFor),
            Ok(ip("203.0.113.9"))
        );
        let fwd = ("forwarded", "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.2");
        assert_eq!(from_proxy(&[fwd], Forwarded), Ok(ip("2001:db8::7")));
        // Every hop trusted: the left-most is as far as anyone vouches.
        assert_eq!(from_proxy(&[("x-forwarded-for", "10.2.2.2, 10.1.1.1")], XForwardedFor), Ok(ip("10.2.2.2")));
        // No header, or an empty one: the proxy itself.
        assert_eq!(from_proxy(&[], XForwardedFor), Ok(ip("127.0.0.1")));
        assert_eq!(from_proxy(&[("x-forwarded-for", " ")], XForwardedFor), Ok(ip("127.0.0.1")));
        // Ports and brackets.
        assert_eq!(from_proxy(&[("x-forwarded-for", "[2001:db8::1]:80")], XForwardedFor), Ok(ip("2001:db8::1")));
        assert_eq!(from_proxy(&[("x-forwarded-for", "203.0.113.9:5555")], XForwardedFor), Ok(ip("203.0.113.9")));
        assert_eq!(from_proxy(&[("x-real-ip", "203.0.113.9")], XRealIp), Ok(ip("203.0.113.9")));
    }

    #[test]
    fn only_the_configured_header_is_read() {
        // The proxy in front appends X-Forwarded-For; a client-written Forwarded means nothing.
        let h = [("forwarded", "for=203.0.113.66"), ("x-forwarded-for", "198.51.100.7")];
        assert_eq!(from_proxy(&h, XForwardedFor), Ok(ip("198.51.100.7")));
        let h = [("x-forwarded-for", "203.0.113.66"), ("forwarded", "for=198.51.100.7")];
        assert_eq!(from_proxy(&h, Forwarded), Ok(ip("198.51.100.7")));
        assert_eq!(from_proxy(&h, XRealIp), Ok(ip("127.0.0.1")));
    }

    #[test]
    fn several_lines_are_one_list_in_order() {
        // HAProxy adds a line of its own rather than appending to the client's.
        let h = [("x-forwarded-for", "6.6.6.6, 10.0.0.9"), ("x-forwarded-for", "203.0.113.9")];
        assert_eq!(from_proxy(&h, XForwardedFor), Ok(ip("203.0.113.9")));
        let h = [("x-forwarded-for", "203.0.113.9"), ("x-forwarded-for", "10.0.0.9")];
        assert_eq!(from_proxy(&h, XForwardedFor), Ok(ip("203.0.113.9")));
    }

    #[test]
    fn a_hop_that_does_not_parse_before_the_client_breaks_the_chain() {
        for bad in ["garbage, 10.9.9.9", "203.0.113.9, not-an-ip", "1.2.3.4, , 10.0.0.1", "1.2.3.4:99999", "unknown"] {
            assert_eq!(from_proxy(&[("x-forwarded-for", bad)], XForwardedFor), Err(BrokenChain), "{bad}");
        }
        for bad in ["for=unknown", "for=_hidden, for=10.0.0.1", "proto=https", "for=\"[::1\""] {
            assert_eq!(from_proxy(&[("forwarded", bad)], Forwarded), Err(BrokenChain), "{bad}");
        }
        // Garbage left of the client is the client's own writing, and does not matter.
        assert_eq!(
            from_proxy(&[("x-forwarded-for", "garbage, 203.0.113.9, 10.0.0.1")], XForwardedFor),
            Ok(ip("203.0.113.9"))
        );
    }
}
