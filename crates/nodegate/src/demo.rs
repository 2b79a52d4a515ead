//! `nodegate demo`: three simulated nodes and a gateway in front of them, for a first look with no
//! node installed.

use std::net::SocketAddr;
use std::time::Duration;

use testnode::{Options, TestNode};

use crate::config::Config;
use crate::gateway::Gateway;

/// The demo's API key (role `key`): printed by the demo, so only for the demo.
pub const DEMO_KEY: &str = "ng_demo-key-printed-by-nodegate-demo";

/// The demo's nodes and gateway, running.
pub struct Demo {
    pub profile: crate::profile::Profile,
    pub nodes: Vec<TestNode>,
    pub gateway: Gateway,
    /// The sshd log the demo's `sshd` jail follows (a file of its own, in the temp dir).
    pub auth_log: std::path::PathBuf,
}

/// The demo's config: a gateway on `listen` in front of `nodes` (the first offers remote PoW),
/// with bans from `auth_log` and from probes of routes that are not exposed.
pub fn config_text(
    listen: SocketAddr,
    nodes: &[String],
    auth_log: &std::path::Path,
    profile: crate::profile::Profile,
) -> String {
    let name = profile.as_str();
    let mut toml = format!("[gateway]\nlisten = [\"{listen}\"]\ndrain_timeout = \"2s\"\nprofile = \"{name}\"\n");
    for (i, url) in nodes.iter().enumerate() {
        toml.push_str(&format!("\n[[node]]\nname = \"node-{}\"\nurl = \"{url}\"\npow = {}\n", i + 1, i == 0));
    }
    // A key for `key` routes, and routes that show each kind of rule (first match wins): the tips
    // with a tight limit of their own, /debug/headers (what a node receives) behind a key, and
    // /debug/count behind the admin role (the REST profiles' own admin routes are their peers).
    toml.push_str(&format!(
        "\n[[api_key]]\nname = \"demo\"\nhash = \"{}\"\nroles = [\"key\"]\n",
        crate::pipeline::auth::hash(DEMO_KEY)
    ));
    toml.push_str("\n[rate_limit]\nper_client = \"100/s\"\nburst = 200\n");
    for tips in ["/api/v1/tips", "/api/core/v2/tips"] {
        toml.push_str(&format!("\n[[route]]\npath = \"{tips}\"\naccess = \"public\"\nrate = \"1/s\"\nburst = 3\n"));
    }
    toml.push_str("\n[[route]]\npath = \"/debug/headers\"\naccess = \"key\"\n");
    toml.push_str("\n[[route]]\npath = \"/debug/count\"\naccess = \"admin\"\n");
    // The rest of the simulated nodes' debug routes are part of the demo (/debug/echo for 413).
    toml.push_str("\n[[route]]\npath = \"/debug/*\"\naccess = \"public\"\n");
    // The demo's user (127.0.0.1) is never banned; other loopback addresses (127.0.0.66, ...) play
    // the attackers.
    toml.push_str(&format!(
        "\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[bans]\nignore = [\"127.0.0.1\", \"::1\"]\n\n\
         [[jail]]\nname = \"sshd\"\nsource = \"sshd\"\nlog = \"{}\"\nmaxretry = 3\nbantime = \"1m\"\n\n\
         [[jail]]\nname = \"probes\"\nsource = \"gateway\"\nreasons = [\"not-exposed\"]\nmaxretry = 5\nbantime = \"1m\"\n",
        auth_log.display()
    ));
    toml
}

/// Starts three testnodes (the first offers remote PoW) and a gateway on `listen`.
pub async fn start(listen: SocketAddr, profile: crate::profile::Profile) -> Result<Demo, Box<dyn std::error::Error>> {
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let options = Options { name: format!("node-{i}"), pow: i == 1, pow_difficulty: 18, ..Options::default() };
        nodes.push(TestNode::start("127.0.0.1:0".parse()?, options).await?);
    }
    // Bans: an sshd jail on a log file of the demo's own.
    let dir = std::env::temp_dir().join(format!("nodegate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let auth_log = dir.join("auth.log");
    std::fs::write(&auth_log, "")?;
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    let toml = config_text(listen, &urls, &auth_log, profile);
    let config = Config::parse(&toml, "<demo>")?;
    let gateway = Gateway::start(config).await?;
    Ok(Demo { profile, nodes, gateway, auth_log })
}

/// A GET from a loopback address of its own (an "attacker"); the status, or `None` when the
/// gateway closed the connection without answering (banned).
async fn get_from(local: std::net::IpAddr, gw: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(local, 0)).ok()?;
    let mut s = socket.connect(gw).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    std::str::from_utf8(out.get(9..12)?).ok()?.parse().ok()
}

