//! End-to-end HTTP/2 attacks, written frame by frame (no client library would send them): rapid
//! reset (CVE-2023-44487), CONTINUATION flood (CVE-2024-27316 and kin), oversized header lists,
//! and more concurrent streams than allowed. Each must end in a bounded amount of work for the
//! gateway and the node, and honest clients must still be served.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix, the prefix's other bits set to `flags`.
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// A literal header field without indexing, new name (RFC 7541 6.2.2).
fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    hpack_str(out, name);
    hpack_str(out, value);
}

/// `GET path` with the static table's `:method GET` and `:scheme http`.
fn request_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    hpack_int(&mut b, 0, 4, 1); // :authority, literal without indexing
    hpack_str(&mut b, b"gw");
    hpack_int(&mut b, 0, 4, 4); // :path
    hpack_str(&mut b, path.as_bytes());
    b
}

fn stream_id(i: u32) -> u32 {
    2 * i + 1
}

/// The frames the gateway sends until it closes the connection or `wait` passes in silence.
async fn frames_until_close(s: &mut TcpStream, wait: Duration) -> (Vec<(u8, u8, u32, Vec<u8>)>, bool) {
    let mut buf = Vec::new();
    let mut closed = false;
    let mut chunk = [0u8; 65536];
    loop {
        match tokio::time::timeout(wait, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() >= at + 9 {
        let len = (usize::from(buf[at]) << 16) | (usize::from(buf[at + 1]) << 8) | usize::from(buf[at + 2]);
        if buf.len() < at + 9 + len {
            break;
        }
        let stream = u32::from_be_bytes(buf[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
        frames.push((buf[at + 3], buf[at + 4], stream, buf[at + 9..at + 9 + len].to_vec()));
        at += 9 + len;
    }
    (frames, closed)
}

fn goaway_code(frames: &[(u8, u8, u32, Vec<u8>)]) -> Option<u32> {
    frames.iter().find(|f| f.0 == GOAWAY).map(|f| u32::from_be_bytes(f.3[4..8].try_into().unwrap()))
}

async fn open(g: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(g).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    s
}

/// An honest HTTP/2 request on a fresh connection still works.
async fn honest_h2(g: SocketAddr) -> bool {
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://{g}/api/v1/info").parse().unwrap();
    matches!(tokio::time::timeout(Duration::from_secs(5), c.get(uri)).await, Ok(Ok(r)) if r.status() == 200)
}

#[tokio::test]
async fn rapid_reset_flood_is_cut_off_with_goaway_and_the_node_sees_little_of_it() {
    let n = node().await;
    let gw = gateway(&[n.url()], "").await;
    let g = addr(&gw);
    let mut s = open(g).await;
    let block = request_block("/api/v1/info");
    let mut flood = Vec::new();
    for i in 0..5000 {
        flood.extend(frame(HEADERS, END_STREAM | END_HEADERS, stream_id(i), &block));
        flood.extend(frame(RST_STREAM, 0, stream_id(i), &CANCEL.to_be_bytes()));
    }
    // The gateway may close before it has read everything: a failed write is part of the answer.
    let _ = s.write_all(&flood).await;
    let (frames, closed) = frames_until_close(&mut s, Duration::from_secs(5)).await;
    let code = goaway_code(&frames);
    eprintln!("rapid reset: goaway {code:?}, closed {closed}, node saw {}", n.state().requests.load(Relaxed));
    assert_eq!(code, Some(ENHANCE_YOUR_CALM));
    assert!(closed, "the connection stayed open");
    assert!(
        n.state().requests.load(Relaxed) < 500,
        "{} reset requests reached the node",
        n.state().requests.load(Relaxed)
    );
    assert!(honest_h2(g).await);
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off_before_it_grows() {
    let n = node().await;
    let gw = gateway(&[n.url()], "").await;
    let g = addr(&gw);
    let mut s = open(g).await;
    // A head that never ends: HEADERS without END_HEADERS, then 16 KiB CONTINUATIONs, 64 MiB in all.
    s.write_all(&frame(HEADERS, END_STREAM, 1, &request_block("/api/v1/info"))).await.unwrap();
    let mut piece = Vec::new();
    for i in 0..15 {
        hpack_literal(&mut piece, format!("x-flood-{i}").as_bytes(), &[b'a'; 1000]);
    }
    let cont = frame(CONTINUATION, 0, 1, &piece);
    let mut sent = 0usize;
    let writer = async {
        for _ in 0..4096 {
            if s.write_all(&cont).await.is_err() {
                break;
            }
            sent += cont.len();
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    let (frames, closed) = frames_until_close(&mut s, Duration::from_secs(5)).await;
    let code = goaway_code(&frames);
    eprintln!("continuation flood: goaway {code:?}, closed {closed}, {sent} bytes accepted");
    assert!(closed, "the connection stayed open");
    assert!(code.is_some(), "no GOAWAY: {frames:?}");
    // What the gateway took before it closed: its header cap plus socket buffers, not 64 MiB.
    assert!(sent < 16 << 20, "{sent} bytes of one header block were accepted");
    assert_eq!(n.state().requests.load(Relaxed), 0);
    assert!(honest_h2(g).await);
}

/// Request headers of `n` x 1 KB fields on stream 1, in 16 KiB frames, then an ordinary request on
/// stream 3; the frames the gateway answers with.
async fn big_head_then_small(g: SocketAddr, n: usize) -> (Vec<(u8, u8, u32, Vec<u8>)>, bool) {
    let mut s = open(g).await;
    let mut block = request_block("/api/v1/info");
    for i in 0..n {
        hpack_literal(&mut block, format!("x-big-{i}").as_bytes(), &[b'a'; 1000]);
    }
    let mut chunks = block.chunks(16384).peekable();
    let first = chunks.next().unwrap();
    let flags = if chunks.peek().is_none() { END_STREAM | END_HEADERS } else { END_STREAM };
    let mut out = frame(HEADERS, flags, 1, first);
    while let Some(c) = chunks.next() {
        out.extend(frame(CONTINUATION, if chunks.peek().is_none() { END_HEADERS } else { 0 }, 1, c));
    }
    out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 3, &request_block("/api/v1/info")));
    let _ = s.write_all(&out).await;
    frames_until_close(&mut s, Duration::from_millis(500)).await
}

#[tokio::test]
async fn header_lists_over_the_caps_are_refused_and_a_huge_one_ends_the_connection() {
    let n = node().await;
    let gw = gateway(&[n.url()], "max_header_size = \"8KiB\"").await;
    let g = addr(&gw);
    // HPACK of the first response's `:status: 431` (literal, Huffman-coded) and of `:status: 200`.
    let status_431 = [0x48, 0x83, 0x69, 0x90, 0xff];
    let answered = |frames: &[(u8, u8, u32, Vec<u8>)], stream: u32, head: &[u8]| {
        frames.iter().any(|f| f.0 == HEADERS && f.2 == stream && f.3.starts_with(head))
    };
    // 12 KB: over max_header_size, the gateway's own 431 with a JSON body; 18 KB: over the HTTP/2
    // layer's cap (twice that), its 431. Either way the next request on the connection is served.
    for fields in [12, 18] {
        let (frames, _) = big_head_then_small(g, fields).await;
        assert!(answered(&frames, 1, &status_431), "{fields} KB: no 431 on stream 1: {frames:?}");
        assert!(answered(&frames, 3, &[0x88]), "{fields} KB: the next request was not served: {frames:?}");
    }
    assert_eq!(n.state().requests.load(Relaxed), 2);
    // 40 KB: more than the HTTP/2 layer buffers for one head; the connection ends, nothing is sent on.
    let (frames, closed) = big_head_then_small(g, 40).await;
    assert!(goaway_code(&frames).is_some() && closed, "{frames:?}");
    assert_eq!(n.state().requests.load(Relaxed), 2);
}

#[tokio::test]
async fn streams_beyond_the_concurrency_limit_are_refused() {
    let n = node().await;
    let gw = gateway(&[n.url()], "max_in_flight_per_client = 1000").await;
    let g = addr(&gw);
    let mut s = open(g).await;
    let block = request_block("/debug/sleep?ms=1500");
    let mut out = Vec::new();
    for i in 0..200 {
        out.extend(frame(HEADERS, END_STREAM | END_HEADERS, stream_id(i), &block));
    }
    s.write_all(&out).await.unwrap();
    let (frames, _) = frames_until_close(&mut s, Duration::from_millis(700)).await;
    let refused = frames.iter().filter(|f| f.0 == RST_STREAM && f.3 == REFUSED_STREAM.to_be_bytes()).count();
    eprintln!("concurrency: {refused} refused");
    assert_eq!(refused, 200 - 128, "{:?}", frames.iter().map(|f| (f.0, f.2)).collect::<Vec<_>>());
}

#[tokio::test]
async fn streams_a_client_never_opens_its_window_for_are_reset_and_release_the_node() {
    let n = node().await;
    let extra = "send_timeout = \"500ms\"\n\n[health]\nactive = false\n\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let gw = gateway(&[n.url()], extra).await;
    let g = addr(&gw);
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: no stream may receive a byte of DATA until WINDOW_UPDATE,
    // which never comes. The socket itself stays readable, so nothing blocks at the TCP level.
    let mut s = TcpStream::connect(g).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    for i in 0..100 {
        hello.extend(frame(HEADERS, END_STREAM | END_HEADERS, stream_id(i), &request_block("/debug/bytes?n=1000000")));
    }
    s.write_all(&hello).await.unwrap();
    let admin = gw.admin_addr().unwrap();
    let in_flight = async || get(admin, "/status").await.json()["nodes"][0]["in_flight"].as_u64().unwrap();
    // The requests reach the node and hold it...
    let start = tokio::time::Instant::now();
    while in_flight().await < 100 && start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...until the send timeout resets their streams.
    let (frames, _) = frames_until_close(&mut s, Duration::from_millis(1500)).await;
    let resets = frames.iter().filter(|f| f.0 == RST_STREAM).count();
    assert_eq!(resets, 100, "streams reset");
    assert_eq!(in_flight().await, 0, "node requests still held by shut streams");
    assert!(honest_h2(g).await);
}
