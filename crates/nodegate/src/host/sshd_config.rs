//! sshd's effective settings: `sshd -T` where it runs (root, sshd installed), else the config files
//! read as sshd reads them (first value wins, `Include` followed, `Match` blocks left out since
//! they apply to some connections only), else OpenSSH's defaults. Checked as Lynis' SSH-7408 does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::Finding;
use super::ports::Severity;

pub struct SshdConfig {
    /// Where the settings came from: `sshd -T`, or the file read.
    pub source: String,
    values: HashMap<String, String>,
    ports: Vec<u16>,
}

/// OpenSSH's defaults for what is checked (Debian turns UsePAM and KbdInteractiveAuthentication
/// off/on in its shipped file; the file then says so).
const DEFAULTS: &[(&str, &str)] = &[
    ("permitrootlogin", "prohibit-password"),
    ("passwordauthentication", "yes"),
    ("kbdinteractiveauthentication", "yes"),
    ("maxauthtries", "6"),
    ("x11forwarding", "no"),
    ("allowtcpforwarding", "yes"),
    ("allowagentforwarding", "yes"),
    ("permitemptypasswords", "no"),
    ("logingracetime", "120"),
    ("clientaliveinterval", "0"),
    ("clientalivecountmax", "3"),
    ("loglevel", "INFO"),
    ("usepam", "no"),
];

impl SshdConfig {
    /// The effective settings: `file` when given, else `sshd -T`, else /etc/ssh/sshd_config;
    /// `None` when there is no sshd to speak of.
    pub fn load(file: Option<&Path>) -> Option<SshdConfig> {
        if let Some(f) = file {
            return Some(SshdConfig::from_file(f));
        }
        for sshd in ["sshd", "/usr/sbin/sshd"] {
            if let Ok(out) = std::process::Command::new(sshd).arg("-T").output()
                && out.status.success()
            {
                let pairs = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| l.split_once(' ').map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned())))
                    .collect();
                return Some(SshdConfig::from_pairs("sshd -T".into(), pairs));
            }
        }
        let default = Path::new("/etc/ssh/sshd_config");
        default.exists().then(|| SshdConfig::from_file(default))
    }

    pub fn from_file(path: &Path) -> SshdConfig {
        let mut pairs = Vec::new();
        read(path, &mut pairs, 0);
        SshdConfig::from_pairs(path.display().to_string(), pairs)
    }

    fn from_pairs(source: String, pairs: Vec<(String, String)>) -> SshdConfig {
        let mut values = HashMap::new();
        let mut ports = Vec::new();
        for (k, v) in pairs {
            if k == "port" {
                ports.extend(v.parse::<u16>().ok());
                continue;
            }
            // sshd takes the first value of a keyword.
            values.entry(k).or_insert(v);
        }
        if ports.is_empty() {
            ports.push(22);
        }
        SshdConfig { source, values, ports }
    }

    /// A setting's effective value (lower-case keyword).
    pub fn get(&self, key: &str) -> String {
        self.values
            .get(key)
            .cloned()
            .or_else(|| DEFAULTS.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string()))
            .unwrap_or_default()
    }

    /// The ports sshd listens on.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The checks, each a finding when the setting is weaker than it should be.
    pub fn findings(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut f = |id: &str, severity, message: String, fix: &str| {
            out.push(Finding::new(&format!("sshd.{id}"), severity, message, fix.to_owned()));
        };
        let yes = |k: &str| self.get(k).eq_ignore_ascii_case("yes");
        let num = |k: &str| self.get(k).trim_end_matches('s').parse::<u64>().unwrap_or(0);
        let passwords = yes("passwordauthentication") || yes("kbdinteractiveauthentication");
        match self.get("permitrootlogin").to_ascii_lowercase().as_str() {
            "yes" => f(
                "permit-root-login",
                if passwords { Severity::Critical } else { Severity::Warning },
                "PermitRootLogin yes: root can log in (with a password when password logins are on)".into(),
                "PermitRootLogin no (or prohibit-password), and log in as a user",
            ),
            "no" | "prohibit-password" | "without-password" | "forced-commands-only" => {}
            other => f(
                "permit-root-login",
                Severity::Warning,
                format!("PermitRootLogin {other}: not understood"),
                "PermitRootLogin no",
            ),
        }
        if yes("permitemptypasswords") {
            f(
                "permit-empty-passwords",
                Severity::Critical,
                "PermitEmptyPasswords yes: accounts without a password can log in".into(),
                "PermitEmptyPasswords no",
            );
        }
        if yes("passwordauthentication") {
            f(
                "password-authentication",
                Severity::Warning,
                "PasswordAuthentication yes: passwords can be guessed (bans slow guessing down, they do not stop it)"
                    .into(),
                "PasswordAuthentication no, with keys in ~/.ssh/authorized_keys",
            );
        }
        if yes("kbdinteractiveauthentication") && yes("usepam") {
            f(
                "kbd-interactive-authentication",
                Severity::Warning,
                "KbdInteractiveAuthentication yes with UsePAM yes: PAM's password prompt is a second way to guess passwords".into(),
                "KbdInteractiveAuthentication no",
            );
        }
        if num("maxauthtries") > 3 {
            f(
                "max-auth-tries",
                Severity::Info,
                format!("MaxAuthTries {}: more guesses per connection than needed", self.get("maxauthtries")),
                "MaxAuthTries 3",
            );
        }
        if yes("x11forwarding") {
            f(
                "x11-forwarding",
                Severity::Warning,
                "X11Forwarding yes: a node host needs no X11".into(),
                "X11Forwarding no",
            );
        }
        if yes("allowtcpforwarding") {
            f(
                "allow-tcp-forwarding",
                Severity::Info,
                "AllowTcpForwarding yes: any account can tunnel to the node's private ports".into(),
                "AllowTcpForwarding no (or local only for the admins who tunnel)",
            );
        }
        if yes("allowagentforwarding") {
            f(
                "allow-agent-forwarding",
                Severity::Info,
                "AllowAgentForwarding yes: a compromised host can use a visiting admin's keys".into(),
                "AllowAgentForwarding no",
            );
        }
        if num("logingracetime") > 60 || num("logingracetime") == 0 {
            f(
                "login-grace-time",
                Severity::Info,
                format!("LoginGraceTime {}: unauthenticated connections are held long", self.get("logingracetime")),
                "LoginGraceTime 30",
            );
        }
        if num("clientaliveinterval") == 0 {
            f(
                "client-alive",
                Severity::Info,
                "ClientAliveInterval 0: dead sessions are never noticed".into(),
                "ClientAliveInterval 300 and ClientAliveCountMax 2",
            );
        } else if num("clientalivecountmax") > 2 {
            f(
                "client-alive",
                Severity::Info,
                format!("ClientAliveCountMax {}", self.get("clientalivecountmax")),
                "ClientAliveCountMax 2",
            );
        }
        if !self.get("loglevel").eq_ignore_ascii_case("verbose") {
            f(
                "log-level",
                Severity::Info,
                format!("LogLevel {}: logs miss the key fingerprint of each login", self.get("loglevel")),
                "LogLevel VERBOSE",
            );
        }
        out
    }
}

