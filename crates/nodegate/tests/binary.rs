//! Tests that run the real `nodegate` binary: `check` errors, memory under a 100 MiB stream, the
//! access log in both formats, and SIGTERM draining.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

fn nodegate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nodegate"))
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nodegate-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Starts a `nodegate run` command (with whatever wraps it: taskset, a shell, an environment)
/// and reads its first line: the child, and the address it says it listens on.
fn started(cmd: &mut Command) -> (Child, std::net::SocketAddr) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("nodegate listening on ").unwrap_or_else(|| panic!("unexpected: {line}"));
    (child, addr.parse().unwrap())
}

const NODE: &str = "[[node]]\nname = \"a\"\nurl = \"http://127.0.0.1:14265\"\n";
const RATE: &str = "[rate_limit]\nper_client = \"1/s\"\nburst = 1\n";

#[test]
fn check_accepts_a_good_config() {
    let p = temp_file("good.toml", &format!("[gateway]\nlisten = [\"0.0.0.0:8080\", \"[::]:8080\"]\n\n{NODE}"));
    let out = nodegate().args(["check", "--config"]).arg(&p).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_names_file_line_column_and_key_for_each_kind_of_mistake() {
    // (file name, text, expected "LINE:COLUMN: key" after the file name, a word of the message)
    let cases: &[(&str, String, &str, &str)] = &[
        ("syntax", "[gateway\nlisten = []\n".into(), ":1:9: ", "unclosed table"),
        (
            "unknown-key",
            format!("[gateway]\nlisen = [\"0.0.0.0:8080\"]\n\n{NODE}"),
            ":2:1: gateway.lisen: ",
            "unknown field `lisen`",
        ),
        ("unknown-table", format!("[acess]\nallow = []\n\n{NODE}"), ":1:2: acess: ", "unknown field `acess`"),
        ("wrong-type", format!("[gateway]\nlisten = 8080\n\n{NODE}"), ":2:10: gateway.listen: ", "invalid type"),
        (
            "bad-duration",
            format!("[gateway]\nheader_timeout = \"10 parsecs\"\n\n{NODE}"),
            ":2:18: gateway.header_timeout: ",
            "bad duration",
        ),
        ("bad-size", format!("[gateway]\nmax_body = \"1 lb\"\n\n{NODE}"), ":2:12: gateway.max_body: ", "bad size"),
        (
            "admin-off-loopback",
            format!("{NODE}\n[admin]\nlisten = \"0.0.0.0:9090\"\n"),
            ":6:1: admin.listen: ",
            "is not loopback",
        ),
        (
            "bad-log-level",
            format!("{NODE}\n[log]\nlevel = \"nodegate=loud\"\n"),
            ":6:1: log.level: ",
            "not a log level",
        ),
        (
            "zero-timeout",
            format!("[gateway]\nheader_timeout = \"0s\"\n\n{NODE}"),
            ":2:1: gateway.header_timeout: ",
            "above 0",
        ),
        ("fast-probes", format!("[health]\ninterval = \"10ms\"\n\n{NODE}"), ":2:1: health.interval: ", "100ms"),
        (
            "burst-overflow",
            format!("[rate_limit]\nper_client = \"1/h\"\nburst = 4000000000\n\n{NODE}"),
            ":3:1: rate_limit.burst: ",
            "within a year",
        ),
        (
            "bad-scheme",
            "[[node]]\nname = \"a\"\nurl = \"ftp://127.0.0.1:21\"\n".into(),
            ":3:7: node[0].url: ",
            "http:// or https://",
        ),
        ("bad-url", "[[node]]\nname = \"a\"\nurl = \"http://\"\n".into(), ":3:7: node[0].url: ", "is not a URL"),
        ("no-node", "[gateway]\nlisten = [\"0.0.0.0:8080\"]\n".into(), ":1:1: node: ", "no [[node]]"),
        (
            "duplicate-node",
            format!("{NODE}\n[[node]]\nname = \"a\"\nurl = \"http://127.0.0.1:14266\"\n"),
            ":6:8: node[1].name: ",
            "duplicate node name",
        ),
        (
            "bad-listen",
            format!("[gateway]\nlisten = [\"0.0.0.0:8080\", \"localhost\"]\n\n{NODE}"),
            ":2:27: gateway.listen: ",
            "not an address:port",
        ),
        (
            "bad-profile",
            format!("[gateway]\nprofile = \"iota-legacy\"\n\n{NODE}"),
            ":2:11: gateway.profile: ",
            "unknown variant",
        ),
        ("zero-weight", format!("{NODE}weight = 0\n"), ":4:10: node[0].weight: ", "1 or more"),
        (
            "burst-without-rate",
            format!("{NODE}\n{RATE}\n[[route]]\npath = \"/x\"\naccess = \"public\"\nburst = 5\n"),
            ":12:9: route[0].burst: ",
            "needs `rate`",
        ),
        (
            "zero-cost",
            format!("{NODE}\n{RATE}\n[[route]]\npath = \"/x\"\naccess = \"public\"\nrate = \"1/s\"\ncost = 0\n"),
            ":13:8: route[0].cost: ",
            "1 or more",
        ),
        (
            "route-limit-without-rate-limit",
            format!("{NODE}\n[[route]]\npath = \"/x\"\naccess = \"public\"\nrate = \"1/s\"\n"),
            ":1:1: rate_limit: ",
            "need a [rate_limit]",
        ),
        ("bad-redis-url", format!("{NODE}\n[cluster]\nredis = \"http://x\"\n"), ":6:9: cluster.redis: ", "http://x"),
        (
            "bad-body-rate",
            format!("[gateway]\nmin_body_rate = \"1KiB\"\n\n{NODE}"),
            ":2:17: gateway.min_body_rate: ",
            "bytes per second",
        ),
        (
            "tls-missing-file",
            format!("[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n\n{NODE}"),
            ":2:8: tls.cert: ",
            "cannot read `/nonexistent/cert.pem`",
        ),
        (
            "listen-http-without-tls",
            format!("[gateway]\nlisten_http = [\"0.0.0.0:80\"]\n\n{NODE}"),
            ":2:16: gateway.listen_http: ",
            "needs a [tls] section",
        ),
        (
            "acme-http01-without-listen-http",
            format!("[tls.acme]\ndomains = [\"node.example\"]\nstate_dir = \"/tmp/x\"\n\n{NODE}"),
            ":1:1: tls.acme.challenge: ",
            "listen_http",
        ),
        (
            "acme-bad-domain",
            format!("[tls.acme]\ndomains = [\"node example\"]\nstate_dir = \"/tmp/x\"\n\n{NODE}"),
            ":2:11: tls.acme.domains: ",
            "not a domain name",
        ),
        (
            "bad-log-format",
            format!("[log]\nformat = \"xml\"\n\n{NODE}"),
            ":2:10: log.format: ",
            "unknown variant `xml`",
        ),
    ];
    for (name, text, place, words) in cases {
        let p = temp_file(&format!("{name}.toml"), text);
        let out = nodegate().args(["check", "--config"]).arg(&p).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        let expected_start = format!("{}{place}", p.display());
        assert!(err.starts_with(&expected_start), "{name}: expected `{expected_start}...`, got `{err}`");
        assert!(err.contains(words), "{name}: expected `{words}` in `{err}`");
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: one line per error: {err}");
    }
}

#[test]
fn check_reports_a_missing_file() {
    let out = nodegate().args(["check", "--config", "/nonexistent/nodegate.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

/// A `nodegate run` child process, killed when dropped.
struct Running {
    child: Child,
    addr: std::net::SocketAddr,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(name: &str, config: &str) -> Running {
        Running::start_path(&temp_file(name, config))
    }

    fn start_path(p: &std::path::Path) -> Running {
        let (mut child, addr) = started(nodegate().args(["run", "--config"]).arg(p).stderr(Stdio::piped()));
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Running { child, addr, stderr }
    }

    /// Peak resident memory of the gateway process so far, in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb * 1024
    }

    fn log_lines_until(&self, mut pred: impl FnMut(&str) -> bool) -> Option<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(l) if pred(&l) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_upload_and_download_stream_with_flat_gateway_memory() {
    let n = node().await;
    let gw = Running::start(
        "memory.toml",
        &config_text(&[n.url()], "max_body = \"1GiB\"\nworkers = 2\n\n[log]\naccess = false"),
    );
    // Warm up, then take the baseline.
    assert_eq!(get(gw.addr, "/api/v1/info").await.status, 200);
    let baseline = gw.peak_rss();

    // Upload 100 MiB from a generator: neither side holds the whole body.
    let chunk = Bytes::from(vec![0x5au8; 256 * 1024]);
    let chunks = (0..400).map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone())));
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{}/debug/count", gw.addr))
        .header("content-length", (100 * MIB).to_string())
        .body(body)
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let j: serde_json::Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(j["bytes"], 100 * MIB);

    // Download 100 MiB, counted as it streams.
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let resp = c
        .request(
            http::Request::get(format!("http://{}/debug/bytes?n={}", gw.addr, 100 * MIB))
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(f) = body.frame().await {
        got += f.unwrap().into_data().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, 100 * MIB);

    let peak = gw.peak_rss();
    let growth = peak.saturating_sub(baseline);
    eprintln!("gateway peak RSS: baseline {} KiB, after 2 x 100 MiB {} KiB", baseline / 1024, peak / 1024);
    assert!(growth < 16 * MIB, "gateway memory grew by {} KiB streaming 100 MiB", growth / 1024);
}

#[tokio::test]
async fn access_log_is_one_line_a_request_in_text_or_json_and_can_be_off() {
    let n = node().await;
    let text = Running::start("log-text.toml", &config_text(&[n.url()], ""));
    get(text.addr, "/api/v1/info?secret=1").await;
    let line = text.log_lines_until(|l| l.contains("nodegate::access")).expect("no access line");
    for part in ["client=127.0.0.1", "method=GET", "path=/api/v1/info", "status=200", "node=n0", "duration_ms="] {
        assert!(line.contains(part), "`{part}` missing in {line}");
    }
    assert!(!line.contains("secret"), "query strings stay out of the log: {line}");

    let json = Running::start("log-json.toml", &config_text(&[n.url()], "\n[log]\nformat = \"json\""));
    get(json.addr, "/api/v1/messages/nope").await;
    let line = json.log_lines_until(|l| l.contains("nodegate::access")).expect("no access line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["status"], 404);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/api/v1/messages/nope");
    assert_eq!(v["node"], "n0");
    assert!(v["request_id"].as_str().is_some_and(|s| s.len() == 32));

    let off = Running::start("log-off.toml", &config_text(&[n.url()], "\n[log]\naccess = false"));
    get(off.addr, "/api/v1/info").await;
    assert!(off.log_lines_until(|l| l.contains("nodegate::access")).is_none(), "access line logged while off");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let n = node_with(testnode::Options { delay: Duration::from_millis(600), ..Default::default() }).await;
    let mut gw = Running::start("sigterm.toml", &config_text(&[n.url()], "drain_timeout = \"10s\""));
    let a = gw.addr;
    let slow = tokio::spawn(async move { get(a, "/api/v1/info").await });
    eventually(async || n.state().requests.load(std::sync::atomic::Ordering::Relaxed) == 1).await;
    let pid = gw.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200);
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.child.wait();
        (s, gw)
    })
    .await
    .unwrap()
    .0
    .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

