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
}
