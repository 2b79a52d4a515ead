//! HTTP/1.1 exchanges with a node, driven by the task that serves the client.
//!
//! hyper's client connection is a task of its own: a request crosses a channel to it, the answer
//! and each piece of its body cross back, and every crossing is a wake-up and a task poll (the
//! connection task alone was a third of a proxied request's instructions, bench/callgrind). Here
//! the client's task writes the request and reads the answer itself, and the answer's body is read
//! from the node's socket as the client takes it. At the body's end the connection goes back to
//! its pool.
//!
//! A node's answer is framed by RFC 9112 section 6.3, and what is ambiguous is refused, not
//! guessed (an answer can be smuggled as well as a request): several differing `Content-Length`s,
//! one that is not a number, a chunk size that is not hex or overflows, a chunk not closed by
//! CRLF, a head or trailer past its cap, a folded header line. `Transfer-Encoding` wins over
//! `Content-Length` (which is then dropped), and such a connection is not used again.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

use super::NodeStream;
use super::pool::Lease;
use crate::http::headers::Stamp;
use crate::http::request_body::{BoxError, CappedBody};

/// Longest answer head a node may send. A node's API needs a few hundred bytes.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in an answer head.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (with its extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Longest trailer block of a chunked answer.
const MAX_TRAILERS: usize = 16 * 1024;
/// A request body read whole beforehand, up to this size, goes out with its head in one write.
const JOIN_BODY: usize = 64 * 1024;
/// What one read from a node asks for.
const READ_SIZE: usize = 16 * 1024;
/// A read asks for at least this much room.
const MIN_READ: usize = 2048;
/// An idle connection keeps at most this much of its write buffer's allocation.
const KEEP_WBUF: usize = 16 * 1024;

/// What a node sent that HTTP/1.1 does not allow, or a connection that ended early.
#[derive(Debug, thiserror::Error)]
pub enum NodeProtocolError {
    #[error("the node closed the connection before answering")]
    ClosedBeforeAnswer,
    #[error("the node closed the connection in the middle of its answer")]
    ClosedMidAnswer,
    #[error("the node's answer head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the node's answer head is malformed: {0}")]
    BadHead(httparse::Error),
    #[error("the node's answer has an invalid or conflicting Content-Length")]
    BadLength,
    #[error("the node's chunked answer is malformed")]
    BadChunk,
    #[error("the request body is longer than the length it declared")]
    BodyOverLength,
    #[error("the request body is shorter than the length it declared")]
    BodyUnderLength,
}

/// A keep-alive connection to a node, idle between exchanges.
pub struct Conn {
    io: NodeStream,
    /// Bytes read from the node and not yet used.
    rbuf: BytesMut,
    /// The request being written (kept between exchanges for its allocation).
    wbuf: Vec<u8>,
}

/// Why an exchange failed.
pub enum Failed {
    /// Not a byte of the request reached the connection: it comes back, to be sent on another.
    Unsent(Box<Request<CappedBody>>, io::Error),
    /// The request was (at least partly) written: it may have reached the node.
    Sent(BoxError),
}

impl Conn {
    pub fn new(io: NodeStream) -> Conn {
        Conn { io, rbuf: BytesMut::new(), wbuf: Vec::new() }
    }

    /// Whether an idle connection can carry a request: the node has neither closed it nor sent
    /// anything unasked. Looks without waiting (one `recv` at most, none when the socket is known
    /// to have nothing).
    pub fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        self.rbuf.is_empty() && Pin::new(&mut self.io).poll_read(&mut cx, &mut buf).is_pending()
    }

    /// Reads more of the node's bytes into `rbuf`; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // The buffer's tail serves answer after answer; a new one only when it runs short (the
        // answers before still hold the old one, so asking for READ_SIZE every time allocated
        // 16 KiB a request).
        if self.rbuf.capacity() - self.rbuf.len() < MIN_READ {
            self.rbuf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }

    /// Reads the answer's head, passing over interim (1xx) answers other than 101.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, BoxError>> {
        loop {
            if !self.rbuf.is_empty() {
                match parse_head(&mut self.rbuf)? {
                    Some(head) if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS => {
                        continue;
                    }
                    Some(head) => return Poll::Ready(Ok(head)),
                    None if self.rbuf.len() >= MAX_HEAD => {
                        return Poll::Ready(Err(NodeProtocolError::HeadTooLarge.into()));
                    }
                    None => {}
                }
            }
            let empty = self.rbuf.is_empty();
            if ready!(self.poll_fill(cx))? == 0 {
                let err =
                    if empty { NodeProtocolError::ClosedBeforeAnswer } else { NodeProtocolError::ClosedMidAnswer };
                return Poll::Ready(Err(err.into()));
            }
        }
    }
}

