//! Mesos-named agent flags, resolved from the command line, the environment
//! (`CRI_MESOS_<FLAG>`), a YAML config file (`--config`) and embedded defaults, in that
//! order of precedence.
//!
//! Every flag is declared once, in [`table`]; this module turns that table into the
//! command line, reads the sources, and applies the rules between flags. It uses nothing
//! else of the crate: components take their own configuration from [`Flags`] (the
//! isolator registry turns `--isolation` into a chain).
//!
//! Every flag is accepted in Mesos's spelling (`--work_dir`) and the dashed one
//! (`--work-dir`), because operators copy Mesos agent command lines as they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use self::parse::Bad;
pub use self::parse::{parse_bytes, parse_duration, tracing_level};

mod parse;

/// What went wrong in the configuration; the daemon exits with status 2 on any of these.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("--{flag}: invalid value '{value}': {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("--{flag}={value}: {reason}")]
    Unsupported {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("--config {path}: {reason}")]
    ConfigFile { path: String, reason: String },
}

pub const DEFAULT_ISOLATION: &str = "filesystem/linux,docker/runtime,namespaces/pid,namespaces/ipc,volume/host_path,network/cni,cgroups/cpu,cgroups/mem,cgroups/pids,cgroups/cpuset,cgroups/hugetlb,disk/du";

/// One row of the flag table, as the command line and the README show it.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Mesos's spelling, without `--`.
    pub name: &'static str,
    pub default: Shown,
    pub help: &'static str,
    /// `--flag` alone means true.
    pub boolean: bool,
}

