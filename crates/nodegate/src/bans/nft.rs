//! `[bans] firewall = "nftables"`: the ban list enforced by the kernel, so that a banned address
//! reaches nothing on this host (SSH, the node's own ports, published containers), not only the
//! gateway.
//!
//! nodegate owns one table, `inet nodegate`, and touches nothing else: sets `banned4` (IPv4
//! addresses), `banned6` (IPv6 addresses), `banned6_64` and `banned6_48` (IPv6 networks, matched
//! by masking the source address), each with `flags timeout` so every element carries its ban's
//! remaining time and the kernel ends it even when nodegate is not running; and `ban_input` and
//! `ban_forward` chains (hooked before filter, policy accept) that drop what the sets hold. The
//! chains named `input` and `forward` in the same table are `nodegate firewall`'s: bans never
//! touch them. Every change is one `nft -f -` transaction.
//! At start the table, its chains and rules are (re)declared and each set flushed and refilled from
//! the list in the same transaction, so a restart never leaves a moment with the sets empty. On
//! stop the table stays: bans run out in the kernel by themselves.
//!
//! Every `verify_interval` the sets are read back (`nft -j list table`) and compared with the
//! list: missing or cut-short elements are added again, stale ones deleted, a flushed chain or a
//! deleted table declared again; each fix is counted (`/status` `bans.firewall.repairs`), since a
//! firewall that silently stops enforcing is the worst failure a ban engine can have.
//!
//! Without `nft` or without the right to use it, one error line says so and the gateway goes on
//! enforcing bans itself.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, watch};

use super::list::{BanList, Change};
use crate::shutdown::Phase;

const TABLE: &str = "inet nodegate";

/// How the firewall is doing (for `/status` and tests).
#[derive(Default)]
pub struct FirewallState {
    /// The table is in place and the last change was applied.
    pub enforcing: AtomicBool,
    pub error: Mutex<Option<String>>,
    /// Transactions applied.
    pub applied: AtomicU64,
    /// Elements or rules found wrong by verification, and fixed.
    pub repairs: AtomicU64,
    pub verifications: AtomicU64,
}

impl FirewallState {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "nftables",
            "enforcing": self.enforcing.load(Relaxed),
            "error": *self.error.lock().unwrap_or_else(|e| e.into_inner()),
            "applied": self.applied.load(Relaxed),
            "repairs": self.repairs.load(Relaxed),
            "verifications": self.verifications.load(Relaxed),
        })
    }

    fn failed(&self, e: String) {
        self.enforcing.store(false, Relaxed);
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }

    fn succeeded(&self) {
        self.enforcing.store(true, Relaxed);
        self.applied.fetch_add(1, Relaxed);
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// The set and the element value that hold a ban on `net`; `None` for a network the sets do not
/// take (the list only holds addresses and IPv6 /64s and /48s).
pub fn element(net: &IpNet) -> Option<(&'static str, String)> {
    let set = match (net, net.prefix_len()) {
        (IpNet::V4(_), 32) => "banned4",
        (IpNet::V6(_), 128) => "banned6",
        (IpNet::V6(_), 64) => "banned6_64",
        (IpNet::V6(_), 48) => "banned6_48",
        _ => return None,
    };
    Some((set, net.network().to_string()))
}

/// The whole table, declared again, with each set's content replaced: one transaction.
fn full_script(bans: &[(IpNet, Duration)]) -> String {
    let mut s = format!("add table {TABLE}\n");
    for (set, ty) in
        [("banned4", "ipv4_addr"), ("banned6", "ipv6_addr"), ("banned6_64", "ipv6_addr"), ("banned6_48", "ipv6_addr")]
    {
        let _ = writeln!(s, "add set {TABLE} {set} {{ type {ty}; flags timeout; }}");
        let _ = writeln!(s, "flush set {TABLE} {set}");
    }
    for (chain, hook) in [("ban_input", "input"), ("ban_forward", "forward")] {
        let _ =
            writeln!(s, "add chain {TABLE} {chain} {{ type filter hook {hook} priority filter - 10; policy accept; }}");
        let _ = writeln!(s, "flush chain {TABLE} {chain}");
        for rule in RULES {
            let _ = writeln!(s, "add rule {TABLE} {chain} {rule}");
        }
    }
    for (net, left) in bans {
        add(&mut s, net, *left);
    }
    s
}

const RULES: [&str; 4] = [
    "ip saddr @banned4 drop",
    "ip6 saddr @banned6 drop",
    "ip6 saddr & ffff:ffff:ffff:ffff:: @banned6_64 drop",
    "ip6 saddr & ffff:ffff:ffff:: @banned6_48 drop",
];

/// The longest element timeout written (nft refuses ten years); a longer ban's element is renewed
/// by verification before it runs out.
const LONGEST: u64 = 365 * 86_400;

/// Adds an element with its time, replacing one that is there (add, delete, add: each step valid
/// whether or not it existed, so the transaction never fails on the element's prior state).
fn add(s: &mut String, net: &IpNet, left: Duration) {
    if let Some((set, val)) = element(net) {
        let _ = writeln!(s, "add element {TABLE} {set} {{ {val} }}");
        let _ = writeln!(s, "delete element {TABLE} {set} {{ {val} }}");
        let _ = writeln!(s, "add element {TABLE} {set} {{ {val} timeout {}s }}", left.as_secs().clamp(1, LONGEST));
    }
}

fn remove(s: &mut String, net: &IpNet) {
    if let Some((set, val)) = element(net) {
        let _ = writeln!(s, "add element {TABLE} {set} {{ {val} }}");
        let _ = writeln!(s, "delete element {TABLE} {set} {{ {val} }}");
    }
}

/// Runs `nft` with `args`, `script` on its standard input; its error output on failure.
async fn nft(args: &[&str], script: &str) -> Result<String, String> {
    let mut child = tokio::process::Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await.map_err(|e| format!("nft: {e}"))?;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| "nft took more than 10 s".to_string())?
        .map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("nft {}: {}", args.join(" "), err.lines().next().unwrap_or("failed")))
    }
}

