//! `nodegate init`: a first config, from what this host has. It asks the known local ports what
//! answers there (iota-node's JSON-RPC on 9000, Hornet's REST on 14265, Wasp's EVM JSON-RPC on
//! 9090, or the URLs given), picks the profile of what it found, puts the admin listener on
//! loopback with a fresh admin key (its hash in the file, the key printed once), and adds a jail
//! for sshd when sshd's log or the journal is there. The text it writes passes `nodegate check`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::profile::Profile;

/// What answers where nodes usually listen on this host.
pub const KNOWN: [(&str, u16); 3] = [("iota-node", 9000), ("hornet", 14265), ("wasp", 9090)];

/// A node that answered, and what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub url: String,
    pub profile: Profile,
    /// What it said of itself: a chain id, a network name.
    pub about: String,
}

/// One request with a 2-second budget; the status and JSON body, if any.
async fn ask(
    url: &http::Uri,
    method: http::Method,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, serde_json::Value)> {
    let authority = url.authority()?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().trim_matches(['[', ']']).to_owned();
    let attempt = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.ok()?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
        tokio::spawn(conn);
        let base = url.path().trim_end_matches('/');
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header(http::header::HOST, authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .ok()?;
        let resp = send.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let bytes = http_body_util::Limited::new(resp.into_body(), 1 << 20).collect().await.ok()?.to_bytes();
        Some((status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt).await.ok().flatten()
}

fn rpc(method: &str) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": []}).to_string()
}

/// What answers at `url`: iota-node's JSON-RPC, Wasp's EVM JSON-RPC, Hornet's stardust or
/// chrysalis REST API, asked in that order (a port's usual tenant first).
pub async fn probe(url: &str) -> Option<Found> {
    let uri: http::Uri = url.parse().ok()?;
    let found = |profile, about: String| Some(Found { url: url.trim_end_matches('/').to_owned(), profile, about });
    let usual = uri.port_u16();
    let mut order = [Profile::IotaRebased, Profile::Evm, Profile::IotaStardust, Profile::IotaChrysalis];
    if usual == Some(14265) {
        order = [Profile::IotaStardust, Profile::IotaChrysalis, Profile::IotaRebased, Profile::Evm];
    } else if usual == Some(9090) {
        order = [Profile::Evm, Profile::IotaRebased, Profile::IotaStardust, Profile::IotaChrysalis];
    }
    for profile in order {
        match profile {
            Profile::IotaRebased => {
                let body = rpc("iota_getChainIdentifier");
                if let Some((200, v)) = ask(&uri, http::Method::POST, "/", Some(&body)).await
                    && let Some(chain) = v["result"].as_str()
                {
                    return found(profile, format!("iota-node, chain {chain}"));
                }
            }
            Profile::Evm => {
                let body = rpc("eth_chainId");
                if let Some((200, v)) = ask(&uri, http::Method::POST, "/v1/chain/evm", Some(&body)).await
                    && let Some(chain) = v["result"].as_str()
                {
                    return found(profile, format!("Wasp EVM, chain id {chain}"));
                }
            }
            Profile::IotaStardust => {
                if let Some((200, v)) = ask(&uri, http::Method::GET, "/api/core/v2/info", None).await
                    && v.get("protocol").is_some()
                {
                    let network = v["protocol"]["networkName"].as_str().unwrap_or("stardust").to_owned();
                    return found(profile, format!("Hornet (stardust), network {network}"));
                }
            }
            Profile::IotaChrysalis => {
                if let Some((200, v)) = ask(&uri, http::Method::GET, "/api/v1/info", None).await
                    && v.get("data").is_some()
                {
                    let network = v["data"]["networkId"].as_str().unwrap_or("chrysalis").to_owned();
                    return found(profile, format!("Hornet/Bee (chrysalis), network {network}"));
                }
            }
            Profile::Generic => {}
        }
    }
    None
}

/// What `init` writes beside the nodes.
pub struct Setup {
    /// `[gateway] listen`.
    pub listen: Vec<String>,
    /// `[admin] listen`.
    pub admin: std::net::SocketAddr,
    /// `[bans] state_dir`.
    pub state_dir: PathBuf,
    /// sshd's log file, when it is there.
    pub sshd_log: Option<PathBuf>,
    /// sshd's journal unit, when the journal is there and no log file is.
    pub sshd_journal: Option<String>,
    /// The fresh admin key's hash.
    pub admin_hash: String,
    /// When it was written (RFC 3339), for the header.
    pub written: String,
}

/// The config text: the profile of the most current kind of node found (iota-rebased, then
/// evm, stardust, chrysalis) with every node of that kind; others are named in comments, since
/// one gateway serves one profile.
pub fn config_text(found: &[Found], setup: &Setup) -> String {
    let rank = |p: Profile| {
        [Profile::IotaRebased, Profile::Evm, Profile::IotaStardust, Profile::IotaChrysalis].iter().position(|q| *q == p)
    };
    let profile = found
        .iter()
        .filter_map(|f| rank(f.profile).map(|r| (r, f.profile)))
        .min_by_key(|(r, _)| *r)
        .map_or(Profile::IotaRebased, |(_, p)| p);
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let mut t = format!(
        "# Written by `nodegate init` on {}. Check it with `nodegate check --config FILE`;\n\
         # every key and its default are in the README's \"Configuration\".\n\n",
        setup.written
    );
    t.push_str("[gateway]\n");
    let listen: Vec<String> = setup.listen.iter().map(|l| q(l)).collect();
    t.push_str(&format!("listen = [{}]\n", listen.join(", ")));
    t.push_str(&format!("profile = {}\n\n", q(profile.as_str())));
    let ours: Vec<&Found> = found.iter().filter(|f| f.profile == profile).collect();
    if ours.is_empty() {
        t.push_str("# No node answered on this host's usual ports: this is where iota-node listens by default.\n");
        t.push_str("[[node]]\nname = \"iota-node\"\nurl = \"http://127.0.0.1:9000\"\n\n");
    }
    for (i, f) in ours.iter().enumerate() {
        let port = f.url.rsplit(':').next().unwrap_or("node").trim_matches('/');
        let name = match ours.len() {
            1 => profile.as_str().to_owned(),
            _ => format!("{}-{}-{i}", profile.as_str(), port.chars().filter(char::is_ascii_digit).collect::<String>()),
        };
        t.push_str(&format!("# {}\n[[node]]\nname = {}\nurl = {}\n\n", f.about, q(&name), q(&f.url)));
    }
    for f in found.iter().filter(|f| f.profile != profile) {
        t.push_str(&format!(
            "# Also found: {} at {} (profile {}); one gateway serves one profile: run another for it.\n\n",
            f.about,
            f.url,
            f.profile.as_str()
        ));
    }
    t.push_str("[rate_limit]\nper_client = \"20/s\"\nburst = 100\n\n");
    t.push_str(&format!(
        "[admin]\n# The status page and /metrics; on loopback (an ssh tunnel reaches it).\nlisten = {}\n\n",
        q(&setup.admin.to_string())
    ));
    t.push_str(&format!(
        "# The admin key `nodegate init` printed once (only its hash is kept here).\n\
         [[api_key]]\nname = \"admin\"\nhash = {}\nroles = [\"admin\"]\n\n",
        q(&setup.admin_hash)
    ));
    let jail = match (&setup.sshd_log, &setup.sshd_journal) {
        (Some(log), _) => Some(format!("log = {}", q(&log.display().to_string()))),
        (None, Some(unit)) => Some(format!("journal = {}", q(unit))),
        (None, None) => None,
    };
    match jail {
        Some(source) => t.push_str(&format!(
            "# Bans for clients that fail sshd's authentication (fail2ban's job).\n\
             [bans]\nstate_dir = {}\n\n[[jail]]\nname = \"sshd\"\nsource = \"sshd\"\n{source}\n",
            q(&setup.state_dir.display().to_string())
        )),
        None => t.push_str("# No sshd log or journal was found here: no sshd jail (see the README's \"Bans\").\n"),
    }
    t
}

/// Where sshd logs on this host: its log file, else the journal's unit (Debian 12 and later).
pub fn sshd_source(log: &Path) -> (Option<PathBuf>, Option<String>) {
    if log.exists() {
        return (Some(log.to_path_buf()), None);
    }
    let journal = ["/var/log/journal", "/run/log/journal"].iter().any(|d| Path::new(d).is_dir());
    (None, journal.then(|| "ssh.service".to_owned()))
}

/// The first of `ports` free on loopback, for the admin listener (Wasp takes 9090 too).
pub fn free_admin_port(ports: &[u16]) -> u16 {
    ports.iter().copied().find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()).unwrap_or(9191)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Setup {
        Setup {
            listen: vec!["0.0.0.0:8080".into()],
            admin: "127.0.0.1:9191".parse().unwrap(),
            state_dir: "/var/lib/nodegate".into(),
            sshd_log: None,
            sshd_journal: Some("ssh.service".into()),
            admin_hash: crate::pipeline::auth::hash("ng_x"),
            written: "2026-11-27".into(),
        }
    }

    #[test]
    fn the_most_current_kind_wins_and_the_others_are_named_and_it_passes_check() {
        let found = vec![
            Found { url: "http://127.0.0.1:14265".into(), profile: Profile::IotaStardust, about: "Hornet".into() },
            Found { url: "http://127.0.0.1:9000".into(), profile: Profile::IotaRebased, about: "iota-node".into() },
        ];
        let text = config_text(&found, &setup());
        assert!(
            text.contains("profile = \"iota-rebased\"") && text.contains("url = \"http://127.0.0.1:9000\""),
            "{text}"
        );
        assert!(text.contains("# Also found: Hornet at http://127.0.0.1:14265 (profile iota-stardust)"), "{text}");
        let config = crate::Config::parse(&text, "init.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.nodes.len(), 1);
        assert!(config.bans.is_some());
    }

    #[test]
    fn nothing_found_still_writes_a_config_that_passes_check() {
        let text = config_text(&[], &Setup { sshd_journal: None, ..setup() });
        assert!(text.contains("No node answered"));
        crate::Config::parse(&text, "init.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    }
}
