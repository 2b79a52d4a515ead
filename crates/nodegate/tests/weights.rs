//! Weights, alone in their own test binary: shares are measured, and other tests' load on the same
//! two cores would look to the balancer like latency peaks on the nodes.

mod common;

use std::sync::atomic::Ordering::Relaxed;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_are_honoured_within_ten_percent_on_equal_nodes() {
    let nodes = [node().await, node().await, node().await];
    // Equal nodes that each take 20 ms (against which scheduling jitter in this one test process
    // is small), under 32 concurrent clients: requests are in flight on every node, which is when
    // weights decide the shares.
    for n in &nodes {
        n.state().delay_ms.store(20, Relaxed);
    }
    let weights = [1u32, 2, 3];
    let spec: Vec<_> = nodes.iter().zip(weights).map(|(n, w)| (n.url(), w, false)).collect();
    let gw = gateway_over(&spec, "").await;
    load(addr(&gw), "/api/v1/info", 200, 32).await;
    for n in &nodes {
        n.state().requests.store(0, Relaxed);
    }
    assert_eq!(load(addr(&gw), "/api/v1/info", 3000, 32).await, 0);
    let s = served(&[&nodes[0], &nodes[1], &nodes[2]]);
    let total: u64 = s.iter().sum();
    eprintln!("requests per node for weights {weights:?}: {s:?}");
    for (i, w) in weights.iter().enumerate() {
        let share = s[i] as f64 / total as f64;
        let want = f64::from(*w) / 6.0;
        assert!(
            (share - want).abs() <= want * 0.1,
            "node {i} (weight {w}): {share:.3} of requests, want {want:.3}; {s:?}"
        );
    }
}
