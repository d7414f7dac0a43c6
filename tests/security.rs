//! The CRI's security context through the socket, checked from inside the container:
//! capability sets, privileged, no_new_privs, and exec sessions that get the container's
//! security rather than the runtime's.

mod common;

use std::time::Duration;

use common::{Env, container};
use k8s_cri::v1 as cri;
use tonic::Code;

const T: Duration = Duration::from_secs(20);

/// containerd's default set, as root sees it (CapEff in /proc/self/status).
const DEFAULT_CAPS: &str = "00000000a80425fb";

fn with_security(
    mut config: cri::ContainerConfig,
    f: impl FnOnce(&mut cri::LinuxContainerSecurityContext),
) -> cri::ContainerConfig {
    f(common::container_security(&mut config));
    config
}

fn caps(add: &[&str], drop: &[&str], ambient: &[&str]) -> Option<cri::Capability> {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
    Some(cri::Capability {
        add_capabilities: v(add),
        drop_capabilities: v(drop),
        add_ambient_capabilities: v(ambient),
    })
}

/// The `Cap*` and `NoNewPrivs` lines of the container's init, from its log.
async fn status_of(
    env: &mut Env,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> (String, String) {
    let id = env.run(pod_id, pod, config).await;
    let log = common::log_path(&env.status(&id).await);
    let text = common::wait_for_log(&log, T, |t| t.contains("NoNewPrivs")).await;
    (id, text)
}

fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.split_once(&format!("{name}:\t")).map(|(_, v)| v.trim()))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

const MOUNT: &[&str] = &["sh", "-c", "mkdir -p /tmp/m && mount -t tmpfs t /tmp/m"];

const SHOW: &[&str] = &[
    "sh",
    "-c",
    "grep -E '^(Cap|NoNewPrivs)' /proc/self/status; sleep 1000",
];

