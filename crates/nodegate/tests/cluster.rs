//! End-to-end: two gateways share rate limits through a real Redis (`[cluster] redis`), which the
//! test starts on a free port, kills mid-test and starts again. The fleet-wide limit must hold
//! within the documented bound (cluster.rs): at most `(G - 1) x (burst + rate x sync_interval)`
//! over `burst + rate x time`; without Redis each gateway holds its own limit and keeps serving.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

/// A redis-server child process on `port`, killed (SIGKILL, no goodbye) when dropped.
struct Redis(KillOnDrop);

impl Redis {
    async fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: scripts/test installs it (apt-get install redis-server)");
        let redis = Redis(KillOnDrop(child));
        eventually(async || tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()).await;
        redis
    }
}

/// A client whose connections come from `source` (a loopback address of its own), so each phase
/// of the test is a fresh client to the limiter.
fn client_from(source: &str) -> Client<HttpConnector, Full<Bytes>> {
    let mut c = HttpConnector::new();
    c.set_local_address(Some(source.parse::<IpAddr>().unwrap()));
    Client::builder(TokioExecutor::new()).build(c)
}

/// Requests as fast as one client can, alternating between the gateways, for `span`; returns how
/// many were admitted, and panics on anything but 200 or 429.
async fn hammer(gws: &[SocketAddr], source: &str, span: Duration) -> (usize, Duration) {
    let c = client_from(source);
    let start = Instant::now();
    let mut admitted = 0;
    let mut i = 0;
    while start.elapsed() < span {
        let g = gws[i % gws.len()];
        i += 1;
        let r = send(&c, Method::GET, format!("http://{g}/api/v1/info"), &[], Bytes::new()).await;
        match r.status.as_u16() {
            200 => admitted += 1,
            429 => {}
            other => panic!("gateway {g} answered {other}: {:?}", r.body),
        }
    }
    (admitted, start.elapsed())
}

/// What the admin listener's `/status` says of Redis.
async fn redis_status(gw: &nodegate::Gateway) -> String {
    let r = get(gw.admin_addr().unwrap(), "/status").await;
    r.json()["cluster"]["redis"].as_str().unwrap_or("missing").to_owned()
}

const RATE: f64 = 10.0;
const BURST: f64 = 10.0;
const SYNC: f64 = 0.05;

