//! CRI namespace mode TARGET through the CRI socket: a container (kubelet's ephemeral
//! debug container, `kubectl debug --target`) in the pid namespace of another container
//! of its pod, and the requests the runtime must refuse without leaving anything behind.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{Env, container};
use k8s_cri::v1 as cri;
use tonic::Code;

const T: Duration = Duration::from_secs(20);
const TARGET_ID: &str = "config.linux.security_context.namespace_options.target_id";

fn with_pid(
    mut config: cri::ContainerConfig,
    mode: cri::NamespaceMode,
    target_id: &str,
) -> cri::ContainerConfig {
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: mode as i32,
                target_id: target_id.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

fn pod_with_pid(env: &Env, name: &str, mode: cri::NamespaceMode) -> cri::PodSandboxConfig {
    let mut pod = env.pod_config(name);
    pod.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: mode as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    pod
}

async fn pid_ns(env: &mut Env, id: &str) -> String {
    let out = env
        .exec(id, &["readlink", "/proc/self/ns/pid"], 10)
        .await
        .unwrap_or_else(|e| panic!("exec in {id}: {e}"));
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn ps(env: &mut Env, id: &str) -> String {
    let out = env.exec(id, &["ps", "-o", "pid,args"], 10).await.unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn container_ids(env: &mut Env) -> BTreeSet<String> {
    env.runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// The child cgroups of the pod's, over every hierarchy: the supervisor's and one per
/// container.
async fn pod_cgroup_children(env: &mut Env, pod_id: &str) -> BTreeSet<String> {
    let reply = env
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&reply.info["info"]).unwrap();
    let relative = info["cgroup"].as_str().unwrap().to_string();
    let mut children = BTreeSet::new();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let Ok(entries) = std::fs::read_dir(hierarchy.path().join(&relative)) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().unwrap().is_dir() {
                children.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    children
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_target_container_is_in_the_pid_namespace_of_its_target() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("target");
    let pod_id = env.run_pod(&pod).await;
    let app = env
        .run(&pod_id, &pod, container("app", &image, &["sleep", "4242"]))
        .await;
    let other = env
        .run(
            &pod_id,
            &pod,
            container("other", &image, &["sleep", "4343"]),
        )
        .await;
    let debug = with_pid(
        container("debugger", &image, &["sleep", "4444"]),
        cri::NamespaceMode::Target,
        &app,
    );
    let debugger = env.run(&pod_id, &pod, debug).await;

    let (app_ns, debugger_ns) = (
        pid_ns(&mut env, &app).await,
        pid_ns(&mut env, &debugger).await,
    );
    assert_eq!(debugger_ns, app_ns);
    assert_ne!(pid_ns(&mut env, &other).await, app_ns);
    // The debugger sees the target's processes, the target's init as pid 1; the target
    // sees the debugger's; neither sees the other container's.
    for id in [&debugger, &app] {
        let text = ps(&mut env, id).await;
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "sleep", "4242"]),
            "{text}"
        );
        assert!(text.contains("sleep 4444"), "{text}");
        assert!(!text.contains("sleep 4343"), "{text}");
    }
    let info = env.verbose_info(&debugger).await;
    assert_eq!(info["mesosState"], "RUNNING");
    let debugger_pid = info["pid"].as_i64().unwrap() as i32;
    assert!(common::process_alive(debugger_pid));
    assert_eq!(
        env.status(&debugger).await.state,
        cri::ContainerState::ContainerRunning as i32
    );

    // The debugger lives in the target's namespace: it ends with the target's init.
    env.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: app.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    let status = env.wait_exited(&debugger, T).await;
    assert_eq!(status.exit_code, 128 + libc::SIGKILL, "{status:?}");
    assert!(env.verbose_info(&debugger).await["pid"].as_i64().is_some());

    env.stop_remove_pod(&pod_id).await;
    assert!(!common::process_alive(debugger_pid));
    assert_eq!(env.mounts_under_daemon(), Vec::<String>::new());
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_target_sharing_the_pods_pid_namespace_is_joined_too() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = pod_with_pid(&env, "target-pod", cri::NamespaceMode::Pod);
    let pod_id = env.run_pod(&pod).await;
    let app = with_pid(
        container("app", &image, &["sleep", "4242"]),
        cri::NamespaceMode::Pod,
        "",
    );
    let app = env.run(&pod_id, &pod, app).await;
    let debug = with_pid(
        container("debugger", &image, &["sleep", "4444"]),
        cri::NamespaceMode::Target,
        &app,
    );
    let debugger = env.run(&pod_id, &pod, debug).await;
    assert_eq!(
        pid_ns(&mut env, &debugger).await,
        pid_ns(&mut env, &app).await
    );
    let text = ps(&mut env, &debugger).await;
    assert!(text.contains("sleep 4242"), "{text}");
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn bad_targets_are_refused_naming_the_field_and_leave_nothing() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("bad-target");
    let pod_id = env.run_pod(&pod).await;
    let app = env
        .run(&pod_id, &pod, container("app", &image, &["sleep", "4242"]))
        .await;
    let created = env
        .create(&pod_id, &pod, container("created", &image, &["sleep", "1"]))
        .await
        .unwrap();
    let exited = env
        .run(&pod_id, &pod, container("exited", &image, &["true"]))
        .await;
    env.wait_exited(&exited, T).await;
    let elsewhere = env.pod_config("elsewhere");
    let elsewhere_id = env.run_pod(&elsewhere).await;
    let stranger = env
        .run(
            &elsewhere_id,
            &elsewhere,
            container("stranger", &image, &["sleep", "4343"]),
        )
        .await;

    let containers = container_ids(&mut env).await;
    let cgroups = pod_cgroup_children(&mut env, &pod_id).await;
    assert_eq!(
        cgroups.len(),
        4,
        "supervisor and three containers: {cgroups:?}"
    );
    let meta = env.daemon.work_dir().join("meta/containers");
    let rootfses = env.daemon.work_dir().join("provisioner/containers");
    let (metas, rootfs_count) = (entries(&meta), entries(&rootfses));
    let mounts = env.mounts_under_daemon();

    for (target, code, reason) in [
        ("", Code::InvalidArgument, "must name the target container"),
        ("no-such-container", Code::NotFound, "not found"),
        (
            stranger.as_str(),
            Code::InvalidArgument,
            "must be in the same pod sandbox",
        ),
        (created.as_str(), Code::FailedPrecondition, "is not running"),
        (exited.as_str(), Code::FailedPrecondition, "is not running"),
    ] {
        let debug = with_pid(
            container("debugger", &image, &["sleep", "4444"]),
            cri::NamespaceMode::Target,
            target,
        );
        let err = env.create(&pod_id, &pod, debug).await.unwrap_err();
        assert_eq!(err.code(), code, "target {target:?}: {err}");
        assert!(
            err.message().contains(TARGET_ID) && err.message().contains(reason),
            "target {target:?}: {}",
            err.message()
        );
        assert_eq!(
            container_ids(&mut env).await,
            containers,
            "target {target:?}"
        );
        assert_eq!(
            pod_cgroup_children(&mut env, &pod_id).await,
            cgroups,
            "no cgroup left for target {target:?}"
        );
        assert_eq!(entries(&meta), metas, "no checkpoint left");
        assert_eq!(entries(&rootfses), rootfs_count, "no rootfs left");
        assert_eq!(env.mounts_under_daemon(), mounts, "no mount left");
    }

    // Every failure freed the name: the same debugger with a good target is created.
    let debug = with_pid(
        container("debugger", &image, &["sleep", "4444"]),
        cri::NamespaceMode::Target,
        &app,
    );
    let debugger = env.run(&pod_id, &pod, debug).await;
    assert_eq!(
        pid_ns(&mut env, &debugger).await,
        pid_ns(&mut env, &app).await
    );

    env.stop_remove_pod(&elsewhere_id).await;
    env.stop_remove_pod(&pod_id).await;
    assert_eq!(env.mounts_under_daemon(), Vec::<String>::new());
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_pod_sandbox_cannot_be_target() {
    let mut env = Env::start(&[]).await;
    let pod = pod_with_pid(&env, "pod-target", cri::NamespaceMode::Target);
    let err = env
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message()
            .contains("config.linux.security_context.namespace_options.pid"),
        "{}",
        err.message()
    );
    let pods = env
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(pods.items.is_empty(), "{:?}", pods.items);
    assert_eq!(entries(&env.daemon.work_dir().join("meta/pods")), 0);
    assert_eq!(entries(&env.daemon.runtime_dir().join("pods")), 0);
    // Its name was freed: the pod with a valid mode runs.
    let pod = pod_with_pid(&env, "pod-target", cri::NamespaceMode::Container);
    let pod_id = env.run_pod(&pod).await;
    env.stop_remove_pod(&pod_id).await;
}