#[tokio::test]
#[ignore = "needs root"]
async fn capability_sets_follow_the_security_context() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("caps");
    let pod_id = env.run_pod(&pod).await;

    // No security context: containerd's default set, nothing inheritable or ambient.
    let (id, text) = status_of(&mut env, &pod_id, &pod, container("default", &image, SHOW)).await;
    assert_eq!(field(&text, "CapEff"), DEFAULT_CAPS, "{text}");
    assert_eq!(field(&text, "CapBnd"), DEFAULT_CAPS, "{text}");
    assert_eq!(field(&text, "CapPrm"), DEFAULT_CAPS, "{text}");
    assert_eq!(field(&text, "CapInh"), "0000000000000000", "{text}");
    assert_eq!(field(&text, "CapAmb"), "0000000000000000", "{text}");
    assert_eq!(field(&text, "NoNewPrivs"), "0", "{text}");
    // Without CAP_SYS_ADMIN a tmpfs cannot be mounted.
    let out = env.exec(&id, MOUNT, 10).await.unwrap();
    assert_ne!(out.exit_code, 0, "mount worked without CAP_SYS_ADMIN");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An exec session gets the container's capabilities, not the runtime's.
    let out = env
        .exec(&id, &["grep", "CapEff", "/proc/self/status"], 10)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(DEFAULT_CAPS),
        "{out:?}"
    );

    // add SYS_ADMIN (CAP_ prefix optional), drop CHOWN.
    let config = with_security(container("add-drop", &image, SHOW), |sc| {
        sc.capabilities = caps(&["CAP_SYS_ADMIN"], &["CHOWN"], &[]);
    });
    let (id, text) = status_of(&mut env, &pod_id, &pod, config).await;
    assert_eq!(
        field(&text, "CapEff"),
        format!("{:016x}", (0xa80425fbu64 | 1 << 21) & !1)
    );
    let out = env.exec(&id, MOUNT, 10).await.unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");

    // drop ALL: nothing at all, in every set.
    let config = with_security(container("drop-all", &image, SHOW), |sc| {
        sc.capabilities = caps(&[], &["ALL"], &[]);
    });
    let (_, text) = status_of(&mut env, &pod_id, &pod, config).await;
    for set in ["CapEff", "CapBnd", "CapPrm"] {
        assert_eq!(field(&text, set), "0000000000000000", "{set}: {text}");
    }

    // add ALL, drop one: everything the runtime itself has, but that one.
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let own_bnd = u64::from_str_radix(field(&own, "CapBnd"), 16).unwrap();
    let config = with_security(container("add-all", &image, SHOW), |sc| {
        sc.capabilities = caps(&["ALL"], &["NET_ADMIN"], &[]);
    });
    let (_, text) = status_of(&mut env, &pod_id, &pod, config).await;
    let eff = u64::from_str_radix(field(&text, "CapEff"), 16).unwrap();
    assert_eq!(eff, own_bnd & !(1 << 12), "{text}");

    // A non-root user has only its ambient capabilities, which are also inheritable.
    let config = with_security(container("ambient", &image, SHOW), |sc| {
        sc.run_as_user = Some(cri::Int64Value { value: 1000 });
        sc.capabilities = caps(&[], &[], &["NET_BIND_SERVICE"]);
    });
    let (_, text) = status_of(&mut env, &pod_id, &pod, config).await;
    let bind = format!("{:016x}", 1u64 << 10);
    assert_eq!(field(&text, "CapEff"), bind, "{text}");
    assert_eq!(field(&text, "CapAmb"), bind, "{text}");
    assert_eq!(field(&text, "CapInh"), bind, "{text}");
    let config = with_security(container("non-root", &image, SHOW), |sc| {
        sc.run_as_user = Some(cri::Int64Value { value: 1000 });
    });
    let (_, text) = status_of(&mut env, &pod_id, &pod, config).await;
    assert_eq!(field(&text, "CapEff"), "0000000000000000", "{text}");
    assert_eq!(field(&text, "CapBnd"), DEFAULT_CAPS, "{text}");

    // no_new_privs, in the container and in its exec sessions.
    let config = with_security(container("nnp", &image, SHOW), |sc| {
        sc.no_new_privs = true;
    });
    let (id, text) = status_of(&mut env, &pod_id, &pod, config).await;
    assert_eq!(field(&text, "NoNewPrivs"), "1", "{text}");
    let out = env
        .exec(&id, &["grep", "NoNewPrivs", "/proc/self/status"], 10)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains('1'),
        "{out:?}"
    );

    // Unknown names and a privileged container in a plain pod are refused, leaving nothing.
    let before = env.containers().await.len();
    let config = with_security(container("unknown", &image, SHOW), |sc| {
        sc.capabilities = caps(&["NET_RAW", "CAP_TELEPORT"], &[], &[]);
    });
    let err = env.create(&pod_id, &pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("config.linux.security_context.capabilities.add_capabilities[1]")
            && err.message().contains("CAP_TELEPORT"),
        "{}",
        err.message()
    );
    let config = with_security(container("privileged", &image, SHOW), |sc| {
        sc.privileged = true;
    });
    let err = env.create(&pod_id, &pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("config.linux.security_context.privileged"),
        "{}",
        err.message()
    );
    let after = env.containers().await.len();
    assert_eq!(before, after, "refused containers left nothing");
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_privileged_container_in_a_privileged_pod_has_everything() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let mut pod = env.pod_config("privileged");
    common::pod_security(&mut pod).privileged = true;
    let pod_id = env.run_pod(&pod).await;
    let config = with_security(container("all", &image, SHOW), |sc| {
        sc.privileged = true;
    });
    let (id, text) = status_of(&mut env, &pod_id, &pod, config).await;
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    assert_eq!(field(&text, "CapEff"), field(&own, "CapBnd"), "{text}");
    let out = env.exec(&id, MOUNT, 10).await.unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    // /sys is writable and the host's devices are there (the loop devices, say).
    let out = env
        .exec(
            &id,
            &[
                "sh",
                "-c",
                "mknod /tmp/l1 b 7 1 && dd if=/tmp/l1 of=/dev/null count=0",
            ],
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        out.exit_code, 0,
        "a privileged container opens any device: {out:?}"
    );
    let out = env
        .exec(&id, &["sh", "-c", "grep ' /sys ' /proc/mounts"], 10)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" rw,"),
        "{out:?}"
    );
    let host_has = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_type()
                .is_ok_and(|t| std::os::unix::fs::FileTypeExt::is_char_device(&t))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| {
            ![
                "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx",
            ]
            .contains(&n.as_str())
        })
        .expect("a host character device beyond the defaults");
    let out = env
        .exec(&id, &["ls", &format!("/dev/{host_has}")], 10)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "/dev/{host_has}: {out:?}");
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_container_opens_only_the_devices_it_is_given() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("devices");
    let pod_id = env.run_pod(&pod).await;
    let mut config = container("c", &image, &["sleep", "1000"]);
    config.devices = vec![cri::Device {
        container_path: "/dev/given".into(),
        host_path: "/dev/loop0".into(),
        permissions: "r".into(),
    }];
    let id = env.run(&pod_id, &pod, config).await;
    for (script, ok) in [
        // mknod is allowed (images make nodes), opening what was made is not.
        ("mknod /tmp/l1 b 7 1", true),
        ("dd if=/tmp/l1 of=/dev/null count=0", false),
        // The standard nodes and the given device, with the given permission only.
        (
            "head -c 4 /dev/zero > /dev/null && echo x > /dev/null",
            true,
        ),
        ("dd if=/dev/given of=/dev/null count=0", true),
        ("dd if=/dev/zero of=/dev/given count=1", false),
    ] {
        let out = env.exec(&id, &["sh", "-c", script], 10).await.unwrap();
        assert_eq!(out.exit_code == 0, ok, "{script}: {out:?}");
        if !ok {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("not permitted"),
                "{script}: EPERM, not another error: {:?}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn linux_nnp_gives_every_container_no_new_privs() {
    let mut env = Env::start(&[
        "--isolation=filesystem/linux,docker/runtime,namespaces/pid,namespaces/ipc,linux/nnp",
    ])
    .await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("nnp");
    let pod_id = env.run_pod(&pod).await;
    // The config does not ask for it; the operator's --isolation does.
    let (id, text) = status_of(&mut env, &pod_id, &pod, container("c", &image, SHOW)).await;
    assert_eq!(field(&text, "NoNewPrivs"), "1", "{text}");
    let out = env
        .exec(&id, &["grep", "NoNewPrivs", "/proc/self/status"], 10)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains('1'),
        "{out:?}"
    );
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn node_rlimits_from_the_config_file_apply_to_containers_and_exec() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        "rlimits:\n  NOFILE: {soft: 1000, hard: 2000}\n  core: {soft: 0, hard: 0}\n",
    )
    .unwrap();
    let arg = format!("--config={}", file.display());
    let mut env = Env::start(&[arg.as_str()]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("rlimits");
    let pod_id = env.run_pod(&pod).await;
    let show = &[
        "sh",
        "-c",
        "grep -E 'Max (open files|core)' /proc/self/limits; echo NoNewPrivs; sleep 1000",
    ];
    let (id, text) = status_of(&mut env, &pod_id, &pod, container("c", &image, show)).await;
    let limits = |text: &str, what: &str| -> Vec<String> {
        text.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what} in {text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let files = limits(&text, "Max open files");
    assert!(
        files.contains(&"1000".to_string()) && files.contains(&"2000".to_string()),
        "{files:?}"
    );
    let core = limits(&text, "Max core file size");
    assert_eq!(core.iter().filter(|w| *w == "0").count(), 2, "{core:?}");
    let out = env
        .exec(&id, &["grep", "Max open files", "/proc/self/limits"], 10)
        .await
        .unwrap();
    let exec_files = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        exec_files.contains("1000") && exec_files.contains("2000"),
        "{exec_files}"
    );
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn pod_sysctls_are_set_in_the_pods_namespaces_only() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let mut pod = env.pod_config("sysctls");
    let sysctls = [
        ("kernel.shm_rmid_forced", "1", "kernel/shm_rmid_forced"),
        ("fs.mqueue.msg_max", "100", "fs/mqueue/msg_max"),
        // The slash form, as kubelet passes it through.
        (
            "net/ipv4/ip_unprivileged_port_start",
            "80",
            "net/ipv4/ip_unprivileged_port_start",
        ),
        (
            "net.ipv4.conf.lo.accept_local",
            "1",
            "net/ipv4/conf/lo/accept_local",
        ),
    ];
    pod.linux.get_or_insert_with(Default::default).sysctls = sysctls
        .iter()
        .map(|(k, v, _)| (k.to_string(), v.to_string()))
        .collect();
    let host_before: Vec<String> = sysctls
        .iter()
        .map(|(_, _, path)| std::fs::read_to_string(format!("/proc/sys/{path}")).unwrap())
        .collect();
    let pod_id = env.run_pod(&pod).await;
    let id = env
        .run(&pod_id, &pod, container("c", &image, &["sleep", "1000"]))
        .await;
    for (name, value, path) in sysctls {
        let out = env
            .exec(&id, &["cat", &format!("/proc/sys/{path}")], 10)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            value,
            "{name}: {out:?}"
        );
    }
    let host_after: Vec<String> = sysctls
        .iter()
        .map(|(_, _, path)| std::fs::read_to_string(format!("/proc/sys/{path}")).unwrap())
        .collect();
    assert_eq!(host_before, host_after, "the host's values are untouched");
    env.stop_remove_pod(&pod_id).await;
}

