//! `volume/host_path`: the CRI's mounts (kubelet's volumes, /etc/hosts,
//! /dev/termination-log, service account tokens...) as bind mounts of host paths, with
//! their propagation checked against the host's mount table as containerd does.

use crate::quote::quote;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use cri_mesos_supervisor::mountinfo::{self, MountEntry};
use cri_mesos_supervisor::protocol::{CreateKind, LaunchInfo, MountSpec};
use k8s_cri::v1 as cri;

use crate::isolators::IsolatorName;
use crate::isolators::chain::{ContainerPrep, Isolator, IsolatorError};
use crate::isolators::filesystem::{clean_container_path, depth};

const MOUNTINFO: &str = "/proc/self/mountinfo";

#[derive(Debug, Default)]
pub struct HostPathVolume;

// No cleanup: the bind mounts live in the container's mount namespace; host paths this
// isolator created are kubelet's to remove, as with containerd.
#[tonic::async_trait]
impl Isolator for HostPathVolume {
    fn name(&self) -> IsolatorName {
        IsolatorName("volume/host_path")
    }

    async fn prepare(
        &self,
        container: &ContainerPrep<'_>,
        launch: &mut LaunchInfo,
    ) -> Result<(), IsolatorError> {
        let mut table = None;
        for (i, mount) in container.config.mounts.iter().enumerate() {
            launch.mounts.push(mount_spec(i, mount, &mut table)?);
        }
        // Parents before children, over the runtime's own mounts too (a volume on /etc
        // must not hide /etc/hosts); stable, so equal depths keep the CRI's order.
        launch.mounts.sort_by_key(|m| depth(&m.destination));
        Ok(())
    }
}

/// What a propagation mode needs of the mount the source lives on.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Need {
    Shared,
    SharedOrSlave,
}

fn mount_spec(
    i: usize,
    mount: &cri::Mount,
    table: &mut Option<Vec<MountEntry>>,
) -> Result<MountSpec, IsolatorError> {
    let invalid = |what: &str, reason: String| IsolatorError::InvalidArgument {
        field: format!("mounts[{i}].{what}"),
        reason,
    };
    if mount
        .image
        .as_ref()
        .is_some_and(|image| !image.image.is_empty())
    {
        return Err(invalid(
            "image",
            "image volumes need the volume/image isolator, which cri-mesos does not support yet"
                .into(),
        ));
    }
    if !mount.uid_mappings.is_empty() || !mount.gid_mappings.is_empty() {
        return Err(invalid(
            "uid_mappings",
            "id-mapped mounts need user namespaces, which cri-mesos does not support yet".into(),
        ));
    }
    if mount.recursive_read_only {
        // Not advertised in the runtime handler features, so kubelet does not ask.
        return Err(invalid(
            "recursive_read_only",
            "recursive read-only mounts are not supported".into(),
        ));
    }
    if !Path::new(&mount.container_path).is_absolute() {
        return Err(invalid(
            "container_path",
            format!("{} is not an absolute path", quote(&mount.container_path)),
        ));
    }
    let host = Path::new(&mount.host_path);
    if !host.is_absolute() {
        return Err(invalid(
            "host_path",
            format!("{} is not an absolute path", quote(&mount.host_path)),
        ));
    }
    let propagation = cri::MountPropagation::try_from(mount.propagation).map_err(|_| {
        invalid(
            "propagation",
            format!("unknown mount propagation {}", mount.propagation),
        )
    })?;

    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IsolatorError::Io {
            isolator: "volume/host_path",
            path,
            source,
        }
    };
    // As containerd (and Docker before it): a missing source becomes a directory.
    match fs::metadata(host) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(host)
                .map_err(io_error(host))?;
        }
        Err(e) => return Err(io_error(host)(e)),
    }
    let source = fs::canonicalize(host).map_err(io_error(host))?;

    let mut options = vec!["rbind".to_string()];
    if mount.readonly {
        options.push("ro".into());
    }
    let need = match propagation {
        cri::MountPropagation::PropagationPrivate => {
            options.push("rprivate".into());
            None
        }
        cri::MountPropagation::PropagationHostToContainer => {
            options.push("rslave".into());
            Some(Need::SharedOrSlave)
        }
        cri::MountPropagation::PropagationBidirectional => {
            options.push("rshared".into());
            Some(Need::Shared)
        }
    };
    if let Some(need) = need {
        if table.is_none() {
            let path = Path::new(MOUNTINFO);
            *table = Some(mountinfo::parse(
                &fs::read_to_string(path).map_err(io_error(path))?,
            ));
        }
        let entries = table.as_deref().unwrap_or_default();
        check_propagation(entries, &source, need).map_err(|reason| {
            IsolatorError::FailedPrecondition {
                field: format!("mounts[{i}].propagation"),
                reason,
            }
        })?;
    }

    Ok(MountSpec {
        source,
        destination: clean_container_path(&mount.container_path),
        fstype: None,
        options,
        create: CreateKind::Auto,
    })
}

