//! Who the client is: the TCP peer, unless the peer is a trusted proxy (`[gateway] trusted_proxies`);
//! then the right-most address in `Forwarded` (or, without it, `X-Forwarded-For`) that is not a
//! trusted proxy itself. Right-most, because each proxy appends: everything left of the last
//! trusted hop was written by whoever sent the request, and may be a lie.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::FORWARDED;

use super::ip_set::IpSet;

pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &IpSet) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = if headers.contains_key(FORWARDED) {
        headers
            .get_all(FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|element| element.split(';').find_map(|pair| forwarded_for(pair.trim())))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default()
    } else {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|hop| parse_hop(hop.trim()))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default()
    };
    // Walk back from the nearest hop; stop at the first address no trusted proxy vouches for.
    let mut client = peer;
    for hop in hops.iter().rev() {
        client = hop.to_canonical();
        if !trusted.contains(client) {
            break;
        }
    }
    client
}

/// The address in one `for=` pair of a `Forwarded` element (RFC 7239); `None` for anything else.
fn forwarded_for(pair: &str) -> Option<IpAddr> {
    let (key, value) = pair.split_once('=')?;
    if !key.trim().eq_ignore_ascii_case("for") {
        return None;
    }
    parse_hop(value.trim().trim_matches('"'))
}

/// `203.0.113.9`, `203.0.113.9:4711`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    hop.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trusted() -> IpSet {
        IpSet::new(&["127.0.0.1/32".parse().unwrap(), "10.0.0.0/8".parse().unwrap()])
    }

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_say() {
        let h = with("x-forwarded-for", "6.6.6.6");
        assert_eq!(
            client_ip("198.51.100.1".parse().unwrap(), &h, &trusted()),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let h = with("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.1.1");
        assert_eq!(client_ip(peer, &h, &trusted()), "203.0.113.9".parse::<IpAddr>().unwrap());
        let h = with("forwarded", "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.2");
        assert_eq!(client_ip(peer, &h, &trusted()), "2001:db8::7".parse::<IpAddr>().unwrap());
        // Every hop trusted: the left-most is as far as anyone vouches.
        let h = with("x-forwarded-for", "10.2.2.2, 10.1.1.1");
        assert_eq!(client_ip(peer, &h, &trusted()), "10.2.2.2".parse::<IpAddr>().unwrap());
        // No header: the proxy itself.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted()), peer);
        // Garbage anywhere in the chain: trust none of it.
        let h = with("x-forwarded-for", "203.0.113.9, not-an-ip");
        assert_eq!(client_ip(peer, &h, &trusted()), peer);
        // Ports and brackets.
        let h = with("x-forwarded-for", "[2001:db8::1]:80");
        assert_eq!(client_ip(peer, &h, &trusted()), "2001:db8::1".parse::<IpAddr>().unwrap());
        let h = with("x-forwarded-for", "203.0.113.9:5555");
        assert_eq!(client_ip(peer, &h, &trusted()), "203.0.113.9".parse::<IpAddr>().unwrap());
    }
}
