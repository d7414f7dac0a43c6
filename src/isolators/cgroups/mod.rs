//! The cgroups isolator (Mesos's `cgroups/*` family: one object for every selected
//! controller, as Mesos has one). `cgroups/devices` is implied: the CRI's device rules
//! always apply. The resource controllers (`cgroups/cpu`, `cgroups/mem`, `cgroups/pids`,
//! `cgroups/cpuset`, `cgroups/hugetlb`) write `LinuxContainerResources` into the
//! container's cgroup before its process joins it, again on UpdateContainerResources, and
//! into the pod's cgroup when the runtime owns it.
//!
//! Every request is checked whole before the first write: a field whose isolator is not
//! selected is `FailedPrecondition` naming it (never dropped), a bad value is
//! `InvalidArgument`, and a value the kernel refuses puts back what was written.

pub mod bpf;
pub mod cpu;
pub mod cpuset;
pub mod devices;
pub mod hugetlb;
pub mod mem;
pub mod pids;
pub mod plan;
pub mod unified;
pub mod usage;

use cri_mesos_supervisor::protocol::LaunchInfo;
use k8s_cri::v1 as cri;

use crate::cgroups::{Cgroup, Hierarchies};
use crate::isolators::IsolatorName;
use crate::isolators::chain::{
    ContainerPrep, ContainerUpdate, Isolator, IsolatorError, PodInfo, PodIsolation, PodNamespaces,
    PodPrep, ResourceStatistics,
};
use plan::Plan;

/// How the isolator signs errors that are not about a field.
pub const NAME: &str = "cgroups";

/// Which resource controllers `--isolation` selected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Selected {
    pub cpu: bool,
    pub mem: bool,
    pub pids: bool,
    pub cpuset: bool,
    pub hugetlb: bool,
}

impl Selected {
    pub fn from_chain(chain: &[IsolatorName]) -> Selected {
        let has = |n: &str| chain.iter().any(|i| i.as_str() == n);
        Selected {
            cpu: has("cgroups/cpu"),
            mem: has("cgroups/mem"),
            pids: has("cgroups/pids"),
            cpuset: has("cgroups/cpuset"),
            hugetlb: has("cgroups/hugetlb"),
        }
    }

    pub fn has(&self, isolator: &str) -> bool {
        match isolator {
            "cgroups/cpu" => self.cpu,
            "cgroups/mem" => self.mem,
            "cgroups/pids" => self.pids,
            "cgroups/cpuset" => self.cpuset,
            "cgroups/hugetlb" => self.hugetlb,
            _ => false,
        }
    }

    /// The kernel's names of the selected controllers.
    fn controllers(&self) -> Vec<&'static str> {
        [
            (self.cpu, "cpu"),
            (self.mem, "memory"),
            (self.pids, "pids"),
            (self.cpuset, "cpuset"),
            (self.hugetlb, "hugetlb"),
        ]
        .into_iter()
        .filter_map(|(on, c)| on.then_some(c))
        .collect()
    }
}

pub(crate) fn field(prefix: &str, name: &str) -> String {
    format!("{prefix}.{name}")
}

