//! Recovery after a restart (or a crash), in Mesos's order, each step named below. What
//! a crash cut off half-way is finished or rolled back here, never left as something a
//! client cannot start, inspect or remove: a creation that was not answered is undone
//! (the client retries it), a start the supervisor carried out is recorded, a removal
//! that began is completed.

use cri_mesos_supervisor::protocol::{ContainerState as Supervised, ContainerStatus};
use serde::{Deserialize, Serialize};

use super::*;
use crate::flags::Recover;
use crate::isolators::chain::RecoveredContainer;

/// ContainerStatus.reason of a container (and the pod's `lost`) a reboot ended.
pub(super) const NODE_REBOOTED: &str = "NodeRebooted";
/// The exit code of a container whose end nobody saw (containerd's "unknown exit code").
const UNKNOWN_EXIT: i32 = 255;
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Node-wide settings a client gave that must outlive a restart (kubelet does not send
/// the pod CIDR again): `<work_dir>/meta/runtime_config.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct RuntimeConfig {
    pub pod_cidr: Option<String>,
}

/// What a recovery set aside and destroyed (verbose Status: `recovery`).
#[derive(Debug, Default, Serialize)]
pub(super) struct RecoveryReport {
    /// Checkpoints that could not be read, moved under `<work_dir>/meta/quarantine/`.
    pub quarantined: Vec<Quarantined>,
    /// What no checkpoint named and was destroyed.
    pub orphans: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct Quarantined {
    pub checkpoint: PathBuf,
    pub moved_to: PathBuf,
    pub reason: String,
}

pub(super) fn runtime_config_path(flags: &Flags) -> PathBuf {
    meta_dir(flags).join("runtime_config.json")
}

fn boot_id_path(flags: &Flags) -> PathBuf {
    meta_dir(flags).join("boot_id")
}

fn current_boot_id() -> Result<String> {
    std::fs::read_to_string(BOOT_ID)
        .map(|s| s.trim().to_string())
        .map_err(ContainerizerError::io(BOOT_ID))
}

impl MesosContainerizer {
    pub(super) async fn recover_all(&self) -> Result<()> {
        // Step 0: this daemon alone recovers (and later changes) these checkpoints: a
        // second one on the same work dir would undo the first's creations in flight.
        self.lock_work_dir()?;
        // Step 1: load the checkpoints, pods then containers, and the node's settings.
        self.recover_checkpoints()?;
        self.recover_runtime_config()?;
        // Step 1b: a reboot since the checkpoints were written ended all they name.
        let boot_id = current_boot_id()?;
        let recorded = std::fs::read_to_string(boot_id_path(&self.flags))
            .ok()
            .map(|s| s.trim().to_string());
        if let Some(recorded) = recorded.filter(|r| *r != boot_id) {
            tracing::warn!(previous = %recorded, current = %boot_id, "the node rebooted: every pod and container ended");
            self.recover_reboot(&recorded, &boot_id).await;
        }
        // Step 1c: `--recover=cleanup` destroys all that was found.
        if self.flags.recover == Recover::Cleanup {
            self.recover_cleanup().await?;
        }
        // Step 2: the launcher reattaches to the pods' supervisors.
        let sockets: Vec<PathBuf> = self
            .tables()
            .pods
            .values()
            .map(|p| p.supervisor_socket.clone())
            .collect();
        self.launcher.recover(&sockets).await?;
        // Step 3: ask each supervisor what it holds; finish or roll back what a crash
        // cut off.
        self.recover_half_done().await;
        // Step 4: each isolator's recover with the containers that are known.
        let known: Vec<String> = self.tables().containers.keys().cloned().collect();
        let (records, pods): (Vec<ContainerRecord>, HashMap<String, PodInfo>) = {
            let tables = self.tables();
            (
                tables.containers.values().cloned().collect(),
                tables
                    .pods
                    .iter()
                    .map(|(id, p)| (id.clone(), p.info.clone()))
                    .collect(),
            )
        };
        let states: Vec<RecoveredContainer<'_>> = records
            .iter()
            .filter_map(|c| {
                Some(RecoveredContainer {
                    id: &c.id,
                    pod: pods.get(&c.pod_id)?,
                    config: &c.config,
                    writable: self.provisioner.writable_of(&c.id),
                    log: c.log_path.as_deref(),
                    running: c.cri_state(&c.exit()) == cri::ContainerState::ContainerRunning,
                })
            })
            .collect();
        for isolator in &self.isolators {
            isolator.recover(&states).await?;
        }
        // What runs on is held to its limits again (Mesos's `watch` after recovery).
        for c in states.iter().filter(|c| c.running) {
            self.watch_limits(c.id);
        }
        // Step 5: exits that happened while the daemon was away; their OOM answer is
        // read now, while their cgroups still hold it.
        for id in &known {
            if let Err(e) = self.observe_exit(id).await {
                tracing::warn!(container_id = %id, error = %e, "exit not observed");
            }
        }
        // Step 6: each live supervisor is watched from now on; one that died while the
        // daemon was away has its pod marked before the first CRI call sees it.
        let supervised: Vec<(String, i32)> = self
            .tables()
            .pods
            .values()
            .filter(|p| {
                p.supervisor_pid > 0 && p.lost.is_none() && p.mesos_state == MesosState::Running
            })
            .map(|p| (p.info.id.clone(), p.supervisor_pid))
            .collect();
        for (pod_id, pid) in supervised {
            if !self.watch_supervisor(&pod_id, pid) {
                self.supervisor_died(&pod_id, pid).await?;
            }
        }
        // Step 7: orphans (no checkpoint names them) destroyed and logged.
        self.destroy_orphans().await;
        // Last: a crash before this point has the next start see the reboot again.
        state::write_async(
            &boot_id_path(&self.flags),
            format!("{boot_id}\n").into_bytes(),
        )
        .await?;
        Ok(())
    }

