//! Debian's `containerd` (with `runc` and `containerd-shim-runc-v2`) as a child process of
//! the bench, private to one run: its own temp root, state, sockets, runc root, CNI network
//! and registry config, so it neither reads nor writes the host's `/var/lib/containerd`,
//! `/run/containerd` or `/etc/containerd`.
//!
//! Two paths that containerd 1.6 does not let us move are dealt with at cleanup:
//! `/run/containerd/s/` (the shims' ttrpc sockets; removed when we created `/run/containerd`)
//! and the cgroups runc makes for pods without a `cgroup_parent` (`/k8s.io/<id>` in every
//! hierarchy; `k8s.io` is removed when we created it).
//!
//! Cleanup order (also from `Drop`, so on panic too): pods through CRI when possible
//! ([`Containerd::remove_all_pods`]), then containerd is stopped, leftover runc containers
//! are force-deleted from our runc root, leftover shims of our containerd (found by
//! executable and `-address` argument) are killed by pid, mounts under the temp dir are
//! detached, cgroups and the CNI bridge are removed, and the temp dir is deleted.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::procfs;

/// The containerd namespace of the CRI plugin.
const CRI_NAMESPACE: &str = "k8s.io";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// capability(7) number.
const CAP_SYS_RESOURCE: u32 = 24;

/// Whether the CRI plugin must clamp oom_score_adj: its sandboxes ask for -998, and lowering
/// one's oom_score_adj needs CAP_SYS_RESOURCE, which this machine's root lacks (runc then
/// fails with "can't get final child's PID from pipe: EOF").
pub fn restrict_oom_score_adj() -> bool {
    !procfs::has_capability(CAP_SYS_RESOURCE)
}

/// The executables the bench needs, found on `PATH`.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub containerd: PathBuf,
    pub shim: PathBuf,
    pub runc: PathBuf,
}

impl Binaries {
    /// `Err` says what is missing (`hack/bench.sh` installs the Debian packages).
    pub fn find() -> Result<Self, String> {
        let find = |name: &str| {
            procfs::which(name).ok_or_else(|| {
                format!("{name} not found on PATH (apt-get install containerd runc)")
            })
        };
        Ok(Self {
            containerd: find("containerd")?,
            shim: find("containerd-shim-runc-v2")?,
            // Another runc (e.g. a newer one, or a debugging wrapper) can be swapped in.
            runc: match std::env::var_os("CRI_BENCH_RUNC") {
                Some(runc) => PathBuf::from(runc),
                None => find("runc")?,
            },
        })
    }
}

/// What the private containerd is configured with.
pub struct Setup<'a> {
    pub bins: &'a Binaries,
    /// `127.0.0.1:PORT` of the plain-http test registry.
    pub registry: &'a str,
    /// Reference of the pause image (in that registry).
    pub sandbox_image: &'a str,
    /// A dir holding exactly one `.conflist`.
    pub cni_conf_dir: &'a Path,
    pub cni_bin_dir: &'a Path,
    /// The conflist's network name and bridge, to clean up after.
    pub cni_network: &'a str,
    pub bridge: &'a str,
}

pub struct Containerd {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    child: Option<Child>,
    socket: PathBuf,
    runc_root: PathBuf,
    log_path: PathBuf,
    bins: Binaries,
    bridge: String,
    cni_network: String,
    /// Whether `/run/containerd` was absent before we started (so the shim sockets dir is ours).
    own_run_dir: bool,
    /// `/sys/fs/cgroup/<hierarchy>/k8s.io` dirs that did not exist before we started.
    own_cgroups: Vec<PathBuf>,
}

