//! The containerizer: Mesos's launch pipeline (provisioner → isolators → launcher →
//! fetcher → exec) behind the CRI lifecycle. A pod sandbox is a top-level container, each
//! CRI container a nested one whose parent is the sandbox.

pub mod mesos;
pub mod records;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cgroups::CgroupError;
use crate::isolators::chain::IsolatorError;
use crate::launcher::namespaces::NamespaceError;
use crate::launcher::supervisor::SupervisorError;
use crate::provisioner::ProvisionError;
use crate::state::CheckpointError;

/// Mesos's container states (containerizer.hpp), in launch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MesosState {
    Provisioning,
    Preparing,
    Isolating,
    Fetching,
    Running,
    Destroying,
}

/// A Mesos ContainerID: a pod sandbox has no parent, a CRI container has its sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContainerId {
    pub value: String,
    pub parent: Option<String>,
}

/// Errors of the containerizer; each kind maps to one gRPC code in the CRI layer.
#[derive(Debug, thiserror::Error)]
pub enum ContainerizerError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error(transparent)]
    Isolator(#[from] IsolatorError),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
    /// One error handed to every waiter of a shared creation.
    #[error("{0}")]
    Shared(std::sync::Arc<ContainerizerError>),
}

impl ContainerizerError {
    /// The error behind any sharing wrapper, for mapping its kind.
    pub fn root(&self) -> &ContainerizerError {
        match self {
            ContainerizerError::Shared(inner) => inner.root(),
            other => other,
        }
    }

    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ContainerizerError {
        let path = path.into();
        move |source| ContainerizerError::Io { path, source }
    }
}

pub type Result<T, E = ContainerizerError> = std::result::Result<T, E>;

/// Nanoseconds since the epoch, as the CRI reports times.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// A fresh 64-hex id, the shape containerd and CRI-O use (crictl shortens it).
pub fn new_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// What to launch: a top-level container (a pod sandbox) or a nested one inside a sandbox.
#[derive(Debug, Clone)]
pub enum LaunchConfig {
    Sandbox {
        config: k8s_cri::v1::PodSandboxConfig,
        runtime_handler: String,
    },
    Nested {
        sandbox_id: String,
        config: k8s_cri::v1::ContainerConfig,
    },
}

/// Mesos's containerizer interface. The CRI splits Mesos's `launch` at the pipe the
/// forked container waits on: `launch` of a nested container stops there (CREATED) and
/// `exec` does the rest (isolate, fetch, release: RUNNING), as Mesos's own `exec()` step.
#[tonic::async_trait]
pub trait Containerizer: Send + Sync {
    /// Rebuilds state after a restart; isolators get the known containers.
    async fn recover(&self) -> Result<()>;
    async fn launch(self: std::sync::Arc<Self>, config: LaunchConfig) -> Result<ContainerId>;
    async fn exec(&self, id: &ContainerId) -> Result<()>;
    async fn update(
        &self,
        id: &ContainerId,
        resources: &k8s_cri::v1::LinuxContainerResources,
    ) -> Result<()>;
    async fn usage(&self, id: &ContainerId) -> Result<crate::isolators::chain::ResourceStatistics>;
    /// Verbose status: Mesos state, pids, rootfs, backend, isolators.
    async fn status(&self, id: &ContainerId) -> Result<serde_json::Value>;
    /// The exit status of a nested container once it ended (`None` while it runs).
    async fn wait(
        &self,
        id: &ContainerId,
    ) -> Result<Option<cri_mesos_supervisor::protocol::ExitRecord>>;
    /// Kills (after `grace`) and releases everything the container holds; nested
    /// containers of a sandbox go first. Idempotent.
    async fn destroy(&self, id: &ContainerId, grace: std::time::Duration) -> Result<()>;
    async fn containers(&self) -> Vec<ContainerId>;
}
