//! End-to-end: API keys on key and admin routes, and the credential never reaching the node.

mod common;

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use common::*;
use http::Method;
use nodegate::pipeline::auth::hash;

fn keys_config() -> String {
    format!(
        "\n[[api_key]]\nname = \"wallet\"\nhash = \"{}\"\nroles = [\"key\"]\n\
         \n[[api_key]]\nname = \"ops\"\nhash = \"{}\"\nroles = [\"admin\"]\n\
         \n[[route]]\npath = \"/api/v1/messages\"\nmethods = [\"POST\"]\naccess = \"key\"\n",
        hash("wallet-secret"),
        hash("ops-secret")
    )
}

#[tokio::test]
async fn keys_open_their_routes_and_nothing_more() {
    let n = node().await;
    let gw = gateway(&[n.url()], &keys_config()).await;
    let g = addr(&gw);
    // Admin route: no credential 401, a wrong one 401, a key without the admin role 403.
    get(g, "/api/v1/peers").await.assert_gateway_error(401);
    get_with(g, "/api/v1/peers", &[("authorization", "Bearer guess")]).await.assert_gateway_error(401);
    get_with(g, "/api/v1/peers", &[("authorization", "Bearer wallet-secret")]).await.assert_gateway_error(403);
    assert_eq!(n.state().requests.load(Relaxed), 0);
    // The admin key opens it, by either header.
    assert_eq!(get_with(g, "/api/v1/peers", &[("authorization", "Bearer ops-secret")]).await.status, 200);
    assert_eq!(get_with(g, "/api/v1/peers", &[("x-api-key", "ops-secret")]).await.status, 200);
    assert_eq!(n.state().requests.load(Relaxed), 2);

    // A key route: message submission needs any valid key; reading stays public.
    let c = client();
    let url = format!("http://{g}/api/v1/messages");
    let body = r#"{"payload":null,"nonce":"42"}"#;
    let json = ("content-type", "application/json");
    send(&c, Method::POST, url.clone(), &[json], body).await.assert_gateway_error(401);
    let r = send(&c, Method::POST, url.clone(), &[json, ("x-api-key", "wallet-secret")], body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = send(&c, Method::POST, url.clone(), &[json, ("authorization", "Bearer ops-secret")], body).await;
    assert_eq!(r.status, 201, "an admin key opens key routes too");
    assert_eq!(send(&c, Method::GET, url, &[], Bytes::new()).await.status, 200);
    assert_eq!(n.state().submissions.load(Relaxed), 2);
}

#[tokio::test]
async fn the_credential_never_reaches_the_node() {
    let n = node().await;
    let gw = gateway(&[n.url()], &keys_config()).await;
    let r = get_with(
        addr(&gw),
        "/debug/headers",
        &[("authorization", "Bearer ops-secret"), ("x-api-key", "wallet-secret")],
    )
    .await;
    assert!(r.seen("authorization").is_empty() && r.seen("x-api-key").is_empty(), "{:?}", r.seen_headers());
}
