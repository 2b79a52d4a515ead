//! End-to-end: what nodes answer, byte by byte, through the gateway's own HTTP/1.1 client. Each
//! node here is a raw socket playing a script, so that answers no well-behaved server sends
//! (extra bytes after a body, conflicting lengths, broken chunks, closing an idle connection
//! without warning, answering before the upload is over) can be sent on purpose.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NO_PROBES: &str = "\n[health]\nactive = false";
/// A public POST route, for uploads.
const UPLOAD: &str = "\n[[route]]\npath = \"/upload\"\naccess = \"public\"\nmethods = [\"POST\"]\n";
const DEFAULT_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\ndefault";

/// What a scripted node does after a request's head (and body, by its Content-Length).
#[derive(Clone)]
enum Step {
    /// Writes these bytes.
    Answer(&'static [u8]),
    /// Writes these bytes, then closes the connection after the pause.
    AnswerThenClose(&'static [u8], Duration),
    /// Writes these bytes as soon as the head is in, without reading the body, then reads and
    /// discards whatever comes.
    AnswerEarly(&'static [u8]),
}

/// What a scripted node saw.
#[derive(Default)]
struct Seen {
    connections: usize,
    /// Each request's head and body, in order.
    requests: Vec<String>,
}

/// A node that plays `scripts[i]` on its i-th connection, one step per request, and answers
/// `DEFAULT_ANSWER` to every request after its script (and on connections past the scripts).
async fn scripted(scripts: Vec<Vec<Step>>) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    tokio::spawn(async move {
        let mut scripts = scripts.into_iter();
        loop {
            let Ok((s, _)) = listener.accept().await else { return };
            shared.lock().unwrap().connections += 1;
            let script = scripts.next().unwrap_or_default();
            tokio::spawn(play(s, script, shared.clone()));
        }
    });
    (url, seen)
}

async fn play(mut s: TcpStream, script: Vec<Step>, seen: Arc<Mutex<Seen>>) {
    let mut steps = script.into_iter();
    let mut buf = Vec::new();
    loop {
        // The head.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let step = steps.next().unwrap_or(Step::Answer(DEFAULT_ANSWER));
        if let Step::AnswerEarly(bytes) = step {
            seen.lock().unwrap().requests.push(head);
            let _ = s.write_all(bytes).await;
            let mut sink = [0u8; 65536];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        seen.lock().unwrap().requests.push(head + &String::from_utf8_lossy(&body));
        match step {
            Step::Answer(bytes) => {
                if s.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Step::AnswerThenClose(bytes, pause) => {
                let _ = s.write_all(bytes).await;
                tokio::time::sleep(pause).await;
                return;
            }
            Step::AnswerEarly(_) => unreachable!(),
        }
    }
}

#[tokio::test]
async fn bytes_a_node_sends_past_its_answer_are_never_served_as_the_next_answer() {
    // The classic response-splitting shape: a second answer glued behind the first one's body.
    let (url, seen) = scripted(vec![vec![Step::Answer(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged",
    )]])
    .await;
    let gw = gateway(&[url], NO_PROBES).await;
    let first = get(addr(&gw), "/api/v1/info").await;
    assert_eq!((first.status.as_u16(), &first.body[..]), (200, &b"hello"[..]));
    let second = get(addr(&gw), "/api/v1/info").await;
    assert_eq!(&second.body[..], b"default", "the glued bytes were served as an answer");
    assert_eq!(seen.lock().unwrap().connections, 2, "the connection with stray bytes was used again");
}

#[tokio::test]
async fn a_body_a_node_sends_with_its_answer_to_head_is_never_served_as_the_next_answer() {
    // An answer to HEAD has no body whatever its Content-Length says; bytes after its head are
    // the node's mistake (or an attempt), and must not become the next request's answer.
    let (url, seen) = scripted(vec![vec![Step::Answer(
        b"HTTP/1.1 200 OK\r\ncontent-length: 43\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged",
    )]])
    .await;
    let gw = gateway(&[url], NO_PROBES).await;
    let c = client();
    let r = send(&c, http::Method::HEAD, format!("http://{}/api/v1/info", addr(&gw)), &[], "").await;
    assert_eq!((r.status.as_u16(), r.body.len()), (200, 0));
    assert_eq!(get(addr(&gw), "/api/v1/info").await.body, "default", "the bytes after a HEAD answer were served");
    assert_eq!(seen.lock().unwrap().connections, 2);
}

#[tokio::test]
async fn answers_with_ambiguous_framing_are_502_and_their_connection_is_dropped() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 0x5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\ncontent-length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nx-bad : a\r\ncontent-length: 5\r\n\r\nhello",
        b"HTTP/1.1 2000 OK\r\ncontent-length: 5\r\n\r\nhello",
    ] {
        let (url, seen) = scripted(vec![vec![Step::Answer(answer)]]).await;
        let gw = gateway(&[url], NO_PROBES).await;
        let r = get(addr(&gw), "/api/v1/info").await;
        let shown = String::from_utf8_lossy(answer);
        r.assert_gateway_error(502);
        assert_eq!(get(addr(&gw), "/api/v1/info").await.body, "default", "{shown}");
        assert_eq!(seen.lock().unwrap().connections, 2, "{shown}");
    }
}

#[tokio::test]
async fn a_chunked_answer_after_an_interim_100_passes_whole_and_its_connection_is_reused() {
    let (url, seen) = scripted(vec![vec![Step::Answer(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
    )]])
    .await;
    let gw = gateway(&[url], NO_PROBES).await;
    let r = get(addr(&gw), "/api/v1/info").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"hello world"[..]));
    assert_eq!(get(addr(&gw), "/api/v1/info").await.body, "default");
    assert_eq!(seen.lock().unwrap().connections, 1, "a cleanly ended chunked answer's connection is reused");
}

