//! `nodegate audit` and `nodegate firewall` for real, each in a network namespace of its own
//! (`unshare -rn`): real listening sockets with their processes, a Docker-shaped NAT table, and a
//! client in a second namespace behind a veth pair, so that the input chain really stands between
//! them (loopback traffic is always let through).

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn nodegate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nodegate")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn audit_finds_what_faces_the_internet_in_a_network_namespace() {
    run_in_netns("audit_inside");
}

#[test]
#[ignore = "runs inside a network namespace, started by audit_finds_what_faces_the_internet_in_a_network_namespace"]
fn audit_inside() {
    assert!(std::env::var_os(IN_NETNS).is_some(), "only in a namespace of its own");
    sh(
        "ip link set lo up && ip link add v0 type veth peer name v1 && ip addr add 10.9.0.1/24 dev v0 && ip link set v0 up",
    );
    // A node host gone wrong: iota-node's admin on every address, Hornet's metrics on IPv6's
    // wildcard, the node API the gateway fronts also on every address, an unknown port; and
    // what is fine: metrics on loopback, P2P on UDP, the gateway's own port.
    let _admin = TcpListener::bind("0.0.0.0:1337").unwrap();
    let _metrics = std::net::TcpListener::bind("[::]:9311").unwrap();
    let _local_metrics = TcpListener::bind("127.0.0.1:9184").unwrap();
    let _api = TcpListener::bind("0.0.0.0:14265").unwrap();
    let _unknown = TcpListener::bind("10.9.0.1:5555").unwrap();
    let _p2p = std::net::UdpSocket::bind("0.0.0.0:8084").unwrap();
    let _gateway = TcpListener::bind("0.0.0.0:8443").unwrap();
    // Docker's NAT rules as iptables-nft writes them.
    sh("nft add table ip nat && nft add chain ip nat DOCKER && \
        nft add rule ip nat DOCKER iifname != \\\"docker0\\\" tcp dport 8080 dnat to 172.17.0.2:80");

    let dir = temp_dir("audit");
    // A process named docker-proxy listening, as Docker's userland proxy does for a published port.
    let proxy = dir.join("docker-proxy");
    // A link named docker-proxy to python: the kernel names the process after the path it ran.
    let python = sh("python3 -c 'import os, sys; print(os.path.realpath(sys.executable))'");
    std::os::unix::fs::symlink(python.trim(), &proxy).unwrap();
    let _docker_proxy = KillOnDrop(
        Command::new(&proxy)
            .args([
                "-c",
                "import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',9443))\ns.listen()\ntime.sleep(300)",
            ])
            .spawn()
            .unwrap(),
    );
    let sshd = write(&dir, "sshd_config", "PermitRootLogin yes\nPasswordAuthentication yes\nLogLevel VERBOSE\n");
    let config = write(
        &dir,
        "nodegate.toml",
        "[gateway]\nlisten = [\"0.0.0.0:8443\"]\ntrusted_proxies = [\"0.0.0.0/0\"]\n\n[[node]]\nname = \"hornet\"\n\
         url = \"http://127.0.0.1:14265\"\n\n[admin]\nlisten = \"0.0.0.0:9090\"\n\n[[api_key]]\nname = \"ops\"\n\
         hash = \"sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881\"\nroles = [\"admin\"]\n",
    );
    let (code, out, err) = nodegate(&["audit", "--config", &config, "--sshd-config", &sshd, "--json"]);
    assert_eq!(code, 2, "critical findings: exit 2\n{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let finding = |id: &str| report["findings"].as_array().unwrap().iter().find(|f| f["id"] == id).cloned();
    let severity = |id: &str| finding(id).map(|f| f["severity"].as_str().unwrap().to_owned());
    assert_eq!(severity("port.iota-admin.exposed").as_deref(), Some("critical"), "{report:#}");
    let admin = finding("port.iota-admin.exposed").unwrap();
    assert!(
        admin["message"].as_str().unwrap().contains("close epochs")
            && admin["fix"].as_str().unwrap().contains("127.0.0.1:1337")
    );
    assert_eq!(severity("port.hornet-metrics.exposed").as_deref(), Some("warning"));
    assert_eq!(severity("port.iota-metrics.exposed"), None, "on loopback: fine");
    assert_eq!(severity("gateway.bypass.14265").as_deref(), Some("critical"));
    assert_eq!(severity("port.unknown.5555-tcp").as_deref(), Some("info"));
    assert_eq!(severity("port.unknown.8443-tcp"), None, "the gateway's own port");
    assert!(!report["findings"].to_string().contains("8084"), "P2P is meant to be public");
    assert_eq!(severity("gateway.trusted-proxies.everyone").as_deref(), Some("critical"));
    assert_eq!(severity("gateway.admin.exposed").as_deref(), Some("warning"));
    assert_eq!(severity("sshd.permit-root-login").as_deref(), Some("critical"));
    assert_eq!(severity("sshd.log-level"), None, "VERBOSE is what bans want");
    assert_eq!(severity("firewall.none").as_deref(), Some("warning"));
    assert!(finding("docker.published.8080-tcp").is_some(), "{report:#}");
    eventually_sync("docker-proxy listening", || {
        let (_, out, _) = nodegate(&["audit", "--json"]);
        out.contains("docker.proxy.9443-tcp")
    });
    // Each socket with its process: this test binary, by its pid.
    let sockets = report["listening"].as_array().unwrap();
    let s1337 = sockets.iter().find(|s| s["address"] == "0.0.0.0:1337").unwrap();
    assert!(s1337["process"].as_str().unwrap().contains(&format!("(pid {})", std::process::id())), "{s1337}");
    assert_eq!((s1337["exposed"].as_bool(), s1337["known"].as_str()), (Some(true), Some("iota-node admin interface")));
    let udp = sockets.iter().find(|s| s["address"] == "0.0.0.0:8084").unwrap();
    assert_eq!(udp["proto"], "udp");
    let local = sockets.iter().find(|s| s["address"] == "127.0.0.1:9184").unwrap();
    assert_eq!(local["exposed"], false);
    // The text report: grouped by severity, each with its fix.
    let (_, text, _) = nodegate(&["audit", "--config", &config, "--sshd-config", &sshd]);
    let (crit, warn) = (text.find("CRITICAL").unwrap(), text.find("WARNING").unwrap());
    assert!(crit < warn && text.contains("fix: bind it to 127.0.0.1:1337"), "{text}");

    // With nodegate's firewall in place, what it closes is no longer a risk to report loudly.
    let fw_dir = dir.join("fw");
    let (code, out, err) = nodegate(&[
        "firewall",
        "--config",
        &config,
        "--sshd-config",
        &sshd,
        "--apply",
        "--state-dir",
        &fw_dir.display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(nodegate(&["firewall", "--confirm", "--state-dir", &fw_dir.display().to_string()]).0, 0);
    let (_, out, _) = nodegate(&["audit", "--config", &config, "--sshd-config", &sshd, "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let finding = |id: &str| report["findings"].as_array().unwrap().iter().find(|f| f["id"] == id).cloned();
    assert_eq!(finding("port.iota-admin.exposed").unwrap()["severity"], "info", "{report:#}");
    assert!(finding("firewall.none").is_none());
    assert_eq!(finding("gateway.bypass.14265").unwrap()["severity"], "warning");
    let open = report["firewall"]["nodegate_open"].as_array().unwrap();
    assert!(open.iter().any(|p| p == "8443/tcp") && open.iter().any(|p| p == "22/tcp"), "{open:?}");
}

#[test]
fn audit_runs_on_this_machine_as_it_is() {
    // Whatever this machine listens on: a report, valid JSON, an exit code that matches it.
    let (code, out, err) = nodegate(&["audit", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    let worst = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["severity"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    let expected = if worst.iter().any(|s| s == "critical") {
        2
    } else if worst.iter().any(|s| s == "warning") {
        1
    } else {
        0
    };
    assert_eq!(code, expected, "{out}");
    let (code, text, _) = nodegate(&["audit"]);
    assert_eq!(code, expected);
    assert!(text.contains("Listening sockets:"));
}

#[test]
fn firewall_opens_only_what_is_needed_and_rolls_back_unless_confirmed() {
    run_in_netns("firewall_inside");
}

/// Whether the client namespace (process `pid`'s) can open a TCP connection to `port`.
fn reaches(pid: u32, port: u16) -> bool {
    Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "timeout",
            "1",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/10.9.0.1/{port}"),
        ])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn eventually_sync(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "not within 10 s: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "runs inside a network namespace, started by firewall_opens_only_what_is_needed_and_rolls_back_unless_confirmed"]
fn firewall_inside() {
    assert!(std::env::var_os(IN_NETNS).is_some(), "only in a namespace of its own");
    // The client: a second network namespace (a sleeping process holds it), behind a veth pair.
    let holder = KillOnDrop(Command::new("unshare").args(["-n", "sleep", "300"]).spawn().unwrap());
    let pid = holder.0.id();
    eventually_sync("the client namespace", || {
        std::fs::read_link(format!("/proc/{pid}/ns/net")).ok() != std::fs::read_link("/proc/self/ns/net").ok()
    });
    sh(&format!(
        "ip link set lo up && ip link add v0 type veth peer name v1 && ip link set v1 netns {pid} && \
         ip addr add 10.9.0.1/24 dev v0 && ip link set v0 up && \
         nsenter -t {pid} -n sh -c 'ip link set lo up && ip addr add 10.9.0.2/24 dev v1 && ip link set v1 up'"
    ));
    let listeners: Vec<TcpListener> = (0..4).map(|_| TcpListener::bind("0.0.0.0:0").unwrap()).collect();
    let port = |i: usize| listeners[i].local_addr().unwrap().port();
    let (gw, ssh, allowed, blocked) = (port(0), port(1), port(2), port(3));
    for p in [gw, ssh, allowed, blocked] {
        assert!(reaches(pid, p), "{p} before any firewall");
    }
    let dir = temp_dir("firewall");
    let state = dir.join("state").display().to_string();
    let config = write(
        &dir,
        "nodegate.toml",
        &format!(
            "[gateway]\nlisten = [\"0.0.0.0:{gw}\"]\n\n[[node]]\nname = \"n\"\nurl = \"http://127.0.0.1:9000\"\n\n\
             [firewall]\nallow = [\"{allowed}/tcp\", \"8084/udp\"]\nssh_ports = [{ssh}]\nssh_rate = \"4/min\"\n"
        ),
    );
    let (code, printed, err) = nodegate(&["firewall", "--config", &config, "--print"]);
    assert_eq!(code, 0, "{err}");
    let mut open = [gw, ssh, allowed];
    open.sort_unstable();
    let open = open.map(|p| p.to_string()).join(", ");
    assert!(printed.contains(&format!("tcp dport {{ {open} }} accept")), "{printed}");
    assert!(printed.contains("udp dport { 8084 } accept"), "{printed}");
    assert!(printed.contains("policy drop") && printed.contains("ct state established,related accept"));
    // What --print writes, nft -c accepts as it is.
    let checked = Command::new("sh").args(["-c", "nft -c -f -"]).stdin(Stdio::piped()).spawn().and_then(|mut c| {
        use std::io::Write;
        c.stdin.take().unwrap().write_all(printed.as_bytes())?;
        c.wait()
    });
    assert!(checked.unwrap().success());
    assert_eq!(nodegate(&["firewall", "--config", &config, "--check"]).0, 0);
    assert!(
        sh("nft list tables").trim().is_empty() || !sh("nft list tables").contains("nodegate"),
        "--check changed nothing"
    );

    // Applied and not confirmed: open ports stay open, others close, then all comes back. (The
    // window leaves room for the checks below on a loaded machine: past it they would see the
    // rules rolled back.)
    let (code, out, err) =
        nodegate(&["firewall", "--config", &config, "--apply", "--confirm-within", "6s", "--state-dir", &state]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nodegate firewall --confirm"), "{out}");
    assert!(reaches(pid, gw) && reaches(pid, allowed), "the gateway and [firewall] allow");
    assert!(!reaches(pid, blocked), "everything else is closed");
    // The SSH port: open, and a source opening new connections fast is slowed to ssh_rate.
    let tries: Vec<bool> = (0..8).map(|_| reaches(pid, ssh)).collect();
    assert!(tries[0], "sshd reachable: {tries:?}");
    assert!(tries.iter().any(|t| !t), "new SSH connections are limited per source: {tries:?}");
    eventually_sync("rollback after 6 s without --confirm", || reaches(pid, blocked));
    assert!(!sh("nft list tables").contains("inet nodegate"), "the table is back as it was: none");
    assert!(std::fs::read_to_string(dir.join("state/rollback.log")).unwrap().contains("not confirmed"));

    // Applied and confirmed: it stays. A banned source is dropped on every port.
    let (code, ..) =
        nodegate(&["firewall", "--config", &config, "--apply", "--confirm-within", "4s", "--state-dir", &state]);
    assert_eq!(code, 0);
    let (code, out, _) = nodegate(&["firewall", "--confirm", "--state-dir", &state]);
    assert!(code == 0 && out.contains("confirmed"), "{out}");
    std::thread::sleep(Duration::from_secs(5));
    assert!(!reaches(pid, blocked) && reaches(pid, gw), "confirmed rules stay");
    sh("nft add element inet nodegate banned4 '{ 10.9.0.2 timeout 1h }'");
    assert!(!reaches(pid, gw), "banned");
    sh("nft delete element inet nodegate banned4 '{ 10.9.0.2 }'");
    assert!(reaches(pid, gw));
    // Applying again replaces the chains (no rule twice) and keeps the ban set's elements.
    sh("nft add element inet nodegate banned4 '{ 192.0.2.1 timeout 1h }'");
    let (code, ..) = nodegate(&["firewall", "--config", &config, "--apply", "--state-dir", &state]);
    assert_eq!(code, 0);
    nodegate(&["firewall", "--confirm", "--state-dir", &state]);
    let table = sh("nft list table inet nodegate");
    assert_eq!(table.matches("ct state invalid drop").count(), 1, "{table}");
    assert!(table.contains("192.0.2.1"), "{table}");
    assert_eq!(nodegate(&["firewall", "--confirm", "--state-dir", &state]).0, 1, "nothing left to confirm");

    // A new ruleset not confirmed: the previous one (not none) comes back, bans and all.
    let other = write(
        &dir,
        "other.toml",
        &format!(
            "[gateway]\nlisten = [\"0.0.0.0:{gw}\"]\n\n[[node]]\nname = \"n\"\nurl = \"http://127.0.0.1:9000\"\n\n\
             [firewall]\nallow = [\"{blocked}/tcp\"]\nssh_ports = [{ssh}]\n"
        ),
    );
    let (code, ..) =
        nodegate(&["firewall", "--config", &other, "--apply", "--confirm-within", "1s", "--state-dir", &state]);
    assert_eq!(code, 0);
    assert!(reaches(pid, blocked) && !reaches(pid, allowed), "the new rules");
    eventually_sync("the confirmed rules back", || reaches(pid, allowed) && !reaches(pid, blocked));
    assert!(sh("nft list table inet nodegate").contains("192.0.2.1"), "the ban set came back with them");
}

#[test]
fn the_demo_configs_firewall_is_accepted_by_nft() {
    let nodes: Vec<String> = (1..=3).map(|i| format!("http://127.0.0.1:{}", 14264 + i)).collect();
    let text = nodegate::demo::config_text(
        "127.0.0.1:8080".parse().unwrap(),
        &nodes,
        std::path::Path::new("/tmp/auth.log"),
        nodegate::profile::Profile::IotaRebased,
    );
    let dir = temp_dir("demo-fw");
    let config = write(&dir, "demo.toml", &text);
    let (code, printed, err) = nodegate(&["firewall", "--config", &config, "--print", "--sshd-config", "/nonexistent"]);
    assert_eq!(code, 0, "{err}");
    assert!(printed.contains("tcp dport { 22, 8080 } accept"), "{printed}");
    // nft -c: checks it against the kernel, changes nothing (in a namespace where not root).
    nodegate::host::firewall::check(&printed).unwrap();
    let (code, out, err) = nodegate(&["firewall", "--config", &config, "--check", "--sshd-config", "/nonexistent"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn ports_published_to_containers_are_filtered_on_the_forward_path() {
    run_in_netns("forward_inside");
}

/// A network namespace held by a sleeping process; its pid.
fn namespace() -> KillOnDrop {
    let holder = KillOnDrop(Command::new("unshare").args(["-n", "sleep", "300"]).spawn().unwrap());
    let pid = holder.0.id();
    eventually_sync("a namespace", || {
        std::fs::read_link(format!("/proc/{pid}/ns/net")).ok() != std::fs::read_link("/proc/self/ns/net").ok()
    });
    holder
}

#[test]
#[ignore = "runs inside a network namespace, started by ports_published_to_containers_are_filtered_on_the_forward_path"]
fn forward_inside() {
    assert!(std::env::var_os(IN_NETNS).is_some(), "only in a namespace of its own");
    // Three hosts: a client, this one (the node host), a container behind it, as Docker wires
    // one: its port 80 published as 8080 and 8081 by DNAT, reached through the forward path.
    let (client, container) = (namespace(), namespace());
    let (c, k) = (client.0.id(), container.0.id());
    sh(&format!(
        "ip link set lo up && echo 1 > /proc/sys/net/ipv4/ip_forward && \
         ip link add v0 type veth peer name v1 && ip link set v1 netns {c} && ip addr add 10.9.0.1/24 dev v0 && ip link set v0 up && \
         ip link add d0 type veth peer name d1 && ip link set d1 netns {k} && ip addr add 10.10.0.1/24 dev d0 && ip link set d0 up && \
         nsenter -t {c} -n sh -c 'ip link set lo up && ip addr add 10.9.0.2/24 dev v1 && ip link set v1 up' && \
         nsenter -t {k} -n sh -c 'ip link set lo up && ip addr add 10.10.0.2/24 dev d1 && ip link set d1 up && ip route add default via 10.10.0.1' && \
         nft add table ip nat && nft add chain ip nat prerouting '{{ type nat hook prerouting priority dstnat; }}' && \
         nft add rule ip nat prerouting iifname v0 tcp dport 8080 dnat to 10.10.0.2:80 && \
         nft add rule ip nat prerouting iifname v0 tcp dport 8081 dnat to 10.10.0.2:80"
    ));
    let _server = KillOnDrop(
        Command::new("nsenter")
            .args(["-t", &k.to_string(), "-n", "python3", "-c"])
            .arg("import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',80))\ns.listen(64)\ntime.sleep(300)")
            .spawn()
            .expect("python3 (scripts/test installs it)"),
    );
    eventually_sync("the container's port 80 through 8080", || reaches(c, 8080));
    assert!(reaches(c, 8081));

    let dir = temp_dir("forward");
    let config = write(
        &dir,
        "nodegate.toml",
        "[gateway]\nlisten = [\"0.0.0.0:8443\"]\n\n[[node]]\nname = \"n\"\nurl = \"http://127.0.0.1:9000\"\n\n\
         [firewall]\nallow = [\"8080/tcp\"]\nssh_ports = [22]\n",
    );
    let state = dir.join("state").display().to_string();
    let (code, out, err) = nodegate(&["firewall", "--config", &config, "--apply", "--state-dir", &state]);
    assert_eq!(code, 0, "{out}{err}");
    nodegate(&["firewall", "--confirm", "--state-dir", &state]);
    assert!(reaches(c, 8080), "published and allowed");
    assert!(!reaches(c, 8081), "published by the container engine but not allowed: closed on the forward path");
}
