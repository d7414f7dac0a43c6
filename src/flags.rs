//! Mesos-named agent flags, resolved from the command line, the environment
//! (`CRI_MESOS_<FLAG>`), a YAML config file (`--config`) and embedded defaults, in that
//! order of precedence.
//!
//! Every flag is accepted in Mesos's spelling (`--work_dir`) and the dashed one
//! (`--work-dir`), because operators copy Mesos agent command lines as they are.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::isolators::{self, IsolatorName};

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
    #[error(transparent)]
    Isolation(#[from] isolators::SelectionError),
}

/// The command line. Every value is optional here so that the environment and the
/// config file can fill what the command line leaves out.
#[derive(Debug, Parser)]
#[command(
    name = "cri-mesos",
    version,
    about = "A Kubernetes CRI runtime built like the Apache Mesos containerizer"
)]
struct Cli {
    /// YAML file with any of the flags below as keys (Mesos spelling).
    #[arg(long, env = "CRI_MESOS_CONFIG")]
    config: Option<PathBuf>,
    /// Unix socket serving the CRI RuntimeService and ImageService.
    #[arg(long, env = "CRI_MESOS_LISTEN")]
    listen: Option<PathBuf>,
    #[arg(
        long = "work_dir",
        visible_alias = "work-dir",
        env = "CRI_MESOS_WORK_DIR"
    )]
    work_dir: Option<PathBuf>,
    #[arg(
        long = "runtime_dir",
        visible_alias = "runtime-dir",
        env = "CRI_MESOS_RUNTIME_DIR"
    )]
    runtime_dir: Option<PathBuf>,
    #[arg(long, env = "CRI_MESOS_CONTAINERIZERS")]
    containerizers: Option<String>,
    #[arg(long, env = "CRI_MESOS_ISOLATION")]
    isolation: Option<String>,
    #[arg(long, env = "CRI_MESOS_LAUNCHER")]
    launcher: Option<String>,
    /// Where `cri-mesos-supervisor` is; default: beside the daemon's executable.
    #[arg(
        long = "launcher_dir",
        visible_alias = "launcher-dir",
        env = "CRI_MESOS_LAUNCHER_DIR"
    )]
    launcher_dir: Option<PathBuf>,
    #[arg(
        long = "image_providers",
        visible_alias = "image-providers",
        env = "CRI_MESOS_IMAGE_PROVIDERS"
    )]
    image_providers: Option<String>,
    #[arg(
        long = "image_provisioner_backend",
        visible_alias = "image-provisioner-backend",
        env = "CRI_MESOS_IMAGE_PROVISIONER_BACKEND"
    )]
    image_provisioner_backend: Option<String>,
    #[arg(
        long = "docker_registry",
        visible_alias = "docker-registry",
        env = "CRI_MESOS_DOCKER_REGISTRY"
    )]
    docker_registry: Option<String>,
    #[arg(
        long = "docker_store_dir",
        visible_alias = "docker-store-dir",
        env = "CRI_MESOS_DOCKER_STORE_DIR"
    )]
    docker_store_dir: Option<PathBuf>,
    /// Comma list of registry hosts spoken to over plain http.
    #[arg(
        long = "insecure_registries",
        visible_alias = "insecure-registries",
        env = "CRI_MESOS_INSECURE_REGISTRIES"
    )]
    insecure_registries: Option<String>,
    /// Comma list of `host=endpoint` mirrors, tried in order before the host itself.
    #[arg(
        long = "registry_mirrors",
        visible_alias = "registry-mirrors",
        env = "CRI_MESOS_REGISTRY_MIRRORS"
    )]
    registry_mirrors: Option<String>,
    #[arg(
        long = "max_concurrent_downloads",
        visible_alias = "max-concurrent-downloads",
        env = "CRI_MESOS_MAX_CONCURRENT_DOWNLOADS"
    )]
    max_concurrent_downloads: Option<String>,
    #[arg(
        long = "network_cni_config_dir",
        visible_alias = "network-cni-config-dir",
        env = "CRI_MESOS_NETWORK_CNI_CONFIG_DIR"
    )]
    network_cni_config_dir: Option<PathBuf>,
    #[arg(
        long = "network_cni_plugins_dir",
        visible_alias = "network-cni-plugins-dir",
        env = "CRI_MESOS_NETWORK_CNI_PLUGINS_DIR"
    )]
    network_cni_plugins_dir: Option<String>,
    #[arg(
        long = "network_cni_plugin_timeout",
        visible_alias = "network-cni-plugin-timeout",
        env = "CRI_MESOS_NETWORK_CNI_PLUGIN_TIMEOUT"
    )]
    network_cni_plugin_timeout: Option<String>,
    /// Boolean; use the embedded bridge network when the config dir has none.
    #[arg(
        long = "network_cni_default",
        visible_alias = "network-cni-default",
        env = "CRI_MESOS_NETWORK_CNI_DEFAULT",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    network_cni_default: Option<String>,
    #[arg(
        long = "network_cni_default_subnet",
        visible_alias = "network-cni-default-subnet",
        env = "CRI_MESOS_NETWORK_CNI_DEFAULT_SUBNET"
    )]
    network_cni_default_subnet: Option<String>,
    #[arg(
        long = "fetcher_cache_dir",
        visible_alias = "fetcher-cache-dir",
        env = "CRI_MESOS_FETCHER_CACHE_DIR"
    )]
    fetcher_cache_dir: Option<PathBuf>,
    #[arg(
        long = "fetcher_cache_size",
        visible_alias = "fetcher-cache-size",
        env = "CRI_MESOS_FETCHER_CACHE_SIZE"
    )]
    fetcher_cache_size: Option<String>,
    #[arg(
        long = "fetcher_stall_timeout",
        visible_alias = "fetcher-stall-timeout",
        env = "CRI_MESOS_FETCHER_STALL_TIMEOUT"
    )]
    fetcher_stall_timeout: Option<String>,
    /// Comma list of host directories `file` fetch URIs may read from (default: none).
    #[arg(
        long = "fetcher_file_allowlist",
        visible_alias = "fetcher-file-allowlist",
        env = "CRI_MESOS_FETCHER_FILE_ALLOWLIST"
    )]
    fetcher_file_allowlist: Option<String>,
    /// Where each container sees its sandbox (`MESOS_SANDBOX`).
    #[arg(
        long = "sandbox_directory",
        visible_alias = "sandbox-directory",
        env = "CRI_MESOS_SANDBOX_DIRECTORY"
    )]
    sandbox_directory: Option<PathBuf>,
    #[arg(
        long = "container_disk_watch_interval",
        visible_alias = "container-disk-watch-interval",
        env = "CRI_MESOS_CONTAINER_DISK_WATCH_INTERVAL"
    )]
    container_disk_watch_interval: Option<String>,
    /// Boolean; `--enforce_container_disk_quota` alone means true.
    #[arg(
        long = "enforce_container_disk_quota",
        visible_alias = "enforce-container-disk-quota",
        env = "CRI_MESOS_ENFORCE_CONTAINER_DISK_QUOTA",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    enforce_container_disk_quota: Option<String>,
    /// Boolean; `--seccomp_default_when_empty` alone means true.
    #[arg(
        long = "seccomp_default_when_empty",
        visible_alias = "seccomp-default-when-empty",
        env = "CRI_MESOS_SECCOMP_DEFAULT_WHEN_EMPTY",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    seccomp_default_when_empty: Option<String>,
    #[arg(
        long = "cgroups_root",
        visible_alias = "cgroups-root",
        env = "CRI_MESOS_CGROUPS_ROOT"
    )]
    cgroups_root: Option<String>,
    #[arg(
        long = "cgroups_hierarchy",
        visible_alias = "cgroups-hierarchy",
        env = "CRI_MESOS_CGROUPS_HIERARCHY"
    )]
    cgroups_hierarchy: Option<PathBuf>,
    #[arg(
        long = "cgroup_driver",
        visible_alias = "cgroup-driver",
        env = "CRI_MESOS_CGROUP_DRIVER"
    )]
    cgroup_driver: Option<String>,
    /// Every container's `pids.max` (`cgroups/pids`); 0: no limit.
    #[arg(
        long = "cgroups_pids_limit",
        visible_alias = "cgroups-pids-limit",
        env = "CRI_MESOS_CGROUPS_PIDS_LIMIT"
    )]
    cgroups_pids_limit: Option<String>,
    #[arg(long, env = "CRI_MESOS_RESOURCES")]
    resources: Option<String>,
    #[arg(
        long = "http_address",
        visible_alias = "http-address",
        env = "CRI_MESOS_HTTP_ADDRESS"
    )]
    http_address: Option<String>,
    #[arg(
        long = "streaming_address",
        visible_alias = "streaming-address",
        env = "CRI_MESOS_STREAMING_ADDRESS"
    )]
    streaming_address: Option<String>,
    #[arg(
        long = "streaming_idle_timeout",
        visible_alias = "streaming-idle-timeout",
        env = "CRI_MESOS_STREAMING_IDLE_TIMEOUT"
    )]
    streaming_idle_timeout: Option<String>,
    #[arg(
        long = "streaming_tls_cert_file",
        visible_alias = "streaming-tls-cert-file",
        env = "CRI_MESOS_STREAMING_TLS_CERT_FILE"
    )]
    streaming_tls_cert_file: Option<PathBuf>,
    #[arg(
        long = "streaming_tls_key_file",
        visible_alias = "streaming-tls-key-file",
        env = "CRI_MESOS_STREAMING_TLS_KEY_FILE"
    )]
    streaming_tls_key_file: Option<PathBuf>,
    #[arg(
        long = "logging_level",
        visible_alias = "logging-level",
        env = "CRI_MESOS_LOGGING_LEVEL"
    )]
    logging_level: Option<String>,
}

