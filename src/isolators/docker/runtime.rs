//! `docker/runtime`: the container's process from the image config, with the Kubernetes
//! rules for overriding it (command, args, env, working dir, user), as containerd applies
//! them.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use cri_mesos_supervisor::protocol::LaunchInfo;
use k8s_cri::v1 as cri;
use serde_json::Value;

use crate::isolators::IsolatorName;
use crate::isolators::chain::{ContainerPrep, Isolator, IsolatorError};
use crate::provisioner::store::ImageRecord;

/// `PATH` when neither the image nor the CRI sets one (containerd's default spec).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// /etc/passwd and /etc/group larger than this are not account databases.
const MAX_ACCOUNT_FILE: u64 = 16 << 20;

#[derive(Debug, Default)]
pub struct DockerRuntime;

// No cleanup: the process description lives in the launch info only.
#[tonic::async_trait]
impl Isolator for DockerRuntime {
    fn name(&self) -> IsolatorName {
        IsolatorName("docker/runtime")
    }

    async fn prepare(
        &self,
        container: &ContainerPrep<'_>,
        launch: &mut LaunchInfo,
    ) -> Result<(), IsolatorError> {
        let config = container.config;
        let image = ImageConfig(&container.image.config);
        let default_sc = cri::LinuxContainerSecurityContext::default();
        let sc = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .unwrap_or(&default_sc);

        let args = argv(config, &image)?;
        let identity = identity(container.rootfs, sc, &image)?;
        let oom_score_adj = match config.linux.as_ref().and_then(|l| l.resources.as_ref()) {
            Some(r) if r.oom_score_adj != 0 => Some(
                i32::try_from(r.oom_score_adj)
                    .ok()
                    .filter(|v| (-1000..=1000).contains(v))
                    .ok_or_else(|| IsolatorError::InvalidArgument {
                        field: "linux.resources.oom_score_adj".into(),
                        reason: format!("{} is not within [-1000, 1000]", r.oom_score_adj),
                    })?,
            ),
            _ => None,
        };

        let process = &mut launch.process;
        process.args = args;
        process.env = environment(container, &image);
        process.cwd = working_dir(config, &image);
        process.uid = identity.uid;
        process.gid = identity.gid;
        process.additional_gids = identity.additional_gids;
        process.tty = config.tty;
        process.stdin = config.stdin;
        process.stdin_once = config.stdin_once;
        process.no_new_privileges = sc.no_new_privs;
        process.oom_score_adj = oom_score_adj;
        launch.stop_signal = Some(stop_signal(container.image));
        Ok(())
    }
}

/// The signal that asks the image's program to stop (`StopSignal`: "SIGUSR1", "USR1" or
/// "10"); SIGTERM when the image names none or one this host does not know.
pub fn stop_signal(image: &ImageRecord) -> i32 {
    match ImageConfig(&image.config).string("StopSignal") {
        "" => libc::SIGTERM,
        text => parse_signal(text).unwrap_or_else(|| {
            tracing::warn!(
                image = image.display_name(),
                stop_signal = text,
                "unknown StopSignal, using SIGTERM"
            );
            libc::SIGTERM
        }),
    }
}

/// Userspace's real-time range as Docker names it (glibc keeps 32 and 33 for itself).
const RTMIN: i32 = 34;
const RTMAX: i32 = 64;

/// A signal by number or by name, with or without "SIG", any case; "RTMIN+n"/"RTMAX-n"
/// as Docker accepts them.
pub fn parse_signal(text: &str) -> Option<i32> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i32>() {
        return (1..=RTMAX).contains(&n).then_some(n);
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let offset = |rest: &str, sign: &str| -> Option<i32> {
        match rest {
            "" => Some(0),
            _ => rest
                .strip_prefix(sign)?
                .parse::<i32>()
                .ok()
                .filter(|n| (0..=RTMAX - RTMIN).contains(n)),
        }
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return offset(rest, "+").map(|n| RTMIN + n);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return offset(rest, "-").map(|n| RTMAX - n);
    }
    let name = match name {
        "IOT" => "ABRT",
        "CLD" => "CHLD",
        "POLL" => "IO",
        other => other,
    };
    nix::sys::signal::Signal::from_str(&format!("SIG{name}"))
        .ok()
        .map(|s| s as i32)
}

