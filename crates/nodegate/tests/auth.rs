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

mod jwt {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";
    const PUBLIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ed25519-test-public.pem");
    const PRIVATE: &[u8] = include_bytes!("data/ed25519-test-private.pem");

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn config() -> String {
        format!(
            "\n[[jwt]]\nname = \"wallet-issuer\"\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\nissuer = \"https://auth.example\"\naudience = \"nodegate\"\n\
             \n[[jwt]]\nname = \"ops-issuer\"\nalgorithm = \"EdDSA\"\npublic_key = \"{PUBLIC}\"\n"
        )
    }

    fn hs256(claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    fn eddsa(claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::EdDSA), &claims, &EncodingKey::from_ed_pem(PRIVATE).unwrap()).unwrap()
    }

    fn good(roles: &[&str]) -> serde_json::Value {
        json!({"sub": "client-7", "iss": "https://auth.example", "aud": "nodegate", "exp": now() + 600, "roles": roles})
    }

    async fn peers_with(g: std::net::SocketAddr, token: &str) -> u16 {
        get_with(g, "/api/v1/peers", &[("authorization", &format!("Bearer {token}"))]).await.status.as_u16()
    }

    #[tokio::test]
    async fn valid_tokens_open_routes_by_role() {
        let n = node().await;
        let gw = gateway(&[n.url()], &config()).await;
        let g = addr(&gw);
        assert_eq!(peers_with(g, &hs256(good(&["admin"]))).await, 200);
        assert_eq!(peers_with(g, &hs256(good(&["key"]))).await, 403);
        assert_eq!(peers_with(g, &eddsa(json!({"exp": now() + 600, "roles": ["admin"]}))).await, 200);
        assert_eq!(n.state().requests.load(Relaxed), 2);
    }

    #[tokio::test]
    async fn each_subject_of_an_issuer_has_its_own_rate_limit() {
        let n = node().await;
        let gw = gateway(&[n.url()], &format!("{}\n[rate_limit]\nper_client = \"1/min\"\nburst = 1\n", config())).await;
        let g = addr(&gw);
        let token = |sub: &str| {
            hs256(
                json!({"sub": sub, "iss": "https://auth.example", "aud": "nodegate", "exp": now() + 600, "roles": ["admin"]}),
            )
        };
        assert_eq!(peers_with(g, &token("alice")).await, 200);
        assert_eq!(peers_with(g, &token("alice")).await, 429);
        assert_eq!(peers_with(g, &token("bob")).await, 200, "another subject of the same issuer was limited");
        // Subjects are exact: ones that differ only in what a printable filter would drop are
        // different clients.
        for (a, b) in [("John Smith", "JohnSmith"), ("böb", "bb"), ("a:b", "a%3Ab")] {
            assert_eq!(peers_with(g, &token(a)).await, 200, "{a}");
            assert_eq!(peers_with(g, &token(b)).await, 200, "{b} shared {a}'s budget");
        }
    }

    #[tokio::test]
    async fn bad_tokens_are_refused() {
        let n = node().await;
        let gw = gateway(&[n.url()], &config()).await;
        let g = addr(&gw);
        let mut expired = good(&["admin"]);
        expired["exp"] = json!(now() - 3600);
        let mut not_yet = good(&["admin"]);
        not_yet["nbf"] = json!(now() + 3600);
        let mut wrong_aud = good(&["admin"]);
        wrong_aud["aud"] = json!("someone-else");
        let mut wrong_iss = good(&["admin"]);
        wrong_iss["iss"] = json!("https://evil.example");
        let mut no_exp = good(&["admin"]);
        no_exp.as_object_mut().unwrap().remove("exp");
        // Privilege escalation: a `key` token's signature under an `admin` token's claims.
        let key_token = hs256(good(&["key"]));
        let admin_token = hs256(good(&["admin"]));
        let (k, a): (Vec<&str>, Vec<&str>) = (key_token.split('.').collect(), admin_token.split('.').collect());
        let tampered = format!("{}.{}.{}", k[0], a[1], k[2]);
        // alg: none, unsigned (the encoder checked against RFC 4648 vectors, so the token is well formed).
        use base64_url as b64;
        assert_eq!(
            (b64::encode(b"Man"), b64::encode(b"Ma"), b64::encode(b"M")),
            ("TWFu".into(), "TWE".into(), "TQ".into())
        );
        let none = format!(
            "{}.{}.",
            b64::encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64::encode(good(&["admin"]).to_string().as_bytes())
        );
        // Algorithm confusion: HS256 "signed" with the EdDSA public key as the HMAC secret.
        let public_pem = std::fs::read(PUBLIC).unwrap();
        let confused =
            encode(&Header::new(Algorithm::HS256), &good(&["admin"]), &EncodingKey::from_secret(&public_pem)).unwrap();
        for (what, token) in [
            ("expired", hs256(expired)),
            ("not yet valid", hs256(not_yet)),
            ("wrong audience", hs256(wrong_aud)),
            ("wrong issuer", hs256(wrong_iss)),
            ("no exp", hs256(no_exp)),
            ("tampered", tampered),
            ("alg none", none),
            ("HS/EdDSA confusion", confused),
            ("garbage", "a.b.c".into()),
        ] {
            assert_eq!(peers_with(g, &token).await, 401, "{what} was not refused");
        }
        assert_eq!(n.state().requests.load(Relaxed), 0);
    }

    /// The few lines of base64url a test needs to hand-make an unsigned token.
    mod base64_url {
        pub fn encode(data: &[u8]) -> String {
            const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in data.chunks(3) {
                let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for i in 0..=chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
    }
}

#[tokio::test]
async fn a_route_can_pass_the_credential_on_and_narrow_the_addresses() {
    let n = node().await;
    let extra = format!(
        "{}\n[[route]]\npath = \"/debug/headers\"\naccess = \"key\"\npass_credential = true\n\
         \n[[route]]\npath = \"/debug/echo\"\naccess = \"public\"\nallow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.1\"]\n",
        keys_config()
    );
    let gw = gateway(&[n.url()], &extra).await;
    let r = get_with(addr(&gw), "/debug/headers", &[("x-api-key", "wallet-secret")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen("x-api-key"), ["wallet-secret"], "the route passes the credential on");
    // The route denies the only address this test can come from.
    get(addr(&gw), "/debug/echo").await.assert_gateway_error(403);
}