/// containerd's `ensureShared` / `ensureSharedOrSlave`, with their messages.
fn check_propagation(entries: &[MountEntry], path: &Path, need: Need) -> Result<(), String> {
    let Some(entry) = mountinfo::containing(entries, path) else {
        return Err(format!(
            "path {:?} is not on any mount",
            path.display().to_string()
        ));
    };
    let (ok, what) = match need {
        Need::Shared => (entry.has("shared"), "a shared"),
        Need::SharedOrSlave => (
            entry.has("shared") || entry.has("master"),
            "a shared or slave",
        ),
    };
    if ok {
        return Ok(());
    }
    Err(format!(
        "path {:?} is mounted on {:?} but it is not {what} mount",
        path.display().to_string(),
        entry.mount_point.display().to_string()
    ))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::isolators::filesystem::linux::LinuxFilesystem;
    use crate::isolators::registry::test_support::Fixture;

    fn mount(container_path: &str, host_path: &Path) -> cri::Mount {
        cri::Mount {
            container_path: container_path.into(),
            host_path: host_path.to_string_lossy().into_owned(),
            ..Default::default()
        }
    }

    fn prop(p: cri::MountPropagation) -> i32 {
        p as i32
    }

    #[tokio::test]
    async fn cri_mounts_become_bind_mounts() {
        let mut f = Fixture::new();
        let data = f.dir.path().join("data");
        fs::create_dir(&data).unwrap();
        let hosts = f.dir.path().join("etc-hosts");
        fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        f.config.mounts = vec![
            cri::Mount {
                readonly: true,
                ..mount("/data/", &data)
            },
            mount("/etc/hosts", &hosts),
        ];
        let launch = f.prepare(&HostPathVolume).await.unwrap();
        let data_mount = &launch.mounts[0];
        assert_eq!(data_mount.source, fs::canonicalize(&data).unwrap());
        assert_eq!(data_mount.destination, Path::new("/data"));
        assert_eq!(data_mount.options, ["rbind", "ro", "rprivate"]);
        assert_eq!(data_mount.create, CreateKind::Auto);
        assert_eq!(launch.mounts[1].options, ["rbind", "rprivate"]);
    }

    #[tokio::test]
    async fn kubelet_hosts_file_replaces_the_pods() {
        let mut f = Fixture::new();
        let hosts = f.dir.path().join("etc-hosts");
        fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        f.config.mounts = vec![mount("/etc/hosts", &hosts)];
        let mut launch = LaunchInfo::default();
        f.prepare_onto(&LinuxFilesystem, &mut launch).await.unwrap();
        f.prepare_onto(&HostPathVolume, &mut launch).await.unwrap();
        let to_hosts: Vec<&MountSpec> = launch
            .mounts
            .iter()
            .filter(|m| m.destination == Path::new("/etc/hosts"))
            .collect();
        assert_eq!(to_hosts.len(), 1);
        assert_eq!(to_hosts[0].source, fs::canonicalize(&hosts).unwrap());
        assert!(!launch.mounts.iter().any(|m| m.source == f.pod.hosts_file()));
    }

    #[tokio::test]
    async fn missing_source_is_created_and_symlinks_resolved() {
        let mut f = Fixture::new();
        let link = f.dir.path().join("link");
        fs::create_dir(f.dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", &link).unwrap();
        f.config.mounts = vec![
            mount("/a", &f.dir.path().join("new/deep")),
            mount("/b", &link),
        ];
        let launch = f.prepare(&HostPathVolume).await.unwrap();
        assert!(f.dir.path().join("new/deep").is_dir());
        assert_eq!(
            launch.mounts[0].source,
            fs::canonicalize(f.dir.path().join("new/deep")).unwrap()
        );
        assert_eq!(
            launch.mounts[1].source,
            fs::canonicalize(f.dir.path().join("real")).unwrap()
        );
    }

    #[tokio::test]
    async fn parents_are_mounted_before_children() {
        let mut f = Fixture::new();
        let src = f.dir.path().join("src");
        fs::create_dir(&src).unwrap();
        f.config.mounts = vec![
            mount("/var/run/secrets/kubernetes.io/serviceaccount", &src),
            mount("/data/sub", &src),
            mount("/etc", &src),
            mount("/data", &src),
        ];
        let mut launch = LaunchInfo::default();
        f.prepare_onto(&LinuxFilesystem, &mut launch).await.unwrap();
        f.prepare_onto(&HostPathVolume, &mut launch).await.unwrap();
        let order: Vec<&Path> = launch
            .mounts
            .iter()
            .map(|m| m.destination.as_path())
            .collect();
        assert_eq!(
            order,
            [
                "/etc",
                "/data",
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/dev/shm",
                "/data/sub",
                "/var/run/secrets/kubernetes.io/serviceaccount",
            ]
            .map(Path::new)
        );
    }

    #[tokio::test]
    async fn invalid_mounts_name_the_field() {
        let mut f = Fixture::new();
        let src = f.dir.path().to_path_buf();
        let cases: Vec<(cri::Mount, &str)> = vec![
            (mount("relative", &src), "mounts[1].container_path"),
            (mount("/x", Path::new("relative")), "mounts[1].host_path"),
            (
                cri::Mount {
                    propagation: 7,
                    ..mount("/x", &src)
                },
                "mounts[1].propagation",
            ),
            (
                cri::Mount {
                    recursive_read_only: true,
                    readonly: true,
                    ..mount("/x", &src)
                },
                "mounts[1].recursive_read_only",
            ),
            (
                cri::Mount {
                    image: Some(cri::ImageSpec {
                        image: "busybox".into(),
                        ..Default::default()
                    }),
                    host_path: String::new(),
                    ..mount("/x", &src)
                },
                "mounts[1].image",
            ),
        ];
        for (bad, field) in cases {
            f.config.mounts = vec![mount("/ok", &src), bad];
            let err = f.prepare(&HostPathVolume).await.unwrap_err();
            assert!(
                matches!(&err, IsolatorError::InvalidArgument { field: got, .. } if got == field),
                "{field}: {err:?}"
            );
        }
    }

    const MOUNTINFO_SAMPLE: &str = "\
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 27 0:40 / /var/lib/kubelet rw,relatime - ext4 /dev/vdb rw
41 40 0:41 / /var/lib/kubelet/pods rw,relatime master:7 - ext4 /dev/vdb rw
42 27 0:42 / /mnt/with\\040space rw shared:9 master:3 - tmpfs tmpfs rw
43 27 0:43 / /mnt/stack rw shared:11 - tmpfs tmpfs rw
44 27 0:44 / /mnt/stack rw - tmpfs tmpfs rw
";

    #[test]
    fn propagation_against_a_mount_table() {
        let table = mountinfo::parse(MOUNTINFO_SAMPLE);
        let check = |path: &str, need| check_propagation(&table, Path::new(path), need);
        assert_eq!(check("/srv/data", Need::Shared), Ok(()));
        assert_eq!(
            check("/var/lib/kubelet/x", Need::Shared).unwrap_err(),
            "path \"/var/lib/kubelet/x\" is mounted on \"/var/lib/kubelet\" but it is not a shared mount"
        );
        assert_eq!(
            check("/var/lib/kubelet/x", Need::SharedOrSlave).unwrap_err(),
            "path \"/var/lib/kubelet/x\" is mounted on \"/var/lib/kubelet\" but it is not a shared or slave mount"
        );
        assert_eq!(
            check("/var/lib/kubelet/pods/p/vol", Need::SharedOrSlave),
            Ok(())
        );
        assert!(check("/var/lib/kubelet/pods/p/vol", Need::Shared).is_err());
        // A mount point is matched by components, not as a string prefix.
        assert!(check("/var/lib/kubelet-other", Need::Shared).is_ok());
        assert_eq!(check("/mnt/with space/v", Need::Shared), Ok(()));
        // The top of a stack decides.
        assert!(check("/mnt/stack/v", Need::SharedOrSlave).is_err());
    }

    /// Unmounts (lazily) when dropped, so a failing assertion leaves no mount behind.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            if let Err(e) = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("umount {}: {e}", self.0.display());
            }
        }
    }

    fn bind(source: &Path, target: &Path, propagation: nix::mount::MsFlags) -> Unmount {
        use nix::mount::{MsFlags, mount};
        fs::create_dir_all(target).unwrap();
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let guard = Unmount(target.to_path_buf());
        mount(
            None::<&str>,
            target,
            None::<&str>,
            propagation,
            None::<&str>,
        )
        .unwrap();
        guard
    }

    #[tokio::test]
    #[ignore = "needs root"]
    async fn propagation_against_the_real_mount_table() {
        use nix::mount::MsFlags;
        let mut f = Fixture::new();
        let shared = f.dir.path().join("shared");
        let slave = f.dir.path().join("slave");
        let private = f.dir.path().join("private");
        fs::create_dir_all(&shared).unwrap();
        fs::create_dir_all(&private).unwrap();
        let _shared = bind(&shared, &shared, MsFlags::MS_SHARED);
        // A bind of a shared mount joins its peer group; making it a slave leaves it
        // receiving from that group only.
        let _slave = bind(&shared, &slave, MsFlags::MS_SLAVE);
        let _private = bind(&private, &private, MsFlags::MS_PRIVATE);

        let bidirectional = prop(cri::MountPropagation::PropagationBidirectional);
        let host_to_container = prop(cri::MountPropagation::PropagationHostToContainer);
        f.config.mounts = vec![
            cri::Mount {
                propagation: bidirectional,
                ..mount("/shared", &shared.join("sub"))
            },
            cri::Mount {
                propagation: host_to_container,
                ..mount("/slave", &slave)
            },
            cri::Mount {
                propagation: host_to_container,
                ..mount("/shared2", &shared)
            },
        ];
        let launch = f.prepare(&HostPathVolume).await.unwrap();
        assert_eq!(launch.mounts[0].options, ["rbind", "rshared"]);
        assert_eq!(launch.mounts[1].options, ["rbind", "rslave"]);
        assert_eq!(launch.mounts[2].options, ["rbind", "rslave"]);

        for (path, propagation, message) in [
            (&slave, bidirectional, "is not a shared mount"),
            (&private, bidirectional, "is not a shared mount"),
            (
                &private,
                host_to_container,
                "is not a shared or slave mount",
            ),
        ] {
            f.config.mounts = vec![cri::Mount {
                propagation,
                ..mount("/v", path)
            }];
            let err = f.prepare(&HostPathVolume).await.unwrap_err();
            match &err {
                IsolatorError::FailedPrecondition { field, reason } => {
                    assert_eq!(field, "mounts[0].propagation");
                    let canonical = fs::canonicalize(path).unwrap();
                    assert_eq!(
                        reason,
                        &format!(
                            "path {:?} is mounted on {:?} but it {message}",
                            canonical.display().to_string(),
                            canonical.display().to_string()
                        )
                    );
                }
                other => panic!("{path:?}: {other:?}"),
            }
        }
    }
}
