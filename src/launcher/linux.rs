//! The `linux` launcher: the pod supervisor forks and signals, the container's cgroup
//! finds every process to kill; namespaces pinned by bind mounts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use cri_mesos_supervisor::protocol::{
    ExecInfo, ExecResult, LaunchInfo, PROTOCOL, Request, Response,
};

use super::namespaces::{self, NamespaceError, Pinned};
use super::supervisor::{SupervisorBinary, SupervisorClient, SupervisorError};
use super::sysctls::{Sysctl, SysctlError};
use super::{Launcher, PodHost, SupervisorSpec};
use crate::cgroups::{Cgroup, CgroupError};

/// Supervisor requests that return at once (Ping, Signal, State, Forget, ReopenLog,
/// Shutdown): a stopped (SIGSTOP) supervisor fails them after this, instead of hanging
/// the CRI call; a dead one fails them at once (its socket refuses).
const QUICK: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct LinuxLauncher {
    binary: SupervisorBinary,
    /// Supervisor sockets whose protocol version matched ours: one Ping per supervisor and
    /// daemon lifetime, not one per Launch or Exec.
    verified: Mutex<HashSet<PathBuf>>,
}

impl LinuxLauncher {
    pub fn new(binary: SupervisorBinary) -> LinuxLauncher {
        LinuxLauncher {
            binary,
            verified: Mutex::default(),
        }
    }

    /// Refuses a supervisor of another protocol version before it is sent a request it
    /// could misread: one started by an older daemon would drop new security fields.
    async fn check_protocol(&self, socket: &Path) -> Result<(), SupervisorError> {
        if self.verified.lock().unwrap().contains(socket) {
            return Ok(());
        }
        match SupervisorClient::new(socket)
            .call(&Request::Ping, QUICK)
            .await?
        {
            Response::Pong {
                protocol, pod_id, ..
            } if protocol != PROTOCOL => Err(SupervisorError::Version {
                pod_id,
                theirs: protocol,
                ours: PROTOCOL,
            }),
            Response::Pong { .. } => {
                self.verified.lock().unwrap().insert(socket.to_path_buf());
                Ok(())
            }
            other => Err(unexpected(socket, &other)),
        }
    }
}

fn unexpected(socket: &Path, reply: &Response) -> SupervisorError {
    SupervisorError::Protocol {
        socket: socket.to_path_buf(),
        reason: format!("unexpected reply: {reply:?}"),
    }
}

#[tonic::async_trait]
impl Launcher for LinuxLauncher {
    async fn spawn_supervisor(&self, spec: &SupervisorSpec<'_>) -> Result<i32, SupervisorError> {
        self.binary
            .spawn(spec.pod_id, spec.socket, spec.state_dir, spec.new_pid_ns)
            .await
    }

