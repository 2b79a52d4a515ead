//! What a client connection's requests and its watchdog share: who is on the other end, how it
//! came (scheme, PROXY protocol, client certificate), and the few atomics the watchdog reads to
//! enforce the header, idle and send timeouts (the watchdog itself is `listener::conn`'s).
//!
//! The watchdog sleeps until the next deadline and is not woken per request (that cost 10% of the
//! instructions a proxied request takes, measured by bench/callgrind). Without a wake-up when a
//! new head begins on a kept-alive connection, the watchdog looks again at least every header
//! timeout, so such a slow head is cut off between one and two header timeouts after it began;
//! the first head of a connection is cut off on time.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::http::headers::Forwarding;
use crate::shutdown::Phase;

/// How a client reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// What the connection's watchdog and its requests share.
pub struct ConnState {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The forwarding headers' values for this client, computed once.
    pub forwarding: Forwarding,
    /// HTTPS on TLS listeners.
    pub scheme: Scheme,
    /// On a PROXY protocol listener the PROXY header alone names the client (`peer`): no
    /// forwarding header is read, whoever the balancer names.
    pub proxy_protocol: bool,
    /// The client certificate's holder, on a `[tls.client_auth]` listener (see `client_cert`).
    pub(crate) cert: std::sync::OnceLock<crate::tls::ClientIdentity>,
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch`, plus one, when an unanswered request head began; 0 = none.
    head_since: AtomicU64,
    /// Milliseconds since `epoch` when the last request finished.
    idle_since: AtomicU64,
    pub(crate) h2: AtomicBool,
    /// Milliseconds since `epoch`, plus one, since a write to the client has been waiting for the
    /// client to read; 0 = not waiting.
    write_blocked_since: AtomicU64,
    /// For work that outlives the request (WebSocket tunnels): the server's phase, and a handle that
    /// keeps the server's drain waiting while held.
    pub phase: watch::Receiver<Phase>,
    pub alive: mpsc::Sender<()>,
}

pub(crate) enum WatchVerdict {
    Fine,
    SlowHead,
    /// The client has not read what the gateway is sending for `send_timeout`.
    SlowReader,
    Idle,
}

impl ConnState {
    pub(crate) fn new(
        peer: SocketAddr,
        local: SocketAddr,
        scheme: Scheme,
        proxy_protocol: bool,
        phase: watch::Receiver<Phase>,
        alive: mpsc::Sender<()>,
    ) -> Self {
        ConnState {
            peer,
            local,
            forwarding: Forwarding::new(peer.ip(), scheme.as_str()),
            scheme,
            proxy_protocol,
            cert: std::sync::OnceLock::new(),
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            // A new connection must send its first request head within the header timeout.
            head_since: AtomicU64::new(1),
            idle_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            write_blocked_since: AtomicU64::new(0),
            phase,
            alive,
        }
    }

    /// The verified client certificate's holder, while the client CA in force trusts it.
    pub fn client_cert(&self) -> Option<&crate::tls::ClientIdentity> {
        self.cert.get().filter(|id| id.trusted())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn write_result<T>(&self, res: &Poll<io::Result<T>>) {
        match res {
            Poll::Pending => {
                if self.write_blocked_since.load(Relaxed) == 0 {
                    self.write_blocked_since.store(self.now_ms() + 1, Relaxed);
                }
            }
            Poll::Ready(_) => {
                if self.write_blocked_since.load(Relaxed) != 0 {
                    self.write_blocked_since.store(0, Relaxed);
                }
            }
        }
    }

    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.head_since.store(0, Relaxed);
    }

    pub fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.idle_since.store(self.now_ms(), Relaxed);
        }
    }

    pub(crate) fn bytes_read(&self) {
        // HTTP/2 frames (pings, window updates) arrive between requests: only HTTP/1 bytes read on
        // an idle connection mean a new request head has begun.
        if self.in_flight.load(Relaxed) == 0 && self.head_since.load(Relaxed) == 0 && !self.h2.load(Relaxed) {
            self.head_since.store(self.now_ms() + 1, Relaxed);
        }
    }

    /// When the watchdog should look next. Without a head in progress it looks again within one
    /// header timeout, since a new head may begin at any moment without telling it.
    pub(crate) fn deadline(&self, t: &Timeouts) -> Instant {
        let ms = |v: u64| self.epoch + Duration::from_millis(v);
        let soon = Instant::now() + t.header;
        if self.in_flight.load(Relaxed) > 0 {
            return match self.write_blocked_since.load(Relaxed) {
                0 => soon,
                since => (ms(since - 1) + t.send).min(soon),
            };
        }
        match self.head_since.load(Relaxed) {
            0 => (ms(self.idle_since.load(Relaxed)) + t.idle).min(soon),
            since => ms(since - 1) + t.header,
        }
    }

    pub(crate) fn verdict(&self, t: &Timeouts) -> WatchVerdict {
        let now = Instant::now();
        let ms = |v: u64| self.epoch + Duration::from_millis(v);
        if self.in_flight.load(Relaxed) > 0 {
            return match self.write_blocked_since.load(Relaxed) {
                since if since > 0 && now >= ms(since - 1) + t.send => WatchVerdict::SlowReader,
                _ => WatchVerdict::Fine,
            };
        }
        match self.head_since.load(Relaxed) {
            0 if now >= ms(self.idle_since.load(Relaxed)) + t.idle => WatchVerdict::Idle,
            0 => WatchVerdict::Fine,
            since if now >= ms(since - 1) + t.header => WatchVerdict::SlowHead,
            _ => WatchVerdict::Fine,
        }
    }
}

#[derive(Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
    /// Longest a response may wait for the client to read.
    pub send: Duration,
}
