//! The native `mesos` containerizer.
//!
//! RunPodSandbox launches a top-level container: pinned namespaces, the pod's files and
//! cgroup, and its supervisor. CreateContainer runs the nested launch up to the blocked
//! fork (PROVISIONING → PREPARING → fork); StartContainer does the rest (ISOLATING →
//! FETCHING → release the pipe → RUNNING). Every step undoes itself on failure.
//!
//! Creation calls run detached from the gRPC request and are keyed by name, so a retried
//! call with the same config waits for (or returns) the first one's result instead of
//! failing with "name is reserved" (the containerd complaint).

mod limits;
mod nested;
mod recovery;
mod sandbox;
mod sessions;
mod supervision;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::launcher::supervisor::{AttachStream, ExecStream};
use cri_mesos_supervisor::protocol::{ExecInfo, ExecResult, LaunchInfo, ProcessSpec};
use k8s_cri::v1 as cri;
use tracing::Instrument;

use super::events::{Events, Lifecycle, Phase};
use super::exits::ExitWatcher;
use super::records::{ContainerRecord, PodRecord};
use super::{ContainerizerError, MesosState, Result, new_id, now_ns};
use crate::cgroups::{Cgroup, Hierarchies};
use crate::failpoint;
use crate::fetcher::{Fetcher, FetcherConfig};
use crate::flags::Flags;
use crate::inflight::Inflight;
use crate::isolators::chain::{
    ContainerPeer, ContainerPrep, Isolator, Limitation, NsMode, PodInfo, PodIsolation,
    PodNamespaces, PodNetwork, PodPrep, SandboxMount,
};
use crate::isolators::registry::{self, IsolatorContext};
use crate::launcher::linux::{LinuxLauncher, LinuxPodHost};
use crate::launcher::namespaces;
use crate::launcher::supervisor::{SupervisorBinary, SupervisorError};
use crate::launcher::sysctls::{self, SysctlError};
use crate::launcher::{Launcher, PodHost, SupervisorSpec};
use crate::provisioner::Provisioner;
use crate::state;

/// How long a container may take to set itself up before CreateContainer gives up.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Releasing a launched container's pipe: it only has to exec by then. A stopped
/// (SIGSTOP) supervisor must not hold StartContainer for the whole launch timeout.
const START_TIMEOUT: Duration = Duration::from_secs(15);
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// kubelet's default /dev/shm size.
const SHM_SIZE: &str = "65536k";

type Shared<T> = std::result::Result<T, Arc<ContainerizerError>>;

struct Reservation<C> {
    id: String,
    config: C,
}

#[derive(Default)]
struct Tables {
    pods: HashMap<String, PodRecord>,
    containers: HashMap<String, ContainerRecord>,
    pod_names: HashMap<String, Reservation<cri::PodSandboxConfig>>,
    container_names: HashMap<String, Reservation<cri::ContainerConfig>>,
}

/// What a [`MesosContainerizer`] is made of.
pub struct Parts {
    pub flags: Arc<Flags>,
    pub provisioner: Arc<Provisioner>,
    pub isolators: Vec<Box<dyn Isolator>>,
    pub hierarchies: Hierarchies,
    pub launcher: Arc<dyn Launcher>,
    pub pod_host: Arc<dyn PodHost>,
    pub fetcher: Arc<Fetcher>,
}