async fn apply(script: &str) -> Result<(), String> {
    nft(&["-f", "-"], script).await.map(|_| ())
}

fn wanted(list: &BanList) -> Vec<(IpNet, Duration)> {
    list.active().into_iter().map(|(d, left)| (d.net, left)).collect()
}

/// Starts enforcing `list` in nftables; ends when the gateway stops.
pub fn spawn(list: Arc<BanList>, verify_interval: Duration, phase: watch::Receiver<Phase>) -> Arc<FirewallState> {
    let state = Arc::new(FirewallState::default());
    tokio::spawn(run(list, verify_interval, state.clone(), phase));
    state
}

async fn run(
    list: Arc<BanList>,
    verify_interval: Duration,
    state: Arc<FirewallState>,
    mut phase: watch::Receiver<Phase>,
) {
    // Following starts before the first fill: nothing made in between is missed.
    let mut changes = list.subscribe();
    match apply(&full_script(&wanted(&list))).await {
        Ok(()) => {
            state.succeeded();
            tracing::info!(table = TABLE, bans = list.len(), "nftables: enforcing bans");
        }
        Err(e) => {
            tracing::error!(error = %e, "nftables enforcement is off (needs nft and CAP_NET_ADMIN); bans are enforced in the gateway only");
            state.failed(e);
            return;
        }
    }
    let mut verify = tokio::time::interval(verify_interval);
    verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    verify.tick().await;
    loop {
        let first = tokio::select! {
            c = changes.recv() => Some(c),
            _ = verify.tick() => None,
            _ = phase.wait_for(|p| *p != Phase::Running) => return,
        };
        let Some(first) = first else {
            check(&list, &state).await;
            continue;
        };
        // One transaction for everything that is waiting.
        let mut script = String::new();
        let mut lagged = false;
        let mut next = Some(first);
        while let Some(c) = next.take() {
            match c {
                Ok(Change::Ban(d)) => {
                    let left = Duration::from_secs(d.until.saturating_sub(super::list::unix_now()));
                    add(&mut script, &d.net, left);
                }
                Ok(Change::Unban { net, .. }) => remove(&mut script, &net),
                Err(broadcast::error::RecvError::Lagged(_)) => lagged = true,
                Err(broadcast::error::RecvError::Closed) => return,
            }
            next = match changes.try_recv() {
                Ok(c) => Some(Ok(c)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Err(broadcast::error::RecvError::Lagged(n))),
                Err(_) => None,
            };
        }
        if lagged {
            script = full_script(&wanted(&list));
        }
        match apply(&script).await {
            Ok(()) => state.succeeded(),
            Err(e) => {
                tracing::error!(error = %e, "nftables: change not applied; the next verification repairs it");
                state.failed(e);
            }
        }
    }
}

