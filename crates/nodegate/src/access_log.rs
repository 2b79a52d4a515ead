//! One line a request, written when the response's last byte has gone (or the client went away), so
//! the duration covers the whole exchange as in nginx's `$request_time`.
//!
//! The line is formatted here rather than through tracing: tracing's formatter cost about 16,000
//! instructions a line, a third of a whole proxied request (bench/callgrind, LOG=1). It keeps the
//! shape of tracing's text and JSON output, is built in a reused buffer, and goes to stderr in one
//! `write`, so lines from different threads never interleave.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::config::LogFormat;
use crate::listener::ConnState;

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
    pub slot: Option<crate::pipeline::in_flight::Slot>,
}

impl RequestGuard {
    pub fn new(conn: Arc<ConnState>) -> Self {
        conn.request_started();
        RequestGuard { conn, bytes_sent: 0, upstream_body_error: false, record: None, slot: None }
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
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
    /// The timestamp up to the second, and the second it is for.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

fn write_line(r: &AccessRecord, bytes: u64, aborted: bool) {
    let ms = (r.start.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let node = r.node.as_deref().unwrap_or("-");
    let ip = r.client;
    LINE.with_borrow_mut(|line| {
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
                let _ = write!(line, r#"{{"timestamp":"{ts}","level":"INFO","target":"nodegate::access","client":"{ip}","method":""#);
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
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    });
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
