//! Every parser a client or a log file reaches, fed generated input: forwarding headers, PROXY v1/v2
//! headers (parsed and read off a real socket cut at any point), credentials (API keys, JWTs,
//! Basic), sshd log lines and the log file they are followed in, config files, rate strings,
//! durations and sizes, and request targets sent to a real gateway. (Canonical paths and request targets: `pipeline::canonical_path`'s
//! own property tests; JSON-RPC envelopes: tests/jsonrpc_fuzz.rs; node answers: `upstream::h1`.)
//!
//! Besides "never panics", each is held to what an attacker would try to break: a forged hop left
//! of the last trusted proxy never names the client, a user name never names the address sshd
//! blamed, a PROXY header is read to its last byte and not one byte further.
//!
//! `NODEGATE_FUZZ_CASES` sets how many cases each property runs (256 by default); a failure is
//! shrunk and recorded by proptest under proptest-regressions/, and then kept as a named test.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use common::fuzz_cases;
use http::{HeaderMap, HeaderValue};
use nodegate::Config;
use nodegate::bans::sshd::{Filter, Mode};
use nodegate::config::units::{parse_byte_rate, parse_duration, parse_rate, parse_size};
use nodegate::listener::proxy_protocol::{self, Header, Parsed};
use nodegate::pipeline::auth::{self, ApiKey, JwtKey, Role, Verdict};
use nodegate::pipeline::identity::{ClientIpHeader, client_ip};
use nodegate::pipeline::ip_set::IpSet;
use nodegate::pipeline::route_policy::Access;
use proptest::prelude::*;
use time::OffsetDateTime;

fn config() -> ProptestConfig {
    ProptestConfig { cases: fuzz_cases(), ..ProptestConfig::default() }
}

// ----- forwarding headers -----

fn trusted() -> IpSet {
    IpSet::new(&["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()])
}

/// An address outside the trusted set (the client) or inside it (a proxy of ours).
fn outside() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_filter("not 10/8", |o| o[0] != 10).prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_filter("not fd00::/8", |o| o[0] != 0xfd).prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

fn inside() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 3]>().prop_map(|o| IpAddr::V4(Ipv4Addr::new(10, o[0], o[1], o[2]))),
        any::<[u8; 15]>().prop_map(|o| {
            let mut b = [0xfd; 16];
            b[1..].copy_from_slice(&o);
            IpAddr::V6(Ipv6Addr::from(b))
        }),
    ]
}

/// One hop as a proxy writes it: bare, with a port, bracketed (IPv6), quoted in `Forwarded`.
fn hop(ip: IpAddr, style: u8, forwarded: bool) -> String {
    let plain = match (ip, style % 3) {
        (IpAddr::V4(v4), 1) => format!("{v4}:{}", 1000 + u16::from(style)),
        (IpAddr::V6(v6), 1) => format!("[{v6}]:{}", 1000 + u16::from(style)),
        (IpAddr::V6(v6), 2) => format!("[{v6}]"),
        (ip, _) => ip.to_string(),
    };
    if !forwarded {
        return plain;
    }
    let quoted = plain.contains(':') || style % 2 == 1;
    let value = if quoted { format!("\"{plain}\"") } else { plain };
    match style % 4 {
        0 => format!("for={value}"),
        1 => format!("proto=https;for={value}"),
        2 => format!("For={value};by=10.0.0.1"),
        _ => format!(" for={value} ;host=a"),
    }
}

/// What a client may write left of the hops our proxies add: anything a header value can hold.
fn forged() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![
            "[ -~]{0,24}",
            outside().prop_map(|ip| ip.to_string()),
            inside().prop_map(|ip| ip.to_string()),
            Just("unknown".to_owned()),
            Just("for=6.6.6.6".to_owned()),
            Just("\"[::1]\"".to_owned()),
        ],
        0..4,
    )
}

/// A header map carrying `hops` (left to right) under `name`, cut into lines at `cuts`.
fn header_lines(name: &'static str, hops: &[String], cuts: &[bool]) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut line = String::new();
    for (i, hop) in hops.iter().enumerate() {
        if !line.is_empty() {
            if cuts.get(i).copied().unwrap_or(false) {
                h.append(name, HeaderValue::from_str(&line).unwrap());
                line.clear();
            } else {
                line.push_str(if i % 2 == 0 { ", " } else { "," });
            }
        }
        line.push_str(hop);
    }
    if !line.is_empty() {
        h.append(name, HeaderValue::from_str(&line).unwrap());
    }
    h
}

