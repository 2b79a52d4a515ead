//! Routes of the simulated node.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, LOCATION};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{Reset, State, StatePatch, pow, ws};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type RespBody = UnsyncBoxBody<Bytes, BoxError>;

/// Milestone the simulated network is at; an unsynced node confirms `LAG` behind it.
const LATEST_MILESTONE: u64 = 1_000_000;
const UNSYNCED_LAG: u64 = 10;

pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<RespBody>, BoxError> {
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/control/") {
        return Ok(control(&state, rest, req).await);
    }
    if let Some(rest) = path.strip_prefix("/debug/") {
        return debug(rest, req).await;
    }

    let probe = req.headers().get(http::header::USER_AGENT).is_some_and(|v| v == "nodegate-health");
    if probe {
        state.probes.fetch_add(1, Relaxed);
    } else {
        state.requests.fetch_add(1, Relaxed);
    }
    let delay = state.delay_ms.load(Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let healthy = state.synced.load(Relaxed) && !state.failing.load(Relaxed);
    if path == "/health" {
        let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        return Ok(with_status(status, empty()));
    }
    if state.failing.load(Relaxed) {
        return Ok(error(StatusCode::INTERNAL_SERVER_ERROR, "simulated failure"));
    }
    if ws::is_upgrade(&req) && (path == "/mqtt" || path == "/api/mqtt/v1") {
        return Ok(ws::accept(req));
    }
    if ws::is_upgrade(&req) && (path == "/subscribe" || path == "/v1/chain/evm/ws") {
        let evm = path != "/subscribe";
        return Ok(ws::accept_with(req, ws::Serve::JsonRpc { state: state.clone(), evm }));
    }

    if req.method() == Method::POST && matches!(path.as_str(), "/" | "/json-rpc" | "/public") {
        if req.headers().contains_key("authorization") || req.headers().contains_key("x-api-key") {
            state.rpc_credentials.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Ok(error(StatusCode::BAD_REQUEST, "could not read body")),
        };
        return Ok(json_ok(crate::jsonrpc::answer(&state, &body, probe)));
    }
    if req.method() == Method::POST && path.starts_with("/iota.grpc.") {
        // The request's messages are read (and dropped): a real server reads them too.
        let _ = req.into_body().collect().await;
        return Ok(crate::grpc::answer(&state, &path));
    }
    if req.method() == Method::POST && path == "/v1/chain/evm" {
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Ok(error(StatusCode::BAD_REQUEST, "could not read body")),
        };
        return Ok(json_ok(crate::jsonrpc::answer_evm(&state, &body, probe)));
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    let resp = match (&method, segments.as_slice()) {
        (&Method::GET, ["api", "v1", "info"]) => json_ok(chrysalis_info(&state)),
        (&Method::GET, ["api", "core", "v2", "info"]) => json_ok(stardust_info(&state)),
        (&Method::GET, ["api", "v1", "tips"]) => json_ok(json!({"data": {"tipMessageIds": tips()}})),
        (&Method::GET, ["api", "core", "v2", "tips"]) => json_ok(json!({"tips": tips()})),
        (&Method::GET, ["api", "v1", "peers"]) | (&Method::GET, ["api", "core", "v2", "peers"]) => {
            json_ok(json!({"data": [{"id": "12D3KooWsimulated", "connected": true}]}))
        }
        (&Method::GET, ["api", "v1", "messages"]) => {
            let ids = state.messages.ids(1000);
            let index = query_value(req.uri().query(), "index").unwrap_or_default();
            json_ok(json!({"data": {"index": index, "maxResults": 1000, "count": ids.len(), "messageIds": ids}}))
        }
        (&Method::GET, ["api", "v1", "messages", id]) | (&Method::GET, ["api", "core", "v2", "blocks", id]) => {
            match state.messages.get(id) {
                Some(m) => json_ok(if segments[1] == "v1" { json!({"data": m}) } else { m }),
                None => error(StatusCode::NOT_FOUND, "message not found"),
            }
        }
        (&Method::GET, ["api", "v1", "messages", id, "metadata"]) => match state.messages.get(id) {
            Some(_) => json_ok(
                json!({"data": {"messageId": id, "isSolid": true, "referencedByMilestoneIndex": LATEST_MILESTONE}}),
            ),
            None => error(StatusCode::NOT_FOUND, "message not found"),
        },
        (&Method::POST, ["api", "v1", "messages"]) => submit(&state, req, Api::Chrysalis).await,
        (&Method::POST, ["api", "core", "v2", "blocks"]) => submit(&state, req, Api::Stardust).await,
        _ => error(StatusCode::NOT_FOUND, "route not found"),
    };
    if state.cut_bodies.load(Relaxed) {
        return Ok(cut_body(resp));
    }
    Ok(resp)
}