#[tokio::test]
async fn a_content_length_beside_transfer_encoding_never_reaches_the_client() {
    let (url, seen) = scripted(vec![vec![Step::Answer(
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )]])
    .await;
    let gw = gateway(&[url], NO_PROBES).await;
    let r = get(addr(&gw), "/api/v1/info").await;
    assert_eq!(&r.body[..], b"hello");
    assert_ne!(r.headers.get("content-length").map(|v| v.as_bytes()), Some(&b"3"[..]));
    // RFC 9112 6.1: such a connection is closed after the answer.
    assert_eq!(get(addr(&gw), "/api/v1/info").await.body, "default");
    assert_eq!(seen.lock().unwrap().connections, 2);
}

#[tokio::test]
async fn an_answer_without_length_runs_to_the_close_and_passes_whole() {
    // RFC 9112 6.3 rule 8: no Content-Length, no Transfer-Encoding: the body ends with the
    // connection (which then cannot carry another request).
    let (url, seen) = scripted(vec![vec![Step::AnswerThenClose(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nthe body runs until the node closes",
        Duration::from_millis(100),
    )]])
    .await;
    let gw = gateway(&[url], NO_PROBES).await;
    let r = get(addr(&gw), "/api/v1/info").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"the body runs until the node closes"[..]));
    assert_eq!(get(addr(&gw), "/api/v1/info").await.body, "default");
    assert_eq!(seen.lock().unwrap().connections, 2);
}

#[tokio::test]
async fn a_broken_chunk_cuts_the_answer_off_and_the_connection_is_not_reused() {
    let (url, seen) = scripted(vec![vec![Step::Answer(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
    )]])
    .await;
    let gw = gateway(&[url], NO_PROBES).await;
    let out = raw(addr(&gw), b"GET /api/v1/info HTTP/1.1\r\nhost: gw\r\n\r\n", Duration::from_secs(5)).await;
    // The client never sees a whole answer: the connection ends before the last chunk (hyper
    // drops what it had not flushed yet, so the head may not have gone out either).
    assert!(!out.contains("\r\n0\r\n\r\n") && !out.contains("XX"), "{out}");
    assert_eq!(get(addr(&gw), "/api/v1/info").await.body, "default");
    assert_eq!(seen.lock().unwrap().connections, 2);
}

#[tokio::test]
async fn an_idle_connection_the_node_closed_is_passed_over_and_a_post_goes_once() {
    // The node closes its side 50 ms after each answer, without saying so (no Connection: close).
    let close = |b| Step::AnswerThenClose(b, Duration::from_millis(50));
    let (url, seen) = scripted(vec![vec![close(DEFAULT_ANSWER)], vec![close(DEFAULT_ANSWER)]]).await;
    let gw = gateway(&[url], &format!("{NO_PROBES}{UPLOAD}")).await;
    assert_eq!(get(addr(&gw), "/api/v1/info").await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = client();
    let body = "{\"payload\":1}";
    let r = send(&c, http::Method::POST, format!("http://{}/upload", addr(&gw)), &[], body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.connections, 2);
    let posts = seen.requests.iter().filter(|r| r.starts_with("POST")).count();
    assert_eq!(posts, 1, "the POST reached the node {posts} times");
    assert!(seen.requests[1].ends_with(body), "{:?}", seen.requests[1]);
}

#[tokio::test]
async fn a_node_answering_before_the_upload_is_over_is_heard() {
    let (url, _seen) = scripted(vec![vec![Step::AnswerEarly(
        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\nconnection: close\r\n\r\ntoo large",
    )]])
    .await;
    let gw = gateway(&[url], &format!("{NO_PROBES}{UPLOAD}")).await;
    // 512 KiB declared (past request_buffer, so streamed to the node), 128 KiB sent, then the
    // client waits: the node's early answer must come back rather than a timeout.
    let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 524288\r\n\r\n").await.unwrap();
    s.write_all(&vec![b'x'; 128 << 10]).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&out).contains("too large") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let out = String::from_utf8_lossy(&out);
    assert!(answered.is_ok() && out.starts_with("HTTP/1.1 413") && out.contains("too large"), "{out}");
}

#[tokio::test]
async fn bytes_a_node_sends_with_its_101_reach_the_websocket_client() {
    let (url, _seen) = scripted(vec![vec![Step::Answer(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nearly bytes",
    )]])
    .await;
    let gw = gateway(&[url], NO_PROBES).await;
    let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
    s.write_all(b"GET /mqtt HTTP/1.1\r\nhost: gw\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&out).contains("early bytes") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 101") && out.ends_with("\r\n\r\nearly bytes"), "{out}");
}

#[tokio::test]
async fn a_head_larger_than_the_cap_is_502() {
    let big: &'static [u8] = Box::leak(
        format!("HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n", "a".repeat(70 * 1024))
            .into_bytes()
            .into_boxed_slice(),
    );
    let (url, _seen) = scripted(vec![vec![Step::Answer(big)]]).await;
    let gw = gateway(&[url], NO_PROBES).await;
    get(addr(&gw), "/api/v1/info").await.assert_gateway_error(502);
}
