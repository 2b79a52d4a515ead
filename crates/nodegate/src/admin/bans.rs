//! The ban endpoints of the admin API, and the remote firewall API that iota-node's traffic
//! controller calls (`remote-fw-url`):
//!
//! - `GET /bans`: the bans in force.
//! - `POST /bans` `{"address": "203.0.113.7" | "2001:db8::/64", "for": "1h", "reason": "..."}`.
//! - `GET /bans/ADDR`: why ADDR is banned (the events, expiry, escalation step), or was.
//! - `DELETE /bans/ADDR`: lifts the ban on ADDR (an address or a network as listed).
//! - `POST /block_addresses` `{"addresses": [{"source_address", "destination_port", "ttl"}]}` and
//!   `GET /list_addresses`: iota-node's format (ttl in seconds). A node behind the gateway sees
//!   the gateway's own loopback address as a client: loopback is never banned this way.
//!
//! Changes are accepted from a loopback peer, or with an `admin` credential.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Response, StatusCode};
use ipnet::IpNet;
use serde::Deserialize;

use crate::bans::engine::Jails;
use crate::bans::list::{BanList, Decision, unix_now};
use crate::bans::rails::Rails;
use crate::body::{ProxyBody, json_error};

/// What the admin API knows of bans.
#[derive(Clone)]
pub struct BanAdmin {
    pub list: Arc<BanList>,
    /// `None` without `[bans]`: nothing is refused but what is malformed.
    pub rails: Option<Arc<Rails>>,
    /// `None` without `[bans]`.
    pub jails: Option<Arc<Jails>>,
    pub firewall: Option<Arc<crate::bans::nft::FirewallState>>,
}

/// The longest ban the API takes (ten years): a typo must not overflow anything.
const LONGEST: Duration = Duration::from_secs(10 * 365 * 86_400);

pub fn json(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn shown(d: &Decision, left: Option<Duration>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "net": d.net.to_string(),
        "until": rfc3339(d.until),
        "jail": d.jail,
        "reason": d.reason,
        "step": d.step,
    });
    if let Some(left) = left {
        v["remaining_seconds"] = left.as_secs().into();
    }
    v
}

/// An address (`203.0.113.7`, `::ffff:1.2.3.4`) as its network, or an IPv6 /64 or /48: the
/// networks a ban can be on.
fn net_of(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(IpNet::from(ip.to_canonical()));
    }
    let net = s.parse::<IpNet>().ok()?.trunc();
    let fits = matches!((net, net.prefix_len()), (IpNet::V4(_), 32) | (IpNet::V6(_), 128 | 64 | 48));
    fits.then_some(net)
}

const NOT_A_BAN: &str = "is not an address, an IPv6 /64 or an IPv6 /48 (what a ban can be on)";

impl BanAdmin {
    /// Answers the ban routes; `None` for any other path.
    pub async fn handle(&self, method: &Method, path: &str, trusted: bool, body: &[u8]) -> Option<Response<ProxyBody>> {
        let changes = matches!(*method, Method::POST | Method::DELETE);
        let ours =
            path == "/bans" || path.starts_with("/bans/") || path == "/block_addresses" || path == "/list_addresses";
        if !ours {
            return None;
        }
        if changes && !trusted {
            return Some(json_error(
                StatusCode::FORBIDDEN,
                "ban changes are accepted from loopback or with an admin credential only",
            ));
        }
        Some(match (method, path) {
            (&Method::GET, "/bans") => {
                let bans: Vec<_> = self.list.active().iter().map(|(d, left)| shown(d, Some(*left))).collect();
                json(StatusCode::OK, &serde_json::json!({"count": bans.len(), "bans": bans}))
            }
            (&Method::POST, "/bans") => self.add(body).await,
            (&Method::GET, "/list_addresses") => {
                let addresses: Vec<_> = self
                    .list
                    .active()
                    .iter()
                    .map(|(d, left)| {
                        let source = if d.net.prefix_len() == d.net.max_prefix_len() {
                            d.net.addr().to_string()
                        } else {
                            d.net.to_string()
                        };
                        serde_json::json!({"source_address": source, "destination_port": 0, "ttl": left.as_secs()})
                    })
                    .collect();
                json(StatusCode::OK, &serde_json::json!({"addresses": addresses}))
            }
            (&Method::POST, "/block_addresses") => self.block_addresses(body).await,
            (m, p) if p.starts_with("/bans/") => {
                let raw = percent_encoding::percent_decode_str(&p["/bans/".len()..]).decode_utf8_lossy().into_owned();
                let Some(net) = net_of(&raw) else {
                    return Some(json_error(StatusCode::BAD_REQUEST, &format!("`{raw}` {NOT_A_BAN}")));
                };
                match *m {
                    Method::GET => self.why(net),
                    Method::DELETE => {
                        if self.list.unban(net).await {
                            tracing::info!(%net, "ban lifted by the operator");
                            json(StatusCode::OK, &serde_json::json!({"removed": net.to_string()}))
                        } else {
                            json_error(
                                StatusCode::NOT_FOUND,
                                &format!("{net} is not banned (see GET /bans for the networks banned)"),
                            )
                        }
                    }
                    _ => json_error(StatusCode::METHOD_NOT_ALLOWED, "GET or DELETE /bans/ADDR"),
                }
            }
            _ => json_error(StatusCode::METHOD_NOT_ALLOWED, "GET /bans, POST /bans, GET|DELETE /bans/ADDR"),
        })
    }

