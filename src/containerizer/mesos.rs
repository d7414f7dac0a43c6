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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cri_mesos_supervisor::protocol::{
    ExecInfo, ExecResult, LaunchInfo, ProcessSpec, Request, Response,
};
use k8s_cri::v1 as cri;
use tracing::Instrument;

use super::records::{ContainerRecord, PodRecord};
use super::{ContainerizerError, MesosState, Result, new_id, now_ns};
use crate::cgroups::{Cgroup, Hierarchies};
use crate::flags::Flags;
use crate::inflight::Inflight;
use crate::isolators::chain::{ContainerPrep, Isolator, NsMode, PodInfo};
use crate::isolators::network::cni::{CniManager, PodNetwork};
use crate::isolators::registry::{self, IsolatorContext};
use crate::launcher::namespaces;
use crate::launcher::supervisor::{SupervisorBinary, SupervisorClient, SupervisorError};
use crate::provisioner::Provisioner;
use crate::state;

/// Supervisor requests that return at once.
const QUICK: Duration = Duration::from_secs(30);
/// How long a container may take to set itself up before CreateContainer gives up.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);
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

pub struct MesosContainerizer {
    flags: Arc<Flags>,
    provisioner: Arc<Provisioner>,
    isolators: Vec<Box<dyn Isolator>>,
    hierarchies: Hierarchies,
    supervisor_bin: SupervisorBinary,
    /// The pod side of network/cni: pod networks, their configs and checkpoints.
    network: Arc<CniManager>,
    tables: Mutex<Tables>,
    /// Lifecycle calls of one pod (and its containers) take its lock in turn.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    creations: Inflight<Shared<String>>,
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
    pub fn new(
        flags: Arc<Flags>,
        provisioner: Arc<Provisioner>,
    ) -> Result<Arc<MesosContainerizer>> {
        let hierarchies = Hierarchies::detect(&flags.cgroups_hierarchy)?;
        let context = IsolatorContext {
            runtime_dir: flags.runtime_dir.clone(),
            work_dir: flags.work_dir.clone(),
        };
        let isolators = registry::build(&flags.isolation, &context);
        for dir in [
            meta_dir(&flags).join("pods"),
            meta_dir(&flags).join("containers"),
        ] {
            std::fs::create_dir_all(&dir).map_err(ContainerizerError::io(&dir))?;
        }
        let supervisor_bin = SupervisorBinary::in_dir(&flags.launcher_dir)?;
        let network = Arc::new(CniManager::new(&flags));
        let containerizer = Arc::new(MesosContainerizer {
            flags,
            provisioner,
            isolators,
            hierarchies,
            supervisor_bin,
            network,
            tables: Mutex::new(Tables::default()),
            locks: Mutex::new(HashMap::new()),
            creations: Inflight::default(),
        });
        containerizer.recover()?;
        Ok(containerizer)
    }

