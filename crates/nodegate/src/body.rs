//! Body types. Request bodies stream to the node through [`CappedBody`], which enforces `max_body` on
//! the bytes actually seen (chunked bodies included). Response bodies are [`ProxyBody`]: either a small
//! body the gateway made or the node's streamed body, carrying the request's [`RequestGuard`] so the
//! access log line and the in-flight count close when the last byte is sent, not at the headers.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::RequestGuard;
use crate::balancer::InFlight;
use crate::upstream::Lease;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

/// The request body grew past `max_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// An error of the client's own body (the client went away mid-upload), told apart from the node's.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// The client sent its request body too slowly (`body_timeout`, `min_body_rate`).
#[derive(Debug, thiserror::Error)]
#[error("request body arrived too slowly")]
pub struct BodyTooSlow;

/// Streams the client's body and fails once more than `limit` bytes have passed, or when the client
/// sends it too slowly; or a body read whole beforehand (to look inside it), which can be sent again.
pub struct CappedBody {
    source: Source,
    seen: u64,
    limit: u64,
    pace: Option<Box<Pace>>,
}

/// Slow-body guard: the next piece must come within `gap` of the last, and once `gap` has passed
/// the body must average at least `min_rate` bytes a second since its head arrived (so a client
/// trickling a byte every few seconds is cut off, as with Kestrel's minimum data rate). The timer
/// is only looked at when the client has nothing to give, so a gateway slow to poll (waiting for a
/// node) never blames the client.
pub struct Pace {
    gap: std::time::Duration,
    min_rate: u64,
    start: tokio::time::Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Pace {
    pub fn new(gap: std::time::Duration, min_rate: u64) -> Box<Pace> {
        let start = tokio::time::Instant::now();
        Box::new(Pace { gap, min_rate, start, sleep: Box::pin(tokio::time::sleep_until(start + gap)) })
    }

    fn progress(&mut self, seen: u64) {
        let now = tokio::time::Instant::now();
        let mut deadline = now + self.gap;
        if self.min_rate > 0 {
            let earned = std::time::Duration::from_secs_f64(seen as f64 / self.min_rate as f64);
            deadline = deadline.min(self.start + self.gap + earned);
        }
        self.sleep.as_mut().reset(deadline);
    }
}

enum Source {
    Client(Incoming),
    Buffered(Option<Bytes>),
}

impl CappedBody {
    pub fn new(inner: Incoming, limit: u64, pace: Option<Box<Pace>>) -> Self {
        // A body that is already complete has nothing to be slow about.
        let pace = pace.filter(|_| !inner.is_end_stream());
        CappedBody { source: Source::Client(inner), seen: 0, limit, pace }
    }

    pub fn buffered(data: Bytes) -> Self {
        let limit = data.len() as u64;
        CappedBody { source: Source::Buffered((!data.is_empty()).then_some(data)), seen: 0, limit, pace: None }
    }

    /// A copy of a buffered body, for sending again; `None` for a streamed one.
    pub fn try_clone(&self) -> Option<Self> {
        match &self.source {
            Source::Buffered(d) => {
                Some(CappedBody { source: Source::Buffered(d.clone()), seen: 0, limit: self.limit, pace: None })
            }
            Source::Client(_) => None,
        }
    }

    /// Reads the whole body (still capped), for the routes whose body decides where they go.
    pub async fn read_all(self) -> Result<Bytes, BoxError> {
        use http_body_util::BodyExt;
        Ok(self.collect().await?.to_bytes())
    }
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let inner = match &mut this.source {
            Source::Client(inner) => inner,
            Source::Buffered(data) => return Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if let Some(pace) = &mut this.pace {
                    ready!(pace.sleep.as_mut().poll(cx));
                    this.pace = None;
                    return Poll::Ready(Some(Err(Box::new(BodyTooSlow))));
                }
                return Poll::Pending;
            }
        };
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            this.seen += data.len() as u64;
            if this.seen > this.limit {
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: this.limit }))));
            }
            if let Some(pace) = &mut this.pace {
                pace.progress(this.seen);
            }
        }
        Poll::Ready(frame.map(|f| f.map_err(|e| Box::new(ClientBodyError(e)) as BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Client(inner) => inner.is_end_stream(),
            Source::Buffered(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Client(inner) => inner.size_hint(),
            Source::Buffered(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

enum Kind {
    Full(Option<Bytes>),
    /// The node's body, and the connection it came on, returned to the pool at the body's end.
    Stream(Incoming, Option<Lease>, Stall),
}

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
    kind: Kind,
    guard: Option<RequestGuard>,
    /// Keeps the request counted in flight on its node until the body is done.
    _node: Option<InFlight>,
}

impl ProxyBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        ProxyBody { kind: Kind::Full((!data.is_empty()).then_some(data)), guard: None, _node: None }
    }

    pub fn stream(body: Incoming, lease: Option<Lease>, node: InFlight, stall: Stall) -> Self {
        ProxyBody { kind: Kind::Stream(body, lease, stall), guard: None, _node: Some(node) }
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
            Kind::Full(data) => {
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
            Kind::Stream(body, lease, stall) => match Pin::new(body).poll_frame(cx) {
                Poll::Pending => {
                    if !stall.waiting {
                        watch(|w| w.waiting_on_node.store(true, std::sync::atomic::Ordering::Relaxed));
                    }
                    if !stall.poll_waited_out(cx) {
                        return Poll::Pending;
                    }
                    // The connection is mid-body: never reused. The client's stream ends with an
                    // error (a reset, or a short body), and the node counts a failure.
                    lease.take();
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
                            }
                            Poll::Ready(Some(Ok(frame)))
                        }
                        Some(Err(e)) => {
                            if let Some(g) = &mut this.guard {
                                g.upstream_body_error = true;
                            }
                            Poll::Ready(Some(Err(e.into())))
                        }
                        None => {
                            if let Some(lease) = lease.take() {
                                lease.release();
                            }
                            Poll::Ready(None)
                        }
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(d) => d.is_none(),
            Kind::Stream(b, ..) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Stream(b, ..) => b.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if self.guard.is_some() {
            watch(|w| w.armed.store(false, std::sync::atomic::Ordering::Relaxed));
        }
        // hyper does not poll a body that says it is empty (HEAD, 204, Content-Length: 0), so a
        // fully read body can be dropped before its end was seen: its connection is still good.
        if let Kind::Stream(body, lease, _) = &mut self.kind
            && body.is_end_stream()
            && let Some(lease) = lease.take()
        {
            lease.release();
        }
    }
}