/// `nodegate demo` on a free port with `args`, running for 30 s; its printout up to "Press Ctrl-C".
fn demo(args: &[&str]) -> (Child, Vec<String>) {
    let mut child = nodegate()
        .args(["demo", "--listen", "127.0.0.1:0", "--seconds", "30"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
    let banner = lines.by_ref().take_while(|l| !l.starts_with("Press Ctrl-C")).collect();
    // Whatever follows is read too, as a terminal would.
    std::thread::spawn(move || lines.for_each(drop));
    (child, banner)
}

#[tokio::test]
async fn demo_starts_three_nodes_and_a_gateway_that_answers() {
    let (mut child, banner) = demo(&["--profile", "iota-chrysalis"]);
    // It shows a ban happening: five probes of routes that are not exposed, then closed at accept.
    let ban = banner.iter().position(|l| l.starts_with("A ban, as it happened")).expect("a ban shown");
    assert!(banner[ban + 1].contains("/admin 404") && banner[ban + 1].contains("/phpmyadmin/ 404"), "{banner:?}");
    assert!(banner[ban + 2].contains("closed at accept: banned"), "{banner:?}");
    let first = banner.iter().find(|l| l.starts_with("nodegate demo:")).unwrap();
    let url = first.split_whitespace().find(|w| w.starts_with("http://")).expect("gateway URL in banner").to_owned();
    assert_eq!(banner.iter().filter(|l| l.trim_start().starts_with("node-")).count(), 3, "{banner:?}");
    assert!(banner.iter().any(|l| l.contains("curl")), "{banner:?}");
    let gw: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let r = get(gw, "/api/v1/info").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"]["isHealthy"], true);
    // Each node in the banner answers by itself. (How requests spread over them is the balancer's
    // business, tested in tests/balance.rs.)
    for line in banner.iter().filter(|l| l.trim_start().starts_with("node-")) {
        let node_url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap();
        let node: std::net::SocketAddr = node_url.trim_start_matches("http://").parse().unwrap();
        assert_eq!(get(node, "/api/v1/info").await.status, 200, "{line}");
    }
    // The printed sshd commands, pasted into a shell, ban 127.0.0.88; the printed `why` explains.
    let sh = |cmd: &str| Command::new("sh").args(["-c", cmd]).output().unwrap();
    let sshd = banner.iter().find(|l| l.contains("Failed password")).unwrap().trim().to_owned();
    assert!(sh(&sshd).status.success());
    eventually(async || status_from_addr("127.0.0.88", gw, "/api/v1/info", "").await.is_empty()).await;
    let why = sh(banner.iter().find(|l| l.contains("bans --admin") && l.contains("why")).unwrap().trim());
    let why = String::from_utf8_lossy(&why.stdout).into_owned();
    assert!(why.contains("banned: 127.0.0.66/32 by jail probes") && why.contains("not-exposed /phpmyadmin/"), "{why}");
    let _ = child.kill();
    let _ = child.wait();
}

/// Pastes every command a demo printed, in order, into a shell: each must succeed and show
/// what its `# -> ...` says (each word before the parenthesis).
fn paste_every_command(profile: &str) {
    let (mut child, banner) = demo(&["--profile", profile]);
    let exe = env!("CARGO_BIN_EXE_nodegate");
    let commands: Vec<&str> = banner
        .iter()
        .map(|l| l.trim())
        .filter(|l| ["curl ", "for ", "head ", "sleep ", exe].iter().any(|p| l.starts_with(p)))
        .collect();
    assert!(commands.len() >= 12, "{profile}: {banner:#?}");
    for line in commands {
        let (cmd, expect) = line.split_once("   # -> ").unwrap_or((line, ""));
        let out = Command::new("timeout").args(["20", "sh", "-c", cmd]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{profile}: `{cmd}` failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        for word in expect.split(" (").next().unwrap().split_whitespace() {
            assert!(stdout.contains(word), "{profile}: `{cmd}` shows no `{word}`:\n{stdout}");
        }
        if cmd.contains("x-api-key") && cmd.ends_with("/debug/headers") {
            assert!(!stdout.contains(nodegate::demo::DEMO_KEY), "the node received the key: {stdout}");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn every_command_the_demo_prints_works_when_pasted_iota_rebased() {
    paste_every_command("iota-rebased");
}

#[test]
fn every_command_the_demo_prints_works_when_pasted_iota_stardust() {
    paste_every_command("iota-stardust");
}

#[test]
fn every_command_the_demo_prints_works_when_pasted_iota_chrysalis() {
    paste_every_command("iota-chrysalis");
}

#[tokio::test]
async fn the_default_workers_follow_the_cpus_the_process_may_use() {
    let n = node().await;
    let path = temp_file("workers.toml", &config_text(&[n.url()], "\n[log]\naccess = false\n"));
    // Worker threads by name. A thread names itself once it runs, so a fresh one reads as
    // "nodegate" for a moment: read until `want` of them are named or two seconds have passed.
    let workers = |cpus: &str, want: usize| {
        let (mut child, _) = started(
            Command::new("taskset")
                .args(["-c", cpus])
                .arg(env!("CARGO_BIN_EXE_nodegate"))
                .args(["run", "--config"])
                .arg(&path)
                .stderr(Stdio::null()),
        );
        let dir = format!("/proc/{}/task", child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let names = loop {
            let names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
                .map(|c| c.trim().to_owned())
                .collect();
            let named = names.iter().filter(|t| *t == "tokio-rt-worker").count();
            if named >= want || std::time::Instant::now() > deadline {
                break names;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = child.kill();
        let _ = child.wait();
        (names.iter().filter(|t| *t == "tokio-rt-worker").count(), names)
    };
    // Pinned to one CPU: one current-thread runtime, no worker threads to hand work between.
    // (Waiting for one worker that must never come: two seconds of looking for it.)
    let (one, names) = workers("0", 1);
    assert_eq!(one, 0, "{names:?}");
    let cpus = std::thread::available_parallelism().unwrap().get();
    if cpus > 1 {
        let (all, names) = workers(&format!("0-{}", cpus - 1), cpus);
        assert_eq!(all, cpus, "{names:?}");
    }
}

#[test]
fn run_fails_clearly_when_the_listen_address_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let p = temp_file(
        "taken.toml",
        &format!(
            "[gateway]\nlisten = [\"127.0.0.1:{port}\"]\n\n[[node]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n"
        ),
    );
    let out = nodegate().args(["run", "--config"]).arg(&p).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{err}");
}

#[tokio::test]
async fn a_quiet_log_level_does_not_silence_the_access_log() {
    let n = node().await;
    let gw = Running::start("log-quiet.toml", &config_text(&[n.url()], "\n[log]\nlevel = \"warn\""));
    get(gw.addr, "/api/v1/info").await;
    assert!(gw.log_lines_until(|l| l.contains("nodegate::access")).is_some(), "access log silenced by level = warn");
}

#[tokio::test]
async fn sighup_reloads_the_nodes_and_a_broken_file_is_refused() {
    let a = node().await;
    let b = node().await;
    let path = temp_file("sighup.toml", "");
    let write = |urls: &[String]| std::fs::write(&path, config_text(urls, "")).unwrap();
    write(&[a.url()]);
    let gw = Running::start_path(&path);
    assert_eq!(get(gw.addr, "/api/v1/info").await.status, 200);
    let pid = gw.child.id().to_string();
    let hup = || assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());

    // A broken file: refused, the running config stays.
    std::fs::write(&path, "[[node]]\nname = \"x\"\n").unwrap();
    hup();
    assert!(gw.log_lines_until(|l| l.contains("reload refused")).is_some(), "no refusal logged");
    assert_eq!(get(gw.addr, "/api/v1/info").await.status, 200);

    // Now node a is replaced by node b.
    write(&[b.url()]);
    hup();
    assert!(gw.log_lines_until(|l| l.contains("config reloaded")).is_some());
    let before = a.state().requests.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..20 {
        assert_eq!(get(gw.addr, "/api/v1/info").await.status, 200);
    }
    assert_eq!(a.state().requests.load(std::sync::atomic::Ordering::Relaxed), before);
    assert_eq!(b.state().requests.load(std::sync::atomic::Ordering::Relaxed), 20);
}

// Multi-threaded: the test nodes answer init's probes while this thread waits for init.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_finds_the_nodes_writes_a_config_that_check_accepts_and_prints_the_admin_key_once() {
    use std::os::unix::fs::PermissionsExt;
    let (a, b) = (node().await, node().await);
    let dir = temp_file("init-auth.log", "").parent().unwrap().join("init");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("auth.log");
    std::fs::write(&log, "").unwrap();
    let output = dir.join("nodegate.toml");
    let nothing = format!("http://127.0.0.1:{}", free_port());
    let init = |extra: &[&str]| {
        let mut cmd = nodegate();
        cmd.args(["init", "--listen", "127.0.0.1:0", "--output"]).arg(&output).arg("--sshd-log").arg(&log);
        cmd.arg("--state-dir").arg(dir.join("state"));
        for url in [a.url(), b.url(), nothing.clone()] {
            cmd.args(["--node", &url]);
        }
        cmd.args(extra).output().unwrap()
    };
    let out = init(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("found: iota-node, chain 6364aad5").count(), 2, "{stdout}");
    assert!(stdout.contains(&format!("nothing that answers like a node at {nothing}")), "{stdout}");
    let key = stdout.lines().find_map(|l| l.split("hash is in the file): ").nth(1)).expect("no key printed").trim();
    assert!(key.starts_with("ng_") && key.len() > 60);

    let text = std::fs::read_to_string(&output).unwrap();
    assert!(!text.contains(key), "the key itself was written");
    assert!(text.contains(&nodegate::pipeline::auth::hash(key)), "{text}");
    assert!(
        text.contains("profile = \"iota-rebased\"") && text.contains(&a.url()) && text.contains(&b.url()),
        "{text}"
    );
    assert!(text.contains(&format!("log = \"{}\"", log.display())), "the sshd jail: {text}");
    assert_eq!(std::fs::metadata(&output).unwrap().permissions().mode() & 0o777, 0o640);
    let check = nodegate().args(["check", "--config"]).arg(&output).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    // A second init does not overwrite what the operator may have edited, unless told to.
    let again = init(&[]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(init(&["--force"]).status.success());

    // It runs: a JSON-RPC call through it reaches a node.
    let gw = Running::start_path(&output);
    let call = r#"{"jsonrpc":"2.0","id":7,"method":"iota_getChainIdentifier","params":[]}"#;
    let url = format!("http://{}/", gw.addr);
    let r = send(&client(), http::Method::POST, url, &[("content-type", "application/json")], call).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"], "6364aad5");
}

#[tokio::test]
async fn under_systemd_it_notifies_ready_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let n = node().await;
    let path = temp_file("notify.toml", &config_text(&[n.url()], ""));
    let dir = path.parent().unwrap();
    // systemd's side: a datagram socket named by NOTIFY_SOCKET.
    let socket_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&socket_path);
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let next = || {
        let mut buf = [0u8; 512];
        let len = systemd.recv(&mut buf).expect("no notification");
        String::from_utf8_lossy(&buf[..len]).into_owned()
    };
    let (mut child, addr) = started(
        nodegate().args(["run", "--config"]).arg(&path).env("NOTIFY_SOCKET", &socket_path).stderr(Stdio::null()),
    );
    // A reload asked at once (systemd may send it the moment READY is out): the handler is in place
    // before the listening line, so the signal is a reload, not the end of the process.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let ready = next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    // Ready means serving: a request right after it is answered.
    assert_eq!(get(addr, "/api/v1/info").await.status, 200);
    let reloading = next();
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading}");
    assert!(reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{reloading}");
    let again = next();
    assert!(again.lines().any(|l| l == "READY=1") && again.contains("STATUS=serving"), "{again}");

    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let stopping = next();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn sighup_changes_the_log_level_and_format() {
    let n = node().await;
    let path = temp_file("sighup-log.toml", "");
    let write =
        |log: &str| std::fs::write(&path, config_text(&[n.url()], &format!("\n[log]\naccess = false\n{log}"))).unwrap();
    write("level = \"warn\"\nformat = \"text\"");
    let gw = Running::start_path(&path);
    let pid = gw.child.id().to_string();
    let hup = || assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());

    // info and JSON: the reload's own info line comes out, as JSON.
    write("level = \"info\"\nformat = \"json\"");
    hup();
    let line =
        gw.log_lines_until(|l| l.contains("config reloaded")).expect("no info line after the level went to info");
    let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(json["level"], "INFO", "{line}");

    // Back to warn and text: a reload is silent again, and an error comes out as text.
    write("level = \"warn\"\nformat = \"text\"");
    hup();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&path, "[[node]]\nname = \"x\"\n").unwrap();
    hup();
    let mut seen = Vec::new();
    let refusal = gw.log_lines_until(|l| {
        seen.push(l.to_owned());
        l.contains("reload refused")
    });
    let refusal = refusal.expect("no refusal logged");
    assert!(!seen.iter().any(|l| l.contains("config reloaded")), "info logged at warn: {seen:?}");
    assert!(serde_json::from_str::<serde_json::Value>(&refusal).is_err() && refusal.contains("ERROR"), "{refusal}");
}

#[test]
fn key_new_prints_a_key_and_its_hash_and_key_hash_agrees() {
    let out = nodegate().args(["key", "new"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let key = text.lines().find_map(|l| l.strip_prefix("key:")).unwrap().trim().to_owned();
    let hash = text.lines().find_map(|l| l.strip_prefix("hash:")).unwrap().trim().to_owned();
    assert!(key.starts_with("ng_") && hash.starts_with("sha256:"));
    let again = nodegate().args(["key", "hash", &key]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), hash);
    // The printed snippet is a valid config.
    let p =
        temp_file("key.toml", &format!("{NODE}\n[[api_key]]\nname = \"k\"\nhash = \"{hash}\"\nroles = [\"key\"]\n"));
    assert!(nodegate().args(["check", "--config"]).arg(&p).output().unwrap().status.success());
}

#[test]
fn cert_self_signed_writes_a_pair_that_tls_accepts() {
    let dir = temp_file("placeholder", "").parent().unwrap().join("selfsigned");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = nodegate()
        .args(["cert", "self-signed", "--name", "node.local", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "the key is private");
    }
    let pem = std::fs::read(&cert).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
    let (names, _) = nodegate::tls::cert_facts(&der).unwrap();
    assert_eq!(names, vec!["node.local"]);
    let config = format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n{NODE}", cert.display(), key.display());
    let p = temp_file("selfsigned.toml", &config);
    let out = nodegate().args(["check", "--config"]).arg(&p).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn the_readmes_ipv4_plus_ipv6_listen_form_starts_and_ipv6_alone_is_dual_stack() {
    let n = node().await;
    let v6_loopback = |port: u16| std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let v4_loopback = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // Both families on one port, as the README's first example: the [::] socket must be v6-only, or
    // its bind fails with "address in use" where net.ipv6.bindv6only = 0 (Linux's default).
    let port = free_port();
    let both = format!(
        "[gateway]\nlisten = [\"0.0.0.0:{port}\", \"[::]:{port}\"]\n\n[[node]]\nname = \"a\"\nurl = \"{}\"\n",
        n.url()
    );
    let gw = Running::start("both-families.toml", &both);
    assert_eq!(gw.addr.port(), port);
    assert_eq!(get(v4_loopback(port), "/api/v1/info").await.status, 200);
    assert_eq!(get(v6_loopback(port), "/api/v1/info").await.status, 200);
    drop(gw);
    // [::] alone takes IPv4 clients too.
    let port = free_port();
    let alone = format!("[gateway]\nlisten = [\"[::]:{port}\"]\n\n[[node]]\nname = \"a\"\nurl = \"{}\"\n", n.url());
    let gw = Running::start("v6-alone.toml", &alone);
    assert_eq!(get(v4_loopback(port), "/api/v1/info").await.status, 200);
    assert_eq!(get(v6_loopback(port), "/api/v1/info").await.status, 200);
    drop(gw);
}

#[tokio::test]
async fn the_admin_listener_keeps_accepting_after_running_out_of_file_descriptors() {
    let admin_port = free_port();
    let config = temp_file(
        "emfile.toml",
        &format!(
            "[gateway]\nlisten = [\"127.0.0.1:0\"]\n\n[[node]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n\n\
             [health]\nactive = false\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[log]\naccess = false\n"
        ),
    );
    // A small descriptor table, so that a few dozen connections fill it.
    let (mut child, _) = started(
        Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n 48 && exec {} run --config {}", env!("CARGO_BIN_EXE_nodegate"), config.display()))
            .stderr(Stdio::null()),
    );
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], admin_port).into();
    assert_eq!(get(admin, "/status").await.status, 200);
    // Fill the table: past ~40 connections, accept() fails with EMFILE.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(held);
    // Room again: the admin listener answers as before.
    let answered = tokio::time::timeout(Duration::from_secs(5), get(admin, "/status")).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answered.expect("the admin listener stopped accepting").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_reader_that_never_reads_does_not_stall_traffic() {
    let n = node().await;
    let admin_port = free_port();
    let config = temp_file(
        "stuck-log.toml",
        &format!(
            "[gateway]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[[node]]\nname = \"a\"\nurl = \"{}\"\n\n[health]\nactive = false\n\n\
             [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[log]\naccess = true\n",
            n.url()
        ),
    );
    // stderr is a pipe nobody reads: once its 64 KiB are full, every write to it blocks.
    let (mut child, gw) = started(nodegate().args(["run", "--config"]).arg(&config).stderr(Stdio::piped()));
    let long_path = format!("/api/v1/info?{}", "q".repeat(400));
    // 9,000 lines of about 600 bytes: past the pipe and the writer's queue of 8,192 lines.
    let served = tokio::time::timeout(Duration::from_secs(30), async {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let url = format!("http://{gw}{long_path}");
                tokio::spawn(async move {
                    let c = client();
                    let mut ok = 0;
                    for _ in 0..2_250 {
                        ok += usize::from(
                            send(&c, http::Method::GET, url.clone(), &[], Bytes::new()).await.status == 200,
                        );
                    }
                    ok
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap();
        }
        ok
    })
    .await;
    let status =
        tokio::time::timeout(Duration::from_secs(5), get(([127, 0, 0, 1], admin_port).into(), "/status")).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(served.expect("traffic stalled behind a blocked access log"), 9_000);
    let dropped = status.expect("the admin listener stalled too").json()["access_log"]["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "no line was dropped: the test did not block the log");
}

#[test]
fn filter_sshd_prints_each_failure_as_json_with_its_line_and_a_summary() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/sshd/auth.log");
    let text = std::fs::read_to_string(sample).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let out = nodegate().args(["filter", "sshd", "--mode", "aggressive", "--json", sample]).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut found = 0;
    for json in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
        let n = v["line"].as_u64().unwrap() as usize;
        // The line before it in the sample is its annotation: `#= ADDRESS FAMILY`.
        let note = lines[n - 2].strip_prefix("#= ").unwrap_or_else(|| panic!("line {n} is not annotated"));
        assert_eq!(v["ip"], note.split(' ').next().unwrap(), "line {n}");
        assert!(v["time"].as_str().is_some_and(|t| t.starts_with("20")), "{json}");
        found += 1;
    }
    let annotated = lines.iter().filter(|l| l.starts_with("#= ") && !l.ends_with("- -")).count();
    assert_eq!(found, annotated);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains(&format!("lines read: {}, matched: {found}", lines.len())), "{stderr}");
    // Normal mode finds fewer; a missing file is a clear error.
    let normal = nodegate().args(["filter", "sshd", "--json", sample]).output().unwrap();
    assert!(String::from_utf8(normal.stdout).unwrap().lines().count() < found);
    let missing = nodegate().args(["filter", "sshd", "/nonexistent/auth.log"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/auth.log"));
}

#[tokio::test]
async fn bans_survive_kill_9_and_a_damaged_ban_file_is_kept_aside() {
    let n = node().await;
    let state = temp_dir("bans-state");
    let port = free_port();
    let config = format!(
        "[gateway]\nlisten = [\"127.0.0.1:{port}\"]\n\n[[node]]\nname = \"a\"\nurl = \"{}\"\n\n[health]\nactive = false\n\n\
         [bans]\nstate_dir = \"{}\"\n\n[[jail]]\nname = \"probes\"\nsource = \"gateway\"\nreasons = [\"not-exposed\"]\n\
         maxretry = 2\nbantime = \"1h\"\n\n[log]\naccess = false\n",
        n.url(),
        state.display()
    );
    let gw = Running::start("bans-state.toml", &config);
    let g = gw.addr;
    for _ in 0..2 {
        assert_eq!(status_from_addr("127.0.0.5", g, "/api/v1/not-here", "").await, "404");
    }
    eventually(async || status_from_addr("127.0.0.5", g, "/api/v1/info", "").await.is_empty()).await;
    // kill -9: no goodbye, no flush.
    drop(gw);
    let gw = Running::start("bans-state.toml", &config);
    assert_eq!(status_from_addr("127.0.0.5", gw.addr, "/api/v1/info", "").await, "", "the ban did not survive");
    assert_eq!(status_from_addr("127.0.0.6", gw.addr, "/api/v1/info", "").await, "200");
    drop(gw);
    // A damaged line: the file is kept aside, the readable bans still hold, the gateway starts.
    let file = state.join("bans.jsonl");
    let mut text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("127.0.0.5/32"), "{text}");
    text.push_str("{\"net\": \"not a net\"\n");
    std::fs::write(&file, text).unwrap();
    let gw = Running::start("bans-state.toml", &config);
    assert_eq!(status_from_addr("127.0.0.5", gw.addr, "/api/v1/info", "").await, "");
    let aside: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("bans.jsonl.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file was not kept aside");
    assert!(gw.log_lines_until(|l| l.contains("ban file damaged")).is_some());
}
