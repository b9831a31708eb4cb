//! A service's captured output: size-bounded, rotated files, and reading their tail.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// Bytes in one log file before it is rotated, unless the service says otherwise.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Rotated files kept besides the current one (`output.log.1` … `.N`), by default.
pub const KEPT_FILES: usize = 2;
/// The most rotated files a service may keep.
pub const MOST_FILES: usize = 100;
/// A longer output line is cut into pieces of this size.
const MAX_LINE_BYTES: usize = 16 * 1024;

const CURRENT: &str = "output.log";

/// How much of a service's output is kept: `files` rotated files of `max_bytes` each,
/// besides the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub max_bytes: u64,
    pub files: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_bytes: MAX_FILE_BYTES,
            files: KEPT_FILES,
        }
    }
}

/// Appends lines to `<dir>/output.log`, rotating it when it grows past the limit.
/// Clones made by [`LogWriter::prefixed`] write to the same file.
pub struct LogWriter {
    file: Arc<LogFile>,
    /// Put before every line (the copy it comes from, with several).
    prefix: Vec<u8>,
}

struct LogFile {
    dir: PathBuf,
    limits: LogLimits,
    open: Mutex<Option<(File, u64)>>,
}

impl LogWriter {
    pub fn open(dir: &Path, limits: LogLimits) -> std::io::Result<Arc<LogWriter>> {
        fs::create_dir_all(dir)?;
        Ok(Arc::new(LogWriter {
            file: Arc::new(LogFile {
                dir: dir.to_path_buf(),
                limits,
                open: Mutex::new(None),
            }),
            prefix: Vec::new(),
        }))
    }

    /// A writer to the same file that puts `prefix` before each line.
    pub fn prefixed(&self, prefix: &str) -> Arc<LogWriter> {
        Arc::new(LogWriter {
            file: Arc::clone(&self.file),
            prefix: prefix.as_bytes().to_vec(),
        })
    }

    /// Writes one line (a newline is added). Failures are logged, never fatal: a full
    /// disk must not take the service down.
    pub fn line(&self, line: &[u8]) {
        if let Err(error) = self.try_line(line) {
            tracing::warn!(dir = %self.file.dir.display(), %error, "could not write a service log line");
        }
    }

    fn try_line(&self, line: &[u8]) -> std::io::Result<()> {
        let file = &self.file;
        let mut slot = crate::util::lock(&file.open);
        if slot
            .as_ref()
            .is_some_and(|(_, size)| *size >= file.limits.max_bytes)
        {
            *slot = None;
            file.rotate()?;
        }
        if slot.is_none() {
            let opened = OpenOptions::new()
                .create(true)
                .append(true)
                .open(file.dir.join(CURRENT))?;
            let size = opened.metadata()?.len();
            *slot = Some((opened, size));
        }
        if let Some((opened, size)) = slot.as_mut() {
            let mut record = Vec::with_capacity(self.prefix.len() + line.len() + 1);
            record.extend_from_slice(&self.prefix);
            record.extend_from_slice(line);
            record.push(b'\n');
            opened.write_all(&record)?;
            *size += record.len() as u64;
        }
        Ok(())
    }
}

impl LogFile {
    fn rotate(&self) -> std::io::Result<()> {
        // Files beyond the limit (it may have been lowered) go first.
        for index in (self.limits.files.max(1)..=MOST_FILES).rev() {
            let _ = fs::remove_file(self.dir.join(format!("{CURRENT}.{index}")));
        }
        for index in (1..self.limits.files).rev() {
            let from = self.dir.join(format!("{CURRENT}.{index}"));
            if from.exists() {
                fs::rename(&from, self.dir.join(format!("{CURRENT}.{}", index + 1)))?;
            }
        }
        if self.limits.files == 0 {
            return fs::remove_file(self.dir.join(CURRENT));
        }
        fs::rename(
            self.dir.join(CURRENT),
            self.dir.join(format!("{CURRENT}.1")),
        )
    }
}

