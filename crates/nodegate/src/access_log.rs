//! One line a request, written when the response's last byte has gone (or the client went away), so
//! the duration covers the whole exchange as in nginx's `$request_time`.
//!
//! The line is formatted here rather than through tracing: tracing's formatter cost about 16,000
//! instructions a line, a third of a whole proxied request (bench/callgrind, LOG=1). It keeps the
//! shape of tracing's text and JSON output.
//!
//! Lines are written by a thread of their own, never by a worker: a worker formats the line into a
//! recycled buffer and hands it over a bounded queue. A log reader too slow to keep up (a full pipe,
//! a stuck journald) fills the queue; then lines are dropped and counted, never waited for: traffic
//! does not stall behind its own log. The count is reported once a minute and on `/status`.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::conn::ConnState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
/// How log lines are written: `[log] format`.
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// What the access log says about one request; only built when `[log] access` is on.
pub struct AccessRecord {
    pub format: LogFormat,
    /// The client as identified (the peer, or the address a trusted proxy named).
    pub client: IpAddr,
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub node: Option<Arc<str>>,
    pub request_id: String,
    pub start: Instant,
}

/// Lives as long as a request: counts it in flight on its connection and logs it when dropped.
pub struct RequestGuard {
    conn: Arc<ConnState>,
    pub bytes_sent: u64,
    pub upstream_body_error: bool,
    pub record: Option<Box<AccessRecord>>,
    /// The client's in-flight slot, freed with the response.
    pub slot: Option<crate::pipeline::in_flight::InFlightSlot>,
    /// A gRPC server stream's place under `max_streams_per_client`, freed when it ends.
    pub stream_slot: Option<crate::pipeline::in_flight::InFlightSlot>,
}

impl RequestGuard {
    pub fn new(conn: Arc<ConnState>) -> Self {
        conn.request_started();
        RequestGuard { conn, bytes_sent: 0, upstream_body_error: false, record: None, slot: None, stream_slot: None }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn.request_finished();
        if let Some(r) = self.record.take() {
            write_line(&r, self.bytes_sent, self.upstream_body_error);
        }
    }
}

thread_local! {
    /// The timestamp up to the second, and the second it is for.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Lines waiting for the writer thread, at most.
const QUEUE: usize = 8192;

/// The writer thread's queue, the buffers it gives back, and what was dropped.
struct Sink {
    lines: SyncSender<String>,
    spare: Mutex<Vec<String>>,
    dropped: AtomicU64,
    /// Lines queued, and lines written: equal when the writer has caught up.
    queued: AtomicU64,
    written: AtomicU64,
}

static SINK: OnceLock<Sink> = OnceLock::new();

fn sink() -> &'static Sink {
    SINK.get_or_init(|| {
        let (lines, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let spawned = std::thread::Builder::new().name("access-log".into()).spawn(move || writer(rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log writer: lines will be dropped");
        }
        Sink {
            lines,
            spare: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }
    })
}

/// Access log lines dropped so far because the log's reader did not keep up.
pub fn dropped_lines() -> u64 {
    SINK.get().map_or(0, |s| s.dropped.load(Relaxed))
}

/// Waits (up to `limit`) until every queued line is written: for a clean exit.
pub fn flush(limit: Duration) {
    let Some(sink) = SINK.get() else { return };
    let deadline = std::time::Instant::now() + limit;
    while sink.written.load(Relaxed) < sink.queued.load(Relaxed) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Writes lines as they come, flushing when the queue is empty; says once a minute how many were
/// dropped since it last said so.
fn writer(rx: Receiver<String>) {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, std::io::stderr());
    let mut reported = 0;
    let mut last_report = std::time::Instant::now();
    loop {
        let line = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if let Some(mut line) = line {
            let _ = out.write_all(line.as_bytes());
            recycle(&mut line);
            let mut n = 1;
            while let Ok(mut more) = rx.try_recv() {
                let _ = out.write_all(more.as_bytes());
                recycle(&mut more);
                n += 1;
            }
            let _ = out.flush();
            if let Some(sink) = SINK.get() {
                sink.written.fetch_add(n, Relaxed);
            }
        }
        if last_report.elapsed() >= Duration::from_secs(60) {
            last_report = std::time::Instant::now();
            let dropped = dropped_lines();
            if dropped != reported {
                tracing::warn!(
                    dropped = dropped - reported,
                    total = dropped,
                    "access log lines dropped: the log's reader does not keep up"
                );
                reported = dropped;
            }
        }
    }
}

fn recycle(line: &mut String) {
    let Some(sink) = SINK.get() else { return };
    let mut spare = sink.spare.lock().unwrap_or_else(|e| e.into_inner());
    if spare.len() < 1024 {
        line.clear();
        spare.push(std::mem::take(line));
    }
}

fn write_line(r: &AccessRecord, bytes: u64, aborted: bool) {
    let sink = sink();
    let mut line = sink.spare.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
    if line.capacity() == 0 {
        line.reserve(512);
    }
    format_line(&mut line, r, bytes, aborted);
    match sink.lines.try_send(line) {
        Ok(()) => {
            sink.queued.fetch_add(1, Relaxed);
        }
        Err(TrySendError::Full(mut line) | TrySendError::Disconnected(mut line)) => {
            sink.dropped.fetch_add(1, Relaxed);
            recycle(&mut line);
        }
    }
}

fn format_line(line: &mut String, r: &AccessRecord, bytes: u64, aborted: bool) {
    let ms = (r.start.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let node = r.node.as_deref().unwrap_or("-");
    let ip = r.client;
    line.clear();
    timestamp(line);
    // Writing to a String cannot fail.
    let _ = match r.format {
        LogFormat::Text => writeln!(
            line,
            "  INFO nodegate::access: client={ip} method={} path={} status={} node={node} duration_ms={ms} bytes={bytes} request_id={} aborted={aborted}",
            r.method, r.path, r.status, r.request_id
        ),
        LogFormat::Json => {
            let ts = std::mem::take(line);
            let _ = write!(
                line,
                r#"{{"timestamp":"{ts}","level":"INFO","target":"nodegate::access","client":"{ip}","method":""#
            );
            json_escape(line, r.method.as_str());
            line.push_str(r#"","path":""#);
            json_escape(line, &r.path);
            let _ = write!(line, r#"","status":{},"node":""#, r.status);
            json_escape(line, node);
            writeln!(
                line,
                r#"","duration_ms":{ms},"bytes":{bytes},"request_id":"{}","aborted":{aborted}}}"#,
                r.request_id
            )
        }
    };
}

/// `2026-11-25T15:33:00.123456Z`, with the part up to the second cached.
fn timestamp(out: &mut String) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            *cached = secs;
            text.clear();
            let (y, m, d) = civil_from_days((secs / 86_400) as i64);
            let s = secs % 86_400;
            let _ = write!(text, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
        }
        out.push_str(text);
    });
    let _ = write!(out, ".{:06}Z", now.subsec_micros());
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn json_escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_escape(&mut s, "a\"b\\c\nd");
        assert_eq!(s, r#"a\"b\\c\u000ad"#);
    }
}
