//! Every answer the gateway produces itself, in one place: one variant, one status, one JSON body in
//! the node API's own error shape `{"error":{"code":"502","message":"..."}}` (made into a response
//! by `body::answer`).

use std::time::Duration;

use http::StatusCode;

use crate::pipeline::rate_limit::LimitPolicy;
use http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};

/// The messages are what a client reads: they never name a node (its name is internal; the access
/// log and the debug log carry it).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("your address may not use this gateway")]
    AddressDenied,
    /// A ban is in force: refused, but not a new refusal (it would feed the jail that banned it).
    #[error("your address is banned here for a while")]
    Banned,
    #[error("bad request: {0}")]
    BadPath(crate::pipeline::canonical_path::PathError),
    #[error("this route needs a valid credential")]
    CredentialMissing,
    #[error("your credential does not open this route")]
    CredentialNotEnough,
    #[error("this route is not exposed here")]
    NotExposed,
    #[error("request headers are larger than the {limit} bytes allowed")]
    HeadersTooLarge { limit: usize },
    #[error("request body is larger than the {limit} bytes allowed")]
    BodyTooLarge { limit: u64 },
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("bad request: a trusted proxy sent a forwarding header that names no client address")]
    BrokenForwardingChain,
    #[error("the node could not be reached")]
    NodeUnreachable { node: String },
    #[error("the node did not accept a connection within {0:?}", .timeout)]
    NodeConnectTimeout { node: String, timeout: Duration },
    #[error("the node did not answer within {0:?}", .timeout)]
    NodeResponseTimeout { node: String, timeout: Duration },
    #[error("the node closed the connection without an answer")]
    NodeReset { node: String },
    #[error("the node sent an invalid answer: {what}")]
    NodeBadAnswer { node: String, what: &'static str },
    #[error("the client stopped sending its request body")]
    ClientBodyAborted,
    #[error("the request body arrived too slowly")]
    BodyTooSlow,
    #[error("too many requests in flight from you: at most {limit} at once")]
    TooManyInFlight { limit: usize },
    #[error("this gateway proxies GET, HEAD, POST, PUT, DELETE, OPTIONS and PATCH only")]
    MethodNotAllowed,
    #[error("{}: try again in {1} s", policy_text(.policy), retry_after_secs(.retry_after))]
    RateLimited { retry_after: Duration, limit: crate::pipeline::rate_limit::Limit, policy: LimitPolicy },
    #[error("no node is available")]
    NoNode,
    #[error("the nodes are busy: try again shortly")]
    NodeBusy,
    #[error("remote proof of work is not offered here: send the message with its nonce")]
    NoPowNode,
    /// A JSON-RPC body that is not a request the method policy can judge.
    #[error("{}", rpc_text(.0))]
    Rpc(crate::pipeline::jsonrpc::Invalid),
    #[error("this method is not exposed here")]
    MethodNotExposed,
    #[error("eth_getLogs may ask for at most {max} blocks here: narrow fromBlock and toBlock")]
    LogsRange { max: u64 },
    #[error("at most {limit} live subscriptions per client")]
    TooManySubscriptions { limit: u32 },
    #[error("at most {limit} open streams per client")]
    TooManyStreams { limit: usize },
    #[error(
        "the proof of work scores {score:.0}, below the {min:.0} the nodes require: do more work, or send it without a nonce where remote PoW is offered"
    )]
    PowScoreTooLow { score: f64, min: f64 },
}