/// The config file: the same keys as the flags, Mesos spelling (dashes accepted too).
/// Unknown keys are an error so that a typo does not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<PathBuf>,
    #[serde(alias = "work-dir")]
    work_dir: Option<PathBuf>,
    #[serde(alias = "runtime-dir")]
    runtime_dir: Option<PathBuf>,
    containerizers: Option<String>,
    isolation: Option<String>,
    launcher: Option<String>,
    #[serde(alias = "launcher-dir")]
    launcher_dir: Option<PathBuf>,
    #[serde(alias = "image-providers")]
    image_providers: Option<String>,
    #[serde(alias = "image-provisioner-backend")]
    image_provisioner_backend: Option<String>,
    #[serde(alias = "docker-registry")]
    docker_registry: Option<String>,
    #[serde(alias = "docker-store-dir")]
    docker_store_dir: Option<PathBuf>,
    #[serde(alias = "insecure-registries")]
    insecure_registries: Option<String>,
    #[serde(alias = "registry-mirrors")]
    registry_mirrors: Option<String>,
    #[serde(alias = "max-concurrent-downloads")]
    max_concurrent_downloads: Option<Scalar>,
    /// Per-registry settings, only in the file: `registries: {HOST: {insecure, mirrors, ca_file}}`.
    #[serde(default)]
    registries: BTreeMap<String, RegistryHost>,
    /// Node default resource limits of every container, only in the file:
    /// `rlimits: {NOFILE: {soft: 1048576, hard: 1048576}}` (`posix/rlimits`).
    #[serde(default)]
    rlimits: BTreeMap<String, RlimitValue>,
    #[serde(alias = "network-cni-config-dir")]
    network_cni_config_dir: Option<PathBuf>,
    #[serde(alias = "network-cni-plugins-dir")]
    network_cni_plugins_dir: Option<String>,
    #[serde(alias = "network-cni-plugin-timeout")]
    network_cni_plugin_timeout: Option<Scalar>,
    #[serde(alias = "network-cni-default")]
    network_cni_default: Option<Scalar>,
    #[serde(alias = "network-cni-default-subnet")]
    network_cni_default_subnet: Option<String>,
    #[serde(alias = "fetcher-cache-dir")]
    fetcher_cache_dir: Option<PathBuf>,
    #[serde(alias = "fetcher-cache-size")]
    fetcher_cache_size: Option<Scalar>,
    #[serde(alias = "fetcher-stall-timeout")]
    fetcher_stall_timeout: Option<Scalar>,
    /// A YAML list of directories, or the flag's comma list.
    #[serde(alias = "fetcher-file-allowlist")]
    fetcher_file_allowlist: Option<StringList>,
    #[serde(alias = "sandbox-directory")]
    sandbox_directory: Option<PathBuf>,
    #[serde(alias = "container-disk-watch-interval")]
    container_disk_watch_interval: Option<Scalar>,
    #[serde(alias = "enforce-container-disk-quota")]
    enforce_container_disk_quota: Option<Scalar>,
    #[serde(alias = "seccomp-default-when-empty")]
    seccomp_default_when_empty: Option<Scalar>,
    #[serde(alias = "cgroups-root")]
    cgroups_root: Option<String>,
    #[serde(alias = "cgroups-hierarchy")]
    cgroups_hierarchy: Option<PathBuf>,
    #[serde(alias = "cgroup-driver")]
    cgroup_driver: Option<String>,
    #[serde(alias = "cgroups-pids-limit")]
    cgroups_pids_limit: Option<Scalar>,
    resources: Option<String>,
    #[serde(alias = "http-address")]
    http_address: Option<String>,
    #[serde(alias = "streaming-address")]
    streaming_address: Option<String>,
    #[serde(alias = "streaming-idle-timeout")]
    streaming_idle_timeout: Option<Scalar>,
    #[serde(alias = "streaming-tls-cert-file")]
    streaming_tls_cert_file: Option<PathBuf>,
    #[serde(alias = "streaming-tls-key-file")]
    streaming_tls_key_file: Option<PathBuf>,
    #[serde(alias = "logging-level")]
    logging_level: Option<String>,
}