pub struct MesosContainerizer {
    flags: Arc<Flags>,
    provisioner: Arc<Provisioner>,
    isolators: Vec<Box<dyn Isolator>>,
    hierarchies: Hierarchies,
    launcher: Arc<dyn Launcher>,
    pod_host: Arc<dyn PodHost>,
    fetcher: Arc<Fetcher>,
    tables: Mutex<Tables>,
    /// Lifecycle calls of one pod (and its containers) take its lock in turn.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    creations: Inflight<Shared<String>>,
    events: Arc<Events>,
    /// `None` outside a tokio runtime or without inotify: exits are then announced only
    /// when a stop or a removal finds them.
    exits: Option<Arc<ExitWatcher>>,
    /// Taken by writers that change one field of a record outside the pod's lock (the
    /// OOM answer), so two of them never checkpoint stale copies over each other.
    record_writes: tokio::sync::Mutex<()>,
    /// Itself, for the tasks it starts (an isolator's `watch` of a running container).
    me: std::sync::Weak<MesosContainerizer>,
    /// What the recovery quarantined and destroyed, for the verbose Status.
    recovery: Mutex<recovery::RecoveryReport>,
    /// The lock on `<work_dir>/meta/lock`, taken at recovery.
    work_dir_lock: Mutex<Option<nix::fcntl::Flock<std::fs::File>>>,
}

impl std::fmt::Debug for MesosContainerizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MesosContainerizer")
            .field("isolators", &self.isolators)
            .finish_non_exhaustive()
    }
}

fn task_died(reason: String) -> Shared<String> {
    Err(Arc::new(ContainerizerError::Internal(format!(
        "launch task failed: {reason}"
    ))))
}

fn unshared(e: Arc<ContainerizerError>) -> ContainerizerError {
    Arc::try_unwrap(e).unwrap_or_else(ContainerizerError::Shared)
}

/// The id reserved for `key`: the one of an identical earlier call, else a new one;
/// another config under the same name is refused, naming the holder.
fn reserve<C: PartialEq + Clone>(
    names: &mut HashMap<String, Reservation<C>>,
    key: &str,
    config: &C,
    conflict: impl FnOnce(&str) -> String,
) -> Result<String> {
    match names.get(key) {
        Some(r) if r.config == *config => Ok(r.id.clone()),
        Some(r) => Err(ContainerizerError::AlreadyExists(conflict(&r.id))),
        None => {
            let id = new_id();
            names.insert(
                key.to_string(),
                Reservation {
                    id: id.clone(),
                    config: config.clone(),
                },
            );
            Ok(id)
        }
    }
}

fn pod_key(meta: &cri::PodSandboxMetadata) -> String {
    format!(
        "{}_{}_{}_{}",
        meta.name, meta.namespace, meta.uid, meta.attempt
    )
}

fn container_key(pod_id: &str, meta: &cri::ContainerMetadata) -> String {
    format!("{pod_id}/{}_{}", meta.name, meta.attempt)
}

