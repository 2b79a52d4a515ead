//! Reloading everything a reload can change (issue 16): the config file is written again and
//! `POST /reload` on the admin API applies it to a running gateway; what a client sees next is
//! asserted, on connections opened before the reload too.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nodegate::{Config, Gateway};

const KEY: &str = "ng_reload-test-key";

fn key_section(name: &str, key: &str) -> String {
    format!(
        "\n[[api_key]]\nname = \"{name}\"\nhash = \"{}\"\nroles = [\"admin\"]\n",
        nodegate::pipeline::auth::hash(key)
    )
}

/// A config file: one node, health probes off, the admin API on loopback, and `extra`.
fn write_config(path: &Path, node: &str, extra: &str) {
    let text = config_text(
        &[node.to_owned()],
        &format!("\n[health]\nactive = false\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]\naccess = false\n{extra}"),
    );
    std::fs::write(path, text).unwrap();
}

async fn start(path: &Path) -> Gateway {
    Gateway::start(Config::load(path).unwrap()).await.unwrap()
}

/// `POST /reload` on the admin API: the status and the JSON answer.
async fn reload(gw: &Gateway) -> (u16, serde_json::Value) {
    let admin = gw.admin_addr().unwrap();
    let r = send(&client(), http::Method::POST, format!("http://{admin}/reload"), &[], String::new()).await;
    (r.status.as_u16(), r.json())
}

fn dir(name: &str) -> PathBuf {
    temp_dir(name).join("nodegate.toml")
}

