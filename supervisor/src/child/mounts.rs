//! Mounts of the container child: the rootfs's standard mounts, the container's own
//! mounts (resolved in the rootfs without leaving it), masked and read-only paths.

use super::*;

pub(super) fn mount(
    src: &Path,
    dst: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let src = cs(src)?;
    let dst = cs(dst)?;
    let fstype = fstype
        .map(CString::new)
        .transpose()
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let data = (!data.is_empty())
        .then(|| CString::new(data))
        .transpose()
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    sys::mount(Some(&src), &dst, fstype.as_deref(), flags, data.as_deref())
}

/// The mount point (in this mount namespace) that holds `path`.
pub(super) fn containing_mount(path: &Path) -> io::Result<PathBuf> {
    let table = crate::mountinfo::read()?;
    crate::mountinfo::containing(&table, path)
        .map(|m| m.mount_point.clone())
        .ok_or_else(|| io::Error::other(format!("no mount holds {}", path.display())))
}

/// Changes a mount's flags or propagation (no source, no type).
pub(super) fn mount_change(dst: &Path, flags: libc::c_ulong) -> io::Result<()> {
    sys::mount(None, &cs(dst)?, None, flags, None)
}

/// Remounts the bind mount at `dst` with per-mount `flags`; on EPERM retries keeping the flags
/// the kernel locked on it (e.g. nosuid/nodev inherited from the source).
pub(super) fn remount_bind(dst: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let f = libc::MS_REMOUNT | libc::MS_BIND | flags;
    match mount_change(dst, f) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            mount_change(dst, f | sys::mount_flags_of(&cs(dst)?)?)
        }
        r => r,
    }
}

/// Resolves `unsafe_path` inside `root` the way a chroot would: component by component,
/// following symlinks relative to `root` and clamping `..` at it, so the result never leaves
/// `root`. Missing components are appended as they are. Returns a host path under `root`.
pub fn resolve_in_root(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: Vec<OsString> = Vec::new(); // reversed: next component at the end
    push_components(&mut pending, unsafe_path);
    let mut links = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let mut cand = root.to_path_buf();
        cand.extend(&resolved);
        cand.push(&c);
        match fs::symlink_metadata(&cand) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = fs::read_link(&cand)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                push_components(&mut pending, &target);
            }
            Ok(_) => resolved.push(c),
            Err(e) if e.kind() == io::ErrorKind::NotFound => resolved.push(c),
            Err(e) => return Err(e),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

pub(super) fn push_components(pending: &mut Vec<OsString>, p: &Path) {
    let comps: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    pending.extend(comps.into_iter().rev());
}

pub(super) fn mkdir_all(p: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(mode).create(p)
}

/// Makes sure `p` (already resolved inside the rootfs) exists as a directory or file.
pub(super) fn create_target(p: &Path, kind: CreateKind) -> io::Result<()> {
    match kind {
        CreateKind::Dir | CreateKind::Auto => mkdir_all(p, 0o755),
        CreateKind::File => {
            if let Some(parent) = p.parent() {
                mkdir_all(parent, 0o755)?;
            }
            match fs::symlink_metadata(p) {
                Ok(_) => Ok(()),
                Err(_) => fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(p)
                    .map(drop),
            }
        }
        CreateKind::None => Ok(()),
    }
}

