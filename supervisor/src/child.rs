//! The container child: what runs between the supervisor's `clone` and the container's
//! `execve` (the work of Mesos's `mesos-containerizer launch`).
//!
//! The child runs in a copy of the single-threaded supervisor, so ordinary Rust (allocation
//! included) is fine; it must never return into the supervisor's loop: every path ends in
//! `execve` or `_exit`.

use crate::protocol::{CreateKind, LaunchInfo, MountSpec, NsKind, SeccompProgram};
use crate::sys;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Default `PATH` when the environment has none (as runc/containerd).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Descriptors the child keeps (all others are closed right after the clone).
pub struct ChildFds {
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// Child -> supervisor: "ready <hostpid>\n", then "error: ...\n" or EOF at exec (CLOEXEC).
    pub status: RawFd,
    /// Supervisor -> child: one byte releases the exec; EOF aborts.
    pub start: RawFd,
    pub tty: bool,
}

/// A failed setup step: "<step>: <detail>".
type Step<T> = Result<T, String>;

/// `strerror`-like text without Rust's " (os error N)" suffix, lower-cased like Go's errors.
pub fn errstr(e: &io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error") {
        Some(i) => &s[..i],
        None => &s[..],
    };
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn step<T>(name: &str, r: io::Result<T>) -> Step<T> {
    r.map_err(|e| format!("{name}: {}", errstr(&e)))
}

fn cs(p: &Path) -> io::Result<CString> {
    sys::cpath(p)
}