/// Appends the keyword-value pairs of `path` (and what it includes) outside `Match` blocks.
fn read(path: &Path, out: &mut Vec<(String, String)>, depth: u8) {
    let Ok(text) = std::fs::read_to_string(path) else { return };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once(|c: char| c.is_whitespace() || c == '=') {
            Some((k, v)) => {
                (k.to_ascii_lowercase(), v.trim_start_matches(|c: char| c.is_whitespace() || c == '=').trim())
            }
            None => continue,
        };
        match key.as_str() {
            // Everything after a Match line belongs to it, up to the end of the file.
            "match" => return,
            "include" if depth < 8 => {
                for pattern in value.split_whitespace() {
                    for file in glob(path, pattern) {
                        read(&file, out, depth + 1);
                    }
                }
            }
            _ => out.push((key, value.to_owned())),
        }
    }
}

/// The files an `Include` names: relative to /etc/ssh, a `*` in the file name matched.
fn glob(from: &Path, pattern: &str) -> Vec<PathBuf> {
    let base = from.parent().unwrap_or(Path::new("/etc/ssh"));
    let full = if pattern.starts_with('/') { PathBuf::from(pattern) } else { base.join(pattern) };
    let (Some(dir), Some(name)) = (full.parent(), full.file_name().and_then(|n| n.to_str())) else { return Vec::new() };
    if !name.contains('*') {
        return vec![full.clone()];
    }
    let (prefix, suffix) = name.split_once('*').unwrap_or((name, ""));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_as_sshd_reads_them() {
        let dir = std::env::temp_dir().join(format!("nodegate-sshd-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sshd_config.d")).unwrap();
        std::fs::write(dir.join("sshd_config.d/10-hardening.conf"), "PasswordAuthentication no\nPort 2222\n").unwrap();
        std::fs::write(
            dir.join("sshd_config"),
            "# Debian's\nInclude sshd_config.d/*.conf\nPasswordAuthentication yes\nPermitRootLogin=yes\nUsePAM yes\n\
             KbdInteractiveAuthentication no\nX11Forwarding yes\nMatch User backup\n  PermitEmptyPasswords yes\n",
        )
        .unwrap();
        let c = SshdConfig::from_file(&dir.join("sshd_config"));
        assert_eq!(c.get("passwordauthentication"), "no", "the included file's value came first");
        assert_eq!(c.ports(), [2222]);
        assert_eq!(c.get("permitemptypasswords"), "no", "a Match block is not global");
        let ids: Vec<String> = c.findings().into_iter().map(|f| f.id).collect();
        assert!(ids.contains(&"sshd.permit-root-login".to_string()), "{ids:?}");
        assert!(ids.contains(&"sshd.x11-forwarding".to_string()));
        assert!(!ids.contains(&"sshd.password-authentication".to_string()));
        let root = c.findings().into_iter().find(|f| f.id == "sshd.permit-root-login").unwrap();
        assert_eq!(root.severity, Severity::Warning, "root needs a key: passwords are off");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
