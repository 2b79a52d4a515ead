//! Response bodies are [`ProxyBody`]: either a small body the gateway made or the node's streamed
//! body, carrying the request's [`RequestGuard`] so the access log line and the in-flight count
//! close when the last byte is sent, not at the headers. The gateway's own answers are made here
//! too ([`answer`], [`json_error`]). Request bodies are `http::request_body`'s.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::access_log::RequestGuard;
use crate::balancer::InFlight;
use crate::upstream::NodeBody;

pub use crate::http::request_body::BoxError;

/// What an HTTP/2 stream's task knows of its response body, for the watch on streams whose client
/// never opens its flow-control window (see `listener::StreamExecutor`). Set through a task-local,
/// so HTTP/1.1, which spawns no task per request, pays one failed look-up a response.
#[derive(Default)]
pub struct StreamWatch {
    /// A response body exists and is not finished.
    pub armed: std::sync::atomic::AtomicBool,
    /// The body waits on the node (then the node's timeouts apply, not the client's).
    pub waiting_on_node: std::sync::atomic::AtomicBool,
    /// Frames handed to the stream so far.
    pub progress: std::sync::atomic::AtomicU64,
}

tokio::task_local! {
    pub static STREAM: std::sync::Arc<StreamWatch>;
}

fn watch(f: impl FnOnce(&StreamWatch)) {
    let _ = STREAM.try_with(|w| f(w));
}

enum BodyKind {
    Full(Option<Bytes>),
    /// The node's body (its connection goes back to the pool at the body's end).
    Stream(NodeBody, Stall, Option<Box<OnTrailers>>),
}

/// Called once with the trailers of a node's answer as they pass to the client (gRPC sends a
/// call's status there, after a stream's messages).
pub type OnTrailers = Box<dyn FnOnce(&http::HeaderMap) + Send + Sync>;

/// The node stopped sending its response body for `[upstream] body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the node stopped sending the response body")]
pub struct NodeBodyStalled;

/// Guard against a node that stops in the middle of a body: the time the gateway spends waiting
/// for the node's next frame, uninterrupted, may not pass `gap`. Time the client takes to read is
/// not counted (the body is not polled then), and the timer exists only once the node made the
/// gateway wait at all: a body already in the buffer costs no timer.
pub struct Stall {
    gap: std::time::Duration,
    passive: crate::balancer::Passive,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

impl Stall {
    pub fn new(gap: std::time::Duration, passive: crate::balancer::Passive) -> Stall {
        Stall { gap, passive, sleep: None, waiting: false }
    }

    /// The node had nothing: true once it has had nothing for `gap` in a row.
    fn poll_waited_out(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.waiting {
            self.waiting = true;
            let deadline = tokio::time::Instant::now() + self.gap;
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.sleep.as_mut().is_some_and(|s| s.as_mut().poll(cx).is_ready())
    }
}

/// The body of every response the gateway sends.
pub struct ProxyBody {
    kind: BodyKind,
    guard: Option<RequestGuard>,
    /// Keeps the request counted in flight on its node until the body is done.
    _node: Option<InFlight>,
}

impl ProxyBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        ProxyBody { kind: BodyKind::Full((!data.is_empty()).then_some(data)), guard: None, _node: None }
    }

    pub fn stream(body: NodeBody, node: InFlight, stall: Stall) -> Self {
        ProxyBody { kind: BodyKind::Stream(body, stall, None), guard: None, _node: Some(node) }
    }

    /// `f` sees the node's trailers, if it sends any.
    pub fn on_trailers(mut self, f: OnTrailers) -> Self {
        if let BodyKind::Stream(.., watch) = &mut self.kind {
            *watch = Some(Box::new(f));
        }
        self
    }

    /// Attaches the request's guard, finished when this body is done or dropped.
    pub fn with_guard(mut self, guard: RequestGuard) -> Self {
        self.guard = Some(guard);
        if !self.is_end_stream() {
            watch(|w| w.armed.store(true, std::sync::atomic::Ordering::Relaxed));
        }
        self
    }