proptest! {
    #![proptest_config(config())]

    /// Whatever a client writes into the header before its request reaches our proxies, the client
    /// is the hop our nearest untrusted-adjacent proxy wrote: never a forged one.
    #[test]
    fn forged_hops_never_name_the_client(
        forged in forged(),
        client in outside(),
        proxies in prop::collection::vec(inside(), 0..3),
        styles in prop::collection::vec(any::<u8>(), 8),
        cuts in prop::collection::vec(any::<bool>(), 8),
        which in 0..3u8,
        peer in inside(),
    ) {
        let (header, name) = match which {
            0 => (ClientIpHeader::XForwardedFor, "x-forwarded-for"),
            1 => (ClientIpHeader::Forwarded, "forwarded"),
            _ => (ClientIpHeader::XRealIp, "x-real-ip"),
        };
        let forwarded = header == ClientIpHeader::Forwarded;
        let mut hops: Vec<String> = forged.into_iter().filter(|f| !f.trim().is_empty()).collect();
        hops.push(hop(client, styles[0], forwarded));
        for (i, p) in proxies.iter().enumerate() {
            hops.push(hop(*p, styles[i + 1], forwarded));
        }
        let headers = header_lines(name, &hops, &cuts);
        let got = client_ip(peer, &headers, &trusted(), header);
        prop_assert_eq!(got, Ok(client.to_canonical()), "{:?}", headers);
    }

    /// From a peer that is not trusted, no header moves the client anywhere.
    #[test]
    fn untrusted_peers_are_the_client(value in "[ -~]{0,64}", peer in outside(), which in 0..3u8) {
        let header = [ClientIpHeader::XForwardedFor, ClientIpHeader::Forwarded, ClientIpHeader::XRealIp][which as usize];
        let mut h = HeaderMap::new();
        for name in ["x-forwarded-for", "forwarded", "x-real-ip"] {
            h.append(name, HeaderValue::from_str(&value).unwrap());
        }
        prop_assert_eq!(client_ip(peer, &h, &trusted(), header), Ok(peer.to_canonical()));
    }

    /// Any bytes a header value may hold: an answer, never a panic; a named client is never one
    /// of our own proxies unless every hop was one.
    #[test]
    fn any_header_bytes_from_a_trusted_peer(values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 0..3), which in 0..3u8) {
        let header = [ClientIpHeader::XForwardedFor, ClientIpHeader::Forwarded, ClientIpHeader::XRealIp][which as usize];
        let mut h = HeaderMap::new();
        for v in &values {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                h.append(["x-forwarded-for", "forwarded", "x-real-ip"][which as usize], v);
            }
        }
        let _ = client_ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), &h, &trusted(), header);
    }
}

// ----- PROXY protocol -----

fn v1(addr: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let proto = if addr.is_ipv4() { "TCP4" } else { "TCP6" };
    format!("PROXY {proto} {} {} {} {}\r\n", addr.ip(), dst.ip(), addr.port(), dst.port()).into_bytes()
}

fn v2(addr: SocketAddr, dst: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x21);
    let mut body = Vec::new();
    match (addr.ip(), dst.ip()) {
        (IpAddr::V4(a), IpAddr::V4(d)) => {
            out.push(0x11);
            body.extend(a.octets());
            body.extend(d.octets());
        }
        (a, d) => {
            out.push(0x21);
            let six = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            body.extend(six(a).octets());
            body.extend(six(d).octets());
        }
    }
    body.extend(addr.port().to_be_bytes());
    body.extend(dst.port().to_be_bytes());
    body.extend(tlvs);
    out.extend((body.len() as u16).to_be_bytes());
    out.extend(body);
    out
}