/// The `config` object of an OCI/Docker image config.
struct ImageConfig<'a>(&'a Value);

impl ImageConfig<'_> {
    fn field(&self, key: &str) -> Option<&Value> {
        self.0.get("config")?.get(key)
    }

    fn string(&self, key: &str) -> &str {
        self.field(key).and_then(Value::as_str).unwrap_or("")
    }

    fn strings(&self, key: &str) -> Vec<String> {
        match self.field(key) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Kubernetes's rules: a command replaces the image's Entrypoint *and* its Cmd (even
/// without args); args alone replace the Cmd and keep the Entrypoint.
fn argv(
    config: &cri::ContainerConfig,
    image: &ImageConfig<'_>,
) -> Result<Vec<String>, IsolatorError> {
    let (mut argv, cmd) = if !config.command.is_empty() {
        (config.command.clone(), config.args.clone())
    } else if !config.args.is_empty() {
        (image.strings("Entrypoint"), config.args.clone())
    } else {
        (image.strings("Entrypoint"), image.strings("Cmd"))
    };
    argv.extend(cmd);
    if argv.is_empty() {
        return Err(IsolatorError::InvalidArgument {
            field: "command".into(),
            reason:
                "no command specified: the image has no Entrypoint/Cmd and the container no command"
                    .into(),
        });
    }
    Ok(argv)
}

/// containerd's order: PATH and HOSTNAME first, then the image's Env, then the CRI's, each
/// later entry replacing an earlier one of the same name in place.
fn environment(container: &ContainerPrep<'_>, image: &ImageConfig<'_>) -> Vec<String> {
    let mut env = vec![format!("PATH={DEFAULT_PATH}")];
    if let Some(hostname) = pod_hostname(container) {
        env.push(format!("HOSTNAME={hostname}"));
    }
    for entry in image.strings("Env") {
        set_env(&mut env, entry);
    }
    for kv in container.config.envs.iter().filter(|kv| !kv.key.is_empty()) {
        set_env(&mut env, format!("{}={}", kv.key, kv.value));
    }
    env
}

/// The pod's hostname; kubelet leaves it empty for host-network pods, which see the
/// node's.
fn pod_hostname(container: &ContainerPrep<'_>) -> Option<String> {
    let configured = &container.pod.config.hostname;
    if !configured.is_empty() {
        return Some(configured.clone());
    }
    match fs::read_to_string("/proc/sys/kernel/hostname") {
        Ok(name) if !name.trim().is_empty() => Some(name.trim().to_string()),
        _ => None,
    }
}

/// Replaces or appends `entry` ("KEY=value"); a bare "KEY" unsets KEY, as containerd does.
fn set_env(env: &mut Vec<String>, entry: String) {
    let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
    let same_key = |e: &String| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key;
    if !entry.contains('=') {
        env.retain(|e| !same_key(e));
        return;
    }
    match env.iter().position(same_key) {
        Some(i) => env[i] = entry,
        None => env.push(entry),
    }
}

fn working_dir(config: &cri::ContainerConfig, image: &ImageConfig<'_>) -> PathBuf {
    let dir = match config.working_dir.as_str() {
        "" => image.string("WorkingDir"),
        dir => dir,
    };
    // A relative WorkingDir can only mean relative to the root: there is no other
    // directory to start from.
    Path::new("/").join(dir)
}

#[derive(Debug, PartialEq)]
struct Identity {
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
}

/// A user or group as written: a number is an id, anything else a name to look up.
enum Who {
    Id(u32),
    Name(String),
}

impl Who {
    fn parse(text: &str) -> Who {
        text.parse()
            .map(Who::Id)
            .unwrap_or_else(|_| Who::Name(text.to_string()))
    }
}

fn id_from(field: &str, value: i64) -> Result<u32, IsolatorError> {
    u32::try_from(value).map_err(|_| IsolatorError::InvalidArgument {
        field: field.into(),
        reason: format!("{value} is not a valid id"),
    })
}

/// uid, gid and groups, as containerd's `WithUser` + `WithAdditionalGIDs`: the CRI's
/// run_as_* first, else the image's `User`; names looked up in the image's own
/// /etc/passwd and /etc/group.
fn identity(
    rootfs: &Path,
    sc: &cri::LinuxContainerSecurityContext,
    image: &ImageConfig<'_>,
) -> Result<Identity, IsolatorError> {
    let (user, group, field) = if !sc.run_as_username.is_empty() {
        (
            Some(Who::Name(sc.run_as_username.clone())),
            None,
            "run_as_username",
        )
    } else if let Some(uid) = &sc.run_as_user {
        (
            Some(Who::Id(id_from("run_as_user", uid.value)?)),
            None,
            "run_as_user",
        )
    } else {
        let (user, group) = match image.string("User") {
            "" => ("", ""),
            spec => spec.split_once(':').unwrap_or((spec, "")),
        };
        let user = (!user.is_empty()).then(|| Who::parse(user));
        let group = (!group.is_empty()).then(|| Who::parse(group));
        (user, group, "image user")
    };
    let group = match &sc.run_as_group {
        Some(gid) if user.is_none() => {
            // As containerd: a group alone would silently run as root.
            return Err(IsolatorError::InvalidArgument {
                field: "run_as_group".into(),
                reason: format!("user group {} is specified without user", gid.value),
            });
        }
        Some(gid) => Some(Who::Id(id_from("run_as_group", gid.value)?)),
        None => group,
    };

    let passwd = parse_passwd(&read_account_file(rootfs, "etc/passwd")?);
    let groups = parse_group(&read_account_file(rootfs, "etc/group")?);

    let (uid, entry) =
        match user {
            // Root, with root's memberships.
            None => (0, passwd.iter().find(|p| p.uid == 0)),
            Some(Who::Id(uid)) => (uid, passwd.iter().find(|p| p.uid == uid)),
            Some(Who::Name(name)) => {
                let entry = passwd.iter().find(|p| p.name == name).ok_or_else(|| {
                    IsolatorError::NotFound {
                        field: field.into(),
                        reason: format!("user {name:?} not found in the image's /etc/passwd"),
                    }
                })?;
                (entry.uid, Some(entry))
            }
        };
    let gid = match group {
        Some(Who::Id(gid)) => gid,
        Some(Who::Name(name)) => {
            groups
                .iter()
                .find(|g| g.name == name)
                .ok_or_else(|| IsolatorError::NotFound {
                    field: field.into(),
                    reason: format!("group {name:?} not found in the image's /etc/group"),
                })?
                .gid
        }
        None => entry.map_or(0, |e| e.gid),
    };

    // The primary gid is listed too (containerd does) so that setgroups never drops it.
    let mut additional_gids = vec![gid];
    let strict = sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32;
    if let (false, Some(username)) = (strict, entry.map(|e| e.name.as_str())) {
        additional_gids.extend(
            groups
                .iter()
                .filter(|g| g.name != username && g.members.iter().any(|m| m == username))
                .map(|g| g.gid),
        );
    }
    for &gid in &sc.supplemental_groups {
        additional_gids.push(id_from("supplemental_groups", gid)?);
    }
    let mut seen = std::collections::HashSet::new();
    additional_gids.retain(|g| seen.insert(*g));
    Ok(Identity {
        uid,
        gid,
        additional_gids,
    })
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn account_lines(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    account_lines(text)
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    account_lines(text)
        .filter_map(|f| {
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .unwrap_or(&"")
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

/// An account file of the image, empty when the image has none. The rootfs is image
/// content: its symlinks are resolved inside it, and anything but a regular file (a fifo
/// would block the daemon) counts as missing.
fn read_account_file(rootfs: &Path, relative: &str) -> Result<String, IsolatorError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IsolatorError::Io {
            isolator: "docker/runtime",
            path,
            source,
        }
    };
    let path =
        resolve_in_root(rootfs, Path::new(relative)).map_err(io_error(&rootfs.join(relative)))?;
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(file) => file,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(String::new());
        }
        Err(e) => return Err(io_error(&path)(e)),
    };
    if !file.metadata().map_err(io_error(&path))?.is_file() {
        tracing::warn!(path = %path.display(), "not a regular file, ignored");
        return Ok(String::new());
    }
    let mut bytes = Vec::new();
    file.take(MAX_ACCOUNT_FILE)
        .read_to_end(&mut bytes)
        .map_err(io_error(&path))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `path` inside `root` as a chroot would see it: symlinks are followed relative to
/// `root` and `..` stops at it, so the result never leaves `root`. Missing components
/// are kept as they are.
fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    fn push_reversed(pending: &mut Vec<OsString>, path: &Path) {
        for component in path.components().rev() {
            match component {
                Component::Normal(name) => pending.push(name.to_os_string()),
                Component::ParentDir => pending.push("..".into()),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    }
    let mut resolved = PathBuf::new();
    let mut pending = Vec::new();
    push_reversed(&mut pending, path);
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate = root.join(&resolved).join(&name);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                push_reversed(&mut pending, &target);
            }
            Ok(_) => resolved.push(name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => resolved.push(name),
            Err(e) => return Err(e),
        }
    }
    Ok(root.join(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolators::registry::test_support::Fixture;
    use serde_json::json;

    fn kv(key: &str, value: &str) -> cri::KeyValue {
        cri::KeyValue {
            key: key.into(),
            value: value.into(),
        }
    }

    async fn process(f: &Fixture) -> cri_mesos_supervisor::protocol::ProcessSpec {
        f.prepare(&DockerRuntime).await.unwrap().process
    }

    #[tokio::test]
    async fn image_entrypoint_and_cmd() {
        let f = Fixture::new();
        assert_eq!(process(&f).await.args, ["/entry", "serve", "--port=80"]);
    }

    #[tokio::test]
    async fn command_without_args_drops_the_image_cmd() {
        let mut f = Fixture::new();
        f.config.command = vec!["/bin/sh".into()];
        assert_eq!(process(&f).await.args, ["/bin/sh"]);
        f.config.args = vec!["-c".into(), "true".into()];
        assert_eq!(process(&f).await.args, ["/bin/sh", "-c", "true"]);
    }

    #[tokio::test]
    async fn args_alone_keep_the_entrypoint() {
        let mut f = Fixture::new();
        f.config.args = vec!["check".into()];
        assert_eq!(process(&f).await.args, ["/entry", "check"]);
    }

    #[tokio::test]
    async fn no_command_at_all_is_invalid() {
        let mut f = Fixture::new();
        f.image_config().remove("Entrypoint");
        f.image_config().insert("Cmd".into(), Value::Null);
        let err = f.prepare(&DockerRuntime).await.unwrap_err();
        assert!(
            matches!(&err, IsolatorError::InvalidArgument { field, .. } if field == "command"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "command: no command specified: the image has no Entrypoint/Cmd and the container no command"
        );
    }

    #[tokio::test]
    async fn env_overrides_and_defaults() {
        let mut f = Fixture::new();
        f.config.envs = vec![kv("LANG", "C.UTF-8"), kv("EXTRA", "a=b")];
        assert_eq!(
            process(&f).await.env,
            [
                "PATH=/usr/bin:/bin",
                "HOSTNAME=mypod",
                "LANG=C.UTF-8",
                "EXTRA=a=b"
            ]
        );

        f.image_config().insert("Env".into(), json!(["LANG=C"]));
        f.config.envs = vec![kv("HOSTNAME", "mine")];
        assert_eq!(
            process(&f).await.env,
            [&format!("PATH={DEFAULT_PATH}"), "HOSTNAME=mine", "LANG=C"]
        );

        f.config.envs = vec![kv("PATH", "/opt/bin")];
        assert_eq!(process(&f).await.env[0], "PATH=/opt/bin");
    }

    #[tokio::test]
    async fn working_dir_cri_image_root() {
        let mut f = Fixture::new();
        assert_eq!(process(&f).await.cwd, Path::new("/app"));
        f.config.working_dir = "/work".into();
        assert_eq!(process(&f).await.cwd, Path::new("/work"));
        f.config.working_dir.clear();
        f.image_config().remove("WorkingDir");
        assert_eq!(process(&f).await.cwd, Path::new("/"));
    }

    #[tokio::test]
    async fn flags_from_the_config() {
        let mut f = Fixture::new();
        f.config.tty = true;
        f.config.stdin = true;
        f.config.stdin_once = true;
        f.security_context().no_new_privs = true;
        f.config.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
            oom_score_adj: 999,
            ..Default::default()
        });
        let p = process(&f).await;
        assert!(p.tty && p.stdin && p.stdin_once && p.no_new_privileges);
        assert_eq!(p.oom_score_adj, Some(999));

        f.config.linux.as_mut().unwrap().resources = Some(Default::default());
        assert_eq!(process(&f).await.oom_score_adj, None);
    }

    fn ids(p: &cri_mesos_supervisor::protocol::ProcessSpec) -> (u32, u32, Vec<u32>) {
        (p.uid, p.gid, p.additional_gids.clone())
    }

    #[tokio::test]
    async fn default_user_is_root_with_its_groups() {
        let f = Fixture::new();
        assert_eq!(ids(&process(&f).await), (0, 0, vec![0, 10]));
    }

    #[tokio::test]
    async fn user_by_uid() {
        let mut f = Fixture::new();
        f.security_context().run_as_user = Some(cri::Int64Value { value: 1000 });
        // "app" is in app's own group list, which is not a supplemental group.
        assert_eq!(
            ids(&process(&f).await),
            (1000, 1000, vec![1000, 10, 29, 999])
        );

        f.security_context().run_as_group = Some(cri::Int64Value { value: 50 });
        assert_eq!(ids(&process(&f).await), (1000, 50, vec![50, 10, 29, 999]));

        // Not in /etc/passwd: gid 0, no memberships.
        f.security_context().run_as_user = Some(cri::Int64Value { value: 4242 });
        f.security_context().run_as_group = None;
        assert_eq!(ids(&process(&f).await), (4242, 0, vec![0]));
    }

    #[tokio::test]
    async fn user_by_name() {
        let mut f = Fixture::new();
        f.security_context().run_as_username = "nobody".into();
        assert_eq!(ids(&process(&f).await), (65534, 65534, vec![65534]));

        f.security_context().run_as_username = "ghost".into();
        let err = f.prepare(&DockerRuntime).await.unwrap_err();
        assert!(
            matches!(&err, IsolatorError::NotFound { field, reason }
                if field == "run_as_username" && reason.contains("ghost")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn image_user_forms() {
        let mut f = Fixture::new();
        let mut with_user = async |user: &str| {
            f.image_config().insert("User".into(), json!(user));
            f.prepare(&DockerRuntime).await.map(|l| ids(&l.process))
        };
        assert_eq!(
            with_user("app").await.unwrap(),
            (1000, 1000, vec![1000, 10, 29, 999])
        );
        assert_eq!(
            with_user("app:staff").await.unwrap(),
            (1000, 50, vec![50, 10, 29, 999])
        );
        assert_eq!(
            with_user("1000:7").await.unwrap(),
            (1000, 7, vec![7, 10, 29, 999])
        );
        assert_eq!(with_user("1:root").await.unwrap(), (1, 0, vec![0]));
        assert_eq!(with_user("4242").await.unwrap(), (4242, 0, vec![0]));
        let err = with_user("app:ghosts").await.unwrap_err();
        assert!(
            matches!(&err, IsolatorError::NotFound { field, reason }
                if field == "image user" && reason.contains("ghosts")),
            "{err:?}"
        );
        let err = with_user("ghost").await.unwrap_err();
        assert!(
            matches!(&err, IsolatorError::NotFound { field, .. } if field == "image user"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn cri_user_wins_over_the_image() {
        let mut f = Fixture::new();
        f.image_config().insert("User".into(), json!("app:staff"));
        f.security_context().run_as_user = Some(cri::Int64Value { value: 65534 });
        assert_eq!(ids(&process(&f).await), (65534, 65534, vec![65534]));
    }

    #[tokio::test]
    async fn supplemental_groups_and_policy() {
        let mut f = Fixture::new();
        f.security_context().run_as_user = Some(cri::Int64Value { value: 1000 });
        f.security_context().supplemental_groups = vec![2000, 29];
        assert_eq!(
            ids(&process(&f).await),
            (1000, 1000, vec![1000, 10, 29, 999, 2000])
        );
        f.security_context().supplemental_groups_policy =
            cri::SupplementalGroupsPolicy::Strict as i32;
        assert_eq!(ids(&process(&f).await), (1000, 1000, vec![1000, 2000, 29]));
    }

    #[tokio::test]
    async fn group_without_user_is_invalid() {
        let mut f = Fixture::new();
        f.security_context().run_as_group = Some(cri::Int64Value { value: 50 });
        let err = f.prepare(&DockerRuntime).await.unwrap_err();
        assert!(
            matches!(&err, IsolatorError::InvalidArgument { field, .. } if field == "run_as_group"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn account_files_do_not_leave_the_rootfs() {
        let mut f = Fixture::new();
        let etc = f.rootfs().join("etc");
        fs::remove_dir_all(&etc).unwrap();
        // An absolute link is resolved inside the rootfs, not on the host (whose /etc/passwd
        // knows "root" but not "app").
        fs::create_dir_all(f.rootfs().join("real")).unwrap();
        fs::write(
            f.rootfs().join("real/passwd"),
            "app:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/real", &etc).unwrap();
        f.security_context().run_as_username = "app".into();
        assert_eq!(process(&f).await.uid, 1000);

        // Links that would reach a passwd outside the rootfs on the host find nothing.
        fs::remove_file(&etc).unwrap();
        fs::create_dir(&etc).unwrap();
        let outside = f.dir.path().join("outside");
        fs::write(&outside, "root:x:0:0::/:/bin/sh\n").unwrap();
        f.security_context().run_as_username = "root".into();
        for target in [outside.clone(), PathBuf::from("../../outside")] {
            let _ = fs::remove_file(etc.join("passwd"));
            std::os::unix::fs::symlink(&target, etc.join("passwd")).unwrap();
            let err = f.prepare(&DockerRuntime).await.unwrap_err();
            assert!(
                matches!(err, IsolatorError::NotFound { .. }),
                "{target:?}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_fifo_passwd_is_ignored() {
        let mut f = Fixture::new();
        let passwd = f.rootfs().join("etc/passwd");
        fs::remove_file(&passwd).unwrap();
        nix::unistd::mkfifo(&passwd, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        f.security_context().run_as_user = Some(cri::Int64Value { value: 1000 });
        assert_eq!(ids(&process(&f).await), (1000, 0, vec![0]));
    }

    #[test]
    fn stop_signals() {
        let mut image = Fixture::new().image;
        assert_eq!(stop_signal(&image), libc::SIGTERM);
        for (text, signal) in [
            ("SIGUSR1", libc::SIGUSR1),
            ("USR1", libc::SIGUSR1),
            ("sigquit", libc::SIGQUIT),
            ("10", 10),
            ("SIGRTMIN+3", 37),
            ("RTMAX", 64),
            ("SIGIOT", libc::SIGABRT),
            ("SIGBOGUS", libc::SIGTERM),
            ("0", libc::SIGTERM),
            ("99", libc::SIGTERM),
        ] {
            image.config["config"]["StopSignal"] = json!(text);
            assert_eq!(stop_signal(&image), signal, "{text}");
        }
    }
}
