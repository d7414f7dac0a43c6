//! CRI log format: `<RFC3339Nano UTC> <stdout|stderr> <F|P> <text>\n`, as read by kubelet.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest text of one record; longer lines are split into partial (`P`) records.
pub const MAX_RECORD: usize = 16 * 1024;

/// Wall clock, ns since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let y = yoe as i64 + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Appends `2006-01-02T15:04:05.000000000Z` (always 9 fractional digits) for `ns`.
pub fn format_timestamp(ns: i64, out: &mut Vec<u8>) {
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    );
}

/// Which stream a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static [u8] {
        match self {
            Stream::Stdout => b"stdout",
            Stream::Stderr => b"stderr",
        }
    }
}

fn record(out: &mut Vec<u8>, ts: &[u8], stream: Stream, full: bool, parts: &[&[u8]]) {
    out.extend_from_slice(ts);
    out.push(b' ');
    out.extend_from_slice(stream.name());
    out.extend_from_slice(if full { b" F " } else { b" P " });
    for p in parts {
        out.extend_from_slice(p);
    }
    out.push(b'\n');
}

/// Turns one stream's bytes into CRI records, keeping the unterminated tail of a line.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream) -> LineSplitter {
        LineSplitter {
            stream,
            partial: Vec::new(),
        }
    }

    /// Formats the complete records contained in `partial + data` into `out`.
    pub fn push(&mut self, mut data: &[u8], ts: &[u8], out: &mut Vec<u8>) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            let (line, rest) = (&data[..i], &data[i + 1..]);
            // A complete line: P records of MAX_RECORD while more than MAX_RECORD remain, then F.
            let mut pre = std::mem::take(&mut self.partial);
            let mut line = line;
            while pre.len() + line.len() > MAX_RECORD {
                if pre.len() >= MAX_RECORD {
                    record(out, ts, self.stream, false, &[&pre[..MAX_RECORD]]);
                    pre.drain(..MAX_RECORD);
                } else {
                    let take = MAX_RECORD - pre.len();
                    record(out, ts, self.stream, false, &[&pre, &line[..take]]);
                    pre.clear();
                    line = &line[take..];
                }
            }
            record(out, ts, self.stream, true, &[&pre, line]);
            pre.clear();
            self.partial = pre;
            data = rest;
        }
        self.partial.extend_from_slice(data);
        // An unterminated run longer than one record: emit P records, keep the rest (<= MAX).
        if self.partial.len() > MAX_RECORD {
            let mut off = 0;
            while self.partial.len() - off > MAX_RECORD {
                record(
                    out,
                    ts,
                    self.stream,
                    false,
                    &[&self.partial[off..off + MAX_RECORD]],
                );
                off += MAX_RECORD;
            }
            self.partial.drain(..off);
        }
        if self.partial.is_empty() && self.partial.capacity() > 4096 {
            self.partial = Vec::new(); // keep an idle supervisor small
        }
    }

    /// End of stream: an unterminated tail becomes a final `F` record.
    pub fn finish(&mut self, ts: &[u8], out: &mut Vec<u8>) {
        if !self.partial.is_empty() {
            record(out, ts, self.stream, true, &[&self.partial]);
        }
        self.partial = Vec::new();
    }
}

/// A CRI log file opened with O_APPEND, reopenable by path.
#[derive(Debug)]
pub struct LogFile {
    pub path: PathBuf,
    /// The log directory the file must stay beneath, and the path relative to it.
    beneath: Option<(PathBuf, PathBuf)>,
    file: Option<File>,
}

impl LogFile {
    /// `path` is opened beneath `directory` when one is given (the pod's log directory):
    /// no symlink and no `..` can take it out.
    pub fn open(path: &Path, directory: Option<&Path>) -> io::Result<LogFile> {
        let beneath = match directory {
            Some(dir) => {
                let rel = path.strip_prefix(dir).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{} is not inside {}", path.display(), dir.display()),
                    )
                })?;
                Some((dir.to_path_buf(), rel.to_path_buf()))
            }
            None => None,
        };
        let mut l = LogFile {
            path: path.to_path_buf(),
            beneath,
            file: None,
        };
        l.reopen()?;
        Ok(l)
    }

    /// Closes and reopens the file by path (creating it and its parent directories).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = None;
        let f = match &self.beneath {
            Some((dir, rel)) => open_beneath(dir, rel, true)?,
            None => {
                if let Some(parent) = self.path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&self.path)?
            }
        };
        self.file = Some(f);
        Ok(())
    }

    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.file {
            Some(f) if !data.is_empty() => f.write_all(data),
            _ => Ok(()),
        }
    }
}

