//! The simulated node answers like a node, and its switches do what they say.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use testnode::{Options, TestNode};

async fn call(method: &str, url: String, body: &str) -> (u16, serde_json::Value) {
    let c = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn info_reflects_sync_state_and_pow_feature() {
    let n = TestNode::start("127.0.0.1:0".parse().unwrap(), Options::default()).await.unwrap();
    let (s, info) = call("GET", format!("{}/api/v1/info", n.url()), "").await;
    assert_eq!(s, 200);
    assert_eq!(info["data"]["isHealthy"], true);
    assert_eq!(info["data"]["latestMilestoneIndex"], info["data"]["confirmedMilestoneIndex"]);
    assert_eq!(info["data"]["features"], serde_json::json!([]));

    let (s, _) = call("POST", format!("{}/control/state", n.url()), r#"{"synced":false,"pow":true}"#).await;
    assert_eq!(s, 200);
    let (_, info) = call("GET", format!("{}/api/v1/info", n.url()), "").await;
    assert_eq!(info["data"]["isHealthy"], false);
    let lag = info["data"]["latestMilestoneIndex"].as_u64().unwrap()
        - info["data"]["confirmedMilestoneIndex"].as_u64().unwrap();
    assert!(lag > 2);
    assert_eq!(info["data"]["features"], serde_json::json!(["PoW"]));
    let (s, _) = call("GET", format!("{}/health", n.url()), "").await;
    assert_eq!(s, 503);
    let (_, v2) = call("GET", format!("{}/api/core/v2/info", n.url()), "").await;
    assert_eq!(v2["status"]["isHealthy"], false);
    assert_eq!(v2["features"], serde_json::json!(["pow"]));

    let (s, e) = call("POST", format!("{}/control/state", n.url()), r#"{"synced":"yes"}"#).await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["code"], "400");
}

#[tokio::test]
async fn remote_pow_is_refused_when_off_and_mined_when_on() {
    let n = TestNode::start("127.0.0.1:0".parse().unwrap(), Options { pow_difficulty: 10, ..Default::default() })
        .await
        .unwrap();
    let url = format!("{}/api/v1/messages", n.url());
    for body in [
        r#"{"payload":null}"#,
        r#"{"payload":null,"nonce":null}"#,
        r#"{"payload":null,"nonce":""}"#,
        r#"{"payload":null,"nonce":"0"}"#,
    ] {
        let (s, e) = call("POST", url.clone(), body).await;
        assert_eq!(s, 400, "{body}");
        assert!(e["error"]["message"].as_str().unwrap().contains("proof of work"));
    }
    assert_eq!(n.state().submissions.load(Relaxed), 0);
    let (s, _) = call("POST", url.clone(), r#"{"payload":null,"nonce":"42"}"#).await;
    assert_eq!(s, 201);

    n.state().pow.store(true, Relaxed);
    let (s, r) = call("POST", url.clone(), r#"{"payload":null}"#).await;
    assert_eq!(s, 201);
    let id = r["data"]["messageId"].as_str().unwrap();
    let (_, m) = call("GET", format!("{url}/{id}"), "").await;
    let nonce: u64 = m["data"]["nonce"].as_str().unwrap().parse().unwrap();
    assert!(nonce > 0);
    assert_eq!(n.state().pow_jobs.load(Relaxed), 1);
    assert_eq!(n.state().submissions.load(Relaxed), 2);

    let (s, b) = call("POST", format!("{}/api/core/v2/blocks", n.url()), r#"{"protocolVersion":2,"parents":[]}"#).await;
    assert_eq!(s, 201);
    assert!(b["blockId"].as_str().unwrap().starts_with("0x"));
    assert_eq!(n.state().pow_jobs.load(Relaxed), 2);
}