/// The same headers, with the declared length, but a body that never comes: the connection drops.
fn cut_body(resp: Response<RespBody>) -> Response<RespBody> {
    let (mut parts, body) = resp.into_parts();
    let n = body.size_hint().exact().unwrap_or(1).max(1);
    parts.headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    let body = HalfBody { first: None, wait: Box::pin(tokio::time::sleep(Duration::from_millis(20))), cut: true };
    Response::from_parts(parts, body.boxed_unsync())
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    Chrysalis,
    Stardust,
}

/// Accepts a message (chrysalis) or block (stardust). Without a nonce the node must do the PoW
/// itself, which it refuses when PoW is off, as real nodes do.
async fn submit(state: &Arc<State>, req: Request<Incoming>, api: Api) -> Response<RespBody> {
    let raw = req.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"));
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::BAD_REQUEST, "could not read body"),
    };
    let (mut doc, needs_pow) = if raw {
        let zero_nonce = body.len() >= 8 && body[body.len() - 8..].iter().all(|b| *b == 0);
        (json!({"raw": hex(&body)}), zero_nonce)
    } else {
        let doc: Value = match serde_json::from_slice(&body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return error(StatusCode::BAD_REQUEST, "invalid message: expected a JSON object"),
        };
        let needs_pow = match doc.get("nonce") {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty() || s == "0",
            Some(Value::Number(n)) => n.as_u64() == Some(0),
            Some(_) => false,
        };
        (doc, needs_pow)
    };
    if needs_pow {
        if !state.pow.load(Relaxed) {
            return error(StatusCode::BAD_REQUEST, "proof of work is not enabled on this node; supply a nonce");
        }
        let bits = state.pow_difficulty.load(Relaxed);
        let data = body.clone();
        let nonce = match tokio::task::spawn_blocking(move || pow::mine(&data, bits)).await {
            Ok(n) => n,
            Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "proof of work failed"),
        };
        state.pow_jobs.fetch_add(1, Relaxed);
        if let Value::Object(m) = &mut doc {
            m.insert("nonce".into(), json!(nonce.to_string()));
        }
    }
    let id = hex(&Sha256::new().chain_update(&body).chain_update(doc.to_string()).finalize());
    state.messages.insert(id.clone(), doc);
    state.submissions.fetch_add(1, Relaxed);
    let (body, location) = match api {
        Api::Chrysalis => (json!({"data": {"messageId": id}}), format!("/api/v1/messages/{id}")),
        Api::Stardust => (json!({"blockId": format!("0x{id}")}), format!("/api/core/v2/blocks/{id}")),
    };
    let mut resp = with_status(StatusCode::CREATED, json_body(&body));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

fn milestones(state: &State) -> (u64, u64) {
    let lag = if state.synced.load(Relaxed) { 0 } else { UNSYNCED_LAG };
    (LATEST_MILESTONE, LATEST_MILESTONE - lag)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn min_pow_score(state: &State, default: f64) -> f64 {
    Some(f64::from_bits(state.min_pow_score.load(Relaxed))).filter(|s| *s > 0.0).unwrap_or(default)
}

fn chrysalis_info(state: &State) -> Value {
    let (latest, confirmed) = milestones(state);
    let features: Vec<&str> = if state.pow.load(Relaxed) { vec!["PoW"] } else { vec![] };
    json!({"data": {
        "name": "HORNET", "version": "1.2.4", "isHealthy": state.synced.load(Relaxed),
        "networkId": "chrysalis-mainnet", "bech32HRP": "iota", "minPoWScore": min_pow_score(state, 4000.0),
        "messagesPerSecond": 12.3, "referencedMessagesPerSecond": 11.9, "referencedRate": 96.7,
        "latestMilestoneTimestamp": now_secs(), "latestMilestoneIndex": latest,
        "confirmedMilestoneIndex": confirmed, "pruningIndex": 0, "features": features
    }})
}

fn stardust_info(state: &State) -> Value {
    let (latest, confirmed) = milestones(state);
    let features: Vec<&str> = if state.pow.load(Relaxed) { vec!["pow"] } else { vec![] };
    json!({
        "name": "HORNET", "version": "2.0.2",
        "status": {
            "isHealthy": state.synced.load(Relaxed),
            "latestMilestone": {"index": latest, "timestamp": now_secs()},
            "confirmedMilestone": {"index": confirmed, "timestamp": now_secs()},
            "pruningIndex": 0
        },
        "supportedProtocolVersions": [2],
        "protocol": {"version": 2, "networkName": "shimmer", "bech32Hrp": "smr", "minPowScore": min_pow_score(state, 1500.0)},
        "baseToken": {"name": "Shimmer", "tickerSymbol": "SMR", "unit": "SMR", "decimals": 6},
        "metrics": {"blocksPerSecond": 12.3, "referencedBlocksPerSecond": 11.9, "referencedRate": 96.7},
        "features": features
    })
}

fn tips() -> Vec<String> {
    (0..2).map(|_| format!("{:032x}{:032x}", fastrand::u128(..), fastrand::u128(..))).collect()
}

async fn control(state: &State, rest: &str, req: Request<Incoming>) -> Response<RespBody> {
    match (req.method(), rest) {
        (&Method::GET, "state") => json_ok(serde_json::to_value(state.view()).unwrap_or_default()),
        (&Method::POST, "state") => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return error(StatusCode::BAD_REQUEST, "could not read body"),
            };
            match serde_json::from_slice::<StatePatch>(&body) {
                Ok(patch) => {
                    state.apply(&patch);
                    json_ok(serde_json::to_value(state.view()).unwrap_or_default())
                }
                Err(e) => error(StatusCode::BAD_REQUEST, &format!("bad state patch: {e}")),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "control routes: GET or POST /control/state"),
    }
}