/// YAML lets `2GB`, `15` and `true` be written bare; they are all read as the text a
/// flag would carry, so one parser serves the command line, the environment and the file.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// A list in the config file, or the comma list the flag takes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringList {
    List(Vec<String>),
    Text(String),
}

impl StringList {
    fn into_text(self) -> String {
        match self {
            StringList::List(items) => items.join(","),
            StringList::Text(s) => s,
        }
    }
}

impl Scalar {
    fn into_text(self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(s) => s,
        }
    }
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

/// Launchers as Mesos has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Launcher {
    Linux,
    Posix,
}

/// The effective configuration, after every source was merged and validated.
#[derive(Debug, Clone, Serialize)]
pub struct Flags {
    pub listen: PathBuf,
    pub work_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub containerizers: Vec<String>,
    /// The isolator chain in Mesos's fixed order, after aliases and implied isolators.
    pub isolation: Vec<IsolatorName>,
    pub launcher: Launcher,
    pub launcher_dir: PathBuf,
    pub image_providers: Vec<String>,
    pub image_provisioner_backend: Option<String>,
    pub docker_registry: String,
    pub docker_store_dir: PathBuf,
    /// Per-host registry settings: the config file's `registries` merged with the
    /// `--insecure_registries` and `--registry_mirrors` shortcuts.
    pub registries: BTreeMap<String, RegistryHost>,
    /// Resource limits of every container (the file's `rlimits`).
    pub rlimits: Vec<Rlimit>,
    pub max_concurrent_downloads: usize,
    pub network_cni_config_dir: PathBuf,
    pub network_cni_plugins_dir: Vec<PathBuf>,
    #[serde(serialize_with = "serialize_duration")]
    pub network_cni_plugin_timeout: Duration,
    pub network_cni_default: bool,
    pub network_cni_default_subnet: String,
    pub fetcher_cache_dir: PathBuf,
    pub fetcher_cache_size: u64,
    /// A download with no byte for this long fails (Mesos's rule).
    #[serde(serialize_with = "serialize_duration")]
    pub fetcher_stall_timeout: Duration,
    /// Host directories `file` URIs may read from.
    pub fetcher_file_allowlist: Vec<PathBuf>,
    /// The container path of each container's sandbox.
    pub sandbox_directory: PathBuf,
    #[serde(serialize_with = "serialize_duration")]
    pub container_disk_watch_interval: Duration,
    pub enforce_container_disk_quota: bool,
    /// A container that names no seccomp profile gets RuntimeDefault (CRI-O's knob);
    /// otherwise it runs Unconfined, as the CRI says.
    pub seccomp_default_when_empty: bool,
    pub cgroups_root: String,
    pub cgroups_hierarchy: PathBuf,
    /// `cgroupfs` or `systemd`: how `cgroup_parent` is spelled (a path, or a slice name
    /// expanded as systemd lays slices out).
    pub cgroup_driver: String,
    /// Every container's `pids.max`; 0: none.
    pub cgroups_pids_limit: u64,
    pub resources: Option<String>,
    pub http_address: SocketAddr,
    /// The exec/attach/port-forward server (port 0 picks one).
    pub streaming_address: SocketAddr,
    /// A streaming connection with no frame either way for this long is closed.
    #[serde(serialize_with = "serialize_duration")]
    pub streaming_idle_timeout: Duration,
    /// PEM certificate chain and key: the streaming server speaks HTTPS (both or neither).
    pub streaming_tls_cert_file: Option<PathBuf>,
    pub streaming_tls_key_file: Option<PathBuf>,
    pub logging_level: String,
    pub config_file: Option<PathBuf>,
}

fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}secs", d.as_secs_f64()))
}

pub const DEFAULT_LISTEN: &str = "/run/cri-mesos/cri-mesos.sock";
pub const DEFAULT_WORK_DIR: &str = "/var/lib/cri-mesos";
pub const DEFAULT_RUNTIME_DIR: &str = "/run/cri-mesos";
pub const DEFAULT_ISOLATION: &str = "filesystem/linux,docker/runtime,namespaces/pid,namespaces/ipc,volume/host_path,network/cni,cgroups/cpu,cgroups/mem,cgroups/pids,cgroups/cpuset,cgroups/hugetlb,disk/du";

impl Flags {
    /// Resolves the flags of this process (its arguments and environment).
    /// Clap's own errors (unknown flag, `--help`) exit the process as clap does.
    pub fn from_env() -> Result<Flags, FlagError> {
        Self::resolve(Cli::parse())
    }

    /// Resolves flags from explicit arguments (the first one is the program name).
    pub fn from_args<I, T>(args: I) -> Result<Flags, FlagError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args).map_err(|e| FlagError::Invalid {
            flag: "args",
            value: String::new(),
            reason: e.to_string(),
        })?;
        Self::resolve(cli)
    }

    fn resolve(cli: Cli) -> Result<Flags, FlagError> {
        let file = match &cli.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };

        let work_dir = cli
            .work_dir
            .or(file.work_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_WORK_DIR));
        absolute("work_dir", &work_dir)?;
        let runtime_dir = cli
            .runtime_dir
            .or(file.runtime_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR));
        absolute("runtime_dir", &runtime_dir)?;
        let listen = cli
            .listen
            .or(file.listen)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LISTEN));
        absolute("listen", &listen)?;

        let containerizers = parse_containerizers(
            &cli.containerizers
                .or(file.containerizers)
                .unwrap_or_else(|| "mesos".into()),
        )?;

        let launcher = match cli
            .launcher
            .or(file.launcher)
            .unwrap_or_else(|| "linux".into())
            .as_str()
        {
            "linux" => Launcher::Linux,
            "posix" => Launcher::Posix,
            other => {
                return Err(FlagError::Invalid {
                    flag: "launcher",
                    value: other.into(),
                    reason: "expected 'linux' or 'posix'".into(),
                });
            }
        };

        let launcher_dir = match cli.launcher_dir.or(file.launcher_dir) {
            Some(dir) => dir,
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from("/usr/local/bin")),
        };
        absolute("launcher_dir", &launcher_dir)?;

        let image_providers = parse_image_providers(
            &cli.image_providers
                .or(file.image_providers)
                .unwrap_or_else(|| "docker".into()),
        )?;

        let isolation_text = cli
            .isolation
            .or(file.isolation)
            .unwrap_or_else(|| DEFAULT_ISOLATION.into());
        let mut isolation = isolators::select(&isolation_text)?;
        let rlimits = parse_rlimits(&file.rlimits)?;
        // Mesos's posix/rlimits applies them; the key implies it.
        if !rlimits.is_empty() {
            isolation = isolators::with("posix/rlimits", isolation);
        }
        check_image_requirements(&image_providers, &isolation, launcher)?;

        let image_provisioner_backend = cli
            .image_provisioner_backend
            .or(file.image_provisioner_backend);
        if let Some(backend) = &image_provisioner_backend
            && !["overlay", "aufs", "copy", "bind"].contains(&backend.as_str())
        {
            return Err(FlagError::Invalid {
                flag: "image_provisioner_backend",
                value: backend.clone(),
                reason: "expected one of overlay, aufs, copy, bind".into(),
            });
        }

        let docker_registry = cli
            .docker_registry
            .or(file.docker_registry)
            .unwrap_or_else(|| "https://registry-1.docker.io".into());
        if docker_registry.is_empty() {
            return Err(FlagError::Invalid {
                flag: "docker_registry",
                value: docker_registry,
                reason: "must be a registry URL or a local directory".into(),
            });
        }
        let docker_store_dir = cli
            .docker_store_dir
            .or(file.docker_store_dir)
            .unwrap_or_else(|| work_dir.join("store/docker"));
        absolute("docker_store_dir", &docker_store_dir)?;

        let mut registries = file.registries;
        for (host, r) in &registries {
            for (key, path) in [("ca_file", &r.ca_file), ("auth_file", &r.auth_file)] {
                if let Some(path) = path.as_ref().filter(|p| !p.is_absolute()) {
                    return Err(FlagError::ConfigFile {
                        path: cli
                            .config
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                        reason: format!(
                            "registries.{host}.{key}: {} is not an absolute path",
                            path.display()
                        ),
                    });
                }
            }
        }
        let insecure = cli
            .insecure_registries
            .or(file.insecure_registries)
            .unwrap_or_default();
        for host in insecure.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            registries.entry(host.to_string()).or_default().insecure = true;
        }
        let mirrors = cli
            .registry_mirrors
            .or(file.registry_mirrors)
            .unwrap_or_default();
        for item in mirrors.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let (host, endpoint) = item
                .split_once('=')
                .filter(|(h, e)| {
                    !h.is_empty() && (e.starts_with("http://") || e.starts_with("https://"))
                })
                .ok_or_else(|| FlagError::Invalid {
                    flag: "registry_mirrors",
                    value: item.to_string(),
                    reason: "expected HOST=http(s)://ENDPOINT".into(),
                })?;
            registries
                .entry(host.to_string())
                .or_default()
                .mirrors
                .push(endpoint.to_string());
        }
        let downloads_text = cli
            .max_concurrent_downloads
            .or(file.max_concurrent_downloads.map(Scalar::into_text))
            .unwrap_or_else(|| "3".into());
        let max_concurrent_downloads = downloads_text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=64).contains(n))
            .ok_or_else(|| FlagError::Invalid {
                flag: "max_concurrent_downloads",
                value: downloads_text.clone(),
                reason: "expected a whole number from 1 to 64".into(),
            })?;

        let network_cni_config_dir = cli
            .network_cni_config_dir
            .or(file.network_cni_config_dir)
            .unwrap_or_else(|| PathBuf::from("/etc/cni/net.d"));
        absolute("network_cni_config_dir", &network_cni_config_dir)?;
        let plugins = cli
            .network_cni_plugins_dir
            .or(file.network_cni_plugins_dir)
            .unwrap_or_else(|| "/usr/lib/cni:/opt/cni/bin".into());
        let network_cni_plugins_dir: Vec<PathBuf> = plugins
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect();
        if network_cni_plugins_dir.is_empty() {
            return Err(FlagError::Invalid {
                flag: "network_cni_plugins_dir",
                value: plugins,
                reason: "needs at least one directory".into(),
            });
        }
        for dir in &network_cni_plugins_dir {
            absolute("network_cni_plugins_dir", dir)?;
        }

        let timeout_text = cli
            .network_cni_plugin_timeout
            .or(file.network_cni_plugin_timeout.map(Scalar::into_text))
            .unwrap_or_else(|| "60secs".into());
        let network_cni_plugin_timeout = parse_duration(&timeout_text)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| FlagError::Invalid {
                flag: "network_cni_plugin_timeout",
                value: timeout_text.clone(),
                reason: "expected a positive duration, e.g. 60secs".into(),
            })?;
        let default_text = cli
            .network_cni_default
            .or(file.network_cni_default.map(Scalar::into_text))
            .unwrap_or_else(|| "false".into());
        let network_cni_default = parse_bool(&default_text).ok_or_else(|| FlagError::Invalid {
            flag: "network_cni_default",
            value: default_text.clone(),
            reason: "expected true or false".into(),
        })?;
        let network_cni_default_subnet = cli
            .network_cni_default_subnet
            .or(file.network_cni_default_subnet)
            .unwrap_or_else(|| "10.88.0.0/16".into());
        let subnet_ok = network_cni_default_subnet
            .split_once('/')
            .is_some_and(|(ip, p)| {
                ip.parse::<std::net::IpAddr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 128)
            });
        if !subnet_ok {
            return Err(FlagError::Invalid {
                flag: "network_cni_default_subnet",
                value: network_cni_default_subnet,
                reason: "expected ADDRESS/PREFIX".into(),
            });
        }

        let fetcher_cache_dir = cli
            .fetcher_cache_dir
            .or(file.fetcher_cache_dir)
            .unwrap_or_else(|| work_dir.join("fetch"));
        absolute("fetcher_cache_dir", &fetcher_cache_dir)?;
        let size_text = cli
            .fetcher_cache_size
            .or(file.fetcher_cache_size.map(Scalar::into_text))
            .unwrap_or_else(|| "2GB".into());
        let fetcher_cache_size = parse_bytes(&size_text).map_err(|reason| FlagError::Invalid {
            flag: "fetcher_cache_size",
            value: size_text.clone(),
            reason,
        })?;
        // The directory is emptied at start: it must not hold what the daemon keeps.
        for (flag, kept) in [
            ("work_dir", &work_dir),
            ("runtime_dir", &runtime_dir),
            ("docker_store_dir", &docker_store_dir),
        ] {
            if fetcher_cache_size > 0 && kept.starts_with(&fetcher_cache_dir) {
                return Err(FlagError::Invalid {
                    flag: "fetcher_cache_dir",
                    value: fetcher_cache_dir.display().to_string(),
                    reason: format!(
                        "is emptied when the daemon starts, and holds --{flag} {}",
                        kept.display()
                    ),
                });
            }
        }
        let stall_text = cli
            .fetcher_stall_timeout
            .or(file.fetcher_stall_timeout.map(Scalar::into_text))
            .unwrap_or_else(|| "1mins".into());
        let fetcher_stall_timeout = parse_duration(&stall_text)
            .and_then(|d| {
                // The HTTP client gives up on a read after 5 minutes anyway; kubelet on
                // the whole StartContainer after 2.
                if d.is_zero() || d > Duration::from_secs(300) {
                    Err("must be more than 0 and at most 5mins".into())
                } else {
                    Ok(d)
                }
            })
            .map_err(|reason| FlagError::Invalid {
                flag: "fetcher_stall_timeout",
                value: stall_text.clone(),
                reason,
            })?;
        let allow_text = cli
            .fetcher_file_allowlist
            .or(file.fetcher_file_allowlist.map(StringList::into_text))
            .unwrap_or_default();
        let mut fetcher_file_allowlist = Vec::new();
        for dir in allow_text
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            let path = PathBuf::from(dir);
            absolute("fetcher_file_allowlist", &path)?;
            if path.parent().is_none()
                || path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(FlagError::Invalid {
                    flag: "fetcher_file_allowlist",
                    value: dir.to_string(),
                    reason: "must name a directory other than / and without '..'".into(),
                });
            }
            fetcher_file_allowlist.push(path);
        }
        let sandbox_directory = cli
            .sandbox_directory
            .or(file.sandbox_directory)
            .unwrap_or_else(|| PathBuf::from("/mnt/mesos/sandbox"));
        absolute("sandbox_directory", &sandbox_directory)?;
        if sandbox_directory.parent().is_none()
            || sandbox_directory
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(FlagError::Invalid {
                flag: "sandbox_directory",
                value: sandbox_directory.display().to_string(),
                reason: "must be a container path other than / and without '..'".into(),
            });
        }

        let interval_text = cli
            .container_disk_watch_interval
            .or(file.container_disk_watch_interval.map(Scalar::into_text))
            .unwrap_or_else(|| "15secs".into());
        let container_disk_watch_interval =
            parse_duration(&interval_text).map_err(|reason| FlagError::Invalid {
                flag: "container_disk_watch_interval",
                value: interval_text.clone(),
                reason,
            })?;

        let quota_text = cli
            .enforce_container_disk_quota
            .or(file.enforce_container_disk_quota.map(Scalar::into_text))
            .unwrap_or_else(|| "false".into());
        let enforce_container_disk_quota =
            parse_bool(&quota_text).ok_or_else(|| FlagError::Invalid {
                flag: "enforce_container_disk_quota",
                value: quota_text.clone(),
                reason: "expected true or false".into(),
            })?;

        let seccomp_text = cli
            .seccomp_default_when_empty
            .or(file.seccomp_default_when_empty.map(Scalar::into_text))
            .unwrap_or_else(|| "false".into());
        let seccomp_default_when_empty =
            parse_bool(&seccomp_text).ok_or_else(|| FlagError::Invalid {
                flag: "seccomp_default_when_empty",
                value: seccomp_text.clone(),
                reason: "expected true or false".into(),
            })?;

        let cgroups_root = cli
            .cgroups_root
            .or(file.cgroups_root)
            .unwrap_or_else(|| "cri-mesos".into());
        if cgroups_root.is_empty() || cgroups_root.split('/').any(|c| c == "..") {
            return Err(FlagError::Invalid {
                flag: "cgroups_root",
                value: cgroups_root,
                reason: "must be a non-empty cgroup path without '..'".into(),
            });
        }
        let cgroups_hierarchy = cli
            .cgroups_hierarchy
            .or(file.cgroups_hierarchy)
            .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
        absolute("cgroups_hierarchy", &cgroups_hierarchy)?;

        let cgroup_driver = cli
            .cgroup_driver
            .or(file.cgroup_driver)
            .unwrap_or_else(|| "cgroupfs".into());
        match cgroup_driver.as_str() {
            "cgroupfs" | "systemd" => {}
            _ => {
                return Err(FlagError::Invalid {
                    flag: "cgroup_driver",
                    value: cgroup_driver,
                    reason: "expected 'cgroupfs' or 'systemd'".into(),
                });
            }
        }

        let pids_text = cli
            .cgroups_pids_limit
            .or(file.cgroups_pids_limit.map(Scalar::into_text))
            .unwrap_or_else(|| "0".into());
        let cgroups_pids_limit = pids_text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= i64::MAX as u64)
            .ok_or_else(|| FlagError::Invalid {
                flag: "cgroups_pids_limit",
                value: pids_text.clone(),
                reason: "expected a whole number of tasks (0: no limit)".into(),
            })?;
        if cgroups_pids_limit > 0 && !isolation.iter().any(|i| i.as_str() == "cgroups/pids") {
            return Err(FlagError::Invalid {
                flag: "cgroups_pids_limit",
                value: pids_text,
                reason: "needs the cgroups/pids isolator in --isolation".into(),
            });
        }

        let resources = cli.resources.or(file.resources);
        if let Some(text) = &resources {
            validate_resources(text).map_err(|reason| FlagError::Invalid {
                flag: "resources",
                value: text.clone(),
                reason,
            })?;
        }

        let http_text = cli
            .http_address
            .or(file.http_address)
            .unwrap_or_else(|| "127.0.0.1:5051".into());
        let http_address: SocketAddr = http_text.parse().map_err(|_| FlagError::Invalid {
            flag: "http_address",
            value: http_text.clone(),
            reason: "expected IP:PORT (port 0 picks a free one)".into(),
        })?;

        let streaming_text = cli
            .streaming_address
            .or(file.streaming_address)
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let streaming_address: SocketAddr =
            streaming_text.parse().map_err(|_| FlagError::Invalid {
                flag: "streaming_address",
                value: streaming_text.clone(),
                reason: "expected IP:PORT (port 0 picks a free one)".into(),
            })?;
        let idle_text = cli
            .streaming_idle_timeout
            .or(file.streaming_idle_timeout.map(Scalar::into_text))
            .unwrap_or_else(|| "4hrs".into());
        let streaming_idle_timeout = parse_duration(&idle_text)
            .and_then(|d| {
                if d.is_zero() {
                    Err("must be more than 0".into())
                } else {
                    Ok(d)
                }
            })
            .map_err(|reason| FlagError::Invalid {
                flag: "streaming_idle_timeout",
                value: idle_text.clone(),
                reason,
            })?;

        let streaming_tls_cert_file = cli.streaming_tls_cert_file.or(file.streaming_tls_cert_file);
        let streaming_tls_key_file = cli.streaming_tls_key_file.or(file.streaming_tls_key_file);
        match (&streaming_tls_cert_file, &streaming_tls_key_file) {
            (Some(p), None) | (None, Some(p)) => {
                let flag = if streaming_tls_cert_file.is_some() {
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
            (Some(c), Some(k)) => {
                absolute("streaming_tls_cert_file", c)?;
                absolute("streaming_tls_key_file", k)?;
            }
            (None, None) => {}
        }

        let logging_level = cli
            .logging_level
            .or(file.logging_level)
            .unwrap_or_else(|| "INFO".into());
        if tracing_level(&logging_level).is_none() {
            return Err(FlagError::Invalid {
                flag: "logging_level",
                value: logging_level,
                reason: "expected one of INFO, WARNING, ERROR (Mesos), or trace, debug".into(),
            });
        }

        Ok(Flags {
            listen,
            work_dir,
            runtime_dir,
            containerizers,
            isolation,
            launcher,
            launcher_dir,
            image_providers,
            image_provisioner_backend,
            docker_registry,
            docker_store_dir,
            registries,
            rlimits,
            max_concurrent_downloads,
            network_cni_config_dir,
            network_cni_plugins_dir,
            network_cni_plugin_timeout,
            network_cni_default,
            network_cni_default_subnet,
            fetcher_cache_dir,
            fetcher_cache_size,
            fetcher_stall_timeout,
            fetcher_file_allowlist,
            sandbox_directory,
            container_disk_watch_interval,
            enforce_container_disk_quota,
            seccomp_default_when_empty,
            cgroups_root,
            cgroups_hierarchy,
            cgroup_driver,
            cgroups_pids_limit,
            resources,
            http_address,
            streaming_address,
            streaming_idle_timeout,
            streaming_tls_cert_file,
            streaming_tls_key_file,
            logging_level,
            config_file: cli.config,
        })
    }
}

