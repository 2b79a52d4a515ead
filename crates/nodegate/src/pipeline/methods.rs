//! JSON-RPC and gRPC method policy: `[[method]]` rules (first match wins), then the node
//! profile's defaults, then deny. A name is exact (`iota_getObject`,
//! `/iota.grpc.v1.LedgerService/GetObject`) or a pattern where `*` matches any run of characters
//! (`unsafe_*`, `/iota.grpc.*/Simulate*`), case-sensitive as the names are. Each rule says who may call (public, key, admin, deny),
//! what a call costs against the per-client budget, and optionally its own per-client rate.
//!
//! iota-rebased's defaults, from iota-node's API (crates/iota-json-rpc-api): point reads cost 1;
//! scans, pages and multi-gets 5; executing, dry-running, dev-inspecting and viewing transactions
//! 10, with their own rate (2/s, burst 4, per client, shared by the four); the transaction
//! builders (`unsafe_*`) need a key; `iota_tryGetObjectBeforeVersion` (internal) and every method
//! not listed are denied.

use super::rate_limit::Limit;
use super::route_policy::Access;
use crate::profile::Profile;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodRule {
    pub pattern: String,
    pub access: Access,
    pub cost: u32,
    /// This method's own per-client limit, kept by limiter `limiter`.
    pub limit: Option<Limit>,
    /// Which per-method limiter counts calls (rules with a limit have one; defaults may share).
    pub limiter: Option<usize>,
}

impl MethodRule {
    fn matches(&self, method: &str) -> bool {
        glob(self.pattern.as_bytes(), method.as_bytes())
    }
}

/// `*` matches any run of characters (none included); everything else matches itself.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let Some(star) = pattern.iter().position(|b| *b == b'*') else { return pattern == name };
    let (head, rest) = (&pattern[..star], &pattern[star + 1..]);
    if !name.starts_with(head) {
        return false;
    }
    let name = &name[head.len()..];
    if rest.is_empty() {
        return true;
    }
    (0..=name.len()).any(|i| glob(rest, &name[i..]))
}

/// FNV-1a, for the exact-name table: its keys are the config's, so a client's names cannot crowd
/// one bucket (what SipHash guards against), and a method name hashes in a third of SipHash's
/// instructions (bench/callgrind RPC=policy).
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MethodPolicy {
    rules: Vec<MethodRule>,
    defaults: Vec<MethodRule>,
    /// How many per-method limiters the rules use.
    limiters: usize,
    /// Exact names -> the first rule (configured, then defaults) with that name.
    exact: std::collections::HashMap<String, usize, std::hash::BuildHasherDefault<Fnv>>,
    /// The rules with a `*`, by position: the few a name must be tried against one by one.
    wild: Vec<usize>,
}

/// Point reads: one object, transaction, checkpoint or setting.
const POINT_READS: &[&str] = &[
    "iota_getObject",
    "iota_getTransactionBlock",
    "iota_tryGetPastObject",
    "iota_getCheckpoint",
    "iota_getEvents",
    "iota_getTotalTransactionBlocks",
    "iota_getLatestCheckpointSequenceNumber",
    "iota_getProtocolConfig",
    "iota_getChainIdentifier",
    "iota_getMoveFunctionArgTypes",
    "iota_getNormalizedMoveModulesByPackage",
    "iota_getNormalizedMoveModule",
    "iota_getNormalizedMoveStruct",
    "iota_getNormalizedMoveFunction",
    "iotax_getBalance",
    "iotax_getCoinMetadata",
    "iotax_getTotalSupply",
    "iotax_getStakesByIds",
    "iotax_getStakes",
    "iotax_getTimelockedStakesByIds",
    "iotax_getTimelockedStakes",
    "iotax_getCommitteeInfo",
    "iotax_getLatestIotaSystemState",
    "iotax_getReferenceGasPrice",
    "iotax_getValidatorsApy",
    "iotax_getDynamicFieldObject",
    "iotax_getLatestBridge",
    "iotax_getBridgeObjectInitialSharedVersion",
    "iotax_getCurrentEpoch",
    "iotax_getTotalTransactions",
];

