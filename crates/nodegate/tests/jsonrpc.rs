//! The iota-rebased profile end to end: JSON-RPC on `POST /`, judged by method before any node
//! sees it (access, cost, per-method rates), refusals in JSON-RPC's shape with the request's id,
//! batches refused as iota-node refuses them, a hostile corpus of envelopes, and health by
//! checkpoint lag across nodes.

mod common;

use common::*;
use http::Method;

/// The key `nodegate key hash` gives for "rpc-test-key".
fn key_hash() -> String {
    nodegate::pipeline::auth::hash("rpc-test-key")
}

fn rebased(extra: &str) -> String {
    format!(
        "profile = \"iota-rebased\"\n\n[health]\nactive = false\n\n[rate_limit]\nper_client = \"1/s\"\nburst = 30\n\n\
         [[api_key]]\nname = \"builder\"\nhash = \"{}\"\nroles = [\"key\"]\n{extra}",
        key_hash()
    )
}

async fn call(gw: std::net::SocketAddr, body: &str, headers: &[(&str, &str)]) -> Reply {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send(&client(), Method::POST, format!("http://{gw}/"), &h, body.to_owned()).await
}

fn rpc(method: &str, id: u64) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":["0x5"]}}"#)
}

/// Asserts a JSON-RPC refusal: the HTTP status, the JSON-RPC code and the echoed id.
fn refused(r: &Reply, status: u16, code: i64, id: serde_json::Value) {
    assert_eq!(r.status.as_u16(), status, "{:?}", r.body);
    let j = r.json();
    assert_eq!(j["jsonrpc"], "2.0");
    assert_eq!(j["error"]["code"], code, "{j}");
    assert_eq!(j["id"], id, "{j}");
    assert!(!j["error"]["message"].as_str().unwrap().is_empty());
}

fn seen(n: &testnode::TestNode) -> Vec<String> {
    n.state().view().rpc_methods
}