fn invalid(field: &str, reason: &str) -> ContainerizerError {
    ContainerizerError::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

impl MesosContainerizer {
    /// Mesos's `MesosContainerizer::create`: the isolators `--isolation` names, the
    /// `linux` launcher over pod supervisors, the cgroup hierarchies of this machine.
    pub fn new(
        flags: Arc<Flags>,
        provisioner: Arc<Provisioner>,
    ) -> Result<Arc<MesosContainerizer>> {
        let hierarchies = Hierarchies::detect(&flags.cgroups_hierarchy)?;
        let context = IsolatorContext {
            flags: flags.clone(),
            hierarchies: hierarchies.clone(),
        };
        let chain = registry::chain(&flags).map_err(|e| ContainerizerError::InvalidArgument {
            field: "isolation".into(),
            reason: e.to_string(),
        })?;
        let isolators = registry::build(&chain, &context);
        let launcher = LinuxLauncher::new(SupervisorBinary::in_dir(&flags.launcher_dir)?);
        let fetcher = Fetcher::new(FetcherConfig::from_flags(&flags))
            .map_err(ContainerizerError::Internal)?;
        Self::with_parts(Parts {
            flags,
            provisioner,
            isolators,
            hierarchies,
            launcher: Arc::new(launcher),
            pod_host: Arc::new(LinuxPodHost),
            fetcher: Arc::new(fetcher),
        })
    }

    /// A containerizer from the given parts (unit tests hand in fakes).
    pub fn with_parts(parts: Parts) -> Result<Arc<MesosContainerizer>> {
        let Parts {
            flags,
            provisioner,
            isolators,
            hierarchies,
            launcher,
            pod_host,
            fetcher,
        } = parts;
        for dir in [
            meta_dir(&flags).join("pods"),
            meta_dir(&flags).join("containers"),
            sandboxes_dir(&flags),
        ] {
            std::fs::create_dir_all(&dir).map_err(ContainerizerError::io(&dir))?;
        }
        // Sandboxes hold what pods fetched, possibly secrets: the host's root only.
        {
            use std::os::unix::fs::PermissionsExt;
            let dir = sandboxes_dir(&flags);
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(ContainerizerError::io(&dir))?;
        }
        let events = Arc::new(Events::default());
        let exit_watcher = tokio::runtime::Handle::try_current().ok().and_then(|_| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            match ExitWatcher::start(tx) {
                Ok(w) => Some((Arc::new(w), rx)),
                Err(e) => {
                    tracing::warn!(error = %e, "no exit watcher: stops announced late");
                    None
                }
            }
        });
        let (exit_watcher, exited) = match exit_watcher {
            Some((w, rx)) => (Some(w), Some(rx)),
            None => (None, None),
        };
        let containerizer = Arc::new_cyclic(|me| MesosContainerizer {
            me: me.clone(),
            flags,
            provisioner,
            isolators,
            hierarchies,
            launcher,
            pod_host,
            fetcher,
            tables: Mutex::new(Tables::default()),
            locks: Mutex::new(HashMap::new()),
            creations: Inflight::default(),
            exits: exit_watcher,
            events,
            record_writes: tokio::sync::Mutex::new(()),
            recovery: Mutex::default(),
            work_dir_lock: Mutex::default(),
        });
        if let Some(mut exited) = exited {
            // The exit is announced once the OOM killer's part is known, so that the
            // event's status already says OOMKilled.
            let weak = Arc::downgrade(&containerizer);
            tokio::spawn(async move {
                while let Some(id) = exited.recv().await {
                    let Some(this) = weak.upgrade() else { return };
                    if let Err(e) = this.observe_exit(&id).await {
                        tracing::debug!(container_id = %id, error = %e, "exit not observed");
                    }
                    this.events.stopped(&id);
                }
            });
        }
        Ok(containerizer)
    }

    /// Rebuilds the tables from the checkpoints. Running pods and containers are left
    /// alone: their supervisors kept running while the daemon was away.
    fn recover_checkpoints(&self) -> Result<()> {
        let meta = meta_dir(&self.flags);
        let mut tables = self.tables();
        for entry in std::fs::read_dir(meta.join("pods"))
            .map_err(ContainerizerError::io(meta.join("pods")))?
            .flatten()
        {
            let path = entry.path();
            if self.is_write_leftover(&path) {
                continue;
            }
            let read = state::recover::<PodRecord>(&path);
            if let Err(e) = &read {
                self.quarantine(&path, "pods", e.to_string());
            }
            if let Ok(Some(pod)) = read {
                if let Some(meta) = &pod.info.config.metadata {
                    tables.pod_names.insert(
                        pod_key(meta),
                        Reservation {
                            id: pod.info.id.clone(),
                            config: pod.info.config.clone(),
                        },
                    );
                }
                tables.pods.insert(pod.info.id.clone(), pod);
            }
        }
        let containers = meta.join("containers");
        for entry in std::fs::read_dir(&containers)
            .map_err(ContainerizerError::io(&containers))?
            .flatten()
        {
            let read = state::recover::<ContainerRecord>(&entry.path().join("container.json"));
            match &read {
                Err(e) => self.quarantine(&entry.path(), "containers", e.to_string()),
                // The crash came between its directory and its first checkpoint.
                Ok(None) => self.destroy_orphan(
                    "container directory without a checkpoint",
                    &entry.path(),
                    || std::fs::remove_dir_all(entry.path()),
                ),
                Ok(Some(_)) => {}
            }
            if let Ok(Some(c)) = read {
                if let Some(meta) = &c.config.metadata {
                    tables.container_names.insert(
                        container_key(&c.pod_id, meta),
                        Reservation {
                            id: c.id.clone(),
                            config: c.config.clone(),
                        },
                    );
                }
                tables.containers.insert(c.id.clone(), c);
            }
        }
        tracing::info!(
            pods = tables.pods.len(),
            containers = tables.containers.len(),
            "recovered checkpoints"
        );
        let pods: Vec<(String, bool)> = tables
            .pods
            .values()
            .map(|p| (p.info.id.clone(), p.ready))
            .collect();
        let containers: Vec<ContainerRecord> = tables.containers.values().cloned().collect();
        drop(tables);
        for (id, ready) in pods {
            let phase = if ready {
                Phase::Started
            } else {
                Phase::Stopped
            };
            self.events.recovered(&id, &id, phase);
        }
        for c in containers {
            let phase = match c.cri_state(&c.exit()) {
                cri::ContainerState::ContainerCreated => Phase::Created,
                cri::ContainerState::ContainerRunning => Phase::Started,
                _ => Phase::Stopped,
            };
            self.events.recovered(&c.id, &c.pod_id, phase);
            if phase != Phase::Stopped {
                self.watch_exit(&c.id);
            }
        }
        Ok(())
    }

    /// Watches a container's directory for its exit record (see [`ExitWatcher`]).
    fn watch_exit(&self, id: &str) {
        if let Some(exits) = &self.exits {
            let dir = meta_dir(&self.flags).join("containers").join(id);
            exits.watch(id, &dir);
        }
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn container_ids_of(&self, pod_id: &str) -> Vec<String> {
        let tables = self.tables();
        tables
            .containers
            .values()
            .filter(|c| c.pod_id == pod_id)
            .map(|c| c.id.clone())
            .collect()
    }

    fn lock_of(&self, pod_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(pod_id.to_string())
            .or_default()
            .clone()
    }

    fn find_pod(&self, id: &str) -> Result<PodRecord> {
        let tables = self.tables();
        find(&tables.pods, id)
            .cloned()
            .ok_or(ContainerizerError::NotFound {
                what: "pod sandbox",
                id: id.into(),
            })
    }

    fn find_container(&self, id: &str) -> Result<ContainerRecord> {
        let tables = self.tables();
        find(&tables.containers, id)
            .cloned()
            .ok_or(ContainerizerError::NotFound {
                what: "container",
                id: id.into(),
            })
    }

    fn isolator_names(&self) -> Vec<&'static str> {
        self.isolators.iter().map(|i| i.name().as_str()).collect()
    }

    /// Runs a creation on a detached task shared by every identical call in flight, so a
    /// client that gives up never leaves half a pod and a retry waits for the first call.
    /// A failed creation frees its name (`release`) for the next attempt.
    async fn create_once<F, Fut>(
        self: &Arc<Self>,
        id: String,
        span: tracing::Span,
        release: fn(&mut Tables, &str),
        work: F,
    ) -> Result<String>
    where
        F: FnOnce(Arc<Self>, String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        let this = self.clone();
        let launch_id = id.clone();
        self.creations
            .run(
                &id,
                move || {
                    async move {
                        let result = work(this.clone(), launch_id.clone()).await;
                        if result.is_err() {
                            release(&mut this.tables(), &launch_id);
                        }
                        result.map(|()| launch_id).map_err(Arc::new)
                    }
                    .instrument(span)
                },
                task_died,
            )
            .await
            .map_err(unshared)
    }
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

fn meta_dir(flags: &Flags) -> PathBuf {
    flags.work_dir.join("meta")
}

/// Mesos's sandboxes, one directory per pod holding one per container.
fn sandboxes_dir(flags: &Flags) -> PathBuf {
    flags.work_dir.join("sandboxes")
}

/// A container's sandbox on the host: `<work_dir>/sandboxes/<pod>/containers/<cid>`, as
/// Mesos nests a task's sandbox in its executor's.
fn sandbox_dir(flags: &Flags, pod_id: &str, container_id: &str) -> PathBuf {
    sandboxes_dir(flags)
        .join(pod_id)
        .join("containers")
        .join(container_id)
}

/// Finds by full id or by a unique prefix (crictl shows shortened ids).
fn find<'a, T>(map: &'a HashMap<String, T>, id: &str) -> Option<&'a T> {
    if let Some(found) = map.get(id) {
        return Some(found);
    }
    if id.is_empty() {
        return None;
    }
    let mut matches = map.iter().filter(|(k, _)| k.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some((_, only)), None) => Some(only),
        _ => None,
    }
}

