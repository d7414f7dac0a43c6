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

pub use self::mounts::*;

mod mounts;

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