#[tokio::test]
async fn methods_are_judged_before_any_node_sees_them() {
    let n = node().await;
    let gw = gateway(&[n.url()], &rebased("")).await;
    let g = addr(&gw);
    // A point read passes, on each of iota-node's paths.
    let r = call(g, &rpc("iota_getObject", 7), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"]["data"]["objectId"], "0x5");
    for path in ["/json-rpc", "/public"] {
        let r =
            send(&client(), Method::POST, format!("http://{g}{path}"), &[], rpc("iota_getChainIdentifier", 1)).await;
        assert_eq!(r.status, 200, "{path}");
    }
    // Unknown, internal and mis-cased methods: 404, -32601, the id echoed; the node never knew.
    refused(&call(g, &rpc("iota_somethingNew", 8), &[]).await, 404, -32601, 8.into());
    refused(&call(g, &rpc("iota_tryGetObjectBeforeVersion", 9), &[]).await, 404, -32601, 9.into());
    refused(&call(g, &rpc("IOTA_getObject", 10), &[]).await, 404, -32601, 10.into());
    // Transaction builders need a key.
    let r = call(g, &rpc("unsafe_moveCall", 11), &[]).await;
    refused(&r, 401, -32001, 11.into());
    assert!(r.headers.contains_key("www-authenticate"));
    refused(&call(g, &rpc("unsafe_moveCall", 12), &[("x-api-key", "wrong")]).await, 401, -32001, 12.into());
    let r = call(g, &rpc("unsafe_moveCall", 13), &[("x-api-key", "rpc-test-key")]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Other HTTP methods on the JSON-RPC path are not routes.
    assert_eq!(get(g, "/").await.status, 404);
    assert_eq!(seen(&n), ["iota_getObject", "iota_getChainIdentifier", "iota_getChainIdentifier", "unsafe_moveCall"]);
    let r = call(g, &rpc("unsafe_moveCall", 14), &[("authorization", "Bearer rpc-test-key")]).await;
    assert_eq!(r.status, 200);
    // The node never saw a credential: neither the keys that opened calls nor the refused ones.
    assert_eq!(n.state().rpc_credentials.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(seen(&n).len(), 5);
}

#[tokio::test]
async fn a_hostile_corpus_of_envelopes_gets_nothing_past_the_policy() {
    let n = node().await;
    let gw = gateway(&[n.url()], &rebased("")).await;
    let g = addr(&gw);
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"iota_getObject","params":{}{}}}"#,
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let batch = format!("[{}]", vec![rpc("iota_getObject", 1); 3].join(","));
    let long_batch =
        format!("[{},{}]", vec![rpc("iota_getObject", 1); 9_999].join(","), rpc("iota_tryGetObjectBeforeVersion", 2));
    let huge_id = format!(r#"{{"jsonrpc":"2.0","id":"{}","method":"iota_getObject"}}"#, "9".repeat(10_000));
    let cases: Vec<(&str, String, u16, i64, serde_json::Value)> = vec![
        (
            "escaped name of a denied method",
            r#"{"jsonrpc":"2.0","id":1,"method":"iota\u005ftryGetObjectBeforeVersion"}"#.into(),
            404,
            -32601,
            1.into(),
        ),
        (
            "escaped name of a key method",
            r#"{"jsonrpc":"2.0","id":2,"method":"\u0075nsafe_moveCall"}"#.into(),
            401,
            -32001,
            2.into(),
        ),
        (
            "duplicate method",
            r#"{"jsonrpc":"2.0","id":3,"method":"iota_getObject","method":"iota_tryGetObjectBeforeVersion"}"#.into(),
            400,
            -32600,
            3.into(),
        ),
        (
            "method not a string",
            r#"{"jsonrpc":"2.0","id":4,"method":["iota_getObject"]}"#.into(),
            400,
            -32600,
            4.into(),
        ),
        ("no method", r#"{"jsonrpc":"2.0","id":5}"#.into(), 400, -32600, 5.into()),
        ("no version", r#"{"id":6,"method":"iota_getObject"}"#.into(), 400, -32600, 6.into()),
        ("not JSON", "{not json".into(), 400, -32700, serde_json::Value::Null),
        (
            "trailing bytes",
            format!("{} {}", rpc("iota_getObject", 7), rpc("iota_tryGetObjectBeforeVersion", 8)),
            400,
            -32700,
            serde_json::Value::Null,
        ),
        ("deep params", deep, 400, -32700, serde_json::Value::Null),
        ("a batch", batch, 400, -32005, serde_json::Value::Null),
        ("a denied call at the end of a long batch", long_batch, 400, -32005, serde_json::Value::Null),
        ("a huge id", huge_id, 400, -32600, serde_json::Value::Null),
        ("a string id kept", r#"{"jsonrpc":"2.0","id":"a\"b","method":"nope"}"#.into(), 404, -32601, "a\"b".into()),
    ];
    for (what, body, status, code, id) in cases {
        let r = call(g, &body, &[]).await;
        assert_eq!(r.status.as_u16(), status, "{what}: {:?}", String::from_utf8_lossy(&r.body));
        let j = r.json();
        assert_eq!((j["error"]["code"].as_i64(), &j["id"]), (Some(code), &id), "{what}: {j}");
    }
    assert!(seen(&n).is_empty(), "nothing reached the node: {:?}", seen(&n));
    // A body over max_body never reaches a node either.
    let big = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"iota_getObject","params":["{}"]}}"#, "a".repeat(2 << 20));
    let r = call(g, &big, &[]).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], -32010);
    assert!(seen(&n).is_empty());
}

#[tokio::test]
async fn calls_cost_what_their_method_costs_and_heavy_methods_have_their_own_rate() {
    let n = node().await;
    let gw = gateway(&[n.url()], &rebased("")).await;
    let g = addr(&gw);
    // Burst 30: six scans at cost 5 spend it; the seventh is 429 with Retry-After, -32009.
    for i in 0..6 {
        assert_eq!(call(g, &rpc("iotax_queryEvents", i), &[]).await.status, 200, "scan {i}");
    }
    let r = call(g, &rpc("iotax_queryEvents", 99), &[]).await;
    refused(&r, 429, -32009, 99.into());
    assert!(r.headers.contains_key("retry-after"));
    // Its own budget: a key spends the key's, not the address's.
    let r = call(g, &rpc("unsafe_pay", 1), &[("x-api-key", "rpc-test-key")]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Heavy methods: 2/s with a burst of 4 per client, whatever budget is left.
    let n2 = node().await;
    let gw2 = gateway(&[n2.url()], &rebased("").replace("burst = 30", "burst = 100")).await;
    let g2 = addr(&gw2);
    for i in 0..4 {
        assert_eq!(call(g2, &rpc("iota_dryRunTransactionBlock", i), &[]).await.status, 200);
    }
    let r = call(g2, &rpc("iota_executeTransactionBlock", 5), &[]).await;
    refused(&r, 429, -32009, 5.into());
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("this method"), "{:?}", r.body);
    assert_eq!(call(g2, &rpc("iota_getObject", 6), &[]).await.status, 200, "point reads go on");
}

#[tokio::test]
async fn method_rules_come_before_the_profiles_defaults() {
    let n = node().await;
    let extra = "\n[[method]]\nname = \"iotax_queryEvents\"\naccess = \"deny\"\n\n\
                 [[method]]\nname = \"iota_execute*\"\naccess = \"key\"\ncost = 2\n\n\
                 [[method]]\nname = \"iota_getObject\"\naccess = \"public\"\nrate = \"1/s\"\nburst = 1\n";
    let gw = gateway(&[n.url()], &rebased(extra)).await;
    let g = addr(&gw);
    refused(&call(g, &rpc("iotax_queryEvents", 1), &[]).await, 404, -32601, 1.into());
    refused(&call(g, &rpc("iota_executeTransactionBlock", 2), &[]).await, 401, -32001, 2.into());
    assert_eq!(call(g, &rpc("iota_executeTransactionBlock", 3), &[("x-api-key", "rpc-test-key")]).await.status, 200);
    assert_eq!(call(g, &rpc("iota_getObject", 4), &[]).await.status, 200);
    refused(&call(g, &rpc("iota_getObject", 5), &[]).await, 429, -32009, 5.into());
}

#[test]
fn method_mistakes_are_config_errors_at_their_place() {
    for (text, key) in [
        ("[[method]]\nname = \"a*b\"\naccess = \"public\"\n", "method[0].name"),
        ("[[method]]\nname = \"\"\naccess = \"public\"\n", "method[0].name"),
        ("[[method]]\nname = \"a\"\naccess = \"public\"\ncost = 0\n", "method[0].cost"),
        ("[[method]]\nname = \"a\"\naccess = \"public\"\nburst = 3\n", "method[0].burst"),
    ] {
        let e = nodegate::Config::parse(
            &format!("{text}[[node]]\nname = \"n\"\nurl = \"http://127.0.0.1:9000\"\n"),
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
    }
}

#[tokio::test]
async fn a_node_behind_the_best_by_more_than_max_checkpoint_lag_is_out() {
    let (a, b) = (node().await, node().await);
    b.state().apply(&testnode::StatePatch { checkpoint_lag: Some(100), ..Default::default() });
    let extra = "profile = \"iota-rebased\"\n\n[health]\ninterval = \"100ms\"\nmax_checkpoint_lag = 30\n\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n";
    let gw = gateway(&[a.url(), b.url()], extra).await;
    let (g, admin) = (addr(&gw), gw.admin_addr().unwrap());
    let node = async |name: &str| {
        let status = get(admin, "/status").await.json();
        status["nodes"].as_array().unwrap().iter().find(|n| n["name"] == name).unwrap().clone()
    };
    eventually(async || node("n1").await["healthy"] == false).await;
    assert_eq!(node("n0").await["healthy"], true);
    let reason = node("n1").await["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("behind the best node"), "{reason}");
    for i in 0..10 {
        assert_eq!(call(g, &rpc("iota_getObject", i), &[]).await.status, 200);
    }
    assert_eq!(seen(&b).len(), 0, "the lagging node served nothing");
    assert_eq!(seen(&a).len(), 10);
    // It catches up: back in.
    b.state().apply(&testnode::StatePatch { checkpoint_lag: Some(0), ..Default::default() });
    eventually(async || node("n1").await["healthy"] == true).await;
}

async fn evm_call(gw: std::net::SocketAddr, body: &str) -> Reply {
    send(
        &client(),
        Method::POST,
        format!("http://{gw}/v1/chain/evm"),
        &[("content-type", "application/json")],
        body.to_owned(),
    )
    .await
}

fn eth(method: &str, id: u64, params: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#)
}

#[tokio::test]
async fn the_evm_profile_judges_every_call_of_a_batch_and_caps_log_ranges() {
    let n = node().await;
    let extra = "profile = \"evm\"\nmax_batch = 5\n\n[health]\ninterval = \"100ms\"\n\n[rate_limit]\nper_client = \"1/s\"\nburst = 40\n\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n";
    let gw = gateway(&[n.url()], extra).await;
    let g = addr(&gw);
    let r = evm_call(g, &eth("eth_blockNumber", 1, "[]")).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["result"].as_str().unwrap().starts_with("0x"));
    // Denied families: never reach the node.
    for m in
        ["debug_traceTransaction", "admin_peers", "personal_unlockAccount", "eth_sendTransaction", "txpool_content"]
    {
        refused(&evm_call(g, &eth(m, 2, "[]")).await, 404, -32601, 2.into());
    }
    // A batch is judged whole: all allowed passes; one denied call refuses it all.
    let ok = format!("[{},{}]", eth("eth_chainId", 1, "[]"), eth("net_version", 2, "[]"));
    let r = evm_call(g, &ok).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    let bad = format!("[{},{}]", eth("eth_chainId", 3, "[]"), eth("debug_traceTransaction", 4, "[]"));
    refused(&evm_call(g, &bad).await, 404, -32601, serde_json::Value::Null);
    let long = format!("[{}]", vec![eth("eth_chainId", 5, "[]"); 6].join(","));
    refused(&evm_call(g, &long).await, 400, -32010, serde_json::Value::Null);
    // Costs add up: a batch of 5 eth_sendRawTransaction costs 50, over the burst of 40.
    let pricey = format!("[{}]", vec![eth("eth_sendRawTransaction", 6, "[\"0x00\"]"); 5].join(","));
    refused(&evm_call(g, &pricey).await, 429, -32009, serde_json::Value::Null);
    // eth_getLogs: a known range over max_logs_range (1000) is refused, a narrow one passes.
    let logs = |from: &str, to: &str| eth("eth_getLogs", 7, &format!(r#"[{{"fromBlock":"{from}","toBlock":"{to}"}}]"#));
    refused(&evm_call(g, &logs("0x0", "0x5000")).await, 400, -32602, 7.into());
    assert_eq!(evm_call(g, &logs("0x100", "0x200")).await.status, 200);
    let hash = eth("eth_getLogs", 8, r#"[{"blockHash":"0xabc"}]"#);
    assert_eq!(evm_call(g, &hash).await.status, 200);
    // From the chain's start to its head: refused once the head is known (from the health checks).
    eventually(async || get(gw.admin_addr().unwrap(), "/status").await.json()["nodes"][0]["reason"] == "ok").await;
    refused(&evm_call(g, &logs("earliest", "latest")).await, 400, -32602, 7.into());
    assert_eq!(evm_call(g, &logs("latest", "latest")).await.status, 200);
    let seen = seen(&n);
    assert!(
        !seen.iter().any(|m| m.starts_with("debug_") || m.starts_with("admin_") || m.starts_with("personal_")),
        "{seen:?}"
    );
    assert_eq!(seen.iter().filter(|m| *m == "eth_getLogs").count(), 3, "{seen:?}");
    assert!(!seen.iter().any(|m| m == "eth_sendRawTransaction"), "{seen:?}");
}

mod websocket {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

    async fn open(gw: std::net::SocketAddr, path: &str, key: Option<&str>) -> Ws {
        let mut req = format!("ws://{gw}{path}").into_client_request().unwrap();
        if let Some(k) = key {
            req.headers_mut().insert("x-api-key", k.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req).await.unwrap().0
    }

    async fn next_json(ws: &mut Ws) -> serde_json::Value {
        loop {
            let m = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
            if let Message::Text(t) = m {
                return serde_json::from_str(&t).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn every_websocket_message_is_judged_like_a_post() {
        let n = node().await;
        let gw = gateway(&[n.url()], &format!("max_subscriptions_per_client = 2\n{}", rebased(""))).await;
        let g = addr(&gw);
        let mut ws = open(g, "/subscribe", None).await;
        // Allowed: the node answers. Denied, key-only, malformed, batches: the gateway answers,
        // with the call's id, and the node never sees them.
        ws.send(Message::text(rpc("iota_getChainIdentifier", 1))).await.unwrap();
        assert_eq!(next_json(&mut ws).await["result"], "6364aad5");
        for (body, code, id) in [
            (rpc("iota_tryGetObjectBeforeVersion", 2), -32601, serde_json::json!(2)),
            (rpc("unsafe_moveCall", 3), -32001, serde_json::json!(3)),
            (
                r#"{"jsonrpc":"2.0","id":4,"method":"iota\u005ftryGetObjectBeforeVersion"}"#.to_owned(),
                -32601,
                serde_json::json!(4),
            ),
            ("{not json".to_owned(), -32700, serde_json::Value::Null),
            (format!("[{}]", rpc("iota_getObject", 5)), -32005, serde_json::Value::Null),
        ] {
            ws.send(Message::text(body.clone())).await.unwrap();
            let j = next_json(&mut ws).await;
            assert_eq!((j["error"]["code"].as_i64(), &j["id"]), (Some(code), &id), "{body}: {j}");
        }
        // Binary frames are judged too.
        ws.send(Message::binary(rpc("iota_tryGetObjectBeforeVersion", 6).into_bytes())).await.unwrap();
        assert_eq!(next_json(&mut ws).await["error"]["code"], -32601);
        // Subscriptions: at most max_subscriptions_per_client (2) live, per client, across connections.
        for i in 0..2 {
            ws.send(Message::text(rpc("iotax_subscribeEvent", 10 + i))).await.unwrap();
            assert!(next_json(&mut ws).await.get("result").is_some());
            assert_eq!(next_json(&mut ws).await["params"]["subscription"], 1, "the notification");
        }
        let mut other = open(g, "/subscribe", None).await;
        other.send(Message::text(rpc("iotax_subscribeTransaction", 12))).await.unwrap();
        assert_eq!(next_json(&mut other).await["error"]["code"], -32009);
        // A connection's subscriptions end with it.
        ws.close(None).await.unwrap();
        drop(ws);
        eventually(async || {
            other.send(Message::text(rpc("iotax_subscribeTransaction", 13))).await.unwrap();
            next_json(&mut other).await.get("result").is_some()
        })
        .await;
        let seen = seen(&n);
        assert!(!seen.iter().any(|m| m == "iota_tryGetObjectBeforeVersion" || m == "unsafe_moveCall"), "{seen:?}");
        // With a key, the builders pass.
        let mut keyed = open(g, "/subscribe", Some("rpc-test-key")).await;
        keyed.send(Message::text(rpc("unsafe_moveCall", 20))).await.unwrap();
        assert!(next_json(&mut keyed).await.get("result").is_some());
    }

    #[tokio::test]
    async fn one_budget_across_http_and_websocket() {
        let n = node().await;
        let gw = gateway(&[n.url()], &rebased("")).await;
        let g = addr(&gw);
        // A plain GET on the WebSocket path is no way in: judged as an empty call.
        refused(&get(g, "/subscribe").await, 400, -32700, serde_json::Value::Null);
        // Burst 30: a refusal cost 1, two scans over HTTP (10), three over WebSocket (15), then
        // both are out.
        for i in 0..2 {
            assert_eq!(call(g, &rpc("iotax_queryEvents", i), &[]).await.status, 200);
        }
        let mut ws = open(g, "/subscribe", None).await;
        for i in 0..3 {
            ws.send(Message::text(rpc("iotax_queryEvents", 10 + i))).await.unwrap();
            assert!(next_json(&mut ws).await.get("result").is_some(), "ws call {i}");
        }
        ws.send(Message::text(rpc("iotax_queryEvents", 20))).await.unwrap();
        assert_eq!(next_json(&mut ws).await["error"]["code"], -32009);
        assert_eq!(call(g, &rpc("iotax_queryEvents", 21), &[]).await.status, 429);
    }

    #[tokio::test]
    async fn the_evm_websocket_is_judged_too() {
        let n = node().await;
        let gw = gateway(&[n.url()], "profile = \"evm\"\n\n[health]\nactive = false\n").await;
        let mut ws = open(addr(&gw), "/v1/chain/evm/ws", None).await;
        ws.send(Message::text(eth("eth_subscribe", 1, r#"["newHeads"]"#))).await.unwrap();
        assert_eq!(next_json(&mut ws).await["result"], "0x1");
        let _note = next_json(&mut ws).await;
        ws.send(Message::text(eth("debug_traceTransaction", 2, "[]"))).await.unwrap();
        assert_eq!(next_json(&mut ws).await["error"]["code"], -32601);
        let batch = format!("[{},{}]", eth("eth_chainId", 3, "[]"), eth("admin_peers", 4, "[]"));
        ws.send(Message::text(batch)).await.unwrap();
        assert_eq!(next_json(&mut ws).await["error"]["code"], -32601);
        assert!(!seen(&n).iter().any(|m| m == "debug_traceTransaction" || m == "admin_peers"));
    }
}

#[tokio::test]
async fn refused_websocket_messages_cost_like_refused_requests_and_a_flood_is_cut_off() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let n = node().await;
    let gw = gateway(&[n.url()], &rebased("")).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/subscribe", addr(&gw))).await.unwrap();
    // Burst 30: each denied call costs one; the connection ends before 100 of them are answered.
    let mut answered = 0;
    for i in 0..100 {
        if ws.send(Message::text(rpc("iota_tryGetObjectBeforeVersion", i))).await.is_err() {
            break;
        }
        match tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await.unwrap() {
            Some(Ok(Message::Text(_))) => answered += 1,
            _ => break,
        }
    }
    assert!((25..=35).contains(&answered), "{answered} refusals answered before the cut");
    // The address's budget is spent over HTTP too.
    assert_eq!(call(addr(&gw), &rpc("iota_getObject", 1), &[]).await.status, 429);
    assert!(seen(&n).is_empty());
}

mod grpc {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    /// A gRPC call over h2c: the status, the response's own grpc-status (trailers-only answers),
    /// the messages' bytes, and the trailers' grpc-status.
    async fn grpc(
        gw: std::net::SocketAddr,
        path: &str,
        key: Option<&str>,
    ) -> (u16, Option<String>, Bytes, Option<String>) {
        grpc_as("127.0.0.1", gw, path, key).await
    }

    /// The same from a loopback address of its own (`local`), on a new connection.
    async fn grpc_as(
        local: &str,
        gw: std::net::SocketAddr,
        path: &str,
        key: Option<&str>,
    ) -> (u16, Option<String>, Bytes, Option<String>) {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_local_address(Some(local.parse().unwrap()));
        let client = Client::builder(TokioExecutor::new()).http2_only(true).build::<_, Full<Bytes>>(connector);
        let mut req = http::Request::post(format!("http://{gw}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let resp = client.request(req.body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let head = resp.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
        let collected = resp.into_body().collect().await.unwrap();
        let trailer = collected.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.to_str().unwrap().to_owned());
        (status, head, collected.to_bytes(), trailer)
    }

    #[tokio::test]
    async fn grpc_calls_are_judged_by_their_path_and_streams_and_trailers_pass() {
        let n = node().await;
        let extra = "\n[[method]]\nname = \"/iota.grpc.v1.LedgerService/GetEpoch\"\naccess = \"deny\"\n";
        let gw = gateway(&[n.url()], &rebased(extra)).await;
        let g = addr(&gw);
        // A unary call: one message, grpc-status 0 in the trailers, through HTTP/2 both ways.
        let (status, head, body, trailer) = grpc(g, "/iota.grpc.v1.LedgerService/GetObject", None).await;
        assert_eq!((status, head.as_deref(), trailer.as_deref()), (200, None, Some("0")));
        assert_eq!(body.len(), 5 + 2 + "GetObject 0".len(), "{body:?}");
        // A server stream: three messages, then the trailers.
        let (_, _, body, trailer) = grpc(g, "/iota.grpc.v1.LedgerService/StreamCheckpoints", None).await;
        assert_eq!((body.len(), trailer.as_deref()), (3 * (5 + 2 + "StreamCheckpoints 0".len()), Some("0")));
        // The node's own error status passes as it sent it.
        let (status, head, _, _) = grpc(g, "/iota.grpc.v1.LedgerService/Fail", None).await;
        assert_eq!((status, head.as_deref()), (200, Some("5")), "a trailers-only answer passes as it came");
        // Refusals in gRPC's form: 200, the status in the headers, nothing sent to the node.
        let (status, head, body, _) = grpc(g, "/iota.grpc.v1.TransactionService/SimulateTransaction", None).await;
        assert_eq!((status, head.as_deref(), body.len()), (200, Some("16"), 0), "simulation needs a key");
        let (_, head, _, trailer) =
            grpc(g, "/iota.grpc.v1.TransactionService/SimulateTransaction", Some("rpc-test-key")).await;
        assert_eq!((head, trailer.as_deref()), (None, Some("0")));
        let (_, head, _, _) = grpc(g, "/iota.grpc.v1.LedgerService/GetEpoch", None).await;
        assert_eq!(head.as_deref(), Some("12"), "a [[method]] rule on a gRPC path");
        let seen = seen(&n);
        assert_eq!(seen.iter().filter(|m| m.ends_with("SimulateTransaction")).count(), 1, "{seen:?}");
        assert!(!seen.iter().any(|m| m.ends_with("GetEpoch")), "{seen:?}");
        // The same budget as every other call: 30 at cost 1, then RESOURCE_EXHAUSTED (8).
        let mut last = None;
        for _ in 0..40 {
            last = grpc(g, "/iota.grpc.v1.LedgerService/GetObject", None).await.1;
            if last.is_some() {
                break;
            }
        }
        assert_eq!(last.as_deref(), Some("8"));
    }

    #[tokio::test]
    async fn a_client_holds_at_most_max_streams_per_client_open_server_streams() {
        let n = node().await;
        let gw = gateway(&[n.url()], &format!("max_streams_per_client = 1\n{}", rebased(""))).await;
        let g = addr(&gw);
        let client = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Full<Bytes>>();
        let call = |path: &str| {
            http::Request::post(format!("http://{g}{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
                .unwrap()
        };
        // One stream open (its body still coming, 300 ms a message): a second is refused with
        // RESOURCE_EXHAUSTED; unary calls are no streams.
        let first = client.request(call("/iota.grpc.v1.LedgerService/StreamSlowCheckpoints")).await.unwrap();
        assert!(first.headers().get("grpc-status").is_none());
        let second = client.request(call("/iota.grpc.v1.EventService/SubscribeEvents")).await.unwrap();
        assert_eq!(second.headers()["grpc-status"], "8");
        assert_eq!(grpc(g, "/iota.grpc.v1.LedgerService/GetObject", None).await.3.as_deref(), Some("0"));
        // The first ends: there is room again.
        let ended = first.into_body().collect().await.unwrap();
        assert_eq!(ended.trailers().unwrap()["grpc-status"], "0");
        eventually(async || {
            grpc(g, "/iota.grpc.v1.LedgerService/StreamCheckpoints", None).await.3.as_deref() == Some("0")
        })
        .await;
    }

    #[tokio::test]
    async fn calls_the_node_refuses_cost_the_client_and_feed_jails() {
        let n = node().await;
        let extra = format!(
            "{}\n[bans]\n\n[[jail]]\nname = \"grpc-errors\"\nsource = \"gateway\"\nreasons = [\"node-refused\"]\nmaxretry = 4\n",
            rebased("")
        );
        let gw = gateway(&[n.url()], &extra).await;
        let g = addr(&gw);
        // Each failing call costs its own 1 and 1 more for the refusal; the fourth bans. Two fail
        // at once (trailers-only), two after their stream's messages (the status in the trailers):
        // if either kind went uncounted there would be no ban.
        // (From 127.0.0.7: the nodes' own address, 127.0.0.1, is never banned.)
        for _ in 0..2 {
            assert_eq!(grpc_as("127.0.0.7", g, "/iota.grpc.v1.LedgerService/Fail", None).await.1.as_deref(), Some("5"));
            let (status, head, body, trailer) =
                grpc_as("127.0.0.7", g, "/iota.grpc.v1.LedgerService/StreamFailCheckpoints", None).await;
            assert_eq!((status, head, trailer.as_deref()), (200, None, Some("5")), "the stream's status passes");
            assert_eq!(body.len(), 3 * (5 + 2 + "StreamFailCheckpoints 0".len()), "its messages pass");
        }
        // Banned: a new connection is closed at accept.
        eventually(async || status_from_addr("127.0.0.7", g, "/", "").await.is_empty()).await;
        assert_eq!(
            grpc(g, "/iota.grpc.v1.LedgerService/GetObject", None).await.3.as_deref(),
            Some("0"),
            "others go on"
        );
    }

    #[tokio::test]
    async fn streams_that_end_in_an_error_cost_the_client_twice() {
        let n = node().await;
        let gw = gateway(&[n.url()], &rebased("")).await;
        let g = addr(&gw);
        // A burst of 30 at cost 1: a stream the node ends with NOT_FOUND costs 2, so about 15
        // pass (one more if the 1/s refill lands meanwhile), not 30.
        let mut passed = 0;
        loop {
            let (_, head, _, trailer) =
                grpc_as("127.0.0.9", g, "/iota.grpc.v1.LedgerService/StreamFailCheckpoints", None).await;
            match (head.as_deref(), trailer.as_deref()) {
                (None, Some("5")) => passed += 1,
                (Some("8"), _) => break,
                other => panic!("{other:?}"),
            }
            assert!(passed <= 30, "failed streams were not charged");
        }
        assert!((15..=17).contains(&passed), "{passed}");
        // Streams that end well cost 1 (another address, its own budget).
        let mut passed = 0;
        while grpc_as("127.0.0.10", g, "/iota.grpc.v1.LedgerService/StreamCheckpoints", None).await.1.is_none() {
            passed += 1;
            assert!(passed <= 40);
        }
        assert!((30..=32).contains(&passed), "{passed}");
    }
}
