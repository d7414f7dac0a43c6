//! The `cri-mesos` daemon as a child process, and CRI clients over its unix socket.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::VersionRequest;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tempfile::TempDir;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Set to keep a daemon's temp dir (work dir, runtime dir, log) after the test, for debugging.
pub const KEEP_ENV: &str = "CRI_MESOS_TEST_KEEP";

/// gRPC message limit of the clients, as the kubelet's (image lists and exec output get big).
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const RUN_ONCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Configures and starts a [`Daemon`].
#[derive(Clone, Debug)]
pub struct DaemonBuilder {
    bin: PathBuf,
    args: Vec<OsString>,
    /// Set (`Some`) or removed (`None`), in order.
    envs: Vec<(OsString, Option<OsString>)>,
    ready_timeout: Duration,
}

impl DaemonBuilder {
    /// An extra flag, after the ones the harness passes (`--listen`, `--work_dir`,
    /// `--runtime_dir`, `--http_address`), so a later one can override them.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args(mut self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable of the daemon (the rest is inherited, e.g. `RUST_LOG`).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// An inherited environment variable the daemon must not see (say, `RUST_LOG`, which
    /// overrides `--logging_level`).
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_owned(), None));
        self
    }

    /// How long to wait for the first answered `Version` RPC (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts the daemon in a fresh temp dir and waits until it answers `Version`.
    pub async fn start(self) -> Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("cri-mesos-test-")
            .tempdir()?;
        // Canonical, so mount points under it compare equal to /proc/self/mountinfo's paths.
        let root = dir.path().canonicalize()?;
        let mut daemon = Daemon {
            socket: root.join("cri.sock"),
            work_dir: root.join("work"),
            runtime_dir: root.join("run"),
            log_path: root.join("daemon.log"),
            root,
            dir: Some(dir),
            config: self,
            child: None,
        };
        daemon.spawn().await?; // on error, Drop kills and cleans up
        Ok(daemon)
    }
}

/// A running `cri-mesos` in its own temp dir:
/// `<tmp>/cri.sock`, `<tmp>/work`, `<tmp>/run`, `<tmp>/daemon.log`.
///
/// Drop kills it (SIGKILL), detaches any mount it left under the temp dir (so deleting the dir
/// cannot reach through a bind mount into the host), then deletes the dir, unless
/// `CRI_MESOS_TEST_KEEP` is set. Pods' processes outliving a killed daemon are not hunted
/// down: that is the runtime's job on restart, and what restart tests check.
pub struct Daemon {
    config: DaemonBuilder,
    child: Option<Child>,
    dir: Option<TempDir>,
    root: PathBuf,
    socket: PathBuf,
    work_dir: PathBuf,
    runtime_dir: PathBuf,
    log_path: PathBuf,
}

impl Daemon {
    /// A builder for the daemon binary at `bin`; in integration tests of the root package that
    /// is `env!("CARGO_BIN_EXE_cri-mesos")`.
    pub fn builder(bin: impl AsRef<Path>) -> DaemonBuilder {
        DaemonBuilder {
            bin: bin.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            ready_timeout: READY_TIMEOUT,
        }
    }

    /// Starts `bin` with the harness flags only.
    pub async fn start(bin: impl AsRef<Path>) -> Result<Self> {
        Self::builder(bin).start().await
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }

