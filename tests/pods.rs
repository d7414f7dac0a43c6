//! Pods and containers through the CRI socket: the Mesos launch pipeline behind the CRI
//! lifecycle, the per-pod supervisor, logs, exec, and cleanup.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Env, container, log_records, wait_for_log};
use k8s_cri::v1 as cri;
use tonic::Code;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
#[ignore = "needs root"]
async fn a_pod_with_two_containers_runs_talks_over_loopback_and_leaves_nothing() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("two");
    let pod_id = env.run_pod(&pod).await;

    let server = env
        .run(
            &pod_id,
            &pod,
            container(
                "server",
                &image,
                &[
                    "sh",
                    "-c",
                    "echo pid=$$; echo pong | nc -l -p 8080; sleep 1000",
                ],
            ),
        )
        .await;
    let client = env
        .run(
            &pod_id,
            &pod,
            container("client", &image, &["sh", "-c", "echo pid=$$; for i in 1 2 3 4 5 6 7 8 9 10; do nc 127.0.0.1 8080 && break; sleep 0.3; done; echo done >&2; sleep 1000"]),
        )
        .await;

    let server_log = common::log_path(&env.status(&server).await);
    let client_log = common::log_path(&env.status(&client).await);
    assert!(
        client_log.starts_with(env.logs.path()),
        "log_path is absolute under log_directory"
    );
    wait_for_log(&client_log, T, |t| t.contains("pong") && t.contains("done")).await;
    let records = log_records(&client_log);
    assert!(
        records.contains(&("stdout".into(), "F".into(), "pong".into())),
        "{records:?}"
    );
    assert!(
        records.contains(&("stderr".into(), "F".into(), "done".into())),
        "{records:?}"
    );
    // Each container has its own pid namespace (the default CONTAINER pid mode).
    assert!(log_records(&server_log).contains(&("stdout".into(), "F".into(), "pid=1".into())));
    assert!(log_records(&client_log).contains(&("stdout".into(), "F".into(), "pid=1".into())));

    let exec = env
        .exec(&server, &["cat", "/etc/hostname"], 10)
        .await
        .unwrap();
    assert_eq!(exec.exit_code, 0);
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "two\n");
    let exec = env
        .exec(&server, &["sh", "-c", "echo out; echo err >&2; exit 7"], 10)
        .await
        .unwrap();
    assert_eq!(
        (
            exec.exit_code,
            exec.stdout.as_slice(),
            exec.stderr.as_slice()
        ),
        (7, &b"out\n"[..], &b"err\n"[..])
    );

    let verbose = env
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    let supervisor = info["supervisorPid"].as_i64().unwrap() as i32;
    assert!(common::process_alive(supervisor));
    let status = verbose.status.unwrap();
    assert_eq!(status.annotations["note"], "kept as is: ünïcode");
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    let container_pid = {
        let s = env
            .runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: server.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&s.info["info"]).unwrap();
        assert_eq!(info["mesosState"], "RUNNING");
        info["pid"].as_i64().unwrap() as i32
    };

    // Without a cgroup to look for, the leak check below could not fail.
    let cgroup = info["cgroup"].as_str().unwrap().to_string();
    let hierarchies = common::cgroup_hierarchies();
    assert!(
        hierarchies.iter().any(|h| h.join(&cgroup).is_dir()),
        "the pod's cgroup {cgroup} is in none of {hierarchies:?}"
    );

    env.stop_remove_pod(&pod_id).await;
    assert!(
        !common::process_alive(container_pid),
        "container process gone"
    );
    assert!(!common::process_alive(supervisor), "supervisor gone");
    assert_eq!(
        env.mounts_under_daemon(),
        Vec::<String>::new(),
        "no mount left"
    );
    for hierarchy in &hierarchies {
        let dir = hierarchy.join(&cgroup);
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    assert!(!env.daemon.runtime_dir().join("pods").join(&pod_id).exists());
    let left = env
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(left.items.is_empty());
    // Idempotent: stopping and removing again is fine.
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn pod_pid_mode_shares_one_pid_namespace() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let mut pod = env.pod_config("shared-pid");
    pod.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod_id = env.run_pod(&pod).await;
    let mut a = container("a", &image, &["sleep", "4242"]);
    a.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut b = container("b", &image, &["sleep", "4343"]);
    b.linux = a.linux.clone();
    env.run(&pod_id, &pod, a).await;
    let b = env.run(&pod_id, &pod, b).await;
    let ps = env.exec(&b, &["ps", "-o", "pid,args"], 10).await.unwrap();
    let text = String::from_utf8_lossy(&ps.stdout);
    assert!(
        text.contains("sleep 4242") && text.contains("sleep 4343"),
        "{text}"
    );
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn identical_retries_return_the_same_id_and_different_configs_conflict() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("retry");
    // Two calls in flight at once, as kubelet's retry after a deadline.
    let (mut r1, mut r2) = (env.runtime.clone(), env.runtime.clone());
    let request = cri::RunPodSandboxRequest {
        config: Some(pod.clone()),
        runtime_handler: String::new(),
    };
    let (a, b) = tokio::join!(
        r1.run_pod_sandbox(request.clone()),
        r2.run_pod_sandbox(request.clone())
    );
    let (a, b) = (
        a.unwrap().into_inner().pod_sandbox_id,
        b.unwrap().into_inner().pod_sandbox_id,
    );
    assert_eq!(a, b);
    assert_eq!(
        env.run_pod(&pod).await,
        a,
        "identical retry after completion"
    );
    let mut other = pod.clone();
    other.hostname = "different".into();
    let err = env
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(other),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().contains(&a),
        "names the holder: {}",
        err.message()
    );

    let config = container("c", &image, &["sleep", "1000"]);
    let (x, y) = tokio::join!(
        r1.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: a.clone(),
            config: Some(config.clone()),
            sandbox_config: Some(pod.clone())
        }),
        r2.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: a.clone(),
            config: Some(config.clone()),
            sandbox_config: Some(pod.clone())
        }),
    );
    let (x, y) = (
        x.unwrap().into_inner().container_id,
        y.unwrap().into_inner().container_id,
    );
    assert_eq!(x, y);
    let mut changed = config.clone();
    changed.command = vec!["sleep".into(), "5".into()];
    let err = env.create(&a, &pod, changed).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&x), "{}", err.message());
    // A restart: attempt 1 while attempt 0 still exists.
    let mut next = config.clone();
    next.metadata.as_mut().unwrap().attempt = 1;
    next.log_path = "c/1.log".into();
    let z = env.create(&a, &pod, next).await.unwrap();
    assert_ne!(z, x);
    let list = env
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.containers.len(), 2);
    env.stop_remove_pod(&a).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn stop_uses_the_image_stop_signal() {
    let mut env = Env::start(&[]).await;
    let image = env.images.configured.reference();
    env.pull(&image).await;
    let pod = env.pod_config("stopsig");
    let pod_id = env.run_pod(&pod).await;
    let mut c = container("trap", &image, &["/bin/sh", "-c"]);
    c.args = vec![
        "trap 'echo got-usr1; exit 0' USR1; echo ready; while true; do sleep 0.1; done".into(),
    ];
    let id = env.run(&pod_id, &pod, c).await;
    let log = common::log_path(&env.status(&id).await);
    wait_for_log(&log, T, |t| t.contains("ready")).await;
    env.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 30,
        })
        .await
        .unwrap();
    // Exit 0 and got-usr1 show SIGUSR1 stopped it: the SIGKILL at the timeout leaves neither.
    let status = env.wait_exited(&id, T).await;
    assert_eq!(status.exit_code, 0);
    assert_eq!(status.reason, "Completed");
    assert!(std::fs::read_to_string(&log).unwrap().contains("got-usr1"));
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn command_without_args_ignores_the_image_cmd() {
    let mut env = Env::start(&[]).await;
    let image = env.images.configured.reference();
    env.pull(&image).await;
    let pod = env.pod_config("cmd");
    let pod_id = env.run_pod(&pod).await;
    let id = env
        .run(
            &pod_id,
            &pod,
            container("only", &image, &["echo", "only-command"]),
        )
        .await;
    let status = env.wait_exited(&id, T).await;
    let text = std::fs::read_to_string(common::log_path(&status)).unwrap();
    assert!(
        text.contains("only-command") && !text.contains("from-cmd"),
        "{text}"
    );
    // The image's own Entrypoint+Cmd, env, workdir and user when the container sets none.
    let id = env
        .run(&pod_id, &pod, container("image-default", &image, &[]))
        .await;
    let status = env.wait_exited(&id, T).await;
    assert_eq!(status.exit_code, 0);
    let text = std::fs::read_to_string(common::log_path(&status)).unwrap();
    assert!(text.contains("from-cmd"), "{text}");
    let mut probe = container(
        "probe",
        &image,
        &[
            "sh",
            "-c",
            "echo foo=$FOO cwd=$(pwd) uid=$(id -u) gid=$(id -g)",
        ],
    );
    probe.log_path = "probe/0.log".into();
    let id = env.run(&pod_id, &pod, probe).await;
    let status = env.wait_exited(&id, T).await;
    let text = std::fs::read_to_string(common::log_path(&status)).unwrap();
    assert!(
        text.contains("foo=bar cwd=/work uid=1000 gid=1000"),
        "{text}"
    );
    let user = status
        .user
        .and_then(|u| u.linux)
        .expect("ContainerStatus.user");
    assert_eq!((user.uid, user.gid), (1000, 1000));
    assert!(
        user.supplemental_groups.contains(&2000),
        "app is in group extra: {user:?}"
    );
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn exec_sync_timeout_is_deadline_exceeded() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("exectimeout");
    let pod_id = env.run_pod(&pod).await;
    let id = env
        .run(
            &pod_id,
            &pod,
            container("sleeper", &image, &["sleep", "1000"]),
        )
        .await;
    let err = env.exec(&id, &["sleep", "60"], 1).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    let ps = env.exec(&id, &["ps", "-o", "args"], 10).await.unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains("sleep 60"),
        "timed-out exec killed"
    );
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn logs_reopen_after_rotation_and_long_lines_split() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("logs");
    let pod_id = env.run_pod(&pod).await;
    let long = env
        .run(
            &pod_id,
            &pod,
            container(
                "long",
                &image,
                &[
                    "sh",
                    "-c",
                    "head -c 40960 /dev/zero | tr '\\0' a; echo; echo end",
                ],
            ),
        )
        .await;
    let status = env.wait_exited(&long, T).await;
    let records = log_records(&common::log_path(&status));
    let tags: Vec<&str> = records.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(
        tags,
        ["P", "P", "F", "F"],
        "40 KiB line split in 16 KiB records"
    );
    assert_eq!(
        records.iter().take(3).map(|r| r.2.len()).sum::<usize>(),
        40960
    );
    assert!(records[0].2.len() == 16384 && records[2].2.bytes().all(|b| b == b'a'));

    let ticker = env
        .run(
            &pod_id,
            &pod,
            container(
                "ticker",
                &image,
                &[
                    "sh",
                    "-c",
                    "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.1; done",
                ],
            ),
        )
        .await;
    let log = common::log_path(&env.status(&ticker).await);
    wait_for_log(&log, T, |t| t.contains("tick3")).await;
    let rotated = log.with_extension("log.rotated");
    std::fs::rename(&log, &rotated).unwrap();
    env.runtime
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: ticker.clone(),
        })
        .await
        .unwrap();
    wait_for_log(&log, T, |t| t.contains("tick")).await;
    let old_len = std::fs::metadata(&rotated).unwrap().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        std::fs::metadata(&rotated).unwrap().len(),
        old_len,
        "nothing more goes to the renamed file"
    );
    // Not running: refused, and no new file is made.
    env.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: ticker.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    std::fs::remove_file(&log).unwrap();
    let err = env
        .runtime
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: ticker.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(!log.exists());
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn tty_output_is_logged_as_stdout() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("tty");
    let pod_id = env.run_pod(&pod).await;
    let mut c = container(
        "tty",
        &image,
        &[
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo stdio-is-a-tty; echo on-tty >&2",
        ],
    );
    c.tty = true;
    let id = env.run(&pod_id, &pod, c).await;
    let status = env.wait_exited(&id, T).await;
    let records = log_records(&common::log_path(&status));
    assert!(records.iter().all(|r| r.0 == "stdout"), "{records:?}");
    let text: Vec<&str> = records.iter().map(|r| r.2.trim_end_matches('\r')).collect();
    assert!(text.contains(&"stdio-is-a-tty"), "{text:?}");
    assert!(text.contains(&"on-tty"), "{text:?}");
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn devices_mounts_and_hosts_override() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("devices");
    let pod_id = env.run_pod(&pod).await;
    let hosts = env.logs.path().join("custom-hosts");
    std::fs::write(&hosts, "10.1.2.3 custom-host\n").unwrap();
    let mut c = container("dev", &image, &["sleep", "1000"]);
    c.devices = vec![cri::Device {
        host_path: "/dev/null".into(),
        container_path: "/dev/mynull".into(),
        permissions: "rwm".into(),
    }];
    c.mounts = vec![cri::Mount {
        container_path: "/etc/hosts".into(),
        host_path: hosts.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let id = env.run(&pod_id, &pod, c).await;
    let ls = env
        .exec(&id, &["ls", "-l", "/dev/mynull"], 10)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(
        text.starts_with('c') && text.contains("1,") && text.contains('3'),
        "{text}"
    );
    let cat = env.exec(&id, &["cat", "/etc/hosts"], 10).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "10.1.2.3 custom-host\n"
    );
    let write = env
        .exec(&id, &["sh", "-c", "echo x >> /etc/hosts"], 10)
        .await
        .unwrap();
    assert_ne!(write.exit_code, 0, "read-only mount");

    let mut bad = container("baddev", &image, &["true"]);
    bad.devices = vec![cri::Device {
        host_path: "/dev/does-not-exist".into(),
        container_path: "/dev/x".into(),
        permissions: "rwm".into(),
    }];
    let err = env.create(&pod_id, &pod, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("/dev/does-not-exist"),
        "{}",
        err.message()
    );
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn mount_propagation_rshared_and_rslave() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    // Mounting inside the container needs CAP_SYS_ADMIN: as in Kubernetes, where
    // Bidirectional propagation is for privileged containers, the container and its pod
    // are privileged.
    let mut pod = env.pod_config("propagation");
    common::pod_security(&mut pod).privileged = true;
    let pod_id = env.run_pod(&pod).await;
    // The runtime dir is made a shared mount by the daemon, as Mesos does with its dirs.
    let shared = env.daemon.runtime_dir().join("volumes-test");
    std::fs::create_dir_all(shared.join("from-container")).unwrap();
    std::fs::create_dir_all(shared.join("from-host")).unwrap();
    let mut c = container("prop", &image, &["sleep", "1000"]);
    common::container_security(&mut c).privileged = true;
    c.mounts = vec![
        cri::Mount {
            container_path: "/bidir".into(),
            host_path: shared.display().to_string(),
            propagation: cri::MountPropagation::PropagationBidirectional as i32,
            ..Default::default()
        },
        cri::Mount {
            container_path: "/slave".into(),
            host_path: shared.display().to_string(),
            propagation: cri::MountPropagation::PropagationHostToContainer as i32,
            ..Default::default()
        },
    ];
    let id = env.run(&pod_id, &pod, c).await;
    let r = env
        .exec(
            &id,
            &["mount", "-t", "tmpfs", "tmpfs", "/bidir/from-container"],
            10,
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    if !mountinfo.contains(&shared.join("from-container").display().to_string()) {
        let inside = env
            .exec(&id, &["cat", "/proc/self/mountinfo"], 10)
            .await
            .unwrap();
        panic!(
            "rshared: the host does not see the container's mount\ncontainer:\n{}\nhost:\n{}",
            String::from_utf8_lossy(&inside.stdout),
            mountinfo
                .lines()
                .filter(|l| l.contains("cri-mesos-test"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let host_mount = shared.join("from-host");
    nix::mount::mount(
        Some("tmpfs"),
        &host_mount,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    std::fs::write(host_mount.join("marker"), "hi").unwrap();
    let r = env
        .exec(&id, &["cat", "/slave/from-host/marker"], 10)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "hi",
        "rslave: the container sees the host's mount"
    );
    let _ = nix::mount::umount2(&host_mount, nix::mount::MntFlags::MNT_DETACH);
    let _ = nix::mount::umount2(
        &shared.join("from-container"),
        nix::mount::MntFlags::MNT_DETACH,
    );

    // A bidirectional mount of a path on a private mount is refused, naming it.
    let private = tempfile::tempdir().unwrap();
    nix::mount::mount(
        Some(private.path()),
        private.path(),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    nix::mount::mount(
        None::<&str>,
        private.path(),
        None::<&str>,
        nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .unwrap();
    let mut bad = container("privbidir", &image, &["true"]);
    bad.mounts = vec![cri::Mount {
        container_path: "/x".into(),
        host_path: private.path().display().to_string(),
        propagation: cri::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    let err = env.create(&pod_id, &pod, bad).await.unwrap_err();
    let _ = nix::mount::umount2(private.path(), nix::mount::MntFlags::MNT_DETACH);
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("shared"), "{}", err.message());
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn list_containers_filters() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod_a = env.pod_config("filter-a");
    let pod_b = env.pod_config("filter-b");
    let a = env.run_pod(&pod_a).await;
    let b = env.run_pod(&pod_b).await;
    let running = env
        .run(&a, &pod_a, container("running", &image, &["sleep", "1000"]))
        .await;
    let created = env
        .create(&a, &pod_a, container("created", &image, &["sleep", "1000"]))
        .await
        .unwrap();
    let other = env
        .run(&b, &pod_b, container("other", &image, &["true"]))
        .await;
    env.wait_exited(&other, T).await;
    let list = |filter: cri::ContainerFilter| {
        let mut rt = env.runtime.clone();
        async move {
            let mut ids: Vec<String> = rt
                .list_containers(cri::ListContainersRequest {
                    filter: Some(filter),
                })
                .await
                .unwrap()
                .into_inner()
                .containers
                .into_iter()
                .map(|c| c.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        list(cri::ContainerFilter {
            id: running.clone(),
            ..Default::default()
        })
        .await,
        vec![running.clone()]
    );
    assert_eq!(
        list(cri::ContainerFilter {
            pod_sandbox_id: a.clone(),
            ..Default::default()
        })
        .await,
        sorted(vec![running.clone(), created.clone()])
    );
    let state = |s: cri::ContainerState| Some(cri::ContainerStateValue { state: s as i32 });
    assert_eq!(
        list(cri::ContainerFilter {
            state: state(cri::ContainerState::ContainerRunning),
            ..Default::default()
        })
        .await,
        vec![running.clone()]
    );
    assert_eq!(
        list(cri::ContainerFilter {
            state: state(cri::ContainerState::ContainerCreated),
            ..Default::default()
        })
        .await,
        vec![created.clone()]
    );
    assert_eq!(
        list(cri::ContainerFilter {
            state: state(cri::ContainerState::ContainerExited),
            ..Default::default()
        })
        .await,
        vec![other.clone()]
    );
    let selector =
        std::collections::HashMap::from([("container".to_string(), "other".to_string())]);
    assert_eq!(
        list(cri::ContainerFilter {
            label_selector: selector,
            ..Default::default()
        })
        .await,
        vec![other.clone()]
    );
    env.stop_remove_pod(&a).await;
    env.stop_remove_pod(&b).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn failures_undo_their_own_work() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("errors");
    let pod_id = env.run_pod(&pod).await;
    let provisioned = env.daemon.work_dir().join("provisioner/containers");
    let count = || {
        std::fs::read_dir(&provisioned)
            .map(|d| d.count())
            .unwrap_or(0)
    };

    let missing = format!("{}/does-not-exist:latest", env.registry.addr());
    let err = env
        .create(&pod_id, &pod, container("missing", &missing, &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert_eq!(count(), 0);

    let mut bad_mount = container("badmount", &image, &["true"]);
    bad_mount.mounts = vec![cri::Mount {
        container_path: "relative/path".into(),
        host_path: "/tmp".into(),
        ..Default::default()
    }];
    let err = env.create(&pod_id, &pod, bad_mount).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::InvalidArgument | Code::Internal),
        "{err}"
    );
    assert_eq!(count(), 0, "no rootfs left after a failed create");

    let id = env
        .create(
            &pod_id,
            &pod,
            container("nocmd", &image, &["no-such-command"]),
        )
        .await
        .unwrap();
    let err = env.start_container(&id).await.unwrap_err();
    assert!(
        err.message().contains("no-such-command"),
        "{}",
        err.message()
    );
    let status = env.status(&id).await;
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(status.reason, "StartError");
    env.runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(count(), 0);
    let list = env
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.containers.is_empty());
    // An unknown runtime handler (RuntimeClass) is NotFound, naming it.
    let err = env
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(env.pod_config("handler")),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("kata"), "{}", err.message());
    // Unknown ids: status is NotFound, stop and remove succeed.
    let err = env
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    env.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: "nope".into(),
            timeout: 1,
        })
        .await
        .unwrap();
    env.runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: "nope".into(),
        })
        .await
        .unwrap();
    env.stop_remove_pod(&pod_id).await;
    assert_eq!(env.mounts_under_daemon(), Vec::<String>::new());
}

#[tokio::test]
#[ignore = "needs root"]
async fn containers_outlive_a_killed_daemon() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("survive");
    let pod_id = env.run_pod(&pod).await;
    let ticker = env
        .run(
            &pod_id,
            &pod,
            container(
                "ticker",
                &image,
                &[
                    "sh",
                    "-c",
                    "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.1; done",
                ],
            ),
        )
        .await;
    let short = env
        .run(
            &pod_id,
            &pod,
            container("short", &image, &["sh", "-c", "sleep 2; exit 3"]),
        )
        .await;
    let ticker_log = common::log_path(&env.status(&ticker).await);
    let verbose = env
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: ticker.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let pid = serde_json::from_str::<serde_json::Value>(&verbose.info["info"]).unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;

    env.daemon.kill9().unwrap();
    let before = std::fs::read_to_string(&ticker_log).unwrap().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(common::process_alive(pid), "container survives the daemon");
    assert!(
        std::fs::read_to_string(&ticker_log).unwrap().len() > before,
        "logs keep flowing"
    );
    let exit_file = env
        .daemon
        .work_dir()
        .join("meta/containers")
        .join(&short)
        .join("exit");
    let exit: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&exit_file).unwrap()).unwrap();
    assert_eq!(
        exit["exit_code"], 3,
        "the supervisor recorded the exit meanwhile"
    );

    // Back through the CRI after a restart (the recovery issue deepens this).
    env.daemon.restart().await.unwrap();
    env.runtime = env.daemon.runtime_client().await.unwrap();
    let status = env.status(&short).await;
    assert_eq!(
        (status.state, status.exit_code),
        (cri::ContainerState::ContainerExited as i32, 3)
    );
    env.stop_remove_pod(&pod_id).await;
    assert!(!common::process_alive(pid));
}

/// A supervisor started by a daemon of another protocol version (played here by a fake at
/// the pod's supervisor socket) is refused before it is sent a Launch it could misread.
#[tokio::test]
#[ignore = "needs root"]
async fn a_supervisor_of_another_protocol_version_is_refused() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("old-supervisor");
    let pod_id = env.run_pod(&pod).await;
    let socket = env
        .daemon
        .runtime_dir()
        .join("sv")
        .join(format!("{}.sock", &pod_id[..16]));
    let aside = socket.with_extension("real");
    // A bound socket keeps working under its new name: the real supervisor comes back.
    std::fs::rename(&socket, &aside).unwrap();
    let listener = UnixListener::bind(&socket).unwrap();
    let pong =
        format!("{{\"reply\":\"pong\",\"pod_id\":\"{pod_id}\",\"pid\":1,\"version\":\"0.0.1\"}}\n");
    let fake = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        (&stream).write_all(pong.as_bytes()).unwrap();
        line
    });
    let err = env
        .create(&pod_id, &pod, container("c", &image, &["sleep", "1000"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains(&pod_id)
            && err.message().contains("protocol 0")
            && err.message().contains(&format!(
                "speaks {}",
                cri_mesos_supervisor::protocol::PROTOCOL
            )),
        "{}",
        err.message()
    );
    // It was asked for its version, and sent nothing else.
    assert!(fake.join().unwrap().contains("\"ping\""));
    assert!(env.containers().await.is_empty());
    let rootfses = std::fs::read_dir(env.daemon.work_dir().join("provisioner/containers"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(rootfses, 0, "nothing left of the refused container");

    std::fs::rename(&aside, &socket).unwrap();
    env.run(&pod_id, &pod, container("c", &image, &["sleep", "1000"]))
        .await;
    env.stop_remove_pod(&pod_id).await;
}

/// A restart with unreadable checkpoints and leftovers no checkpoint names: the
/// checkpoints are moved to the quarantine dir and listed in the verbose Status (never
/// skipped silently), the leftovers destroyed and listed, and what is readable recovered
/// as it was (its container still runs and execs).
#[tokio::test]
#[ignore = "needs root"]
async fn unreadable_checkpoints_are_quarantined_and_orphans_destroyed() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("recovered");
    let pod_id = env.run_pod(&pod).await;
    let id = env
        .run(&pod_id, &pod, container("c", &image, &["sleep", "100000"]))
        .await;
    env.daemon.kill9().unwrap();

    let (work, run) = (
        env.daemon.work_dir().to_path_buf(),
        env.daemon.runtime_dir().to_path_buf(),
    );
    let bogus = "f".repeat(64);
    std::fs::write(
        work.join("meta/pods").join(format!("{bogus}.json")),
        "{not json",
    )
    .unwrap();
    let bad_container = work.join("meta/containers").join(&bogus);
    std::fs::create_dir_all(&bad_container).unwrap();
    std::fs::write(bad_container.join("container.json"), "[]").unwrap();
    let orphans = [
        work.join("meta/containers").join("e".repeat(64)),
        work.join("provisioner/containers").join("d".repeat(64)),
        run.join("pods").join("c".repeat(64)),
    ];
    for dir in &orphans {
        std::fs::create_dir_all(dir).unwrap();
    }
    let socket = run.join("sv/0123456789abcdef.sock");
    std::fs::write(&socket, "").unwrap();
    let torn = work.join("meta/pods/.x.json.tmp-0123");
    std::fs::write(&torn, "{").unwrap();

    env.daemon.restart().await.unwrap();
    env.runtime = env.daemon.runtime_client().await.unwrap();
    let info = env.runtime_info().await;
    let recovery: serde_json::Value = serde_json::from_str(&info["recovery"]).unwrap();
    let quarantined = recovery["quarantined"].as_array().unwrap();
    assert_eq!(quarantined.len(), 2, "{recovery}");
    for q in quarantined {
        assert!(!q["reason"].as_str().unwrap().is_empty(), "{q}");
        let moved = Path::new(q["moved_to"].as_str().unwrap());
        assert!(
            moved.starts_with(work.join("meta/quarantine")) && moved.exists(),
            "{q}"
        );
        assert!(
            !Path::new(q["checkpoint"].as_str().unwrap()).exists(),
            "{q}"
        );
    }
    let listed = recovery["orphans"].to_string();
    for path in orphans.iter().chain([&socket, &torn]) {
        assert!(!path.exists(), "{} left", path.display());
        assert!(listed.contains(&path.display().to_string()), "{listed}");
    }

    // What was readable came back as it was.
    assert_eq!(env.pods().await.len(), 1);
    let status = env.status(&id).await;
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    let exec = env.exec(&id, &["echo", "alive"], 10).await.unwrap();
    assert_eq!(exec.stdout, b"alive\n");
    env.stop_remove_pod(&pod_id).await;
    assert_eq!(env.mounts_under_daemon(), Vec::<String>::new());
}