#[tonic::async_trait]
impl super::Containerizer for MesosContainerizer {
    async fn recover(&self) -> Result<()> {
        self.recover_all().await
    }

    async fn launch(self: Arc<Self>, config: super::LaunchConfig) -> Result<super::ContainerId> {
        match config {
            super::LaunchConfig::Sandbox {
                config,
                runtime_handler,
            } => {
                let value = self.launch_pod(config, runtime_handler).await?;
                Ok(super::ContainerId {
                    value,
                    parent: None,
                })
            }
            super::LaunchConfig::Nested { sandbox_id, config } => {
                let value = self.launch_container(&sandbox_id, config).await?;
                let parent = Some(self.find_container(&value)?.pod_id);
                Ok(super::ContainerId { value, parent })
            }
        }
    }

    async fn start(&self, id: &super::ContainerId) -> Result<()> {
        self.start_container(&id.value).await
    }

    async fn stop(&self, id: &super::ContainerId, grace: Duration) -> Result<()> {
        match &id.parent {
            Some(_) => self.stop_container(&id.value, grace.as_secs() as i64).await,
            None => self.stop_pod(&id.value).await,
        }
    }

    async fn update(
        &self,
        id: &super::ContainerId,
        resources: &cri::LinuxContainerResources,
    ) -> Result<()> {
        self.update_container(&id.value, resources).await
    }