    /// Rebuilds the tables from the checkpoints. Running pods and containers are left
    /// alone: their supervisors kept running while the daemon was away.
    fn recover(&self) -> Result<()> {
        let meta = meta_dir(&self.flags);
        let mut tables = self.tables();
        for entry in std::fs::read_dir(meta.join("pods"))
            .map_err(ContainerizerError::io(meta.join("pods")))?
            .flatten()
        {
            if let Ok(Some(pod)) = state::recover::<PodRecord>(&entry.path()) {
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
            if let Ok(Some(c)) =
                state::recover::<ContainerRecord>(&entry.path().join("container.json"))
            {
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
        Ok(())
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

    pub fn pods(&self) -> Vec<PodRecord> {
        self.tables().pods.values().cloned().collect()
    }

    pub fn containers(&self) -> Vec<ContainerRecord> {
        self.tables().containers.values().cloned().collect()
    }

    pub fn pod(&self, id: &str) -> Result<PodRecord> {
        let tables = self.tables();
        find(&tables.pods, id)
            .cloned()
            .ok_or(ContainerizerError::NotFound {
                what: "pod sandbox",
                id: id.into(),
            })
    }

    pub fn container(&self, id: &str) -> Result<ContainerRecord> {
        let tables = self.tables();
        find(&tables.containers, id)
            .cloned()
            .ok_or(ContainerizerError::NotFound {
                what: "container",
                id: id.into(),
            })
    }

    pub fn isolator_names(&self) -> Vec<&'static str> {
        self.isolators.iter().map(|i| i.name().as_str()).collect()
    }

    pub fn provisioner(&self) -> &Arc<Provisioner> {
        &self.provisioner
    }

    /// The pod networks (network/cni): readiness, pod CIDR, statistics.
    pub fn network(&self) -> &Arc<CniManager> {
        &self.network
    }

    /// The network part of a pod's verbose status: its networks and IPs, a CNI CHECK of
    /// them (which is how a live pod's network is verified from outside) and interface
    /// counters.
    pub async fn pod_network_status(&self, pod: &PodRecord) -> serde_json::Value {
        if pod.info.net_ns.is_none() {
            return serde_json::json!({ "hostNetwork": true });
        }
        let check = if pod.ready {
            match self.network.check(&pod.info.id).await {
                Ok(()) => "ok".to_string(),
                Err(e) => e.to_string(),
            }
        } else {
            "not ready".to_string()
        };
        let network = self.network.clone();
        let id = pod.info.id.clone();
        let interfaces = tokio::task::spawn_blocking(move || network.statistics(&id))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        serde_json::json!({
            "networks": pod.network.as_ref().map(|n| &n.networks),
            "check": check,
            "interfaces": match interfaces {
                Ok(stats) => serde_json::to_value(stats).unwrap_or_default(),
                Err(e) => serde_json::Value::String(e),
            },
        })
    }

    // ---- pod sandboxes (top-level containers) ----

    /// RunPodSandbox: idempotent by name for an identical config, AlreadyExists otherwise.
    pub async fn launch_pod(
        self: &Arc<Self>,
        config: cri::PodSandboxConfig,
        handler: String,
    ) -> Result<String> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| invalid("config.metadata", "is required"))?;
        for (field, value) in [
            ("config.metadata.name", &meta.name),
            ("config.metadata.namespace", &meta.namespace),
            ("config.metadata.uid", &meta.uid),
        ] {
            if value.is_empty() {
                return Err(invalid(field, "must not be empty"));
            }
        }
        if !handler.is_empty() && handler != "mesos" {
            return Err(ContainerizerError::NotFound {
                what: "runtime handler",
                id: handler,
            });
        }
        let key = pod_key(&meta);
        let id = reserve(&mut self.tables().pod_names, &key, &config, |holder| {
            format!("pod sandbox name {key:?} is reserved for {holder}")
        })?;
        if self
            .tables()
            .pods
            .get(&id)
            .is_some_and(|p| p.mesos_state == MesosState::Running)
        {
            return Ok(id);
        }
        let span = tracing::info_span!("pod", pod_id = %id);
        self.create_once(
            id,
            span,
            |t, id| t.pod_names.retain(|_, r| r.id != id),
            move |this, id| async move { this.launch_pod_uncached(&id, config, handler).await },
        )
        .await
    }

    async fn launch_pod_uncached(
        &self,
        id: &str,
        config: cri::PodSandboxConfig,
        handler: String,
    ) -> Result<()> {
        let lock = self.lock_of(id);
        let _guard = lock.lock().await;
        let options = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let host_net = options.network == cri::NamespaceMode::Node as i32;
        let host_ipc = options.ipc == cri::NamespaceMode::Node as i32;
        let pid_mode = match cri::NamespaceMode::try_from(options.pid)
            .unwrap_or(cri::NamespaceMode::Container)
        {
            cri::NamespaceMode::Pod => NsMode::Pod,
            cri::NamespaceMode::Node => NsMode::Node,
            _ => NsMode::Container,
        };
        let dir = self.flags.runtime_dir.join("pods").join(id);
        let cgroup_parent = config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default();
        let (pod_cgroup, owns_pod_cgroup) = if cgroup_parent.is_empty() {
            (
                Cgroup::at(
                    &self.hierarchies,
                    &format!("{}/{id}", self.flags.cgroups_root),
                )?,
                true,
            )
        } else {
            let cgroup = Cgroup::at(&self.hierarchies, &cgroup_parent)
                .map_err(|e| invalid("config.linux.cgroup_parent", &e.to_string()))?;
            (cgroup, false)
        };
        let supervisor_cgroup = pod_cgroup.child(id)?;
        let hostname = if config.hostname.is_empty() {
            if host_net {
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .unwrap_or_default()
            } else {
                meta_name(&config)
            }
        } else {
            config.hostname.clone()
        };
        let mut record = PodRecord {
            info: PodInfo {
                id: id.to_string(),
                config: config.clone(),
                dir: dir.clone(),
                net_ns: None,
                uts_ns: None,
                ipc_ns: None,
                pid_mode,
                cgroup: pod_cgroup.clone(),
            },
            created_at: now_ns(),
            ready: false,
            mesos_state: MesosState::Preparing,
            runtime_handler: handler,
            supervisor_pid: 0,
            supervisor_socket: self
                .flags
                .runtime_dir
                .join("sv")
                .join(format!("{}.sock", &id[..16])),
            supervisor_cgroup,
            owns_pod_cgroup,
            network: None,
        };
        // The checkpoint comes first, so that a crash at any later step leaves a record
        // that StopPodSandbox/RemovePodSandbox can clean up from.
        self.checkpoint_pod(&record)?;
        self.tables().pods.insert(id.to_string(), record.clone());

        // Host-network pods skip CNI entirely: no namespace, no plugins.
        let targets = namespaces::Pinned {
            net: (!host_net).then(|| self.network.netns_path(id)),
            uts: (!host_net).then(|| dir.join("ns").join("uts")),
            ipc: (!host_ipc).then(|| dir.join("ns").join("ipc")),
        };
        let result = self.prepare_pod(&mut record, &hostname, targets).await;
        match result {
            Ok(()) => {
                record.ready = true;
                record.mesos_state = MesosState::Running;
                self.checkpoint_pod(&record)?;
                self.tables().pods.insert(id.to_string(), record);
                tracing::info!("pod sandbox ready");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "pod sandbox launch failed; undoing");
                if let Err(undo) = self.teardown_pod(&record).await {
                    // The CNI checkpoint and the namespace stay for the orphan cleanup
                    // of a later recovery; the pod itself is gone for the kubelet.
                    tracing::warn!(error = %undo, "pod network not released");
                }
                self.forget_pod(id);
                Err(e)
            }
        }
    }

