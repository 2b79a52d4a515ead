//! The client's request body on its way to a node: [`CappedBody`] enforces `max_body` on the bytes
//! actually seen (chunked bodies included) and the slow-body guards, or holds a body read whole
//! beforehand (to look inside it), which can be sent again.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

    /// A buffered body of at most `limit` bytes, taken out (the body is then empty), to be
    /// written with the request's head; `None` for a streamed or larger one.
    pub fn take_buffered_upto(&mut self, limit: usize) -> Option<Bytes> {
        match &mut self.source {
            Source::Buffered(d) if d.as_ref().is_some_and(|d| d.len() <= limit) => d.take(),
            _ => None,
        }
    }

    /// Gives back what `take_buffered_upto` took, when the request is to be sent again.
    pub fn put_back_buffered(&mut self, data: Bytes) {
        self.source = Source::Buffered(Some(data));
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