pub(crate) fn invalid(field: String, reason: impl Into<String>) -> IsolatorError {
    IsolatorError::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

fn not_selected(field: String, isolator: &str) -> IsolatorError {
    IsolatorError::FailedPrecondition {
        field,
        reason: format!("needs the {isolator} isolator, which --isolation does not name"),
    }
}

fn no_controller(field: String, controller: &str) -> IsolatorError {
    IsolatorError::FailedPrecondition {
        field,
        reason: format!("this host has no {controller} cgroup controller mounted"),
    }
}

/// The cgroups isolator.
#[derive(Debug, Clone)]
pub struct Cgroups {
    name: IsolatorName,
    pub selected: Selected,
    pub hierarchies: Hierarchies,
    /// `--cgroups_pids_limit`: every container's `pids.max` (0: none).
    pub pids_limit: u64,
}

impl Cgroups {
    /// The isolator for the `cgroups/*` names of `chain` (it is listed under the first).
    pub fn new(chain: &[IsolatorName], hierarchies: Hierarchies, pids_limit: u64) -> Cgroups {
        let name = chain
            .iter()
            .copied()
            .find(|n| n.as_str().starts_with("cgroups/"))
            .unwrap_or(IsolatorName("cgroups/devices"));
        Cgroups {
            name,
            selected: Selected::from_chain(chain),
            hierarchies,
            pids_limit,
        }
    }

    /// The checks that need no file: every set field has its isolator, every value is
    /// within what the kernel takes.
    pub fn validate(
        &self,
        r: &cri::LinuxContainerResources,
        prefix: &str,
    ) -> Result<(), IsolatorError> {
        let s = &self.selected;
        for (set, name, isolator, on) in [
            (r.cpu_shares != 0, "cpu_shares", "cgroups/cpu", s.cpu),
            (r.cpu_quota != 0, "cpu_quota", "cgroups/cpu", s.cpu),
            (r.cpu_period != 0, "cpu_period", "cgroups/cpu", s.cpu),
            (
                r.memory_limit_in_bytes != 0,
                "memory_limit_in_bytes",
                "cgroups/mem",
                s.mem,
            ),
            (
                r.memory_swap_limit_in_bytes != 0,
                "memory_swap_limit_in_bytes",
                "cgroups/mem",
                s.mem,
            ),
            (
                !r.cpuset_cpus.is_empty(),
                "cpuset_cpus",
                "cgroups/cpuset",
                s.cpuset,
            ),
            (
                !r.cpuset_mems.is_empty(),
                "cpuset_mems",
                "cgroups/cpuset",
                s.cpuset,
            ),
            (
                hugetlb::any_nonzero(r),
                "hugepage_limits",
                "cgroups/hugetlb",
                s.hugetlb,
            ),
        ] {
            if set && !on {
                return Err(not_selected(field(prefix, name), isolator));
            }
        }
        cpu::validate(r, prefix)?;
        let mem_version = self.hierarchies.controller("memory").map(|(_, v)| v);
        mem::validate(r, mem_version, prefix)?;
        cpuset::validate(r, prefix)?;
        hugetlb::validate(r, prefix)?;
        Ok(())
    }

    /// The writes `r` makes to `cgroup` (validated first); reads the files it needs
    /// (which exist, what memsw is now), so it runs off the async runtime.
    pub fn plan(
        &self,
        r: &cri::LinuxContainerResources,
        cgroup: &Cgroup,
        prefix: &str,
        pids_limit: u64,
    ) -> Result<Plan, IsolatorError> {
        self.validate(r, prefix)?;
        let h = &self.hierarchies;
        let mut plan = Plan::default();
        let cpu_set = r.cpu_shares != 0 || r.cpu_quota != 0 || r.cpu_period != 0;
        if cpu_set {
            let dir = cgroup
                .controller_dir(h, "cpu")
                .ok_or_else(|| no_controller(field(prefix, "cpu_shares"), "cpu"))?;
            cpu::plan(r, &dir, prefix, &mut plan);
        }
        if !r.cpuset_cpus.is_empty() || !r.cpuset_mems.is_empty() {
            let dir = cgroup
                .controller_dir(h, "cpuset")
                .ok_or_else(|| no_controller(field(prefix, "cpuset_cpus"), "cpuset"))?;
            cpuset::plan(r, &dir, prefix, &mut plan);
        }
        if r.memory_limit_in_bytes != 0 || r.memory_swap_limit_in_bytes != 0 {
            let dir = cgroup
                .controller_dir(h, "memory")
                .ok_or_else(|| no_controller(field(prefix, "memory_limit_in_bytes"), "memory"))?;
            mem::plan(r, &dir, prefix, &mut plan)?;
        }
        // All-zero limits without the isolator or the controller: nothing may use huge
        // pages that nothing grants... and nothing can be written; kubelet sends them
        // on every node, so they are not refused.
        if self.selected.hugetlb && !r.hugepage_limits.is_empty() {
            match cgroup.controller_dir(h, "hugetlb") {
                Some(dir) => hugetlb::plan(r, &dir, prefix, &mut plan)?,
                None if hugetlb::any_nonzero(r) => {
                    return Err(no_controller(field(prefix, "hugepage_limits"), "hugetlb"));
                }
                None => {}
            }
        }
        if pids_limit > 0 {
            let dir = cgroup
                .controller_dir(h, "pids")
                .ok_or_else(|| no_controller(pids::FIELD.to_string(), "pids"))?;
            pids::plan(pids_limit, &dir, &mut plan);
        }
        unified::plan(&r.unified, &self.selected, h, cgroup, prefix, &mut plan)?;
        Ok(plan)
    }

    /// Creates what the cgroup needs to take the limits (v2 controllers enabled down its
    /// path), then writes them: one request, checked whole, undone on refusal.
    fn apply(
        &self,
        r: &cri::LinuxContainerResources,
        cgroup: &Cgroup,
        prefix: &str,
        pids_limit: u64,
    ) -> Result<(), IsolatorError> {
        cgroup
            .enable_v2(&self.hierarchies, &self.selected.controllers())
            .map_err(|e| IsolatorError::Other {
                isolator: NAME,
                reason: e.to_string(),
            })?;
        self.plan(r, cgroup, prefix, pids_limit)?.apply()
    }
}

/// The cgroup's files, read off the async threads.
async fn read_usage(
    h: &Hierarchies,
    cgroup: &Cgroup,
    mut statistics: ResourceStatistics,
) -> Result<ResourceStatistics, IsolatorError> {
    let (h, cgroup) = (h.clone(), cgroup.clone());
    blocking(move || {
        usage::read(&h, &cgroup, &mut statistics);
        Ok(statistics)
    })
    .await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IsolatorError> + Send + 'static,
) -> Result<T, IsolatorError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| IsolatorError::Other {
            isolator: NAME,
            reason: e.to_string(),
        })?
}

