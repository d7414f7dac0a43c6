//! `filesystem/linux`: the container gets the provisioned rootfs in a mount namespace of
//! its own, with the pod's standard files bound in, the kernel's sensitive paths masked or
//! made read-only, and the devices the CRI asks for.
//!
//! CRI volumes are `volume/host_path`'s; this isolator only steps aside where one of them
//! lands on a path the runtime would otherwise fill (kubelet brings its own /etc/hosts).

use crate::quote::quote;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use cri_mesos_supervisor::protocol::{CreateKind, DeviceSpec, LaunchInfo, MountSpec};
use k8s_cri::v1 as cri;

use super::clean_container_path;
use crate::isolators::IsolatorName;
use crate::isolators::chain::{ContainerPrep, Isolator, IsolatorError};

/// containerd's defaults, used unless the CRI names its own list.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// containerd's defaults, used unless the CRI names its own list.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[derive(Debug, Default)]
pub struct LinuxFilesystem;

// No cleanup: everything this isolator sets up lives in the container's own mount
// namespace and goes away with it; the pod files belong to the pod.
#[tonic::async_trait]
impl Isolator for LinuxFilesystem {
    fn name(&self) -> IsolatorName {
        IsolatorName("filesystem/linux")
    }

    async fn prepare(
        &self,
        container: &ContainerPrep<'_>,
        launch: &mut LaunchInfo,
    ) -> Result<(), IsolatorError> {
        let config = container.config;
        let default_sc = cri::LinuxContainerSecurityContext::default();
        let sc = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .unwrap_or(&default_sc);

        launch.rootfs = container.rootfs.to_path_buf();
        launch.rootfs_readonly = sc.readonly_rootfs;
        launch
            .mounts
            .extend(pod_mounts(container, sc.readonly_rootfs));
        let (masked, readonly) = hidden_paths(sc);
        launch.masked_paths = masked;
        launch.readonly_paths = readonly;
        if sc.privileged {
            // As containerd: a privileged container sees every host device and may write
            // /sys (its capabilities come from linux/capabilities).
            launch.sysfs_writable = true;
            launch.devices.extend(host_devices(Path::new("/dev")));
        }
        launch.devices.extend(devices(&config.devices)?);
        Ok(())
    }
}

/// The pod's hostname, hosts, resolv.conf and /dev/shm, each unless the CRI mounts
/// something at the same place: kubelet manages /etc/hosts itself for most pods, and its
/// file must win.
fn pod_mounts(container: &ContainerPrep<'_>, readonly_rootfs: bool) -> Vec<MountSpec> {
    let pod = container.pod;
    let taken: Vec<PathBuf> = container
        .config
        .mounts
        .iter()
        .map(|m| clean_container_path(&m.container_path))
        .collect();
    let is_free = |path: &str| !taken.iter().any(|t| t == Path::new(path));

    let mut mounts = Vec::new();
    // As containerd: rw unless the whole rootfs is read-only, so that a read-only rootfs
    // cannot be written through these either.
    for (destination, source) in [
        ("/etc/hostname", pod.hostname_file()),
        ("/etc/hosts", pod.hosts_file()),
        ("/etc/resolv.conf", pod.resolv_conf()),
    ] {
        if !is_free(destination) {
            continue;
        }
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        if readonly_rootfs {
            options.push("ro".into());
        }
        mounts.push(MountSpec {
            source,
            destination: destination.into(),
            fstype: None,
            options,
            create: CreateKind::File,
        });
    }
    // Mesos's filesystem/linux mounts the sandbox into the container; read-write even in
    // a read-only rootfs, as it is the container's work directory. A rootfs that is
    // read-only from the start (the bind backend) cannot get a mount point it lacks, so
    // the sandbox is mounted there only where the image has one (as in Mesos); the
    // containerizer refuses fetch URIs for such a container.
    let mount_point_possible = |at: &Path| {
        container.writable.is_some()
            || container
                .rootfs
                .join(at.strip_prefix("/").unwrap_or(at))
                .is_dir()
    };
    // Nor under a CRI mount (often read-only; a host directory either way, which the
    // mount point would be made in).
    let under_cri_mount = |at: &Path| taken.iter().any(|t| at.starts_with(t));
    if let Some(sandbox) = container.sandbox
        && !under_cri_mount(&super::clean_container_path(
            &sandbox.container.to_string_lossy(),
        ))
        && mount_point_possible(sandbox.container)
    {
        mounts.push(MountSpec {
            source: sandbox.host.to_path_buf(),
            destination: sandbox.container.to_path_buf(),
            fstype: None,
            options: ["rbind", "rprivate", "nosuid", "nodev"]
                .map(String::from)
                .to_vec(),
            create: CreateKind::Dir,
        });
    }
    if is_free("/dev/shm") {
        mounts.push(MountSpec {
            source: pod.shm(),
            destination: "/dev/shm".into(),
            fstype: None,
            options: ["rbind", "rprivate", "nosuid", "nodev", "noexec"]
                .map(String::from)
                .to_vec(),
            create: CreateKind::Dir,
        });
    }
    mounts
}