/// One HTTP/1.1 keep-alive connection, kept open across requests.
async fn http1(gw: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(gw).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// One HTTP/2 connection (prior knowledge), kept open across requests.
async fn http2(gw: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(gw).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

fn peers(gw: SocketAddr, key: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("http://{gw}/api/v1/peers"))
        .header("host", "gw")
        .header("x-api-key", key)
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn a_key_revoked_by_reload_is_refused_on_the_next_request_on_connections_already_open() {
    let n = node().await;
    let path = dir("reload-revoke");
    write_config(&path, &n.url(), &format!("{}{}", key_section("wallet", KEY), key_section("ops", "ng_other")));
    let gw = start(&path).await;
    let g = addr(&gw);
    let mut h1 = http1(g).await;
    let mut h2 = http2(g).await;
    assert_eq!(h1.send_request(peers(g, KEY)).await.unwrap().status(), 200);
    assert_eq!(h2.send_request(peers(g, KEY)).await.unwrap().status(), 200);

    // The key is revoked (the other stays).
    write_config(&path, &n.url(), &key_section("ops", "ng_other"));
    let (status, done) = reload(&gw).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["applied"], serde_json::json!(["api_key"]), "{done}");
    assert_eq!(done["restart_needed"], serde_json::json!([]), "{done}");

    // Refused on the very next request, on both connections opened before the reload.
    let resp = h1.send_request(peers(g, KEY)).await.unwrap();
    assert_eq!(resp.status(), 401);
    let _ = resp.into_body().collect().await;
    assert_eq!(h2.send_request(peers(g, KEY)).await.unwrap().status(), 401);
    assert_eq!(h2.send_request(peers(g, "ng_other")).await.unwrap().status(), 200);
    assert_eq!(gw.config().api_keys.len(), 1);
}

#[tokio::test]
async fn a_broken_config_is_refused_whole_and_the_running_one_stays() {
    let n = node().await;
    let path = dir("reload-broken");
    write_config(&path, &n.url(), &key_section("wallet", KEY));
    let gw = start(&path).await;
    let g = addr(&gw);
    // Valid TOML, one bad value on line 4: nothing of the file is applied, the key included.
    let good = std::fs::read_to_string(&path).unwrap();
    let broken = good.replacen("[health]\nactive = false\n", "[health]\nactive = false\ninterval = \"soon\"\n", 1)
        + &key_section("new", "ng_new");
    assert_ne!(broken, good);
    std::fs::write(&path, &broken).unwrap();
    let line = broken.lines().position(|l| l.starts_with("interval")).unwrap() + 1;
    let (status, answer) = reload(&gw).await;
    assert_eq!(status, 400, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    let at = format!("{}:{line}:", path.display());
    assert!(message.contains(&at) && message.contains("health.interval"), "{message} (want {at})");
    assert!(message.contains("the running config stays"), "{message}");
    assert_eq!(get_with(g, "/api/v1/peers", &[("x-api-key", KEY)]).await.status, 200);
    assert_eq!(get_with(g, "/api/v1/peers", &[("x-api-key", "ng_new")]).await.status, 401);
}

#[tokio::test]
async fn routes_access_lists_and_jwt_secrets_are_applied_and_what_needs_a_restart_is_named() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let n = node().await;
    let path = dir("reload-sections");
    let jwt = |secret: &str| format!("\n[[jwt]]\nname = \"issuer\"\nalgorithm = \"HS256\"\nsecret = \"{secret}\"\n");
    let (old_secret, new_secret) = ("an-old-secret-of-at-least-32-bytes!!", "a-rotated-secret-of-at-least-32-bytes");
    write_config(&path, &n.url(), &jwt(old_secret));
    let gw = start(&path).await;
    let g = addr(&gw);
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = serde_json::json!({"sub": "c", "exp": exp, "roles": ["admin"]});
    let token = encode(&Header::default(), &claims, &EncodingKey::from_secret(old_secret.as_bytes())).unwrap();
    let bearer = format!("Bearer {token}");
    assert_eq!(get_with(g, "/api/v1/peers", &[("authorization", &bearer)]).await.status, 200);
    assert_eq!(get(g, "/api/v1/info").await.status, 200);

    // The secret rotated, the info route closed to this address, a new listen address and
    // worker count asked for.
    let extra = format!(
        "{}\n[[route]]\npath = \"/api/v1/info\"\naccess = \"public\"\ndeny = [\"127.0.0.1\"]\n",
        jwt(new_secret)
    );
    write_config(&path, &n.url(), &extra);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("listen = [\"127.0.0.1:0\"]\n", "listen = [\"127.0.0.1:0\"]\nworkers = 3\n", 1),
    )
    .unwrap();
    let (status, done) = reload(&gw).await;
    assert_eq!(status, 200, "{done}");
    let applied: Vec<&str> = done["applied"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(applied.contains(&"jwt") && applied.contains(&"route"), "{done}");
    assert_eq!(done["restart_needed"], serde_json::json!(["gateway.workers"]), "{done}");
    assert_eq!(get_with(g, "/api/v1/peers", &[("authorization", &bearer)]).await.status, 401, "old secret");
    assert_eq!(get(g, "/api/v1/info").await.status, 403);
}

#[tokio::test]
async fn rate_limit_state_survives_a_reload_that_keeps_the_limit_and_starts_afresh_when_it_changes() {
    let n = node().await;
    let path = dir("reload-limits");
    let limit = |burst: u32| format!("\n[rate_limit]\nper_client = \"1/min\"\nburst = {burst}\n");
    write_config(&path, &n.url(), &limit(3));
    let gw = start(&path).await;
    let g = addr(&gw);
    for _ in 0..3 {
        assert_eq!(get(g, "/api/v1/info").await.status, 200);
    }
    assert_eq!(get(g, "/api/v1/info").await.status, 429);
    // Another section changes; the limit does not: the spent budget stays spent.
    write_config(&path, &n.url(), &format!("{}{}", limit(3), key_section("wallet", KEY)));
    assert_eq!(reload(&gw).await.0, 200);
    assert_eq!(get(g, "/api/v1/info").await.status, 429, "a reload is no fresh allowance");
    // The limit itself changes: a new budget under the new limit.
    write_config(&path, &n.url(), &format!("{}{}", limit(5), key_section("wallet", KEY)));
    let (status, done) = reload(&gw).await;
    assert_eq!((status, done["applied"].clone()), (200, serde_json::json!(["rate_limit"])));
    for _ in 0..5 {
        assert_eq!(get(g, "/api/v1/info").await.status, 200);
    }
    assert_eq!(get(g, "/api/v1/info").await.status, 429);
}

#[tokio::test]
async fn a_gateway_not_started_from_a_file_says_it_has_nothing_to_reload() {
    let n = node().await;
    // A gateway whose config was not read from a file has nothing to read again.
    let gw = gateway(&[n.url()], "\n[admin]\nlisten = \"127.0.0.1:0\"\n").await;
    let (status, answer) = reload(&gw).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("not read from a file"), "{answer}");
}

/// A config for the load test: one node, a key and a per-client limit too high to trip.
fn load_config(path: &Path, node: &str, key: &str, burst: u32) {
    let extra = format!("{}\n[rate_limit]\nper_client = \"100000/s\"\nburst = {burst}\n", key_section("k", key));
    write_config(path, node, &extra);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_every_100_ms_under_load_fails_no_request() {
    let (a, b) = (node().await, node().await);
    let path = dir("reload-under-load");
    load_config(&path, &a.url(), "ng_one", 100_000);
    let gw = start(&path).await;
    let g = addr(&gw);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Every reload changes the node, the key and the limit.
    let reloader = {
        let (stop, admin, path) = (stop.clone(), gw.admin_addr().unwrap(), path.clone());
        let (a, b) = (a.url(), b.url());
        tokio::spawn(async move {
            let mut reloads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                match reloads % 2 {
                    0 => load_config(&path, &b, "ng_two", 90_000),
                    _ => load_config(&path, &a, "ng_one", 100_000),
                }
                let r = send(&client(), http::Method::POST, format!("http://{admin}/reload"), &[], String::new()).await;
                assert_eq!(r.status, 200, "{:?}", r.body);
                reloads += 1;
            }
            reloads
        })
    };
    let failed = load(g, "/api/v1/info", 6000, 20).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reloads = reloader.await.unwrap();
    assert_eq!(failed, 0, "requests failed while the config was reloaded {reloads} times");
    assert!(reloads >= 3, "only {reloads} reloads during the run");
    let served = |n: &testnode::TestNode| n.state().requests.load(std::sync::atomic::Ordering::Relaxed);
    assert!(served(&a) > 0 && served(&b) > 0, "both nodes served: {} {}", served(&a), served(&b));
}