fn sockaddr() -> impl Strategy<Value = SocketAddr> {
    (prop_oneof![outside(), inside()], any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

/// A header, and the client it names (v2 with an IPv4 client and an IPv6 destination carries
/// both as IPv6, the client mapped).
fn proxy_header() -> impl Strategy<Value = (Vec<u8>, SocketAddr)> {
    (sockaddr(), sockaddr(), any::<bool>(), prop::collection::vec(any::<u8>(), 0..40)).prop_map(|(a, d, text, tlvs)| {
        if text {
            let d = if a.is_ipv4() == d.is_ipv4() { d } else { a };
            (v1(a, d), a)
        } else {
            let named = match (a.ip(), d.ip()) {
                (IpAddr::V4(_), IpAddr::V4(_)) => a,
                (IpAddr::V4(v4), _) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
                _ => a,
            };
            (v2(a, d, &tlvs), named)
        }
    })
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes: an answer, never a panic; and the answers of a growing prefix agree with the
    /// whole: "need more" until the header is whole, then the same header and length.
    #[test]
    fn proxy_headers_parse_the_same_whatever_arrived_so_far(
        prefix in prop_oneof![Just(b"PROXY ".to_vec()), Just(b"\r\n\r\n\0\r\nQUIT\n".to_vec()), Just(Vec::new())],
        tail in prop::collection::vec(any::<u8>(), 0..120),
    ) {
        let bytes = [prefix, tail].concat();
        let whole = proxy_protocol::parse(&bytes);
        if let Parsed::Done(_, len) = &whole {
            prop_assert!(*len <= bytes.len());
            for cut in 0..*len {
                prop_assert_eq!(proxy_protocol::parse(&bytes[..cut]), Parsed::NeedMore, "cut at {}", cut);
            }
            prop_assert_eq!(proxy_protocol::parse(&bytes[..*len]), whole);
        }
    }

    /// A header a balancer writes names its client, and the length is the header's own.
    #[test]
    fn proxy_headers_name_their_client((header, client) in proxy_header(), after in prop::collection::vec(any::<u8>(), 0..32)) {
        let bytes = [header.clone(), after].concat();
        prop_assert_eq!(proxy_protocol::parse(&bytes), Parsed::Done(Header::Client(client), header.len()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases().div_ceil(4), ..config() })]

    /// Read off a real socket, the header arriving in pieces of any size with the HTTP bytes
    /// glued behind it: the client it names, and every byte after it left for HTTP.
    #[test]
    fn proxy_headers_read_off_a_socket_leave_the_request_alone(
        (header, client) in proxy_header(),
        cuts in prop::collection::vec(1..20usize, 1..8),
    ) {
        let request = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n".to_vec();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (got, rest) = rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let bytes = [header.clone(), request.clone()].concat();
            let writer = tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.set_nodelay(true).unwrap();
                let mut at = 0;
                for (i, cut) in cuts.iter().cycle().enumerate() {
                    if at == bytes.len() { break; }
                    let end = (at + cut).min(bytes.len());
                    s.write_all(&bytes[at..end]).await.unwrap();
                    at = end;
                    if i % 2 == 0 { tokio::task::yield_now().await; tokio::time::sleep(Duration::from_millis(1)).await; }
                }
                s.shutdown().await.unwrap();
            });
            let (mut s, _) = listener.accept().await.unwrap();
            let got = proxy_protocol::read(&mut s, Duration::from_secs(5)).await.map_err(|e| e.to_string());
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            writer.await.unwrap();
            (got, rest)
        });
        prop_assert_eq!(got, Ok(Header::Client(client)));
        prop_assert_eq!(rest, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n".to_vec());
    }
}

// ----- sshd log lines -----

fn now() -> OffsetDateTime {
    OffsetDateTime::parse("2026-11-27T12:00:00Z", &time::format_description::well_known::Rfc3339).unwrap()
}

/// sshd's messages that carry the user name as the client sent it, `{u}` where it stands, with
/// the address 198.51.100.9 sshd blames.
const USER_MESSAGES: &[&str] = &[
    "Invalid user {u} from 198.51.100.9 port 4711",
    "Failed password for {u} from 198.51.100.9 port 4711 ssh2",
    "Failed password for invalid user {u} from 198.51.100.9 port 4711 ssh2",
    "Failed publickey for {u} from 198.51.100.9 port 4711 ssh2: ED25519 SHA256:abc",
    "Failed keyboard-interactive/pam for invalid user {u} from 198.51.100.9 port 4711 ssh2",
    "User {u} from 198.51.100.9 not allowed because not listed in AllowUsers",
    "PAM: Authentication failure for {u} from 198.51.100.9",
    "error: maximum authentication attempts exceeded for {u} from 198.51.100.9 port 4711 ssh2 [preauth]",
    "Disconnecting invalid user {u} 198.51.100.9 port 4711: Too many authentication failures [preauth]",
    "Disconnecting authenticating user {u} 198.51.100.9 port 4711: Too many authentication failures [preauth]",
    "Connection closed by invalid user {u} 198.51.100.9 port 4711 [preauth]",
    "Connection closed by authenticating user {u} 198.51.100.9 port 4711 [preauth]",
    "Connection reset by invalid user {u} 198.51.100.9 port 4711 [preauth]",
    "Disconnected from invalid user {u} 198.51.100.9 port 4711 [preauth]",
];