fn rpc_text(why: &crate::pipeline::jsonrpc::Invalid) -> String {
    use crate::pipeline::jsonrpc::Invalid;
    match why {
        Invalid::Parse => "parse error: the body is not JSON".into(),
        Invalid::Request(why) => format!("invalid request: {why}"),
        Invalid::BatchRefused => "Batched requests are not supported by this server".into(),
        Invalid::BatchSize => "batch too long (or empty)".into(),
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            AddressDenied | Banned => StatusCode::FORBIDDEN,
            BadPath(_) => StatusCode::BAD_REQUEST,
            CredentialMissing => StatusCode::UNAUTHORIZED,
            CredentialNotEnough => StatusCode::FORBIDDEN,
            NotExposed => StatusCode::NOT_FOUND,
            HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BadRequest(_) | BrokenForwardingChain | ClientBodyAborted => StatusCode::BAD_REQUEST,
            NodeUnreachable { .. } | NodeReset { .. } | NodeBadAnswer { .. } => StatusCode::BAD_GATEWAY,
            NodeConnectTimeout { .. } | NodeResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RateLimited { .. } | TooManyInFlight { .. } => StatusCode::TOO_MANY_REQUESTS,
            BodyTooSlow => StatusCode::REQUEST_TIMEOUT,
            NoNode | NoPowNode | NodeBusy => StatusCode::SERVICE_UNAVAILABLE,
            Rpc(_) => StatusCode::BAD_REQUEST,
            MethodNotExposed => StatusCode::NOT_FOUND,
            LogsRange { .. } => StatusCode::BAD_REQUEST,
            TooManySubscriptions { .. } | TooManyStreams { .. } => StatusCode::TOO_MANY_REQUESTS,
            PowScoreTooLow { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// This answer as a JSON-RPC error object, with the call's id (its JSON text as the envelope
    /// reader checked it; `null` when it was not read).
    pub fn rpc_json(&self, id: Option<&str>) -> String {
        let id = id.unwrap_or("null");
        let message = serde_json::to_string(&self.to_string()).unwrap_or_else(|_| "\"error\"".into());
        format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{},"message":{message}}}}}"#, self.rpc_code())
    }

    /// The limit a refusal for being over one names (`/metrics`' `limit` label).
    pub fn limit_name(&self) -> Option<&'static str> {
        match self {
            GatewayError::RateLimited { policy, .. } => Some(policy.as_str()),
            GatewayError::TooManyInFlight { .. } => Some("in-flight"),
            GatewayError::TooManyStreams { .. } => Some("streams"),
            GatewayError::TooManySubscriptions { .. } => Some("subscriptions"),
            _ => None,
        }
    }

    /// The gRPC status of this answer on a gRPC route (grpc/grpc's status codes).
    pub fn grpc_status(&self) -> u16 {
        use GatewayError::*;
        match self {
            CredentialMissing => 16,                                // UNAUTHENTICATED
            CredentialNotEnough | AddressDenied | Banned => 7,      // PERMISSION_DENIED
            MethodNotExposed | NotExposed | MethodNotAllowed => 12, // UNIMPLEMENTED
            RateLimited { .. }
            | TooManyInFlight { .. }
            | TooManySubscriptions { .. }
            | TooManyStreams { .. }
            | NodeBusy => 8, // RESOURCE_EXHAUSTED
            NodeConnectTimeout { .. } | NodeResponseTimeout { .. } => 4, // DEADLINE_EXCEEDED
            NoNode | NoPowNode | NodeUnreachable { .. } | NodeReset { .. } | NodeBadAnswer { .. } => 14, // UNAVAILABLE
            BodyTooLarge { .. } => 8,
            _ => 3, // INVALID_ARGUMENT
        }
    }

    /// The JSON-RPC error code of this answer on a JSON-RPC route: the standard codes where one
    /// fits (-32700 parse, -32600 invalid request, -32601 method not found), jsonrpsee's where
    /// iota-node uses them (-32005 batches refused, -32009 server busy, -32010 batch too big), and
    /// -32001 (a credential is needed), -32003 (refused: address, ban, credential's role) and
    /// -32000 (no node answered) for the rest.
    pub fn rpc_code(&self) -> i64 {
        use crate::pipeline::jsonrpc::Invalid;
        use GatewayError::*;
        match self {
            Rpc(Invalid::Parse) => -32700,
            Rpc(Invalid::Request(_)) | BadRequest(_) | BadPath(_) | BrokenForwardingChain | HeadersTooLarge { .. } => {
                -32600
            }
            Rpc(Invalid::BatchRefused) => -32005,
            LogsRange { .. } => -32602,
            Rpc(Invalid::BatchSize) | BodyTooLarge { .. } => -32010,
            MethodNotExposed | NotExposed | MethodNotAllowed => -32601,
            CredentialMissing => -32001,
            AddressDenied | Banned | CredentialNotEnough => -32003,
            RateLimited { .. }
            | TooManyInFlight { .. }
            | NodeBusy
            | TooManySubscriptions { .. }
            | TooManyStreams { .. } => -32009,
            _ => -32000,
        }
    }

    /// What a refusal of the client (the ban engine's input) is reported as; `None` for what is
    /// not a refusal (the node's failures, a client that went away).
    pub fn refusal_reason(&self) -> Option<crate::events::RefusalReason> {
        use crate::events::RefusalReason as R;
        use GatewayError::*;
        Some(match self {
            AddressDenied => R::AddressDenied,
            BadPath(_) | BadRequest(_) | BrokenForwardingChain | MethodNotAllowed | HeadersTooLarge { .. } => {
                R::BadRequest
            }
            CredentialMissing => R::CredentialMissing,
            CredentialNotEnough => R::CredentialNotEnough,
            NotExposed | MethodNotExposed => R::NotExposed,
            Rpc(_) | LogsRange { .. } | PowScoreTooLow { .. } => R::BadRequest,
            RateLimited { .. } | TooManyInFlight { .. } | TooManySubscriptions { .. } | TooManyStreams { .. } => {
                R::RateLimited
            }
            _ => return None,
        })
    }

    /// Whether this counts against the node in passive health (not the client's doing).
    pub fn is_node_fault(&self) -> bool {
        use GatewayError::*;
        matches!(
            self,
            NodeUnreachable { .. }
                | NodeConnectTimeout { .. }
                | NodeResponseTimeout { .. }
                | NodeReset { .. }
                | NodeBadAnswer { .. }
        )
    }

    /// The headers this answer carries beside its status and JSON body.
    pub fn add_headers(&self, headers: &mut http::HeaderMap) {
        match self {
            GatewayError::NoNode | GatewayError::NoPowNode => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
            }
            GatewayError::RateLimited { retry_after, limit, policy } => {
                let secs = retry_after_secs(retry_after);
                headers.insert(RETRY_AFTER, HeaderValue::from(secs));
                rate_limit_headers(headers, *policy, policy_header(*policy, *limit), 0, *retry_after);
            }
            GatewayError::TooManyInFlight { .. } | GatewayError::NodeBusy => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::BodyTooSlow => {
                headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            GatewayError::MethodNotAllowed => {
                headers.insert(http::header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
            }
            GatewayError::CredentialMissing => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"nodegate\""));
            }
            _ => {}
        }
    }
}