impl Containerd {
    /// Writes the config and starts containerd; returns once it answers CRI `Version`.
    pub async fn start(setup: Setup<'_>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("cri-bench-containerd-")
            .tempdir()?;
        let root = dir.path().canonicalize()?;
        let own_run_dir = !Path::new("/run/containerd").exists();
        let own_cgroups = cgroup_hierarchies()
            .into_iter()
            .map(|h| h.join(CRI_NAMESPACE))
            .filter(|p| !p.exists())
            .collect();
        let mut me = Self {
            socket: root.join("containerd.sock"),
            runc_root: root.join("runc"),
            log_path: root.join("containerd.log"),
            root,
            dir: Some(dir),
            child: None,
            bins: setup.bins.clone(),
            bridge: setup.bridge.into(),
            cni_network: setup.cni_network.into(),
            own_run_dir,
            own_cgroups,
        };
        // From here on, Drop cleans up whatever happens.
        let config = me.write_config(&setup)?;
        let log = File::create(&me.log_path)?;
        let mut cmd = Command::new(&me.bins.containerd);
        cmd.arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe. containerd dies with the bench's main thread
        // (which lives until exit), even when the bench is killed.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        me.child = Some(
            cmd.spawn()
                .with_context(|| format!("spawn {}", me.bins.containerd.display()))?,
        );
        me.wait_ready().await?;
        Ok(me)
    }

    fn write_config(&self, setup: &Setup<'_>) -> Result<PathBuf> {
        let root = &self.root;
        let hosts_dir = root.join("certs.d").join(setup.registry);
        std::fs::create_dir_all(&hosts_dir)?;
        // Plain http to the loopback registry, for pulls and for the sandbox image.
        std::fs::write(
            hosts_dir.join("hosts.toml"),
            format!(
                "server = \"http://{r}\"\n\n[host.\"http://{r}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n",
                r = setup.registry
            ),
        )?;
        let p = |name: &str| root.join(name).display().to_string();
        let config = format!(
            r#"# Generated by benches/pods.rs: a containerd private to one bench run.
version = 2
root = "{root_dir}"
state = "{state_dir}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  level = "warn"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt_dir}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # The sandbox asks for oom_score_adj -998, which needs CAP_SYS_RESOURCE; clamp to ours.
  restrict_oom_score_adj = {restrict_oom}

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{runc}"
        Root = "{runc_root}"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
            root_dir = p("root"),
            state_dir = p("state"),
            socket = self.socket.display(),
            opt_dir = p("opt"),
            sandbox_image = setup.sandbox_image,
            runc = self.bins.runc.display(),
            runc_root = self.runc_root.display(),
            cni_bin = setup.cni_bin_dir.display(),
            cni_conf = setup.cni_conf_dir.display(),
            certs = p("certs.d"),
            restrict_oom = restrict_oom_score_adj(),
        );
        let path = root.join("config.toml");
        std::fs::write(&path, config)?;
        Ok(path)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "containerd exited ({status}) before it was ready; log:\n{}",
                    self.log_tail()
                );
            }
            let version = async {
                let mut rt = self.runtime_client().await?;
                rt.version(cri::VersionRequest {
                    version: "v1".into(),
                })
                .await?;
                anyhow::Ok(())
            };
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(5), version).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer CRI Version within {READY_TIMEOUT:?}; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The last 40 lines containerd logged.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub async fn runtime_client(&self) -> Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(
            test_support::connect_unix(&self.socket).await?,
        ))
    }

    pub async fn image_client(&self) -> Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(
            test_support::connect_unix(&self.socket).await?,
        ))
    }

    /// The running `containerd-shim-runc-v2` processes of *this* containerd: the shim's
    /// executable, started with `-address <our socket>`.
    pub fn shims(&self) -> Vec<procfs::Proc> {
        shims_of(&self.bins.shim, &self.socket)
    }

    /// Stops and removes every pod through CRI: what the kubelet would do, and the clean
    /// way to get rid of shims, netns, mounts and cgroups.
    pub async fn remove_all_pods(&self) -> Result<()> {
        let mut rt = self.runtime_client().await?;
        let list = cri::ListPodSandboxRequest { filter: None };
        let pods = crate::call("ListPodSandbox", rt.list_pod_sandbox(list)).await?;
        let mut failures = Vec::new();
        for id in pods.items.into_iter().map(|p| p.id) {
            let stop = cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            };
            if let Err(e) = crate::call("StopPodSandbox", rt.stop_pod_sandbox(stop)).await {
                failures.push(format!("{id}: {e:#}"));
            }
            let remove = cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            };
            if let Err(e) = crate::call("RemovePodSandbox", rt.remove_pod_sandbox(remove)).await {
                failures.push(format!("{id}: {e:#}"));
            }
        }
        if !failures.is_empty() {
            bail!("{}", failures.join("; "));
        }
        Ok(())
    }

    /// Removes the pods through CRI, then everything else; reports what could not be undone.
    pub async fn shutdown(mut self) -> Result<()> {
        let pods = self.remove_all_pods().await;
        let rest = self.cleanup();
        pods.context("removing pods through CRI")?;
        rest
    }

    /// Everything but the CRI calls; idempotent, called by [`shutdown`] and by `Drop`.
    fn cleanup(&mut self) -> Result<()> {
        let mut problems = Vec::new();
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, STOP_TIMEOUT);
        }
        // Containers CRI could not remove: runc kills and deletes them (and their cgroups).
        let runc_ns_root = self.runc_root.join(CRI_NAMESPACE);
        if runc_ns_root.is_dir() {
            let list = Command::new(&self.bins.runc)
                .arg("--root")
                .arg(&runc_ns_root)
                .args(["list", "-q"])
                .output();
            if let Ok(out) = list {
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new(&self.bins.runc)
                        .arg("--root")
                        .arg(&runc_ns_root)
                        .args(["delete", "--force", id])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        // Shims of this containerd (not our children: they daemonize), by pid.
        let shims = self.shims();
        for shim in &shims {
            // SAFETY: kill(2) of a process we identified by executable and our socket path.
            unsafe {
                libc::kill(shim.pid, libc::SIGKILL);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.shims().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !self.shims().is_empty() {
            problems.push("containerd-shim-runc-v2 processes survived SIGKILL".to_string());
        }
        if !test_support::unmount_under(&self.root) {
            problems.push(format!("mounts remain under {}", self.root.display()));
        }
        for cgroup in &self.own_cgroups {
            remove_cgroup_tree(cgroup);
            if cgroup.exists() {
                problems.push(format!("cgroup {} remains", cgroup.display()));
            }
        }
        if let Err(e) = delete_link(&self.bridge) {
            problems.push(e);
        }
        let sandboxes: Vec<String> = ["root", "state"]
            .iter()
            .map(|d| {
                self.root
                    .join(d)
                    .join("io.containerd.grpc.v1.cri/sandboxes")
            })
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flat_map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
            })
            .collect();
        remove_cni_cache(&self.cni_network, &sandboxes);
        if self.own_run_dir && Path::new("/run/containerd").exists() {
            // Only the shims' socket dir should be there; anything else is not ours to delete.
            let _ = std::fs::remove_dir(Path::new("/run/containerd/s"));
            let _ = std::fs::remove_dir(Path::new("/run/containerd"));
        }
        if let Some(dir) = self.dir.take() {
            if test_support::mounts_under(&self.root).is_empty() {
                if std::env::var_os(test_support::daemon::KEEP_ENV).is_some() {
                    eprintln!("keeping {}", dir.keep().display());
                } else if let Err(e) = dir.close() {
                    problems.push(format!("delete {}: {e}", self.root.display()));
                }
            } else {
                let kept = dir.keep();
                problems.push(format!("not deleting {} (mounts remain)", kept.display()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("containerd cleanup: {}", problems.join("; "))
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.dir.is_some()
            && let Err(e) = self.cleanup()
        {
            eprintln!("{e:#}");
        }
    }
}

/// `containerd-shim-runc-v2 ... -address <socket> ...` processes.
pub fn shims_of(shim: &Path, socket: &Path) -> Vec<procfs::Proc> {
    let socket = socket.as_os_str().as_bytes();
    procfs::processes()
        .into_iter()
        .filter(|p| p.exe == shim)
        .filter(|p| {
            p.cmdline
                .windows(2)
                .any(|w| w[0] == b"-address" && w[1] == socket)
        })
        .collect()
}

/// SIGTERM, then SIGKILL after `timeout`; reaps.
pub fn terminate(child: &mut Child, timeout: Duration) {
    if matches!(child.try_wait(), Ok(None)) {
        // SAFETY: kill(2) of our own, not yet reaped, child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

fn cgroup_hierarchies() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("cgroup.procs").exists())
                .collect()
        })
        .unwrap_or_default()
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Deletes a network link (the CNI bridge) if it exists.
pub fn delete_link(name: &str) -> Result<(), String> {
    if name.is_empty() || !Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    let status = Command::new("ip")
        .args(["link", "delete", name])
        .status()
        .map_err(|e| format!("ip link delete {name}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("ip link delete {name}: {status}"))
    }
}

/// libcni's result cache (`/var/lib/cni/results/<network>-<id>-<ifname>`), left there
/// only when a DEL never ran: the entries of `network`, and those of any network
/// (containerd's own `cni-loopback`) for one of the sandbox `ids`.
pub fn remove_cni_cache(network: &str, ids: &[String]) {
    let prefix = format!("{network}-");
    if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) || ids.iter().any(|id| name.contains(&format!("-{id}-"))) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