/// Opens (creating when missing) the mount target `dst`, a path inside `root` from
/// [`resolve_in_root`], one component at a time without following any symlink. A
/// container sharing a volume with this one cannot swap a directory for a symlink between
/// the resolution and the mount and so make us create or mount outside the rootfs (runc's
/// CVE-2021-30465): a symlink found now fails the launch. The mount goes onto the
/// returned descriptor (`/proc/self/fd/N`), not onto the path.
pub(super) fn open_target(root: &Path, dst: &Path, kind: CreateKind) -> io::Result<OwnedFd> {
    let rel = dst.strip_prefix(root).map_err(|_| {
        io::Error::other(format!(
            "mount target {} is outside the rootfs",
            dst.display()
        ))
    })?;
    let names: Vec<&OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let mut at = OwnedFd::from(
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(root)?,
    );
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        let name = CString::new(name.as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let dir = !last || matches!(kind, CreateKind::Dir | CreateKind::Auto);
        let flags = libc::O_PATH | if last { 0 } else { libc::O_DIRECTORY };
        match sys::openat_no_symlinks(at.as_fd(), &name, flags, 0) {
            Ok(fd) => at = fd,
            Err(e)
                if e.raw_os_error() == Some(libc::ENOENT)
                    && !(last && kind == CreateKind::None) =>
            {
                if dir {
                    sys::mkdirat(at.as_fd(), &name, 0o755)?;
                } else {
                    drop(sys::openat_no_symlinks(
                        at.as_fd(),
                        &name,
                        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                        0o644,
                    )?);
                }
                at = sys::openat_no_symlinks(at.as_fd(), &name, flags, 0)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

/// Parsed fstab-like mount options.
#[derive(Debug, Default, PartialEq)]
pub struct MountOpts {
    pub flags: libc::c_ulong,
    pub bind: bool,
    pub propagation: Vec<libc::c_ulong>,
    pub data: String,
}

pub fn parse_options(options: &[String]) -> MountOpts {
    let mut o = MountOpts::default();
    for opt in options {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match opt.as_str() {
            "ro" | "rro" => (libc::MS_RDONLY, 0),
            "rw" | "rrw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "atime" => (0, libc::MS_NOATIME),
            "noatime" => (libc::MS_NOATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "bind" => {
                o.bind = true;
                (0, 0)
            }
            "rbind" => {
                o.bind = true;
                (libc::MS_REC, 0)
            }
            "defaults" | "remount" => (0, 0),
            "private" => prop(&mut o, libc::MS_PRIVATE),
            "rprivate" => prop(&mut o, libc::MS_PRIVATE | libc::MS_REC),
            "slave" => prop(&mut o, libc::MS_SLAVE),
            "rslave" => prop(&mut o, libc::MS_SLAVE | libc::MS_REC),
            "shared" => prop(&mut o, libc::MS_SHARED),
            "rshared" => prop(&mut o, libc::MS_SHARED | libc::MS_REC),
            "unbindable" => prop(&mut o, libc::MS_UNBINDABLE),
            "runbindable" => prop(&mut o, libc::MS_UNBINDABLE | libc::MS_REC),
            data => {
                if !o.data.is_empty() {
                    o.data.push(',');
                }
                o.data.push_str(data);
                (0, 0)
            }
        };
        o.flags = (o.flags | set) & !clear;
    }
    o
}

pub(super) fn prop(o: &mut MountOpts, f: libc::c_ulong) -> (libc::c_ulong, libc::c_ulong) {
    o.propagation.push(f);
    (0, 0)
}

/// Per-mount flags a bind mount needs a remount for.
const BIND_REMOUNT_FLAGS: libc::c_ulong = libc::MS_RDONLY
    | libc::MS_NOSUID
    | libc::MS_NODEV
    | libc::MS_NOEXEC
    | libc::MS_NOATIME
    | libc::MS_NODIRATIME
    | libc::MS_RELATIME
    | libc::MS_STRICTATIME;

/// Makes one mount (`dst` already resolved inside the rootfs).
pub(super) fn do_mount(m: &MountSpec, root: &Path, dst: &Path) -> io::Result<()> {
    let o = parse_options(&m.options);
    let fstype = m.fstype.as_deref().filter(|t| !t.is_empty());
    let bind = o.bind || matches!(fstype, None | Some("bind") | Some("none"));
    let kind = match m.create {
        CreateKind::Auto if bind && !m.source.is_dir() => CreateKind::File,
        k => k,
    };
    let target = open_target(root, dst, kind)?;
    let at = PathBuf::from(format!("/proc/self/fd/{}", target.as_raw_fd()));
    if bind {
        mount(
            &m.source,
            &at,
            None,
            libc::MS_BIND | (o.flags & libc::MS_REC),
            "",
        )?;
        let f = o.flags & BIND_REMOUNT_FLAGS;
        if f != 0 {
            remount_bind(dst, f)?;
        }
    } else {
        mount(&m.source, &at, fstype, o.flags & !libc::MS_REC, &o.data)?;
    }
    for p in o.propagation {
        mount_change(dst, p)?;
    }
    Ok(())
}

/// The standard nodes of the container's /dev (bound from the host if mknod is refused).
const DEV_NODES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const DEV_LINKS: [(&str, &str); 6] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
];

/// mknod with `mode` (type + permissions), replacing whatever is there; falls back to an
/// empty file with `host` bound onto it.
pub(super) fn make_node(
    path: &Path,
    mode: libc::mode_t,
    major: u64,
    minor: u64,
    host: &Path,
) -> io::Result<()> {
    if fs::symlink_metadata(path).is_ok() {
        fs::remove_file(path)?;
    }
    match sys::mknod(&cs(path)?, mode, major, minor) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            create_target(path, CreateKind::File)?;
            mount(host, path, None, libc::MS_BIND, "")
        }
        r => r,
    }
}

pub(super) fn standard_mounts(root: &Path, tty: bool, sysfs_writable: bool) -> Step<()> {
    let at = |p: &str| -> Step<PathBuf> {
        let d = step("resolve", resolve_in_root(root, Path::new(p)))?;
        step(&format!("mkdir {p}"), mkdir_all(&d, 0o755))?;
        Ok(d)
    };
    let nosuid_noexec_nodev = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
    let proc_dir = at("/proc")?;
    step(
        "mount /proc",
        mount(
            Path::new("proc"),
            &proc_dir,
            Some("proc"),
            nosuid_noexec_nodev,
            "",
        ),
    )?;
    let dev = at("/dev")?;
    step(
        "mount /dev",
        mount(
            Path::new("tmpfs"),
            &dev,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_STRICTATIME,
            "mode=755,size=65536k",
        ),
    )?;
    for (name, major, minor) in DEV_NODES {
        let p = dev.join(name);
        let host = Path::new("/dev").join(name);
        step(
            &format!("mknod /dev/{name}"),
            make_node(&p, libc::S_IFCHR | 0o666, major, minor, &host),
        )?;
        step(
            &format!("chmod /dev/{name}"),
            fs::set_permissions(&p, fs::Permissions::from_mode(0o666)),
        )?;
    }
    for (name, target) in DEV_LINKS {
        step(
            &format!("symlink /dev/{name}"),
            std::os::unix::fs::symlink(target, dev.join(name)),
        )?;
    }
    let pts = at("/dev/pts")?;
    step(
        "mount /dev/pts",
        mount(
            Path::new("devpts"),
            &pts,
            Some("devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        ),
    )?;
    let shm = at("/dev/shm")?;
    step(
        "chmod /dev/shm",
        fs::set_permissions(&shm, fs::Permissions::from_mode(0o1777)),
    )?;
    let mq = at("/dev/mqueue")?;
    step(
        "mount /dev/mqueue",
        mount(
            Path::new("mqueue"),
            &mq,
            Some("mqueue"),
            nosuid_noexec_nodev,
            "",
        ),
    )?;
    if tty {
        // runc binds the pty slave over /dev/console.
        let slave = step("readlink tty", fs::read_link("/proc/self/fd/0"))?;
        let console = dev.join("console");
        step(
            "create /dev/console",
            create_target(&console, CreateKind::File),
        )?;
        step(
            "mount /dev/console",
            mount(&slave, &console, None, libc::MS_BIND, ""),
        )?;
    }
    let sys_dir = at("/sys")?;
    let sys_ro = if sysfs_writable { 0 } else { libc::MS_RDONLY };
    let sysfs = mount(
        Path::new("sysfs"),
        &sys_dir,
        Some("sysfs"),
        nosuid_noexec_nodev | sys_ro,
        "",
    );
    match sysfs {
        // Not allowed to mount a sysfs for this network namespace: bind the host's, read-only.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            step(
                "bind /sys",
                mount(
                    Path::new("/sys"),
                    &sys_dir,
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    "",
                ),
            )?;
            step(
                "remount /sys",
                remount_bind(&sys_dir, sys_ro | nosuid_noexec_nodev),
            )?;
        }
        r => step("mount /sys", r)?,
    }
    Ok(())
}

pub(super) fn masked_and_readonly(root: &Path, info: &LaunchInfo) -> Step<()> {
    for p in &info.readonly_paths {
        let d = step("resolve", resolve_in_root(root, p))?;
        if fs::symlink_metadata(&d).is_err() {
            continue;
        }
        let what = format!("readonly {}", p.display());
        step(&what, mount(&d, &d, None, libc::MS_BIND | libc::MS_REC, ""))?;
        step(&what, remount_bind(&d, libc::MS_RDONLY))?;
    }
    for p in &info.masked_paths {
        let d = step("resolve", resolve_in_root(root, p))?;
        let Ok(meta) = fs::metadata(&d) else { continue };
        let what = format!("mask {}", p.display());
        if meta.is_dir() {
            step(
                &what,
                mount(Path::new("tmpfs"), &d, Some("tmpfs"), libc::MS_RDONLY, ""),
            )?;
        } else {
            step(
                &what,
                mount(Path::new("/dev/null"), &d, None, libc::MS_BIND, ""),
            )?;
        }
    }
    Ok(())
}