type SecuritySetter = Box<dyn FnOnce(&mut cri::LinuxContainerSecurityContext)>;

/// The init's `id` line from its log (the log holds CRI records: the text is inside).
async fn init_id(
    env: &mut Env,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    name: &str,
    f: impl FnOnce(&mut cri::LinuxContainerSecurityContext),
) -> String {
    let image = env.images.busybox.reference();
    let config = with_security(
        container(name, &image, &["sh", "-c", "echo ID $(id); sleep 1000"]),
        f,
    );
    let id = env.run(pod_id, pod, config).await;
    let log = common::log_path(&env.status(&id).await);
    let text = common::wait_for_log(&log, T, |t| t.contains("ID ")).await;
    text.lines()
        .find_map(|l| l.split_once("ID ").map(|(_, v)| v.trim().to_string()))
        .unwrap()
}

#[tokio::test]
#[ignore = "needs root"]
async fn users_and_groups_follow_run_as_and_supplemental_groups() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("users");
    let pod_id = env.run_pod(&pod).await;
    // The image's user database: app (1000) is a member of extra (2000).
    let cases: Vec<(&str, SecuritySetter, &str)> = vec![
        (
            "root",
            Box::new(|_| {}),
            "uid=0(root) gid=0(root) groups=0(root)",
        ),
        (
            "uid",
            Box::new(|sc| sc.run_as_user = Some(cri::Int64Value { value: 1000 })),
            "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)",
        ),
        (
            "name",
            Box::new(|sc| sc.run_as_username = "app".into()),
            "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)",
        ),
        (
            "group",
            Box::new(|sc| {
                sc.run_as_user = Some(cri::Int64Value { value: 1000 });
                sc.run_as_group = Some(cri::Int64Value { value: 65534 });
            }),
            "uid=1000(app) gid=65534(nobody) groups=2000(extra),65534(nobody)",
        ),
        (
            "supplemental",
            Box::new(|sc| {
                sc.run_as_user = Some(cri::Int64Value { value: 1000 });
                sc.supplemental_groups = vec![3000];
            }),
            "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra),3000",
        ),
        (
            "strict",
            Box::new(|sc| {
                sc.run_as_user = Some(cri::Int64Value { value: 1000 });
                sc.supplemental_groups = vec![3000];
                sc.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
            }),
            "uid=1000(app) gid=1000(app) groups=1000(app),3000",
        ),
        (
            "unknown-uid",
            Box::new(|sc| sc.run_as_user = Some(cri::Int64Value { value: 4242 })),
            "uid=4242 gid=0(root) groups=0(root)",
        ),
    ];
    for (name, f, want) in cases {
        assert_eq!(
            init_id(&mut env, &pod_id, &pod, name, f).await,
            want,
            "{name}"
        );
    }
    // An exec session runs as the container's user.
    let config = with_security(container("exec", &image, &["sleep", "1000"]), |sc| {
        sc.run_as_user = Some(cri::Int64Value { value: 1000 });
        sc.supplemental_groups = vec![3000];
    });
    let id = env.run(&pod_id, &pod, config).await;
    let out = env.exec(&id, &["id"], 10).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra),3000"
    );
    // A name the image does not know is refused naming the field.
    let config = with_security(container("ghost", &image, &["true"]), |sc| {
        sc.run_as_username = "ghost".into();
    });
    let err = env.create(&pod_id, &pod, config).await.unwrap_err();
    assert!(err.message().contains("run_as_username"), "{err:?}");
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn readonly_rootfs_masked_and_readonly_paths_hold_inside() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("paths");
    let pod_id = env.run_pod(&pod).await;
    let sleeper = |name: &str| container(name, &image, &["sleep", "1000"]);

    // Defaults (containerd's lists): /proc/timer_list reads as /dev/null, /sys/firmware is an
    // empty directory, /proc/sys and /proc/sysrq-trigger are read-only; the rootfs is
    // writable.
    let id = env.run(&pod_id, &pod, sleeper("defaults")).await;
    for (script, ok) in [
        ("test $(wc -c < /proc/timer_list) -eq 0", true),
        ("test -z \"$(ls -A /sys/firmware)\"", true),
        ("echo 1 > /proc/sys/kernel/shm_rmid_forced", false),
        ("echo h > /proc/sysrq-trigger", false),
        ("touch /made-here && echo x > /etc/hosts.new", true),
    ] {
        let out = env.exec(&id, &["sh", "-c", script], 10).await.unwrap();
        assert_eq!(out.exit_code == 0, ok, "{script}: {out:?}");
    }

    // readonly_rootfs: nothing of the rootfs or the pod's files is writable; /dev/shm is.
    let config = with_security(sleeper("ro"), |sc| sc.readonly_rootfs = true);
    let id = env.run(&pod_id, &pod, config).await;
    for (script, ok) in [
        ("touch /made-here", false),
        ("echo x >> /etc/hosts", false),
        ("echo x >> /etc/resolv.conf", false),
        ("touch /dev/shm/ok", true),
    ] {
        let out = env.exec(&id, &["sh", "-c", script], 10).await.unwrap();
        assert_eq!(out.exit_code == 0, ok, "{script}: {out:?}");
        if !ok {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
                "{script}: {out:?}"
            );
        }
    }

    // The CRI's own lists replace the defaults.
    let config = with_security(sleeper("custom"), |sc| {
        sc.masked_paths = vec!["/etc/passwd".into(), "/home".into()];
        sc.readonly_paths = vec!["/tmp".into()];
    });
    let id = env.run(&pod_id, &pod, config).await;
    for (script, ok) in [
        ("test $(wc -c < /etc/passwd) -eq 0", true),
        ("test -z \"$(ls -A /home)\"", true),
        ("touch /tmp/x", false),
        // No longer masked: the default list is replaced.
        ("test $(wc -c < /proc/timer_list) -gt 0", true),
    ] {
        let out = env.exec(&id, &["sh", "-c", script], 10).await.unwrap();
        assert_eq!(out.exit_code == 0, ok, "{script}: {out:?}");
    }
    env.stop_remove_pod(&pod_id).await;
}