/// A user name as sshd logs it (printable; sshd escapes the rest), with the words a forger would
/// put in it.
fn user() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            "[!-~]{1,8}",
            Just(" ".to_owned()),
            Just(" from ".to_owned()),
            Just(" port ".to_owned()),
            Just(" ssh2".to_owned()),
            Just(": ".to_owned()),
            Just(" [preauth]".to_owned()),
            Just("invalid user ".to_owned()),
            Just("1.2.3.4".to_owned()),
            Just("[::1]:22".to_owned()),
            Just("22".to_owned()),
            Just(" not allowed because ".to_owned()),
            Just(": Too many authentication failures".to_owned()),
        ],
        1..8,
    )
    .prop_map(|parts| parts.concat())
    // sshd refuses an empty user name before it logs one.
    .prop_filter("a user name", |u| !u.is_empty())
}

fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Nov 27 10:01:02 host sshd[1]: ".to_owned()),
        Just("Nov  7 10:01:02 host sshd-session[77]: ".to_owned()),
        Just("2026-11-27T10:01:02.123456+00:00 host sshd[1]: ".to_owned()),
        Just("<38>1 2026-11-27T10:01:02Z host sshd 1 - - ".to_owned()),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the user name says, the address blamed is the one sshd wrote after it: the
    /// attacker can neither point the ban at someone else nor dodge it by naming a user.
    #[test]
    fn a_user_name_never_moves_the_blame(header in header(), template in 0..USER_MESSAGES.len(), user in user()) {
        let line = format!("{header}{}", USER_MESSAGES[template].replace("{u}", &user));
        let blamed = Filter::new(Mode::Aggressive, now()).failure(&line).map(|f| f.ip.to_string());
        prop_assert_eq!(blamed.as_deref(), Some("198.51.100.9"), "{}", line);
        let message = line.strip_prefix(&header).unwrap();
        let blamed = Filter::new(Mode::Aggressive, now()).message_failure(message, None).map(|f| f.ip.to_string());
        prop_assert_eq!(blamed.as_deref(), Some("198.51.100.9"), "journal: {}", message);
    }

    /// Any line, in any mode: an answer, never a panic.
    #[test]
    fn any_log_line(header in header(), message in ".{0,120}", raw in ".{0,160}") {
        for mode in [Mode::Normal, Mode::Ddos, Mode::Extra, Mode::Aggressive] {
            let f = Filter::new(mode, now());
            let _ = f.failure(&format!("{header}{message}"));
            let _ = f.failure(&raw);
            let _ = f.message_failure(&message, None);
            let _ = f.is_sshd(&raw);
        }
    }
}

// ----- config files -----

/// The example config the package installs: every section, every kind of value.
const EXAMPLE: &str = include_str!("../../../packaging/nodegate.toml");