/// A pod's limits: what its containers may use together (`resources`, which kubelet
/// sums) plus what the runtime class says the sandbox itself costs (`overhead`).
pub fn pod_limits(linux: &cri::LinuxPodSandboxConfig) -> Option<cri::LinuxContainerResources> {
    let (r, o) = (linux.resources.as_ref(), linux.overhead.as_ref());
    if r.is_none() && o.is_none() {
        return None;
    }
    let r = r.cloned().unwrap_or_default();
    let o = o.cloned().unwrap_or_default();
    // An unlimited pod stays unlimited whatever its overhead.
    let add = |a: i64, b: i64| if a > 0 { a + b.max(0) } else { a };
    Some(cri::LinuxContainerResources {
        cpu_shares: r.cpu_shares + o.cpu_shares,
        cpu_quota: add(r.cpu_quota, o.cpu_quota),
        cpu_period: r.cpu_period,
        memory_limit_in_bytes: add(r.memory_limit_in_bytes, o.memory_limit_in_bytes),
        memory_swap_limit_in_bytes: add(r.memory_swap_limit_in_bytes, o.memory_limit_in_bytes),
        ..r
    })
}

const POD_PREFIX: &str = "config.linux.resources";

#[tonic::async_trait]
impl Isolator for Cgroups {
    fn name(&self) -> IsolatorName {
        self.name
    }

    /// The limits and device rules are written before the container's process joins its
    /// cgroup (it does so first thing after the fork), so nothing it runs is ever
    /// without them.
    async fn prepare(
        &self,
        container: &ContainerPrep<'_>,
        _launch: &mut LaunchInfo,
    ) -> Result<(), IsolatorError> {
        let resources = container
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .unwrap_or_default();
        self.validate(&resources, POD_PREFIX)?;
        let privileged = crate::isolators::linux::privileged(container.config);
        let rules = devices::rules(&container.config.devices, privileged)?;
        let (this, cgroup) = (self.clone(), container.cgroup.clone());
        let pids_limit = if self.selected.pids {
            self.pids_limit
        } else {
            0
        };
        blocking(move || {
            this.apply(&resources, &cgroup, POD_PREFIX, pids_limit)?;
            devices::apply(&cgroup.dirs, &rules)
        })
        .await
    }