/// A flag's default as the README shows it.
#[derive(Debug, Clone, Copy)]
pub enum Shown {
    /// The text parsed when the flag is not given (shown in backticks).
    Text(&'static str),
    /// A description of a computed default, or of "unset".
    Verbatim(&'static str),
}

impl Spec {
    /// `CRI_MESOS_<NAME>`.
    pub fn env(&self) -> String {
        format!("CRI_MESOS_{}", self.name.to_ascii_uppercase())
    }

    /// The dashed spelling, also accepted on the command line and in the file.
    pub fn dashed(&self) -> String {
        self.name.replace('_', "-")
    }
}

/// Generates, from the rows of `table.rs`, the [`Flags`] struct, the [`TABLE`] and the
/// per-flag parsing (see that file for the row syntax).
macro_rules! flag_table {
    ($( $(#[doc = $help:literal])+ $name:ident : $ty:ty = $kind:ident ( $($d:tt)* ) => $parse:ident ; )*) => {
        /// The effective configuration, after every source was merged and validated:
        /// one plain value per flag, plus what only the config file has.
        #[derive(Debug, Clone)]
        pub struct Flags {
            $( $(#[doc = $help])+ pub $name: $ty, )*
            /// Per-host registry settings: the config file's `registries` merged with the
            /// `--insecure_registries` and `--registry_mirrors` shortcuts.
            pub registries: BTreeMap<String, RegistryHost>,
            /// Resource limits of every container (the file's `rlimits`; `posix/rlimits`).
            pub rlimits: Vec<Rlimit>,
            pub config_file: Option<PathBuf>,
        }

        /// Every flag, in the table's order.
        pub const TABLE: &[Spec] = &[$(
            Spec {
                name: stringify!($name),
                default: flag_table!(@shown $kind ($($d)*)),
                help: concat!($($help),+),
                boolean: flag_table!(@boolean $parse),
            },
        )*];

        pub(super) fn parse_table(raw: &Raw) -> Result<Flags, FlagError> {
            $(
                let $name: $ty = match raw.get(stringify!($name)) {
                    Some(text) => parse_one(stringify!($name), &text, $parse)?,
                    None => flag_table!(@default stringify!($name), $parse, $kind ($($d)*)),
                };
            )*
            Ok(Flags {
                $($name,)*
                registries: BTreeMap::new(),
                rlimits: Vec::new(),
                config_file: None,
            })
        }

        impl Flags {
            /// Every flag's value as JSON, for the verbose status.
            pub(super) fn values(&self) -> serde_json::Map<String, serde_json::Value> {
                let mut map = serde_json::Map::new();
                $( map.insert(stringify!($name).into(), Show::show(&self.$name)); )*
                map
            }
        }
    };
    (@shown default($t:expr)) => { Shown::Text($t) };
    (@shown computed($s:literal, $e:expr)) => { Shown::Verbatim($s) };
    (@shown none($s:literal)) => { Shown::Verbatim($s) };
    (@default $n:expr, $p:ident, default($t:expr)) => { parse_one($n, $t, $p)? };
    (@default $n:expr, $p:ident, computed($s:literal, $e:expr)) => { $e };
    (@default $n:expr, $p:ident, none($s:literal)) => { None };
    (@boolean boolean) => { true };
    (@boolean $p:ident) => { false };
}
mod table;

use self::table::parse_table;
pub use self::table::{Flags, TABLE};

fn parse_one<T>(
    flag: &'static str,
    text: &str,
    parse: fn(&str) -> Result<T, Bad>,
) -> Result<T, FlagError> {
    parse(text).map_err(|bad| match bad {
        Bad::Invalid(reason) => FlagError::Invalid {
            flag,
            value: text.to_string(),
            reason,
        },
        Bad::Unsupported(reason) => FlagError::Unsupported {
            flag,
            value: text.to_string(),
            reason,
        },
    })
}

/// A value as the verbose status shows it (durations in Mesos's `secs`).
/// Mesos's `--recover`: `reconnect` to what runs (the default), or `cleanup`: destroy
/// every pod and container found at start (their networks released), then start empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Recover {
    Reconnect,
    Cleanup,
}

trait Show {
    fn show(&self) -> serde_json::Value;
}

macro_rules! show_as_json {
    ($($t:ty),*) => {$(
        impl Show for $t {
            fn show(&self) -> serde_json::Value {
                serde_json::to_value(self).unwrap_or_default()
            }
        }
    )*};
}
show_as_json!(
    PathBuf,
    String,
    bool,
    u64,
    usize,
    std::net::SocketAddr,
    Vec<String>,
    Vec<PathBuf>,
    Vec<(String, String)>,
    Recover
);

impl Show for std::time::Duration {
    fn show(&self) -> serde_json::Value {
        format!("{}secs", self.as_secs_f64()).into()
    }
}

impl<T: Show> Show for Option<T> {
    fn show(&self) -> serde_json::Value {
        self.as_ref().map(Show::show).unwrap_or_default()
    }
}

impl Serialize for Flags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = self.values();
        map.insert(
            "registries".into(),
            serde_json::to_value(&self.registries).unwrap_or_default(),
        );
        map.insert(
            "rlimits".into(),
            serde_json::to_value(&self.rlimits).unwrap_or_default(),
        );
        map.insert("config_file".into(), Show::show(&self.config_file));
        map.serialize(s)
    }
}

/// The given values of every source but the defaults: the command line (with the
/// environment, which clap reads) over the config file.
pub(super) struct Raw {
    cli: clap::ArgMatches,
    file: BTreeMap<String, String>,
}

impl Raw {
    pub(super) fn get(&self, name: &str) -> Option<String> {
        self.cli
            .get_one::<String>(name)
            .cloned()
            .or_else(|| self.file.get(name).cloned())
    }
}

fn command() -> clap::Command {
    let mut cmd = clap::Command::new("cri-mesos")
        .version(env!("CARGO_PKG_VERSION"))
        .about("A Kubernetes CRI runtime built like the Apache Mesos containerizer")
        .arg(
            clap::Arg::new("config")
                .long("config")
                .env("CRI_MESOS_CONFIG")
                .value_parser(clap::value_parser!(PathBuf))
                .help("YAML file with any of the flags below as keys (Mesos spelling)"),
        );
    for spec in TABLE {
        let mut arg = clap::Arg::new(spec.name)
            .long(spec.name)
            .env(spec.env())
            .help(spec.help.trim());
        if spec.dashed() != spec.name {
            arg = arg.visible_alias(spec.dashed());
        }
        if spec.boolean {
            arg = arg.num_args(0..=1).default_missing_value("true");
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

impl Flags {
    /// Resolves the flags of this process (its arguments and environment).
    /// Clap's own errors (unknown flag, `--help`) exit the process as clap does.
    pub fn from_env() -> Result<Flags, FlagError> {
        Self::resolve(command().get_matches())
    }

    /// Resolves flags from explicit arguments (the first one is the program name).
    pub fn from_args<I, T>(args: I) -> Result<Flags, FlagError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = command()
            .try_get_matches_from(args)
            .map_err(|e| FlagError::Invalid {
                flag: "args",
                value: String::new(),
                reason: e.to_string(),
            })?;
        Self::resolve(cli)
    }

    fn resolve(cli: clap::ArgMatches) -> Result<Flags, FlagError> {
        let config_file = cli.get_one::<PathBuf>("config").cloned();
        let file = match &config_file {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let raw = Raw {
            cli,
            file: file.flags,
        };
        let mut flags = parse_table(&raw)?;
        flags.config_file = config_file;
        flags.rlimits = parse_rlimits(&file.rlimits)?;
        flags.registries = file.registries;
        flags.check()?;
        Ok(flags)
    }

    /// The rules between flags, and the registry shortcuts merged into `registries`.
    fn check(&mut self) -> Result<(), FlagError> {
        let config = || {
            self.config_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        for (host, r) in &self.registries {
            for (key, path) in [("ca_file", &r.ca_file), ("auth_file", &r.auth_file)] {
                if let Some(path) = path.as_ref().filter(|p| !p.is_absolute()) {
                    return Err(FlagError::ConfigFile {
                        path: config(),
                        reason: format!(
                            "registries.{host}.{key}: {} is not an absolute path",
                            path.display()
                        ),
                    });
                }
            }
        }
        for host in &self.insecure_registries {
            self.registries.entry(host.clone()).or_default().insecure = true;
        }
        for (host, endpoint) in &self.registry_mirrors {
            self.registries
                .entry(host.clone())
                .or_default()
                .mirrors
                .push(endpoint.clone());
        }
        // The cache directory is emptied at start: it must not hold what the daemon keeps.
        for (flag, kept) in [
            ("work_dir", &self.work_dir),
            ("runtime_dir", &self.runtime_dir),
            ("docker_store_dir", &self.docker_store_dir),
        ] {
            if self.fetcher_cache_size > 0 && kept.starts_with(&self.fetcher_cache_dir) {
                return Err(FlagError::Invalid {
                    flag: "fetcher_cache_dir",
                    value: self.fetcher_cache_dir.display().to_string(),
                    reason: format!(
                        "is emptied when the daemon starts, and holds --{flag} {}",
                        kept.display()
                    ),
                });
            }
        }
        match (&self.streaming_tls_cert_file, &self.streaming_tls_key_file) {
            (Some(p), None) | (None, Some(p)) => {
                let flag = if self.streaming_tls_cert_file.is_some() {
                    "streaming_tls_cert_file"
                } else {
                    "streaming_tls_key_file"
                };
                return Err(FlagError::Invalid {
                    flag,
                    value: p.display().to_string(),
                    reason: "--streaming_tls_cert_file and --streaming_tls_key_file go together"
                        .into(),
                });
            }
            _ => {}
        }
        Ok(())
    }
}

/// The README's flag table, from [`TABLE`] (a test checks the README has it verbatim).
pub fn readme_table() -> String {
    let mut out = String::from(
        "| flag | default | meaning |\n|---|---|---|\n| `--config` | none | YAML file whose keys are the flags below |\n",
    );
    for spec in TABLE {
        let default = match spec.default {
            Shown::Text("") => "none".to_string(),
            Shown::Text(t) => format!("`{t}`"),
            Shown::Verbatim(v) => v.to_string(),
        };
        out.push_str(&format!(
            "| `--{}` | {} | {} |\n",
            spec.name,
            default,
            spec.help.trim()
        ));
    }
    out
}

/// The config file: the flags' keys (Mesos spelling, dashes accepted too) plus what only
/// the file has. Unknown keys are an error so that a typo does not silently fall back to
/// a default.
#[derive(Debug, Default)]
struct FileConfig {
    /// Each flag's value as the text a flag would carry: YAML lets `2GB`, `15` and
    /// `true` be written bare, and one parser serves every source.
    flags: BTreeMap<String, String>,
    /// Per-registry settings: `registries: {HOST: {insecure, mirrors, ca_file, auth_file}}`.
    registries: BTreeMap<String, RegistryHost>,
    /// Node default resource limits of every container:
    /// `rlimits: {NOFILE: {soft: 1048576, hard: 1048576}}` (`posix/rlimits`).
    rlimits: BTreeMap<String, RlimitValue>,
}

fn load_file(path: &Path) -> Result<FileConfig, FlagError> {
    let bad = |reason: String| FlagError::ConfigFile {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    let doc: BTreeMap<String, serde_norway::Value> =
        serde_norway::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut file = FileConfig::default();
    for (key, value) in doc {
        let name = key.replace('-', "_");
        match name.as_str() {
            "registries" => {
                file.registries =
                    serde_norway::from_value(value).map_err(|e| bad(format!("registries: {e}")))?;
            }
            "rlimits" => {
                file.rlimits =
                    serde_norway::from_value(value).map_err(|e| bad(format!("rlimits: {e}")))?;
            }
            _ if TABLE.iter().any(|s| s.name == name) => {
                let text = match value {
                    serde_norway::Value::Null => continue,
                    serde_norway::Value::Bool(b) => b.to_string(),
                    serde_norway::Value::Number(n) => n.to_string(),
                    serde_norway::Value::String(s) => s,
                    // A YAML list for the comma-list flags.
                    serde_norway::Value::Sequence(items) => {
                        let mut parts = Vec::with_capacity(items.len());
                        for item in items {
                            parts.push(match item {
                                serde_norway::Value::String(s) => s,
                                serde_norway::Value::Number(n) => n.to_string(),
                                serde_norway::Value::Bool(b) => b.to_string(),
                                _ => return Err(bad(format!("{key}: expected a list of values"))),
                            });
                        }
                        parts.join(",")
                    }
                    _ => return Err(bad(format!("{key}: expected a single value"))),
                };
                file.flags.insert(name, text);
            }
            _ => return Err(bad(format!("unknown field `{key}`"))),
        }
    }
    Ok(file)
}

/// One resource limit of the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlimitValue {
    pub soft: u64,
    pub hard: u64,
}

/// A resource limit every container gets (`posix/rlimits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rlimit {
    /// `NOFILE`, `NPROC`, ... (RLIMIT_ without its prefix).
    pub name: String,
    /// The `RLIMIT_*` number.
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// The limits setrlimit(2) knows, by their names without `RLIMIT_`.
const RLIMITS: &[(&str, u32)] = &[
    ("CPU", libc::RLIMIT_CPU),
    ("FSIZE", libc::RLIMIT_FSIZE),
    ("DATA", libc::RLIMIT_DATA),
    ("STACK", libc::RLIMIT_STACK),
    ("CORE", libc::RLIMIT_CORE),
    ("RSS", libc::RLIMIT_RSS),
    ("NPROC", libc::RLIMIT_NPROC),
    ("NOFILE", libc::RLIMIT_NOFILE),
    ("MEMLOCK", libc::RLIMIT_MEMLOCK),
    ("AS", libc::RLIMIT_AS),
    ("LOCKS", libc::RLIMIT_LOCKS),
    ("SIGPENDING", libc::RLIMIT_SIGPENDING),
    ("MSGQUEUE", libc::RLIMIT_MSGQUEUE),
    ("NICE", libc::RLIMIT_NICE),
    ("RTPRIO", libc::RLIMIT_RTPRIO),
    ("RTTIME", libc::RLIMIT_RTTIME),
];

/// Checks the file's `rlimits`: known names, soft ≤ hard, and a hard limit the daemon
/// can give (raising one needs CAP_SYS_RESOURCE, which a host may withhold: better to
/// exit at start than to fail every container).
fn parse_rlimits(asked: &BTreeMap<String, RlimitValue>) -> Result<Vec<Rlimit>, FlagError> {
    let mut out = Vec::new();
    for (name, value) in asked {
        let bare = name.to_ascii_uppercase();
        let bare = bare.strip_prefix("RLIMIT_").unwrap_or(&bare).to_string();
        let invalid = |reason: String| FlagError::Invalid {
            flag: "config rlimits",
            value: name.clone(),
            reason,
        };
        let resource = RLIMITS
            .iter()
            .find(|(n, _)| *n == bare)
            .map(|(_, r)| *r)
            .ok_or_else(|| invalid("not a resource limit (NOFILE, NPROC, CORE, ...)".into()))?;
        if value.soft > value.hard {
            return Err(invalid(format!(
                "soft {} is above hard {}",
                value.soft, value.hard
            )));
        }
        let own = nix::sys::resource::getrlimit(rlimit_resource(resource))
            .map_err(|e| invalid(format!("getrlimit: {e}")))?;
        if value.hard > own.1 {
            return Err(invalid(format!(
                "hard {} is above the daemon's own hard limit {}, which only CAP_SYS_RESOURCE could raise",
                value.hard, own.1
            )));
        }
        out.push(Rlimit {
            name: bare,
            resource,
            soft: value.soft,
            hard: value.hard,
        });
    }
    Ok(out)
}

fn rlimit_resource(resource: u32) -> nix::sys::resource::Resource {
    use nix::sys::resource::Resource;
    [
        Resource::RLIMIT_CPU,
        Resource::RLIMIT_FSIZE,
        Resource::RLIMIT_DATA,
        Resource::RLIMIT_STACK,
        Resource::RLIMIT_CORE,
        Resource::RLIMIT_RSS,
        Resource::RLIMIT_NPROC,
        Resource::RLIMIT_NOFILE,
        Resource::RLIMIT_MEMLOCK,
        Resource::RLIMIT_AS,
        Resource::RLIMIT_LOCKS,
        Resource::RLIMIT_SIGPENDING,
        Resource::RLIMIT_MSGQUEUE,
        Resource::RLIMIT_NICE,
        Resource::RLIMIT_RTPRIO,
        Resource::RLIMIT_RTTIME,
    ]
    .into_iter()
    .find(|r| *r as u32 == resource)
    .unwrap_or(Resource::RLIMIT_NOFILE)
}

/// Settings of one registry host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryHost {
    /// Plain http instead of https.
    #[serde(default)]
    pub insecure: bool,
    /// Endpoints (`http://127.0.0.1:5000`) tried in order before the host itself; the
    /// repository path and the image's name stay as written.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// PEM file of CAs trusted for this host (and its mirrors), beside the system roots.
    #[serde(default, alias = "ca-file")]
    pub ca_file: Option<PathBuf>,
    /// A docker config.json (a `kubernetes.io/dockerconfigjson` Secret) whose `auths`
    /// entry for this host authenticates pulls that bring no credentials; read per pull.
    #[serde(default, alias = "auth-file")]
    pub auth_file: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn byte_sizes_follow_mesos_units() {
        assert_eq!(parse_bytes("2GB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512MB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert!(parse_bytes("2XB").is_err());
        assert!(parse_bytes("GB").is_err());
    }

    #[test]
    fn durations_follow_mesos_units() {
        assert_eq!(parse_duration("15secs").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("1mins").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("15 parsecs").is_err());
    }

    #[test]
    fn fetcher_flags_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "fetcher_file_allowlist: [/srv/artifacts, /data/x]\nfetcher_stall_timeout: 10secs\n",
        )
        .unwrap();
        let flags = Flags::from_args(["cri-mesos", "--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(
            flags.fetcher_file_allowlist,
            [PathBuf::from("/srv/artifacts"), PathBuf::from("/data/x")]
        );
        assert_eq!(flags.fetcher_stall_timeout, Duration::from_secs(10));
        let flags = Flags::from_args(["cri-mesos", "--fetcher_file_allowlist=/a,/b"]).unwrap();
        assert_eq!(flags.fetcher_file_allowlist.len(), 2);
        for (bad, needle) in [
            ("--fetcher_stall_timeout=0secs", "fetcher_stall_timeout"),
            ("--fetcher_stall_timeout=10mins", "at most 5mins"),
            ("--fetcher_file_allowlist=rel/dir", "fetcher_file_allowlist"),
            ("--fetcher_file_allowlist=/", "other than /"),
            ("--sandbox_directory=/", "sandbox_directory"),
            ("--sandbox_directory=mnt/sandbox", "sandbox_directory"),
            ("--fetcher_cache_dir=/var/lib", "emptied"),
        ] {
            let err = Flags::from_args(["cri-mesos", bad])
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        // Without a cache nothing is emptied.
        Flags::from_args([
            "cri-mesos",
            "--fetcher_cache_dir=/var/lib",
            "--fetcher_cache_size=0",
        ])
        .unwrap();
    }

    #[test]
    fn defaults_resolve_without_any_source() {
        let flags = Flags::from_args(["cri-mesos"]).unwrap();
        assert_eq!(flags.work_dir, PathBuf::from("/var/lib/cri-mesos"));
        assert_eq!(
            flags.docker_store_dir,
            PathBuf::from("/var/lib/cri-mesos/store/docker")
        );
        assert_eq!(flags.launcher, "linux");
        assert_eq!(flags.fetcher_cache_size, 2 << 30);
        assert_eq!(flags.fetcher_stall_timeout, Duration::from_secs(60));
        assert!(flags.fetcher_file_allowlist.is_empty());
        assert_eq!(flags.sandbox_directory, PathBuf::from("/mnt/mesos/sandbox"));
        assert_eq!(flags.streaming_address, "127.0.0.1:0".parse().unwrap());
        assert_eq!(flags.streaming_idle_timeout, Duration::from_secs(4 * 3600));
    }

    #[test]
    fn streaming_flags_are_checked() {
        let flags = Flags::from_args([
            "cri-mesos",
            "--streaming_address=0.0.0.0:10010",
            "--streaming-idle-timeout=30mins",
        ])
        .unwrap();
        assert_eq!(flags.streaming_address.port(), 10010);
        assert_eq!(flags.streaming_idle_timeout, Duration::from_secs(1800));
        for bad in [
            "--streaming_address=localhost",
            "--streaming_idle_timeout=0secs",
            "--streaming_tls_cert_file=/etc/cert.pem",
            "--streaming_tls_key_file=key.pem",
        ] {
            let err = Flags::from_args(["cri-mesos", bad])
                .unwrap_err()
                .to_string();
            assert!(err.contains("streaming_"), "{bad}: {err}");
        }
    }

    #[test]
    fn pids_limit_needs_its_isolator() {
        let flags = Flags::from_args(["cri-mesos", "--cgroups_pids_limit=100"]).unwrap();
        assert_eq!(flags.cgroups_pids_limit, 100);
        assert_eq!(
            Flags::from_args(["cri-mesos"]).unwrap().cgroups_pids_limit,
            0
        );
        assert!(Flags::from_args(["cri-mesos", "--cgroups_pids_limit=lots"]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "cgroups_pids_limit: 64\ncgroup_driver: systemd\n").unwrap();
        let flags = Flags::from_args(["cri-mesos", "--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(
            (flags.cgroups_pids_limit, flags.cgroup_driver.as_str()),
            (64, "systemd")
        );
    }

    #[test]
    fn seccomp_default_when_empty_is_a_boolean() {
        let parse = |args: &[&str]| {
            Flags::from_args(std::iter::once("cri-mesos").chain(args.iter().copied()))
        };
        assert!(!parse(&[]).unwrap().seccomp_default_when_empty);
        assert!(
            parse(&["--seccomp_default_when_empty"])
                .unwrap()
                .seccomp_default_when_empty
        );
        assert!(
            !parse(&["--seccomp-default-when-empty=false"])
                .unwrap()
                .seccomp_default_when_empty
        );
        let err = parse(&["--seccomp_default_when_empty=maybe"]).unwrap_err();
        assert!(
            err.to_string().contains("seccomp_default_when_empty"),
            "{err}"
        );
    }

    #[test]
    fn unbuilt_features_are_refused_not_supported_yet() {
        for (arg, flag) in [
            ("--launcher=posix", "--launcher=posix"),
            ("--image_providers=", "--image_providers="),
            ("--image_providers=appc", "--image_providers=appc"),
            ("--containerizers=docker", "--containerizers=docker"),
        ] {
            let err = Flags::from_args(["cri-mesos", arg])
                .unwrap_err()
                .to_string();
            assert!(err.contains("not supported yet"), "{arg}: {err}");
            assert!(err.starts_with(flag), "{arg}: {err}");
        }
    }

    #[test]
    fn every_flag_has_its_env_variable_and_file_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "max-concurrent-downloads: 7
network_cni_default: true
",
        )
        .unwrap();
        let flags = Flags::from_args(["cri-mesos", "--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(flags.max_concurrent_downloads, 7);
        assert!(flags.network_cni_default);
        let env: Vec<String> = TABLE.iter().map(Spec::env).collect();
        assert!(env.contains(&"CRI_MESOS_WORK_DIR".to_string()), "{env:?}");
        std::fs::write(&file, "work_dirr: /x\n").unwrap();
        let err = Flags::from_args(["cri-mesos", "--config", file.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("work_dirr"), "{err}");
    }

    /// The README's flag table is generated from the flag table: a flag added, removed or
    /// changed without the README fails here (the fix is to paste `readme_table()`).
    #[test]
    fn readme_flag_table_is_the_flag_table() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let table = readme_table();
        assert!(
            readme.contains(&table),
            "README.md's flag table differs from the flag table; it should read:\n{table}"
        );
    }
}