fn mount(
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
fn containing_mount(path: &Path) -> io::Result<PathBuf> {
    let table = crate::mountinfo::read()?;
    crate::mountinfo::containing(&table, path)
        .map(|m| m.mount_point.clone())
        .ok_or_else(|| io::Error::other(format!("no mount holds {}", path.display())))
}

/// Changes a mount's flags or propagation (no source, no type).
fn mount_change(dst: &Path, flags: libc::c_ulong) -> io::Result<()> {
    sys::mount(None, &cs(dst)?, None, flags, None)
}

/// Remounts the bind mount at `dst` with per-mount `flags`; on EPERM retries keeping the flags
/// the kernel locked on it (e.g. nosuid/nodev inherited from the source).
fn remount_bind(dst: &Path, flags: libc::c_ulong) -> io::Result<()> {
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

fn push_components(pending: &mut Vec<OsString>, p: &Path) {
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

fn mkdir_all(p: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(mode).create(p)
}

/// Makes sure `p` (already resolved inside the rootfs) exists as a directory or file.
fn create_target(p: &Path, kind: CreateKind) -> io::Result<()> {
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
fn open_target(root: &Path, dst: &Path, kind: CreateKind) -> io::Result<OwnedFd> {
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

fn prop(o: &mut MountOpts, f: libc::c_ulong) -> (libc::c_ulong, libc::c_ulong) {
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
fn do_mount(m: &MountSpec, root: &Path, dst: &Path) -> io::Result<()> {
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
fn make_node(
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

fn standard_mounts(root: &Path, tty: bool, sysfs_writable: bool) -> Step<()> {
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

fn masked_and_readonly(root: &Path, info: &LaunchInfo) -> Step<()> {
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

/// The host pid of the calling process: `/proc` here is still the host's (inherited) mount,
/// whose `self` link names the pid in the pid namespace that mounted it.
pub fn host_pid() -> io::Result<i32> {
    let l = fs::read_link("/proc/self")?;
    l.to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Writes "0" (= the writing process) into each `cgroup.procs` file.
pub fn join_cgroups(files: &[PathBuf]) -> Step<()> {
    for f in files {
        step(&format!("join cgroup {}", f.display()), fs::write(f, b"0"))?;
    }
    Ok(())
}

/// Writes `value` to /proc/self/oom_score_adj; a refused decrease keeps the current value.
pub fn set_oom_score_adj(value: i32) -> io::Result<()> {
    let path = "/proc/self/oom_score_adj";
    match fs::write(path, value.to_string()) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
            let cur: i32 = fs::read_to_string(path)?.trim().parse().unwrap_or(i32::MIN);
            if value < cur { Ok(()) } else { Err(e) }
        }
        r => r,
    }
}

fn ns_type(kind: NsKind) -> libc::c_int {
    match kind {
        NsKind::Net => libc::CLONE_NEWNET,
        NsKind::Uts => libc::CLONE_NEWUTS,
        NsKind::Ipc => libc::CLONE_NEWIPC,
        NsKind::Pid => libc::CLONE_NEWPID,
        NsKind::Mnt => libc::CLONE_NEWNS,
    }
}

fn setup(info: &LaunchInfo, fds: &ChildFds) -> Step<i32> {
    sys::reset_signals_for_exec();
    sys::umask(0);
    step("stdio", sys::dup2(fds.stdin, 0))?;
    step("stdio", sys::dup2(fds.stdout, 1))?;
    step("stdio", sys::dup2(fds.stderr, 2))?;
    sys::close_fds_except(&[fds.status, fds.start]);
    let pid = step("host pid", host_pid())?;
    join_cgroups(&info.cgroup_procs)?;

    // Namespaces to join (pid ones were handled by the supervisor around the clone).
    let mut opened = Vec::new();
    for j in info
        .namespaces
        .join
        .iter()
        .filter(|j| j.kind != NsKind::Pid)
    {
        let f = step(
            &format!("open {}", j.path.display()),
            fs::File::open(&j.path),
        )?;
        opened.push((j.kind, f));
    }
    for (kind, f) in &opened {
        step(
            &format!("setns {kind:?}"),
            sys::setns(f.as_raw_fd(), ns_type(*kind)),
        )?;
    }
    if opened.iter().any(|(k, _)| *k == NsKind::Mnt) {
        step("unshare mnt", sys::unshare(libc::CLONE_NEWNS))?;
    }
    let own_uts = opened.iter().any(|(k, _)| *k == NsKind::Uts);
    drop(opened);

    // Nothing we mount propagates back to the host; host mounts still propagate in. The
    // exception is a bidirectional (rshared) volume: it must stay a peer of its host mount,
    // so then the whole tree stays shared and only the mount holding the rootfs is made
    // private, which keeps the container's own mounts (proc, dev, the rootfs bind) off the
    // host while a volume bound from a shared source joins the source's peer group.
    let bidirectional = info
        .mounts
        .iter()
        .any(|m| m.options.iter().any(|o| o == "rshared" || o == "shared"));
    let root = step("rootfs", fs::canonicalize(&info.rootfs))?;
    if bidirectional {
        step(
            "make / rshared",
            mount_change(Path::new("/"), libc::MS_SHARED | libc::MS_REC),
        )?;
        let parent = step("find the rootfs mount", containing_mount(&root))?;
        step(
            "make the rootfs mount private",
            mount_change(&parent, libc::MS_PRIVATE),
        )?;
    } else {
        step(
            "make / rslave",
            mount_change(Path::new("/"), libc::MS_SLAVE | libc::MS_REC),
        )?;
    }
    step(
        "bind rootfs",
        mount(&root, &root, None, libc::MS_BIND | libc::MS_REC, ""),
    )?;
    standard_mounts(&root, fds.tty, info.sysfs_writable)?;
    for m in &info.mounts {
        let d = step("resolve", resolve_in_root(&root, &m.destination))?;
        step(
            &format!("mount {}", m.destination.display()),
            do_mount(m, &root, &d),
        )?;
    }
    for d in &info.devices {
        let p = step("resolve", resolve_in_root(&root, &d.path))?;
        let what = format!("device {}", d.path.display());
        if let Some(parent) = p.parent() {
            step(&what, mkdir_all(parent, 0o755))?;
        }
        let t = if d.kind == 'b' {
            libc::S_IFBLK
        } else {
            libc::S_IFCHR
        };
        let host = d.host_path.clone().unwrap_or_else(|| d.path.clone());
        step(
            &what,
            make_node(&p, t | (d.file_mode & 0o7777), d.major, d.minor, &host),
        )?;
        if fs::symlink_metadata(&p)
            .is_ok_and(|m| m.file_type().is_char_device() || m.file_type().is_block_device())
        {
            step(
                &what,
                fs::set_permissions(&p, fs::Permissions::from_mode(d.file_mode & 0o7777)),
            )?;
        }
        step(
            &what,
            std::os::unix::fs::lchown(&p, Some(d.uid), Some(d.gid)),
        )?;
    }
    masked_and_readonly(&root, info)?;
    if let Some(h) = info.hostname.as_deref().filter(|_| own_uts) {
        step("sethostname", sys::sethostname(h))?;
    }
    let cwd = step("resolve", resolve_in_root(&root, &info.process.cwd))?;
    if fs::symlink_metadata(&cwd).is_err() {
        step("mkdir cwd", mkdir_all(&cwd, 0o755))?;
    }
    if info.rootfs_readonly {
        step("remount rootfs ro", remount_bind(&root, libc::MS_RDONLY))?;
    }

    // pivot_root(".", ".") stacks the old root on top of the new one; detach it. The old
    // root is entered through a descriptor opened before, as runc does: "." after the
    // pivot may name the new root for mount(2), and making *that* rslave would cut
    // bidirectional volumes off their host peers.
    let old_root = step("open old root", fs::File::open("/"))?;
    step("chdir rootfs", std::env::set_current_dir(&root))?;
    step("pivot_root", sys::pivot_root_dot())?;
    step("enter old root", sys::fchdir(old_root.as_raw_fd()))?;
    drop(old_root);
    step(
        "make old root rslave",
        mount_change(Path::new("."), libc::MS_SLAVE | libc::MS_REC),
    )?;
    step("umount old root", sys::umount_detach(c"."))?;
    step("chdir /", std::env::set_current_dir("/"))?;

    if let Some(adj) = info.process.oom_score_adj {
        step("oom_score_adj", set_oom_score_adj(adj))?;
    }
    if info.process.no_new_privileges {
        step("no_new_privs", sys::set_no_new_privs())?;
    }
    step("setsid", sys::setsid())?;
    if fds.tty {
        step("controlling tty", sys::set_controlling_tty(0))?;
    }
    let p = &info.process;
    if !p.no_new_privileges
        && let Some(filter) = seccomp_filter(p.seccomp.as_ref())?
    {
        step("seccomp", filter.install())?;
    }
    crate::creds::become_user(
        p.uid,
        p.gid,
        &p.additional_gids,
        p.capabilities.as_ref(),
        &p.rlimits,
    )
    .map_err(|e| format!("credentials: {e}"))?;
    step(
        &format!("chdir {}", p.cwd.display()),
        std::env::set_current_dir(&p.cwd),
    )?;
    sys::umask(0o022);
    Ok(pid)
}

/// Looks `arg0` up like execvpe (through `PATH` of `env`, default [`DEFAULT_PATH`]).
pub fn find_program(arg0: &str, env: &[String]) -> Result<CString, String> {
    let c = |p: &Path| cs(p).map_err(|e| format!("exec: {arg0:?}: {}", errstr(&e)));
    if arg0.is_empty() {
        return Err("exec: no command specified".into());
    }
    if arg0.contains('/') {
        return match fs::metadata(arg0) {
            Ok(_) => c(Path::new(arg0)),
            Err(e) => Err(format!("exec: {arg0:?}: stat {arg0}: {}", errstr(&e))),
        };
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(arg0);
        if fs::metadata(&cand).is_ok_and(|m| m.is_file()) {
            let cc = c(&cand)?;
            if sys::is_executable(&cc).is_ok() {
                return Ok(cc);
            }
        }
    }
    Err(format!(
        "exec: {arg0:?}: executable file not found in $PATH"
    ))
}

/// A seccomp program ready to install.
pub struct Filter {
    instructions: Vec<[u8; 8]>,
    flags: u32,
}

impl Filter {
    pub fn install(&self) -> io::Result<()> {
        sys::seccomp_set_filter(&self.instructions, self.flags)
    }
}

/// The seccomp program the daemon sent, decoded.
pub fn seccomp_filter(program: Option<&SeccompProgram>) -> Step<Option<Filter>> {
    program
        .map(|p| {
            p.instructions()
                .map(|instructions| Filter {
                    instructions,
                    flags: p.flags,
                })
                .ok_or_else(|| "seccomp: the daemon sent a malformed program".to_string())
        })
        .transpose()
}

/// Resolves and execs `args` with `env`; returns the error message on failure. A
/// `seccomp` filter goes on between the lookup and `execve`, so that only `execve` runs
/// under it (runc's order with `no_new_privs`).
pub fn exec(args: &[String], env: &[String], seccomp: Option<&Filter>) -> String {
    let arg0 = args.first().map(String::as_str).unwrap_or("");
    let path = match find_program(arg0, env) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let to_c = |v: &[String]| -> Option<Vec<CString>> {
        v.iter().map(|s| CString::new(s.as_str()).ok()).collect()
    };
    let (Some(argv), Some(envp)) = (to_c(args), to_c(env)) else {
        return format!("exec: {arg0:?}: argument contains a NUL byte");
    };
    if let Some(filter) = seccomp
        && let Err(e) = filter.install()
    {
        return format!("seccomp: {}", errstr(&e));
    }
    let e = sys::execve(&path, &argv, &envp);
    format!("exec: {arg0:?}: {}", errstr(&e))
}

/// Reports `msg` as "error: <msg>" on the status pipe and exits.
pub fn fail(status: RawFd, msg: &str, code: i32) -> ! {
    let _ = sys::write_all(status, format!("error: {msg}\n").as_bytes());
    sys::exit_now(code)
}

/// The whole life of the container child after the clone. Never returns.
pub fn run(info: &LaunchInfo, fds: ChildFds) -> ! {
    let pid = match setup(info, &fds) {
        Ok(pid) => pid,
        Err(msg) => fail(fds.status, &msg, 128),
    };
    if sys::write_all(fds.status, format!("ready {pid}\n").as_bytes()).is_err() {
        sys::exit_now(128);
    }
    let mut b = [0u8; 1];
    match sys::read(fds.start, &mut b) {
        Ok(1) => {}
        _ => sys::exit_now(128), // the supervisor went away or aborted the launch
    }
    let last = match seccomp_filter(info.process.seccomp.as_ref()) {
        Ok(f) => f.filter(|_| info.process.no_new_privileges),
        Err(msg) => fail(fds.status, &msg, 127),
    };
    let msg = exec(&info.process.args, &info.process.env, last.as_ref());
    fail(fds.status, &msg, 127)
}

/// True when `a` and `b` name the same namespace (same nsfs inode).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// `/proc/<pid>/<rest>` as a path.
pub fn proc_path(pid: i32, rest: &str) -> PathBuf {
    let mut p = PathBuf::from("/proc");
    p.push(pid.to_string());
    p.push(OsStr::from_bytes(rest.as_bytes()));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_targets_never_follow_a_symlink_swapped_in() {
        let base =
            std::env::temp_dir().join(format!("cri-mesos-open-target-{}", std::process::id()));
        let (root, outside) = (base.join("root"), base.join("outside"));
        fs::create_dir_all(root.join("data")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        // Resolved when it was a directory; a neighbour then made it a symlink out.
        let target = root.join("data/sub/volume");
        std::os::unix::fs::symlink(&outside, root.join("data/sub")).unwrap();
        let err = open_target(&root, &target, CreateKind::Dir).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        assert!(
            fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing created outside"
        );
        // A plain path is created as asked: directories, then the final file.
        let file = root.join("data/new/dir/file");
        open_target(&root, &file, CreateKind::File).unwrap();
        assert!(fs::symlink_metadata(&file).unwrap().is_file());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn options() {
        let o = parse_options(&[
            "rbind".into(),
            "ro".into(),
            "rslave".into(),
            "mode=755".into(),
            "size=1k".into(),
        ]);
        assert!(o.bind);
        assert_eq!(o.flags, libc::MS_REC | libc::MS_RDONLY);
        assert_eq!(o.propagation, vec![libc::MS_SLAVE | libc::MS_REC]);
        assert_eq!(o.data, "mode=755,size=1k");
        let o = parse_options(&["ro".into(), "rw".into(), "nosuid".into()]);
        assert_eq!(o.flags, libc::MS_NOSUID);
    }

    #[test]
    fn resolve_stays_inside() {
        let root = std::env::temp_dir().join(format!("crims-resolve-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("a/b/up")).unwrap();
        std::os::unix::fs::symlink("b", root.join("a/rel")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            resolve_in_root(&root, Path::new("/abs/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(&root, Path::new("/a/b/up/x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            resolve_in_root(&root, Path::new("../../a/rel/c")).unwrap(),
            root.join("a/b/c")
        );
        assert_eq!(resolve_in_root(&root, Path::new("/")).unwrap(), root);
        assert_eq!(
            resolve_in_root(&root, Path::new("/loop"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ELOOP)
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn program_lookup() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert!(find_program("sh", &env).is_ok());
        assert_eq!(
            find_program("no-such-cmd", &env).unwrap_err(),
            "exec: \"no-such-cmd\": executable file not found in $PATH"
        );
        assert_eq!(
            find_program("/no/such", &env).unwrap_err(),
            "exec: \"/no/such\": stat /no/such: no such file or directory"
        );
        assert_eq!(
            errstr(&io::Error::from_raw_os_error(libc::EACCES)),
            "permission denied"
        );
    }
}