/// Masked and read-only paths. kubelet sends its own lists (its defaults equal
/// containerd's unless `procMount: Unmasked`); a privileged container sees everything.
fn hidden_paths(sc: &cri::LinuxContainerSecurityContext) -> (Vec<PathBuf>, Vec<PathBuf>) {
    if sc.privileged {
        return (Vec::new(), Vec::new());
    }
    let pick = |asked: &[String], defaults: &[&str]| -> Vec<PathBuf> {
        // An empty list on the wire is indistinguishable from an absent one, and containerd
        // reads it as absent too.
        if asked.is_empty() {
            defaults.iter().map(PathBuf::from).collect()
        } else {
            asked.iter().map(PathBuf::from).collect()
        }
    };
    (
        pick(&sc.masked_paths, DEFAULT_MASKED_PATHS),
        pick(&sc.readonly_paths, DEFAULT_READONLY_PATHS),
    )
}

/// Device nodes copied from the host's (type, numbers, mode and owner). The devices cgroup
/// allow-list for them (the `permissions`) comes with the cgroups isolators; until then the
/// container's cgroup decides whether they can be opened.
/// Every device node under `dir`, as containerd's `HostDevices` lists them: the pty,
/// shm, mqueue and fd trees, the console and ptmx are the container's own.
fn host_devices(dir: &Path) -> Vec<DeviceSpec> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            if !matches!(
                name.to_str(),
                Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev")
            ) {
                out.extend(host_devices(&path));
            }
            continue;
        }
        let kind = if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else {
            continue;
        };
        // The console is the container's pty and ptmx its own devpts' (a symlink).
        if name == "console" || name == "ptmx" {
            continue;
        }
        let rdev = meta.rdev();
        out.push(DeviceSpec {
            path: path.clone(),
            kind,
            major: libc::major(rdev).into(),
            minor: libc::minor(rdev).into(),
            file_mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            host_path: Some(path),
        });
    }
    out
}