/// Scans, pages (up to 50 results) and multi-gets.
const SCANS: &[&str] = &[
    "iota_multiGetTransactionBlocks",
    "iota_multiGetObjects",
    "iota_tryMultiGetPastObjects",
    "iota_getCheckpoints",
    "iotax_getCoins",
    "iotax_getAllCoins",
    "iotax_getAllBalances",
    "iotax_getOwnedObjects",
    "iotax_queryTransactionBlocks",
    "iotax_queryEvents",
    "iotax_getDynamicFields",
    "iotax_getEpochs",
    "iotax_getEpochMetrics",
    "iotax_getNetworkMetrics",
    "iotax_getMoveCallMetrics",
    "iotax_getLatestAddressMetrics",
    "iotax_getCheckpointAddressMetrics",
    "iotax_getAllEpochAddressMetrics",
    "iotax_subscribeEvent",
    "iotax_subscribeTransaction",
    "rpc.discover",
];

/// Transaction execution and simulation: the node runs the Move VM.
const HEAVY: &[&str] =
    &["iota_executeTransactionBlock", "iota_dryRunTransactionBlock", "iota_devInspectTransactionBlock", "iota_view"];

/// The heavy methods' shared per-client rate: 2 a second, a burst of 4.
pub const HEAVY_LIMIT: Limit = Limit { interval: std::time::Duration::from_millis(500), burst: 4 };

impl MethodPolicy {
    /// `rules` as configured (their `limiter` set by position for those with a limit).
    pub fn new(mut rules: Vec<MethodRule>, profile: Profile) -> MethodPolicy {
        let mut limiters = 0;
        for r in &mut rules {
            r.limiter = r.limit.map(|_| {
                limiters += 1;
                limiters - 1
            });
        }
        let defaults = match profile {
            Profile::IotaRebased => {
                let heavy = limiters;
                limiters += 1;
                let rule = |p: &&str, access, cost, limit, limiter| MethodRule {
                    pattern: p.to_string(),
                    access,
                    cost,
                    limit,
                    limiter,
                };
                let mut d: Vec<MethodRule> = Vec::new();
                d.push(rule(&"iota_tryGetObjectBeforeVersion", Access::Deny, 1, None, None));
                d.extend(POINT_READS.iter().map(|p| rule(p, Access::Public, 1, None, None)));
                d.extend(SCANS.iter().map(|p| rule(p, Access::Public, 5, None, None)));
                d.extend(HEAVY.iter().map(|p| rule(p, Access::Public, 10, Some(HEAVY_LIMIT), Some(heavy))));
                d.push(rule(&"unsafe_*", Access::Key, 5, None, None));
                // gRPC: simulations can switch the VM's checks off; the rest is public.
                d.push(rule(&"/iota.grpc.*/Simulate*", Access::Key, 10, None, None));
                d.push(rule(&"/iota.grpc.*", Access::Public, 1, None, None));
                d
            }
            Profile::Evm => {
                let rule =
                    |p: &str, access, cost| MethodRule { pattern: p.into(), access, cost, limit: None, limiter: None };
                let mut d = vec![
                    rule("eth_sendRawTransaction", Access::Public, 10),
                    rule("eth_getLogs", Access::Public, 5),
                    rule("eth_call", Access::Public, 5),
                    rule("eth_estimateGas", Access::Public, 5),
                ];
                // What a public RPC must never offer: node administration, accounts held by the
                // node, tracing (heavy), the mempool.
                for denied in
                    ["debug_*", "admin_*", "personal_*", "miner_*", "txpool_*", "eth_sign*", "eth_sendTransaction"]
                {
                    d.push(rule(denied, Access::Deny, 1));
                }
                for public in ["eth_*", "net_*", "web3_*"] {
                    d.push(rule(public, Access::Public, 1));
                }
                d
            }
            _ => Vec::new(),
        };
        let (mut exact, mut wild) = (std::collections::HashMap::default(), Vec::new());
        for (i, r) in rules.iter().chain(&defaults).enumerate() {
            if r.pattern.contains('*') {
                wild.push(i);
            } else {
                exact.entry(r.pattern.clone()).or_insert(i);
            }
        }
        MethodPolicy { rules, defaults, limiters, exact, wild }
    }

    fn at(&self, i: usize) -> Option<&MethodRule> {
        self.rules.get(i).or_else(|| self.defaults.get(i - self.rules.len()))
    }

