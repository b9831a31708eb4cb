//! The access log: one line per answered request, at nginx's price.
//!
//! A line is formatted by hand (a timestamp made once a second, integers by `itoa`, no
//! general-purpose formatter) into the buffer of the worker that answered, under that
//! worker's own lock (nobody else takes it but the flusher, once a second). A buffer past
//! 64 KiB, and every buffer each second, goes to a writer thread that owns the file:
//! requests never wait for the disk unless the writer is a whole megabyte behind (then
//! they wait, as nginx's workers do: no line is dropped). A clean stop flushes
//! everything; a crash loses at most the last second. The file is reopened on SIGUSR1
//! (logrotate's convention).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;

use crate::runtime::{slot, SLOTS};
use crate::util::lock;

/// A worker's buffer is handed to the writer past this.
const FLUSH_BYTES: usize = 64 * 1024;
/// Every buffer is handed to the writer at least this often.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Buffers the writer may be behind before a request waits for it (a megabyte).
const QUEUE: usize = 16;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogSink {
    Stdout,
    /// Appended to; reopened on [`AccessLog::reopen`].
    File(PathBuf),
}

/// How a line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineFormat {
    /// `2026-12-03T15:25:52Z herve::access client=… status=… method=… path=… latency_us=…`
    Text,
    /// One JSON object a line, shaped like Herve's other JSON log lines (`fields`).
    Json,
}

/// The access log of one Herve.
pub(crate) struct AccessLog {
    slots: Box<[Padded]>,
    format: LineFormat,
    queue: SyncSender<Message>,
}

/// A worker's buffer, on a cache line of its own.
#[repr(align(128))]
struct Padded(Mutex<Buffer>);

struct Buffer {
    lines: Vec<u8>,
    /// The second `stamp` spells.
    second: u64,
    stamp: [u8; STAMP_LEN],
}

const STAMP_LEN: usize = "2026-12-03T15:25:52Z".len();

enum Message {
    Lines(Vec<u8>),
    Reopen,
    /// Everything sent before is written: say so.
    Flushed(SyncSender<()>),
}

impl AccessLog {
    /// Opens `sink` and starts the writer and the flusher.
    pub fn start(sink: LogSink, format: LineFormat) -> std::io::Result<Arc<AccessLog>> {
        let out = Out::open(&sink)?;
        let (queue, received) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("herve-access-log".to_owned())
            .spawn(move || write_lines(out, &sink, &received))?;
        let log = Arc::new(AccessLog {
            slots: (0..SLOTS)
                .map(|_| {
                    Padded(Mutex::new(Buffer {
                        lines: Vec::with_capacity(FLUSH_BYTES + 512),
                        second: 0,
                        stamp: [b'0'; STAMP_LEN],
                    }))
                })
                .collect(),
            format,
            queue,
        });
        let weak = Arc::downgrade(&log);
        std::thread::Builder::new()
            .name("herve-access-flush".to_owned())
            .spawn(move || flush_every_second(&weak))?;
        Ok(log)
    }

    /// Logs one answer. For a request refused before it was read, `method` and `path`
    /// are `-`.
    pub fn line(
        &self,
        client: SocketAddr,
        status: StatusCode,
        method: &str,
        path: &str,
        latency_us: u64,
    ) {
        let full = {
            let mut buffer = lock(&self.slots[slot()].0);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            if now != buffer.second {
                buffer.second = now;
                buffer.stamp = rfc3339(now);
            }
            let Buffer { lines, stamp, .. } = &mut *buffer;
            let answer = Answer {
                client: client.ip(),
                status,
                method,
                path,
                latency_us,
            };
            match self.format {
                LineFormat::Text => text_line(lines, stamp, &answer),
                LineFormat::Json => json_line(lines, stamp, &answer),
            }
            (lines.len() >= FLUSH_BYTES).then(|| take(lines))
        };
        if let Some(full) = full {
            // Off the lock: a full queue makes only this request wait.
            self.send(Message::Lines(full));
        }
    }

    /// Hands every buffer to the writer and waits until it has written them.
    pub fn flush(&self) {
        self.hand_over();
        let (done, wait) = sync_channel(1);
        self.send(Message::Flushed(done));
        let _ = wait.recv_timeout(Duration::from_secs(10));
    }

    /// Reopens the file (after logrotate moved it away).
    pub fn reopen(&self) {
        self.hand_over();
        self.send(Message::Reopen);
    }