impl LogWriter {
    /// Copies `stream` into the log line by line until it ends.
    pub async fn capture(self: Arc<Self>, stream: impl AsyncRead + Unpin) {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut reader)
                .take(MAX_LINE_BYTES as u64)
                .read_until(b'\n', &mut line)
                .await
            {
                Ok(0) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    self.line(&line);
                }
                Err(_) => break,
            }
        }
    }
}

/// The last `tail` lines of the log in `dir`, oldest first (empty if none yet). Reads
/// each file from its end, as little as it needs: a file may be large.
pub fn tail(dir: &Path, tail: usize) -> std::io::Result<Vec<String>> {
    let mut lines: Vec<String> = Vec::new();
    let names = std::iter::once(CURRENT.to_owned())
        .chain((1..=MOST_FILES).map(|index| format!("{CURRENT}.{index}")));
    for name in names {
        if lines.len() >= tail {
            break;
        }
        let mut file = match File::open(dir.join(name)) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => break,
            Err(error) => return Err(error),
        };
        let mut older = last_lines(&mut file, tail - lines.len())?;
        older.append(&mut lines);
        lines = older;
    }
    Ok(lines)
}

/// The last `wanted` lines of `file`, read backwards in blocks.
fn last_lines(file: &mut File, wanted: usize) -> std::io::Result<Vec<String>> {
    const BLOCK: u64 = 64 * 1024;
    let mut end = file.seek(SeekFrom::End(0))?;
    // Blocks from the end backwards, each read and counted once.
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut newlines = 0;
    // One more newline than lines: the one before the first line kept.
    while end > 0 && newlines <= wanted {
        let start = end.saturating_sub(BLOCK);
        let mut block = vec![0; usize::try_from(end - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block)?;
        newlines += block.iter().filter(|&&b| b == b'\n').count();
        blocks.push(block);
        end = start;
    }
    let kept: Vec<u8> = blocks.into_iter().rev().flatten().collect();
    let text = String::from_utf8_lossy(&kept);
    let all: Vec<&str> = text.lines().collect();
    // The first piece is part of a line unless the file was read from its start.
    let whole = if end == 0 {
        &all[..]
    } else {
        &all[1.min(all.len())..]
    };
    let from = whole.len().saturating_sub(wanted);
    Ok(whole[from..]
        .iter()
        .map(|line| (*line).to_owned())
        .collect())
}

/// Follows `<dir>/output.log` from its current end: each call of [`Follower::read`]
/// returns the lines written since, across a rotation (the file followed is read to its
/// end before the new one). A file rotated in and out again between two reads is
/// skipped: followers read often, and a file holds `log_max_bytes`.
pub struct Follower {
    path: PathBuf,
    /// The file followed, its identity (device, inode) and how far it was read.
    open: Option<(File, (u64, u64), u64)>,
    /// The start of a line not ended yet.
    partial: Vec<u8>,
}

/// The most bytes one read of a follower takes in (the rest waits for the next).
const FOLLOW_READ: u64 = 256 * 1024;

impl Follower {
    pub fn at_end(dir: &Path) -> Follower {
        let path = dir.join(CURRENT);
        let open = File::open(&path).ok().and_then(|mut file| {
            let identity = identity(&file.metadata().ok()?);
            let end = file.seek(SeekFrom::End(0)).ok()?;
            Some((file, identity, end))
        });
        Follower {
            path,
            open,
            partial: Vec::new(),
        }
    }

    /// The lines written since the last call.
    pub fn read(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.drain(&mut lines) == FOLLOW_READ {
            // More to read in this file before looking for a newer one.
            return lines;
        }
        // Rotated (or made anew): the rest of the old file is read above, then the new
        // one from its start.
        let now = fs::metadata(&self.path).ok().map(|meta| identity(&meta));
        let followed = self.open.as_ref().map(|(_, identity, _)| *identity);
        if now.is_some() && now != followed {
            self.open = File::open(&self.path).ok().and_then(|file| {
                let identity = identity(&file.metadata().ok()?);
                Some((file, identity, 0))
            });
            self.partial.clear();
            self.drain(&mut lines);
        }
        lines
    }

    /// Reads what was added to the file followed (at most [`FOLLOW_READ`] bytes);
    /// how many bytes it read.
    fn drain(&mut self, lines: &mut Vec<String>) -> u64 {
        let Some((file, _, position)) = self.open.as_mut() else {
            return 0;
        };
        let Ok(size) = file.metadata().map(|meta| meta.len()) else {
            return 0;
        };
        if size < *position {
            // Truncated: what is there now is new.
            *position = 0;
            self.partial.clear();
        }
        let want = (size - *position).min(FOLLOW_READ);
        if want == 0 || file.seek(SeekFrom::Start(*position)).is_err() {
            return 0;
        }
        let mut chunk = vec![0; usize::try_from(want).unwrap_or(0)];
        let Ok(read) = file.read(&mut chunk) else {
            return 0;
        };
        chunk.truncate(read);
        *position += read as u64;
        self.partial.extend_from_slice(&chunk);
        let complete = match self.partial.iter().rposition(|&b| b == b'\n') {
            Some(at) => at + 1,
            None if self.partial.len() >= MAX_LINE_BYTES => self.partial.len(),
            None => return read as u64,
        };
        let rest = self.partial.split_off(complete);
        let done = std::mem::replace(&mut self.partial, rest);
        lines.extend(String::from_utf8_lossy(&done).lines().map(str::to_owned));
        read as u64
    }
}

fn identity(meta: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_tails_across_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let writer = LogWriter::open(dir.path(), LogLimits::default()).expect("open");
        let line = vec![b'x'; 1000];
        let total = (MAX_FILE_BYTES as usize / 1001) * 4;
        for i in 0..total {
            let mut numbered = format!("{i:06} ").into_bytes();
            numbered.extend_from_slice(&line);
            writer.line(&numbered);
        }
        // Bounded: the current file and KEPT_FILES rotated ones, each near the limit.
        let files = fs::read_dir(dir.path()).expect("read_dir").count();
        assert_eq!(files, 1 + KEPT_FILES);
        for entry in fs::read_dir(dir.path()).expect("read_dir") {
            let size = entry.expect("entry").metadata().expect("metadata").len();
            assert!(size <= MAX_FILE_BYTES + 1100, "{size}");
        }
        let last = tail(dir.path(), 5).expect("tail");
        assert_eq!(last.len(), 5);
        assert!(last[4].starts_with(&format!("{:06}", total - 1)));
        assert!(last[0].starts_with(&format!("{:06}", total - 5)));
        // A tail longer than the current file reaches into the rotated ones, in order.
        let long = tail(dir.path(), 1500).expect("tail");
        assert_eq!(long.len(), 1500);
        let numbers: Vec<usize> = long
            .iter()
            .map(|l| l[..6].parse().expect("number"))
            .collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1));
        assert!(tail(&dir.path().join("none"), 3).expect("tail").is_empty());
    }

    #[test]
    fn a_follower_sees_new_lines_across_rotations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = LogLimits {
            max_bytes: 100,
            files: 1,
        };
        let writer = LogWriter::open(dir.path(), limits).expect("open");
        writer.line(b"before");
        let mut follower = Follower::at_end(dir.path());
        assert!(follower.read().is_empty());
        let mut seen = Vec::new();
        for i in 0..50 {
            writer.line(format!("line {i:02} {}", "x".repeat(20)).as_bytes());
            if i % 3 == 0 {
                seen.extend(follower.read());
            }
        }
        seen.extend(follower.read());
        let numbers: Vec<usize> = seen
            .iter()
            .map(|line| line[5..7].parse().expect("number"))
            .collect();
        // Each line once, in order; none lost to a rotation between two reads (a
        // rotation per four lines, a read per three: some are read from the old file).
        assert_eq!(numbers, (0..50).collect::<Vec<_>>());
    }
}
