//! An instance's output as its log file holds it: the last lines (kept with a crash, so a
//! copy that never turns healthy says why) and byte ranges for `rejuv logs`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Lines kept with an exit.
pub const TAIL_LINES: usize = 10;
/// Longest line kept (longer ones are cut, marked with `…`).
const LINE_MAX: usize = 300;
/// Bytes of the end of a log read for its last lines.
const TAIL_WINDOW: u64 = 64 << 10;
/// Most bytes one read of the log returns.
pub const CHUNK_MAX: u64 = 256 << 10;

impl super::Supervisor {
    /// The log file of instance `id` (its stdout and stderr).
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.logs_dir.join(format!("{id}.log"))
    }
}

/// The last `n` lines of the file at `path` (empty if it cannot be read), printable and cut
/// to a bounded length.
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(TAIL_WINDOW);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(len - from).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if from > 0 && lines.len() > 1 {
        // The first line read may be the end of a longer one.
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    lines[skip..]
        .iter()
        .map(|l| {
            let clean = rejuv_core::text::terminal_safe(l);
            if clean.chars().count() > LINE_MAX {
                let cut: String = clean.chars().take(LINE_MAX).collect();
                format!("{cut}…")
            } else {
                clean.to_string()
            }
        })
        .collect()
}

pub use rejuv_core::api::LogChunk;

/// Reads at most [`CHUNK_MAX`] bytes of `path` from `offset` (`None`: the last `tail` bytes).
/// An offset past the end (the file was cut when its instance restarted) starts over at 0.
pub fn read_chunk(path: &Path, offset: Option<u64>, tail: u64) -> std::io::Result<LogChunk> {
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut from = offset.unwrap_or_else(|| size.saturating_sub(tail.min(CHUNK_MAX)));
    if from > size {
        from = 0;
    }
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(CHUNK_MAX.min(size - from)).read_to_end(&mut buf)?;
    Ok(LogChunk {
        offset: from,
        next: from + buf.len() as u64,
        size,
        text: String::from_utf8_lossy(&buf).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_the_last_lines_cut_to_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        let mut text = String::new();
        for i in 0..50 {
            text += &format!("line {i}\n");
        }
        text += &"y".repeat(1000);
        text += "\n";
        std::fs::write(&p, &text).unwrap();
        let t = tail_lines(&p, 3);
        assert_eq!(t.len(), 3);
        assert_eq!(t[0], "line 48");
        assert_eq!(t[1], "line 49");
        assert!(t[2].ends_with('…') && t[2].chars().count() == LINE_MAX + 1);
        assert!(tail_lines(&dir.path().join("none"), 3).is_empty());
    }

    #[test]
    fn chunks_follow_a_growing_file_and_start_over_when_it_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        std::fs::write(&p, "abc\n").unwrap();
        let c = read_chunk(&p, None, 2).unwrap();
        assert_eq!((c.offset, c.next, c.text.as_str()), (2, 4, "c\n"));
        std::fs::write(&p, "abc\ndef\n").unwrap();
        let c = read_chunk(&p, Some(c.next), 0).unwrap();
        assert_eq!(c.text, "def\n");
        std::fs::write(&p, "z\n").unwrap();
        let c = read_chunk(&p, Some(8), 0).unwrap();
        assert_eq!((c.offset, c.text.as_str()), (0, "z\n"));
    }
}