// ---- seccomp ----

const SHOW_SECCOMP: &[&str] = &[
    "sh",
    "-c",
    "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; sleep 1000",
];

fn seccomp(profile_type: cri::security_profile::ProfileType, path: &str) -> cri::SecurityProfile {
    cri::SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref: path.into(),
    }
}

fn with_seccomp(
    name: &str,
    image: &str,
    command: &[&str],
    profile: Option<cri::SecurityProfile>,
    add: &[&str],
) -> cri::ContainerConfig {
    with_security(container(name, image, command), |sc| {
        sc.seccomp = profile;
        sc.capabilities = caps(add, &[], &[]);
    })
}

async fn seccomp_compilations(env: &mut Env) -> u64 {
    let info = env.runtime_info().await;
    let isolators: serde_json::Value = serde_json::from_str(&info["isolators"]).unwrap();
    isolators["linux/seccomp"]["compilations"]
        .as_u64()
        .unwrap_or_else(|| panic!("no compilation count in {isolators}"))
}

fn stderr(out: &cri::ExecSyncResponse) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
#[ignore = "needs root"]
async fn seccomp_runtime_default_is_mobys_profile() {
    use cri::security_profile::ProfileType;
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("seccomp-default");
    let pod_id = env.run_pod(&pod).await;

    // SecurityProfile{} is RuntimeDefault: filter mode 2, in the container and its exec
    // sessions.
    let before = seccomp_compilations(&mut env).await;
    let config = with_seccomp(
        "default",
        &image,
        SHOW_SECCOMP,
        Some(Default::default()),
        &[],
    );
    let (id, text) = status_of(&mut env, &pod_id, &pod, config).await;
    assert_eq!(field(&text, "Seccomp"), "2", "{text}");
    let out = env
        .exec(&id, &["grep", "Seccomp:", "/proc/self/status"], 10)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains('2'),
        "exec session: {out:?}"
    );
    // A new user namespace needs no capability, but the default profile allows unshare
    // only with CAP_SYS_ADMIN.
    let out = env.exec(&id, &["unshare", "-U", "true"], 10).await.unwrap();
    assert_ne!(out.exit_code, 0, "{out:?}");
    assert!(stderr(&out).contains("not permitted"), "{}", stderr(&out));
    // The rest works: files, processes, sockets.
    let out = env
        .exec(
            &id,
            &[
                "sh",
                "-c",
                "mkdir /tmp/d && echo x > /tmp/d/f && cat /tmp/d/f | wc -c",
            ],
            10,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(seccomp_compilations(&mut env).await, before + 1);

    // The same capabilities Unconfined: the same call succeeds.
    let config = with_seccomp(
        "unconfined",
        &image,
        SHOW_SECCOMP,
        Some(seccomp(ProfileType::Unconfined, "")),
        &[],
    );
    let (id, text) = status_of(&mut env, &pod_id, &pod, config).await;
    assert_eq!(field(&text, "Seccomp"), "0", "{text}");
    let out = env.exec(&id, &["unshare", "-U", "true"], 10).await.unwrap();
    assert_eq!(out.exit_code, 0, "unconfined unshare: {out:?}");

    // No seccomp field at all is Unconfined (the CRI's nil profile).
    let (_, text) = status_of(
        &mut env,
        &pod_id,
        &pod,
        container("nil", &image, SHOW_SECCOMP),
    )
    .await;
    assert_eq!(field(&text, "Seccomp"), "0", "{text}");

    // With CAP_SYS_ADMIN the default profile opens sethostname (and unshare).
    let config = with_seccomp(
        "admin",
        &image,
        SHOW_SECCOMP,
        Some(Default::default()),
        &["SYS_ADMIN"],
    );
    let (id, text) = status_of(&mut env, &pod_id, &pod, config).await;
    assert_eq!(field(&text, "Seccomp"), "2", "{text}");
    let out = env.exec(&id, &["hostname", "renamed"], 10).await.unwrap();
    assert_eq!(out.exit_code, 0, "sethostname with CAP_SYS_ADMIN: {out:?}");
    assert_eq!(
        seccomp_compilations(&mut env).await,
        before + 2,
        "another capability set, another program"
    );

    // The same profile and capabilities again: the cached program, here installed last
    // before exec (no_new_privs), in the container and in its exec sessions.
    let mut config = with_seccomp("again", &image, SHOW_SECCOMP, Some(Default::default()), &[]);
    common::container_security(&mut config).no_new_privs = true;
    let (id, text) = status_of(&mut env, &pod_id, &pod, config).await;
    assert_eq!(field(&text, "Seccomp"), "2", "{text}");
    assert_eq!(field(&text, "NoNewPrivs"), "1", "{text}");
    let out = env
        .exec(
            &id,
            &[
                "sh",
                "-c",
                "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; unshare -U true",
            ],
            10,
        )
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        field(&shown, "Seccomp") == "2" && field(&shown, "NoNewPrivs") == "1",
        "{shown}"
    );
    assert!(stderr(&out).contains("not permitted"), "{}", stderr(&out));
    assert_eq!(seccomp_compilations(&mut env).await, before + 2);
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn seccomp_localhost_profiles_block_what_they_list_in_every_abi() {
    use cri::security_profile::ProfileType;
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let mut pod = env.pod_config("seccomp-localhost");
    common::pod_security(&mut pod).privileged = true;
    let pod_id = env.run_pod(&pod).await;

    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    std::fs::create_dir(&probe).unwrap();
    let int80 = probe.join("int80");
    std::fs::write(&int80, test_support::int80::i386_mkdir("/tmp/i386")).unwrap();
    std::fs::set_permissions(&int80, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let profile = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let block_mkdir = |arches: &str| {
        format!(
            r#"{{"defaultAction": "SCMP_ACT_ALLOW", {arches}
                "syscalls": [{{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}}]}}"#
        )
    };
    let listed = profile(
        "listed.json",
        &block_mkdir(r#""architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],"#),
    );
    let native = profile("native.json", &block_mkdir(""));
    let with_probe = |mut config: cri::ContainerConfig| {
        config.mounts = vec![cri::Mount {
            container_path: "/probe".into(),
            host_path: probe.display().to_string(),
            readonly: true,
            ..Default::default()
        }];
        config
    };
    // What the i386 mkdir did: its exit status (the errno, or 128 + signal), and whether
    // the directory is there.
    let int80_script = &[
        "sh",
        "-c",
        "/probe/int80; echo status=$?; test -d /tmp/i386 && echo made; true",
    ];

    // Unconfined, the probe makes its directory: the kernel takes 32-bit calls here.
    let id = env
        .run(
            &pod_id,
            &pod,
            with_probe(with_seccomp(
                "unconfined",
                &image,
                &["sleep", "1000"],
                Some(seccomp(ProfileType::Unconfined, "")),
                &[],
            )),
        )
        .await;
    let out = env.exec(&id, int80_script, 10).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.lines().any(|l| l == "status=0") && text.contains("made"),
        "{text}"
    );

    // Blocking mkdir blocks it, and nothing else; the 32-bit mkdir too (the profile
    // lists x86, so its mkdir is blocked as mkdir: EPERM).
    let config = with_probe(with_seccomp(
        "listed",
        &image,
        SHOW_SECCOMP,
        Some(seccomp(ProfileType::Localhost, &listed)),
        &[],
    ));
    let (id, text) = status_of(&mut env, &pod_id, &pod, config).await;
    assert_eq!(field(&text, "Seccomp"), "2", "{text}");
    let out = env.exec(&id, &["mkdir", "/tmp/x"], 10).await.unwrap();
    assert_ne!(out.exit_code, 0, "{out:?}");
    assert!(stderr(&out).contains("not permitted"), "{}", stderr(&out));
    let out = env
        .exec(
            &id,
            &[
                "sh",
                "-c",
                "touch /tmp/f && ln -s f /tmp/l && mv /tmp/f /tmp/g && rm /tmp/g /tmp/l",
            ],
            10,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    let out = env.exec(&id, int80_script, 10).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.lines().any(|l| l == format!("status={}", libc::EPERM)) && !text.contains("made"),
        "{text}"
    );

    // A profile that lists no architecture has only x86-64's: a 32-bit call kills the
    // process (SIGSYS) rather than passing as another call.
    let config = with_probe(with_seccomp(
        "native",
        &image,
        &["sleep", "1000"],
        Some(seccomp(ProfileType::Localhost, &native)),
        &[],
    ));
    let id = env.run(&pod_id, &pod, config).await;
    let out = env.exec(&id, int80_script, 10).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l == format!("status={}", 128 + libc::SIGSYS))
            && !text.contains("made"),
        "{text}"
    );

    // critest's profile: sethostname blocked even with CAP_SYS_ADMIN ...
    let hostname = profile(
        "hostname.json",
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]}"#,
    );
    let config = with_seccomp(
        "hostname",
        &image,
        &["sleep", "1000"],
        Some(seccomp(ProfileType::Localhost, &hostname)),
        &["SYS_ADMIN"],
    );
    let id = env.run(&pod_id, &pod, config).await;
    let out = env.exec(&id, &["hostname", "blocked"], 10).await.unwrap();
    assert_ne!(out.exit_code, 0, "{out:?}");
    assert!(stderr(&out).contains("not permitted"), "{}", stderr(&out));
    // ... and ignored by a privileged container.
    let mut config = with_seccomp(
        "privileged",
        &image,
        SHOW_SECCOMP,
        Some(seccomp(ProfileType::Localhost, &hostname)),
        &[],
    );
    common::container_security(&mut config).privileged = true;
    let (_, text) = status_of(&mut env, &pod_id, &pod, config).await;
    assert_eq!(field(&text, "Seccomp"), "0", "{text}");

    // A missing, a malformed and a relative profile are refused naming what is wrong;
    // nothing is left of them.
    let malformed = profile("malformed.json", r#"{"defaultAction": "SCMP_ACT_ALLOW","#);
    let missing = dir.path().join("missing.json").display().to_string();
    let before = env.containers().await.len();
    for (name, path, says) in [
        ("missing", missing.as_str(), "No such file"),
        ("malformed", malformed.as_str(), "EOF while parsing"),
        ("relative", "profiles/p.json", "not an absolute path"),
    ] {
        let config = with_seccomp(
            name,
            &image,
            &["true"],
            Some(seccomp(ProfileType::Localhost, path)),
            &[],
        );
        let err = env.create(&pod_id, &pod, config).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(
            err.message()
                .contains("config.linux.security_context.seccomp.localhost_ref")
                && err.message().contains(path)
                && err.message().contains(says),
            "{name}: {}",
            err.message()
        );
    }
    assert_eq!(
        env.containers().await.len(),
        before,
        "refused containers left nothing"
    );
    env.stop_remove_pod(&pod_id).await;
}
