//! Failpoints: with the cargo feature `failpoints`, `CRI_MESOS_FAILPOINT=<step>` makes the
//! daemon abort (as a kill -9 would stop it: no destructor, no cleanup) when it reaches
//! the named step, so that the end-to-end tests can crash it in the middle of an
//! operation and check what the restart makes of it. Builds without the feature have no
//! failpoints and refuse the variable.
//!
//! Every step is listed in [`STEPS`] (and in the README); each is named
//! `<operation>.<what is done by then>`.

/// The environment variable naming the step to abort at.
pub const ENV: &str = "CRI_MESOS_FAILPOINT";

/// Every failpoint, in the order of the operations they cut.
pub const STEPS: &[(&str, &str)] = &[
    (
        "run_pod.checkpointed",
        "RunPodSandbox: the pod's first checkpoint written, nothing made yet",
    ),
    (
        "run_pod.namespaces",
        "RunPodSandbox: namespaces pinned, no CNI ADD yet",
    ),
    (
        "run_pod.network",
        "RunPodSandbox: CNI ADD done and checkpointed, no supervisor yet",
    ),
    (
        "run_pod.supervisor",
        "RunPodSandbox: supervisor running and checkpointed, pod not READY yet",
    ),
    (
        "create.checkpointed",
        "CreateContainer: the container's first checkpoint written, no rootfs yet",
    ),
    (
        "create.provisioned",
        "CreateContainer: rootfs provisioned and checkpointed, isolators not prepared",
    ),
    (
        "create.forked",
        "CreateContainer: the container forked (blocked on its pipe), not checkpointed as such",
    ),
    (
        "start.isolated",
        "StartContainer: isolated, the pipe not released",
    ),
    (
        "start.started",
        "StartContainer: the container execed, its start not checkpointed",
    ),
    (
        "stop.signaled",
        "StopContainer: the stop signal sent, the grace period not over",
    ),
    (
        "stop.killed",
        "StopContainer: the cgroup killed, the exit maybe not recorded",
    ),
    (
        "remove_container.destroyed",
        "RemoveContainer: processes, isolators, cgroup and rootfs gone, the checkpoint not",
    ),
    (
        "stop_pod.marked",
        "StopPodSandbox: the pod checkpointed NOTREADY, nothing torn down",
    ),
    (
        "stop_pod.supervisor",
        "StopPodSandbox: the supervisor stopped, the network not released",
    ),
    (
        "remove_pod.containers",
        "RemovePodSandbox: the pod stopped and its containers removed, its cgroups not",
    ),
    (
        "remove_pod.leftovers",
        "RemovePodSandbox: cgroups and directory removed, the checkpoint not",
    ),
    (
        "pull.staged",
        "PullImage: layers fetched into staging, the image not recorded",
    ),
];

/// Checks the variable at start: an unknown step, or failpoints in a build without them,
/// is a configuration error (a test would otherwise wait for an abort that never comes).
pub fn check() -> Result<(), String> {
    let Some(step) = std::env::var_os(ENV) else {
        return Ok(());
    };
    let step = step.to_string_lossy();
    if !cfg!(feature = "failpoints") {
        return Err(format!(
            "{ENV}={step}: this build has no failpoints (build with the cargo feature `failpoints`)"
        ));
    }
    if !STEPS.iter().any(|(name, _)| *name == step) {
        let names: Vec<&str> = STEPS.iter().map(|(name, _)| *name).collect();
        return Err(format!(
            "{ENV}={step}: no such failpoint; the failpoints are {}",
            names.join(", ")
        ));
    }
    Ok(())
}

/// Aborts the daemon if `step` is the failpoint asked for.
#[cfg(feature = "failpoints")]
pub fn hit(step: &'static str) {
    static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    debug_assert!(STEPS.iter().any(|(name, _)| *name == step), "{step}");
    let wanted = WANTED.get_or_init(|| std::env::var(ENV).ok());
    if wanted.as_deref() == Some(step) {
        eprintln!("cri-mesos: failpoint {step}: aborting");
        std::process::abort();
    }
}

/// Without the feature, a failpoint is nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_step: &'static str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_unique_and_named_operation_dot_step() {
        let mut names: Vec<&str> = STEPS.iter().map(|(name, _)| *name).collect();
        assert!(names.iter().all(|n| n.split('.').count() == 2), "{names:?}");
        names.sort();
        names.dedup();
        assert_eq!(names.len(), STEPS.len());
    }
}