    async fn usage(
        &self,
        id: &super::ContainerId,
    ) -> Result<crate::isolators::chain::ResourceStatistics> {
        let mut statistics = crate::isolators::chain::ResourceStatistics {
            timestamp_ns: now_ns(),
            ..Default::default()
        };
        // As Mesos's await(): one isolator failing leaves the others' figures.
        if id.parent.is_none() {
            let pod = self.find_pod(&id.value)?;
            for isolator in &self.isolators {
                if let Err(e) = isolator.usage_pod(&pod.info, &mut statistics).await {
                    tracing::debug!(isolator = %isolator.name(), error = %e, "pod usage");
                }
            }
            return Ok(statistics);
        }
        let record = self.find_container(&id.value)?;
        for isolator in &self.isolators {
            if let Err(e) = isolator
                .usage(&record.id, &record.cgroup, &mut statistics)
                .await
            {
                tracing::debug!(isolator = %isolator.name(), error = %e, "usage");
            }
        }
        Ok(statistics)
    }

    async fn status(&self, id: &super::ContainerId) -> Result<serde_json::Value> {
        if let Ok(record) = self.find_container(&id.value) {
            let mut isolators = serde_json::Map::new();
            for isolator in &self.isolators {
                if let Some(status) = isolator.status(&record.id).await {
                    isolators.insert(isolator.name().to_string(), status);
                }
            }
            return Ok(serde_json::json!({
                "mesosState": record.mesos_state,
                "pid": record.pid,
                "rootfs": record.rootfs,
                "backend": record.backend,
                "cgroup": record.cgroup.relative,
                "isolators": self.isolator_names(),
                "isolatorStatus": isolators,
                "process": record.process,
                "stopSignal": record.stop_signal,
                "sandbox": sandbox_dir(&self.flags, &record.pod_id, &record.id),
            }));
        }
        let pod = self.find_pod(&id.value)?;
        let mut status = serde_json::json!({
            "mesosState": pod.mesos_state,
            "supervisorPid": pod.supervisor_pid,
            "supervisorSocket": pod.supervisor_socket,
            "lost": pod.lost,
            "cgroup": pod.info.cgroup.relative,
            "netNamespace": pod.info.net_ns,
            "utsNamespace": pod.info.uts_ns,
            "ipcNamespace": pod.info.ipc_ns,
            "pidMode": pod.info.pid_mode,
            "isolators": self.isolator_names(),
            "config": pod.info.config,
        });
        for isolator in &self.isolators {
            let keys = isolator
                .pod_status(&pod.info, pod.ready, pod.network.as_ref())
                .await;
            if let (Some(keys), Some(object)) = (keys, status.as_object_mut()) {
                object.extend(keys);
            }
        }
        Ok(status)
    }

