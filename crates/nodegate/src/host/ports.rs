//! What the ports of a node host are, in node terms, and which of them may face the internet.
//! Sources: iota-node's defaults (IOTA Rebased: fullnode.yaml and validator.yaml), Hornet's and
//! Bee's config defaults, Wasp's.

use crate::procnet::Proto;

/// How a port may be exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Made to face the internet (peer-to-peer, gossip, consensus).
    Public,
    /// A node API: public through the gateway, never beside it.
    Api,
    /// Must never face the internet; a finding of this severity when it does.
    Private(Severity),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// A port some node software uses.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    pub port: u16,
    pub proto: Proto,
    /// A stable name for finding ids: `iota-admin`, `hornet-inx`, ...
    pub id: &'static str,
    /// What it is, as an operator would say it.
    pub what: &'static str,
    pub exposure: Exposure,
    /// What an attacker can do with it when exposed (for Private ports).
    pub risk: &'static str,
}

const fn k(
    port: u16,
    proto: Proto,
    id: &'static str,
    what: &'static str,
    exposure: Exposure,
    risk: &'static str,
) -> Known {
    Known { port, proto, id, what, exposure, risk }
}

use Exposure::{Api, Private, Public};
use Proto::{Tcp, Udp};
use Severity::{Critical, Warning};

pub const KNOWN: &[Known] = &[
    // IOTA Rebased (iota-node).
    k(9000, Tcp, "iota-jsonrpc", "iota-node JSON-RPC API", Api, ""),
    k(
        9184,
        Tcp,
        "iota-metrics",
        "iota-node metrics (Prometheus)",
        Private(Warning),
        "anyone can read the node's internals and load",
    ),
    k(
        1337,
        Tcp,
        "iota-admin",
        "iota-node admin interface",
        Private(Critical),
        "anyone can change the node's logging and close epochs",
    ),
    k(8084, Udp, "iota-p2p", "iota-node P2P (state sync)", Public, ""),
    k(50051, Tcp, "iota-grpc", "iota-node gRPC API", Api, ""),
    k(8000, Tcp, "iota-graphql", "IOTA GraphQL RPC", Api, ""),
    k(8080, Tcp, "iota-validator-network", "iota-node validator network", Public, ""),
    k(8081, Udp, "iota-validator-primary", "iota-node validator consensus", Public, ""),
    // Hornet and Bee (legacy IOTA).
    k(14265, Tcp, "hornet-api", "Hornet/Bee REST API", Api, ""),
    k(15600, Tcp, "hornet-gossip", "Hornet/Bee gossip", Public, ""),
    k(14626, Udp, "hornet-autopeering", "Hornet/Bee autopeering", Public, ""),
    k(
        8081,
        Tcp,
        "hornet-dashboard",
        "Hornet dashboard (or an iota-node validator's primary port)",
        Private(Warning),
        "anyone can try the dashboard's login and see the node's peers",
    ),
    k(
        9311,
        Tcp,
        "hornet-metrics",
        "Hornet/Bee Prometheus metrics",
        Private(Warning),
        "anyone can read the node's internals and load",
    ),
    k(
        6060,
        Tcp,
        "hornet-profiling",
        "Hornet profiling (pprof)",
        Private(Critical),
        "anyone can dump the node's memory profile and stall it with CPU profiles",
    ),
    k(
        9029,
        Tcp,
        "hornet-inx",
        "Hornet INX (extensions)",
        Private(Critical),
        "anyone can act as an extension: read everything and submit blocks as the node",
    ),
    k(1883, Tcp, "hornet-mqtt", "Hornet/Bee MQTT events", Api, ""),
    // Wasp (IOTA EVM).
    k(9090, Tcp, "wasp-api", "Wasp API (IOTA EVM)", Api, ""),
    k(4000, Tcp, "wasp-peering", "Wasp peering", Public, ""),
];

/// What is known of `port`/`proto`; `process` (the owner's name, when readable) tells apart ports
/// two programs share (8081: Hornet's dashboard or an iota-node validator).
pub fn known(port: u16, proto: Proto, process: Option<&str>) -> Option<&'static Known> {
    let mut all = KNOWN.iter().filter(|k| k.port == port && k.proto == proto);
    let first = all.next()?;
    if port == 8081 && proto == Tcp && process.is_some_and(|p| p.contains("iota")) {
        return Some(&VALIDATOR_8081_TCP);
    }
    Some(first)
}

const VALIDATOR_8081_TCP: Known = k(8081, Tcp, "iota-validator-primary", "iota-node validator primary", Public, "");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_known_by_number_protocol_and_owner() {
        assert_eq!(known(1337, Tcp, None).unwrap().exposure, Private(Critical));
        assert!(known(1337, Udp, None).is_none());
        assert_eq!(known(8081, Tcp, Some("hornet")).unwrap().id, "hornet-dashboard");
        assert_eq!(known(8081, Tcp, Some("iota-node")).unwrap().exposure, Public);
        assert_eq!(known(8084, Udp, None).unwrap().exposure, Public);
        // Every id is unique per (port, protocol): finding ids are stable.
        for a in KNOWN {
            assert_eq!(KNOWN.iter().filter(|b| b.port == a.port && b.proto == a.proto).count(), 1, "{}", a.id);
        }
    }
}