/// An answer's head as read.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

/// Parses one answer head from the front of `buf`, taking it out; `None` when it is not all in.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, BoxError> {
    // Neither array is filled first: zeroing 3 KB a request cost more than parsing the head.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(NodeProtocolError::BadHead(e).into()),
    };
    let status = parsed.code.and_then(|c| StatusCode::from_u16(c).ok());
    let status = status.ok_or(NodeProtocolError::BadHead(httparse::Error::Status))?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    // Where each name and value lies in the head, so that values can share its bytes.
    let base = buf.as_ptr() as usize;
    // (Offsets fit in u32: a head is at most MAX_HEAD.)
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let count = parsed.headers.len();
    for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        *span = (name as u32, (name + h.name.len()) as u32, value as u32, (value + h.value.len()) as u32);
    }
    let head = buf.split_to(len).freeze();
    // Room for what the gateway adds to an answer (request id, rate-limit headers) without growing.
    let mut headers = HeaderMap::with_capacity(count + 6);
    for &(ns, ne, vs, ve) in &spans[..count] {
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        let name = HeaderName::from_bytes(&head[ns..ne])
            .map_err(|_| NodeProtocolError::BadHead(httparse::Error::HeaderName))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| NodeProtocolError::BadHead(httparse::Error::HeaderValue))?;
        headers.append(name, value);
    }
    Ok(Some(Head { status, version, headers }))
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy, PartialEq)]
enum Out {
    /// No body.
    None,
    /// `Content-Length` bytes, this many still to write.
    Length(u64),
    Chunked,
}