    async fn prepare_pod(
        &self,
        record: &mut PodRecord,
        hostname: &str,
        targets: namespaces::Pinned,
    ) -> Result<()> {
        let dir = record.info.dir.clone();
        std::fs::create_dir_all(&dir).map_err(ContainerizerError::io(&dir))?;
        if targets.ipc.is_some() {
            mount_shm(&dir.join("shm"))?;
        }
        let host = hostname.to_string();
        let pinned = tokio::task::spawn_blocking(move || namespaces::create(&targets, &host))
            .await
            .map_err(|e| ContainerizerError::Internal(e.to_string()))??;
        record.info.net_ns = pinned.net;
        record.info.uts_ns = pinned.uts;
        record.info.ipc_ns = pinned.ipc;
        self.checkpoint_pod(record)?;
        if let Some(netns) = record.info.net_ns.clone() {
            let network = self
                .network
                .attach(&record.info.id, &record.info.config, &netns)
                .await?;
            record.network = Some(network);
            self.checkpoint_pod(record)?;
        }
        write_pod_files(&record.info, hostname, record.network.as_ref())?;

        record.info.cgroup.create()?;
        record.supervisor_cgroup.create()?;
        let socket = record.supervisor_socket.clone();
        if let Some(parent) = socket.parent() {
            std::fs::create_dir_all(parent).map_err(ContainerizerError::io(parent))?;
        }
        if socket.exists() {
            // A 16-hex-digit prefix collision, or a leftover: refuse rather than share.
            return Err(ContainerizerError::Internal(format!(
                "supervisor socket {} already exists",
                socket.display()
            )));
        }
        let pid = self
            .supervisor_bin
            .spawn(
                &record.info.id,
                &socket,
                &dir.join("supervisor"),
                record.info.pid_mode == NsMode::Pod,
            )
            .await?;
        record.supervisor_pid = pid;
        self.checkpoint_pod(record)?;
        // Charged to the pod, as the pause container is under containerd.
        record.supervisor_cgroup.add(pid)?;
        Ok(())
    }

    fn checkpoint_pod(&self, record: &PodRecord) -> Result<()> {
        state::checkpoint(
            &meta_dir(&self.flags)
                .join("pods")
                .join(format!("{}.json", record.info.id)),
            record,
        )?;
        Ok(())
    }

    fn forget_pod(&self, id: &str) {
        let _ = std::fs::remove_file(
            meta_dir(&self.flags)
                .join("pods")
                .join(format!("{id}.json")),
        );
        let mut tables = self.tables();
        tables.pods.remove(id);
        tables.pod_names.retain(|_, r| r.id != id);
    }