    fn watch_supervisor(
        &self,
        pid: i32,
        pod_id: &str,
    ) -> std::io::Result<futures_util::future::BoxFuture<'static, ()>> {
        let fd = super::pidfd::PidFd::open_supervisor(pid, pod_id)?;
        Ok(Box::pin(async move {
            if let Err(e) = fd.exited().await {
                // Not a death: killing a living pod's containers on a registration
                // failure would be worse than noticing a death late (at its next call).
                tracing::warn!(pid, error = %e, "supervisor pidfd not watched");
                std::future::pending::<()>().await;
            }
        }))
    }

    async fn state(
        &self,
        socket: &Path,
    ) -> Result<Vec<cri_mesos_supervisor::protocol::ContainerState>, SupervisorError> {
        match SupervisorClient::new(socket)
            .call(&Request::State, QUICK)
            .await?
        {
            Response::StateReply { containers } => Ok(containers),
            other => Err(unexpected(socket, &other)),
        }
    }

    fn charge(&self, cgroup: &Cgroup, pid: i32) -> Result<(), CgroupError> {
        cgroup.add(pid)
    }

    async fn shutdown(&self, socket: &Path) -> Result<(), SupervisorError> {
        self.verified.lock().unwrap().remove(socket);
        SupervisorClient::new(socket)
            .call(&Request::Shutdown, QUICK)
            .await
            .map(|_| ())
    }

    async fn fork(
        &self,
        socket: &Path,
        launch: LaunchInfo,
        timeout: Duration,
    ) -> Result<i32, SupervisorError> {
        self.check_protocol(socket).await?;
        match SupervisorClient::new(socket)
            .call(&Request::Launch(Box::new(launch)), timeout)
            .await?
        {
            Response::Launched { pid } => Ok(pid),
            other => Err(unexpected(socket, &other)),
        }
    }

    async fn start(
        &self,
        socket: &Path,
        container_id: &str,
        timeout: Duration,
    ) -> Result<i32, SupervisorError> {
        let request = Request::Start {
            container_id: container_id.to_string(),
        };
        match SupervisorClient::new(socket)
            .call(&request, timeout)
            .await?
        {
            Response::Started { pid } => Ok(pid),
            other => Err(unexpected(socket, &other)),
        }
    }

    async fn signal(
        &self,
        socket: &Path,
        container_id: &str,
        signal: i32,
        all: bool,
    ) -> Result<(), SupervisorError> {
        let request = Request::Signal {
            container_id: container_id.to_string(),
            signal,
            all,
        };
        SupervisorClient::new(socket)
            .call(&request, QUICK)
            .await
            .map(|_| ())
    }

    async fn kill_all(&self, cgroup: &Cgroup, timeout: Duration) -> Result<(), CgroupError> {
        let cgroup = cgroup.clone();
        // A join error means the blocking task panicked; its cgroup is then as it was.
        tokio::task::spawn_blocking(move || cgroup.kill_all(timeout))
            .await
            .unwrap_or(Ok(()))
    }

    async fn forget(&self, socket: &Path, container_id: &str) -> Result<(), SupervisorError> {
        let request = Request::Forget {
            container_id: container_id.to_string(),
        };
        SupervisorClient::new(socket)
            .call(&request, QUICK)
            .await
            .map(|_| ())
    }

    async fn exec(
        &self,
        socket: &Path,
        exec: ExecInfo,
        timeout: Duration,
    ) -> Result<ExecResult, SupervisorError> {
        self.check_protocol(socket).await?;
        match SupervisorClient::new(socket)
            .call(&Request::Exec(Box::new(exec)), timeout)
            .await?
        {
            Response::ExecResult(result) => Ok(result),
            other => Err(unexpected(socket, &other)),
        }
    }

    async fn exec_stream(
        &self,
        socket: &Path,
        exec: ExecInfo,
        want: [bool; 3],
    ) -> Result<super::supervisor::ExecStream, SupervisorError> {
        self.check_protocol(socket).await?;
        let [stdin, stdout, stderr] = want;
        let request = Request::ExecStream {
            exec: Box::new(exec),
            stdin,
            stdout,
            stderr,
        };
        SupervisorClient::new(socket)
            .exec_stream(&request, QUICK)
            .await
    }

    async fn attach_stream(
        &self,
        socket: &Path,
        container_id: &str,
        stdin: bool,
    ) -> Result<super::supervisor::AttachStream, SupervisorError> {
        self.check_protocol(socket).await?;
        let request = Request::AttachStream {
            container_id: container_id.to_string(),
            stdin,
        };
        SupervisorClient::new(socket)
            .attach_stream(&request, QUICK)
            .await
    }

    async fn reopen_log(&self, socket: &Path, container_id: &str) -> Result<(), SupervisorError> {
        let request = Request::ReopenLog {
            container_id: container_id.to_string(),
        };
        SupervisorClient::new(socket)
            .call(&request, QUICK)
            .await
            .map(|_| ())
    }
}

/// Namespaces pinned by bind mounts of nsfs, and a tmpfs per pod for /dev/shm.
#[derive(Debug, Default)]
pub struct LinuxPodHost;

impl PodHost for LinuxPodHost {
    fn pin(&self, targets: &Pinned, hostname: &str) -> Result<Pinned, NamespaceError> {
        namespaces::create(targets, hostname)
    }

    fn unpin(&self, pinned: &Pinned) {
        namespaces::remove(pinned)
    }

    fn mount_shm(&self, path: &Path, size: &str) -> std::io::Result<()> {
        use nix::mount::MsFlags;
        std::fs::create_dir_all(path)?;
        nix::mount::mount(
            Some("shm"),
            path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(format!("mode=1777,size={size}").as_str()),
        )
        .map_err(std::io::Error::from)
    }

    fn unmount_shm(&self, path: &Path) {
        let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    }

    fn write_sysctls(
        &self,
        net: Option<&Path>,
        ipc: Option<&Path>,
        sysctls: &[Sysctl],
    ) -> Result<(), SysctlError> {
        super::sysctls::write(net, ipc, sysctls)
    }
}