    fn count(&mut self, n: usize) {
        if let Some(g) = &mut self.guard {
            g.bytes_sent += n as u64;
        }
        watch(|w| {
            w.progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match &mut this.kind {
            BodyKind::Full(data) => {
                let frame = data.take().map(|d| {
                    let n = d.len();
                    (Frame::data(d), n)
                });
                match frame {
                    Some((f, n)) => {
                        this.count(n);
                        Poll::Ready(Some(Ok(f)))
                    }
                    None => Poll::Ready(None),
                }
            }
            BodyKind::Stream(body, stall, on_trailers) => match Pin::new(body).poll_frame(cx) {
                Poll::Pending => {
                    if !stall.waiting {
                        watch(|w| w.waiting_on_node.store(true, std::sync::atomic::Ordering::Relaxed));
                    }
                    if !stall.poll_waited_out(cx) {
                        return Poll::Pending;
                    }
                    // The connection is mid-body: never reused (a body dropped before its end
                    // closes it). The client's stream ends with an error (a reset, or a short
                    // body), and the node counts a failure.
                    if let Some(node) = &this._node {
                        node.failed(&stall.passive);
                    }
                    if let Some(g) = &mut this.guard {
                        g.upstream_body_error = true;
                    }
                    tracing::debug!("node stopped sending its response body: cut off");
                    Poll::Ready(Some(Err(Box::new(NodeBodyStalled))))
                }
                Poll::Ready(frame) => {
                    if stall.waiting {
                        stall.waiting = false;
                        watch(|w| w.waiting_on_node.store(false, std::sync::atomic::Ordering::Relaxed));
                    }
                    match frame {
                        Some(Ok(frame)) => {
                            if let Some(d) = frame.data_ref() {
                                let n = d.len();
                                this.count(n);
                            } else if let Some(trailers) = frame.trailers_ref()
                                && let Some(f) = on_trailers.take()
                            {
                                f(trailers);
                            }
                            Poll::Ready(Some(Ok(frame)))
                        }
                        Some(Err(e)) => {
                            if let Some(g) = &mut this.guard {
                                g.upstream_body_error = true;
                            }
                            Poll::Ready(Some(Err(e)))
                        }
                        None => Poll::Ready(None),
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Full(d) => d.is_none(),
            BodyKind::Stream(b, ..) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            BodyKind::Full(None) => SizeHint::with_exact(0),
            BodyKind::Stream(b, ..) => b.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if self.guard.is_some() {
            watch(|w| w.armed.store(false, std::sync::atomic::Ordering::Relaxed));
        }
    }
}

/// The gateway's own answer for `err`: its status, JSON body and headers.
pub fn answer(err: &crate::error::GatewayError) -> http::Response<ProxyBody> {
    let mut resp = json_error(err.status(), &err.to_string());
    err.add_headers(resp.headers_mut());
    resp
}

/// One of the gateway's own answers on a JSON-RPC route: the same status and headers, the body in
/// JSON-RPC's shape with the request's id (`null` when it was not read).
pub fn answer_rpc(err: &crate::error::GatewayError, id: Option<&str>) -> http::Response<ProxyBody> {
    let mut resp = http::Response::new(ProxyBody::full(err.rpc_json(id)));
    *resp.status_mut() = err.status();
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    err.add_headers(resp.headers_mut());
    resp
}

/// One of the gateway's own answers to a gRPC call: HTTP 200 with the status in `grpc-status`
/// and `grpc-message` and no body (gRPC's trailers-only form), as gRPC clients expect.
pub fn answer_grpc(err: &crate::error::GatewayError) -> http::Response<ProxyBody> {
    let mut resp = http::Response::new(ProxyBody::full(bytes::Bytes::new()));
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", http::HeaderValue::from(err.grpc_status()));
    let message =
        percent_encoding::utf8_percent_encode(&err.to_string(), percent_encoding::NON_ALPHANUMERIC).to_string();
    if let Ok(v) = http::HeaderValue::from_str(&message) {
        h.insert("grpc-message", v);
    }
    if let crate::error::GatewayError::RateLimited { retry_after, .. } = err {
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from(retry_after.as_secs().max(1)));
    }
    resp
}

/// A JSON error response in the node API's shape.
pub fn json_error(status: http::StatusCode, message: &str) -> http::Response<ProxyBody> {
    let mut resp = http::Response::new(ProxyBody::full(crate::error::json_text(status, message)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}