    fn lock_work_dir(&self) -> Result<()> {
        use nix::fcntl::{Flock, FlockArg};
        let path = meta_dir(&self.flags).join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ContainerizerError::io(&path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            ContainerizerError::FailedPrecondition(format!(
                "{}: another daemon uses this work dir ({e})",
                path.display()
            ))
        })?;
        // Held for the daemon's life: released by the kernel when it exits, however.
        *self.work_dir_lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(lock);
        Ok(())
    }

    fn report(&self) -> std::sync::MutexGuard<'_, RecoveryReport> {
        self.recovery.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets an unreadable checkpoint aside (never skipped silently): logged, moved to
    /// `<work_dir>/meta/quarantine/<kind>/`, and listed in the verbose Status.
    pub(super) fn quarantine(&self, path: &Path, kind: &str, reason: String) {
        let dir = meta_dir(&self.flags).join("quarantine").join(kind);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let moved_to = dir.join(format!("{name}.{}", now_ns()));
        let moved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::rename(path, &moved_to));
        match moved {
            Ok(()) => {
                tracing::error!(checkpoint = %path.display(), moved_to = %moved_to.display(), %reason, "unreadable checkpoint quarantined")
            }
            Err(e) => {
                tracing::error!(checkpoint = %path.display(), %reason, error = %e, "unreadable checkpoint, and it could not be moved aside")
            }
        }
        self.report().quarantined.push(Quarantined {
            checkpoint: path.to_path_buf(),
            moved_to,
            reason,
        });
    }

    /// Destroys something no checkpoint names (`what` says what), logged and listed.
    pub(super) fn destroy_orphan(
        &self,
        what: &str,
        path: &Path,
        destroy: impl FnOnce() -> std::io::Result<()>,
    ) {
        match destroy() {
            Ok(()) => tracing::warn!(path = %path.display(), "orphan destroyed: {what}"),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "orphan not destroyed: {what}")
            }
        }
        self.report()
            .orphans
            .push(format!("{what}: {}", path.display()));
    }

    /// The temp file of a checkpoint write a crash cut off (`.<name>.tmp-<uuid>`): the
    /// checkpoint itself is intact (written by rename). Removed.
    pub(super) fn is_write_leftover(&self, path: &Path) -> bool {
        let leftover = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"));
        if leftover {
            self.destroy_orphan("half-written checkpoint", path, || {
                std::fs::remove_file(path)
            });
        }
        leftover
    }

    /// Step 7: what no checkpoint names: rootfses, the pod runtime dirs and supervisor
    /// sockets, container cgroups inside known pods' cgroups.
    async fn destroy_orphans(&self) {
        let (pods, containers): (Vec<PodRecord>, std::collections::HashSet<String>) = {
            let tables = self.tables();
            (
                tables.pods.values().cloned().collect(),
                tables.containers.keys().cloned().collect(),
            )
        };
        let pod_ids: std::collections::HashSet<&str> = pods.iter().map(|p| p.id()).collect();
        let names = |dir: &Path| -> Vec<String> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        };
        let rootfses = self.flags.work_dir.join("provisioner/containers");
        for cid in names(&rootfses) {
            if !containers.contains(&cid) {
                let result = self.provisioner.destroy(&cid).await;
                self.destroy_orphan("rootfs without a container", &rootfses.join(&cid), || {
                    result.map_err(std::io::Error::other)
                });
            }
        }
        let pod_dirs = self.flags.runtime_dir.join("pods");
        for id in names(&pod_dirs) {
            if !pod_ids.contains(id.as_str()) {
                let dir = pod_dirs.join(&id);
                self.pod_host.unmount_shm(&dir.join("shm"));
                self.pod_host.unpin(&namespaces::Pinned {
                    net: None,
                    uts: Some(dir.join("ns/uts")),
                    ipc: Some(dir.join("ns/ipc")),
                });
                self.destroy_orphan("pod directory without a pod", &dir, || {
                    std::fs::remove_dir_all(&dir)
                });
            }
        }
        let sockets: std::collections::HashSet<&Path> =
            pods.iter().map(|p| p.supervisor_socket.as_path()).collect();
        let sv = self.flags.runtime_dir.join("sv");
        for name in names(&sv) {
            let socket = sv.join(&name);
            if !sockets.contains(socket.as_path()) {
                let _ = self.launcher.shutdown(&socket).await;
                self.destroy_orphan("supervisor socket without a pod", &socket, || {
                    std::fs::remove_file(&socket)
                });
            }
        }
        // Cgroups inside our pods' own (a container whose creation a crash cut off before
        // its checkpoint). Pod cgroups under `--cgroups_root` that no checkpoint names
        // are not swept: several daemons (the tests') may share that root.
        for pod in &pods {
            let Some(dir) = pod.info.cgroup.dirs.first().cloned() else {
                continue;
            };
            for name in names(&dir) {
                let known = containers.contains(&name) || name == pod.info.id;
                if known || !dir.join(&name).is_dir() {
                    continue;
                }
                // Only cgroups named like our ids: a cgroup_parent may hold kubelet's.
                if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    continue;
                }
                let Ok(cgroup) = pod.info.cgroup.child(&name) else {
                    continue;
                };
                let _ = self.launcher.kill_all(&cgroup, KILL_TIMEOUT).await;
                self.destroy_orphan(
                    "container cgroup without a container",
                    &cgroup.relative,
                    || cgroup.destroy().map_err(std::io::Error::other),
                );
            }
        }
    }

    fn recover_runtime_config(&self) -> Result<()> {
        let config: Option<RuntimeConfig> = state::recover(&runtime_config_path(&self.flags))?;
        if let Some(cidr) = config.and_then(|c| c.pod_cidr) {
            tracing::info!(pod_cidr = %cidr, "pod CIDR recovered");
            for isolator in &self.isolators {
                isolator.set_pod_cidr(Some(&cidr));
            }
        }
        Ok(())
    }

    /// After a reboot nothing of a pod runs: each is NOTREADY, each container EXITED
    /// with the reboot as its reason, and what a pod held outside the volatile dirs is
    /// released now (its networks' DEL, from the CNI state kept under the work dir).
    async fn recover_reboot(&self, previous: &str, current: &str) {
        let pods: Vec<PodRecord> = self.tables().pods.values().cloned().collect();
        let limitation = Limitation {
            reason: NODE_REBOOTED.into(),
            message: format!(
                "the node rebooted (boot {previous} -> {current}); the container did not survive it"
            ),
        };
        for mut pod in pods {
            let id = pod.info.id.clone();
            let span = tracing::info_span!("pod", pod_id = %id);
            async {
                pod.ready = false;
                pod.mesos_state = MesosState::Destroying;
                if pod.lost.is_none() {
                    pod.lost = Some(format!("{NODE_REBOOTED}: boot {previous} -> {current}"));
                }
                if let Err(e) = self.checkpoint_pod(&pod).await {
                    tracing::warn!(error = %e, "pod not checkpointed");
                }
                self.tables().pods.insert(id.clone(), pod.clone());
                self.events.recovered(&id, &id, Phase::Stopped);
                for cid in self.container_ids_of(&id) {
                    let Ok(c) = self.find_container(&cid) else {
                        continue;
                    };
                    if c.exit().is_some() || c.start_error.is_some() {
                        continue;
                    }
                    if let Err(e) = self.record_end(&cid, &limitation, UNKNOWN_EXIT, None).await {
                        tracing::warn!(container_id = %cid, error = %e, "end not recorded");
                    }
                    self.events.recovered(&cid, &id, Phase::Stopped);
                }
                if let Err(e) = self.teardown_pod(&pod).await {
                    tracing::warn!(error = %e, "pod not torn down; StopPodSandbox will retry");
                }
            }
            .instrument(span)
            .await;
        }
    }

    /// `--recover=cleanup`: every pod removed with its containers, as RemovePodSandbox
    /// would, then any container left without a pod.
    async fn recover_cleanup(&self) -> Result<()> {
        let pods: Vec<String> = self.tables().pods.keys().cloned().collect();
        tracing::warn!(pods = pods.len(), "--recover=cleanup: destroying every pod");
        for id in pods {
            self.remove_pod(&id)
                .instrument(tracing::info_span!("pod", pod_id = %id))
                .await?;
        }
        let containers: Vec<String> = self.tables().containers.keys().cloned().collect();
        for id in containers {
            self.remove_container_locked(&id).await?;
        }
        Ok(())
    }

    /// Step 3 of the recovery, pod by pod.
    async fn recover_half_done(&self) {
        let pods: Vec<PodRecord> = self.tables().pods.values().cloned().collect();
        for pod in pods {
            let span = tracing::info_span!("pod", pod_id = %pod.info.id);
            self.recover_pod(pod).instrument(span).await;
        }
    }

    async fn recover_pod(&self, pod: PodRecord) {
        {
            match pod.mesos_state {
                MesosState::Running => {}
                MesosState::Destroying => {
                    self.finish_pod_stop(&pod).await;
                    self.recover_containers(&pod, None).await;
                    return;
                }
                // RunPodSandbox never answered: undone, its retry makes a new one.
                _ => {
                    tracing::warn!("RunPodSandbox was cut off by the crash: undoing it");
                    self.roll_back_pod(&pod).await;
                    return;
                }
            }
            let states = if pod.supervisor_pid > 0 {
                match self.launcher.state(&pod.supervisor_socket).await {
                    Ok(states) => Some(states),
                    Err(e) => {
                        tracing::debug!(error = %e, "supervisor state not read");
                        None
                    }
                }
            } else {
                None
            };
            self.recover_containers(&pod, states.as_deref()).await;
        }
    }

    /// A StopPodSandbox cut off before the end: whatever it had not released yet (a
    /// pinned namespace, the supervisor's socket) is released now.
    async fn finish_pod_stop(&self, pod: &PodRecord) {
        let info = &pod.info;
        let held = [&info.net_ns, &info.uts_ns, &info.ipc_ns]
            .into_iter()
            .flatten()
            .any(|p| p.exists())
            || pod.supervisor_socket.exists();
        if !held {
            return;
        }
        tracing::warn!("StopPodSandbox was cut off by the crash: finishing it");
        if let Err(e) = self.teardown_pod(pod).await {
            tracing::warn!(error = %e, "pod not torn down; StopPodSandbox will retry");
        }
    }

    async fn roll_back_pod(&self, pod: &PodRecord) {
        let id = pod.info.id.clone();
        for cid in self.container_ids_of(&id) {
            if let Ok(c) = self.find_container(&cid) {
                self.roll_back_container(&c, pod).await;
            }
        }
        match self.teardown_pod(pod).await {
            Ok(()) => {
                if let Err(e) = self.remove_pod_leftovers(pod) {
                    tracing::warn!(error = %e, "pod cgroups not removed");
                }
                self.forget_pod(&id);
                self.events.deleted(&id);
            }
            Err(e) => {
                // As a failed launch: kept NOTREADY for StopPodSandbox to retry the DEL.
                tracing::warn!(error = %e, "pod network not released; sandbox kept NOTREADY");
                let mut kept = pod.clone();
                kept.ready = false;
                kept.mesos_state = MesosState::Destroying;
                if let Err(e) = self.checkpoint_pod(&kept).await {
                    tracing::warn!(error = %e, "pod not checkpointed");
                }
                let mut tables = self.tables();
                tables.pods.insert(id.clone(), kept);
                tables.pod_names.retain(|_, r| r.id != id);
            }
        }
    }

    /// The containers of `pod`, with what its supervisor said of them (`None`: it could
    /// not be asked).
    async fn recover_containers(&self, pod: &PodRecord, states: Option<&[Supervised]>) {
        for id in self.container_ids_of(&pod.info.id) {
            let Ok(record) = self.find_container(&id) else {
                continue;
            };
            let span = tracing::info_span!("container", container_id = %id);
            let state = states.and_then(|s| s.iter().find(|s| s.id == id));
            if let Err(e) = self
                .recover_container(record, pod, state)
                .instrument(span)
                .await
            {
                tracing::warn!(error = %e, "container not recovered");
            }
        }
    }

    async fn recover_container(
        &self,
        mut record: ContainerRecord,
        pod: &PodRecord,
        state: Option<&Supervised>,
    ) -> Result<()> {
        if record.mesos_state == MesosState::Destroying {
            tracing::warn!("RemoveContainer was cut off by the crash: finishing it");
            return self.remove_container_locked(&record.id).await;
        }
        let exit = record.exit();
        if record.pid <= 0 && exit.is_none() && record.start_error.is_none() {
            tracing::warn!("CreateContainer was cut off by the crash: undoing it");
            self.roll_back_container(&record, pod).await;
            return Ok(());
        }
        if record.started_at > 0 || record.start_error.is_some() {
            return Ok(());
        }
        // Checkpointed CREATED: a StartContainer the crash cut off may have got through.
        let started_at = match (&exit, state) {
            (Some(exit), _) => exit.started_at_ns,
            (None, Some(s)) => s.started_at_ns,
            (None, None) => 0,
        };
        let start_error = match (&exit, state) {
            (None, Some(s)) if s.status == ContainerStatus::Exited && s.started_at_ns == 0 => {
                s.error.clone()
            }
            _ => None,
        };
        if started_at == 0 && start_error.is_none() {
            return Ok(());
        }
        tracing::warn!("StartContainer was cut off by the crash after the start: recording it");
        let _writing = self.record_writes.lock().await;
        if started_at > 0 {
            record.started_at = started_at;
            record.mesos_state = MesosState::Running;
            if let Some(s) = state.filter(|s| s.pid > 0) {
                record.pid = s.pid;
            }
        }
        record.start_error = start_error;
        self.checkpoint_container(&record).await?;
        let phase = match (record.started_at > 0, exit.is_some()) {
            (true, false) => Phase::Started,
            _ => Phase::Stopped,
        };
        self.events.recovered(&record.id, &record.pod_id, phase);
        self.tables().containers.insert(record.id.clone(), record);
        Ok(())
    }

    /// Undoes a creation the client never heard of: its processes (a fork the supervisor
    /// made), the supervisor's record, the isolators' work, cgroup, rootfs, checkpoint.
    async fn roll_back_container(&self, record: &ContainerRecord, pod: &PodRecord) {
        self.destroy_container_resources(record).await;
        if pod.supervisor_pid > 0 {
            let _ = self
                .launcher
                .forget(&pod.supervisor_socket, &record.id)
                .await;
        }
        let dir = meta_dir(&self.flags).join("containers").join(&record.id);
        if let Err(e) = std::fs::remove_dir_all(&dir).or_else(ignore_missing) {
            tracing::warn!(error = %e, "container checkpoint not removed");
        }
        let mut tables = self.tables();
        tables.containers.remove(&record.id);
        tables.container_names.retain(|_, r| r.id != record.id);
        drop(tables);
        self.events.deleted(&record.id);
    }
}
