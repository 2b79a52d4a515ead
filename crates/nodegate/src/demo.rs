//! `nodegate demo`: three simulated nodes and a gateway in front of them, for a first look with no
//! node installed.

use std::net::SocketAddr;
use std::time::Duration;

use testnode::{Options, TestNode};

use crate::config::Config;
use crate::gateway::Gateway;

/// The demo's nodes and gateway, running.
pub struct Demo {
    pub nodes: Vec<TestNode>,
    pub gateway: Gateway,
}

/// Starts three testnodes (the first offers remote PoW) and a gateway on `listen`.
pub async fn start(listen: SocketAddr) -> Result<Demo, Box<dyn std::error::Error>> {
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let options = Options { name: format!("node-{i}"), pow: i == 1, pow_difficulty: 18, ..Options::default() };
        nodes.push(TestNode::start("127.0.0.1:0".parse()?, options).await?);
    }
    let mut toml = format!("[gateway]\nlisten = [\"{listen}\"]\ndrain_timeout = \"2s\"\n");
    for (i, n) in nodes.iter().enumerate() {
        toml.push_str(&format!("\n[[node]]\nname = \"node-{}\"\nurl = \"{}\"\npow = {}\n", i + 1, n.url(), i == 0));
    }
    // The simulated nodes' debug routes are part of the demo: /debug/headers shows what a node receives.
    toml.push_str("\n[[route]]\npath = \"/debug/*\"\naccess = \"public\"\n");
    let config = Config::parse(&toml, "<demo>")?;
    let gateway = Gateway::start(config).await?;
    Ok(Demo { nodes, gateway })
}

impl Demo {
    pub fn banner(&self) -> String {
        let gw = format!("http://{}", self.gateway.local_addrs()[0]);
        let mut s = format!("nodegate demo: a gateway on {gw} in front of {} simulated IOTA nodes\n", self.nodes.len());
        for (i, n) in self.nodes.iter().enumerate() {
            let pow = if i == 0 { "  (offers remote PoW)" } else { "" };
            s.push_str(&format!("  {:<7} {}{pow}\n", n.state().name, n.url()));
        }
        s.push_str(&format!(
            "\nTry:\n  curl -s {gw}/api/v1/info\n  curl -s {gw}/api/v1/tips\n  \
             curl -s -X POST {gw}/api/v1/messages -H 'content-type: application/json' -d '{{\"payload\":null,\"nonce\":\"1\"}}'\n  \
             curl -s {gw}/debug/headers     # what a node receives: forwarded headers, request id\n  \
             curl -si -X POST {gw}/debug/echo -H 'content-length: 2000000' --data-binary @/dev/zero   # 413 over max_body\n\
             \nPress Ctrl-C to stop.\n"
        ));
        s
    }

    pub async fn stop(self, wait: Duration) {
        let _ = tokio::time::timeout(wait, self.gateway.shutdown()).await;
        for n in self.nodes {
            n.kill().await;
        }
    }
}