    async fn usage(
        &self,
        _container_id: &str,
        cgroup: &Cgroup,
        statistics: &mut ResourceStatistics,
    ) -> Result<(), IsolatorError> {
        *statistics = read_usage(&self.hierarchies, cgroup, statistics.clone()).await?;
        Ok(())
    }

    /// The pod cgroup's figures: every container's and the supervisor's together.
    async fn usage_pod(
        &self,
        pod: &PodInfo,
        statistics: &mut ResourceStatistics,
    ) -> Result<(), IsolatorError> {
        *statistics = read_usage(&self.hierarchies, &pod.cgroup, statistics.clone()).await?;
        Ok(())
    }

    /// UpdateContainerResources: `container.resources` is what is to be in force (the
    /// request over what was). A memory limit below what the container uses now is
    /// refused rather than written: v1 would reclaim and may fail half-way, v2's
    /// `memory.max` would reclaim and then OOM-kill.
    async fn update(&self, container: &ContainerUpdate<'_>) -> Result<(), IsolatorError> {
        let resources = container.resources.clone();
        self.validate(&resources, "linux")?;
        let (this, cgroup) = (self.clone(), container.cgroup.clone());
        blocking(move || {
            if resources.memory_limit_in_bytes > 0
                && let Some(dir) = cgroup.controller_dir(&this.hierarchies, "memory")
                && let Some(usage) = mem::usage(&dir)
                && usage > resources.memory_limit_in_bytes as u64
            {
                return Err(IsolatorError::FailedPrecondition {
                    field: "linux.memory_limit_in_bytes".into(),
                    reason: format!(
                        "{} is below what the container uses now ({usage} bytes)",
                        resources.memory_limit_in_bytes
                    ),
                });
            }
            // pids.max is the node's and was written at create: not touched here.
            this.apply(&resources, &cgroup, "linux", 0)
        })
        .await
    }

    /// Checked before the pod has anything: a pod refused here left nothing behind.
    /// Under a `cgroup_parent` the values are kubelet's to write, and not checked here.
    async fn prepare_pod(
        &self,
        pod: &PodPrep<'_>,
        _namespaces: &mut PodNamespaces,
    ) -> Result<(), IsolatorError> {
        if let Some(linux) = pod
            .config
            .linux
            .as_ref()
            .filter(|l| l.cgroup_parent.is_empty())
        {
            if let Some(r) = &linux.resources {
                self.validate(r, POD_PREFIX)?;
            }
            if let Some(o) = &linux.overhead {
                self.validate(o, "config.linux.overhead")?;
            }
        }
        Ok(())
    }

