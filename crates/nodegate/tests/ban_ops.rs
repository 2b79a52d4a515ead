//! Operating bans: `nodegate bans list|add|remove|why` against a running gateway, the admin API
//! behind it, iota-node's remote firewall API, and the safety rails (live SSH sessions, dry runs,
//! blind sources), and incremental bantime carried across a restart.

mod common;

use std::process::Command;

use common::*;

fn append(path: &std::path::Path, lines: &[String]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

fn failure(ip: &str, n: u32) -> String {
    format!("Nov 27 09:00:0{} h sshd[{n}]: Failed password for root from {ip} port 4711 ssh2", n % 10)
}

fn sshd_jail(log: &std::path::Path, more: &str) -> String {
    format!(
        "\n[health]\nactive = false\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[bans]\nignore = [\"127.0.0.1\"]\n{more}\n\
         [[jail]]\nname = \"sshd\"\nsource = \"sshd\"\nlog = \"{}\"\nmaxretry = 3\nfindtime = \"10m\"\nbantime = \"10m\"\n",
        log.display()
    )
}

/// Runs `nodegate bans --admin ADMIN ARGS...`: exit success, standard output and error.
fn bans_cli(admin: std::net::SocketAddr, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nodegate"))
        .args(["bans", "--admin", &admin.to_string()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn cli(admin: std::net::SocketAddr, args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || bans_cli(admin, &args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_bans_command_lists_explains_adds_and_lifts_bans_of_a_running_gateway() {
    let n = node().await;
    let dir = temp_dir("ban-cli");
    let log = dir.join("auth.log");
    std::fs::write(&log, "").unwrap();
    let gw = gateway(&[n.url()], &sshd_jail(&log, "")).await;
    let (g, admin) = (addr(&gw), gw.admin_addr().unwrap());
    let (ok, out, _) = cli(admin, &["list"]).await;
    assert!(ok && out.contains("no bans in force"), "{out}");

    append(&log, &[failure("127.0.0.2", 1), failure("127.0.0.2", 2), failure("127.0.0.2", 3)]);
    eventually(async || status_from_addr("127.0.0.2", g, "/api/v1/info", "").await.is_empty()).await;
    let (ok, out, _) = cli(admin, &["list"]).await;
    assert!(ok && out.contains("127.0.0.2/32") && out.contains("jail sshd"), "{out}");
    // why: the three log lines that led to it, the expiry and the step.
    let (ok, out, _) = cli(admin, &["why", "127.0.0.2"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("banned: 127.0.0.2/32 by jail sshd") && out.contains("step 0"), "{out}");
    for i in 1..=3 {
        assert!(out.contains(&format!("sshd[{i}]: Failed password for root from 127.0.0.2")), "event {i}: {out}");
    }
    let (_, out, _) = cli(admin, &["why", "127.0.0.77"]).await;
    assert!(out.contains("127.0.0.77 is not banned now"), "{out}");

    // remove: served again, and `why` remembers.
    let (ok, out, _) = cli(admin, &["remove", "127.0.0.2"]).await;
    assert!(ok && out.contains("ban lifted: 127.0.0.2/32"), "{out}");
    assert_eq!(status_from_addr("127.0.0.2", g, "/api/v1/info", "").await, "200");
    let (_, out, _) = cli(admin, &["why", "127.0.0.2"]).await;
    assert!(out.contains("not banned now") && out.contains("earlier: 127.0.0.2/32"), "{out}");
    let (ok, _, err) = cli(admin, &["remove", "127.0.0.2"]).await;
    assert!(!ok && err.contains("not banned"), "{err}");

    // add: enforced at once, with its reason; the API's JSON says the same.
    let (ok, out, err) = cli(admin, &["add", "127.0.0.4", "--for", "2h", "--reason", "scanner"]).await;
    assert!(ok && out.contains("banned 127.0.0.4/32 until"), "{out}{err}");
    assert_eq!(status_from_addr("127.0.0.4", g, "/api/v1/info", "").await, "");
    let listed = get(admin, "/bans").await.json();
    let ban = &listed["bans"][0];
    assert_eq!(
        (ban["net"].as_str(), ban["jail"].as_str(), ban["reason"].as_str()),
        (Some("127.0.0.4/32"), Some("manual"), Some("scanner"))
    );
    let left = ban["remaining_seconds"].as_u64().unwrap();
    assert!((7190..=7200).contains(&left), "{left}");

    // Mistakes are errors that say what is wrong; the safety rails hold for operators too.
    let (ok, _, err) = cli(admin, &["add", "127.0.0.1"]).await;
    assert!(!ok && err.contains("[bans] ignore") && err.contains("409"), "{err}");
    let (ok, _, err) = cli(admin, &["add", "not-an-ip"]).await;
    assert!(!ok && err.contains("not an address") && err.contains("400"), "{err}");
    let (ok, _, err) = cli(admin, &["add", "10.0.0.0/8"]).await;
    assert!(!ok && err.contains("not an address"), "IPv4 networks are not bans: {err}");
    let (ok, _, err) = cli(admin, &["add", "127.0.0.5", "--for", "0s"]).await;
    assert!(!ok && err.contains("`for`"), "{err}");
    let (ok, _, err) = cli(admin, &["add", "127.0.0.5", "--for", "forever"]).await;
    assert!(!ok && err.contains("`for`"), "{err}");
    // An IPv6 /64 is a ban; its addresses are covered.
    let (ok, out, err) = cli(admin, &["add", "2001:db8:7:7::/64"]).await;
    assert!(ok, "{out}{err}");
    let why = get(admin, "/bans/2001:db8:7:7::1234").await.json();
    assert_eq!(why["banned"], true, "{why}");
    let bad = call(admin, http::Method::POST, "/bans", "{\"addr\": \"1.2.3.4\"}").await;
    assert_eq!(bad.status.as_u16(), 400);
    assert!(bad.json()["error"]["message"].as_str().unwrap().contains("unknown field"));
    let (ok, _, err) = bans_cli_unreachable();
    assert!(!ok && err.contains("cannot reach the admin listener"), "{err}");
}

async fn call(admin: std::net::SocketAddr, method: http::Method, path: &str, body: &str) -> Reply {
    send(&client(), method, format!("http://{admin}{path}"), &[], body.to_owned()).await
}

fn bans_cli_unreachable() -> (bool, String, String) {
    bans_cli(format!("127.0.0.1:{}", free_port()).parse().unwrap(), &["list"])
}

#[tokio::test]
async fn iota_nodes_remote_firewall_reports_become_bans_but_never_of_loopback() {
    let n = node().await;
    let extra = "trusted_proxies = [\"127.0.0.1\"]\n\n[health]\nactive = false\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[bans]\n";
    let gw = gateway(&[n.url()], extra).await;
    let (g, admin) = (addr(&gw), gw.admin_addr().unwrap());
    // iota-node's own format: a connection's socket address, and a proxied client's address.
    let report = r#"{"addresses": [
        {"source_address": "198.51.100.9:40000", "destination_port": 9000, "ttl": 300},
        {"source_address": "203.0.113.20", "destination_port": 9000, "ttl": 60},
        {"source_address": "127.0.0.1:51000", "destination_port": 9000, "ttl": 300}]}"#;
    let r = call(admin, http::Method::POST, "/block_addresses", report).await;
    assert_eq!(r.status.as_u16(), 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["refused"][0].as_str().unwrap().contains("loopback"));
    // Behind the trusted proxy, the reported client is refused; others and the proxy are served.
    assert_eq!(status_from_addr("127.0.0.1", g, "/api/v1/info", "x-forwarded-for: 198.51.100.9\r\n").await, "403");
    assert_eq!(status_from_addr("127.0.0.1", g, "/api/v1/info", "x-forwarded-for: 198.51.100.10\r\n").await, "200");
    assert_eq!(status_from_addr("127.0.0.1", g, "/api/v1/info", "").await, "200");
    let listed = get(admin, "/list_addresses").await.json();
    let addrs = listed["addresses"].as_array().unwrap();
    assert_eq!(addrs.len(), 2, "{listed}");
    let ttl = addrs.iter().find(|a| a["source_address"] == "198.51.100.9").unwrap()["ttl"].as_u64().unwrap();
    assert!((295..=300).contains(&ttl), "{ttl}");
    let bad = call(
        admin,
        http::Method::POST,
        "/block_addresses",
        "{\"addresses\": [{\"source_address\": \"x\", \"ttl\": 1}]}",
    )
    .await;
    assert_eq!(bad.status.as_u16(), 400);
}

#[tokio::test]
async fn a_live_ssh_session_protects_its_address_and_a_dry_run_bans_nobody() {
    let n = node().await;
    // An "sshd" port with an established session from 127.0.0.3.
    let ssh = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = ssh.local_addr().unwrap().port();
    let session = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    session.bind(&"127.0.0.3:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    session.connect(&ssh.local_addr().unwrap().into()).unwrap();
    let _accepted = ssh.accept().unwrap();

    let dir = temp_dir("ban-rails");
    let (log, dry_log) = (dir.join("auth.log"), dir.join("dry.log"));
    std::fs::write(&log, "").unwrap();
    std::fs::write(&dry_log, "").unwrap();
    let mut extra = sshd_jail(&log, &format!("ssh_ports = [{port}]\n"));
    extra.push_str(&format!(
        "\n[[jail]]\nname = \"trial\"\nsource = \"sshd\"\nlog = \"{}\"\nmaxretry = 2\ndry_run = true\n",
        dry_log.display()
    ));
    let gw = gateway(&[n.url()], &extra).await;
    let (g, admin) = (addr(&gw), gw.admin_addr().unwrap());
    let three = |ip: &str| (1..=3).map(|i| failure(ip, i)).collect::<Vec<_>>();
    append(&log, &three("127.0.0.3"));
    append(&log, &three("127.0.0.2"));
    append(&dry_log, &three("127.0.0.6"));
    eventually(async || status_from_addr("127.0.0.2", g, "/api/v1/info", "").await.is_empty()).await;
    let jail = |status: &serde_json::Value, name: &str| {
        status["bans"]["jails"].as_array().unwrap().iter().find(|j| j["name"] == name).unwrap().clone()
    };
    eventually(async || jail(&get(admin, "/status").await.json(), "trial")["would_ban"] == 1).await;
    let status = get(admin, "/status").await.json();
    let sshd = jail(&status, "sshd");
    assert_eq!(
        (sshd["bans"].as_u64(), sshd["refused_by_rails"].as_u64(), sshd["failures"].as_u64()),
        (Some(1), Some(1), Some(6)),
        "{status}"
    );
    assert_eq!(status_from_addr("127.0.0.3", g, "/api/v1/info", "").await, "200", "the live session's address");
    assert_eq!(status_from_addr("127.0.0.6", g, "/api/v1/info", "").await, "200", "dry run");
    assert_eq!(jail(&status, "trial")["bans"], 0);
    assert_eq!(status["bans"]["active"], 1);
}

#[tokio::test]
async fn a_source_without_sshd_lines_is_reported_blind_until_it_has_them() {
    let n = node().await;
    let dir = temp_dir("ban-blind");
    let log = dir.join("auth.log");
    std::fs::write(&log, "").unwrap();
    let mut extra = sshd_jail(&log, "");
    extra.push_str("blind_after = \"1s\"\n");
    let gw = gateway(&[n.url()], &extra).await;
    let admin = gw.admin_addr().unwrap();
    let blind = async || get(admin, "/status").await.json()["bans"]["jails"][0]["blind"].as_bool().unwrap();
    append(&log, &["Nov 27 09:00:00 h CRON[5]: pam_unix(cron:session): session opened for user root".into()]);
    eventually(async || blind().await).await;
    append(&log, &["Nov 27 09:00:01 h sshd[6]: Accepted publickey for op from 192.0.2.1 port 5 ssh2".into()]);
    eventually(async || !blind().await).await;
}

#[tokio::test]
async fn repeat_offenders_ban_longer_across_a_restart() {
    let n = node().await;
    let dir = temp_dir("ban-history");
    let log = dir.join("auth.log");
    std::fs::write(&log, "").unwrap();
    let state = dir.join("state");
    let extra = sshd_jail(&log, &format!("state_dir = \"{}\"\n", state.display())) + "increment = true\n";
    let first = gateway(&[n.url()], &extra).await;
    let (g, admin) = (addr(&first), first.admin_addr().unwrap());
    append(&log, &(1..=3).map(|i| failure("127.0.0.2", i)).collect::<Vec<_>>());
    eventually(async || status_from_addr("127.0.0.2", g, "/api/v1/info", "").await.is_empty()).await;
    assert_eq!(get(admin, "/bans/127.0.0.2").await.json()["bans"][0]["step"], 0);
    // The operator lifts it; the history stays.
    assert_eq!(call(admin, http::Method::DELETE, "/bans/127.0.0.2", "").await.status.as_u16(), 200);
    first.shutdown().await;

    let second = gateway(&[n.url()], &extra).await;
    let (g, admin) = (addr(&second), second.admin_addr().unwrap());
    assert_eq!(status_from_addr("127.0.0.2", g, "/api/v1/info", "").await, "200", "a lifted ban stays lifted");
    append(&log, &(4..=6).map(|i| failure("127.0.0.2", i)).collect::<Vec<_>>());
    eventually(async || status_from_addr("127.0.0.2", g, "/api/v1/info", "").await.is_empty()).await;
    let why = get(admin, "/bans/127.0.0.2").await.json();
    let ban = &why["bans"][0];
    assert_eq!(ban["step"], 1, "{why}");
    let left = ban["remaining_seconds"].as_u64().unwrap();
    assert!((1190..=1200).contains(&left), "the second ban is twice bantime: {left}");
    assert_eq!(why["past"][0]["step"], 0, "the first ban, read back from state_dir: {why}");
}

#[tokio::test]
async fn a_ban_holds_on_a_connection_made_before_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let n = node().await;
    let gw = gateway(&[n.url()], "\n[health]\nactive = false\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[bans]\n").await;
    let (g, admin) = (addr(&gw), gw.admin_addr().unwrap());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = socket.connect(g).await.unwrap();
    let ask = async |s: &mut tokio::net::TcpStream| {
        s.write_all(b"GET /api/v1/info HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).get(9..12).unwrap_or("").to_owned()
    };
    assert_eq!(ask(&mut s).await, "200");
    assert_eq!(call(admin, http::Method::POST, "/bans", r#"{"address": "127.0.0.2"}"#).await.status.as_u16(), 201);
    // The same keep-alive connection: refused from the next request on.
    assert_eq!(ask(&mut s).await, "403");
}