fn devices(asked: &[cri::Device]) -> Result<Vec<DeviceSpec>, IsolatorError> {
    let mut out = Vec::with_capacity(asked.len());
    for (i, device) in asked.iter().enumerate() {
        let invalid = |what: &str, reason: String| IsolatorError::InvalidArgument {
            field: format!("devices[{i}].{what}"),
            reason,
        };
        let host = Path::new(&device.host_path);
        if !host.is_absolute() {
            return Err(invalid(
                "host_path",
                format!("{} is not an absolute path", quote(&device.host_path)),
            ));
        }
        if let Some(bad) = device
            .permissions
            .chars()
            .find(|c| !matches!(c, 'r' | 'w' | 'm'))
        {
            return Err(invalid(
                "permissions",
                format!(
                    "{}: unknown permission {bad:?} (expected a combination of r, w, m)",
                    quote(&device.permissions)
                ),
            ));
        }
        let meta = match fs::metadata(host) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(invalid(
                    "host_path",
                    format!("device {} does not exist", quote(&device.host_path)),
                ));
            }
            Err(e) => {
                return Err(invalid(
                    "host_path",
                    format!("stat {:?}: {e}", device.host_path),
                ));
            }
        };
        let kind = if meta.file_type().is_char_device() {
            'c'
        } else if meta.file_type().is_block_device() {
            'b'
        } else {
            return Err(invalid(
                "host_path",
                format!("{} is not a device node", quote(&device.host_path)),
            ));
        };
        let container_path = if device.container_path.is_empty() {
            &device.host_path
        } else {
            &device.container_path
        };
        if !Path::new(container_path).is_absolute() {
            return Err(invalid(
                "container_path",
                format!("{container_path:?} is not an absolute path"),
            ));
        }
        let rdev = meta.rdev();
        out.push(DeviceSpec {
            path: clean_container_path(container_path),
            kind,
            major: libc::major(rdev).into(),
            minor: libc::minor(rdev).into(),
            file_mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            host_path: Some(host.to_path_buf()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolators::registry::test_support::Fixture;

    fn mount(container_path: &str, host_path: &str) -> cri::Mount {
        cri::Mount {
            container_path: container_path.into(),
            host_path: host_path.into(),
            ..Default::default()
        }
    }

    fn destinations(launch: &LaunchInfo) -> Vec<&Path> {
        launch
            .mounts
            .iter()
            .map(|m| m.destination.as_path())
            .collect()
    }

    #[tokio::test]
    async fn rootfs_and_pod_files() {
        let f = Fixture::new();
        let launch = f.prepare(&LinuxFilesystem).await.unwrap();
        assert_eq!(launch.rootfs, f.rootfs());
        assert!(!launch.rootfs_readonly);
        assert_eq!(
            destinations(&launch),
            [
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/dev/shm"
            ]
            .map(Path::new)
        );
        let hosts = &launch.mounts[1];
        assert_eq!(hosts.source, f.pod.hosts_file());
        assert_eq!(hosts.options, ["rbind", "rprivate"]);
        assert_eq!(hosts.create, CreateKind::File);
        let shm = &launch.mounts[3];
        assert_eq!(shm.source, f.pod.dir.join("shm"));
        assert_eq!(
            shm.options,
            ["rbind", "rprivate", "nosuid", "nodev", "noexec"]
        );
    }

    /// `prepare` with a sandbox, over a writable rootfs or a read-only one (the bind
    /// backend's).
    async fn prepare_with_sandbox(
        f: &Fixture,
        host: &Path,
        at: &Path,
        writable: bool,
    ) -> LaunchInfo {
        let rootfs = f.rootfs();
        let writable = writable.then_some(rootfs.as_path());
        let prep = ContainerPrep {
            id: "c1",
            pod: &f.pod,
            config: &f.config,
            image: &f.image,
            rootfs: &rootfs,
            writable,
            cgroup: &f.cgroup,
            peers: &f.peers,
            sandbox: Some(crate::isolators::chain::SandboxMount {
                host,
                container: at,
            }),
        };
        let mut launch = LaunchInfo::default();
        LinuxFilesystem.prepare(&prep, &mut launch).await.unwrap();
        launch
    }

    #[tokio::test]
    async fn the_sandbox_is_mounted_unless_a_cri_mount_takes_its_path() {
        let mut f = Fixture::new();
        let (host, at) = (
            f.dir.path().join("sandbox"),
            Path::new("/mnt/mesos/sandbox"),
        );
        let launch = prepare_with_sandbox(&f, &host, at, true).await;
        let sandbox = launch
            .mounts
            .iter()
            .find(|m| m.destination == at)
            .expect("the sandbox is mounted");
        assert_eq!(sandbox.source, host);
        assert_eq!(sandbox.options, ["rbind", "rprivate", "nosuid", "nodev"]);
        assert_eq!(sandbox.create, CreateKind::Dir);
        for path in ["/mnt/mesos/sandbox/", "/mnt"] {
            f.config.mounts = vec![cri::Mount {
                container_path: path.into(),
                host_path: "/srv".into(),
                readonly: true,
                ..Default::default()
            }];
            let launch = prepare_with_sandbox(&f, &host, at, true).await;
            assert!(!launch.mounts.iter().any(|m| m.source == host), "{path}");
        }
    }

    #[tokio::test]
    async fn a_read_only_backend_gets_the_sandbox_only_where_the_image_has_its_mount_point() {
        let f = Fixture::new();
        let (host, at) = (
            f.dir.path().join("sandbox"),
            Path::new("/mnt/mesos/sandbox"),
        );
        let launch = prepare_with_sandbox(&f, &host, at, false).await;
        assert!(!launch.mounts.iter().any(|m| m.source == host));
        fs::create_dir_all(f.rootfs().join("mnt/mesos/sandbox")).unwrap();
        let launch = prepare_with_sandbox(&f, &host, at, false).await;
        assert!(launch.mounts.iter().any(|m| m.source == host));
    }

    #[tokio::test]
    async fn readonly_rootfs_makes_pod_files_readonly() {
        let mut f = Fixture::new();
        f.security_context().readonly_rootfs = true;
        let launch = f.prepare(&LinuxFilesystem).await.unwrap();
        assert!(launch.rootfs_readonly);
        for m in &launch.mounts[..3] {
            assert!(m.options.contains(&"ro".to_string()), "{m:?}");
        }
        assert!(
            !launch.mounts[3].options.contains(&"ro".to_string()),
            "/dev/shm stays writable"
        );
    }

    #[tokio::test]
    async fn cri_mount_replaces_the_runtime_one() {
        let mut f = Fixture::new();
        f.config.mounts = vec![
            mount("/etc/hosts/", "/var/lib/kubelet/pods/x/etc-hosts"),
            mount(
                "/dev/termination-log",
                "/var/lib/kubelet/pods/x/containers/c/1",
            ),
        ];
        let launch = f.prepare(&LinuxFilesystem).await.unwrap();
        assert_eq!(
            destinations(&launch),
            ["/etc/hostname", "/etc/resolv.conf", "/dev/shm"].map(Path::new)
        );
    }

    #[tokio::test]
    async fn host_ipc_binds_the_host_shm() {
        let mut f = Fixture::new();
        f.pod.ipc_ns = None;
        let launch = f.prepare(&LinuxFilesystem).await.unwrap();
        assert_eq!(launch.mounts[3].source, Path::new("/dev/shm"));
    }

    #[tokio::test]
    async fn masked_paths_defaults_cri_and_privileged() {
        let mut f = Fixture::new();
        let launch = f.prepare(&LinuxFilesystem).await.unwrap();
        assert_eq!(
            launch.masked_paths,
            DEFAULT_MASKED_PATHS
                .iter()
                .map(PathBuf::from)
                .collect::<Vec<_>>()
        );
        assert_eq!(
            launch.readonly_paths,
            DEFAULT_READONLY_PATHS
                .iter()
                .map(PathBuf::from)
                .collect::<Vec<_>>()
        );

        f.security_context().masked_paths = vec!["/proc/kcore".into()];
        f.security_context().readonly_paths = vec!["/proc/sys".into()];
        let launch = f.prepare(&LinuxFilesystem).await.unwrap();
        assert_eq!(launch.masked_paths, [PathBuf::from("/proc/kcore")]);
        assert_eq!(launch.readonly_paths, [PathBuf::from("/proc/sys")]);

        f.security_context().privileged = true;
        let launch = f.prepare(&LinuxFilesystem).await.unwrap();
        assert!(launch.masked_paths.is_empty());
        assert!(launch.readonly_paths.is_empty());
    }

    #[tokio::test]
    async fn devices_copy_the_host_node() {
        let mut f = Fixture::new();
        f.config.devices = vec![cri::Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rwm".into(),
        }];
        let launch = f.prepare(&LinuxFilesystem).await.unwrap();
        let d = &launch.devices[0];
        assert_eq!(d.path, Path::new("/dev/mynull"));
        assert_eq!((d.kind, d.major, d.minor), ('c', 1, 3));
        assert_eq!(d.file_mode, 0o666);
        assert_eq!(d.host_path.as_deref(), Some(Path::new("/dev/null")));
    }

    #[tokio::test]
    async fn missing_or_non_device_host_path_is_invalid() {
        let mut f = Fixture::new();
        f.config.devices = vec![cri::Device {
            container_path: "/dev/nope".into(),
            host_path: "/dev/nope".into(),
            permissions: "rwm".into(),
        }];
        let err = f.prepare(&LinuxFilesystem).await.unwrap_err();
        assert!(
            matches!(&err, IsolatorError::InvalidArgument { field, reason }
                if field == "devices[0].host_path" && reason.contains("/dev/nope")),
            "{err:?}"
        );

        f.config.devices[0].host_path =
            f.rootfs().join("etc/passwd").to_string_lossy().into_owned();
        let err = f.prepare(&LinuxFilesystem).await.unwrap_err();
        assert!(err.to_string().contains("is not a device node"), "{err}");

        f.config.devices[0].host_path = "/dev/null".into();
        f.config.devices[0].permissions = "rwx".into();
        let err = f.prepare(&LinuxFilesystem).await.unwrap_err();
        assert!(
            err.to_string().starts_with("devices[0].permissions: "),
            "{err}"
        );
    }
}
