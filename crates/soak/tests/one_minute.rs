//! The soak itself, for one minute (one round of its fault schedule, compressed): every client and
//! attacker and every fault once, against the gateway built with this test. A run whose verdict is
//! "failed" (an error no fault explains, a submission twice or lost, an attack answered wrongly,
//! a gateway gone) fails the test, with the report as the message. bench/soak runs it for ten
//! minutes on release builds.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn one_minute_of_everything_at_once() {
    let soak = PathBuf::from(env!("CARGO_BIN_EXE_soak"));
    // The workspace's other binaries sit beside this one (cargo test --workspace builds them).
    let bin = soak.parent().expect("a directory");
    let (nodegate, testnode) = (bin.join("nodegate"), bin.join("testnode"));
    if !nodegate.exists() || !testnode.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "nodegate", "-p", "testnode"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "cannot build nodegate and testnode");
    }
    let dir = std::env::temp_dir().join(format!("nodegate-soak-test-{}", std::process::id()));
    let out = Command::new(&soak)
        .args(["--minutes", "1", "--cycle", "55"])
        .arg("--nodegate")
        .arg(&nodegate)
        .arg("--testnode")
        .arg(&testnode)
        .arg("--dir")
        .arg(&dir)
        .output()
        .expect("soak runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    for section in ["## Outcomes by class", "## Submissions", "## Latency", "## Gateways' memory", "## Verdict"] {
        assert!(report.contains(section), "no {section:?} in\n{report}");
    }
    // Every fault ran, and clients saw the renewed certificate.
    for fault in ["killed", "5xx", "slow", "redis killed", "redis frozen", "certificate renewed", "banned", "reload"] {
        assert!(report.contains(fault), "fault {fault:?} never ran:\n{report}");
    }
    assert!(report.contains("shown 2 distinct certificates"), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}