fn load_file(path: &Path) -> Result<FileConfig, FlagError> {
    let text = std::fs::read_to_string(path).map_err(|e| FlagError::ConfigFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_norway::from_str(&text).map_err(|e| FlagError::ConfigFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn absolute(flag: &'static str, path: &Path) -> Result<(), FlagError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(FlagError::Invalid {
            flag,
            value: path.display().to_string(),
            reason: "must be an absolute path".into(),
        })
    }
}

/// Mesos knows the `mesos` and `docker` containerizers; only `mesos` is built here.
fn parse_containerizers(text: &str) -> Result<Vec<String>, FlagError> {
    let mut out: Vec<String> = Vec::new();
    for name in text.split(',').map(str::trim) {
        match name {
            "mesos" => {}
            "docker" => {
                return Err(FlagError::Unsupported {
                    flag: "containerizers",
                    value: name.into(),
                    reason: "the docker containerizer is not supported yet".into(),
                });
            }
            _ => {
                return Err(FlagError::Invalid {
                    flag: "containerizers",
                    value: name.into(),
                    reason: "unknown containerizer (Mesos has 'mesos' and 'docker')".into(),
                });
            }
        }
        if out.iter().any(|n| n == name) {
            return Err(FlagError::Invalid {
                flag: "containerizers",
                value: name.into(),
                reason: "listed twice".into(),
            });
        }
        out.push(name.into());
    }
    Ok(out)
}

