//! `[bans] firewall = "nftables"` for real: the kernel's nftables in a network namespace of this
//! test's own (`unshare -rn`, no privilege needed, the host's firewall untouched). The outer test
//! runs this same binary's `inside_a_network_namespace` test in the namespace; that one starts a
//! node, a stand-in for sshd and a gateway, and connects from chosen loopback addresses.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn nftables_enforce_bans_in_a_network_namespace() {
    let stdout = run_in_netns("inside_a_network_namespace");
    // The figure the issue asks for, printed by the inner test.
    for line in stdout.lines().filter_map(|l| l.find("measured:").map(|i| &l[i..])) {
        println!("{line}");
    }
}

fn elements() -> String {
    sh("nft list table inet nodegate")
}

/// Whether a TCP connection from `from` to `to` is set up within 500 ms (a dropped SYN is not).
async fn connects(from: &str, to: SocketAddr) -> bool {
    let local: SocketAddr = SocketAddr::new(from.parse().unwrap(), 0);
    let socket =
        if local.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }.unwrap();
    socket.bind(local).unwrap();
    matches!(tokio::time::timeout(Duration::from_millis(500), socket.connect(to)).await, Ok(Ok(_)))
}

fn append(path: &std::path::Path, ip: &str, n: u32) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    for i in 0..n {
        writeln!(f, "Nov 27 09:00:0{i} h sshd[{i}]: Failed password for root from {ip} port 4711 ssh2").unwrap();
    }
}

#[tokio::test]
#[ignore = "runs inside a network namespace, started by nftables_enforce_bans_in_a_network_namespace"]
async fn inside_a_network_namespace() {
    assert!(std::env::var_os(IN_NETNS).is_some(), "only in a namespace of its own: it changes nftables");
    sh("ip link set lo up && ip addr add fd00:1:2:3::5/128 dev lo nodad && ip addr add fd00:9::5/128 dev lo nodad");
    let n = node().await;
    // A stand-in for any other service on the host (sshd): the firewall covers it, not only the gateway.
    let other = tokio::net::TcpListener::bind("[::]:0").await.unwrap();
    let port = other.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let _ = other.accept().await;
        }
    });
    let (v4, v6): (SocketAddr, SocketAddr) = (([127, 0, 0, 1], port).into(), format!("[::1]:{port}").parse().unwrap());

    let dir = temp_dir("nft");
    let log = dir.join("auth.log");
    std::fs::write(&log, "").unwrap();
    let config = format!(
        "\n[health]\nactive = false\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[bans]\nfirewall = \"nftables\"\n\
         verify_interval = \"200ms\"\nstate_dir = \"{}\"\nignore = [\"127.0.0.1\"]\n\n[[jail]]\nname = \"sshd\"\n\
         source = \"sshd\"\nlog = \"{}\"\nmaxretry = 3\n",
        dir.join("state").display(),
        log.display()
    );
    let gw = gateway(&[n.url()], &config).await;
    let admin = gw.admin_addr().unwrap();
    let firewall = async || get(admin, "/status").await.json()["bans"]["firewall"].clone();
    eventually(async || firewall().await["enforcing"] == true).await;
    assert!(connects("127.0.0.2", v4).await, "before any ban");

    // sshd failures: the address is dropped by the kernel on every port, within a second.
    let start = Instant::now();
    append(&log, "127.0.0.2", 3);
    eventually(async || elements().contains("127.0.0.2 timeout")).await;
    println!("measured: from the failure's line written to the nftables element: {:?}", start.elapsed());
    assert!(!connects("127.0.0.2", v4).await, "banned in the kernel");
    assert!(connects("127.0.0.3", v4).await, "others pass");
    assert!(elements().contains("127.0.0.2 timeout 10m"), "{}", elements());

    // Someone deletes the element, flushes a chain, adds a stale element: verification repairs all.
    sh("nft delete element inet nodegate banned4 '{ 127.0.0.2 }'");
    assert!(connects("127.0.0.2", v4).await);
    eventually(async || elements().contains("127.0.0.2 timeout")).await;
    assert!(!connects("127.0.0.2", v4).await, "repaired");
    sh("nft flush chain inet nodegate ban_input");
    eventually(async || sh("nft list chain inet nodegate ban_input").contains("ip saddr @banned4 drop")).await;
    sh("nft add element inet nodegate banned4 '{ 127.0.0.9 timeout 1h }'");
    eventually(async || !elements().contains("127.0.0.9")).await;
    assert!(connects("127.0.0.9", v4).await);
    assert!(firewall().await["repairs"].as_u64().unwrap() >= 3, "{}", firewall().await);

    // An IPv6 /64 banned by the operator: every address in it is dropped, others pass.
    let add = |body: &'static str| async move {
        let r = send(&client(), http::Method::POST, format!("http://{admin}/bans"), &[], body).await;
        assert_eq!(r.status.as_u16(), 201, "{:?}", r.body);
    };
    add(r#"{"address": "fd00:1:2:3::/64", "for": "1h"}"#).await;
    // Ten years is more than nft takes for an element: written as a year, renewed by verification.
    add(r#"{"address": "127.0.0.10", "for": "3650d"}"#).await;
    eventually(async || elements().contains("127.0.0.10 timeout 365d")).await;
    assert!(!connects("127.0.0.10", v4).await);
    eventually(async || elements().contains("fd00:1:2:3:: timeout")).await;
    assert!(!connects("fd00:1:2:3::5", v6).await, "in the banned /64");
    assert!(connects("fd00:9::5", v6).await, "another /64");

    // Lifted by the operator: gone from the kernel too.
    let r = send(&client(), http::Method::DELETE, format!("http://{admin}/bans/fd00:1:2:3::%2F64"), &[], "").await;
    assert_eq!(r.status.as_u16(), 200, "{:?}", r.body);
    eventually(async || !elements().contains("fd00:1:2:3::")).await;
    assert!(connects("fd00:1:2:3::5", v6).await);

    // Stopped: the kernel keeps the bans. Restarted: the sets hold the bans without a gap.
    gw.shutdown().await;
    assert!(!connects("127.0.0.2", v4).await, "the kernel enforces while the gateway is down");
    let gw = gateway(&[n.url()], &config).await;
    let admin = gw.admin_addr().unwrap();
    eventually(async || get(admin, "/status").await.json()["bans"]["firewall"]["enforcing"] == true).await;
    assert!(elements().contains("127.0.0.2 timeout"), "{}", elements());
    assert!(!connects("127.0.0.2", v4).await);
    gw.shutdown().await;

    // Without nft: one clear error, and the gateway still enforces its bans itself.
    let path = dir.join("no-nft.toml");
    std::fs::write(
        &path,
        config_text(&[n.url()], &config.replace("127.0.0.1:0", &format!("127.0.0.1:{}", free_port()))),
    )
    .unwrap();
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_nodegate"))
            .args(["run", "--config"])
            .arg(&path)
            .env("PATH", "/nonexistent")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("nftables enforcement is off"))
    });
    let line = tokio::time::timeout(Duration::from_secs(10), line).await.unwrap().unwrap();
    assert!(line.is_some_and(|l| l.contains("cannot run nft")));
}
