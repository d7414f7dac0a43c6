//! The value parsers of the flag table: each turns the text a flag carries (from the
//! command line, the environment or the config file) into its value, or says why not.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use super::DEFAULT_ISOLATION;
use super::Recover;

/// Why a value is refused: a bad value, or one whose feature is not built (exit 2 with
/// "not supported yet" either way, naming the flag).
#[derive(Debug)]
pub enum Bad {
    Invalid(String),
    Unsupported(String),
}

impl From<String> for Bad {
    fn from(reason: String) -> Bad {
        Bad::Invalid(reason)
    }
}

impl From<&str> for Bad {
    fn from(reason: &str) -> Bad {
        Bad::Invalid(reason.into())
    }
}

type Parsed<T> = Result<T, Bad>;

pub fn text(t: &str) -> Parsed<String> {
    Ok(t.to_string())
}

fn check_absolute(path: &Path) -> Parsed<()> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err("must be an absolute path".into())
    }
}

pub fn absolute_path(t: &str) -> Parsed<PathBuf> {
    let path = PathBuf::from(t);
    check_absolute(&path)?;
    Ok(path)
}

pub fn some_absolute_path(t: &str) -> Parsed<Option<PathBuf>> {
    absolute_path(t).map(Some)
}

/// The default `--launcher_dir`: the directory of the daemon's own executable.
pub fn own_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin"))
}

/// Mesos knows the `mesos` and `docker` containerizers; only `mesos` is built here.
pub fn containerizers(t: &str) -> Parsed<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for name in t.split(',').map(str::trim) {
        match name {
            "mesos" => {}
            "docker" => {
                return Err(Bad::Unsupported(
                    "the docker containerizer is not supported yet".into(),
                ));
            }
            _ => {
                return Err(format!(
                    "unknown containerizer '{name}' (Mesos has 'mesos' and 'docker')"
                )
                .into());
            }
        }
        if out.iter().any(|n| n == name) {
            return Err(format!("'{name}' is listed twice").into());
        }
        out.push(name.into());
    }
    Ok(out)
}

/// Mesos's launchers: `linux` is what every container runs under; `posix` (a plain
/// subprocess, no namespaces or cgroups) is not built.
pub fn launcher(t: &str) -> Parsed<String> {
    match t {
        "linux" => Ok(t.into()),
        "posix" => Err(Bad::Unsupported(
            "the posix launcher is not supported yet (containers run under the linux launcher)"
                .into(),
        )),
        _ => Err("expected 'linux' or 'posix'".into()),
    }
}

/// Mesos's image providers. A CRI container always has an image, so there must be one;
/// only `docker` is built.
pub fn image_providers(t: &str) -> Parsed<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for name in t.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "docker" => {}
            "appc" => {
                return Err(Bad::Unsupported(
                    "the appc image provider is not supported yet".into(),
                ));
            }
            _ => {
                return Err(format!(
                    "unknown image provider '{name}' (Mesos has 'docker' and 'appc')"
                )
                .into());
            }
        }
        if out.contains(&lower) {
            return Err(format!("'{name}' is listed twice").into());
        }
        out.push(lower);
    }
    if out.is_empty() {
        return Err(Bad::Unsupported(
            "containers without an image provider (host filesystem) are not supported yet".into(),
        ));
    }
    Ok(out)
}

pub fn backend(t: &str) -> Parsed<Option<String>> {
    if ["overlay", "aufs", "copy", "bind"].contains(&t) {
        Ok(Some(t.into()))
    } else {
        Err("expected one of overlay, aufs, copy, bind".into())
    }
}

pub fn registry(t: &str) -> Parsed<String> {
    if t.is_empty() {
        return Err("must be a registry URL or a local directory".into());
    }
    Ok(t.into())
}

pub fn comma_list(t: &str) -> Parsed<Vec<String>> {
    Ok(t.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(String::from)
        .collect())
}

pub fn mirrors(t: &str) -> Parsed<Vec<(String, String)>> {
    let mut out = Vec::new();
    for item in t.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let (host, endpoint) = item
            .split_once('=')
            .filter(|(h, e)| {
                !h.is_empty() && (e.starts_with("http://") || e.starts_with("https://"))
            })
            .ok_or_else(|| format!("'{item}': expected HOST=http(s)://ENDPOINT"))?;
        out.push((host.to_string(), endpoint.to_string()));
    }
    Ok(out)
}

pub fn downloads(t: &str) -> Parsed<usize> {
    t.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=64).contains(n))
        .ok_or_else(|| "expected a whole number from 1 to 64".into())
}

pub fn plugin_dirs(t: &str) -> Parsed<Vec<PathBuf>> {
    let dirs: Vec<PathBuf> = t
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    if dirs.is_empty() {
        return Err("needs at least one directory".into());
    }
    for dir in &dirs {
        check_absolute(dir)?;
    }
    Ok(dirs)
}