/// Reads the table back and repairs what differs from the list.
async fn check(list: &BanList, state: &FirewallState) {
    state.verifications.fetch_add(1, Relaxed);
    let want = wanted(list);
    let listing = match nft(&["-j", "list", "table", "inet", "nodegate"], "").await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "nftables: table gone; declaring it again");
            repair_all(&want, state, 1).await;
            return;
        }
    };
    let Some((present, rules)) = read_table(&listing) else {
        tracing::error!("nftables: cannot read `nft -j list table` output; declaring the table again");
        repair_all(&want, state, 1).await;
        return;
    };
    if rules < 2 * RULES.len() {
        tracing::error!(rules, "nftables: rules missing from table inet nodegate; declaring it again");
        repair_all(&want, state, 1).await;
        return;
    }
    let mut script = String::new();
    let mut fixes = 0u64;
    let mut expected = HashMap::new();
    for (net, left) in &want {
        let Some(key) = element(net) else { continue };
        // An element that ends more than 5 s before its ban was cut short (or never added).
        let short = present.get(&key).is_none_or(|expires| expires + 5 < left.as_secs().min(LONGEST));
        if short && left.as_secs() > 1 {
            add(&mut script, net, *left);
            fixes += 1;
        }
        expected.insert(key, ());
    }
    for (key, expires) in &present {
        if !expected.contains_key(key) && *expires > 2 {
            let _ = writeln!(script, "delete element {TABLE} {} {{ {} }}", key.0, key.1);
            fixes += 1;
        }
    }
    if fixes == 0 {
        return;
    }
    tracing::warn!(fixes, "nftables: the sets differed from the bans; repaired");
    match apply(&script).await {
        Ok(()) => {
            state.repairs.fetch_add(fixes, Relaxed);
            state.succeeded();
        }
        Err(e) => state.failed(e),
    }
}

async fn repair_all(want: &[(IpNet, Duration)], state: &FirewallState, fixes: u64) {
    match apply(&full_script(want)).await {
        Ok(()) => {
            state.repairs.fetch_add(fixes, Relaxed);
            state.succeeded();
        }
        Err(e) => state.failed(e),
    }
}

/// (set, element value) -> seconds until it expires.
type Elements = HashMap<(&'static str, String), u64>;

/// The elements of nodegate's sets (set, value) -> seconds until they expire (`u64::MAX` for
/// none), and how many rules the ban chains hold.
fn read_table(json: &str) -> Option<(Elements, usize)> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let mut elements = HashMap::new();
    let mut rules = 0;
    for item in v.get("nftables")?.as_array()? {
        // Only the ban chains' rules: the firewall writer's chains share the table.
        if let Some(rule) = item.get("rule")
            && matches!(rule.get("chain").and_then(|c| c.as_str()), Some("ban_input" | "ban_forward"))
        {
            rules += 1;
        }
        let Some(set) = item.get("set") else { continue };
        let name = match set.get("name").and_then(|n| n.as_str()) {
            Some("banned4") => "banned4",
            Some("banned6") => "banned6",
            Some("banned6_64") => "banned6_64",
            Some("banned6_48") => "banned6_48",
            _ => continue,
        };
        for e in set.get("elem").and_then(|e| e.as_array()).into_iter().flatten() {
            let (val, expires) = match e.get("elem") {
                Some(inner) => {
                    (inner.get("val")?.as_str()?, inner.get("expires").and_then(|x| x.as_u64()).unwrap_or(0))
                }
                None => (e.as_str()?, u64::MAX),
            };
            elements.insert((name, val.to_owned()), expires);
        }
    }
    Some((elements, rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_ban_has_its_set() {
        let e = |s: &str| element(&s.parse().unwrap());
        assert_eq!(e("203.0.113.7/32"), Some(("banned4", "203.0.113.7".into())));
        assert_eq!(e("2001:db8::7/128"), Some(("banned6", "2001:db8::7".into())));
        assert_eq!(e("2001:db8:1:2::/64"), Some(("banned6_64", "2001:db8:1:2::".into())));
        assert_eq!(e("2001:db8:1::/48"), Some(("banned6_48", "2001:db8:1::".into())));
        assert_eq!(e("203.0.113.0/24"), None);
    }

    #[test]
    fn a_listing_reads_back_into_elements_and_rules() {
        let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "nodegate"}},
          {"set": {"family": "inet", "name": "banned4", "table": "nodegate", "type": "ipv4_addr", "flags": ["timeout"],
            "elem": [{"elem": {"val": "1.2.3.4", "timeout": 30, "expires": 29}}, "5.6.7.8"]}},
          {"rule": {"family": "inet", "table": "nodegate", "chain": "ban_input"}},
          {"rule": {"family": "inet", "table": "nodegate", "chain": "input"}}]}"#;
        let (elements, rules) = read_table(listing).unwrap();
        assert_eq!(elements.get(&("banned4", "1.2.3.4".into())), Some(&29));
        assert_eq!(elements.get(&("banned4", "5.6.7.8".into())), Some(&u64::MAX));
        assert_eq!(rules, 1);
    }
}