    /// The rule for `method`, first match winning; `None` means deny. An exact name is one hash
    /// look-up; only the rules with a `*` placed before it are tried one by one.
    pub fn decide(&self, method: &str) -> Option<&MethodRule> {
        let exact = self.exact.get(method).copied().unwrap_or(usize::MAX);
        let first =
            self.wild.iter().take_while(|i| **i < exact).find(|i| self.at(**i).is_some_and(|r| r.matches(method)));
        match first {
            Some(i) => self.at(*i),
            None if exact != usize::MAX => self.at(exact),
            None => None,
        }
    }

    /// How many per-method limiters there are (index `MethodRule::limiter`).
    pub fn limiters(&self) -> usize {
        self.limiters
    }

    /// The configured rules, then the profile's defaults.
    pub fn all(&self) -> impl Iterator<Item = &MethodRule> {
        self.rules.iter().chain(&self.defaults)
    }

    pub fn rules(&self) -> &[MethodRule] {
        &self.rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evm_defaults() {
        let p = MethodPolicy::new(Vec::new(), Profile::Evm);
        let of = |m: &str| p.decide(m).map(|r| (r.access, r.cost));
        assert_eq!(of("eth_blockNumber"), Some((Access::Public, 1)));
        assert_eq!(of("eth_sendRawTransaction"), Some((Access::Public, 10)));
        assert_eq!(of("eth_getLogs"), Some((Access::Public, 5)));
        assert_eq!(of("net_version"), Some((Access::Public, 1)));
        for denied in [
            "debug_traceTransaction",
            "admin_peers",
            "personal_unlockAccount",
            "eth_sign",
            "eth_sendTransaction",
            "txpool_content",
        ] {
            assert_eq!(of(denied).map(|(a, _)| a), Some(Access::Deny), "{denied}");
        }
        assert_eq!(of("iota_getObject"), None);
    }

    #[test]
    fn iota_rebased_defaults() {
        let p = MethodPolicy::new(Vec::new(), Profile::IotaRebased);
        let of = |m: &str| p.decide(m).map(|r| (r.access, r.cost));
        assert_eq!(of("iota_getObject"), Some((Access::Public, 1)));
        assert_eq!(of("iotax_queryEvents"), Some((Access::Public, 5)));
        assert_eq!(of("iota_executeTransactionBlock"), Some((Access::Public, 10)));
        assert_eq!(p.decide("iota_dryRunTransactionBlock").unwrap().limit, Some(HEAVY_LIMIT));
        assert_eq!(of("unsafe_moveCall"), Some((Access::Key, 5)));
        assert_eq!(of("iota_tryGetObjectBeforeVersion"), Some((Access::Deny, 1)));
        assert_eq!(of("iota_somethingNew"), None, "unknown: denied");
        assert_eq!(of("IOTA_GETOBJECT"), None, "names are case-sensitive, as the node's");
        assert_eq!(of("iota_getObject "), None);
    }

    #[test]
    fn stars_match_any_run_of_characters() {
        assert!(glob(b"unsafe_*", b"unsafe_moveCall"));
        assert!(glob(b"/iota.grpc.*/Simulate*", b"/iota.grpc.v1.TransactionService/SimulateTransaction"));
        assert!(!glob(b"/iota.grpc.*/Simulate*", b"/iota.grpc.v1.TransactionService/ExecuteTransaction"));
        assert!(glob(b"a*b*c", b"abc") && glob(b"a*b*c", b"axxbyyc") && !glob(b"a*b*c", b"axxbyy"));
        assert!(glob(b"exact", b"exact") && !glob(b"exact", b"exactly"));
    }

    #[test]
    fn configured_rules_come_first() {
        let rule = MethodRule {
            pattern: "iota_execute*".into(),
            access: Access::Key,
            cost: 3,
            limit: Some(Limit { interval: std::time::Duration::from_secs(1), burst: 1 }),
            limiter: None,
        };
        let p = MethodPolicy::new(vec![rule], Profile::IotaRebased);
        let r = p.decide("iota_executeTransactionBlock").unwrap();
        assert_eq!((r.access, r.cost, r.limiter), (Access::Key, 3, Some(0)));
        assert_eq!(p.decide("iota_dryRunTransactionBlock").unwrap().limiter, Some(1), "the defaults' shared limiter");
        assert_eq!(p.limiters(), 2);
    }
}