async fn debug(rest: &str, req: Request<Incoming>) -> Result<Response<RespBody>, BoxError> {
    let query = req.uri().query().map(str::to_owned);
    let num = |k: &str| query_value(query.as_deref(), k).and_then(|v| v.parse::<u64>().ok());
    Ok(match rest {
        "headers" => {
            let headers: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            json_ok(json!({
                "method": req.method().as_str(), "uri": req.uri().to_string(),
                "version": format!("{:?}", req.version()), "headers": headers
            }))
        }
        "echo" => {
            let body = req.into_body().map_err(|e| Box::new(e) as BoxError).boxed_unsync();
            Response::new(body)
        }
        "count" => {
            let mut body = req.into_body();
            let (mut n, mut h) = (0u64, Sha256::new());
            while let Some(frame) = body.frame().await {
                if let Ok(d) = frame?.into_data() {
                    n += d.len() as u64;
                    h.update(&d);
                }
            }
            json_ok(json!({"bytes": n, "sha256": hex(&h.finalize())}))
        }
        "bytes" => Response::new(RepeatBody { left: num("n").unwrap_or(0) }.boxed_unsync()),
        "status" => {
            let code = num("code").and_then(|c| StatusCode::from_u16(c as u16).ok()).unwrap_or(StatusCode::OK);
            error(code, "status on request")
        }
        "sleep" => {
            tokio::time::sleep(Duration::from_millis(num("ms").unwrap_or(0))).await;
            json_ok(json!({"slept_ms": num("ms").unwrap_or(0)}))
        }
        "reset" => return Err(Box::new(Reset)),
        // A response that declares `n` bytes, sends `sent` of them, and then, after `ms`, stops
        // sending for good (`stall`) or drops the connection (`cut`): a node that hangs or dies
        // between its headers and the end of its body.
        "stall" | "cut" => {
            let n = num("n").unwrap_or(1000);
            let sent = num("sent").unwrap_or(0).min(n) as usize;
            let body = HalfBody {
                first: (sent > 0).then(|| Bytes::from(vec![b'x'; sent])),
                wait: Box::pin(tokio::time::sleep(Duration::from_millis(num("ms").unwrap_or(20)))),
                cut: rest == "cut",
            };
            let mut r = Response::new(body.boxed_unsync());
            r.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
            r
        }
        "hop-headers" => {
            // Hop-by-hop headers a careless node might send; a proxy must not pass them on.
            let mut r = json_ok(json!({"ok": true}));
            let h = r.headers_mut();
            h.insert("connection", HeaderValue::from_static("x-node-secret"));
            h.insert("x-node-secret", HeaderValue::from_static("internal"));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert("proxy-authenticate", HeaderValue::from_static("Basic realm=\"node\""));
            h.insert("x-node-kept", HeaderValue::from_static("1"));
            r
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "debug routes: headers, echo, count, bytes, status, sleep, reset, stall, cut, hop-headers",
        ),
    })
}

/// The first part of a body, then a wait, then nothing more ever, or an error that drops the
/// connection.
struct HalfBody {
    first: Option<Bytes>,
    wait: Pin<Box<tokio::time::Sleep>>,
    cut: bool,
}

impl Body for HalfBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        std::task::ready!(self.wait.as_mut().poll(cx));
        if self.cut { Poll::Ready(Some(Err(Box::new(Reset)))) } else { Poll::Pending }
    }
}

/// `n` bytes of a repeating pattern, in 64 KiB frames.
struct RepeatBody {
    left: u64,
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        static CHUNK: [u8; 65536] = {
            let mut c = [0u8; 65536];
            let mut i = 0;
            while i < c.len() {
                c[i] = (i % 251) as u8;
                i += 1;
            }
            c
        };
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }
    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
}

fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v.to_owned())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn empty() -> RespBody {
    Full::new(Bytes::new()).map_err(|never| match never {}).boxed_unsync()
}

fn json_body(v: &Value) -> RespBody {
    Full::new(Bytes::from(v.to_string())).map_err(|never| match never {}).boxed_unsync()
}

pub fn with_status(status: StatusCode, body: RespBody) -> Response<RespBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

fn json_ok(v: Value) -> Response<RespBody> {
    let mut r = Response::new(json_body(&v));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: &str) -> Response<RespBody> {
    let mut r = with_status(status, json_body(&json!({"error": {"code": status.as_str(), "message": message}})));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
