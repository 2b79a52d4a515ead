//! One line a request, written when the response's last byte has gone (or the client went away), so
//! the duration covers the whole exchange as in nginx's `$request_time`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

use crate::listener::ConnState;

/// What the access log says about one request; only built when `[log] access` is on.
pub struct AccessRecord {
    pub client: SocketAddr,
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
}

impl RequestGuard {
    pub fn new(conn: Arc<ConnState>) -> Self {
        conn.request_started();
        RequestGuard { conn, bytes_sent: 0, upstream_body_error: false, record: None }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn.request_finished();
        if let Some(r) = self.record.take() {
            let ms = r.start.elapsed().as_secs_f64() * 1000.0;
            tracing::info!(
                target: "nodegate::access",
                client = %r.client.ip(),
                method = %r.method,
                path = %r.path,
                status = r.status,
                node = %r.node.as_deref().unwrap_or("-"),
                duration_ms = (ms * 1000.0).round() / 1000.0,
                bytes = self.bytes_sent,
                request_id = %r.request_id,
                aborted = self.upstream_body_error,
            );
        }
    }
}