    /// StopPodSandbox: kills every container, stops the supervisor, releases the pod's
    /// namespaces and shm. Idempotent, also for unknown ids.
    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        let Ok(record) = self.pod(id) else {
            return Ok(());
        };
        let lock = self.lock_of(&record.info.id);
        let _guard = lock.lock().await;
        self.stop_pod_locked(&record.info.id).await
    }

    async fn stop_pod_locked(&self, id: &str) -> Result<()> {
        let Ok(mut record) = self.pod(id) else {
            return Ok(());
        };
        let containers = self.container_ids_of(&id);
        for cid in containers {
            self.stop_container_locked(&cid, 0).await?;
        }
        if record.ready || record.mesos_state != MesosState::Destroying {
            record.ready = false;
            record.mesos_state = MesosState::Destroying;
            self.checkpoint_pod(&record)?;
            self.tables().pods.insert(id.to_string(), record.clone());
        }
        self.teardown_pod(&record).await
    }

    /// Releases what a pod holds on the host, whatever state it got to. Idempotent. A
    /// failed CNI DEL is returned (StopPodSandbox fails, kubelet retries) and keeps the
    /// network namespace and checkpoint for the retry.
    async fn teardown_pod(&self, record: &PodRecord) -> Result<()> {
        let client = SupervisorClient::new(&record.supervisor_socket);
        if record.supervisor_pid > 0
            && let Err(e) = client.call(&Request::Shutdown, QUICK).await
        {
            tracing::debug!(error = %e, "supervisor shutdown");
        }
        let supervisor_cgroup = record.supervisor_cgroup.clone();
        let _ = tokio::task::spawn_blocking(move || supervisor_cgroup.kill_all(KILL_TIMEOUT)).await;
        let _ = std::fs::remove_file(&record.supervisor_socket);
        // DEL while the namespace still exists, so the plugins also remove what is inside.
        let detached = self.network.detach(&record.info.id).await;
        let pinned = namespaces::Pinned {
            net: record.info.net_ns.clone().filter(|_| detached.is_ok()),
            uts: record.info.uts_ns.clone(),
            ipc: record.info.ipc_ns.clone(),
        };
        namespaces::remove(&pinned);
        if detached.is_ok() {
            self.network.forget(&record.info.id);
        }
        // Without our own IPC namespace there is no shm mount of ours to remove.
        let shm = record.info.dir.join("shm");
        let _ = nix::mount::umount2(&shm, nix::mount::MntFlags::MNT_DETACH);
        detached.map_err(Into::into)
    }

    /// RemovePodSandbox: stops the pod, removes its containers and everything it left.
    /// Idempotent.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        let Ok(record) = self.pod(id) else {
            return Ok(());
        };
        let id = record.info.id.clone();
        let lock = self.lock_of(&id);
        let _guard = lock.lock().await;
        self.stop_pod_locked(&id).await?;
        let containers = self.container_ids_of(&id);
        for cid in containers {
            self.remove_container_locked(&cid).await?;
        }
        record.supervisor_cgroup.destroy()?;
        if record.owns_pod_cgroup {
            record.info.cgroup.destroy()?;
        }
        let dir = record.info.dir.clone();
        let _ = std::fs::remove_dir_all(&dir);
        self.forget_pod(&id);
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        tracing::info!(pod_id = %id, "pod sandbox removed");
        Ok(())
    }

    // ---- containers (nested containers) ----

    /// CreateContainer: provision, prepare, fork blocked. Idempotent by name for an
    /// identical config.
    pub async fn launch_container(
        self: &Arc<Self>,
        pod_id: &str,
        config: cri::ContainerConfig,
    ) -> Result<String> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| invalid("config.metadata", "is required"))?;
        if meta.name.is_empty() {
            return Err(invalid("config.metadata.name", "must not be empty"));
        }
        if config.image.as_ref().is_none_or(|i| i.image.is_empty()) {
            return Err(invalid("config.image.image", "must not be empty"));
        }
        let pod = self.pod(pod_id)?;
        if !pod.ready {
            return Err(ContainerizerError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.info.id
            )));
        }
        let pod_id = pod.info.id.clone();
        let key = container_key(&pod_id, &meta);
        let id = reserve(
            &mut self.tables().container_names,
            &key,
            &config,
            |holder| {
                format!(
                    "container name {:?} (attempt {}) in pod {pod_id} is reserved for {holder}",
                    meta.name, meta.attempt
                )
            },
        )?;
        if self.tables().containers.get(&id).is_some_and(|c| c.pid > 0) {
            return Ok(id);
        }
        let span = tracing::info_span!("container", pod_id = %pod_id, container_id = %id);
        self.create_once(
            id,
            span,
            |t, id| t.container_names.retain(|_, r| r.id != id),
            move |this, id| async move { this.launch_container_uncached(&id, pod, config).await },
        )
        .await
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

    async fn launch_container_uncached(
        &self,
        id: &str,
        pod: PodRecord,
        config: cri::ContainerConfig,
    ) -> Result<()> {
        let lock = self.lock_of(&pod.info.id);
        let _guard = lock.lock().await;
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let container_dir = meta_dir(&self.flags).join("containers").join(id);
        let log_path = {
            let dir = &pod.info.config.log_directory;
            (!dir.is_empty() && !config.log_path.is_empty())
                .then(|| Path::new(dir).join(&config.log_path))
        };
        let mut record = ContainerRecord {
            id: id.to_string(),
            pod_id: pod.info.id.clone(),
            config: config.clone(),
            created_at: now_ns(),
            started_at: 0,
            mesos_state: MesosState::Provisioning,
            image_id: String::new(),
            rootfs: PathBuf::new(),
            backend: self.provisioner.backend_name().to_string(),
            cgroup: pod.info.cgroup.child(id)?,
            pid: 0,
            log_path: log_path.clone(),
            stop_signal: libc::SIGTERM,
            process: ProcessSpec::default(),
            exit_file: container_dir.join("exit"),
            start_error: None,
        };
        self.checkpoint_container(&record)?;
        self.tables()
            .containers
            .insert(id.to_string(), record.clone());

        let result = self.prepare_and_fork(&mut record, &pod, &image_name).await;
        match result {
            Ok(()) => {
                self.checkpoint_container(&record)?;
                self.tables().containers.insert(id.to_string(), record);
                tracing::info!("container created");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "container launch failed; undoing");
                self.destroy_container_resources(&record).await;
                let _ = std::fs::remove_dir_all(&container_dir);
                self.tables().containers.remove(id);
                Err(e)
            }
        }
    }

    async fn prepare_and_fork(
        &self,
        record: &mut ContainerRecord,
        pod: &PodRecord,
        image_name: &str,
    ) -> Result<()> {
        // PROVISIONING
        let provisioned = self.provisioner.provision(&record.id, image_name).await?;
        record.rootfs = provisioned.rootfs.clone();
        record.image_id = provisioned.image.id.clone();
        record.stop_signal = crate::isolators::docker::runtime::stop_signal(&provisioned.image);
        // PREPARING: isolators in chain order, each adding to one launch info.
        record.mesos_state = MesosState::Preparing;
        self.checkpoint_container(record)?;
        record.cgroup.create()?;
        let mut launch = LaunchInfo {
            container_id: record.id.clone(),
            cgroup_procs: record.cgroup.procs_files(),
            log_path: record.log_path.clone(),
            exit_file: record.exit_file.clone(),
            ..Default::default()
        };
        let prep = ContainerPrep {
            id: &record.id,
            pod: &pod.info,
            config: &record.config,
            image: &provisioned.image,
            rootfs: &provisioned.rootfs,
            cgroup: &record.cgroup,
        };
        for isolator in &self.isolators {
            isolator.prepare(&prep, &mut launch).await?;
        }
        record.process = launch.process.clone();
        self.checkpoint_container(record)?;
        // The launcher: the supervisor forks the container, which sets itself up and
        // then blocks on its start pipe.
        let client = SupervisorClient::new(&pod.supervisor_socket);
        match client
            .call(&Request::Launch(Box::new(launch)), LAUNCH_TIMEOUT)
            .await?
        {
            Response::Launched { pid } => record.pid = pid,
            other => return Err(unexpected(&other)),
        }
        Ok(())
    }

    fn checkpoint_container(&self, record: &ContainerRecord) -> Result<()> {
        let path = meta_dir(&self.flags)
            .join("containers")
            .join(&record.id)
            .join("container.json");
        state::checkpoint(&path, record)?;
        Ok(())
    }

    /// StartContainer: ISOLATING → FETCHING → release the pipe → RUNNING.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let record = self.container(id)?;
        let lock = self.lock_of(&record.pod_id);
        let _guard = lock.lock().await;
        let mut record = self.container(id)?;
        let exit = record.exit();
        match record.cri_state(&exit) {
            cri::ContainerState::ContainerCreated => {}
            state => {
                return Err(ContainerizerError::FailedPrecondition(format!(
                    "container {} is {}, not CREATED",
                    record.id,
                    state.as_str_name()
                )));
            }
        }
        let pod = self.pod(&record.pod_id)?;
        record.mesos_state = MesosState::Isolating;
        // As Mesos: isolate runs for all isolators at once (no dependencies among them).
        let isolations = self
            .isolators
            .iter()
            .map(|i| i.isolate(&record.id, record.pid));
        for result in futures_util::future::join_all(isolations).await {
            result?;
        }
        // Nothing to fetch yet: URIs come with the fetcher.
        record.mesos_state = MesosState::Fetching;
        let client = SupervisorClient::new(&pod.supervisor_socket);
        match client
            .call(
                &Request::Start {
                    container_id: record.id.clone(),
                },
                LAUNCH_TIMEOUT,
            )
            .await
        {
            Ok(Response::Started { pid }) => {
                record.pid = pid;
                record.started_at = now_ns();
                record.mesos_state = MesosState::Running;
                self.checkpoint_container(&record)?;
                self.tables().containers.insert(record.id.clone(), record);
                Ok(())
            }
            Ok(other) => Err(unexpected(&other)),
            Err(SupervisorError::Refused(message)) => {
                record.start_error = Some(message.clone());
                self.checkpoint_container(&record)?;
                self.tables().containers.insert(record.id.clone(), record);
                Err(ContainerizerError::FailedPrecondition(format!(
                    "failed to start container {id}: {message}"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// StopContainer: the stop signal, then SIGKILL of the whole cgroup after `timeout`
    /// seconds. Idempotent, also for unknown ids.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let Ok(record) = self.container(id) else {
            return Ok(());
        };
        let lock = self.lock_of(&record.pod_id);
        let _guard = lock.lock().await;
        self.stop_container_locked(&record.id, timeout).await
    }

    async fn stop_container_locked(&self, id: &str, timeout: i64) -> Result<()> {
        let Ok(record) = self.container(id) else {
            return Ok(());
        };
        if record.exit().is_some() || record.start_error.is_some() || record.pid <= 0 {
            return Ok(());
        }
        let pod = self.pod(&record.pod_id)?;
        let client = SupervisorClient::new(&pod.supervisor_socket);
        if timeout > 0 && record.started_at > 0 {
            let signal = Request::Signal {
                container_id: record.id.clone(),
                signal: record.stop_signal,
                all: false,
            };
            if let Err(e) = client.call(&signal, QUICK).await {
                tracing::debug!(error = %e, "stop signal");
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout as u64);
            while tokio::time::Instant::now() < deadline {
                if record.exit().is_some() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The grace period is over (or there was none): kill every process of the container.
        let kill = Request::Signal {
            container_id: record.id.clone(),
            signal: libc::SIGKILL,
            all: true,
        };
        if let Err(e) = client.call(&kill, QUICK).await {
            tracing::debug!(error = %e, "kill through the supervisor");
        }
        let cgroup = record.cgroup.clone();
        tokio::task::spawn_blocking(move || cgroup.kill_all(KILL_TIMEOUT))
            .await
            .map_err(|e| ContainerizerError::Internal(e.to_string()))??;
        // The supervisor writes the exit status once it reaped the init.
        let deadline = tokio::time::Instant::now() + KILL_TIMEOUT;
        while record.exit().is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if record.exit().is_none() {
            // The supervisor is gone (pod torn down, or it died): record the kill ourselves.
            let exit = cri_mesos_supervisor::protocol::ExitRecord {
                exit_code: 128 + libc::SIGKILL,
                signal: Some(libc::SIGKILL),
                finished_at_ns: now_ns(),
                started_at_ns: record.started_at,
                oom_killed: false,
                error: None,
            };
            state::checkpoint(&record.exit_file, &exit)?;
        }
        Ok(())
    }

    /// RemoveContainer: force-stops it, then undoes its launch. Idempotent.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let Ok(record) = self.container(id) else {
            return Ok(());
        };
        let lock = self.lock_of(&record.pod_id);
        let _guard = lock.lock().await;
        self.remove_container_locked(&record.id).await
    }

    async fn remove_container_locked(&self, id: &str) -> Result<()> {
        let Ok(mut record) = self.container(id) else {
            return Ok(());
        };
        self.stop_container_locked(id, 0).await?;
        record.mesos_state = MesosState::Destroying;
        if let Ok(pod) = self.pod(&record.pod_id) {
            let client = SupervisorClient::new(&pod.supervisor_socket);
            let _ = client
                .call(
                    &Request::Forget {
                        container_id: id.to_string(),
                    },
                    QUICK,
                )
                .await;
        }
        self.destroy_container_resources(&record).await;
        let dir = meta_dir(&self.flags).join("containers").join(id);
        std::fs::remove_dir_all(&dir)
            .or_else(ignore_missing)
            .map_err(ContainerizerError::io(&dir))?;
        let mut tables = self.tables();
        tables.containers.remove(id);
        tables.container_names.retain(|_, r| r.id != id);
        Ok(())
    }

    /// Cleanup in reverse isolator order, then the cgroup and the rootfs.
    async fn destroy_container_resources(&self, record: &ContainerRecord) {
        let cgroup = record.cgroup.clone();
        let _ = tokio::task::spawn_blocking(move || cgroup.kill_all(KILL_TIMEOUT)).await;
        for isolator in self.isolators.iter().rev() {
            if let Err(e) = isolator.cleanup(&record.id).await {
                tracing::warn!(isolator = %isolator.name(), error = %e, "cleanup failed");
            }
        }
        if let Err(e) = record.cgroup.destroy() {
            tracing::warn!(error = %e, "container cgroup not removed");
        }
        if let Err(e) = self.provisioner.destroy(&record.id).await {
            tracing::warn!(error = %e, "container rootfs not removed");
        }
    }

    /// ExecSync: runs a command in the container's namespaces and cgroup, with the
    /// container's env, user and cwd.
    pub async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout: i64) -> Result<ExecResult> {
        let record = self.container(id)?;
        if record.cri_state(&record.exit()) != cri::ContainerState::ContainerRunning {
            return Err(ContainerizerError::FailedPrecondition(format!(
                "container {} is not running",
                record.id
            )));
        }
        if cmd.is_empty() {
            return Err(invalid("cmd", "must not be empty"));
        }
        let pod = self.pod(&record.pod_id)?;
        let exec = ExecInfo {
            container_id: record.id.clone(),
            args: cmd,
            env: record.process.env.clone(),
            cwd: record.process.cwd.clone(),
            uid: record.process.uid,
            gid: record.process.gid,
            additional_gids: record.process.additional_gids.clone(),
            tty: false,
            timeout_ms: (timeout > 0).then(|| timeout as u64 * 1000),
            stdin_b64: None,
        };
        // The supervisor enforces the timeout; ours only guards against a lost reply.
        let guard = if timeout > 0 {
            Duration::from_secs(timeout as u64 + 30)
        } else {
            Duration::from_secs(24 * 3600)
        };
        let client = SupervisorClient::new(&pod.supervisor_socket);
        match client.call(&Request::Exec(Box::new(exec)), guard).await {
            Ok(Response::ExecResult(result)) if result.timed_out => {
                Err(ContainerizerError::DeadlineExceeded(format!(
                    "command timed out after {timeout}s in container {}",
                    record.id
                )))
            }
            Ok(Response::ExecResult(result)) => Ok(result),
            Ok(other) => Err(unexpected(&other)),
            Err(SupervisorError::Refused(message)) => {
                Err(ContainerizerError::FailedPrecondition(message))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// ReopenContainerLog: the supervisor reopens the log file by path.
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let record = self.container(id)?;
        if record.cri_state(&record.exit()) != cri::ContainerState::ContainerRunning {
            return Err(ContainerizerError::FailedPrecondition(format!(
                "container {} is not running",
                record.id
            )));
        }
        let pod = self.pod(&record.pod_id)?;
        let client = SupervisorClient::new(&pod.supervisor_socket);
        match client
            .call(
                &Request::ReopenLog {
                    container_id: record.id.clone(),
                },
                QUICK,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(SupervisorError::Refused(message)) => {
                Err(ContainerizerError::FailedPrecondition(message))
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn unexpected(reply: &Response) -> ContainerizerError {
    ContainerizerError::Internal(format!("unexpected supervisor reply: {reply:?}"))
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

fn meta_name(config: &cri::PodSandboxConfig) -> String {
    config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default()
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

/// /etc/hostname, /etc/hosts and /etc/resolv.conf of the pod, bound into its containers.
fn write_pod_files(pod: &PodInfo, hostname: &str, network: Option<&PodNetwork>) -> Result<()> {
    state::atomic_write(&pod.hostname_file(), format!("{hostname}\n").as_bytes())?;
    let mut hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n".to_string();
    for ip in network.map(PodNetwork::pod_ips).unwrap_or_default() {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    state::atomic_write(&pod.hosts_file(), hosts.as_bytes())?;
    // Priority as Mesos: the pod's DNSConfig, then the network's DNS, then the host's.
    let network_dns = network.and_then(PodNetwork::dns);
    let resolv = match pod
        .config
        .dns_config
        .as_ref()
        .filter(|d| !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty())
    {
        Some(dns) => {
            let mut text = String::new();
            for server in &dns.servers {
                text.push_str(&format!("nameserver {server}\n"));
            }
            if !dns.searches.is_empty() {
                text.push_str(&format!("search {}\n", dns.searches.join(" ")));
            }
            if !dns.options.is_empty() {
                text.push_str(&format!("options {}\n", dns.options.join(" ")));
            }
            text
        }
        None => match network_dns {
            Some(dns) => {
                let mut text = String::new();
                for server in &dns.nameservers {
                    text.push_str(&format!("nameserver {server}\n"));
                }
                if !dns.search.is_empty() {
                    text.push_str(&format!("search {}\n", dns.search.join(" ")));
                } else if !dns.domain.is_empty() {
                    text.push_str(&format!("domain {}\n", dns.domain));
                }
                if !dns.options.is_empty() {
                    text.push_str(&format!("options {}\n", dns.options.join(" ")));
                }
                text
            }
            None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        },
    };
    state::atomic_write(&pod.resolv_conf(), resolv.as_bytes())?;
    Ok(())
}

fn mount_shm(path: &Path) -> Result<()> {
    use nix::mount::MsFlags;
    std::fs::create_dir_all(path).map_err(ContainerizerError::io(path))?;
    nix::mount::mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,size={SHM_SIZE}").as_str()),
    )
    .map_err(|e| ContainerizerError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

#[tonic::async_trait]
impl super::Containerizer for MesosContainerizer {
    async fn recover(&self) -> Result<()> {
        let known: Vec<String> = self.tables().containers.keys().cloned().collect();
        for isolator in &self.isolators {
            isolator.recover(&known).await?;
        }
        Ok(())
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
                let parent = Some(self.container(&value)?.pod_id);
                Ok(super::ContainerId { value, parent })
            }
        }
    }

    async fn exec(&self, id: &super::ContainerId) -> Result<()> {
        self.start_container(&id.value).await
    }

    async fn update(
        &self,
        id: &super::ContainerId,
        resources: &cri::LinuxContainerResources,
    ) -> Result<()> {
        let record = self.container(&id.value)?;
        for isolator in &self.isolators {
            isolator.update(&record.id, resources).await?;
        }
        Ok(())
    }

    async fn usage(
        &self,
        id: &super::ContainerId,
    ) -> Result<crate::isolators::chain::ResourceStatistics> {
        let record = self.container(&id.value)?;
        let mut statistics = crate::isolators::chain::ResourceStatistics {
            timestamp_ns: now_ns(),
            ..Default::default()
        };
        // As Mesos's await(): one isolator failing leaves the others' figures.
        for isolator in &self.isolators {
            if let Err(e) = isolator.usage(&record.id, &mut statistics).await {
                tracing::debug!(isolator = %isolator.name(), error = %e, "usage");
            }
        }
        Ok(statistics)
    }

    async fn status(&self, id: &super::ContainerId) -> Result<serde_json::Value> {
        if let Ok(record) = self.container(&id.value) {
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
            }));
        }
        let pod = self.pod(&id.value)?;
        Ok(serde_json::json!({
            "mesosState": pod.mesos_state,
            "supervisorPid": pod.supervisor_pid,
            "supervisorSocket": pod.supervisor_socket,
            "cgroup": pod.info.cgroup.relative,
            "netNamespace": pod.info.net_ns,
            "utsNamespace": pod.info.uts_ns,
            "ipcNamespace": pod.info.ipc_ns,
            "pidMode": pod.info.pid_mode,
            "isolators": self.isolator_names(),
            "config": pod.info.config,
            "network": self.pod_network_status(&pod).await,
        }))
    }

    async fn wait(
        &self,
        id: &super::ContainerId,
    ) -> Result<Option<cri_mesos_supervisor::protocol::ExitRecord>> {
        Ok(self.container(&id.value)?.exit())
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

    async fn containers(&self) -> Vec<super::ContainerId> {
        let tables = self.tables();
        let pods = tables.pods.keys().map(|id| super::ContainerId {
            value: id.clone(),
            parent: None,
        });
        let nested = tables.containers.values().map(|c| super::ContainerId {
            value: c.id.clone(),
            parent: Some(c.pod_id.clone()),
        });
        pods.chain(nested).collect()
    }
}
