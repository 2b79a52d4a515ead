//! sshd's entries from the systemd journal (`[[jail]] journal = "ssh.service"`), for hosts without
//! auth.log (Debian 12 and later log to the journal only). `journalctl -o json -f -u UNIT` is
//! followed; each entry's `MESSAGE`, `SYSLOG_IDENTIFIER`, `_PID` and `__REALTIME_TIMESTAMP` are
//! read, and its `__CURSOR` is kept in the state dir (`journal-<jail>.cursor`, written at most once
//! a second and when the gateway stops), so a restart goes on after the last entry read: failures
//! logged while the gateway was down still count. Without a saved cursor, what the journal already
//! holds when the gateway starts is history, and only later entries count.
//!
//! If journalctl is missing or exits, one warning says why and it is started again each second.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{mpsc, watch};

use crate::shutdown::Phase;

/// The longest journal line read; a longer one is skipped (journald's own limit is 48 KiB).
const MAX_LINE: usize = 64 << 10;

pub struct Journal {
    pub unit: String,
    /// `journalctl --directory`: journal files of another machine, a container or a test.
    pub directory: Option<PathBuf>,
    /// Where the cursor is kept; `None` without `[bans] state_dir`.
    pub cursor_file: Option<PathBuf>,
}

/// One journal entry of the unit.
#[derive(Debug)]
pub struct Entry {
    pub message: String,
    pub identifier: String,
    pub pid: String,
    pub time: Option<time::OffsetDateTime>,
}

impl Journal {
    fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("journalctl");
        cmd.args(["-o", "json", "--no-pager", "-q", "-u", &self.unit]);
        if let Some(d) = &self.directory {
            cmd.arg("--directory").arg(d);
        }
        cmd
    }

    /// Where to start: the saved cursor, or else the journal's newest entry of the unit now (so
    /// that what is there is history); `None` when the unit has no entry yet.
    pub fn start(&self) -> Option<String> {
        if let Some(saved) = self.cursor_file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
            let saved = saved.trim();
            if !saved.is_empty() {
                return Some(saved.to_owned());
            }
        }
        self.newest()
    }

    /// The cursor of the unit's newest entry now.
    fn newest(&self) -> Option<String> {
        let mut cmd = std::process::Command::new("journalctl");
        cmd.args(["-o", "json", "--no-pager", "-q", "-n", "1", "-u", &self.unit]);
        if let Some(d) = &self.directory {
            cmd.arg("--directory").arg(d);
        }
        let out = cmd.output().ok()?;
        let line = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(line.lines().last()?).ok()?;
        v.get("__CURSOR")?.as_str().map(str::to_owned)
    }

    /// Follows the journal from `cursor` (or its first entry) until the gateway stops.
    pub async fn run(self, mut cursor: Option<String>, tx: mpsc::Sender<Entry>, mut phase: watch::Receiver<Phase>) {
        let mut saved = cursor.clone();
        let mut last_save = Instant::now();
        loop {
            let mut cmd = self.command();
            cmd.arg("-f");
            match &cursor {
                Some(c) => cmd.arg(format!("--after-cursor={c}")),
                None => cmd.args(["-n", "all"]),
            };
            cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(unit = %self.unit, error = %e, "cannot run journalctl; trying again each second");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = phase.wait_for(|p| *p != Phase::Running) => return,
                    }
                }
            };
            let Some(stdout) = child.stdout.take() else { return };
            let mut lines = BufReader::new(stdout);
            let mut line = Vec::new();
            let mut read_any = false;
            let ended = loop {
                line.clear();
                let mut capped = (&mut lines).take(MAX_LINE as u64 + 1);
                let read = tokio::select! {
                    r = capped.read_until(b'\n', &mut line) => Some(r),
                    _ = phase.wait_for(|p| *p != Phase::Running) => None,
                };
                let Some(read) = read else {
                    self.save(&cursor, &mut saved).await;
                    return;
                };
                match read {
                    Ok(0) | Err(_) => break true,
                    Ok(_) if line.len() > MAX_LINE || !line.ends_with(b"\n") => {
                        // Overlong: skip to the end of the line.
                        let mut rest = Vec::new();
                        let _ = lines.read_until(b'\n', &mut rest).await;
                        continue;
                    }
                    Ok(_) => {}
                }
                let Some((entry, at)) = parse(&line) else { continue };
                read_any = true;
                cursor = Some(at);
                if let Some(entry) = entry
                    && tx.send(entry).await.is_err()
                {
                    return;
                }
                if last_save.elapsed() >= Duration::from_secs(1) {
                    self.save(&cursor, &mut saved).await;
                    last_save = Instant::now();
                }
            };
            if ended {
                self.save(&cursor, &mut saved).await;
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err).await;
                }
                let status = child.wait().await;
                let refused = !read_any && cursor.is_some() && status.as_ref().is_ok_and(|s| !s.success());
                if refused {
                    // A damaged cursor file: kept aside, never used again, the journal followed
                    // from its end (what was logged since the cursor is lost, and said so).
                    tracing::error!(unit = %self.unit, error = %err.trim(), "journalctl refused the kept cursor; following the journal from its end");
                    // The end is taken before the file is set aside: whoever sees the file gone
                    // knows that what is logged from then on counts.
                    let this =
                        Journal { unit: self.unit.clone(), directory: self.directory.clone(), cursor_file: None };
                    cursor = tokio::task::spawn_blocking(move || this.newest()).await.ok().flatten();
                    if let Some(file) = &self.cursor_file {
                        let aside = file.with_extension(format!("cursor.corrupt-{}", super::list::unix_now()));
                        let _ = std::fs::rename(file, &aside);
                    }
                    saved = None;
                    continue;
                }
                tracing::warn!(unit = %self.unit, ?status, error = %err.trim(), "journalctl stopped; starting it again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = phase.wait_for(|p| *p != Phase::Running) => return,
                }
            }
        }
    }

    async fn save(&self, cursor: &Option<String>, saved: &mut Option<String>) {
        let (Some(file), Some(c)) = (self.cursor_file.clone(), cursor.clone()) else { return };
        if saved.as_ref() == Some(&c) {
            return;
        }
        *saved = Some(c.clone());
        let written = tokio::task::spawn_blocking(move || {
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, c).and_then(|()| std::fs::rename(&tmp, &file))
        })
        .await;
        if let Ok(Err(e)) = written {
            tracing::warn!(unit = %self.unit, error = %e, "cannot keep the journal cursor");
        }
    }
}

