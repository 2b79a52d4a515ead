//! Following a log file as `tail -F` does: new complete lines as they are appended, across rotation
//! (the file renamed away and a new one created under the name: the old one is read to its end
//! first) and truncation (copytruncate: read again from the start). Blocking file I/O: run it off
//! the workers.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Longest line kept; the rest of a longer one is dropped (sshd's lines are far shorter).
const MAX_LINE: usize = 16 << 10;

pub struct Follower {
    path: PathBuf,
    /// The file being read, its identity (device, inode) and how far it has been read.
    file: Option<(File, (u64, u64), u64)>,
    /// The start of a line whose end has not been written yet.
    partial: Vec<u8>,
    /// Whether the partial line grew past `MAX_LINE` (its rest is skipped).
    overlong: bool,
}

impl Follower {
    /// Follows `path` from its current end (what is already there is history, not news); a file
    /// that does not exist yet is read from its start once it appears.
    pub fn from_end(path: &Path) -> Follower {
        let mut f = Follower { path: path.to_owned(), file: None, partial: Vec::new(), overlong: false };
        if let Ok(file) = File::open(path)
            && let Ok(meta) = file.metadata()
        {
            f.file = Some((file, (meta.dev(), meta.ino()), meta.len()));
        }
        f
    }

    /// Follows `path` from its start.
    pub fn from_start(path: &Path) -> Follower {
        Follower { path: path.to_owned(), file: None, partial: Vec::new(), overlong: false }
    }

    /// The complete lines written since the last call, in order.
    pub fn poll(&mut self) -> io::Result<Vec<String>> {
        let mut lines = Vec::new();
        let current = std::fs::metadata(&self.path).ok().map(|m| ((m.dev(), m.ino()), m.len()));
        if let Some((file, id, pos)) = &mut self.file {
            let replaced = current.is_none_or(|(now_id, _)| now_id != *id);
            let len = file.metadata()?.len();
            if len < *pos {
                // Truncated in place: everything now there is new.
                *pos = 0;
                self.partial.clear();
            }
            read_lines(file, pos, &mut self.partial, &mut self.overlong, &mut lines)?;
            if replaced {
                // Rotated: the old file is read to its end; the new one from its start.
                self.file = None;
                self.partial.clear();
                self.overlong = false;
            }
        }
        if self.file.is_none()
            && current.is_some()
            && let Ok(file) = File::open(&self.path)
        {
            let meta = file.metadata()?;
            self.file = Some((file, (meta.dev(), meta.ino()), 0));
            if let Some((file, _, pos)) = &mut self.file {
                read_lines(file, pos, &mut self.partial, &mut self.overlong, &mut lines)?;
            }
        }
        Ok(lines)
    }
}

fn read_lines(
    file: &mut File,
    pos: &mut u64,
    partial: &mut Vec<u8>,
    overlong: &mut bool,
    lines: &mut Vec<String>,
) -> io::Result<()> {
    file.seek(SeekFrom::Start(*pos))?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        *pos += n as u64;
        let mut chunk = &buf[..n];
        while let Some(end) = chunk.iter().position(|b| *b == b'\n') {
            if !*overlong {
                partial.extend_from_slice(&chunk[..end.min(MAX_LINE.saturating_sub(partial.len()))]);
            }
            lines.push(String::from_utf8_lossy(partial).into_owned());
            partial.clear();
            *overlong = false;
            chunk = &chunk[end + 1..];
        }
        if !*overlong {
            let room = MAX_LINE.saturating_sub(partial.len());
            partial.extend_from_slice(&chunk[..chunk.len().min(room)]);
            *overlong = chunk.len() > room;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nodegate-follow-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn append(path: &Path, text: &str) {
        std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn new_lines_only_whole_and_in_order() {
        let d = dir("append");
        let log = d.join("auth.log");
        append(&log, "old line\n");
        let mut f = Follower::from_end(&log);
        assert!(f.poll().unwrap().is_empty(), "history is not news");
        append(&log, "one\ntw");
        assert_eq!(f.poll().unwrap(), ["one"]);
        append(&log, "o\nthree\n");
        assert_eq!(f.poll().unwrap(), ["two", "three"]);
        assert!(f.poll().unwrap().is_empty());
    }

    #[test]
    fn rotation_reads_the_old_file_to_its_end_then_the_new_one() {
        let d = dir("rotate");
        let log = d.join("auth.log");
        append(&log, "");
        let mut f = Follower::from_end(&log);
        append(&log, "before\n");
        // logrotate: the file is renamed, sshd still writes to it once, then a new file appears.
        std::fs::rename(&log, d.join("auth.log.1")).unwrap();
        append(&d.join("auth.log.1"), "late in the old file\n");
        append(&log, "first in the new file\n");
        assert_eq!(f.poll().unwrap(), ["before", "late in the old file", "first in the new file"]);
        append(&log, "next\n");
        assert_eq!(f.poll().unwrap(), ["next"]);
    }

    #[test]
    fn truncation_starts_again_from_the_top_and_a_missing_file_is_waited_for() {
        let d = dir("truncate");
        let log = d.join("auth.log");
        let mut f = Follower::from_end(&log);
        assert!(f.poll().unwrap().is_empty(), "no file yet");
        append(&log, "appeared\n");
        assert_eq!(f.poll().unwrap(), ["appeared"]);
        append(&log, "a long line that makes the file longer than what follows\n");
        assert_eq!(f.poll().unwrap().len(), 1);
        // copytruncate: emptied in place, then written again.
        std::fs::OpenOptions::new().write(true).truncate(true).open(&log).unwrap();
        append(&log, "after\n");
        assert_eq!(f.poll().unwrap(), ["after"]);
    }

    #[test]
    fn an_overlong_line_is_cut_not_kept_whole() {
        let d = dir("long");
        let log = d.join("auth.log");
        let mut f = Follower::from_start(&log);
        append(&log, &format!("{}\nshort\n", "x".repeat(1 << 20)));
        let lines = f.poll().unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(lines[1], "short");
    }
}