#[tokio::test]
async fn connection_caps_change_for_connections_accepted_after_a_reload() {
    let n = node().await;
    let path = dir("reload-caps");
    let caps = |per_client: usize| {
        let text = config_text(
            &[n.url()],
            &format!(
                "max_connections_per_client = {per_client}\n\n[health]\nactive = false\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]\naccess = false\n"
            ),
        );
        std::fs::write(&path, text).unwrap();
    };
    caps(10);
    let gw = start(&path).await;
    let g = addr(&gw);
    let mut held = [http1(g).await, http1(g).await];
    let request = b"GET /api/v1/info HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";
    assert!(raw(g, request, std::time::Duration::from_secs(2)).await.starts_with("HTTP/1.1 200"));
    caps(2);
    let (status, done) = reload(&gw).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["applied"], serde_json::json!(["gateway.max_connections_per_client"]), "{done}");
    // Two are open from this address: a third is closed at accept, the two keep working.
    assert_eq!(raw(g, request, std::time::Duration::from_secs(2)).await, "");
    assert_eq!(held[0].send_request(peers(g, "none")).await.unwrap().status(), 401);
}

#[tokio::test]
async fn jails_follow_a_reload_and_an_unchanged_jail_keeps_its_counts() {
    let n = node().await;
    let path = dir("reload-jails");
    let jail = |name: &str, reason: &str, maxretry: u32| {
        format!(
            "\n[[jail]]\nname = \"{name}\"\nsource = \"gateway\"\nreasons = [\"{reason}\"]\nmaxretry = {maxretry}\n"
        )
    };
    let probes = |maxretry| jail("probes", "not-exposed", maxretry);
    let keys = jail("keys", "credential-missing", 50);
    write_config(&path, &n.url(), &format!("\n[bans]\n{}{keys}", probes(5)));
    let gw = start(&path).await;
    let g = addr(&gw);
    let admin = gw.admin_addr().unwrap();
    let failures = async |name: &str| {
        let status = get(admin, "/status").await.json();
        let jails = status["bans"]["jails"].as_array().unwrap().clone();
        jails.iter().find(|j| j["name"] == name).map(|j| j["failures"].as_u64().unwrap())
    };
    for _ in 0..2 {
        assert_eq!(status_from_addr("127.0.0.5", g, "/api/v1/not-here", "").await, "404");
        assert_eq!(status_from_addr("127.0.0.6", g, "/api/v1/peers", "").await, "401");
    }
    eventually(async || failures("keys").await == Some(2) && failures("probes").await == Some(2)).await;

    // `probes` now bans at the second probe; `keys` is unchanged.
    write_config(&path, &n.url(), &format!("\n[bans]\n{}{keys}", probes(2)));
    let (status, done) = reload(&gw).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["applied"], serde_json::json!(["jail"]), "{done}");
    assert_eq!(done["restart_needed"], serde_json::json!([]), "{done}");
    assert_eq!(failures("keys").await, Some(2), "the unchanged jail lost its counts");
    assert_eq!(failures("probes").await, Some(0), "the changed jail starts afresh");
    for _ in 0..2 {
        assert_eq!(status_from_addr("127.0.0.5", g, "/api/v1/not-here", "").await, "404");
    }
    eventually(async || status_from_addr("127.0.0.5", g, "/api/v1/info", "").await.is_empty()).await;

    // `probes` removed: its probes ban nobody any more; `keys` still counts.
    write_config(&path, &n.url(), &format!("\n[bans]\n{keys}"));
    let (status, done) = reload(&gw).await;
    assert_eq!(status, 200, "{done}");
    for _ in 0..4 {
        assert_eq!(status_from_addr("127.0.0.7", g, "/api/v1/not-here", "").await, "404");
    }
    assert_eq!(status_from_addr("127.0.0.6", g, "/api/v1/peers", "").await, "401");
    eventually(async || failures("keys").await == Some(3)).await;
    assert_eq!(failures("probes").await, None);
    assert_eq!(status_from_addr("127.0.0.7", g, "/api/v1/info", "").await, "200", "a removed jail banned");
    assert_eq!(status_from_addr("127.0.0.5", g, "/api/v1/info", "").await, "", "its ban runs its course");
}