/// An entry of `journalctl -o json` and its cursor; the entry is `None` when it has no text
/// message (binary `MESSAGE`s are arrays of bytes).
fn parse(line: &[u8]) -> Option<(Option<Entry>, String)> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let cursor = v.get("__CURSOR")?.as_str()?.to_owned();
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let Some(message) = text("MESSAGE") else { return Some((None, cursor)) };
    let time = text("__REALTIME_TIMESTAMP")
        .and_then(|t| t.parse::<i128>().ok())
        .and_then(|us| us.checked_mul(1000))
        .and_then(|ns| time::OffsetDateTime::from_unix_timestamp_nanos(ns).ok());
    let entry = Entry {
        message,
        identifier: text("SYSLOG_IDENTIFIER").unwrap_or_default(),
        pid: text("_PID").unwrap_or_default(),
        time,
    };
    Some((Some(entry), cursor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_json_entries_give_message_process_time_and_cursor() {
        let line = br#"{"__CURSOR":"s=1;i=2","MESSAGE":"Failed password for root from 192.0.2.1 port 22 ssh2","SYSLOG_IDENTIFIER":"sshd-session","_PID":"77","__REALTIME_TIMESTAMP":"1795746853672555"}"#;
        let (entry, cursor) = parse(line).unwrap();
        let entry = entry.unwrap();
        assert_eq!(cursor, "s=1;i=2");
        assert_eq!((entry.identifier.as_str(), entry.pid.as_str()), ("sshd-session", "77"));
        assert_eq!(entry.time.unwrap().unix_timestamp(), 1_795_746_853);
        // A binary message is skipped, but its cursor still moves on.
        let (entry, cursor) = parse(br#"{"__CURSOR":"c","MESSAGE":[104,105]}"#).unwrap();
        assert!(entry.is_none() && cursor == "c");
        assert!(parse(b"not json").is_none());
    }

    #[test]
    fn a_timestamp_past_what_nanoseconds_hold_is_no_time() {
        // Found by the property below: microseconds x 1000 overflowed i128 (a panic in debug builds).
        let line = br#"{"__CURSOR":"c","MESSAGE":"m","__REALTIME_TIMESTAMP":"99999999999999999999999999999999999999"}"#;
        let (entry, _) = parse(line).unwrap();
        assert_eq!(entry.unwrap().time, None);
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz_config())]

        /// Any bytes as a line: an entry or nothing, never a panic.
        #[test]
        fn any_line(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..160)) {
            let _ = parse(&line);
        }

        /// Any timestamp text: a time when it is one, never a panic; the message and cursor kept.
        #[test]
        fn any_timestamp(ts in "-?[0-9]{0,40}|[ -~]{0,12}", message in "\\PC{0,40}") {
            let line = serde_json::json!({"__CURSOR": "c", "MESSAGE": message, "__REALTIME_TIMESTAMP": ts}).to_string();
            let (entry, cursor) = parse(line.as_bytes()).expect("an entry");
            let entry = entry.expect("a text message");
            proptest::prop_assert_eq!(cursor, "c");
            proptest::prop_assert_eq!(entry.message, message);
        }
    }
}
