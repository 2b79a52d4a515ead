//! Header hygiene between client and node (RFC 9110 section 7.6.1): hop-by-hop headers, and every
//! header the `Connection` header names, are connection-specific and never forwarded in either
//! direction. Forwarding headers are the gateway's to write: what a client sent is replaced.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The names in `HOP_BY_HOP`, as a string match (a length switch and one compare).
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "keep-alive"
            | "proxy-connection"
    )
}

/// Removes hop-by-hop headers and the ones `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names is cheaper than nine removals by hash.
    if !headers.keys().any(|k| is_hop_by_hop(k.as_str())) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Whether a request asks for a WebSocket upgrade. Only `websocket` is passed through: other
/// upgrades (`h2c` above all) would let a client tunnel past the gateway's checks.
pub fn wants_websocket(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && headers.get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Puts back the two headers an upgrade needs after hop-by-hop stripping.
pub fn set_websocket_upgrade(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// What the forwarding headers say about one client connection; built once per connection.
#[derive(Debug, Clone)]
pub struct Forwarding {
    ip: HeaderValue,
    proto: &'static str,
    /// `for=...;proto=...`, the part of `Forwarded` that does not depend on the request.
    forwarded: HeaderValue,
}

impl Forwarding {
    /// `proto` is the client's scheme: "http" or "https".
    pub fn new(client: IpAddr, proto: &'static str) -> Forwarding {
        let ip = client.to_canonical();
        let forwarded = match ip {
            IpAddr::V4(v4) => format!("for={v4};proto={proto}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto={proto}"),
        };
        let ip = HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value");
        let forwarded = HeaderValue::from_str(&forwarded).expect("an IP address and a scheme are ASCII");
        Forwarding { ip, proto, forwarded }
    }
}

/// The headers the gateway writes on every request to a node, in place of any the client sent:
/// the node's own authority as Host, who the client is (X-Forwarded-For, X-Real-IP,
/// X-Forwarded-Proto, Forwarded, and X-Forwarded-Host when the client named a host), and the
/// request id. Over HTTP/1.1 they are written straight into the request's head (`write`) and the
/// client's own are left out (`replaces`): inserting six headers into the request's map cost more
/// than the rest of the header work together (bench/callgrind). gRPC's HTTP/2 requests get them
/// in the map (`apply`).
#[derive(Clone, Copy)]
pub struct Stamp<'a> {
    pub forwarding: &'a Forwarding,
    /// The Host (or authority) the client sent.
    pub client_host: Option<&'a HeaderValue>,
    pub request_id: &'a HeaderValue,
}

impl Stamp<'_> {
    /// Whether the stamp writes `name`, so the request's own must be left out.
    pub fn replaces(name: &HeaderName) -> bool {
        matches!(
            name.as_str(),
            "host"
                | "x-forwarded-for"
                | "x-forwarded-host"
                | "x-forwarded-proto"
                | "x-real-ip"
                | "forwarded"
                | "x-request-id"
        )
    }

    /// `Forwarded`'s value: the connection's part, then the client's host when it can go in a
    /// quoted-string (no quote or backslash).
    fn put_forwarded(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.forwarding.forwarded.as_bytes());
        if let Some(host) = self.client_host
            && host.to_str().is_ok()
            && !host.as_bytes().iter().any(|b| *b == b'"' || *b == b'\\')
        {
            out.extend_from_slice(b";host=\"");
            out.extend_from_slice(host.as_bytes());
            out.push(b'"');
        }
    }

    /// Appends the stamp's header lines, with `host` (the node's authority) as Host.
    pub fn write(&self, host: &HeaderValue, out: &mut Vec<u8>) {
        let fwd = self.forwarding;
        line(out, b"host", host.as_bytes());
        if let Some(h) = self.client_host {
            line(out, b"x-forwarded-host", h.as_bytes());
        }
        line(out, b"x-forwarded-for", fwd.ip.as_bytes());
        line(out, b"x-real-ip", fwd.ip.as_bytes());
        line(out, b"x-forwarded-proto", fwd.proto.as_bytes());
        out.extend_from_slice(b"forwarded: ");
        self.put_forwarded(out);
        out.extend_from_slice(b"\r\n");
        line(out, b"x-request-id", self.request_id.as_bytes());
    }

    /// Sets the same headers in `headers`, replacing the client's.
    pub fn apply(&self, host: &HeaderValue, headers: &mut HeaderMap) {
        let fwd = self.forwarding;
        headers.insert(header::HOST, host.clone());
        match self.client_host {
            Some(h) => headers.insert(&X_FORWARDED_HOST, h.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
        headers.insert(&X_FORWARDED_FOR, fwd.ip.clone());
        headers.insert(&X_REAL_IP, fwd.ip.clone());
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
        let mut forwarded = Vec::new();
        self.put_forwarded(&mut forwarded);
        let forwarded =
            HeaderValue::from_maybe_shared(bytes::Bytes::from(forwarded)).unwrap_or_else(|_| fwd.forwarded.clone());
        headers.insert(header::FORWARDED, forwarded);
        headers.insert(&X_REQUEST_ID, self.request_id.clone());
    }
}

/// One header line, `name: value` and CRLF, as HTTP/1.1 puts it on the wire.
pub fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The client's request id when it is a sane token, otherwise a fresh random one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c)) {
            return v.clone();
        }
    }
    let mut hex = [0u8; 32];
    let n = fastrand::u128(..);
    for (i, b) in hex.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&hex).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret , x-other"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn the_fast_check_knows_every_hop_by_hop_name() {
        assert!(HOP_BY_HOP.iter().all(|h| is_hop_by_hop(h.as_str())));
        assert!(!is_hop_by_hop("x-kept"));
    }

    #[test]
    fn only_websocket_upgrades_pass() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(wants_websocket(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!wants_websocket(&h));
    }

    /// The stamp as `write` puts it on the wire, read back into a map.
    fn written(stamp: &Stamp<'_>, host: &HeaderValue) -> HeaderMap {
        let mut out = Vec::new();
        stamp.write(host, &mut out);
        let mut h = HeaderMap::new();
        for line in String::from_utf8(out).unwrap().split_terminator("\r\n") {
            let (name, value) = line.split_once(": ").unwrap();
            h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_ipv6_is_quoted_and_mapped_v4_is_canonical() {
        let node = HeaderValue::from_static("node:9000");
        let id = HeaderValue::from_static("id-1");
        let v6 = Forwarding::new("2001:db8::1".parse().unwrap(), "http");
        let v4 = Forwarding::new("::ffff:192.0.2.7".parse().unwrap(), "http");
        let host = HeaderValue::from_static("a.example");
        let quoted = HeaderValue::from_static("a\"b");
        for (stamp, forwarded) in [
            (Stamp { forwarding: &v6, client_host: None, request_id: &id }, "for=\"[2001:db8::1]\";proto=http"),
            (
                Stamp { forwarding: &v4, client_host: Some(&host), request_id: &id },
                "for=192.0.2.7;proto=http;host=\"a.example\"",
            ),
            (Stamp { forwarding: &v4, client_host: Some(&quoted), request_id: &id }, "for=192.0.2.7;proto=http"),
        ] {
            // What a client sent under these names is replaced, both ways of stamping alike.
            let mut applied = HeaderMap::new();
            applied.insert(&X_FORWARDED_HOST, HeaderValue::from_static("spoofed"));
            applied.insert(&X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
            applied.insert(header::HOST, HeaderValue::from_static("client"));
            stamp.apply(&node, &mut applied);
            assert_eq!(applied, written(&stamp, &node));
            assert_eq!(applied["forwarded"], forwarded);
            assert_eq!(applied["host"], "node:9000");
            assert_eq!(applied["x-request-id"], "id-1");
            assert_eq!(applied.get("x-forwarded-host"), stamp.client_host);
            assert!(applied.keys().all(Stamp::replaces), "the stamp writes a name it does not replace");
        }
        assert_eq!(
            written(&Stamp { forwarding: &v4, client_host: None, request_id: &id }, &node)["x-forwarded-for"],
            "192.0.2.7"
        );
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("a b\"c"));
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 32);
        assert!(fresh.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }
}