impl Demo {
    /// Plays a client probing routes that are not exposed until it is banned; the printout.
    pub async fn show_a_ban(&self) -> String {
        let gw = self.gateway.local_addrs()[0];
        let attacker: std::net::IpAddr = [127, 0, 0, 66].into();
        let mut answers = Vec::new();
        for path in ["/admin", "/.env", "/wp-login.php", "/cgi-bin/luci", "/phpmyadmin/"] {
            let status = get_from(attacker, gw, path).await;
            answers.push(format!("{path} {}", status.map_or("closed".into(), |s| s.to_string())));
        }
        // The jail decides on its own task: give it a moment.
        let mut after = None;
        for _ in 0..50 {
            after = get_from(attacker, gw, "/api/v1/info").await;
            if after.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let outcome = match after {
            None => "closed at accept: banned for 1m by jail `probes`".to_string(),
            Some(s) => format!("{s} (not banned?)"),
        };
        format!(
            "A ban, as it happened just now: 127.0.0.66 probed routes the gateway does not expose:\n  {}\n\
             then GET /api/v1/info from 127.0.0.66: {outcome}\n",
            answers.join(", ")
        )
    }

    /// What the demo prints: the nodes, then commands to paste, each with what it shows
    /// (`# -> ...`); tests/binary.rs pastes every one of them.
    pub fn banner(&self) -> String {
        use crate::profile::Profile;
        let gw = format!("http://{}", self.gateway.local_addrs()[0]);
        let mut s = format!("nodegate demo: a gateway on {gw} in front of {} simulated IOTA nodes\n", self.nodes.len());
        let remote_pow = self.profile != Profile::IotaRebased;
        for (i, n) in self.nodes.iter().enumerate() {
            let pow = if i == 0 && remote_pow { "  (offers remote PoW)" } else { "" };
            s.push_str(&format!("  {:<7} {}{pow}\n", n.state().name, n.url()));
        }
        let key = format!("-H 'x-api-key: {DEMO_KEY}'");
        let code = "-s -o /dev/null -w '%{http_code}\\n'";
        let codes = "-s -o /dev/null -w '%{http_code} '";
        if self.profile == Profile::IotaRebased {
            let rpc = |method: &str| {
                format!(
                    "-X POST {gw}/ -H 'content-type: application/json' -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"{method}\",\"params\":[]}}'"
                )
            };
            s.push_str(&format!(
                "\nJSON-RPC, judged call by call before any node sees it (iota-node's API):\n  \
                 curl -s {}   # -> \"result\"\n  \
                 curl -s {}   # -> -32601 (internal: not exposed)\n  \
                 for i in 1 2 3 4 5 6 7 8; do curl {codes} {}; done; echo   # -> 200 429 (cost 10, 2/s, burst 4)\n  \
                 curl -s {}   # -> -32001 (transaction builders need a key)\n  \
                 curl -s {key} {}   # -> txBytes (the demo key opens it)\n",
                rpc("iota_getLatestCheckpointSequenceNumber"),
                rpc("iota_tryGetObjectBeforeVersion"),
                rpc("iota_dryRunTransactionBlock"),
                rpc("unsafe_moveCall"),
                rpc("unsafe_moveCall"),
            ));
        } else {
            let (api, submit, body) = match self.profile {
                Profile::IotaStardust => {
                    ("/api/core/v2", "/api/core/v2/blocks", r#"{"protocolVersion":2,"parents":[],"payload":null}"#)
                }
                _ => ("/api/v1", "/api/v1/messages", r#"{"parents":[],"payload":null}"#),
            };
            s.push_str(&format!(
                "\nREST, judged by route:\n  \
                 curl -s {gw}{api}/info   # -> HORNET\n  \
                 for i in 1 2 3 4 5 6; do curl {codes} {gw}{api}/tips; done; echo   # -> 200 429 (a route limit: 1/s, burst 3)\n  \
                 curl {code} {gw}{api}/peers   # -> 401 (the node's admin route)\n  \
                 curl {code} {key} {gw}{api}/peers   # -> 403 (the demo key has the key role, not admin)\n  \
                 curl -s -X POST {gw}{submit} -H 'content-type: application/json' -d '{body}'   # -> {id} (no nonce: node-1 did the PoW)\n  \
                 curl -s {}/control/state   # -> \"pow_jobs\":1 (only node-1 offers PoW)\n  \
                 head -c 2000000 /dev/zero | curl {code} -X POST {gw}/debug/echo --data-binary @-   # -> 413 (over max_body, 1 MiB)\n",
                self.nodes[0].url(),
                id = if self.profile == Profile::IotaStardust { "blockId" } else { "messageId" },
            ));
        }
        s.push_str(&format!(
            "\nKeys (the demo's key: {DEMO_KEY}):\n  \
             curl {code} {gw}/debug/headers   # -> 401\n  \
             curl -s {key} {gw}/debug/headers   # -> x-forwarded-for (what the node receives: no key)\n  \
             curl {code} {key} {gw}/debug/count   # -> 403 (an admin route)\n"
        ));
        if let Some(admin) = self.gateway.admin_addr() {
            let exe = std::env::current_exe().map_or("nodegate".into(), |p| p.display().to_string());
            let log = self.auth_log.display();
            s.push_str(&format!(
                "\nBans (admin API on http://{admin}):\n  \
                 {exe} bans --admin {admin} list   # -> 127.0.0.66\n  \
                 {exe} bans --admin {admin} why 127.0.0.66   # -> probes\n  \
                 for i in 1 2 3; do echo \"$(date '+%b %e %T') host sshd[$i]: Failed password for root from 127.0.0.88 port 4711 ssh2\" >> {log}; done\n  \
                 sleep 1; curl -s --interface 127.0.0.88 {gw}/debug/bytes?n=2 || echo closed   # -> closed (banned by jail sshd)\n  \
                 {exe} bans --admin {admin} remove 127.0.0.88   # -> 127.0.0.88\n\n\
                 The status page: http://{admin}/ (open it in a browser: nodes, rates, refused clients, bans; it\n\
                 refreshes every 5 s, so the commands above show up on it). Metrics for Prometheus:\n  \
                 curl -s http://{admin}/metrics | grep 'nodegate_requests_total{{'   # -> nodegate_requests_total\n",
            ));
        }
        s.push_str("\nPress Ctrl-C to stop.\n");
        s
    }

    pub async fn stop(self, wait: Duration) {
        let _ = tokio::time::timeout(wait, self.gateway.shutdown()).await;
        for n in self.nodes {
            n.kill().await;
        }
        if let Some(dir) = self.auth_log.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