    fn hand_over(&self) {
        for padded in &self.slots {
            let lines = {
                let mut buffer = lock(&padded.0);
                if buffer.lines.is_empty() {
                    continue;
                }
                take(&mut buffer.lines)
            };
            self.send(Message::Lines(lines));
        }
    }

    fn send(&self, message: Message) {
        if self.queue.send(message).is_err() {
            // The writer is gone (it could not write): nothing more can be logged.
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.hand_over();
    }
}

fn take(lines: &mut Vec<u8>) -> Vec<u8> {
    std::mem::replace(lines, Vec::with_capacity(FLUSH_BYTES + 512))
}

fn flush_every_second(log: &Weak<AccessLog>) {
    loop {
        std::thread::sleep(FLUSH_EVERY);
        let Some(log) = log.upgrade() else {
            return;
        };
        log.hand_over();
    }
}

/// The file or stdout.
enum Out {
    Stdout(std::io::Stdout),
    File(File),
}

impl Out {
    fn open(sink: &LogSink) -> std::io::Result<Out> {
        Ok(match sink {
            LogSink::Stdout => Out::Stdout(std::io::stdout()),
            LogSink::File(path) => Out::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(path)?,
            ),
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Stdout(stdout) => {
                let mut stdout = stdout.lock();
                stdout.write_all(bytes)?;
                stdout.flush()
            }
            Out::File(file) => file.write_all(bytes),
        }
    }
}

fn write_lines(mut out: Out, sink: &LogSink, received: &Receiver<Message>) {
    let mut failing = false;
    for message in received {
        match message {
            Message::Lines(lines) => match out.write_all(&lines) {
                Ok(()) => failing = false,
                Err(error) => {
                    if !failing {
                        tracing::error!(%error, "access lines could not be written");
                    }
                    failing = true;
                }
            },
            Message::Reopen => match Out::open(sink) {
                Ok(reopened) => out = reopened,
                Err(error) => {
                    tracing::error!(%error, "the access log could not be reopened; writing on to the old file");
                }
            },
            Message::Flushed(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// What a line says of one answer.
struct Answer<'a> {
    client: IpAddr,
    status: StatusCode,
    method: &'a str,
    path: &'a str,
    latency_us: u64,
}

fn text_line(lines: &mut Vec<u8>, stamp: &[u8], answer: &Answer<'_>) {
    let mut numbers = itoa::Buffer::new();
    lines.extend_from_slice(stamp);
    lines.extend_from_slice(b" herve::access client=");
    push_ip(lines, answer.client);
    lines.extend_from_slice(b" status=");
    lines.extend_from_slice(answer.status.as_str().as_bytes());
    lines.extend_from_slice(b" method=");
    lines.extend_from_slice(answer.method.as_bytes());
    lines.extend_from_slice(b" path=");
    lines.extend_from_slice(answer.path.as_bytes());
    lines.extend_from_slice(b" latency_us=");
    lines.extend_from_slice(numbers.format(answer.latency_us).as_bytes());
    lines.push(b'\n');
}

fn json_line(lines: &mut Vec<u8>, stamp: &[u8], answer: &Answer<'_>) {
    let mut numbers = itoa::Buffer::new();
    lines.extend_from_slice(b"{\"timestamp\":\"");
    lines.extend_from_slice(stamp);
    lines.extend_from_slice(
        b"\",\"level\":\"INFO\",\"target\":\"herve::access\",\"fields\":{\"client\":\"",
    );
    push_ip(lines, answer.client);
    lines.extend_from_slice(b"\",\"status\":");
    lines.extend_from_slice(answer.status.as_str().as_bytes());
    lines.extend_from_slice(b",\"method\":\"");
    push_json_text(lines, answer.method);
    lines.extend_from_slice(b"\",\"path\":\"");
    push_json_text(lines, answer.path);
    lines.extend_from_slice(b"\",\"latency_us\":");
    lines.extend_from_slice(numbers.format(answer.latency_us).as_bytes());
    lines.extend_from_slice(b"}}\n");
}

fn push_ip(lines: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut numbers = itoa::Buffer::new();
            for (index, octet) in v4.octets().into_iter().enumerate() {
                if index > 0 {
                    lines.push(b'.');
                }
                lines.extend_from_slice(numbers.format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            // Rare enough for the formatter.
            let _ = write!(lines, "{v6}");
        }
    }
}

/// Text inside a JSON string: quotes, backslashes and control bytes escaped (paths are
/// what clients sent).
fn push_json_text(lines: &mut Vec<u8>, text: &str) {
    for &byte in text.as_bytes() {
        match byte {
            b'"' => lines.extend_from_slice(b"\\\""),
            b'\\' => lines.extend_from_slice(b"\\\\"),
            0..=0x1f | 0x7f => {
                let _ = write!(lines, "\\u{byte:04x}");
            }
            _ => lines.push(byte),
        }
    }
}

/// `2026-12-03T15:25:52Z` for a Unix time in seconds (UTC; proleptic Gregorian).
fn rfc3339(unix: u64) -> [u8; STAMP_LEN] {
    let days = i64::try_from(unix / 86_400).unwrap_or(0);
    let of_day = unix % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut stamp = [0u8; STAMP_LEN];
    let digits = |out: &mut [u8], value: u64| {
        let mut value = value;
        for place in out.iter_mut().rev() {
            *place = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    digits(&mut stamp[0..4], u64::try_from(year).unwrap_or(0));
    stamp[4] = b'-';
    digits(&mut stamp[5..7], u64::try_from(month).unwrap_or(0));
    stamp[7] = b'-';
    digits(&mut stamp[8..10], u64::try_from(day).unwrap_or(0));
    stamp[10] = b'T';
    digits(&mut stamp[11..13], of_day / 3600);
    stamp[13] = b':';
    digits(&mut stamp[14..16], of_day / 60 % 60);
    stamp[16] = b':';
    digits(&mut stamp[17..19], of_day % 60);
    stamp[19] = b'Z';
    stamp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(&rfc3339(0), b"1970-01-01T00:00:00Z");
        assert_eq!(&rfc3339(951_782_400), b"2000-02-29T00:00:00Z");
        assert_eq!(&rfc3339(1_796_311_552), b"2026-12-03T15:25:52Z");
    }

    #[test]
    fn lines_in_both_formats() {
        let client: SocketAddr = "10.0.0.7:5555".parse().expect("addr");
        let mut text = Vec::new();
        let answer = |client, status, path| Answer {
            client,
            status,
            method: "GET",
            path,
            latency_us: 12,
        };
        text_line(
            &mut text,
            b"2026-12-03T15:25:52Z",
            &answer(client.ip(), StatusCode::NOT_FOUND, "/a b"),
        );
        assert_eq!(
            String::from_utf8_lossy(&text),
            "2026-12-03T15:25:52Z herve::access client=10.0.0.7 status=404 method=GET path=/a b latency_us=12\n"
        );
        let mut json = Vec::new();
        json_line(
            &mut json,
            b"2026-12-03T15:25:52Z",
            &answer(
                "[::1]:1".parse::<SocketAddr>().expect("addr").ip(),
                StatusCode::OK,
                "/\"q\"\\",
            ),
        );
        let parsed: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
        assert_eq!(parsed["fields"]["path"], "/\"q\"\\");
        assert_eq!(parsed["fields"]["client"], "::1");
        assert_eq!(parsed["fields"]["status"], 200);
        assert_eq!(parsed["target"], "herve::access");
    }

    #[test]
    fn lines_wait_in_their_buffer_until_64_kib_or_a_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let started = std::time::Instant::now();
        let log = AccessLog::start(LogSink::File(path.clone()), LineFormat::Text).expect("log");
        let client: SocketAddr = "10.0.0.7:5555".parse().expect("addr");
        let size = || std::fs::metadata(&path).map_or(0, |m| m.len());
        log.line(client, StatusCode::OK, "GET", "/one", 1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            size(),
            0,
            "a line went out before its buffer was full or a second old"
        );
        let long = format!("/{}", "x".repeat(1000));
        for _ in 0..70 {
            log.line(client, StatusCode::OK, "GET", &long, 1);
        }
        while size() < FLUSH_BYTES as u64 {
            assert!(
                started.elapsed() < FLUSH_EVERY - Duration::from_millis(100),
                "a full buffer waited for the second"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        log.flush();
        let written = std::fs::read_to_string(&path).expect("read");
        assert_eq!(written.lines().count(), 71);
        assert!(written
            .lines()
            .next()
            .is_some_and(|line| line.ends_with("path=/one latency_us=1")));
    }
}