    /// The temp dir holding everything; a place for test files (pod log dirs, volumes...).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The daemon's stdout and stderr so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The pid of the current daemon process, if one was started and not yet reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the daemon process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// A RuntimeService client on the daemon's socket.
    pub async fn runtime_client(&self) -> Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(connect_unix(&self.socket).await?)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE))
    }

    /// An ImageService client on the daemon's socket.
    pub async fn image_client(&self) -> Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(connect_unix(&self.socket).await?)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE))
    }

    /// Graceful stop: SIGTERM, then wait for exit (SIGKILL and an error after 30 s).
    pub async fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("the daemon is not running")?;
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        crate::signal_child(&child, libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                crate::kill_and_reap(&mut child);
                bail!(
                    "cri-mesos ignored SIGTERM for {STOP_TIMEOUT:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Crash: SIGKILL the daemon (only the daemon process) and reap it.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("the daemon is not running")?;
        crate::signal_child(&child, libc::SIGKILL);
        Ok(child.wait()?)
    }

    /// Sets (`Some`) or removes (`None`) an environment variable for the next
    /// [`restart`](Self::restart) and after (a failpoint the crashed daemon was started with).
    pub fn set_env(&mut self, key: impl AsRef<OsStr>, value: Option<&str>) {
        self.config
            .envs
            .push((key.as_ref().to_owned(), value.map(OsString::from)));
    }

    /// Starts the daemon again on the same dirs and flags (after [`stop`](Self::stop) or
    /// [`kill9`](Self::kill9); a still running daemon is stopped first) and waits until ready.
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.stop().await?;
        }
        self.spawn().await
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        if log.metadata()?.len() > 0 {
            writeln!(log, "\n===== test-support: daemon restarted =====")?;
        }
        let mut cmd = Command::new(&self.config.bin);
        cmd.arg("--listen")
            .arg(&self.socket)
            .arg("--work_dir")
            .arg(&self.work_dir)
            .arg("--runtime_dir")
            .arg(&self.runtime_dir)
            .arg("--http_address=127.0.0.1:0")
            .args(&self.config.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (key, value) in &self.config.envs {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        let child = crate::spawn_tied(cmd)
            .with_context(|| format!("spawn {}", self.config.bin.display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.config.ready_timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "cri-mesos exited ({status}) before it was ready; log:\n{}",
                    self.log()
                );
            }
            if self.version().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "cri-mesos did not answer Version within {:?}; log:\n{}",
                    self.config.ready_timeout,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn version(&self) -> Result<()> {
        let call = async {
            let request = VersionRequest {
                version: "v1".into(),
            };
            self.runtime_client().await?.version(request).await?;
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(5), call).await?
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            crate::kill_and_reap(child);
        }
        let Some(dir) = self.dir.take() else { return };
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("{KEEP_ENV}: keeping {}", dir.keep().display());
            return;
        }
        // A test that failed half-way leaves its pods running: their supervisors kill their
        // containers on SIGTERM, and the emptied pod cgroups go after them.
        stop_leftover_pods(&self.runtime_dir);
        if !unmount_under(&self.root) {
            eprintln!(
                "mounts remain under {}; not deleting it",
                dir.keep().display()
            );
        }
    }
}

/// SIGTERMs the supervisors of pods still recorded under `runtime_dir`, waits (briefly) for
/// them, and removes the pods' cgroups from the default `--cgroups_root`.
fn stop_leftover_pods(runtime_dir: &Path) {
    let Ok(pods) = std::fs::read_dir(runtime_dir.join("pods")) else {
        return;
    };
    let mut pids = Vec::new();
    let mut ids = Vec::new();
    for pod in pods.flatten() {
        ids.push(pod.file_name());
        let pid_file = pod.path().join("supervisor/supervisor.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) with a pid read from the pod's own state dir; no memory involved.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            pids.push(pid);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}/status")).exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            for id in &ids {
                remove_cgroup_tree(&h.path().join("cri-mesos").join(id));
            }
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Lazily unmounts every mount point under `root`, deepest first; true when none is left.
pub fn unmount_under(root: &Path) -> bool {
    for _ in 0..5 {
        let mounts = mounts_under(root);
        if mounts.is_empty() {
            return true;
        }
        // mountinfo lists a mount after the one it sits on, so reverse order is top-down.
        for mount in mounts.iter().rev() {
            if let Ok(path) = std::ffi::CString::new(mount.as_os_str().as_bytes()) {
                // SAFETY: a valid NUL-terminated path; MNT_DETACH only unhooks the mount.
                unsafe {
                    libc::umount2(path.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    }
    mounts_under(root).is_empty()
}

/// Mount points at or below `root`, in mountinfo order.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    cri_mesos_supervisor::mountinfo::read()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|path| path.starts_with(root))
        .collect()
}

/// A gRPC channel over a unix socket (tonic needs some http URI; it is never resolved).
pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Channel> {
    let path = path.as_ref().to_owned();
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await?;
    Ok(channel)
}

/// What one short run of a binary printed.
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// The exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `bin args...` to completion (30 s at most) and captures its output; for flag
/// validation, where the daemon must refuse to start. Errors if it is still running after
/// 30 s (i.e. it accepted the flags and started serving), with what it printed.
pub fn run_once(
    bin: impl AsRef<Path>,
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
) -> Result<RunOutput> {
    // Files rather than pipes: no reader threads, and no deadlock on a chatty child.
    let dir = tempfile::tempdir()?;
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut cmd = Command::new(bin.as_ref());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?);
    let mut child =
        crate::spawn_tied(cmd).with_context(|| format!("spawn {}", bin.as_ref().display()))?;
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let deadline = Instant::now() + RUN_ONCE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            crate::kill_and_reap(&mut child);
            bail!(
                "still running after {RUN_ONCE_TIMEOUT:?}; stderr:\n{}",
                read(&err_path)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(RunOutput {
        code: status.code(),
        stdout: read(&out_path),
        stderr: read(&err_path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_once_captures_exit_code_and_output() {
        let out = run_once("/bin/sh", ["-c", "echo out; echo err >&2; exit 3"]).unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
    }

    #[tokio::test]
    async fn start_reports_early_exit_with_log() {
        let err = Daemon::builder("/bin/sh")
            .arg("-c")
            .start()
            .await
            .err()
            .expect("sh does not speak CRI");
        assert!(err.to_string().contains("exited"), "{err:#}");
    }
}