async fn cluster_gateway(node: &str, port: u16) -> nodegate::Gateway {
    let extra = format!(
        "\n[rate_limit]\nper_client = \"{RATE}/s\"\nburst = {BURST}\n\
         \n[cluster]\nredis = \"redis://127.0.0.1:{port}\"\nsync_interval = \"{}ms\"\n\
         \n[admin]\nlisten = \"127.0.0.1:0\"\n",
        SYNC * 1000.0
    );
    gateway(&[node.to_owned()], &extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_hold_one_limit_through_redis_and_survive_it_restarting() {
    let port = free_port();
    let redis = Redis::start(port).await;
    let n = node().await;
    let (a, b) = (cluster_gateway(&n.url(), port).await, cluster_gateway(&n.url(), port).await);
    let gws = [addr(&a), addr(&b)];

    // One client over both gateways gets the fleet's limit, within the bound, not twice it.
    let (admitted, took) = hammer(&gws, "127.0.0.2", Duration::from_secs(3)).await;
    let limit = BURST + RATE * took.as_secs_f64();
    let bound = BURST + RATE * SYNC;
    eprintln!("fleet of 2: admitted {admitted} in {took:?}; limit {limit:.1}, bound +{bound}");
    assert!(admitted as f64 >= limit - 2.0, "admitted {admitted}, limit {limit:.1}: fewer than the limit");
    assert!(admitted as f64 <= limit + bound + 1.0, "admitted {admitted}, limit {limit:.1}, bound {bound}");
    assert_eq!((a.redis_status(), b.redis_status()), (Some("up"), Some("up")));

    // Redis dies: both gateways keep serving, each holding the limit on its own.
    drop(redis);
    let (admitted, took) = hammer(&gws, "127.0.0.3", Duration::from_secs(2)).await;
    let per_gateway = BURST + RATE * took.as_secs_f64();
    eprintln!("redis down: admitted {admitted} in {took:?}; each gateway's limit {per_gateway:.1}");
    assert!(admitted > 0, "nothing served while Redis was down");
    assert!(admitted as f64 <= 2.0 * per_gateway + 2.0, "admitted {admitted}: not even local limits held");
    assert_eq!((a.redis_status(), b.redis_status()), (Some("down"), Some("down")));
    assert_eq!(redis_status(&a).await, "down");

    // Redis is back (empty): the gateways find it by themselves and the fleet limit holds again.
    let _redis = Redis::start(port).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while (a.redis_status(), b.redis_status()) != (Some("up"), Some("up")) {
        assert!(Instant::now() < deadline, "gateways did not reconnect to Redis within 10 s");
        // The sync runs when there is something to report.
        let _ = hammer(&gws, "127.0.0.5", Duration::from_millis(100)).await;
    }
    assert_eq!(redis_status(&a).await, "up");
    let (admitted, took) = hammer(&gws, "127.0.0.4", Duration::from_secs(3)).await;
    let limit = BURST + RATE * took.as_secs_f64();
    eprintln!("after recovery: admitted {admitted} in {took:?}; limit {limit:.1}");
    assert!(admitted as f64 >= limit - 2.0, "after recovery: admitted {admitted}, limit {limit:.1}");
    assert!(admitted as f64 <= limit + bound + 1.0, "after recovery: admitted {admitted}, limit {limit:.1}");
}

#[tokio::test]
async fn a_gateway_started_while_redis_is_down_serves_and_finds_redis_later() {
    let port = free_port();
    let n = node().await;
    let gw = cluster_gateway(&n.url(), port).await;
    // No Redis yet, and no traffic: the gateway finds out by itself and still serves.
    eventually(async || gw.redis_status() == Some("down")).await;
    assert_eq!(get(addr(&gw), "/api/v1/info").await.status, 200);
    assert!(redis_metric(&gw).await.ends_with(" 0.0"));
    let _redis = Redis::start(port).await;
    eventually(async || gw.redis_status() == Some("up")).await;
    assert_eq!(redis_status(&gw).await, "up");
    assert!(redis_metric(&gw).await.ends_with(" 1.0"));
}

/// `/metrics`' line for Redis.
async fn redis_metric(gw: &nodegate::Gateway) -> String {
    let text = get(gw.admin_addr().unwrap(), "/metrics").await.body;
    let text = String::from_utf8(text.to_vec()).unwrap();
    text.lines().find(|l| l.starts_with("nodegate_cluster_redis_up ")).unwrap_or("missing").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_is_a_dead_one_and_its_late_syncs_charge_nobody() {
    let port = free_port();
    let redis = Redis::start(port).await;
    let n = node().await;
    let gw = cluster_gateway(&n.url(), port).await;
    let g = addr(&gw);
    let c = client_from("127.0.0.6");
    // A client well under its limit (10/s): 7 requests a second, for the whole test.
    let steady = async |span: Duration| {
        let start = Instant::now();
        let mut limited = 0;
        let mut i = 0u32;
        while start.elapsed() < span {
            let r = send(&c, Method::GET, format!("http://{g}/api/v1/info"), &[], Bytes::new()).await;
            limited += usize::from(r.status == 429);
            i += 1;
            tokio::time::sleep_until(start + Duration::from_millis(143) * i).await;
        }
        limited
    };
    assert_eq!(steady(Duration::from_secs(1)).await, 0);
    // Redis freezes (SIGSTOP): syncs time out, the client goes on under its limit.
    let pid = redis.0.0.id().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    assert_eq!(steady(Duration::from_secs(4)).await, 0, "429s while Redis was frozen");
    assert_eq!(gw.redis_status(), Some("down"));
    // It wakes up and runs every sync that was written meanwhile, late: they must charge nobody.
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let limited = steady(Duration::from_secs(3)).await;
    assert_eq!(limited, 0, "a client under its limit got 429s after Redis came back");
    assert_eq!(gw.redis_status(), Some("up"));
}

async fn ban_gateway(node: &str, port: u16) -> nodegate::Gateway {
    let extra = format!(
        "\n[health]\nactive = false\n\n[cluster]\nredis = \"redis://127.0.0.1:{port}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [bans]\n\n[[jail]]\nname = \"probes\"\nsource = \"gateway\"\nreasons = [\"not-exposed\"]\nmaxretry = 3\n"
    );
    gateway(&[node.to_owned()], &extra).await
}

async fn closed(from: &str, gw: &nodegate::Gateway) -> bool {
    status_from_addr(from, addr(gw), "/api/v1/info", "").await.is_empty()
}

async fn admin_call(gw: &nodegate::Gateway, method: http::Method, path: &str, body: &str) -> u16 {
    let url = format!("http://{}{path}", gw.admin_addr().unwrap());
    send(&client(), method, url, &[], body.to_owned()).await.status.as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_made_by_one_gateway_is_enforced_by_every_gateway_and_outlives_a_redis_restart() {
    let port = free_port();
    let redis = Redis::start(port).await;
    let n = node().await;
    let (a, b) = (ban_gateway(&n.url(), port).await, ban_gateway(&n.url(), port).await);
    eventually(async || redis_status(&a).await == "up" && redis_status(&b).await == "up").await;

    // Three probes at A: A bans, and B within a second.
    for _ in 0..3 {
        assert_eq!(status_from_addr("127.0.0.5", addr(&a), "/api/v1/not-here", "").await, "404");
    }
    eventually(async || closed("127.0.0.5", &a).await).await;
    let start = Instant::now();
    eventually(async || closed("127.0.0.5", &b).await).await;
    println!("measured: a ban made by one gateway enforced by the other after {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(!closed("127.0.0.6", &b).await);

    // An operator's ban at B holds at A; lifted at A, it is lifted at B.
    assert_eq!(admin_call(&b, http::Method::POST, "/bans", r#"{"address": "127.0.0.6"}"#).await, 201);
    eventually(async || closed("127.0.0.6", &a).await).await;
    assert_eq!(admin_call(&a, http::Method::DELETE, "/bans/127.0.0.6", "").await, 200);
    eventually(async || !closed("127.0.0.6", &b).await).await;

    // A gateway started later loads the bans in force.
    let c = ban_gateway(&n.url(), port).await;
    eventually(async || closed("127.0.0.5", &c).await).await;
    assert!(!closed("127.0.0.6", &c).await);

    // Redis dies (its data with it): A's ban made meanwhile holds at A, and is shared once a
    // Redis is back.
    drop(redis);
    eventually(async || redis_status(&a).await == "down").await;
    assert_eq!(admin_call(&a, http::Method::POST, "/bans", r#"{"address": "127.0.0.7"}"#).await, 201);
    assert!(closed("127.0.0.7", &a).await);
    assert!(!closed("127.0.0.7", &b).await, "no Redis, no sharing");
    let _redis = Redis::start(port).await;
    eventually(async || closed("127.0.0.7", &b).await).await;
    eventually(async || closed("127.0.0.7", &c).await).await;
    assert!(closed("127.0.0.5", &b).await, "and the bans made before are still in force");
}