    /// The pod's limits go to its cgroup when the runtime made it (no `cgroup_parent`);
    /// under a `cgroup_parent` kubelet owns the pod cgroup and has written them itself.
    async fn isolate_pod(
        &self,
        pod: &PodInfo,
        _isolation: &mut PodIsolation,
    ) -> Result<(), IsolatorError> {
        let Some(linux) = &pod.config.linux else {
            return Ok(());
        };
        if !linux.cgroup_parent.is_empty() {
            return Ok(());
        }
        let Some(limits) = pod_limits(linux) else {
            return Ok(());
        };
        let (this, cgroup) = (self.clone(), pod.cgroup.clone());
        blocking(move || {
            cgroup.create().map_err(|e| IsolatorError::Other {
                isolator: NAME,
                reason: e.to_string(),
            })?;
            this.apply(&limits, &cgroup, POD_PREFIX, 0)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolators::select;

    fn isolator(isolation: &str, h: Hierarchies) -> Cgroups {
        Cgroups::new(&select(isolation).unwrap(), h, 0)
    }

    fn no_hierarchies() -> Hierarchies {
        Hierarchies {
            v1: vec![],
            v2: None,
            pure_v2: false,
            v2_controllers: vec![],
        }
    }

    #[test]
    fn a_field_without_its_isolator_is_a_failed_precondition() {
        let c = isolator("cgroups/cpu", no_hierarchies());
        let r = cri::LinuxContainerResources {
            memory_limit_in_bytes: 1 << 20,
            ..Default::default()
        };
        let e = c.validate(&r, "x").unwrap_err();
        assert!(
            matches!(e, IsolatorError::FailedPrecondition { ref field, ref reason } if field == "x.memory_limit_in_bytes" && reason.contains("cgroups/mem")),
            "{e}"
        );
        // Zero hugepage limits (kubelet's "none") are no request.
        let r = cri::LinuxContainerResources {
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 0,
            }],
            ..Default::default()
        };
        c.validate(&r, "x").unwrap();
    }

    #[test]
    fn a_field_without_its_controller_is_a_failed_precondition() {
        let c = isolator("cgroups/cpu,cgroups/mem", no_hierarchies());
        let cg = Cgroup {
            relative: "a".into(),
            dirs: vec![],
        };
        let r = cri::LinuxContainerResources {
            cpu_shares: 100,
            ..Default::default()
        };
        let e = c.plan(&r, &cg, "x", 0).unwrap_err();
        assert!(matches!(e, IsolatorError::FailedPrecondition { .. }), "{e}");
        assert!(
            c.plan(&Default::default(), &cg, "x", 0)
                .unwrap()
                .writes
                .is_empty()
        );
    }

    #[test]
    fn unified_keys_need_v2_controllers_and_their_isolator() {
        let t = tempfile::tempdir().unwrap();
        let v2 = t.path().join("unified");
        std::fs::create_dir_all(v2.join("a")).unwrap();
        std::fs::write(v2.join("a/hugetlb.2MB.max"), "max\n").unwrap();
        let h = Hierarchies {
            v1: vec![(vec!["memory".into()], t.path().join("memory"))],
            v2: Some(v2.clone()),
            pure_v2: false,
            v2_controllers: vec!["hugetlb".into()],
        };
        let cg = Cgroup {
            relative: "a".into(),
            dirs: vec![],
        };
        let with = |k: &str| cri::LinuxContainerResources {
            unified: [(k.to_string(), "0".to_string())].into(),
            ..Default::default()
        };
        let c = isolator("cgroups/mem,cgroups/hugetlb", h.clone());
        let p = c.plan(&with("hugetlb.2MB.max"), &cg, "x", 0).unwrap();
        assert_eq!(p.writes[0].file, v2.join("a/hugetlb.2MB.max"));
        let e = c.plan(&with("memory.high"), &cg, "x", 0).unwrap_err();
        assert!(
            matches!(e, IsolatorError::InvalidArgument { .. }) && e.to_string().contains("v1"),
            "{e}"
        );
        for bad in ["cgroup.procs", "../x.max", "nonsense"] {
            let e = c.plan(&with(bad), &cg, "x", 0).unwrap_err();
            assert!(
                matches!(e, IsolatorError::InvalidArgument { .. }),
                "{bad}: {e}"
            );
        }
        let c = isolator("cgroups/mem", h);
        let e = c.plan(&with("hugetlb.2MB.max"), &cg, "x", 0).unwrap_err();
        assert!(matches!(e, IsolatorError::FailedPrecondition { .. }), "{e}");
    }

    #[test]
    fn pod_limits_add_the_overhead() {
        let linux = cri::LinuxPodSandboxConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_shares: 512,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                memory_limit_in_bytes: 100,
                ..Default::default()
            }),
            overhead: Some(cri::LinuxContainerResources {
                cpu_shares: 10,
                cpu_quota: 1_000,
                memory_limit_in_bytes: 5,
                ..Default::default()
            }),
            ..Default::default()
        };
        let l = pod_limits(&linux).unwrap();
        assert_eq!(
            (
                l.cpu_shares,
                l.cpu_quota,
                l.cpu_period,
                l.memory_limit_in_bytes
            ),
            (522, 51_000, 100_000, 105)
        );
        // No memory limit: the overhead does not make one.
        let linux = cri::LinuxPodSandboxConfig {
            overhead: linux.overhead.clone(),
            ..Default::default()
        };
        assert_eq!(pod_limits(&linux).unwrap().memory_limit_in_bytes, 0);
        assert!(pod_limits(&Default::default()).is_none());
    }
}