/// What a `405` offers instead.
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH";

fn policy_text(policy: &LimitPolicy) -> &'static str {
    match policy {
        LimitPolicy::Route => "too many requests to this route",
        LimitPolicy::Pow => "remote proof of work budget used up",
        LimitPolicy::PerClient => "too many requests",
        LimitPolicy::Method => "too many calls of this method",
    }
}

fn retry_after_secs(d: &Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `RateLimit-Policy` and `RateLimit` (IETF httpapi ratelimit headers draft): the quota (burst)
/// and its window, what is left, and in how many seconds more is available.
/// `policy_value` is [`policy_header`]'s, which callers on the hot path make once per limit.
pub fn rate_limit_headers(
    headers: &mut http::HeaderMap,
    policy: LimitPolicy,
    policy_value: HeaderValue,
    remaining: u32,
    reset: Duration,
) {
    headers.insert(&RATELIMIT_POLICY, policy_value);
    headers.insert(&RATELIMIT, remaining_header(policy, remaining, reset));
}

static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

// Written by hand: `format!` for these two cost 4,300 instructions a request (bench/callgrind), a
// tenth of a whole proxied request; the policy's value is also made once per limit by the proxy.

/// `"policy";q=<burst>;w=<seconds for a full burst>`.
pub fn policy_header(policy: LimitPolicy, limit: crate::pipeline::rate_limit::Limit) -> HeaderValue {
    let window = (limit.interval * limit.burst).as_secs().max(1);
    header_value(policy, &[("q", u64::from(limit.burst)), ("w", window)])
}

/// `"policy";r=<remaining>;t=<seconds until more is available>`.
fn remaining_header(policy: LimitPolicy, remaining: u32, reset: Duration) -> HeaderValue {
    header_value(policy, &[("r", u64::from(remaining)), ("t", retry_after_secs(&reset))])
}

fn header_value(policy: LimitPolicy, parts: &[(&str, u64)]) -> HeaderValue {
    let mut v = Vec::with_capacity(48);
    v.push(b'"');
    v.extend(policy.as_str().bytes().filter(|b| b.is_ascii_alphanumeric() || *b == b'-'));
    v.push(b'"');
    for (key, n) in parts {
        v.push(b';');
        v.extend_from_slice(key.as_bytes());
        v.push(b'=');
        push_decimal(&mut v, *n);
    }
    // Only token characters, digits and punctuation went in: always a valid value.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).unwrap_or(HeaderValue::from_static("\"\""))
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The JSON body of an error in the node API's shape.
pub fn json_text(status: StatusCode, message: &str) -> String {
    serde_json::json!({"error": {"code": status.as_str(), "message": message}}).to_string()
}
