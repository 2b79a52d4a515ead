//! The Debian package and its systemd unit (issue 17), for real: scripts/package builds the .deb
//! with dpkg-deb, dpkg installs it into a root of its own (`dpkg --root`, the maintainer scripts
//! run against that root, never this system), the installed binary checks the installed config,
//! systemd-analyze verifies the unit and scores its exposure, lintian reviews the package, and
//! removing and purging it leaves what Debian's policy says.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::temp_dir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a command; its standard output, or the test fails with both outputs.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

/// dpkg against `root` only: maintainer scripts run without chroot, with DPKG_ROOT set; the
/// root has no libc6 or systemd packages of its own (the host's serve), hence --force-depends.
fn dpkg(root: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends", "--log=/dev/null"])
        .args(args)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    if !nix_root() {
        cmd.arg("--force-not-root");
    }
    run(&mut cmd)
}

fn nix_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// Every file (not directory) under `root`, relative, dpkg's own database left out.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel.starts_with("var/lib/dpkg") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// A user's or group's numeric id in the root's own files.
fn id_in(root: &Path, file: &str, name: &str) -> u32 {
    let text = std::fs::read_to_string(root.join("etc").join(file)).unwrap();
    let line =
        text.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap_or_else(|| panic!("{name} not in {file}"));
    line.split(':').nth(2).unwrap().parse().unwrap()
}

#[test]
fn the_package_installs_into_a_clean_root_checks_its_config_and_removes_leaving_the_config() {
    let dir = temp_dir("package");
    let out = dir.join("out");
    let built = run(Command::new(repo().join("scripts/package"))
        .env("BIN", env!("CARGO_BIN_EXE_nodegate"))
        .env("OUT", &out)
        .env("COMPRESS", "gzip")
        .env("NO_BUILD", "1")
        .env("SOURCE_DATE_EPOCH", "1790000000"));
    let deb = PathBuf::from(built.trim());
    assert!(
        deb.file_name().unwrap().to_str().unwrap().starts_with(&format!("nodegate_{}_", env!("CARGO_PKG_VERSION")))
    );
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("conffiles") && info.contains("postinst"), "{info}");

    // A root with an empty dpkg database and nothing else.
    let root = dir.join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    dpkg(&root, &["-i", deb.to_str().unwrap()]);

    // The system user, with no login, and what it owns.
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("nodegate:x:") && passwd.contains(":/var/lib/nodegate:/usr/sbin/nologin"), "{passwd}");
    let (uid, gid) = (id_in(&root, "passwd", "nodegate"), id_in(&root, "group", "nodegate"));
    let state = std::fs::metadata(root.join("var/lib/nodegate")).unwrap();
    assert_eq!((state.uid(), state.gid(), state.permissions().mode() & 0o7777), (uid, gid, 0o750));
    let config = root.join("etc/nodegate/nodegate.toml");
    let meta = std::fs::metadata(&config).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777), (0, gid, 0o640), "the config");
    let bin = root.join("usr/bin/nodegate");
    assert!(std::fs::metadata(&bin).unwrap().permissions().mode() & 0o111 != 0);

    // The installed binary accepts the installed config: an iota-rebased node on this host.
    let checked = run(Command::new(&bin).arg("check").arg("--config").arg(&config));
    assert!(checked.contains("ok (1 node(s)"), "{checked}");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("profile = \"iota-rebased\"") && text.contains("127.0.0.1:9000"));
    // The man page is one (roff, gzip'd).
    let man = run(Command::new("sh")
        .arg("-c")
        .arg(format!("zcat {}", root.join("usr/share/man/man1/nodegate.1.gz").display())));
    assert!(man.contains(".TH nodegate 1") && man.contains("check"), "{man}");

    // The unit, with its paths pointed into the root: systemd-analyze verifies it and scores it.
    let units = dir.join("units");
    std::fs::create_dir_all(units.join("nodegate.service.d")).unwrap();
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/nodegate.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    std::fs::write(units.join("nodegate.service"), unit.replace("/usr/bin/nodegate", bin.to_str().unwrap())).unwrap();
    let verify = Command::new("systemd-analyze").arg("verify").arg(units.join("nodegate.service")).output().unwrap();
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && complaints.trim().is_empty(), "systemd-analyze verify: {complaints}");
    let score = |units: &Path| {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(units.join("nodegate.service"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
        let score: f64 = line.split(": ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
        println!("measured: systemd-analyze security: {}", line.trim());
        score
    };
    assert!(score(&units) < 2.0, "the unit's exposure is above the OK band's 2.0");
    // With the nftables drop-in (CAP_NET_ADMIN, netlink) beside it: still verified and still OK.
    let dropin = root.join("usr/share/doc/nodegate/examples/nftables.conf");
    std::fs::copy(&dropin, units.join("nodegate.service.d/nftables.conf")).unwrap();
    let verify = Command::new("systemd-analyze").arg("verify").arg(units.join("nodegate.service")).output().unwrap();
    assert!(verify.status.success() && verify.stderr.is_empty(), "{}", String::from_utf8_lossy(&verify.stderr));
    assert!(score(&units) < 2.0);

    // Remove: the config stays (a conffile), and the user (Debian keeps system users); nothing else.
    dpkg(&root, &["-r", "nodegate"]);
    let left: Vec<String> = files(&root)
        .into_iter()
        .filter(|f| !["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow", "etc/.pwd.lock"].contains(&f.as_str()))
        .collect();
    assert_eq!(left, ["etc/nodegate/nodegate.toml"]);
    assert!(!root.join("var/lib/nodegate").exists(), "an empty state directory was left");
    // Purge: the config goes too.
    dpkg(&root, &["-P", "nodegate"]);
    assert!(!root.join("etc/nodegate").exists());

    // lintian (installed by scripts/test): no error, no warning. (Its notes on a debug build's
    // binary, such as unneeded sections, are information only.)
    let out = Command::new("lintian").args(["--tag-display-limit", "0"]).arg(&deb).output().expect("lintian runs");
    let report = String::from_utf8_lossy(&out.stdout);
    let bad: Vec<&str> = report.lines().filter(|l| l.starts_with("E:") || l.starts_with("W:")).collect();
    assert!(bad.is_empty(), "lintian:\n{report}");
}