fn parse_image_providers(text: &str) -> Result<Vec<String>, FlagError> {
    let mut out: Vec<String> = Vec::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match name.to_ascii_lowercase().as_str() {
            "docker" => {}
            "appc" => {
                return Err(FlagError::Unsupported {
                    flag: "image_providers",
                    value: name.into(),
                    reason: "the appc image provider is not supported yet".into(),
                });
            }
            _ => {
                return Err(FlagError::Invalid {
                    flag: "image_providers",
                    value: name.into(),
                    reason: "unknown image provider (Mesos has 'docker' and 'appc')".into(),
                });
            }
        }
        let lower = name.to_ascii_lowercase();
        if out.contains(&lower) {
            return Err(FlagError::Invalid {
                flag: "image_providers",
                value: name.into(),
                reason: "listed twice".into(),
            });
        }
        out.push(lower);
    }
    Ok(out)
}

/// Mesos's rule: image providers need `filesystem/linux` and the linux launcher, and the
/// docker provider needs `docker/runtime` to apply the image config.
fn check_image_requirements(
    providers: &[String],
    isolation: &[IsolatorName],
    launcher: Launcher,
) -> Result<(), FlagError> {
    if providers.is_empty() {
        return Ok(());
    }
    let has = |name: &str| isolation.iter().any(|i| i.as_str() == name);
    if !has("filesystem/linux") {
        return Err(FlagError::Invalid {
            flag: "isolation",
            value: isolation
                .iter()
                .map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join(","),
            reason: "--image_providers needs the 'filesystem/linux' isolator".into(),
        });
    }
    if launcher != Launcher::Linux {
        return Err(FlagError::Invalid {
            flag: "launcher",
            value: "posix".into(),
            reason: "--image_providers needs the linux launcher".into(),
        });
    }
    if providers.iter().any(|p| p == "docker") && !has("docker/runtime") {
        return Err(FlagError::Invalid {
            flag: "isolation",
            value: isolation
                .iter()
                .map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join(","),
            reason: "the docker image provider needs the 'docker/runtime' isolator".into(),
        });
    }
    Ok(())
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

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Mesos resource strings: `name(role):value;...` with scalar, range `[a-b,...]` or set
/// `{a,b}` values. Only the shape is checked here; the resources isolators read values.
fn validate_resources(text: &str) -> Result<(), String> {
    let text = text.trim();
    if text.starts_with('[') {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| format!("bad JSON resources: {e}"))?;
        return Ok(());
    }
    for item in text.split(';').filter(|s| !s.trim().is_empty()) {
        let (name, value) = item
            .split_once(':')
            .ok_or_else(|| format!("'{item}' is not name:value"))?;
        if name.trim().is_empty() {
            return Err(format!("'{item}' has no resource name"));
        }
        let value = value.trim();
        let ok = (value.starts_with('[') && value.ends_with(']'))
            || (value.starts_with('{') && value.ends_with('}'))
            || value.parse::<f64>().is_ok_and(|v| v >= 0.0);
        if !ok {
            return Err(format!(
                "'{item}': value must be a number, [ranges] or {{set}}"
            ));
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn resources_shape_is_checked() {
        assert!(validate_resources("cpus:2;mem:1024;ports:[31000-32000]").is_ok());
        assert!(validate_resources("cpus").is_err());
        assert!(validate_resources("cpus:lots").is_err());
    }

    #[test]
    fn defaults_resolve_without_any_source() {
        let flags = Flags::from_args(["cri-mesos"]).unwrap();
        assert_eq!(flags.work_dir, PathBuf::from(DEFAULT_WORK_DIR));
        assert_eq!(
            flags.docker_store_dir,
            PathBuf::from("/var/lib/cri-mesos/store/docker")
        );
        assert_eq!(flags.launcher, Launcher::Linux);
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
    fn pids_limit_needs_its_isolator() {
        let flags = Flags::from_args(["cri-mesos", "--cgroups_pids_limit=100"]).unwrap();
        assert_eq!(flags.cgroups_pids_limit, 100);
        assert_eq!(
            Flags::from_args(["cri-mesos"]).unwrap().cgroups_pids_limit,
            0
        );
        let err = Flags::from_args([
            "cri-mesos",
            "--cgroups_pids_limit=100",
            "--isolation=filesystem/linux,docker/runtime",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("cgroups/pids"), "{err}");
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
    fn posix_launcher_conflicts_with_image_providers() {
        let err = Flags::from_args(["cri-mesos", "--launcher=posix"]).unwrap_err();
        assert!(err.to_string().contains("linux launcher"), "{err}");
        Flags::from_args(["cri-mesos", "--launcher=posix", "--image_providers="]).unwrap();
    }
}