/// One change to the example, as a hand (or a broken script) would make it.
#[derive(Debug, Clone)]
enum Edit {
    /// A line's value replaced by something else.
    Value(usize, String),
    /// A line dropped.
    Drop(usize),
    /// A line written twice.
    Twice(usize),
    /// Text inserted at a byte offset (rounded down to a character boundary).
    Insert(usize, String),
    /// The file cut short.
    Cut(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let values = prop_oneof![
        "[ -~]{0,16}",
        Just("\"\"".to_owned()),
        Just("-1".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("\"99999999999999999999s\"".to_owned()),
        Just("\"0/s\"".to_owned()),
        Just("\"4000000000/s\"".to_owned()),
        Just("[\"\"]".to_owned()),
        Just("{}".to_owned()),
        Just("\"\u{0}\"".to_owned()),
        Just("\"256.0.0.1/33\"".to_owned()),
        Just("\"http://[::1\"".to_owned()),
        Just("true".to_owned()),
    ];
    prop_oneof![
        (0..200usize, values).prop_map(|(l, v)| Edit::Value(l, v)),
        (0..200usize).prop_map(Edit::Drop),
        (0..200usize).prop_map(Edit::Twice),
        (0..20_000usize, "[ -~\n\u{e9}\u{1F600}]{1,12}").prop_map(|(at, s)| Edit::Insert(at, s)),
        (0..20_000usize).prop_map(Edit::Cut),
    ]
}

/// `at` taken into `text` (modulo its length, plus one for the end) and rounded down to a
/// character boundary.
fn boundary(text: &str, at: usize) -> usize {
    let mut at = at % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(src: &str, edits: &[Edit]) -> String {
    let mut text = src.to_owned();
    for e in edits {
        let lines: Vec<&str> = text.lines().collect();
        let n = lines.len().max(1);
        text = match e {
            Edit::Value(l, v) => lines
                .iter()
                .enumerate()
                .map(|(i, line)| match line.split_once('=') {
                    Some((k, _)) if i == l % n => format!("{k}= {v}"),
                    _ => line.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Edit::Drop(l) => {
                lines.iter().enumerate().filter(|(i, _)| *i != l % n).map(|(_, l)| *l).collect::<Vec<_>>().join("\n")
            }
            Edit::Twice(l) => lines
                .iter()
                .enumerate()
                .flat_map(|(i, line)| if i == l % n { vec![*line, *line] } else { vec![*line] })
                .collect::<Vec<_>>()
                .join("\n"),
            Edit::Insert(at, s) => {
                let at = boundary(&text, *at);
                format!("{}{s}{}", &text[..at], &text[at..])
            }
            Edit::Cut(at) => text[..boundary(&text, *at)].to_owned(),
        };
    }
    text
}

#[test]
fn the_example_config_is_valid_to_start_from() {
    Config::parse(EXAMPLE, "nodegate.toml").unwrap();
}

proptest! {
    #![proptest_config(config())]

    /// A file edited badly is refused with its name, a line inside it and a message, or loads;
    /// never a panic.
    #[test]
    fn a_config_edited_badly_is_refused_with_a_place(edits in prop::collection::vec(edit(), 1..4)) {
        let text = apply(EXAMPLE, &edits);
        if let Err(e) = Config::parse(&text, "nodegate.toml") {
            let lines = text.lines().count().max(1);
            prop_assert!(e.line >= 1 && e.line <= lines + 1, "line {} of {}: {}", e.line, lines, e);
            prop_assert!(!e.message.is_empty());
            prop_assert!(e.to_string().starts_with(&format!("nodegate.toml:{}:", e.line)), "{}", e);
        }
    }

    /// Any text at all: an answer, never a panic.
    #[test]
    fn any_config_text(text in "(\\[|\\]|=|\"|'|\n|#|[a-z_.]{1,8}|[0-9]{1,3}| ){0,60}") {
        let _ = Config::parse(&text, "x.toml");
    }
}

// ----- rates, durations, sizes -----

proptest! {
    #![proptest_config(config())]

    /// Each unit means what it says, and what is too large is refused, not wrapped.
    #[test]
    fn durations_and_sizes_mean_their_units(n in any::<u64>(), unit in 0..6usize, pad in " {0,2}") {
        let (name, ms) = [("ms", 1u64), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000), ("w", 604_800_000)][unit];
        let got = parse_duration(&format!("{pad}{n}{name}{pad}"));
        match n.checked_mul(ms) {
            Some(total) => prop_assert_eq!(got, Ok(Duration::from_millis(total))),
            None => prop_assert!(got.is_err()),
        }
        let (name, mult) = [("B", 1u64), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("KB", 1000), ("MB", 1_000_000)][unit];
        let got = parse_size(&format!("{n}{name}"));
        match n.checked_mul(mult) {
            Some(total) => prop_assert_eq!(got, Ok(total)),
            None => prop_assert!(got.is_err()),
        }
        let got = parse_byte_rate(&format!("{n}{name}/s"));
        prop_assert_eq!(got.is_ok(), n.checked_mul(mult).is_some());
    }

    /// A rate is an interval between requests above zero (a limiter dividing by it must never
    /// see 0), or an error.
    #[test]
    fn rates_are_intervals_above_zero(n in prop_oneof![0..100u64, any::<u64>(), 999_999_000..1_000_001_000u64], per in 0..3usize) {
        let (name, secs) = [("s", 1u64), ("min", 60), ("h", 3600)][per];
        match parse_rate(&format!("{n}/{name}")) {
            Ok(interval) => {
                prop_assert!(interval > Duration::ZERO, "{}/{} -> {:?}", n, name, interval);
                prop_assert!(n > 0);
                let exact = Duration::from_secs(secs).as_nanos() / u128::from(n);
                prop_assert_eq!(interval.as_nanos(), exact);
            }
            Err(e) => prop_assert!(e.contains(&format!("{n}/{name}")), "{}", e),
        }
    }

    /// Any text: an answer, never a panic.
    #[test]
    fn any_unit_text(s in ".{0,24}") {
        let _ = (parse_duration(&s), parse_size(&s), parse_rate(&s), parse_byte_rate(&s));
    }
}

// ----- request targets, end to end -----

/// A request target that means an admin route (`/api/v1/peers`, `/api/plugins/spammer/start`),
/// written every way RFC 3986 lets one write it: letters percent-encoded in either case, `.` and
/// `x/..` segments (dots encoded or not), doubled slashes, a query or a trailing slash.
fn admin_target() -> impl Strategy<Value = String> {
    let segments = prop_oneof![Just(vec!["api", "v1", "peers"]), Just(vec!["api", "plugins", "spammer", "start"])];
    let separator = prop_oneof![
        4 => Just("/"),
        1 => Just("//"),
        1 => Just("/./"),
        1 => Just("/%2e/"),
        1 => Just("/x/../"),
        1 => Just("/x/%2e%2e/"),
        1 => Just("/x/.%2E/"),
        1 => Just("/info/%2e./"),
    ];
    let suffix = prop_oneof![
        3 => Just(String::new()),
        1 => Just("/".to_owned()),
        1 => "[a-z0-9=&/.]{0,10}".prop_map(|q| format!("?{q}")),
        1 => Just("?/api/v1/info".to_owned()),
    ];
    (segments, prop::collection::vec(separator, 5), prop::collection::vec(0..3u8, 32), suffix).prop_map(
        |(segments, seps, encodings, suffix)| {
            let mut out = String::new();
            let mut e = encodings.iter().cycle();
            for (seg, sep) in segments.iter().zip(seps) {
                out.push_str(sep);
                for c in seg.chars() {
                    match e.next().unwrap() {
                        0 => out.push(c),
                        1 => out.push_str(&format!("%{:02x}", c as u8)),
                        _ => out.push_str(&format!("%{:02X}", c as u8)),
                    }
                }
            }
            out + &suffix
        },
    )
}

/// Generated spellings of an admin route, each sent as its own request to a real gateway in front
/// of a real node: each is refused (400, 401 or 404) and none reaches the node.
#[test]
fn no_spelling_of_an_admin_route_reaches_the_node() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (n, gw) = rt.block_on(async {
        let n = common::node().await;
        let gw = common::gateway(
            &[n.url()],
            "\n[health]\nactive = false\n\n[rate_limit]\nper_client = \"1000000/s\"\nburst = 1000000\n",
        )
        .await;
        (n, gw)
    });
    let g = common::addr(&gw);
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(&admin_target(), |target| {
            let req = format!("GET {target} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n");
            let out = rt.block_on(common::raw(g, req.as_bytes(), Duration::from_secs(5)));
            let status = out.get(9..12).unwrap_or("(no answer)");
            prop_assert!(["400", "401", "404"].contains(&status), "{} answered {}", target, status);
            let reached = n.state().requests.load(std::sync::atomic::Ordering::Relaxed);
            prop_assert_eq!(reached, 0, "{} reached the node", target);
            Ok(())
        })
        .unwrap();
    drop(gw);
}

// ----- credentials -----

const RIGHT_KEY: &str = "ng_the-right-key";
const JWT_SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

fn credentials() -> (Vec<ApiKey>, Vec<JwtKey>) {
    let hash = auth::parse_hash(&auth::hash(RIGHT_KEY)).expect("a hash");
    let api = ApiKey { name: "k".into(), hash, roles: vec![Role::Key, Role::Admin], limit: None };
    let jwt = JwtKey::new(
        "j".into(),
        jsonwebtoken::Algorithm::HS256,
        jsonwebtoken::DecodingKey::from_secret(JWT_SECRET),
        JWT_SECRET,
        None,
        None,
    );
    (vec![api], vec![jwt])
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What a client without a credential may present: junk, a near miss of the key, tokens whose
/// header names another algorithm (`none`, EdDSA, a case change) or whose signature is made up or
/// made with another secret, Basic with any user and password.
fn forged_credential() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    let claims = r#"{"exp":4102444800,"roles":["key","admin"],"sub":"mallory"}"#;
    prop_oneof![
        "[!-~]{0,80}".prop_map(|s| ("authorization", format!("Bearer {s}").into_bytes())),
        "[!-~]{0,40}".prop_map(|s| ("x-api-key", s.into_bytes())),
        (0..RIGHT_KEY.len(), any::<u8>()).prop_map(|(at, b)| {
            let mut k = RIGHT_KEY.as_bytes().to_vec();
            k[at] = if k[at] == b { b.wrapping_add(1) } else { b };
            ("x-api-key", k)
        }),
        Just(("authorization", format!("Basic {}", b64(RIGHT_KEY.as_bytes())).into_bytes())),
        (
            prop_oneof![Just("none"), Just("None"), Just("EdDSA"), Just("hs256"), Just("RS256"), Just("HS512")],
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(move |(alg, sig)| {
                let head = b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
                ("authorization", format!("Bearer {head}.{}.{}", b64(claims.as_bytes()), b64(&sig)).into_bytes())
            }),
        prop::collection::vec(any::<u8>(), 32).prop_map(move |secret| {
            let claims: serde_json::Value = serde_json::from_str(claims).unwrap();
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(&secret),
            )
            .unwrap();
            ("authorization", format!("Bearer {token}").into_bytes())
        }),
        ("[!-~]{0,12}", "[!-~]{0,24}")
            .prop_map(|(u, p)| ("authorization", format!("Basic {}", b64(format!("{u}:{p}").as_bytes())).into_bytes())),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| ("authorization", b)),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// No forged credential opens a key or admin route; never a panic on any bytes.
    #[test]
    fn forged_credentials_open_nothing(forged in prop::collection::vec(forged_credential(), 1..3)) {
        let (keys, jwts) = credentials();
        let mut headers = HeaderMap::new();
        for (name, value) in &forged {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                headers.append(*name, v);
            }
        }
        for needed in [Access::Key, Access::Admin] {
            let verdict = auth::authorize(&keys, &jwts, &headers, needed);
            prop_assert!(!matches!(verdict, Verdict::Allowed { .. }), "{:?} opened {:?}", headers, needed);
        }
    }
}

#[test]
fn the_right_credentials_open_their_routes() {
    // The control for the property above: the same keys do open with the real credential.
    let (keys, jwts) = credentials();
    let mut h = HeaderMap::new();
    h.insert("x-api-key", HeaderValue::from_static(RIGHT_KEY));
    assert!(matches!(auth::authorize(&keys, &jwts, &h, Access::Admin), Verdict::Allowed { .. }));
    let claims = serde_json::json!({"exp": 4102444800u64, "roles": ["key"]});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET),
    )
    .unwrap();
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    assert!(matches!(auth::authorize(&keys, &jwts, &h, Access::Key), Verdict::Allowed { .. }));
}