/// Opens `rel` beneath the directory `dir`, one component at a time and refusing every
/// symlink (ELOOP) and escape (EXDEV), so a name planted in the log directory cannot point
/// the runtime's writes at a host file. With `create`, the directory, the missing parents
/// (0755) and the file (0640, for appending) are created; without, the existing path is
/// opened `O_PATH`, to be looked at.
pub fn open_beneath(dir: &Path, rel: &Path, create: bool) -> io::Result<File> {
    use std::os::unix::ffi::OsStrExt;
    let invalid = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: {what}", rel.display()),
        )
    };
    let mut names = Vec::new();
    for component in rel.components() {
        match component {
            std::path::Component::Normal(name) => names.push(
                std::ffi::CString::new(name.as_bytes()).map_err(|_| invalid("has a NUL byte"))?,
            ),
            std::path::Component::CurDir => {}
            _ => return Err(invalid("must be relative, without '..'")),
        }
    }
    let Some((last, parents)) = names.split_last() else {
        return Err(invalid("names no file"));
    };
    if create {
        std::fs::create_dir_all(dir)?;
    }
    let mut cur: std::os::fd::OwnedFd = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?
        .into();
    use std::os::fd::AsFd;
    for name in parents {
        if create {
            match crate::sys::mkdirat(cur.as_fd(), name, 0o755) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        cur =
            crate::sys::openat_no_symlinks(cur.as_fd(), name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    }
    let flags = if create {
        libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND
    } else {
        libc::O_PATH
    };
    Ok(crate::sys::openat_no_symlinks(cur.as_fd(), last, flags, 0o640)?.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let mut v = Vec::new();
        format_timestamp(0, &mut v);
        assert_eq!(v, b"1970-01-01T00:00:00.000000000Z");
        v.clear();
        // 2016-10-06T00:17:09.669794202Z
        format_timestamp(1_475_713_029_669_794_202, &mut v);
        assert_eq!(
            std::str::from_utf8(&v).unwrap(),
            "2016-10-06T00:17:09.669794202Z"
        );
        v.clear();
        // 2000-02-29T23:59:59.000000001Z (leap day)
        format_timestamp(951_868_799_000_000_001, &mut v);
        assert_eq!(
            std::str::from_utf8(&v).unwrap(),
            "2000-02-29T23:59:59.000000001Z"
        );
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }

    fn lines(out: &[u8]) -> Vec<(String, usize)> {
        std::str::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| {
                let mut it = l.splitn(3, ' ');
                assert_eq!(it.next(), Some("TS"));
                let stream = it.next().unwrap().to_string();
                let rest = it.next().unwrap();
                (format!("{stream} {}", &rest[..1]), rest.len() - 2)
            })
            .collect()
    }

    #[test]
    fn splitting() {
        let mut s = LineSplitter::new(Stream::Stdout);
        let mut out = Vec::new();
        s.push(b"a\nbc", b"TS", &mut out);
        s.push(b"d\n\n", b"TS", &mut out);
        assert_eq!(out, b"TS stdout F a\nTS stdout F bcd\nTS stdout F \n");
        out.clear();
        // 40 KiB line in odd chunks: P, P, F(8 KiB)
        let big = vec![b'x'; 40 * 1024];
        for c in big.chunks(3000) {
            s.push(c, b"TS", &mut out);
        }
        s.push(b"\n", b"TS", &mut out);
        assert_eq!(
            lines(&out),
            vec![
                ("stdout P".into(), 16384),
                ("stdout P".into(), 16384),
                ("stdout F".into(), 8192)
            ]
        );
        out.clear();
        // exactly 16 KiB + newline in one chunk: a single F record
        let mut exact = vec![b'y'; MAX_RECORD];
        exact.push(b'\n');
        s.push(&exact, b"TS", &mut out);
        assert_eq!(lines(&out), vec![("stdout F".into(), MAX_RECORD)]);
        out.clear();
        let mut e = LineSplitter::new(Stream::Stderr);
        e.push(b"tail", b"TS", &mut out);
        assert!(out.is_empty());
        e.finish(b"TS", &mut out);
        assert_eq!(out, b"TS stderr F tail\n");
    }
}
