//! What the gateway tells the rest of the program about clients: each refusal as a typed event on
//! an in-process broadcast channel (the ban engine's input). Sending never blocks a request: with
//! no listener the event is dropped, and a listener that falls behind loses the oldest events
//! (and is told how many).

use std::net::IpAddr;
use std::time::SystemTime;

use tokio::sync::broadcast;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// `[access]` or a route's allow/deny.
    AddressDenied,
    /// A malformed request: path, method, headers, forwarding chain.
    BadRequest,
    /// No credential on a `key`/`admin` route, or one that matched nothing.
    CredentialMissing,
    /// A valid credential without the role the route needs.
    CredentialNotEnough,
    /// A route no rule or profile exposes.
    NotExposed,
    /// Over a rate limit or the in-flight cap.
    RateLimited,
    /// The node refused a gRPC call as the client's fault (`grpc-status` 3, 5, 6, 7, 9, 11, 16).
    NodeRefused,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 7] = [
        RefusalReason::AddressDenied,
        RefusalReason::BadRequest,
        RefusalReason::CredentialMissing,
        RefusalReason::CredentialNotEnough,
        RefusalReason::NotExposed,
        RefusalReason::RateLimited,
        RefusalReason::NodeRefused,
    ];

    /// As `[[jail]] reasons` names it.
    pub fn name(self) -> &'static str {
        match self {
            RefusalReason::AddressDenied => "address-denied",
            RefusalReason::BadRequest => "bad-request",
            RefusalReason::CredentialMissing => "credential-missing",
            RefusalReason::CredentialNotEnough => "credential-not-enough",
            RefusalReason::NotExposed => "not-exposed",
            RefusalReason::RateLimited => "rate-limited",
            RefusalReason::NodeRefused => "node-refused",
        }
    }
}

/// One refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub client: IpAddr,
    pub reason: RefusalReason,
    /// The request's path as sent (at most 256 bytes).
    pub route: String,
    pub time: SystemTime,
}

/// The sending side, shared by every request; `subscribe` for the receiving side.
#[derive(Clone)]
pub struct Refusals(broadcast::Sender<Refusal>);

impl Default for Refusals {
    fn default() -> Self {
        Refusals(broadcast::channel(4096).0)
    }
}

impl Refusals {
    pub fn send(&self, client: IpAddr, reason: RefusalReason, path: &str) {
        if self.0.receiver_count() == 0 {
            return;
        }
        let mut end = path.len().min(256);
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        let event = Refusal { client, reason, route: path[..end].to_owned(), time: SystemTime::now() };
        let _ = self.0.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Refusal> {
        self.0.subscribe()
    }
}
