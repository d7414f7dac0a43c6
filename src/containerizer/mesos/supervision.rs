//! A pod supervisor's death, noticed as it happens through its pidfd (no polling): the
//! pod turns NOTREADY, its containers' processes are killed through their cgroups and
//! they are reported EXITED with a reason naming the death. What is left is then torn
//! down by StopPodSandbox/RemovePodSandbox as for any pod, without waiting on anything:
//! every container already has its exit record.

use futures_util::future::BoxFuture;

use super::*;

/// ContainerStatus.reason of a container whose pod supervisor died under it.
pub(super) const SUPERVISOR_DIED: &str = "PodSupervisorDied";

impl MesosContainerizer {
    /// Watches the supervisor of `pod_id` (host pid `pid`) from now on. False when it is
    /// not running (or `pid` is another process): the caller handles the death.
    pub(super) fn watch_supervisor(&self, pod_id: &str, pid: i32) -> bool {
        match self.launcher.watch_supervisor(pid, pod_id) {
            Ok(exited) => {
                self.on_supervisor_exit(pod_id, pid, exited);
                true
            }
            Err(e) => {
                tracing::debug!(pod_id = %pod_id, pid, error = %e, "supervisor not running");
                false
            }
        }
    }

    /// Handles the death of `pid` once `exited` resolves, on a task of its own.
    pub(super) fn on_supervisor_exit(
        &self,
        pod_id: &str,
        pid: i32,
        exited: BoxFuture<'static, ()>,
    ) {
        let (weak, pod_id) = (self.me.clone(), pod_id.to_string());
        let span = tracing::info_span!("pod", pod_id = %pod_id);
        tokio::spawn(
            async move {
                exited.await;
                let Some(this) = weak.upgrade() else { return };
                if let Err(e) = this.supervisor_died(&pod_id, pid).await {
                    tracing::warn!(error = %e, "dead supervisor's pod not marked");
                }
            }
            .instrument(span),
        );
    }

    /// The supervisor `pid` of `pod_id` is gone. Nothing to do when the pod is being torn
    /// down (that is who ended it) or has another supervisor by now.
    pub(super) async fn supervisor_died(&self, pod_id: &str, pid: i32) -> Result<()> {
        // A removed pod's lock is gone with it and must not be made again.
        if self.find_pod(pod_id).is_err() {
            return Ok(());
        }
        let lock = self.lock_of(pod_id);
        let _guard = lock.lock().await;
        let Ok(mut pod) = self.find_pod(pod_id) else {
            return Ok(());
        };
        if pod.supervisor_pid != pid
            || pod.mesos_state == MesosState::Destroying
            || pod.lost.is_some()
        {
            return Ok(());
        }
        let message = format!("the pod's supervisor (pid {pid}) died");
        tracing::warn!(
            pid,
            "pod supervisor died: the pod is NOTREADY, its containers are killed"
        );
        pod.ready = false;
        pod.lost = Some(format!("{SUPERVISOR_DIED}: {message}"));
        self.checkpoint_pod(&pod).await?;
        self.tables().pods.insert(pod_id.to_string(), pod);
        self.events.stopped(pod_id);
        let limitation = Limitation {
            reason: SUPERVISOR_DIED.into(),
            message: format!("{message}; the container's processes were killed"),
        };
        for id in self.container_ids_of(pod_id) {
            if let Err(e) = self.end_orphaned(&id, &limitation).await {
                tracing::warn!(container_id = %id, error = %e, "orphaned container not ended");
            }
        }
        Ok(())
    }

    /// Kills what is left of a container whose supervisor is gone (it cannot reap or
    /// record anything any more) and records its end as a SIGKILL for `limitation`.
    async fn end_orphaned(&self, id: &str, limitation: &Limitation) -> Result<()> {
        let record = self.find_container(id)?;
        if record.exit().is_some() || record.start_error.is_some() {
            return Ok(());
        }
        self.launcher.kill_all(&record.cgroup, KILL_TIMEOUT).await?;
        self.record_end(id, limitation, 128 + libc::SIGKILL, Some(libc::SIGKILL))
            .await?;
        self.observe_exit(id).await?;
        Ok(())
    }

    /// Records the end of a container no supervisor will report on: why (`limitation`),
    /// then the exit record, so that whoever sees the exit sees why. Announced.
    pub(super) async fn record_end(
        &self,
        id: &str,
        limitation: &Limitation,
        exit_code: i32,
        signal: Option<i32>,
    ) -> Result<()> {
        {
            let _writing = self.record_writes.lock().await;
            let mut current = self.find_container(id)?;
            current.limitation = Some(limitation.clone());
            self.checkpoint_container(&current).await?;
            let exit = cri_mesos_supervisor::protocol::ExitRecord {
                exit_code,
                signal,
                finished_at_ns: now_ns(),
                started_at_ns: current.started_at,
                oom_killed: false,
                error: None,
            };
            state::checkpoint_async(&current.exit_file, &exit).await?;
            self.tables().containers.insert(current.id.clone(), current);
        }
        let record = self.find_container(id)?;
        self.announce_stop(&record);
        Ok(())
    }
}
