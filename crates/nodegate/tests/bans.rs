//! End-to-end bans (issue 13, first slice): a jail that follows a real sshd log file appended to
//! while the gateway runs, and a jail fed by the gateway's own refusals; banned addresses are
//! closed at accept, a banned client behind a trusted proxy gets 403, and injection bans nobody.

mod common;

use std::time::Duration;

use common::*;

fn append(path: &std::path::Path, lines: &[String]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

#[tokio::test]
async fn sshd_failures_appended_to_a_followed_log_ban_the_address_at_accept() {
    let n = node().await;
    let dir = temp_dir("bans-sshd");
    let log = dir.join("auth.log");
    std::fs::write(&log, "Nov 27 09:00:00 h sshd[1]: Failed password for root from 127.0.0.2 port 1 ssh2\n").unwrap();
    let extra = format!(
        "\n[health]\nactive = false\n\n[bans]\nignore = [\"127.0.0.1\"]\n\n[[jail]]\nname = \"sshd\"\nsource = \"sshd\"\n\
         log = \"{}\"\nmaxretry = 3\nfindtime = \"10m\"\nbantime = \"10m\"\n",
        log.display()
    );
    let gw = gateway(&[n.url()], &extra).await;
    let g = addr(&gw);
    assert_eq!(status_from_addr("127.0.0.2", g, "/api/v1/info", "").await, "200");
    // Two failures (the line already in the file is history), then injection attempts: user names
    // made to look like 127.0.0.3's failures; they are 127.0.0.9's.
    let failure = |ip: &str| format!("Nov 27 09:00:01 h sshd[2]: Failed password for root from {ip} port 4711 ssh2");
    let forged =
        "Nov 27 09:00:02 h sshd[3]: Invalid user x from 127.0.0.3 port 22 from 127.0.0.9 port 4711".to_string();
    append(&log, &[failure("127.0.0.2"), failure("127.0.0.2"), forged.clone(), forged.clone(), forged]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(status_from_addr("127.0.0.2", g, "/api/v1/info", "").await, "200", "banned after two failures");
    assert_eq!(
        status_from_addr("127.0.0.3", g, "/api/v1/info", "").await,
        "200",
        "a forged user name banned its address"
    );
    // The third failure: closed at accept from then on; others are served.
    let start = std::time::Instant::now();
    append(&log, &[failure("127.0.0.2"), failure("127.0.0.1"), failure("127.0.0.1"), failure("127.0.0.1")]);
    eventually(async || status_from_addr("127.0.0.2", g, "/api/v1/info", "").await.is_empty()).await;
    println!("measured: from the failure's line written to the gateway closing at accept: {:?}", start.elapsed());
    assert_eq!(status_from_addr("127.0.0.9", g, "/api/v1/info", "").await, "", "the real address of the forged lines");
    assert_eq!(status_from_addr("127.0.0.1", g, "/api/v1/info", "").await, "200", "[bans] ignore");
    assert_eq!(status_from_addr("127.0.0.3", g, "/api/v1/info", "").await, "200");
}

#[tokio::test]
async fn the_gateways_own_refusals_ban_by_reason_and_a_ban_behind_a_proxy_is_403() {
    let n = node().await;
    let extra = "trusted_proxies = [\"127.0.0.1\"]\n\n[health]\nactive = false\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
                 [[jail]]\nname = \"probes\"\nsource = \"gateway\"\nreasons = [\"not-exposed\"]\nmaxretry = 3\n";
    let gw = gateway(&[n.url()], extra).await;
    let g = addr(&gw);
    // Bad paths are not this jail's reason: no ban.
    for _ in 0..5 {
        assert_eq!(status_from_addr("127.0.0.6", g, "/api/v1/messages/%2", "").await, "400");
    }
    // Three probes of routes that are not exposed: banned.
    for _ in 0..3 {
        assert_eq!(status_from_addr("127.0.0.5", g, "/api/v1/not-here", "").await, "404");
    }
    eventually(async || status_from_addr("127.0.0.5", g, "/api/v1/info", "").await.is_empty()).await;
    assert_eq!(status_from_addr("127.0.0.6", g, "/api/v1/info", "").await, "200");
    assert_eq!(get(gw.admin_addr().unwrap(), "/status").await.json()["bans"]["active"], 1);
    // Behind the trusted proxy: the client it names is banned with 403; the proxy never is.
    let xff = "x-forwarded-for: 198.51.100.7\r\n";
    for _ in 0..3 {
        assert_eq!(status_from_addr("127.0.0.1", g, "/api/v1/not-here", xff).await, "404");
    }
    eventually(async || status_from_addr("127.0.0.1", g, "/api/v1/info", xff).await == "403").await;
    assert_eq!(status_from_addr("127.0.0.1", g, "/api/v1/info", "x-forwarded-for: 198.51.100.8\r\n").await, "200");
    assert_eq!(status_from_addr("127.0.0.1", g, "/api/v1/info", "").await, "200");
}

#[test]
fn jail_mistakes_are_config_errors_at_their_place() {
    let node = "\n[[node]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n";
    for (text, key) in [
        ("[[jail]]\nname = \"s\"\nsource = \"sshd\"\n", "jail[0].log"),
        ("[[jail]]\nname = \"s\"\nsource = \"ftp\"\n", "jail[0].source"),
        ("[[jail]]\nname = \"g\"\nsource = \"gateway\"\nreasons = [\"nope\"]\n", "jail[0].reasons"),
        ("[[jail]]\nname = \"s\"\nsource = \"sshd\"\njournal = \"ssh.service\"\nlog = \"/l\"\n", "jail[0].journal"),
        (
            "[[jail]]\nname = \"s\"\nsource = \"sshd\"\nlog = \"/l\"\njournal_directory = \"/j\"\n",
            "jail[0].journal_directory",
        ),
        ("[[jail]]\nname = \"s\"\nsource = \"sshd\"\nlog = \"/l\"\nipv6_prefix = 56\n", "jail[0].ipv6_prefix"),
        (
            "[bans]\nverify_interval = \"1ms\"\n[[jail]]\nname = \"s\"\nsource = \"sshd\"\nlog = \"/l\"\n",
            "bans.verify_interval",
        ),
        ("[[jail]]\nname = \"g\"\nsource = \"gateway\"\nmaxretry = 0\n", "jail[0].maxretry"),
        ("[bans]\nfirewall = \"iptables\"\n", "bans.firewall"),
    ] {
        let e = nodegate::Config::parse(&format!("{text}{node}"), "t.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
    }
}

/// Appends entries `(unit, process, message)` to a journal file in `dir`, as journald would have
/// written them (through systemd-journal-remote, which writes real journal files).
fn journal_append(dir: &std::path::Path, entries: &[(&str, &str, String)]) {
    use std::io::Write;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut export = String::new();
    for (unit, process, message) in entries {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros();
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        export.push_str(&format!(
            "__REALTIME_TIMESTAMP={now}\n__MONOTONIC_TIMESTAMP={seq}\n_BOOT_ID=0123456789abcdef0123456789abcdef\n\
             _SYSTEMD_UNIT={unit}\nSYSLOG_IDENTIFIER={process}\n_PID={seq}\nMESSAGE={message}\n\n"
        ));
    }
    let mut child = std::process::Command::new("/lib/systemd/systemd-journal-remote")
        .arg("-o")
        .arg(dir.join("remote.journal"))
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("systemd-journal-remote: scripts/test installs it (apt-get install systemd-journal-remote)");
    child.stdin.take().unwrap().write_all(export.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn sshd_entries_in_the_journal_ban_and_a_restart_goes_on_from_the_kept_cursor() {
    let n = node().await;
    let dir = temp_dir("bans-journal");
    let journal = dir.join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let failed = |ip: &str| format!("Failed password for root from {ip} port 4711 ssh2");
    // History: in the journal before the gateway starts, never counted.
    journal_append(
        &journal,
        &[("ssh.service", "sshd", failed("127.0.0.2")), ("ssh.service", "sshd", failed("127.0.0.2"))],
    );
    let extra = format!(
        "\n[health]\nactive = false\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[bans]\nstate_dir = \"{}\"\n\n[[jail]]\n\
         name = \"ssh\"\nsource = \"sshd\"\njournal = \"ssh.service\"\njournal_directory = \"{}\"\nmaxretry = 3\n",
        dir.join("state").display(),
        journal.display()
    );
    let gw = gateway(&[n.url()], &extra).await;
    let g = addr(&gw);
    // Counted: sshd and sshd-session of ssh.service. Not: another unit, another process, and a
    // user name forged to look like 127.0.0.3's failure.
    journal_append(
        &journal,
        &[
            ("ssh.service", "sshd", failed("127.0.0.2")),
            ("cron.service", "sshd", failed("127.0.0.3")),
            ("ssh.service", "sudo", failed("127.0.0.3")),
            ("ssh.service", "sshd", "Invalid user x from 127.0.0.3 port 22 from 127.0.0.9 port 4711".into()),
            ("ssh.service", "sshd", "Invalid user x from 127.0.0.3 port 22 from 127.0.0.9 port 4711".into()),
        ],
    );
    journal_append(&journal, &[("ssh.service", "sshd-session", failed("127.0.0.2"))]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status_from_addr("127.0.0.2", g, "/api/v1/info", "").await, "200", "two failures after the start");
    journal_append(&journal, &[("ssh.service", "sshd-session", failed("127.0.0.2"))]);
    eventually(async || status_from_addr("127.0.0.2", g, "/api/v1/info", "").await.is_empty()).await;
    assert_eq!(status_from_addr("127.0.0.3", g, "/api/v1/info", "").await, "200");
    let why = get(gw.admin_addr().unwrap(), "/bans/127.0.0.2").await.json();
    assert!(why["bans"][0]["events"][2]["text"].as_str().unwrap().starts_with("sshd-session["), "{why}");
    gw.shutdown().await;

    // Two failures while the gateway is down, one after its restart: three, from the cursor kept.
    journal_append(
        &journal,
        &[("ssh.service", "sshd", failed("127.0.0.4")), ("ssh.service", "sshd", failed("127.0.0.4"))],
    );
    let gw = gateway(&[n.url()], &extra).await;
    let g = addr(&gw);
    assert_eq!(status_from_addr("127.0.0.4", g, "/api/v1/info", "").await, "200");
    journal_append(&journal, &[("ssh.service", "sshd", failed("127.0.0.4"))]);
    eventually(async || status_from_addr("127.0.0.4", g, "/api/v1/info", "").await.is_empty()).await;
    gw.shutdown().await;

    // A damaged cursor file: kept aside, and the journal followed from its end.
    let cursor = dir.join("state/journal-ssh.cursor");
    std::fs::write(&cursor, "garbage").unwrap();
    let gw = gateway(&[n.url()], &extra).await;
    let g = addr(&gw);
    eventually(async || {
        std::fs::read_dir(dir.join("state"))
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().contains(".corrupt-"))
    })
    .await;
    let three: Vec<_> = (0..3).map(|_| ("ssh.service", "sshd", failed("127.0.0.5"))).collect();
    journal_append(&journal, &three);
    eventually(async || status_from_addr("127.0.0.5", g, "/api/v1/info", "").await.is_empty()).await;
}
