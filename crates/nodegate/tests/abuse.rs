//! End-to-end abuse protection: per-route limits and costs, the remote-PoW budget, API keys' own
//! limits, the per-client in-flight cap, and slow request bodies. (Exact GCRA counts are tested on
//! a paused clock in pipeline/rate_limit.rs; HTTP/2 floods in tests/h2_abuse.rs.)

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use http::Method;
use nodegate::pipeline::auth::hash;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_route_holds_its_own_limit_and_its_cost_spends_the_clients_budget() {
    let n = node().await;
    let extra = "\n[rate_limit]\nper_client = \"1/min\"\nburst = 10\n\
                 \n[[route]]\npath = \"/api/v1/tips\"\naccess = \"public\"\nrate = \"1/min\"\nburst = 2\n\
                 \n[[route]]\npath = \"/api/v1/peers\"\naccess = \"public\"\ncost = 4\n";
    let gw = gateway(&[n.url()], extra).await;
    let g = addr(&gw);
    // The route's limit is the tighter one, and its headers say so.
    let r = get(g, "/api/v1/tips").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["ratelimit"], "\"route\";r=1;t=0");
    assert_eq!(get(g, "/api/v1/tips").await.status, 200);
    let r = get(g, "/api/v1/tips").await;
    r.assert_gateway_error(429);
    assert_eq!(r.headers["ratelimit-policy"], "\"route\";q=2;w=120");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("this route"), "{:?}", r.body);
    // Other routes still pass: 2 of the client's 10 are spent; a cost-4 route takes 4 at a time.
    let r = get(g, "/api/v1/peers").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["ratelimit"], "\"per-client\";r=4;t=0");
    assert_eq!(get(g, "/api/v1/peers").await.status, 200);
    // 0 left: the next expensive request is refused, and says when 4 will be back (4 minutes).
    let r = get(g, "/api/v1/peers").await;
    r.assert_gateway_error(429);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((239..=240).contains(&retry), "retry-after {retry}");
    get(g, "/api/v1/info").await.assert_gateway_error(429);
    assert_eq!(n.state().requests.load(Relaxed), 4);
}

