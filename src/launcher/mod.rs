//! Launchers (Mesos's `linux` and `posix`): how a container's processes are started and
//! how all of them are killed. Both hand the fork to the pod's supervisor; `linux` adds
//! namespaces and tracks every process through the container's cgroup.
//!
//! The containerizer reaches processes, cgroups' processes and pinned namespaces only
//! through [`Launcher`] and [`PodHost`], so that its undo paths can be driven by fakes in
//! unit tests, without root and without a real supervisor.

pub mod linux;
pub mod namespaces;
pub mod pidfd;
pub mod propagation;
pub mod supervisor;
pub mod sysctls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cri_mesos_supervisor::protocol::{ExecInfo, ExecResult, LaunchInfo};

use crate::cgroups::{Cgroup, CgroupError};
use namespaces::{NamespaceError, Pinned};
use supervisor::SupervisorError;

/// A pod's supervisor to start: the top-level container's one process.
#[derive(Debug, Clone)]
pub struct SupervisorSpec<'a> {
    pub pod_id: &'a str,
    /// The unix socket it serves; every later call names it.
    pub socket: &'a Path,
    pub state_dir: &'a Path,
    /// Whether it holds a pid namespace for the whole pod.
    pub new_pid_ns: bool,
}

/// Mesos's `Launcher`: fork blocked, start, signal, kill all, wait, recover. A pod's
/// containers are addressed through its supervisor's socket.
#[tonic::async_trait]
pub trait Launcher: Send + Sync + std::fmt::Debug {
    /// Reattaches to what runs after a daemon restart (`sockets`: the known pods'
    /// supervisors). Nothing is killed: supervisors outlive the daemon.
    async fn recover(&self, _sockets: &[PathBuf]) -> Result<(), SupervisorError> {
        Ok(())
    }
    /// Watches the supervisor of `pod_id` running as `pid`: the future resolves when it
    /// ends. An error means it is not running now (or `pid` is another process). The
    /// default never resolves (launchers without a way to watch).
    fn watch_supervisor(
        &self,
        _pid: i32,
        _pod_id: &str,
    ) -> std::io::Result<futures_util::future::BoxFuture<'static, ()>> {
        Ok(Box::pin(std::future::pending()))
    }
    /// What the supervisor knows of its containers (asked at recovery, to finish or roll
    /// back what a crash cut off). The default knows nothing.
    async fn state(
        &self,
        _socket: &Path,
    ) -> Result<Vec<cri_mesos_supervisor::protocol::ContainerState>, SupervisorError> {
        Ok(Vec::new())
    }
    /// Starts a pod's supervisor; its host pid once it serves its socket.
    async fn spawn_supervisor(&self, spec: &SupervisorSpec<'_>) -> Result<i32, SupervisorError>;
    /// Moves `pid` into `cgroup` (the supervisor is charged to its pod, as the pause
    /// container is under containerd).
    fn charge(&self, cgroup: &Cgroup, pid: i32) -> Result<(), CgroupError>;
    /// Asks a pod's supervisor to end (its containers are gone by then).
    async fn shutdown(&self, socket: &Path) -> Result<(), SupervisorError>;
    /// Forks the container, which sets itself up and blocks on its start pipe; its host pid.
    async fn fork(
        &self,
        socket: &Path,
        launch: LaunchInfo,
        timeout: Duration,
    ) -> Result<i32, SupervisorError>;
    /// Releases the pipe: the container execs. Its host pid.
    async fn start(
        &self,
        socket: &Path,
        container_id: &str,
        timeout: Duration,
    ) -> Result<i32, SupervisorError>;
    /// Sends `signal` to the container's init, or with `all` to each of its processes.
    async fn signal(
        &self,
        socket: &Path,
        container_id: &str,
        signal: i32,
        all: bool,
    ) -> Result<(), SupervisorError>;
    /// Kills every process of `cgroup` and waits (at most `timeout`) until none is left.
    async fn kill_all(&self, cgroup: &Cgroup, timeout: Duration) -> Result<(), CgroupError>;
    /// Drops the supervisor's record of a removed container.
    async fn forget(&self, socket: &Path, container_id: &str) -> Result<(), SupervisorError>;
    /// Runs a command beside a running container (ExecSync); `timeout` guards the reply.
    async fn exec(
        &self,
        socket: &Path,
        exec: ExecInfo,
        timeout: Duration,
    ) -> Result<ExecResult, SupervisorError>;
    /// Starts a streaming exec session (CRI Exec); `want`: stdin, stdout, stderr.
    async fn exec_stream(
        &self,
        _socket: &Path,
        _exec: ExecInfo,
        _want: [bool; 3],
    ) -> Result<supervisor::ExecStream, SupervisorError> {
        Err(SupervisorError::Refused(
            "this launcher has no streaming exec".into(),
        ))
    }
    /// Attaches a streaming session to a running container (CRI Attach).
    async fn attach_stream(
        &self,
        _socket: &Path,
        _container_id: &str,
        _stdin: bool,
    ) -> Result<supervisor::AttachStream, SupervisorError> {
        Err(SupervisorError::Refused(
            "this launcher has no streaming attach".into(),
        ))
    }
    /// Reopens the container's log file by path (ReopenContainerLog).
    async fn reopen_log(&self, socket: &Path, container_id: &str) -> Result<(), SupervisorError>;
}

/// What a pod holds on the host besides processes: its pinned namespaces and its
/// `/dev/shm`. Blocking calls: the containerizer runs them off the async threads.
pub trait PodHost: Send + Sync + std::fmt::Debug {
    /// Creates and pins a namespace for each path of `targets`, `hostname` set in a new
    /// UTS one. On failure nothing stays pinned.
    fn pin(&self, targets: &Pinned, hostname: &str) -> Result<Pinned, NamespaceError>;
    /// Unpins namespaces. Idempotent.
    fn unpin(&self, pinned: &Pinned);
    /// Mounts the pod's own /dev/shm tmpfs at `path` (created), `size` as tmpfs takes it.
    fn mount_shm(&self, path: &Path, size: &str) -> std::io::Result<()>;
    /// Unmounts it; missing is fine.
    fn unmount_shm(&self, path: &Path);
    /// Writes the pod's sysctls inside its pinned `net` / `ipc` namespaces.
    fn write_sysctls(
        &self,
        net: Option<&Path>,
        ipc: Option<&Path>,
        sysctls: &[sysctls::Sysctl],
    ) -> Result<(), sysctls::SysctlError>;
}
