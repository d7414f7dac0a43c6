//! The containerizer's usage figures gathered for the stats and metrics RPCs: one
//! container, many at once, a pod with its containers.

use k8s_cri::v1 as cri;
use tonic::Status;

use super::containerizer_status;
use super::{metrics, stats};
use crate::containerizer::records::{ContainerRecord, PodRecord};
use crate::containerizer::{ContainerId, Containerizer};
use crate::isolators::chain::ResourceStatistics;

pub struct Usage<'a> {
    pub containerizer: &'a dyn Containerizer,
    pub rates: &'a stats::CpuRates,
    /// Where every container's writable layer lives: the filesystem the CRI's
    /// `writable_layer` and the metrics' `device` label name.
    pub writable_fs: String,
}

impl Usage<'_> {
    async fn of_container(&self, c: &ContainerRecord) -> Result<ResourceStatistics, Status> {
        let nested = ContainerId {
            value: c.id.clone(),
            parent: Some(c.pod_id.clone()),
        };
        self.containerizer
            .usage(&nested)
            .await
            .map_err(|e| containerizer_status(&e))
    }

    async fn of_pod(&self, pod: &PodRecord) -> Result<ResourceStatistics, Status> {
        let sandbox = ContainerId {
            value: pod.id().to_string(),
            parent: None,
        };
        self.containerizer
            .usage(&sandbox)
            .await
            .map_err(|e| containerizer_status(&e))
    }

    pub async fn container(&self, c: &ContainerRecord) -> Result<cri::ContainerStats, Status> {
        let usage = self.of_container(c).await?;
        Ok(stats::container_stats(
            c,
            &usage,
            self.rates,
            &self.writable_fs,
        ))
    }

    /// Each container's stats at once; one removed meanwhile is left out.
    pub async fn containers(&self, containers: &[&ContainerRecord]) -> Vec<cri::ContainerStats> {
        futures_util::future::join_all(containers.iter().map(|c| self.container(c)))
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    pub async fn pod(&self, pod: &PodRecord) -> Result<cri::PodSandboxStats, Status> {
        self.pod_among(pod, &self.containerizer.containers()).await
    }

    /// Each pod's stats at once, from one listing of the containers.
    pub async fn pods(&self, pods: &[PodRecord]) -> Vec<Result<cri::PodSandboxStats, Status>> {
        let all = self.containerizer.containers();
        futures_util::future::join_all(pods.iter().map(|p| self.pod_among(p, &all))).await
    }

    /// `pod`'s stats with those of its containers in `all`.
    async fn pod_among(
        &self,
        pod: &PodRecord,
        all: &[ContainerRecord],
    ) -> Result<cri::PodSandboxStats, Status> {
        let usage = self.of_pod(pod).await?;
        let mine: Vec<&ContainerRecord> = all.iter().filter(|c| c.pod_id == pod.id()).collect();
        let containers = self.containers(&mine).await;
        Ok(stats::pod_stats(pod, &usage, containers, self.rates))
    }

    /// Each pod's metrics with its containers'; a pod removed meanwhile is left out, as
    /// if listed a moment later.
    pub async fn pod_metrics(&self, pods: &[PodRecord]) -> Vec<cri::PodSandboxMetrics> {
        let all = self.containerizer.containers();
        futures_util::future::join_all(pods.iter().map(|pod| {
            let all = &all;
            async move {
                let pod_usage = self.of_pod(pod).await.ok()?;
                let mine = all.iter().filter(|c| c.pod_id == pod.id());
                let usage =
                    futures_util::future::join_all(mine.map(|c| async move {
                        Some((c.clone(), self.of_container(c).await.ok()?))
                    }))
                    .await;
                let containers: Vec<_> = usage.into_iter().flatten().collect();
                Some(metrics::pod_metrics(
                    pod,
                    &pod_usage,
                    &containers,
                    &self.writable_fs,
                ))
            }
        }))
        .await
        .into_iter()
        .flatten()
        .collect()
    }
}