#[tokio::test]
async fn remote_pow_has_its_own_budget_and_messages_with_a_nonce_do_not_spend_it() {
    let n = node_with(testnode::Options { pow: true, pow_difficulty: 4, ..Default::default() }).await;
    let extra = "\n[rate_limit]\nper_client = \"100/s\"\nburst = 100\npow = \"1/h\"\npow_burst = 2\n";
    let gw = gateway_over(&[(n.url(), 1, true)], extra).await;
    probed(&[&n], 1).await;
    let c = client();
    let url = format!("http://{}/api/v1/messages", addr(&gw));
    let json = [("content-type", "application/json")];
    for _ in 0..2 {
        assert_eq!(send(&c, Method::POST, url.clone(), &json, r#"{"payload":null}"#).await.status, 201);
    }
    let r = send(&c, Method::POST, url.clone(), &json, r#"{"payload":null}"#).await;
    r.assert_gateway_error(429);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("proof of work"), "{:?}", r.body);
    assert_eq!(r.headers["ratelimit-policy"], "\"pow\";q=2;w=7200");
    for _ in 0..5 {
        let r = send(&c, Method::POST, url.clone(), &json, r#"{"payload":null,"nonce":"42"}"#).await;
        assert_eq!(r.status, 201, "a message with its nonce asks for no PoW");
    }
    assert_eq!(n.state().pow_jobs.load(Relaxed), 2);
}

#[tokio::test]
async fn an_api_key_carries_its_own_limit() {
    let n = node().await;
    let extra = format!(
        "\n[rate_limit]\nper_client = \"1/min\"\nburst = 1\n\
         \n[[api_key]]\nname = \"partner\"\nhash = \"{}\"\nroles = [\"key\"]\nrate = \"1/min\"\nburst = 5\n\
         \n[[api_key]]\nname = \"wallet\"\nhash = \"{}\"\nroles = [\"key\"]\n\
         \n[[route]]\npath = \"/api/v1/tips\"\naccess = \"key\"\n",
        hash("partner-secret"),
        hash("wallet-secret")
    );
    let gw = gateway(&[n.url()], &extra).await;
    let g = addr(&gw);
    let with = |k: &'static str| [("x-api-key", k)];
    for left in (0..5).rev() {
        let r = get_with(g, "/api/v1/tips", &with("partner-secret")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["ratelimit"].to_str().unwrap(), format!("\"per-client\";r={left};t=0"));
    }
    get_with(g, "/api/v1/tips", &with("partner-secret")).await.assert_gateway_error(429);
    // A key without its own limit gets per_client.
    assert_eq!(get_with(g, "/api/v1/tips", &with("wallet-secret")).await.status, 200);
    get_with(g, "/api/v1/tips", &with("wallet-secret")).await.assert_gateway_error(429);
}

#[tokio::test]
async fn a_client_cannot_hold_more_than_its_share_of_requests_in_flight() {
    let n = node().await;
    let gw = gateway(&[n.url()], "max_in_flight_per_client = 3").await;
    let g = addr(&gw);
    let slow: Vec<_> = (0..3).map(|_| tokio::spawn(async move { get(g, "/debug/sleep?ms=1500").await })).collect();
    // Wait until the node holds all three.
    eventually(async || n.state().connections.load(Relaxed) >= 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = get(g, "/api/v1/info").await;
    r.assert_gateway_error(429);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("in flight"));
    for s in slow {
        assert_eq!(s.await.unwrap().status, 200);
    }
    // Answered: the slots are free again.
    assert_eq!(get(g, "/api/v1/info").await.status, 200);
}

/// Sends a request head announcing `len` body bytes, then `feed` (chunks with pauses), and returns
/// what the gateway answered and how long after the head it did.
async fn slow_upload(g: std::net::SocketAddr, len: usize, feed: &[(&[u8], u64)]) -> (String, Duration) {
    let mut s = TcpStream::connect(g).await.unwrap();
    let head = format!("POST /debug/count HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ncontent-length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let start = tokio::time::Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let feed: Vec<(Vec<u8>, u64)> = feed.iter().map(|(b, ms)| (b.to_vec(), *ms)).collect();
    let writer = tokio::spawn(async move {
        for (bytes, pause) in feed {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
        // Then hold the connection open without sending the rest.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out)).await;
    let took = start.elapsed();
    writer.abort();
    (String::from_utf8_lossy(&out).into_owned(), took)
}

#[tokio::test]
async fn a_body_that_stalls_or_trickles_is_cut_off_with_408() {
    let n = node().await;
    let gw = gateway(&[n.url()], "body_timeout = \"400ms\"\nmin_body_rate = \"1KiB/s\"").await;
    let g = addr(&gw);
    // Nothing after the head.
    let (out, took) = slow_upload(g, 100, &[]).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("too slowly"), "{out}");
    assert!(took >= Duration::from_millis(350) && took < Duration::from_secs(3), "{took:?}");
    // Some bytes, then a stall longer than body_timeout.
    let (out, _) = slow_upload(g, 100, &[(b"0123456789", 100)]).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    // A byte every 300 ms never stalls for body_timeout, but averages 3 B/s: cut off soon after
    // the grace period, not after the 2,000 s the whole body would take.
    let trickle: Vec<(&[u8], u64)> = (0..40).map(|_| (&b"x"[..], 300)).collect();
    let (out, took) = slow_upload(g, 6000, &trickle).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // An honest upload at full speed is untouched, and so is one that pauses briefly.
    let (out, _) = slow_upload(g, 20, &[(b"0123456789", 0), (b"0123456789", 200)]).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"bytes\":20"), "{out}");
}

/// One slow attacker from `source`: sends `head`, then a byte every 400 ms for as long as the
/// gateway lets it. Returns how long the gateway took to cut it off.
async fn slow_client(g: std::net::SocketAddr, source: String, head: &'static [u8]) -> Duration {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let s = sock.connect(g).await.unwrap();
    let start = tokio::time::Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let _ = wr.write_all(head).await;
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => if !matches!(n, Ok(n) if n > 0) { return start.elapsed() },
            _ = tokio::time::sleep(Duration::from_millis(400)) => {
                if wr.write_all(b"x").await.is_err() {
                    return start.elapsed();
                }
            }
        }
        if start.elapsed() > Duration::from_secs(20) {
            return start.elapsed();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slow_connections_do_not_starve_honest_clients() {
    let n = node().await;
    let gw = gateway(&[n.url()], "header_timeout = \"3s\"\nbody_timeout = \"1s\"\nmin_body_rate = \"100B/s\"").await;
    let g = addr(&gw);
    // 2,000 attackers from 20 addresses (100 each, under the per-address connection cap): half
    // trickle a request head that never ends (slowloris), half a request body (slow POST).
    const SLOW_HEAD: &[u8] = b"GET /api/v1/info HTTP/1.1\r\nhost: gw\r\nx-slow: ";
    const SLOW_BODY: &[u8] = b"POST /debug/count HTTP/1.1\r\nhost: gw\r\ncontent-length: 1000\r\n\r\n";
    let attackers: Vec<_> = (0..2000)
        .map(|i| {
            let head = if i % 2 == 0 { SLOW_HEAD } else { SLOW_BODY };
            tokio::spawn(slow_client(g, format!("127.0.1.{}", i % 20 + 1), head))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile an honest client is served, every request promptly.
    let c = client();
    for _ in 0..100 {
        let start = tokio::time::Instant::now();
        let r = send(&c, Method::GET, format!("http://{g}/api/v1/info"), &[], bytes::Bytes::new()).await;
        assert_eq!(r.status, 200);
        assert!(start.elapsed() < Duration::from_secs(1), "an honest request took {:?}", start.elapsed());
    }
    // Slow bodies were held at the gateway (small bodies are read whole before a node is chosen):
    // the node saw none of their connections.
    assert!(n.state().connections.load(Relaxed) < 20, "{} node connections", n.state().connections.load(Relaxed));
    // And every attacker is cut off: slow heads at header_timeout, slow bodies by min_body_rate.
    let mut longest = Duration::ZERO;
    for a in attackers {
        longest = longest.max(a.await.unwrap());
    }
    eprintln!("2,000 slow clients: the last was cut off after {longest:?}");
    assert!(longest < Duration::from_secs(6), "a slow client held on for {longest:?}");
    assert_eq!(n.state().submissions.load(Relaxed) + n.state().requests.load(Relaxed), 100);
}

#[tokio::test]
async fn refusals_spend_the_clients_budget_so_a_flood_of_bad_keys_gets_429() {
    let n = node().await;
    let extra = format!(
        "\n[rate_limit]\nper_client = \"1/min\"\nburst = 5\n\
         \n[[api_key]]\nname = \"wallet\"\nhash = \"{}\"\nroles = [\"key\"]\n\
         \n[[route]]\npath = \"/api/v1/tips\"\naccess = \"key\"\n",
        hash("wallet-secret")
    );
    let gw = gateway(&[n.url()], &extra).await;
    let mut events = gw.refusals();
    let g = addr(&gw);
    // Credential stuffing: each wrong key is a refusal, and refusals cost.
    let mut statuses = Vec::new();
    for i in 0..8 {
        let key = format!("guess-{i}");
        statuses.push(get_with(g, "/api/v1/tips", &[("x-api-key", &key)]).await.status.as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    // Spent on refusals, the address is refused before any credential is checked, even a good one.
    let r = get_with(g, "/api/v1/tips", &[("x-api-key", "wallet-secret")]).await;
    r.assert_gateway_error(429);
    assert!(r.headers.contains_key("retry-after"));
    // Each refusal was an event with the client, the reason and the route.
    let first = events.try_recv().unwrap();
    assert_eq!(first.client, "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(first.reason, nodegate::events::RefusalReason::CredentialMissing);
    assert_eq!(first.route, "/api/v1/tips");
    let mut more = 1;
    while let Ok(e) = events.try_recv() {
        more += 1;
        if more > 5 {
            assert_eq!(e.reason, nodegate::events::RefusalReason::RateLimited);
        }
    }
    assert_eq!(more, 9);
    assert_eq!(n.state().requests.load(Relaxed), 0);
}

#[tokio::test]
async fn floods_of_unexposed_routes_bad_paths_and_bad_tokens_are_limited_too() {
    let n = node().await;
    let extra = "\n[rate_limit]\nper_client = \"1/min\"\nburst = 3\n\
                 \n[[jwt]]\nname = \"issuer\"\nalgorithm = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n";
    for (target, headers, refusal) in [
        ("/api/v1/not-exposed", vec![], 404),
        ("/api/v1/messages/%2", vec![], 400),
        ("/api/v1/peers", vec![("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.bad-signature")], 401),
    ] {
        // A gateway per kind, each with a fresh budget for the one client address.
        let gw = gateway(&[n.url()], extra).await;
        let g = addr(&gw);
        let statuses: Vec<u16> = futures_util::future::join_all((0..5).map(|_| get_with(g, target, &headers)))
            .await
            .iter()
            .map(|r| r.status.as_u16())
            .collect();
        let refused = statuses.iter().filter(|s| **s == refusal).count();
        let limited = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!((refused, limited), (3, 2), "{target}: {statuses:?}");
    }
    assert_eq!(n.state().requests.load(Relaxed), 0);
}
