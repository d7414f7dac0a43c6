//! Resources through the socket, checked as a user would: a memory hog ends OOMKilled, a
//! CPU quota throttles, a pids limit stops a fork bomb, a cpuset pins, huge page limits
//! are written on the cgroup2 side, UpdateContainerResources is seen in the files, in
//! behaviour and in ContainerStatus and survives a restart, and a bad value changes
//! nothing.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Env, container};
use cri_mesos::cgroups::{Cgroup, Hierarchies};
use k8s_cri::v1 as cri;
use tonic::Code;

const T: Duration = Duration::from_secs(30);

fn hierarchies() -> Hierarchies {
    Hierarchies::detect(std::path::Path::new("/sys/fs/cgroup")).unwrap()
}

/// The cgroup (relative path) of a container or pod, from its verbose status.
async fn cgroup_of(env: &mut Env, id: &str, pod: bool) -> Cgroup {
    let info = if pod {
        env.pod_verbose_info(id).await
    } else {
        env.verbose_info(id).await
    };
    Cgroup::at(&hierarchies(), info["cgroup"].as_str().unwrap()).unwrap()
}

/// One file of one controller of a cgroup, trimmed.
fn read(cgroup: &Cgroup, controller: &str, file: &str) -> String {
    let dir = cgroup
        .controller_dir(&hierarchies(), controller)
        .unwrap_or_else(|| panic!("no {controller} controller"));
    std::fs::read_to_string(dir.path.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.path.join(file).display()))
        .trim()
        .to_string()
}

fn with_resources(
    mut config: cri::ContainerConfig,
    r: cri::LinuxContainerResources,
) -> cri::ContainerConfig {
    config.linux.get_or_insert_with(Default::default).resources = Some(r);
    config
}

fn memory(limit: i64, swap: i64) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        memory_limit_in_bytes: limit,
        memory_swap_limit_in_bytes: swap,
        ..Default::default()
    }
}

