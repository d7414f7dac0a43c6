//! Limits of running containers: UpdateContainerResources through the isolators' `update`,
//! and Mesos's `watch`, through which a limit reached kills the container.

use super::*;

impl MesosContainerizer {
    /// UpdateContainerResources: the isolators' `update` with the request over what is
    /// in force, then the container's checkpoint, before the reply.
    pub(super) async fn update_container(
        &self,
        id: &str,
        request: &cri::LinuxContainerResources,
    ) -> Result<()> {
        let record = self.find_container(id)?;
        let lock = self.lock_of(&record.pod_id);
        let _guard = lock.lock().await;
        let mut record = self.find_container(id)?;
        let exit = record.exit();
        if record.cri_state(&exit) == cri::ContainerState::ContainerExited {
            return Err(ContainerizerError::FailedPrecondition(format!(
                "container {} has exited; its resources cannot change",
                record.id
            )));
        }
        let current = record.resources_in_force().unwrap_or_default();
        let resources = merge_resources(&current, request)?;
        let update = crate::isolators::chain::ContainerUpdate {
            id: &record.id,
            cgroup: &record.cgroup,
            resources: &resources,
        };
        for isolator in &self.isolators {
            isolator.update(&update).await?;
        }
        let _writing = self.record_writes.lock().await;
        record.oom_killed = self.find_container(id)?.oom_killed;
        record.resources = Some(resources);
        self.checkpoint_container(&record).await?;
        self.tables().containers.insert(record.id.clone(), record);
        Ok(())
    }

    /// Mesos's `watch`: each isolator that enforces a limit (a disk quota) is awaited
    /// while the container runs; the first limit reached kills the container, and its
    /// status says which.
    pub(super) fn watch_limits(&self, id: &str) {
        let Some(this) = self.me.upgrade() else {
            return;
        };
        let id = id.to_string();
        tokio::spawn(async move {
            let watches = this.isolators.iter().map(|i| Box::pin(i.watch(&id)));
            // Each resolves with a limit, or with None once its isolator forgets the
            // container; the first limit wins.
            let mut pending: Vec<_> = watches.collect();
            while !pending.is_empty() {
                let (reached, _, rest) = futures_util::future::select_all(pending).await;
                if let Some(limitation) = reached {
                    if let Err(e) = this.limit_reached(&id, limitation).await {
                        tracing::warn!(container_id = %id, error = %e, "limit not enforced");
                    }
                    return;
                }
                pending = rest;
            }
        });
    }

    async fn limit_reached(&self, id: &str, limitation: Limitation) -> Result<()> {
        let record = self.find_container(id)?;
        let lock = self.lock_of(&record.pod_id);
        let _guard = lock.lock().await;
        {
            let _writing = self.record_writes.lock().await;
            let mut current = self.find_container(id)?;
            if current.exit().is_some() {
                return Ok(());
            }
            tracing::warn!(container_id = %id, reason = %limitation.reason, message = %limitation.message, "limit reached: killing the container");
            current.limitation = Some(limitation);
            self.checkpoint_container(&current).await?;
            self.tables().containers.insert(current.id.clone(), current);
        }
        self.stop_container_locked(id).await
    }
}

/// An update's set fields over what is in force: 0 and "" leave a value as it is, as
/// they mean "not specified" in the CRI.
fn merge_resources(
    current: &cri::LinuxContainerResources,
    update: &cri::LinuxContainerResources,
) -> Result<cri::LinuxContainerResources> {
    // Written once, at the fork: a live change would have to reach every process.
    if update.oom_score_adj != 0 && update.oom_score_adj != current.oom_score_adj {
        return Err(invalid(
            "linux.oom_score_adj",
            "cannot change on a created container (it is set when the process starts)",
        ));
    }
    let pick = |new: i64, old: i64| if new != 0 { new } else { old };
    let pick_s = |new: &String, old: &String| {
        if new.is_empty() {
            old.clone()
        } else {
            new.clone()
        }
    };
    let mut unified = current.unified.clone();
    unified.extend(update.unified.clone());
    Ok(cri::LinuxContainerResources {
        cpu_period: pick(update.cpu_period, current.cpu_period),
        cpu_quota: pick(update.cpu_quota, current.cpu_quota),
        cpu_shares: pick(update.cpu_shares, current.cpu_shares),
        memory_limit_in_bytes: pick(update.memory_limit_in_bytes, current.memory_limit_in_bytes),
        oom_score_adj: current.oom_score_adj,
        cpuset_cpus: pick_s(&update.cpuset_cpus, &current.cpuset_cpus),
        cpuset_mems: pick_s(&update.cpuset_mems, &current.cpuset_mems),
        hugepage_limits: if update.hugepage_limits.is_empty() {
            current.hugepage_limits.clone()
        } else {
            update.hugepage_limits.clone()
        },
        unified,
        memory_swap_limit_in_bytes: pick(
            update.memory_swap_limit_in_bytes,
            current.memory_swap_limit_in_bytes,
        ),
    })
}

#[cfg(test)]
mod merge_tests {
    use super::*;

    #[test]
    fn unset_fields_keep_what_is_in_force() {
        let current = cri::LinuxContainerResources {
            cpu_shares: 512,
            memory_limit_in_bytes: 100,
            oom_score_adj: 5,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        let update = cri::LinuxContainerResources {
            cpu_quota: 20_000,
            memory_limit_in_bytes: 200,
            ..Default::default()
        };
        let merged = merge_resources(&current, &update).unwrap();
        assert_eq!(
            (
                merged.cpu_shares,
                merged.cpu_quota,
                merged.memory_limit_in_bytes,
                merged.cpuset_cpus.as_str(),
                merged.oom_score_adj
            ),
            (512, 20_000, 200, "0", 5)
        );
        let bad = cri::LinuxContainerResources {
            oom_score_adj: 7,
            ..Default::default()
        };
        assert!(merge_resources(&current, &bad).is_err());
    }
}