/// Writes the request head into `wbuf`, with the gateway's own headers (`stamp`, with `host` as
/// Host) and the framing the body calls for.
fn encode_head(wbuf: &mut Vec<u8>, req: &Request<CappedBody>, (stamp, host): (&Stamp<'_>, &HeaderValue)) -> Out {
    let body = req.body();
    let out = if body.is_end_stream() {
        Out::None
    } else {
        match body.size_hint().exact() {
            Some(n) => Out::Length(n),
            None => Out::Chunked,
        }
    };
    wbuf.clear();
    wbuf.reserve(256 + req.headers().len() * 48);
    wbuf.extend_from_slice(req.method().as_str().as_bytes());
    wbuf.push(b' ');
    wbuf.extend_from_slice(req.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    wbuf.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        // The framing is this side's to say, from the body it actually sends; the stamp's names
        // are the gateway's to write.
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || Stamp::replaces(name) {
            continue;
        }
        crate::http::headers::line(wbuf, name.as_str().as_bytes(), value.as_bytes());
    }
    stamp.write(host, wbuf);
    match out {
        Out::None if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE) => {
            wbuf.extend_from_slice(b"content-length: 0\r\n");
        }
        Out::None => {}
        Out::Length(n) => {
            wbuf.extend_from_slice(b"content-length: ");
            wbuf.extend_from_slice(n.to_string().as_bytes());
            wbuf.extend_from_slice(b"\r\n");
        }
        Out::Chunked => wbuf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    wbuf.extend_from_slice(b"\r\n");
    out
}

/// The request on its way out: what is left of `wbuf` to write, then the body's frames.
struct Outgoing {
    pos: usize,
    body: Option<CappedBody>,
    out: Out,
    flushed: bool,
}

/// A failed write: the connection's, or the client's body's (too large, too slow, gone).
enum WriteError {
    Io(io::Error),
    Body(BoxError),
}

impl Outgoing {
    /// Writes until the request is all out (`Ready(Ok)`), the socket is full, or the body waits.
    fn poll(&mut self, cx: &mut Context<'_>, conn: &mut Conn) -> Poll<Result<(), WriteError>> {
        loop {
            if self.pos < conn.wbuf.len() {
                let n =
                    ready!(Pin::new(&mut conn.io).poll_write(cx, &conn.wbuf[self.pos..])).map_err(WriteError::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
                }
                self.pos += n;
                continue;
            }
            conn.wbuf.clear();
            self.pos = 0;
            let Some(body) = self.body.as_mut() else {
                if !self.flushed {
                    ready!(Pin::new(&mut conn.io).poll_flush(cx)).map_err(WriteError::Io)?;
                    self.flushed = true;
                }
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    match &mut self.out {
                        Out::Length(left) => {
                            *left = left
                                .checked_sub(data.len() as u64)
                                .ok_or(WriteError::Body(NodeProtocolError::BodyOverLength.into()))?;
                            conn.wbuf.extend_from_slice(&data);
                        }
                        Out::Chunked => {
                            conn.wbuf.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                            conn.wbuf.extend_from_slice(&data);
                            conn.wbuf.extend_from_slice(b"\r\n");
                        }
                        Out::None => {
                            return Poll::Ready(Err(WriteError::Body(NodeProtocolError::BodyOverLength.into())));
                        }
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(WriteError::Body(e))),
                None => {
                    self.body = None;
                    match self.out {
                        Out::Chunked => conn.wbuf.extend_from_slice(b"0\r\n\r\n"),
                        Out::Length(n) if n > 0 => {
                            return Poll::Ready(Err(WriteError::Body(NodeProtocolError::BodyUnderLength.into())));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Sends `req` on `conn` and reads the answer's head; the body follows as the client reads it.
/// `lease` goes with the connection and back to its pool once the answer has ended cleanly.
pub async fn exchange(
    mut conn: Conn,
    mut req: Request<CappedBody>,
    stamp: (&Stamp<'_>, &HeaderValue),
    lease: Lease,
) -> Result<Response<H1Body>, Failed> {
    let mut out = encode_head(&mut conn.wbuf, &req, stamp);
    // A body read whole beforehand goes with the head, in one write.
    let joined = req.body_mut().take_buffered_upto(JOIN_BODY);
    if let Some(data) = &joined {
        conn.wbuf.extend_from_slice(data);
        if let Out::Length(left) = &mut out {
            *left = left.saturating_sub(data.len() as u64);
        }
    }
    // The first write decides whether anything left: until it succeeds, the request is whole.
    let first = std::future::poll_fn(|cx| Pin::new(&mut conn.io).poll_write(cx, &conn.wbuf)).await;
    let pos = match first {
        Ok(n) if n > 0 => n,
        failed => {
            if let Some(data) = joined {
                req.body_mut().put_back_buffered(data);
            }
            let e = failed.err().unwrap_or_else(|| io::ErrorKind::WriteZero.into());
            return Err(Failed::Unsent(Box::new(req), e));
        }
    };
    let head_request = req.method() == Method::HEAD;
    let asked_upgrade = req.headers().contains_key(header::UPGRADE);
    let body = (joined.is_none() && out != Out::None).then(|| req.into_body());
    let mut outgoing = Outgoing { pos, body, out, flushed: false };
    let mut written = false;
    // The node may answer before the body is all out (a 413, say): the answer is read as it
    // comes, and then the rest of the body is not sent (nor the connection used again).
    let mut write_failed: Option<io::Error> = None;
    let head = std::future::poll_fn(|cx| {
        if !written && write_failed.is_none() {
            match outgoing.poll(cx, &mut conn) {
                Poll::Ready(Ok(())) => written = true,
                Poll::Ready(Err(WriteError::Body(e))) => return Poll::Ready(Err(e)),
                // The node may have answered and closed: its answer is still worth reading.
                Poll::Ready(Err(WriteError::Io(e))) => write_failed = Some(e),
                Poll::Pending => {}
            }
        }
        match conn.poll_head(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(write_failed.take().map_or(e, |w| Box::new(w) as BoxError))),
            other => other,
        }
    })
    .await
    .map_err(Failed::Sent)?;
    drop(outgoing);
    let (state, keep_alive) = framing(&head, head_request, asked_upgrade).map_err(Failed::Sent)?;
    let mut headers = head.headers;
    if matches!(state, State::Chunked(_) | State::Eof) {
        // `Transfer-Encoding` decided: a `Content-Length` beside it must not reach the client.
        headers.remove(header::CONTENT_LENGTH);
    }
    if conn.wbuf.capacity() > KEEP_WBUF {
        conn.wbuf = Vec::new();
    }
    let mut resp = Response::new(H1Body::new(conn, state, keep_alive && written, lease));
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// How the answer's body is framed (RFC 9112 section 6.3), and whether the connection may carry
/// another request after it.
fn framing(head: &Head, head_request: bool, asked_upgrade: bool) -> Result<(State, bool), BoxError> {
    let h = &head.headers;
    let mut keep_alive = match head.version {
        Version::HTTP_11 => !has_token(h, header::CONNECTION, "close"),
        _ => has_token(h, header::CONNECTION, "keep-alive"),
    };
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        // The connection is the node's side of a tunnel now, or (not asked for) useless.
        return Ok((if asked_upgrade { State::Upgrade } else { State::Done }, false));
    }
    if head_request || head.status == StatusCode::NO_CONTENT || head.status == StatusCode::NOT_MODIFIED {
        return Ok((State::Done, keep_alive));
    }
    if h.contains_key(header::TRANSFER_ENCODING) {
        if h.contains_key(header::CONTENT_LENGTH) {
            keep_alive = false;
        }
        let last = h
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(|t| t.trim_ascii())
            .rfind(|t| !t.is_empty());
        return Ok(match last {
            Some(t) if t.eq_ignore_ascii_case(b"chunked") => (State::Chunked(Chunk::Size), keep_alive),
            // Not chunked last: the body runs to the connection's end.
            _ => (State::Eof, false),
        });
    }
    let mut length = None;
    for value in h.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = parse_length(part.trim_ascii()).ok_or(NodeProtocolError::BadLength)?;
            if length.replace(n).is_some_and(|m| m != n) {
                return Err(NodeProtocolError::BadLength.into());
            }
        }
    }
    Ok(match length {
        Some(0) => (State::Done, keep_alive),
        Some(n) => (State::Length(n), keep_alive),
        None => (State::Eof, false),
    })
}

/// A decimal length: digits only, no sign, no overflow.
fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0')))
}

/// Whether a comma-separated header lists `token` (any case).
fn has_token(h: &HeaderMap, name: HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A chunk-size line without its CRLF: hex digits, then nothing or extensions after `;`.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') || rest.contains(&b'\r') {
        return None;
    }
    let hex = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

enum State {
    /// This many body bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// The body ends when the node closes the connection.
    Eof,
    /// The body has ended.
    Done,
    /// A 101 to an upgrade: the connection is the tunnel's, taken with `take_tunnel`.
    Upgrade,
}

enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of the current chunk still to come.
    Data(u64),
    /// The CRLF closing a chunk is next.
    DataEnd,
    /// After the last chunk: trailers, or the empty line.
    Trailers,
}

/// A node's answer body over HTTP/1.1, read from its connection as the client takes it.
pub struct H1Body {
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
    lease: Option<Lease>,
}

impl H1Body {
    fn new(conn: Conn, state: State, keep_alive: bool, lease: Lease) -> H1Body {
        let mut body = H1Body { conn: Some(conn), state, keep_alive, lease: Some(lease) };
        if matches!(body.state, State::Done) {
            // Nothing to read: the connection is free at once.
            body.finish();
        }
        body
    }

    /// The body has ended: its connection goes back to the pool if it can carry another request
    /// (and the node sent nothing past the answer).
    fn finish(&mut self) {
        self.state = State::Done;
        let conn = self.conn.take();
        if let (Some(conn), Some(lease), true) = (conn, self.lease.take(), self.keep_alive)
            && conn.rbuf.is_empty()
        {
            lease.put_back(conn);
        }
    }

    /// The body failed: its connection is closed, and the error passed on.
    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = State::Done;
        self.conn = None;
        self.lease = None;
        Poll::Ready(Some(Err(e.into())))
    }

    /// After a 101: the node's side of the tunnel, and the connection's place under the node's
    /// connection cap (held as long as the tunnel lasts).
    pub fn take_tunnel(&mut self) -> Option<(NodeTunnel, Option<OwnedSemaphorePermit>)> {
        if !matches!(self.state, State::Upgrade) {
            return None;
        }
        let conn = self.conn.take()?;
        self.state = State::Done;
        let permit = self.lease.take().map(Lease::into_permit);
        Some((NodeTunnel { io: conn.io, leftover: conn.rbuf.freeze() }, permit))
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match &mut this.state {
                State::Done | State::Upgrade => return Poll::Ready(None),
                State::Length(left) => {
                    if conn.rbuf.is_empty() {
                        match ready!(conn.poll_fill(cx)) {
                            Ok(0) => return this.fail(NodeProtocolError::ClosedMidAnswer),
                            Ok(_) => {}
                            Err(e) => return this.fail(e),
                        }
                    }
                    let take = conn.rbuf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let data = conn.rbuf.split_to(take).freeze();
                    *left -= take as u64;
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Eof => {
                    if conn.rbuf.is_empty() {
                        match ready!(conn.poll_fill(cx)) {
                            Ok(0) => {
                                this.finish();
                                return Poll::Ready(None);
                            }
                            Ok(_) => {}
                            Err(e) => return this.fail(e),
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(conn.rbuf.split().freeze()))));
                }
                State::Chunked(chunk) => {
                    match decode_chunk(chunk, &mut conn.rbuf) {
                        Ok(Decoded::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                        Ok(Decoded::Progress) => continue,
                        Ok(Decoded::End(trailers)) => {
                            this.finish();
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                        }
                        Ok(Decoded::More) => {}
                        Err(e) => return this.fail(e),
                    }
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => return this.fail(NodeProtocolError::ClosedMidAnswer),
                        Ok(_) => {}
                        Err(e) => return this.fail(e),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Upgrade)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done | State::Upgrade => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

enum Decoded {
    Frame(Frame<Bytes>),
    /// A framing step was taken; go on.
    Progress,
    /// The body ended, with these trailers if any.
    End(Option<HeaderMap>),
    /// More bytes are needed.
    More,
}

/// One step of decoding a chunked body from the front of `buf`.
fn decode_chunk(chunk: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, NodeProtocolError> {
    match chunk {
        Chunk::Size => {
            let Some(lf) = memchr::memchr(b'\n', buf) else {
                return if buf.len() > MAX_CHUNK_LINE { Err(NodeProtocolError::BadChunk) } else { Ok(Decoded::More) };
            };
            let line = buf[..lf].strip_suffix(b"\r").ok_or(NodeProtocolError::BadChunk)?;
            if line.len() > MAX_CHUNK_LINE {
                return Err(NodeProtocolError::BadChunk);
            }
            let size = parse_chunk_size(line).ok_or(NodeProtocolError::BadChunk)?;
            buf.advance(lf + 1);
            *chunk = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
            Ok(Decoded::Progress)
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Decoded::More);
            }
            let take = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            let data = buf.split_to(take).freeze();
            *left -= take as u64;
            if *left == 0 {
                *chunk = Chunk::DataEnd;
            }
            Ok(Decoded::Frame(Frame::data(data)))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Decoded::More);
            }
            if &buf[..2] != b"\r\n" {
                return Err(NodeProtocolError::BadChunk);
            }
            buf.advance(2);
            *chunk = Chunk::Size;
            Ok(Decoded::Progress)
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok(Decoded::End(None));
            }
            if buf.len() < 2 {
                return Ok(Decoded::More);
            }
            let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
                return if buf.len() > MAX_TRAILERS { Err(NodeProtocolError::BadChunk) } else { Ok(Decoded::More) };
            };
            if end + 4 > MAX_TRAILERS {
                return Err(NodeProtocolError::BadChunk);
            }
            let block = buf.split_to(end + 4);
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let parsed = match httparse::parse_headers(&block, &mut slots) {
                Ok(httparse::Status::Complete((_, parsed))) => parsed,
                _ => return Err(NodeProtocolError::BadChunk),
            };
            let mut trailers = HeaderMap::with_capacity(parsed.len());
            for h in parsed {
                let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| NodeProtocolError::BadChunk)?;
                let value = HeaderValue::from_bytes(h.value).map_err(|_| NodeProtocolError::BadChunk)?;
                trailers.append(name, value);
            }
            Ok(Decoded::End(Some(trailers)))
        }
    }
}

/// The node's side of an upgraded connection: what it sent after its 101 first, then the socket.
pub struct NodeTunnel {
    io: NodeStream,
    leftover: Bytes,
}

impl AsyncRead for NodeTunnel {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.leftover.is_empty() {
            let n = this.leftover.len().min(buf.remaining());
            buf.put_slice(&this.leftover[..n]);
            this.leftover.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for NodeTunnel {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, BoxError> {
        parse_head(&mut BytesMut::from(text))
    }

    fn framed(text: &str) -> Result<(State, bool), BoxError> {
        framing(&head(text)?.expect("a whole head"), false, false)
    }

    #[test]
    fn heads_parse_and_values_keep_their_bytes() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: bé\r\n\r\nhello").unwrap().unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.headers["content-length"], "5");
        assert_eq!(h.headers["x-a"].as_bytes(), "bé".as_bytes());
        assert!(head("HTTP/1.1 200 OK\r\nContent-Len").unwrap().is_none());
        // Folded lines, a space before the colon, a bad status: refused.
        assert!(head("HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\nX-A : b\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 2000 OK\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 099 OK\r\n\r\n").is_err());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert!(matches!(framed("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n").unwrap(), (State::Length(7), true)));
        assert!(matches!(framed("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n").unwrap(), (State::Length(7), true)));
        assert!(framed("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\n").is_err());
        assert!(framed("HTTP/1.1 200 OK\r\nContent-Length: +7\r\n\r\n").is_err());
        assert!(framed("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n").is_err());
        assert!(matches!(framed("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap(), (State::Done, true)));
        // Transfer-Encoding wins over Content-Length, and the connection is not used again.
        let (state, keep) =
            framed("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert!(matches!(state, State::Chunked(_)) && !keep);
        let (state, keep) = framed("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap();
        assert!(matches!(state, State::Chunked(_)) && keep);
        assert!(matches!(
            framed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").unwrap(),
            (State::Eof, false)
        ));
        assert!(matches!(framed("HTTP/1.1 200 OK\r\n\r\n").unwrap(), (State::Eof, false)));
        assert!(matches!(framed("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n").unwrap(), (State::Done, true)));
        assert!(matches!(
            framed("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n").unwrap(),
            (_, false)
        ));
        assert!(matches!(framed("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").unwrap(), (_, false)));
        assert!(matches!(
            framed("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n").unwrap(),
            (_, true)
        ));
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n").unwrap().unwrap();
        assert!(matches!(framing(&h, true, false).unwrap(), (State::Done, true)), "an answer to HEAD has no body");
    }

    fn decode_all(wire: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), NodeProtocolError> {
        let mut buf = BytesMut::from(wire);
        let mut chunk = Chunk::Size;
        let mut data = Vec::new();
        loop {
            match decode_chunk(&mut chunk, &mut buf)? {
                Decoded::Frame(f) => data.extend_from_slice(&f.into_data().unwrap()),
                Decoded::Progress => {}
                Decoded::End(t) => return Ok((data, t)),
                Decoded::More => return Err(NodeProtocolError::ClosedMidAnswer),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_strictly() {
        let (data, t) = decode_all(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n").unwrap();
        assert_eq!(data, b"hello world");
        assert!(t.is_none());
        let (_, t) = decode_all(b"1\r\na\r\n0\r\ngrpc-status: 0\r\n\r\n").unwrap();
        assert_eq!(t.unwrap()["grpc-status"], "0");
        assert_eq!(decode_all(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap().0, b"0123456789");
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],        // bare LF
            b"5\r\nhelloX\r\n0\r\n\r\n",          // chunk longer than it said
            b"-5\r\nhello\r\n0\r\n\r\n",          // sign
            b"0x5\r\nhello\r\n0\r\n\r\n",         // prefix
            b"5 x\r\nhello\r\n0\r\n\r\n",         // junk after the size
            b"11111111111111111\r\n",             // 17 hex digits
            b"ffffffffffffffff\r\n",              // fits u64; then the stream ends
            b"1\r\na\r\n0\r\nbad header\r\n\r\n", // a malformed trailer
        ] {
            assert!(decode_all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long_line = format!("1;{}\r\n", "x".repeat(MAX_CHUNK_LINE + 1));
        assert!(decode_all(long_line.as_bytes()).is_err());
    }

    #[test]
    fn request_heads_carry_the_framing_of_the_body_sent() {
        let fwd = crate::http::headers::Forwarding::new("192.0.2.1".parse().unwrap(), "http");
        let id = HeaderValue::from_static("r1");
        let stamp = Stamp { forwarding: &fwd, client_host: None, request_id: &id };
        let node = HeaderValue::from_static("node");
        let stamped = "host: node\r\nx-forwarded-for: 192.0.2.1\r\nx-real-ip: 192.0.2.1\r\nx-forwarded-proto: http\r\nforwarded: for=192.0.2.1;proto=http\r\nx-request-id: r1\r\n";
        let mut wbuf = Vec::new();
        let mut req = Request::new(CappedBody::buffered(Bytes::from_static(b"abc")));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = "/x?y=1".parse().unwrap();
        req.headers_mut().insert(header::HOST, HeaderValue::from_static("client"));
        req.headers_mut().insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        req.headers_mut().insert("x-other", HeaderValue::from_static("kept"));
        req.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        req.headers_mut().insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(encode_head(&mut wbuf, &req, (&stamp, &node)) == Out::Length(3));
        let text = String::from_utf8(wbuf.clone()).unwrap();
        assert_eq!(text, format!("POST /x?y=1 HTTP/1.1\r\nx-other: kept\r\n{stamped}content-length: 3\r\n\r\n"));
        let mut req = Request::new(CappedBody::buffered(Bytes::new()));
        *req.method_mut() = Method::POST;
        assert!(encode_head(&mut wbuf, &req, (&stamp, &node)) == Out::None);
        assert_eq!(
            String::from_utf8(wbuf.clone()).unwrap(),
            format!("POST / HTTP/1.1\r\n{stamped}content-length: 0\r\n\r\n")
        );
        let req = Request::new(CappedBody::buffered(Bytes::new()));
        encode_head(&mut wbuf, &req, (&stamp, &node));
        assert_eq!(String::from_utf8(wbuf.clone()).unwrap(), format!("GET / HTTP/1.1\r\n{stamped}\r\n"));
    }

    use proptest::prelude::*;

    /// Decodes `wire` fed in pieces cut at `cuts`, as reads from a socket would hand it over:
    /// the data, the trailers, or the first error; `None` when the bytes ended too early.
    /// A decoded body's data and trailers; `Err` for a refused one, `None` for one cut short.
    type Decoding = Option<Result<(Vec<u8>, Option<HeaderMap>), ()>>;

    fn decode_in_pieces(wire: &[u8], cuts: &[usize]) -> Decoding {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut buf = BytesMut::new();
        let mut chunk = Chunk::Size;
        let mut data = Vec::new();
        let mut fed = 0;
        for cut in cuts {
            buf.extend_from_slice(&wire[fed..cut]);
            fed = cut;
            loop {
                match decode_chunk(&mut chunk, &mut buf) {
                    Ok(Decoded::Frame(f)) => data.extend_from_slice(&f.into_data().unwrap()),
                    Ok(Decoded::Progress) => {}
                    Ok(Decoded::End(t)) => return Some(Ok((data, t))),
                    Ok(Decoded::More) => break,
                    Err(_) => return Some(Err(())),
                }
            }
        }
        None
    }

    proptest! {
        #![proptest_config(crate::fuzz_config())]

        /// Any bytes at all: the head parser and the framing answer or refuse, never panic.
        #[test]
        fn any_bytes_as_a_head_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Some(h)) = parse_head(&mut BytesMut::from(&bytes[..])) {
                let _ = framing(&h, false, false);
                let _ = framing(&h, true, true);
            }
        }

        /// Any bytes as a chunked body, cut anywhere: never a panic, and always the same outcome
        /// however the bytes arrive.
        #[test]
        fn any_bytes_as_a_chunked_body_decode_the_same_in_any_pieces(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = decode_in_pieces(&bytes, &[]);
            let pieces = decode_in_pieces(&bytes, &cuts);
            prop_assert_eq!(whole.map(|r| r.map(|(d, _)| d)), pieces.map(|r| r.map(|(d, _)| d)));
        }

        /// A well-formed chunked body, with extensions and trailers, cut anywhere: exactly its data.
        #[test]
        fn chunked_bodies_round_trip_in_any_pieces(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..6),
            ext in proptest::bool::ANY,
            trailer in proptest::bool::ANY,
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut wire = Vec::new();
            for c in &chunks {
                wire.extend_from_slice(format!("{:X}{}\r\n", c.len(), if ext { ";a=b" } else { "" }).as_bytes());
                wire.extend_from_slice(c);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n");
            if trailer {
                wire.extend_from_slice(b"x-t: 1\r\n");
            }
            wire.extend_from_slice(b"\r\n");
            let (data, trailers) = decode_in_pieces(&wire, &cuts).expect("complete").expect("valid");
            prop_assert_eq!(data, chunks.concat());
            prop_assert_eq!(trailers.is_some(), trailer);
        }
    }
}
