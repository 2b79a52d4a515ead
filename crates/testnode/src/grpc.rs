//! iota-node's gRPC services, simulated over h2c with real gRPC framing (a 5-byte prefix, then a
//! protobuf message): any `/iota.grpc.*` method answers one message (field 1: the method's name)
//! and `grpc-status: 0` in trailers; a method whose name starts with `Stream` answers three (300 ms
//! apart for `StreamSlow...`); one named `Fail` answers only trailers with `grpc-status: 5`
//! (NOT_FOUND), and `StreamFail...` its three messages, then `grpc-status: 5` in the trailers.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use crate::State;
use crate::api::{BoxError, RespBody};

/// One gRPC message: uncompressed, its length, a protobuf with field 1 set to `text`.
fn message(text: &str) -> Bytes {
    let mut proto = BytesMut::new();
    proto.put_u8(0x0a); // field 1, length-delimited
    proto.put_u8(text.len().min(127) as u8);
    proto.put_slice(&text.as_bytes()[..text.len().min(127)]);
    let mut out = BytesMut::with_capacity(5 + proto.len());
    out.put_u8(0);
    out.put_u32(proto.len() as u32);
    out.put_slice(&proto);
    out.freeze()
}

pub fn answer(state: &Arc<State>, path: &str) -> Response<RespBody> {
    let failing = path.rsplit('/').next() == Some("Fail");
    let method = path.rsplit('/').next().unwrap_or_default().to_owned();
    crate::jsonrpc::record(state, path);
    let (messages, status) = if method == "Fail" {
        (0, "5")
    } else if method.starts_with("StreamFail") {
        (3, "5")
    } else if method.starts_with("Stream") {
        (3, "0")
    } else {
        (1, "0")
    };
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> =
        (0..messages).map(|i| Ok(Frame::data(message(&format!("{method} {i}"))))).collect();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    if status != "0" {
        trailers.insert("grpc-message", HeaderValue::from_static("not%20found"));
    }
    frames.push(Ok(Frame::trailers(trailers)));
    let body = if method.starts_with("StreamSlow") {
        // A stream that lasts: each frame 300 ms after the last.
        let paced = futures_util::stream::unfold(frames.into_iter(), |mut rest| async move {
            let next = rest.next()?;
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            Some((next, rest))
        });
        StreamBody::new(paced).boxed_unsync()
    } else {
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    if failing {
        // As gRPC servers answer a call that fails before any message: trailers-only.
        let mut only = Response::new(crate::api::empty());
        *only.headers_mut() = resp.headers().clone();
        only.headers_mut().insert("grpc-status", HeaderValue::from_static("5"));
        only.headers_mut().insert("grpc-message", HeaderValue::from_static("not%20found"));
        return only;
    }
    resp
}