async fn update(
    env: &mut Env,
    id: &str,
    r: cri::LinuxContainerResources,
) -> Result<(), tonic::Status> {
    env.runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(r),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// What the container's init sees in /proc/self/status, from its log.
async fn status_line(env: &mut Env, id: &str, name: &str) -> String {
    let log = common::log_path(&env.status(id).await);
    let text = common::wait_for_log(&log, T, |t| t.contains(name)).await;
    text.lines()
        .find_map(|l| {
            l.split_once(&format!("{name}:\t"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap()
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_memory_hog_ends_oom_killed_also_across_a_restart() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("oom");
    let pod_id = env.run_pod(&pod).await;
    let limit = 16 << 20;
    // dd's 64 MiB buffer is filled from /dev/zero: far past the limit, with no swap.
    let hog = &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"];
    let id = env
        .run(
            &pod_id,
            &pod,
            with_resources(container("hog", &image, hog), memory(limit, limit)),
        )
        .await;
    let cgroup = cgroup_of(&mut env, &id, false).await;
    let status = env.wait_exited(&id, T).await;
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled")
    );
    assert_eq!(
        read(&cgroup, "memory", "memory.limit_in_bytes"),
        limit.to_string()
    );
    if cgroup
        .controller_dir(&hierarchies(), "memory")
        .unwrap()
        .version
        == cri_mesos::cgroups::Version::V1
    {
        assert_eq!(
            read(&cgroup, "memory", "memory.memsw.limit_in_bytes"),
            limit.to_string()
        );
    }
    // ContainerStatus reports the limits in force.
    let linux = status.resources.unwrap().linux.unwrap();
    assert_eq!(linux.memory_limit_in_bytes, limit);

    // A second hog whose exit only a restarted daemon sees first.
    let id2 = env
        .run(
            &pod_id,
            &pod,
            with_resources(container("hog2", &image, hog), memory(limit, limit)),
        )
        .await;
    let exit_file = env
        .daemon
        .work_dir()
        .join("meta/containers")
        .join(&id2)
        .join("exit");
    env.daemon.kill9().unwrap();
    let deadline = Instant::now() + T;
    while !exit_file.exists() {
        assert!(
            Instant::now() < deadline,
            "the supervisor never wrote the exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.daemon.restart().await.unwrap();
    env.runtime = env.daemon.runtime_client().await.unwrap();
    let status = env.status(&id2).await;
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled")
    );
    // The answer is in the checkpoint: a second restart still has it.
    env.daemon.restart().await.unwrap();
    env.runtime = env.daemon.runtime_client().await.unwrap();
    assert_eq!(env.status(&id2).await.reason, "OOMKilled");
    // A container that exits on its own is not OOMKilled.
    let id3 = env
        .run(
            &pod_id,
            &pod,
            with_resources(container("ok", &image, &["true"]), memory(limit, limit)),
        )
        .await;
    let status = env.wait_exited(&id3, T).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"));
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn cpu_quota_throttles_cpuset_pins_hugetlb_is_written() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("cpu");
    let pod_id = env.run_pod(&pod).await;
    let spin = &[
        "sh",
        "-c",
        "grep Cpus_allowed_list /proc/self/status; while :; do :; done",
    ];
    let r = cri::LinuxContainerResources {
        cpu_shares: 256,
        cpu_quota: 10_000,
        cpu_period: 100_000,
        cpuset_cpus: "1".into(),
        cpuset_mems: "0".into(),
        // kubelet's "no huge pages" for every size the node has, and one real limit.
        hugepage_limits: vec![
            cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            },
            cri::HugepageLimit {
                page_size: "1GB".into(),
                limit: 0,
            },
        ],
        ..Default::default()
    };
    let id = env
        .run(
            &pod_id,
            &pod,
            with_resources(container("spin", &image, spin), r),
        )
        .await;
    let cgroup = cgroup_of(&mut env, &id, false).await;
    assert_eq!(status_line(&mut env, &id, "Cpus_allowed_list").await, "1");
    assert_eq!(read(&cgroup, "cpuset", "cpuset.cpus"), "1");
    let h = hierarchies();
    let cpu = cgroup.controller_dir(&h, "cpu").unwrap();
    let stat = match cpu.version {
        cri_mesos::cgroups::Version::V1 => {
            assert_eq!(read(&cgroup, "cpu", "cpu.cfs_quota_us"), "10000");
            assert_eq!(read(&cgroup, "cpu", "cpu.shares"), "256");
            "cpu.stat"
        }
        cri_mesos::cgroups::Version::V2 => {
            assert_eq!(read(&cgroup, "cpu", "cpu.max"), "10000 100000");
            "cpu.stat"
        }
    };
    // The spinning shell wants a whole CPU and may have a tenth: the kernel throttles it.
    let deadline = Instant::now() + T;
    loop {
        let text = read(&cgroup, "cpu", stat);
        let throttled = cri_mesos::cgroups::flat_keyed(&text, "nr_throttled").unwrap();
        if throttled > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never throttled: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hugetlb = cgroup.controller_dir(&h, "hugetlb").unwrap();
    let (f2m, f1g) = match hugetlb.version {
        cri_mesos::cgroups::Version::V2 => ("hugetlb.2MB.max", "hugetlb.1GB.max"),
        cri_mesos::cgroups::Version::V1 => {
            ("hugetlb.2MB.limit_in_bytes", "hugetlb.1GB.limit_in_bytes")
        }
    };
    assert_eq!(read(&cgroup, "hugetlb", f2m), (4 << 20).to_string());
    assert_eq!(read(&cgroup, "hugetlb", f1g), "0");
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_pids_limit_stops_a_fork_bomb() {
    let mut env = Env::start(&["--cgroups_pids_limit=16"]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("pids");
    let pod_id = env.run_pod(&pod).await;
    // Forks until refused (bounded, should the limit not hold): the shell's failed fork
    // ends it, and its pid namespace with it.
    let bomb = &[
        "sh",
        "-c",
        "i=0; while [ $i -lt 200 ]; do sleep 1000 & i=$((i+1)); done; echo all forked",
    ];
    let id = env
        .run(&pod_id, &pod, container("bomb", &image, bomb))
        .await;
    let cgroup = cgroup_of(&mut env, &id, false).await;
    assert_eq!(read(&cgroup, "pids", "pids.max"), "16");
    let status = env.wait_exited(&id, T).await;
    assert_ne!(status.exit_code, 0);
    let log = std::fs::read_to_string(common::log_path(&status)).unwrap();
    assert!(
        log.contains("can't fork") && !log.contains("all forked"),
        "{log}"
    );
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn updates_are_seen_in_files_behaviour_and_status_and_survive_a_restart() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("update");
    let pod_id = env.run_pod(&pod).await;
    let r = cri::LinuxContainerResources {
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        memory_swap_limit_in_bytes: 64 << 20,
        cpuset_cpus: "0-1".into(),
        ..Default::default()
    };
    let id = env
        .run(
            &pod_id,
            &pod,
            with_resources(container("c", &image, &["sleep", "1000"]), r.clone()),
        )
        .await;
    let cgroup = cgroup_of(&mut env, &id, false).await;
    let v1 = cgroup
        .controller_dir(&hierarchies(), "memory")
        .unwrap()
        .version
        == cri_mesos::cgroups::Version::V1;
    let (mem_file, cpu_file) = if v1 {
        ("memory.limit_in_bytes", "cpu.shares")
    } else {
        ("memory.max", "cpu.weight")
    };
    let shares_before = read(&cgroup, "cpu", cpu_file);

    // Raising memory past the memsw in force, a quota, one CPU: all live.
    let new = cri::LinuxContainerResources {
        memory_limit_in_bytes: 128 << 20,
        memory_swap_limit_in_bytes: 128 << 20,
        cpu_quota: 20_000,
        cpuset_cpus: "0".into(),
        ..Default::default()
    };
    update(&mut env, &id, new).await.unwrap();
    assert_eq!(read(&cgroup, "memory", mem_file), (128 << 20).to_string());
    assert_eq!(read(&cgroup, "cpuset", "cpuset.cpus"), "0");
    // Unset fields stayed as they were.
    assert_eq!(read(&cgroup, "cpu", cpu_file), shares_before);
    // Behaviour: a process started now in the container is pinned to CPU 0.
    let out = env
        .exec(&id, &["grep", "Cpus_allowed_list", "/proc/self/status"], 10)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().ends_with("\t0"),
        "{out:?}"
    );
    let in_force = |s: cri::ContainerStatus| s.resources.unwrap().linux.unwrap();
    let linux = in_force(env.status(&id).await);
    assert_eq!(
        (
            linux.memory_limit_in_bytes,
            linux.cpu_quota,
            linux.cpu_shares,
            linux.cpuset_cpus.as_str()
        ),
        (128 << 20, 20_000, 512, "0")
    );

    // Bad values change nothing, each named.
    let before: Vec<String> = [
        ("memory", mem_file),
        ("cpu", cpu_file),
        ("cpuset", "cpuset.cpus"),
    ]
    .iter()
    .map(|(c, f)| read(&cgroup, c, f))
    .collect();
    let bad = [
        (
            cri::LinuxContainerResources {
                cpu_shares: 1,
                ..Default::default()
            },
            Code::InvalidArgument,
            "linux.cpu_shares",
        ),
        (
            cri::LinuxContainerResources {
                cpuset_cpus: "0-".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "linux.cpuset_cpus",
        ),
        // The kernel refuses a CPU the host lacks, after the shares were written: they
        // are put back.
        (
            cri::LinuxContainerResources {
                cpu_shares: 100,
                cpuset_cpus: "63".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "linux.cpuset_cpus",
        ),
        // Below what the container uses now.
        (
            memory(4096, 4096),
            Code::FailedPrecondition,
            "linux.memory_limit_in_bytes",
        ),
        (
            cri::LinuxContainerResources {
                unified: [("memory.high".to_string(), "1".to_string())].into(),
                ..Default::default()
            },
            if v1 { Code::InvalidArgument } else { Code::Ok },
            "linux.unified[memory.high]",
        ),
    ];
    for (r, code, field) in bad {
        if code == Code::Ok {
            continue;
        }
        let e = update(&mut env, &id, r).await.unwrap_err();
        assert_eq!(e.code(), code, "{field}: {e}");
        assert!(e.message().starts_with(field), "{field}: {e}");
        let now: Vec<String> = [
            ("memory", mem_file),
            ("cpu", cpu_file),
            ("cpuset", "cpuset.cpus"),
        ]
        .iter()
        .map(|(c, f)| read(&cgroup, c, f))
        .collect();
        assert_eq!(now, before, "{field} changed something");
    }
    assert_eq!(
        in_force(env.status(&id).await).memory_limit_in_bytes,
        128 << 20
    );

    // A restart keeps what is in force.
    env.daemon.restart().await.unwrap();
    env.runtime = env.daemon.runtime_client().await.unwrap();
    let linux = in_force(env.status(&id).await);
    assert_eq!(
        (
            linux.memory_limit_in_bytes,
            linux.cpu_quota,
            linux.cpuset_cpus.as_str()
        ),
        (128 << 20, 20_000, "0")
    );
    // And a later update starts from it.
    update(
        &mut env,
        &id,
        cri::LinuxContainerResources {
            cpu_shares: 1024,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let linux = in_force(env.status(&id).await);
    assert_eq!((linux.cpu_shares, linux.cpu_quota), (1024, 20_000));
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn bad_values_at_create_leave_nothing_behind() {
    let mut env = Env::start(&["--isolation=filesystem/linux,docker/runtime,cgroups/cpu"]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("bad");
    let pod_id = env.run_pod(&pod).await;
    let pod_cgroup = cgroup_of(&mut env, &pod_id, true).await;
    let cases = [
        (
            cri::LinuxContainerResources {
                cpu_shares: 1,
                ..Default::default()
            },
            Code::InvalidArgument,
            "config.linux.resources.cpu_shares",
        ),
        (
            cri::LinuxContainerResources {
                cpu_quota: 10,
                ..Default::default()
            },
            Code::InvalidArgument,
            "config.linux.resources.cpu_quota",
        ),
        // cgroups/mem is not in --isolation: refused, not dropped.
        (
            memory(64 << 20, 0),
            Code::FailedPrecondition,
            "config.linux.resources.memory_limit_in_bytes",
        ),
        (
            cri::LinuxContainerResources {
                cpuset_cpus: "0".into(),
                ..Default::default()
            },
            Code::FailedPrecondition,
            "config.linux.resources.cpuset_cpus",
        ),
    ];
    for (i, (r, code, field)) in cases.into_iter().enumerate() {
        let name = format!("bad{i}");
        let e = env
            .create(
                &pod_id,
                &pod,
                with_resources(container(&name, &image, &["true"]), r),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{field}: {e}");
        assert!(e.message().starts_with(field), "{field}: {e}");
    }
    assert!(env.containers().await.is_empty());
    // A pod's own limits are checked before it has anything.
    let mut bad_pod = env.pod_config("badpod");
    bad_pod.linux.get_or_insert_with(Default::default).overhead = Some(memory(1 << 20, 0));
    let e = env
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(bad_pod),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(
        e.message()
            .starts_with("config.linux.overhead.memory_limit_in_bytes"),
        "{e}"
    );
    assert_eq!(env.pods().await.len(), 1);
    // Only the supervisor's cgroup is left in the pod's.
    for dir in &pod_cgroup.dirs {
        let children: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_dir())
            .map(|e| e.path())
            .collect();
        assert!(children.len() <= 1, "{children:?}");
    }
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn pod_limits_and_systemd_slices() {
    let mut env = Env::start(&["--cgroup_driver=systemd"]).await;
    let driver = env
        .runtime
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner()
        .linux
        .unwrap()
        .cgroup_driver;
    assert_eq!(driver, cri::CgroupDriver::Systemd as i32);

    // The runtime's own pod cgroup takes the pod's limits plus its overhead.
    let mut pod = env.pod_config("podlimits");
    let linux = pod.linux.get_or_insert_with(Default::default);
    linux.resources = Some(memory(64 << 20, 0));
    linux.overhead = Some(memory(8 << 20, 0));
    let pod_id = env.run_pod(&pod).await;
    let cgroup = cgroup_of(&mut env, &pod_id, true).await;
    let v1 = cgroup
        .controller_dir(&hierarchies(), "memory")
        .unwrap()
        .version
        == cri_mesos::cgroups::Version::V1;
    let file = if v1 {
        "memory.limit_in_bytes"
    } else {
        "memory.max"
    };
    assert_eq!(read(&cgroup, "memory", file), (72 << 20).to_string());
    env.stop_remove_pod(&pod_id).await;

    // A slice-style parent runs in the path systemd would give it.
    let slice = format!("crimesostest-pod{}.slice", std::process::id());
    let mut pod = env.pod_config("slice");
    pod.linux.get_or_insert_with(Default::default).cgroup_parent = slice.clone();
    let pod_id = env.run_pod(&pod).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let id = env
        .run(&pod_id, &pod, container("c", &image, &["sleep", "1000"]))
        .await;
    let expected = format!("crimesostest.slice/{slice}");
    let cgroup = cgroup_of(&mut env, &pod_id, true).await;
    assert_eq!(cgroup.relative, PathBuf::from(&expected));
    let pid = {
        let s = env
            .runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&s.info["info"]).unwrap();
        info["pid"].as_i64().unwrap()
    };
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        proc_cgroup.contains(&format!("/{expected}/")),
        "{proc_cgroup}"
    );
    // A name that is not a slice is refused, naming the field.
    let mut bad = env.pod_config("notaslice");
    bad.linux.get_or_insert_with(Default::default).cgroup_parent = "kubepods/burstable".into();
    let e = env
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(bad),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("config.linux.cgroup_parent"), "{e}");
    env.stop_remove_pod(&pod_id).await;
    // The slice is kubelet's (a cgroup_parent): the test removes it.
    Cgroup::at(&hierarchies(), "crimesostest.slice")
        .unwrap()
        .destroy()
        .unwrap();
}
