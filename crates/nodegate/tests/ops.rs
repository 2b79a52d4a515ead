//! Operations (issue 16): `/metrics` read by the Prometheus project's own text parser (Debian's
//! python3-prometheus-client), and the status page rendered by a real headless browser (Debian's
//! chromium). Both are installed by scripts/test.

mod common;

use std::collections::HashMap;

use common::*;

/// One sample: its name, labels and value.
#[derive(Debug, serde::Deserialize)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Parses a scrape with prometheus_client.parser (the reference Python client's parser): every
/// sample, or the parser's error.
fn parse_with_prometheus(text: &str) -> Vec<Sample> {
    let dir = temp_dir("metrics-parse");
    let file = dir.join("scrape.txt");
    std::fs::write(&file, text).unwrap();
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in family.samples:
        out.append({"name": s.name, "labels": s.labels, "value": s.value, "type": family.type})
print(json.dumps(out))
"#;
    // Debian's python3, where python3-prometheus-client is (not a pyenv's).
    let out = std::process::Command::new("/usr/bin/python3").arg("-c").arg(script).arg(&file).output().unwrap();
    assert!(out.status.success(), "the Prometheus parser refused the scrape: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn metrics_count_what_clients_saw_and_parse_with_the_prometheus_parser() {
    let (a, b) = (node().await, node().await);
    let extra = "\n[health]\nactive = false\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
                 [rate_limit]\nper_client = \"1/min\"\nburst = 6\n\n\
                 [[route]]\npath = \"/api/v1/peers\"\naccess = \"key\"\n";
    let gw = gateway(&[a.url(), b.url()], extra).await;
    let g = addr(&gw);
    let admin = gw.admin_addr().unwrap();
    for _ in 0..3 {
        assert_eq!(get(g, "/api/v1/info").await.status, 200);
    }
    assert_eq!(get(g, "/api/v1/not-here").await.status, 404);
    assert_eq!(get(g, "/api/v1/peers").await.status, 401);
    // The burst is spent (the refusals spent it too): refused by the per-client limit.
    let mut limited = 0;
    for _ in 0..4 {
        if get(g, "/api/v1/info").await.status == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 1, "the limit never answered 429");

    let scrape = get(admin, "/metrics").await;
    assert_eq!(scrape.status, 200);
    assert!(scrape.headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(scrape.body.to_vec()).unwrap();
    let samples = parse_with_prometheus(&text);

    let answered =
        value(&samples, "nodegate_requests_total", &[("class", "public"), ("method", "GET"), ("status", "200")]);
    let by_node: f64 = ["n0", "n1"]
        .iter()
        .map(|n| value(&samples, "nodegate_requests_total", &[("status", "200"), ("node", n)]))
        .sum();
    assert_eq!(answered, 7.0 - f64::from(limited), "{text}");
    assert_eq!(by_node, answered, "every 200 came from a node: {text}");
    assert_eq!(value(&samples, "nodegate_requests_total", &[("status", "404"), ("node", "none")]), 1.0, "{text}");
    assert_eq!(value(&samples, "nodegate_requests_total", &[("class", "key"), ("status", "401")]), 1.0, "{text}");
    assert_eq!(value(&samples, "nodegate_requests_total", &[("status", "429")]), f64::from(limited), "{text}");
    assert_eq!(value(&samples, "nodegate_refusals_total", &[("reason", "not-exposed")]), 1.0);
    assert_eq!(value(&samples, "nodegate_refusals_total", &[("reason", "credential-missing")]), 1.0);
    assert_eq!(value(&samples, "nodegate_refusals_total", &[("reason", "rate-limited")]), f64::from(limited));
    assert_eq!(value(&samples, "nodegate_limit_refusals_total", &[("limit", "per-client")]), f64::from(limited));
    // Histograms: every request answered is in the client-facing one; node latencies are recorded.
    assert_eq!(value(&samples, "nodegate_request_duration_seconds_count", &[]), 9.0, "{text}");
    let inf = value(&samples, "nodegate_request_duration_seconds_bucket", &[("class", "public"), ("le", "+Inf")]);
    assert_eq!(inf, value(&samples, "nodegate_request_duration_seconds_count", &[("class", "public")]));
    assert_eq!(value(&samples, "nodegate_node_response_seconds_count", &[]), answered, "{text}");
    for node in ["n0", "n1"] {
        assert_eq!(value(&samples, "nodegate_node_healthy", &[("node", node)]), 1.0);
        assert_eq!(value(&samples, "nodegate_node_in_flight", &[("node", node)]), 0.0);
    }
    assert_eq!(value(&samples, "nodegate_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert!(value(&samples, "nodegate_config_loaded_timestamp_seconds", &[]) > 1.7e9);
    // Bounded labels: no client address, path or request id anywhere.
    let labels: std::collections::BTreeSet<&str> =
        samples.iter().flat_map(|s| s.labels.keys().map(String::as_str)).collect();
    let allowed = ["class", "method", "status", "node", "le", "reason", "limit", "version", "result", "jail", "name"];
    assert!(labels.iter().all(|l| allowed.contains(l)), "unexpected labels: {labels:?}");
    assert!(!text.contains("127.0.0.1") && !text.contains("/api/"), "an address or a path is in the metrics");

    // The Grafana dashboard in the repository asks only for metrics that exist (those of TLS and
    // [cluster] are absent here; tests/tls.rs and tests/cluster.rs see them).
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../dashboards/grafana-nodegate.json"))
            .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    assert!(exprs.len() >= 15, "{exprs:?}");
    let elsewhere = [
        "nodegate_tls_handshakes_total",
        "nodegate_tls_certificate_expiry_timestamp_seconds",
        "nodegate_cluster_redis_up",
    ];
    for expr in &exprs {
        for (i, _) in expr.match_indices("nodegate_") {
            let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let known = samples.iter().any(|s| s.name == name) || text.contains(&format!("# TYPE {name} "));
            assert!(
                known || elsewhere.contains(&name.as_str()),
                "the dashboard asks for `{name}`, which /metrics lacks"
            );
        }
    }
}

/// Runs headless chromium on `url` with `args`; its standard output.
async fn chromium(url: &str, args: &[&str]) -> String {
    let profile = temp_dir("chromium-profile");
    let out = tokio::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("chromium runs (scripts/test installs it)");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_status_page_renders_a_running_gateways_nodes_in_a_real_browser() {
    let n = node().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let dir = temp_dir("status-page");
    let path = dir.join("nodegate.toml");
    let extra = "\n[health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 1\n\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n\n[log]\naccess = false\n\n[bans]\n";
    std::fs::write(&path, config_text(&[n.url(), dead], extra)).unwrap();
    let gw = nodegate::Gateway::start(nodegate::Config::load(&path).unwrap()).await.unwrap();
    let (g, admin) = (addr(&gw), gw.admin_addr().unwrap());
    eventually(async || get(admin, "/status").await.json()["available"] == 1).await;
    for _ in 0..5 {
        assert_eq!(get(g, "/api/v1/info").await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(status_from_addr("127.0.0.9", g, "/api/v1/not-here", "").await, "404");
    }
    // A ban whose reason is markup: the page must show it as text, never run it.
    let attack = r#"<img src=x onerror="document.title='pwned'">"#;
    let ban = serde_json::json!({"address": "198.51.100.7", "for": "1h", "reason": attack}).to_string();
    let r = send(&client(), http::Method::POST, format!("http://{admin}/bans"), &[], ban).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    eventually(async || !get(admin, "/status").await.json()["top_refused"].as_array().unwrap().is_empty()).await;

    let page = get(admin, "/").await;
    assert_eq!(page.status, 200);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'") && !csp.contains("unsafe-inline"), "{csp}");

    let url = format!("http://{admin}/");
    let dom = chromium(&url, &["--virtual-time-budget=3000", "--dump-dom"]).await;
    assert!(
        dom.contains("data-rendered=\"1\"") || dom.contains("data-rendered=\"2\""),
        "the script did not render (CSP?):\n{dom}"
    );
    for expected in ["n0", "n1", "healthy", "down", "127.0.0.9", "not-exposed", "198.51.100.7/32", "1 of 2"] {
        assert!(dom.contains(expected), "`{expected}` is not on the page:\n{dom}");
    }
    assert!(dom.contains(&path.display().to_string()), "the config's source is not on the page");
    assert!(dom.contains("&lt;img src=x"), "the ban's reason is not shown as text:\n{dom}");
    assert!(!dom.contains("<img"), "markup from a ban's reason became an element");
    assert!(dom.contains("<title>nodegate status</title>"), "script from a ban's reason ran in the page");

    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/status-page.png");
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    chromium(&url, &["--virtual-time-budget=3000", "--window-size=1280,1100", "--hide-scrollbars", &arg]).await;
    let png = std::fs::read(&shot).expect("no screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "not a screenshot: {} bytes", png.len());
    println!("screenshot: {}", shot.display());
}

#[tokio::test]
async fn off_loopback_the_admin_api_wants_an_admin_credential() {
    use base64::Engine as _;
    let n = node().await;
    let key = |name: &str, key: &str, role: &str| {
        format!(
            "\n[[api_key]]\nname = \"{name}\"\nhash = \"{}\"\nroles = [\"{role}\"]\n",
            nodegate::pipeline::auth::hash(key)
        )
    };
    let extra = format!(
        "\n[health]\nactive = false\n\n[admin]\nlisten = \"0.0.0.0:0\"\n{}{}",
        key("ops", "ng_admin-key", "admin"),
        key("wallet", "ng_wallet-key", "key")
    );
    let gw = gateway(&[n.url()], &extra).await;
    let port = gw.admin_addr().unwrap().port();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let basic = |password: &str| {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("anyone:{password}")))
    };
    for path in ["/", "/status", "/metrics", "/bans"] {
        let none = get(admin, path).await;
        assert_eq!(none.status, 401, "{path} without a credential");
        assert!(none.headers["www-authenticate"].to_str().unwrap().starts_with("Basic realm="));
        assert_eq!(get_with(admin, path, &[("x-api-key", "ng_wallet-key")]).await.status, 403, "{path}, key role");
        assert_eq!(get_with(admin, path, &[("x-api-key", "ng_wrong")]).await.status, 401, "{path}, wrong key");
        assert_eq!(get_with(admin, path, &[("x-api-key", "ng_admin-key")]).await.status, 200, "{path}");
        let bearer = "Bearer ng_admin-key";
        assert_eq!(get_with(admin, path, &[("authorization", bearer)]).await.status, 200, "{path}");
        assert_eq!(get_with(admin, path, &[("authorization", &basic("ng_admin-key"))]).await.status, 200, "{path}");
        assert_eq!(get_with(admin, path, &[("authorization", &basic("ng_wallet-key"))]).await.status, 403, "{path}");
    }
    // A change with the credential is accepted.
    let ban = serde_json::json!({"address": "198.51.100.9", "for": "1m"}).to_string();
    let r = send(&client(), http::Method::POST, format!("http://{admin}/bans"), &[("x-api-key", "ng_admin-key")], ban)
        .await;
    assert_eq!(r.status, 201);
}
