//! Every flag, declared once: its name, type, default, parser and help. From this table
//! come the command line (`--name` and `--name-with-dashes`), the `CRI_MESOS_<NAME>`
//! environment variables, the keys of the `--config` YAML file, the [`super::Flags`]
//! fields, the verbose status (`crictl info`) and the README's flag table (a test checks
//! it against [`readme_table`](super::readme_table)).
//!
//! Adding a flag is one row here (Mesos's name where Mesos has the flag):
//!
//! ```text
//! /// Help, one line: the README's "meaning" column and `--help`.
//! name: Type = default("text") => parser;
//! ```
//!
//! `default("text")` is parsed like a given value (and shown as it is); `computed("shown",
//! expr)` is the value of `expr` (earlier flags are in scope by name) when the flag is not
//! given; `none("shown")` is for `Option<T>` flags that are unset by default. The parser
//! is a `fn(&str) -> Result<Type, Bad>` from `super::parse`; a rule between flags goes in
//! `Flags::check`. Then the chart (values, schema: `hack/chart-test.sh`) and a bad-value
//! test in tests/daemon.rs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::parse::*;
use super::*;

flag_table! {
    /// CRI socket (a stale one is replaced; a live one makes the daemon refuse to start)
    listen: PathBuf = default("/run/cri-mesos/cri-mesos.sock") => absolute_path;
    /// checkpoints, image store, provisioned rootfses
    work_dir: PathBuf = default("/var/lib/cri-mesos") => absolute_path;
    /// volatile state: sockets, pinned namespaces, pids
    runtime_dir: PathBuf = default("/run/cri-mesos") => absolute_path;
    /// comma list; `mesos` is the native containerizer (`docker` is not supported yet)
    containerizers: Vec<String> = default("mesos") => containerizers;
    /// isolator chain; Mesos's aliases and selection rules apply; always run in Mesos's fixed order (image providers need `filesystem/linux`)
    isolation: String = default(DEFAULT_ISOLATION) => text;
    /// `linux` (namespaces + cgroups); `posix` is not supported yet
    launcher: String = default("linux") => launcher;
    /// where `cri-mesos-supervisor` is
    launcher_dir: PathBuf = computed("the daemon's own directory", own_dir()) => absolute_path;
    /// image providers: `docker` (`appc`, or none, is not supported yet)
    image_providers: Vec<String> = default("docker") => image_providers;
    /// `overlay`, `aufs`, `copy` or `bind`
    image_provisioner_backend: Option<String> = none("auto: overlay, aufs, copy") => backend;
    /// registry for names without a host, or a local directory of image archives
    docker_registry: String = default("https://registry-1.docker.io") => registry;
    /// layer store
    docker_store_dir: PathBuf = computed("`<work_dir>/store/docker`", work_dir.join("store/docker")) => absolute_path;
    /// comma list of registry hosts spoken to over plain http
    insecure_registries: Vec<String> = default("") => comma_list;
    /// comma list of `HOST=ENDPOINT` mirrors, tried in order before the host itself
    registry_mirrors: Vec<(String, String)> = default("") => mirrors;
    /// layers of one pull fetched at once (1 to 64)
    max_concurrent_downloads: usize = default("3") => downloads;
    /// CNI network configurations
    network_cni_config_dir: PathBuf = default("/etc/cni/net.d") => absolute_path;
    /// `:`-separated CNI plugin directories
    network_cni_plugins_dir: Vec<PathBuf> = default("/usr/lib/cni:/opt/cni/bin") => plugin_dirs;
    /// a CNI plugin running longer is killed and the call fails naming it
    network_cni_plugin_timeout: Duration = default("60secs") => positive_duration;
    /// with an empty config dir, use an embedded bridge network (kept under the work dir)
    network_cni_default: bool = default("false") => boolean;
    /// subnet of the embedded network when kubelet sent no pod CIDR
    network_cni_default_subnet: String = default("10.88.0.0/16") => subnet;
    /// keep the CNI checkpoints under the work dir, so the networks of pods a reboot ended get their DEL (else under the runtime dir)
    network_cni_root_dir_persist: bool = default("true") => boolean;
    /// `reconnect` to what runs, or `cleanup`: destroy every pod and container found at start, then start empty
    recover: Recover = default("reconnect") => recover;
    /// fetcher cache; emptied when the daemon starts (as Mesos does), so it may not hold the work, runtime or store dir
    fetcher_cache_dir: PathBuf = computed("`<work_dir>/fetch`", work_dir.join("fetch")) => absolute_path;
    /// fetcher cache size (B, KB, MB, GB, TB); `0` disables the cache
    fetcher_cache_size: u64 = default("2GB") => bytes;
    /// a fetch with no byte for this long fails StartContainer naming the URI (more than 0, at most `5mins`: the HTTP client's own read timeout)
    fetcher_stall_timeout: Duration = default("1mins") => stall_timeout;
    /// comma list (a YAML list in the file) of host directories `file` fetch URIs may read from; none: `file` URIs are refused
    fetcher_file_allowlist: Vec<PathBuf> = default("") => allowlist;
    /// where each container sees its sandbox directory (`MESOS_SANDBOX`)
    sandbox_directory: PathBuf = default("/mnt/mesos/sandbox") => sandbox_directory;
    /// how often `disk/du` measures each container (ns, us, ms, secs, mins, hrs, days, weeks)
    container_disk_watch_interval: Duration = default("15secs") => duration;
    /// kill containers past their disk limit (annotation `cri-mesos.io/disk-limit`)
    enforce_container_disk_quota: bool = default("false") => boolean;
    /// a container that names no seccomp profile gets RuntimeDefault instead of Unconfined
    seccomp_default_when_empty: bool = default("false") => boolean;
    /// cgroup under which pods go when kubelet gives no `cgroup_parent`
    cgroups_root: String = default("cri-mesos") => cgroup_path;
    /// where the cgroup hierarchies are mounted
    cgroups_hierarchy: PathBuf = default("/sys/fs/cgroup") => absolute_path;
    /// `cgroupfs` (a `cgroup_parent` is a path) or `systemd` (a `cgroup_parent` is a slice name, `kubepods-burstable-pod<uid>.slice`, placed where systemd lays it out; no systemd is contacted); reported in `RuntimeConfig`
    cgroup_driver: String = default("cgroupfs") => cgroup_driver;
    /// every container's `pids.max` (`cgroups/pids`, which it needs); 0: no limit
    cgroups_pids_limit: u64 = default("0") => pids_limit;
    /// statistics/metrics HTTP endpoint (port 0 picks one)
    http_address: SocketAddr = default("127.0.0.1:5051") => address;
    /// exec/attach/port-forward server (port 0 picks one; the bound address is in `crictl info` as `streaming`); a cri-mesos flag, Mesos has none
    streaming_address: SocketAddr = default("127.0.0.1:0") => address;
    /// a streaming connection with nothing sent either way for this long is closed (kubelet's `streamingConnectionIdleTimeout`)
    streaming_idle_timeout: Duration = default("4hrs") => idle_timeout;
    /// PEM certificate chain: the streaming server speaks HTTPS and hands out `https://` URLs (with `--streaming_tls_key_file`; a file that does not load exits 2)
    streaming_tls_cert_file: Option<PathBuf> = none("none") => some_absolute_path;
    /// PEM key of `--streaming_tls_cert_file` (both or neither)
    streaming_tls_key_file: Option<PathBuf> = none("none") => some_absolute_path;
    /// `INFO`, `WARNING`, `ERROR` (Mesos) or `debug`, `trace`; `RUST_LOG` wins when set
    logging_level: String = default("INFO") => logging_level;
}