    async fn add(&self, body: &[u8]) -> Response<ProxyBody> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Add {
            address: String,
            #[serde(default, rename = "for")]
            duration: Option<String>,
            #[serde(default)]
            reason: Option<String>,
        }
        let add: Add = match serde_json::from_slice(body) {
            Ok(a) => a,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "body: {e}; expected {{\"address\": \"203.0.113.7\", \"for\": \"1h\", \"reason\": \"...\"}}"
                    ),
                );
            }
        };
        let Some(net) = net_of(&add.address) else {
            return json_error(StatusCode::BAD_REQUEST, &format!("`{}` {NOT_A_BAN}", add.address));
        };
        let duration = match add.duration.as_deref().map(crate::config::units::parse_duration) {
            None => Duration::from_secs(3600),
            Some(Ok(d)) if !d.is_zero() && d <= LONGEST => d,
            Some(Ok(_)) => return json_error(StatusCode::BAD_REQUEST, "`for` must be above 0 and at most 10 years"),
            Some(Err(e)) => return json_error(StatusCode::BAD_REQUEST, &format!("`for`: {e}")),
        };
        let reason = add.reason.unwrap_or_else(|| "added by the operator".into());
        match self.impose(net, duration, "manual", &reason[..reason.len().min(240)]).await {
            Ok(d) => json(StatusCode::CREATED, &shown(&d, Some(duration))),
            Err(resp) => resp,
        }
    }

    async fn impose(
        &self,
        net: IpNet,
        duration: Duration,
        jail: &str,
        reason: &str,
    ) -> Result<Decision, Response<ProxyBody>> {
        if let Some(why) = match &self.rails {
            Some(r) => r.refuse(&net).await,
            None => None,
        } {
            return Err(json_error(StatusCode::CONFLICT, &why));
        }
        let d = Decision {
            net,
            until: unix_now() + duration.as_secs().max(1),
            jail: jail.into(),
            reason: reason.into(),
            step: 0,
            events: Vec::new(),
            by: self.list.id().to_owned(),
            removed: false,
        };
        if self.list.ban(d.clone()).await {
            tracing::warn!(%net, ?duration, jail, reason, "banned");
        }
        Ok(d)
    }

    async fn block_addresses(&self, body: &[u8]) -> Response<ProxyBody> {
        #[derive(Deserialize)]
        struct Block {
            source_address: String,
            #[allow(dead_code)]
            #[serde(default)]
            destination_port: u16,
            ttl: u64,
        }
        #[derive(Deserialize)]
        struct Blocks {
            addresses: Vec<Block>,
        }
        let blocks: Blocks = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("body: {e}")),
        };
        let mut refused = Vec::new();
        for b in blocks.addresses {
            // iota-node writes a socket address for a connection, an address for a proxied client.
            let addr = b.source_address.parse::<SocketAddr>().map(|s| s.ip().to_string()).unwrap_or(b.source_address);
            let Some(net) = net_of(&addr) else {
                return json_error(StatusCode::BAD_REQUEST, &format!("`{addr}` is not an address"));
            };
            if net.network().to_canonical().is_loopback() || net.network().is_unspecified() {
                refused.push(format!("{net}: loopback is the gateway itself, never banned from a node's report"));
                continue;
            }
            let ttl = Duration::from_secs(b.ttl.clamp(1, LONGEST.as_secs()));
            if let Err(resp) = self.impose(net, ttl, "remote-fw", "reported by the node's traffic controller").await {
                let _ = resp;
                refused.push(format!("{net}: protected by the safety rails"));
            }
        }
        for r in &refused {
            tracing::warn!("remote firewall report not applied: {r}");
        }
        json(StatusCode::CREATED, &serde_json::json!({"created": true, "refused": refused}))
    }

    fn why(&self, net: IpNet) -> Response<ProxyBody> {
        let (running, past) = self.list.why(net.network());
        let show = |d: &Decision, left: Option<Duration>| {
            let mut v = shown(d, left);
            v["events"] = serde_json::to_value(&d.events).unwrap_or_default();
            v
        };
        let bans: Vec<_> = running.iter().map(|(d, left)| show(d, Some(*left))).collect();
        let past: Vec<_> = past.iter().map(|d| show(d, None)).collect();
        json(
            StatusCode::OK,
            &serde_json::json!({"address": net.to_string(), "banned": !bans.is_empty(), "bans": bans, "past": past}),
        )
    }

    /// The first `n` bans in force, as `GET /bans` shows them.
    pub fn listed(&self, n: usize) -> serde_json::Value {
        self.list.active().iter().take(n).map(|(d, left)| shown(d, Some(*left))).collect()
    }

    /// `/status`'s `bans` section.
    pub fn status(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "active": self.list.len(),
            "jails": self.jails.iter().flat_map(|j| j.stats()).map(|j| j.json()).collect::<Vec<_>>(),
        });
        if let Some(fw) = &self.firewall {
            v["firewall"] = fw.json();
        }
        v
    }
}