// ----- log files followed -----

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases().div_ceil(4), ..config() })]

    /// A log file appended in pieces cut anywhere (mid-line, mid-character), read between the
    /// pieces: the follower hands over exactly the lines written, each whole, in order.
    #[test]
    fn a_log_appended_in_any_pieces_gives_its_lines_whole(
        lines in prop::collection::vec(prop_oneof![
            "[ -~\u{e9}\u{1F600}]{0,60}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..40),
        ], 0..12),
        cuts in prop::collection::vec(1..50usize, 1..10),
    ) {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("nodegate-fuzz-follow-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("auth.log");
        std::fs::write(&path, b"history\n").unwrap();
        let mut follower = nodegate::bans::follow::Follower::from_end(&path);
        let text: Vec<u8> = lines.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect();
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        let mut got = Vec::new();
        let mut at = 0;
        for cut in cuts.iter().cycle() {
            if at == text.len() {
                break;
            }
            let end = (at + cut).min(text.len());
            file.write_all(&text[at..end]).unwrap();
            at = end;
            got.extend(follower.poll().unwrap());
        }
        got.extend(follower.poll().unwrap());
        let want: Vec<String> = lines.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
        let _ = std::fs::remove_dir_all(&dir);
        prop_assert_eq!(got, want);
    }
}