pub fn positive_duration(t: &str) -> Parsed<Duration> {
    parse_duration(t)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "expected a positive duration, e.g. 60secs".into())
}

pub fn idle_timeout(t: &str) -> Parsed<Duration> {
    match parse_duration(t)? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

pub fn duration(t: &str) -> Parsed<Duration> {
    Ok(parse_duration(t)?)
}

pub fn bytes(t: &str) -> Parsed<u64> {
    Ok(parse_bytes(t)?)
}

pub fn stall_timeout(t: &str) -> Parsed<Duration> {
    match parse_duration(t)? {
        d if d.is_zero() || d > Duration::from_secs(300) => {
            Err("must be more than 0 and at most 5mins".into())
        }
        d => Ok(d),
    }
}

/// An absolute path other than `/`, without `..`.
fn proper_dir(t: &str, what: &str) -> Parsed<PathBuf> {
    let path = PathBuf::from(t);
    check_absolute(&path)?;
    let parent_dir = path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir));
    if path.parent().is_none() || parent_dir {
        return Err(format!("must be {what} other than / and without '..'").into());
    }
    Ok(path)
}

pub fn allowlist(t: &str) -> Parsed<Vec<PathBuf>> {
    t.split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| proper_dir(d, "a directory"))
        .collect()
}

pub fn sandbox_directory(t: &str) -> Parsed<PathBuf> {
    proper_dir(t, "a container path")
}

pub fn recover(t: &str) -> Parsed<Recover> {
    match t.trim() {
        "reconnect" => Ok(Recover::Reconnect),
        "cleanup" => Ok(Recover::Cleanup),
        _ => Err("expected reconnect or cleanup".into()),
    }
}

pub fn boolean(t: &str) -> Parsed<bool> {
    parse_bool(t).ok_or_else(|| "expected true or false".into())
}

pub fn subnet(t: &str) -> Parsed<String> {
    let ok = t.split_once('/').is_some_and(|(ip, p)| {
        ip.parse::<std::net::IpAddr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 128)
    });
    if !ok {
        return Err("expected ADDRESS/PREFIX".into());
    }
    Ok(t.into())
}

pub fn cgroup_path(t: &str) -> Parsed<String> {
    if t.is_empty() || t.split('/').any(|c| c == "..") {
        return Err("must be a non-empty cgroup path without '..'".into());
    }
    Ok(t.into())
}

pub fn cgroup_driver(t: &str) -> Parsed<String> {
    match t {
        "cgroupfs" | "systemd" => Ok(t.into()),
        _ => Err("expected 'cgroupfs' or 'systemd'".into()),
    }
}

pub fn pids_limit(t: &str) -> Parsed<u64> {
    t.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n <= i64::MAX as u64)
        .ok_or_else(|| "expected a whole number of tasks (0: no limit)".into())
}

pub fn address(t: &str) -> Parsed<SocketAddr> {
    t.parse()
        .map_err(|_| "expected IP:PORT (port 0 picks a free one)".into())
}

pub fn logging_level(t: &str) -> Parsed<String> {
    if tracing_level(t).is_none() {
        return Err("expected one of INFO, WARNING, ERROR (Mesos), or trace, debug".into());
    }
    Ok(t.into())
}

/// Mesos byte sizes: a number followed by B, KB, MB, GB or TB (powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| "expected a number with a unit, e.g. 2GB".to_string())?;
    let multiplier: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        other => return Err(format!("unknown unit '{other}' (B, KB, MB, GB, TB)")),
    };
    if number < 0.0 {
        return Err("must not be negative".into());
    }
    Ok((number * multiplier as f64) as u64)
}

/// Mesos durations: a number followed by ns, us, ms, secs, mins, hrs, days or weeks.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| "expected a number with a unit, e.g. 15secs".to_string())?;
    let seconds_per_unit = match unit.trim() {
        "ns" => 1e-9,
        "us" => 1e-6,
        "ms" => 1e-3,
        "secs" | "s" => 1.0,
        "mins" => 60.0,
        "hrs" => 3600.0,
        "days" => 86400.0,
        "weeks" => 604800.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' (ns, us, ms, secs, mins, hrs, days, weeks)"
            ));
        }
    };
    if number < 0.0 {
        return Err("must not be negative".into());
    }
    Ok(Duration::from_secs_f64(number * seconds_per_unit))
}

pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Maps Mesos logging levels (and the usual tracing names) onto a tracing filter.
pub fn tracing_level(level: &str) -> Option<&'static str> {
    match level.to_ascii_uppercase().as_str() {
        "TRACE" => Some("trace"),
        "DEBUG" => Some("debug"),
        "INFO" => Some("info"),
        "WARNING" | "WARN" => Some("warn"),
        "ERROR" => Some("error"),
        _ => None,
    }
}
