//! Nested containers: the CRI containers of a pod, from launch to removal.

use super::*;

impl MesosContainerizer {
    /// CreateContainer: provision, prepare, fork blocked. Idempotent by name for an
    /// identical config.
    pub(super) async fn launch_container(
        self: &Arc<Self>,
        pod_id: &str,
        config: cri::ContainerConfig,
    ) -> Result<String> {
        // The CRI layer (cri::validate) refused a config without metadata or image.
        let meta = config.metadata.clone().unwrap_or_default();
        let pod = self.find_pod(pod_id)?;
        if !pod.ready {
            return Err(ContainerizerError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.info.id
            )));
        }
        check_log_path(&pod.info.config.log_directory, &config.log_path).await?;
        // The CRI layer checked each annotation's shape; the allow-list is the fetcher's.
        crate::fetcher::uri::for_container(&pod.info.config.annotations, &config.annotations)
            .and_then(|uris| self.fetcher.check(&uris))
            .map_err(|e| invalid(&crate::fetcher::uri::field("config"), &e.reason))?;
        let pod_id = pod.info.id.clone();
        let key = container_key(&pod_id, &meta);
        let id = reserve(
            &mut self.tables().container_names,
            &key,
            &config,
            |holder| {
                format!(
                    "container name {} (attempt {}) in pod {pod_id} is reserved for {holder}",
                    crate::quote::quote(&meta.name),
                    meta.attempt
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

    pub(super) async fn launch_container_uncached(
        &self,
        id: &str,
        pod: PodRecord,
        config: cri::ContainerConfig,
    ) -> Result<()> {
        let lock = self.lock_of(&pod.info.id);
        let _guard = lock.lock().await;
        // The pod may have been stopped or removed while this call waited for its lock.
        let pod = match self.find_pod(&pod.info.id) {
            Ok(current) if current.ready => current,
            _ => {
                return Err(ContainerizerError::FailedPrecondition(format!(
                    "pod sandbox {} is not ready",
                    pod.info.id
                )));
            }
        };
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
            resources: None,
            oom_killed: None,
            limitation: None,
        };
        self.checkpoint_container(&record).await?;
        self.tables()
            .containers
            .insert(id.to_string(), record.clone());
        failpoint::hit("create.checkpointed");

        let result = self.prepare_and_fork(&mut record, &pod, &image_name).await;
        match result {
            Ok(()) => {
                self.checkpoint_container(&record).await?;
                self.tables().containers.insert(id.to_string(), record);
                self.events.created(id, &pod.info.id);
                self.watch_exit(id);
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

    pub(super) async fn prepare_and_fork(
        &self,
        record: &mut ContainerRecord,
        pod: &PodRecord,
        image_name: &str,
    ) -> Result<()> {
        // PROVISIONING
        let provisioned = self.provisioner.provision(&record.id, image_name).await?;
        record.rootfs = provisioned.rootfs.clone();
        record.image_id = provisioned.image.id.clone();
        // PREPARING: isolators in chain order, each adding to one launch info.
        record.mesos_state = MesosState::Preparing;
        self.checkpoint_container(record).await?;
        failpoint::hit("create.provisioned");
        record.cgroup.create()?;
        let mut launch = LaunchInfo {
            container_id: record.id.clone(),
            cgroup_procs: record.cgroup.procs_files(),
            log_path: record.log_path.clone(),
            log_directory: record
                .log_path
                .as_ref()
                .map(|_| PathBuf::from(&pod.info.config.log_directory)),
            exit_file: record.exit_file.clone(),
            ..Default::default()
        };
        let peers = self.peers_of(&record.id);
        let sandbox = sandbox_dir(&self.flags, &pod.info.id, &record.id);
        let prep = ContainerPrep {
            id: &record.id,
            pod: &pod.info,
            config: &record.config,
            image: &provisioned.image,
            rootfs: &provisioned.rootfs,
            writable: provisioned.writable.as_deref(),
            cgroup: &record.cgroup,
            peers: &peers,
            sandbox: Some(SandboxMount {
                host: &sandbox,
                container: &self.flags.sandbox_directory,
            }),
        };
        for isolator in &self.isolators {
            isolator.prepare(&prep, &mut launch).await?;
        }
        // As Mesos: the container finds its sandbox by MESOS_SANDBOX, where it is mounted,
        // or on the host when it has no rootfs of its own (no filesystem/linux).
        let seen_at = if launch.mounts.iter().any(|m| m.source == sandbox) {
            Some(self.flags.sandbox_directory.clone())
        } else if launch.rootfs.as_os_str().is_empty() {
            Some(sandbox.clone())
        } else {
            None
        };
        let fetches = !crate::fetcher::uri::for_container(
            &pod.info.config.annotations,
            &record.config.annotations,
        )
        .unwrap_or_default()
        .is_empty();
        if seen_at.is_none() && fetches {
            return Err(ContainerizerError::FailedPrecondition(format!(
                "{}: the container's sandbox cannot be mounted at {} (a CRI mount covers \
                 it, or the rootfs is read-only, as the bind backend makes it, and the image \
                 has no such directory), so what the fetcher fetched would not reach it",
                crate::fetcher::uri::field("config"),
                self.flags.sandbox_directory.display()
            )));
        }
        make_sandbox(&sandbox, launch.process.uid, launch.process.gid).await?;
        launch
            .process
            .env
            .retain(|e| !e.starts_with("MESOS_SANDBOX="));
        if let Some(at) = seen_at {
            launch
                .process
                .env
                .push(format!("MESOS_SANDBOX={}", at.display()));
        }
        record.process = launch.process.clone();
        record.stop_signal = launch.stop_signal.unwrap_or(libc::SIGTERM);
        self.checkpoint_container(record).await?;
        // The launcher: the supervisor forks the container, which sets itself up and
        // then blocks on its start pipe.
        record.pid = self
            .launcher
            .fork(&pod.supervisor_socket, launch, LAUNCH_TIMEOUT)
            .await?;
        failpoint::hit("create.forked");
        Ok(())
    }

    /// Every container but `id`, as isolators see the others.
    fn peers_of(&self, id: &str) -> Vec<ContainerPeer> {
        let records: Vec<ContainerRecord> = self
            .tables()
            .containers
            .values()
            .filter(|c| c.id != id)
            .cloned()
            .collect();
        // Exit files are read outside the tables' lock.
        records
            .into_iter()
            .map(|c| ContainerPeer {
                running: c.cri_state(&c.exit()) == cri::ContainerState::ContainerRunning,
                id: c.id,
                pod_id: c.pod_id,
                pid: c.pid,
                cgroup: c.cgroup,
            })
            .collect()
    }

    pub(super) async fn checkpoint_container(&self, record: &ContainerRecord) -> Result<()> {
        let path = meta_dir(&self.flags)
            .join("containers")
            .join(&record.id)
            .join("container.json");
        state::checkpoint_async(&path, record).await?;
        Ok(())
    }

    /// StartContainer: ISOLATING → FETCHING → release the pipe → RUNNING.
    pub(super) async fn start_container(&self, id: &str) -> Result<()> {
        let record = self.find_container(id)?;
        let lock = self.lock_of(&record.pod_id);
        let _guard = lock.lock().await;
        let mut record = self.find_container(id)?;
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
        let pod = self.find_pod(&record.pod_id)?;
        record.mesos_state = MesosState::Isolating;
        // As Mesos: isolate runs for all isolators at once (no dependencies among them).
        let isolations = self
            .isolators
            .iter()
            .map(|i| i.isolate(&record.id, record.pid));
        for result in futures_util::future::join_all(isolations).await {
            result?;
        }
        failpoint::hit("start.isolated");
        // FETCHING: the URIs of the pod and the container, into its sandbox, as its user.
        record.mesos_state = MesosState::Fetching;
        let uris = crate::fetcher::uri::for_container(
            &pod.info.config.annotations,
            &record.config.annotations,
        )
        .map_err(|e| invalid(&crate::fetcher::uri::field("config"), &e.reason))?;
        if !uris.is_empty() {
            let sandbox = sandbox_dir(&self.flags, &pod.info.id, &record.id);
            let owner = (record.process.uid, record.process.gid);
            if let Err(e) = self.fetcher.fetch(&uris, &sandbox, owner).await {
                return self.fetch_failed(record, &pod, &sandbox, e).await;
            }
        }
        match self
            .launcher
            .start(&pod.supervisor_socket, &record.id, START_TIMEOUT)
            .await
        {
            Ok(pid) => {
                failpoint::hit("start.started");
                // A quick exit's watcher may be writing the OOM answer meanwhile: one
                // writer at a time, each on the latest record.
                let _writing = self.record_writes.lock().await;
                record.oom_killed = self.find_container(id)?.oom_killed;
                record.pid = pid;
                record.started_at = now_ns();
                record.mesos_state = MesosState::Running;
                self.checkpoint_container(&record).await?;
                let cid = record.id.clone();
                self.tables().containers.insert(cid.clone(), record);
                self.events.started(&cid);
                drop(_writing);
                self.watch_limits(&cid);
                Ok(())
            }
            Err(SupervisorError::Refused(message)) => {
                let _writing = self.record_writes.lock().await;
                record.oom_killed = self.find_container(id)?.oom_killed;
                record.start_error = Some(message.clone());
                self.checkpoint_container(&record).await?;
                let cid = record.id.clone();
                self.tables().containers.insert(cid.clone(), record);
                self.events.ended_unstarted(&cid);
                Err(ContainerizerError::FailedPrecondition(format!(
                    "failed to start container {id}: {message}"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A URI could not be fetched: the container never runs. Its blocked process is
    /// killed, whatever was fetched goes, and it is EXITED with the start error.
    async fn fetch_failed(
        &self,
        mut record: ContainerRecord,
        pod: &PodRecord,
        sandbox: &Path,
        error: crate::fetcher::FetchError,
    ) -> Result<()> {
        tracing::warn!(error = %error, "fetch failed: the container does not start");
        if let Err(e) = self
            .launcher
            .signal(&pod.supervisor_socket, &record.id, libc::SIGKILL, true)
            .await
        {
            tracing::debug!(error = %e, "kill through the supervisor");
        }
        if let Err(e) = self.launcher.kill_all(&record.cgroup, KILL_TIMEOUT).await {
            tracing::warn!(error = %e, "container processes not all killed");
        }
        let dir = sandbox.to_path_buf();
        match tokio::task::spawn_blocking(move || empty_dir(&dir)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "sandbox not emptied"),
            Err(e) => tracing::warn!(error = %e, "sandbox not emptied"),
        }
        let message = error.to_string();
        let _writing = self.record_writes.lock().await;
        record.oom_killed = self.find_container(&record.id)?.oom_killed;
        record.start_error = Some(message.clone());
        self.checkpoint_container(&record).await?;
        let cid = record.id.clone();
        self.tables().containers.insert(cid.clone(), record);
        self.events.ended_unstarted(&cid);
        Err(ContainerizerError::FailedPrecondition(format!(
            "failed to start container {cid}: {message}"
        )))
    }

    /// StopContainer: the stop signal, then SIGKILL of the whole cgroup after `timeout`
    /// seconds. Idempotent, also for unknown ids.
    pub(super) async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let Ok(record) = self.find_container(id) else {
            return Ok(());
        };
        // The grace period runs without the pod's lock: kubelet stops a pod's containers
        // in parallel, and each must get its signal at once, not after its siblings' grace.
        if self.signal_and_wait(&record, timeout).await {
            return Ok(());
        }
        let lock = self.lock_of(&record.pod_id);
        let _guard = lock.lock().await;
        self.stop_container_locked(&record.id).await
    }

    /// Sends the stop signal to a running container and waits up to `timeout` seconds for
    /// it to exit; true when it did.
    async fn signal_and_wait(&self, record: &ContainerRecord, timeout: i64) -> bool {
        if record.exit().is_some() || record.start_error.is_some() {
            return true;
        }
        let Ok(pod) = self.find_pod(&record.pod_id) else {
            return false;
        };
        // Never started (still blocked on its pipe) or no grace: straight to the kill.
        if record.started_at == 0 || timeout <= 0 {
            return false;
        }
        if let Err(e) = self
            .launcher
            .signal(
                &pod.supervisor_socket,
                &record.id,
                record.stop_signal,
                false,
            )
            .await
        {
            tracing::debug!(error = %e, "stop signal");
        }
        failpoint::hit("stop.signaled");
        // terminationGracePeriodSeconds has no upper bound; a year is forever enough.
        let grace = Duration::from_secs(timeout.clamp(0, 365 * 24 * 3600) as u64);
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if record.exit().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Kills every process of the container now and makes sure its exit is recorded.
    pub(super) async fn stop_container_locked(&self, id: &str) -> Result<()> {
        let Ok(record) = self.find_container(id) else {
            return Ok(());
        };
        if record.exit().is_some() || record.start_error.is_some() || record.pid <= 0 {
            if record.exit().is_some() {
                self.observe_exit(&record.id).await?;
            }
            self.announce_stop(&record);
            return Ok(());
        }
        let pod = self.find_pod(&record.pod_id)?;
        // The grace period is over (or there was none): kill every process of the container.
        if let Err(e) = self
            .launcher
            .signal(&pod.supervisor_socket, &record.id, libc::SIGKILL, true)
            .await
        {
            tracing::debug!(error = %e, "kill through the supervisor");
        }
        self.launcher.kill_all(&record.cgroup, KILL_TIMEOUT).await?;
        failpoint::hit("stop.killed");
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
            state::checkpoint_async(&record.exit_file, &exit).await?;
        }
        // Before RemoveContainer takes the cgroup away with its OOM-kill count.
        self.observe_exit(&record.id).await?;
        self.announce_stop(&record);
        Ok(())
    }

    /// The exit status of a container once it ended, with whether the OOM killer took
    /// one of its processes. That is read from the memory cgroup the first time the
    /// exit is seen and checkpointed with the container, so a restart keeps it.
    pub(super) async fn observe_exit(
        &self,
        id: &str,
    ) -> Result<Option<cri_mesos_supervisor::protocol::ExitRecord>> {
        let record = self.find_container(id)?;
        let Some(exit) = record.exit() else {
            return Ok(None);
        };
        if record.oom_killed.is_some() {
            return Ok(Some(exit));
        }
        let (h, cgroup) = (self.hierarchies.clone(), record.cgroup.clone());
        let kills = tokio::task::spawn_blocking(move || cgroup.oom_kills(&h))
            .await
            .map_err(|e| ContainerizerError::Internal(e.to_string()))?;
        let oom = kills.unwrap_or(0) > 0;
        let _writing = self.record_writes.lock().await;
        let Ok(mut current) = self.find_container(&record.id) else {
            return Ok(Some(exit));
        };
        current.oom_killed = Some(oom);
        self.checkpoint_container(&current).await?;
        self.tables().containers.insert(current.id.clone(), current);
        if oom {
            crate::metrics::METRICS
                .oom_kills
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(container_id = %record.id, kills, "container was OOM-killed");
        }
        Ok(Some(cri_mesos_supervisor::protocol::ExitRecord {
            oom_killed: exit.oom_killed || oom,
            ..exit
        }))
    }

    /// A stop or removal under the pod's lock found the container ended: say so before
    /// anything later (its deletion) is announced. No start is in flight under the lock,
    /// so a container that never started ended unstarted.
    pub(super) fn announce_stop(&self, record: &ContainerRecord) {
        if record.exit().is_none() && record.start_error.is_none() {
            return;
        }
        if record.started_at > 0 {
            self.events.stopped(&record.id);
        } else {
            self.events.ended_unstarted(&record.id);
        }
    }

    /// RemoveContainer: force-stops it, then undoes its launch. Idempotent.
    pub(super) async fn remove_container(&self, id: &str) -> Result<()> {
        let Ok(record) = self.find_container(id) else {
            return Ok(());
        };
        let lock = self.lock_of(&record.pod_id);
        let _guard = lock.lock().await;
        self.remove_container_locked(&record.id).await
    }

    pub(super) async fn remove_container_locked(&self, id: &str) -> Result<()> {
        let Ok(mut record) = self.find_container(id) else {
            return Ok(());
        };
        self.stop_container_locked(id).await?;
        if record.mesos_state != MesosState::Destroying {
            // Checkpointed first: a crash from here on has the recovery finish the removal.
            let _writing = self.record_writes.lock().await;
            record = self.find_container(id)?;
            record.mesos_state = MesosState::Destroying;
            self.checkpoint_container(&record).await?;
            self.tables()
                .containers
                .insert(record.id.clone(), record.clone());
        }
        if let Ok(pod) = self.find_pod(&record.pod_id) {
            let _ = self.launcher.forget(&pod.supervisor_socket, id).await;
        }
        self.destroy_container_resources(&record).await;
        failpoint::hit("remove_container.destroyed");
        // A writer outside the pod's lock (the exit watcher's OOM answer) must find the
        // record gone, not checkpoint it back into a removed directory.
        let _writing = self.record_writes.lock().await;
        let dir = meta_dir(&self.flags).join("containers").join(id);
        std::fs::remove_dir_all(&dir)
            .or_else(ignore_missing)
            .map_err(ContainerizerError::io(&dir))?;
        {
            let mut tables = self.tables();
            tables.containers.remove(id);
            tables.container_names.retain(|_, r| r.id != id);
        }
        if let Some(exits) = &self.exits {
            exits.unwatch(id);
        }
        self.events.deleted(id);
        Ok(())
    }

    /// Cleanup in reverse isolator order, then the cgroup and the rootfs.
    pub(super) async fn destroy_container_resources(&self, record: &ContainerRecord) {
        if let Err(e) = self.launcher.kill_all(&record.cgroup, KILL_TIMEOUT).await {
            tracing::warn!(error = %e, "container processes not all killed");
        }
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
        // Removed with the container, as kubelet would expect of anything it cannot see.
        let sandbox = sandbox_dir(&self.flags, &record.pod_id, &record.id);
        match tokio::task::spawn_blocking(move || {
            std::fs::remove_dir_all(&sandbox).or_else(ignore_missing)
        })
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "container sandbox not removed"),
            Err(e) => tracing::warn!(error = %e, "container sandbox not removed"),
        }
    }
}

/// Creates a container's sandbox (its pod's directory too), owned by the container's
/// user and private to it.
async fn make_sandbox(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    let shown = dir.to_path_buf();
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if let Some(parent) = dir.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        match std::fs::DirBuilder::new().mode(0o750).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750))
    })
    .await
    .map_err(|e| ContainerizerError::Internal(e.to_string()))?
    .map_err(ContainerizerError::io(shown))
}

/// Removes everything in `dir` (never following a symlink), keeping `dir`.
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// `log_path` must name a file inside the pod's `log_directory` (the CRI layer has refused
/// absolute paths and `..`): a symlink planted there must not send the output elsewhere,
/// and a directory cannot be a log. The supervisor opens it the same way, beneath.
async fn check_log_path(directory: &str, log_path: &str) -> Result<()> {
    if directory.is_empty() || log_path.is_empty() {
        return Ok(());
    }
    let (dir, rel) = (PathBuf::from(directory), PathBuf::from(log_path));
    let found = tokio::task::spawn_blocking(move || {
        cri_mesos_supervisor::open_beneath(&dir, &rel, false).and_then(|f| f.metadata())
    })
    .await
    .map_err(|e| ContainerizerError::Internal(e.to_string()))?;
    let reason = match found {
        Ok(meta) if meta.is_dir() => "names a directory, not a file".to_string(),
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::EXDEV) =>
        {
            "goes through a symlink; it must stay inside the pod's log_directory".to_string()
        }
        Err(e) => e.to_string(),
    };
    Err(invalid(
        "config.log_path",
        &format!("{} {reason}", crate::quote::quote(log_path)),
    ))
}
