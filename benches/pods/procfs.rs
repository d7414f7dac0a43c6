//! What the bench reads from `/proc`: processes (by executable and arguments, never by
//! name alone) and their proportional set size.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    /// `/proc/<pid>/exe` (empty for kernel threads and processes that are gone).
    pub exe: PathBuf,
    /// The NUL-separated arguments.
    pub cmdline: Vec<Vec<u8>>,
}

impl Proc {
    /// Whether any argument is a path under `dir`.
    pub fn has_arg_under(&self, dir: &Path) -> bool {
        self.cmdline
            .iter()
            .any(|a| Path::new(std::ffi::OsStr::from_bytes(a)).starts_with(dir))
    }
}

/// Every process visible in `/proc`.
pub fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter_map(process)
        .collect()
}

pub fn process(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    Some(Proc {
        pid,
        ppid,
        exe,
        cmdline,
    })
}

/// `Pss:` of `/proc/<pid>/smaps_rollup`, in kB (0 when the process is gone).
pub fn pss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Pss:")
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The first `name` on `PATH`, canonicalized (so it compares with `/proc/<pid>/exe`).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
}

/// Whether this process has `cap` (a `CAP_*` number) in its effective set.
pub fn has_capability(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0)
}