    async fn wait(
        &self,
        id: &super::ContainerId,
    ) -> Result<Option<cri_mesos_supervisor::protocol::ExitRecord>> {
        self.observe_exit(&id.value).await
    }

    async fn destroy(&self, id: &super::ContainerId, grace: Duration) -> Result<()> {
        match &id.parent {
            Some(_) => {
                self.stop_container(&id.value, grace.as_secs() as i64)
                    .await?;
                self.remove_container(&id.value).await
            }
            None => self.remove_pod(&id.value).await,
        }
    }

    fn pods(&self) -> Vec<PodRecord> {
        self.tables().pods.values().cloned().collect()
    }

    fn containers(&self) -> Vec<ContainerRecord> {
        self.tables().containers.values().cloned().collect()
    }

    fn pod(&self, id: &str) -> Result<PodRecord> {
        self.find_pod(id)
    }

    fn container(&self, id: &str) -> Result<ContainerRecord> {
        self.find_container(id)
    }

    async fn exec_sync(
        &self,
        id: &super::ContainerId,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<ExecResult> {
        self.exec_sync_in(&id.value, cmd, timeout).await
    }

    async fn exec_stream(
        &self,
        id: &super::ContainerId,
        cmd: Vec<String>,
        tty: bool,
        want: [bool; 3],
    ) -> Result<ExecStream> {
        self.exec_stream_in(&id.value, cmd, tty, want).await
    }

    async fn attach_stream(&self, id: &super::ContainerId, stdin: bool) -> Result<AttachStream> {
        self.attach_stream_in(&id.value, stdin).await
    }

    async fn reopen_log(&self, id: &super::ContainerId) -> Result<()> {
        self.reopen_log_of(&id.value).await
    }

    /// Ready when the chain has no network isolator: pods get the host's network then.
    fn network_ready(&self) -> std::result::Result<(), String> {
        self.isolators
            .iter()
            .find_map(|i| i.network_readiness())
            .unwrap_or(Ok(()))
    }

    fn pod_cidr(&self) -> Option<String> {
        self.isolators.iter().find_map(|i| i.pod_cidr())
    }

    fn events(&self) -> tokio::sync::broadcast::Receiver<Lifecycle> {
        self.events.subscribe()
    }

    async fn set_pod_cidr(&self, cidr: Option<String>) -> Result<()> {
        let config = recovery::RuntimeConfig {
            pod_cidr: cidr.clone(),
        };
        state::checkpoint_async(&recovery::runtime_config_path(&self.flags), &config).await?;
        for isolator in &self.isolators {
            isolator.set_pod_cidr(cidr.as_deref());
        }
        Ok(())
    }

    fn recovery_status(&self) -> serde_json::Value {
        let report = self.recovery.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::to_value(&*report).unwrap_or_default()
    }

    fn isolator_status(&self) -> serde_json::Map<String, serde_json::Value> {
        self.isolators
            .iter()
            .filter_map(|i| Some((i.name().to_string(), i.node_status()?)))
            .collect()
    }

    fn writable_usage(&self) -> Option<(u64, u64)> {
        self.isolators.iter().find_map(|i| i.writable_usage())
    }
}
