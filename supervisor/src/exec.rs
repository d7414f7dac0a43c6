//! The exec helper (ExecSync): a child of the supervisor that enters a running container's
//! cgroups and namespaces, then forks the process to run (a pid namespace only applies to
//! children), waits for it and exits with its status.

use crate::child::{self, errstr, fail, proc_path};
use crate::protocol::ExecInfo;
use crate::sys;
use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

/// Descriptors the helper keeps.
pub struct ExecFds {
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// Helper -> supervisor: "pid <helper host pid>\n", then "error: ...\n" if the command
    /// could not be started; EOF (close-on-exec) once it runs.
    pub status: RawFd,
    pub tty: bool,
}

/// Namespaces joined, in this order (mnt last: it changes root and cwd).
const NAMESPACES: [(&str, libc::c_int); 5] = [
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("mnt", libc::CLONE_NEWNS),
];

/// The helper's whole life. Never returns.
pub fn run_helper(info: &ExecInfo, target: i32, cgroup_procs: &[PathBuf], fds: ExecFds) -> ! {
    sys::reset_signals_for_exec();
    sys::umask(0o022);
    for (src, dst) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)] {
        if let Err(e) = sys::dup2(src, dst) {
            fail(fds.status, &format!("stdio: {}", errstr(&e)), 127);
        }
    }
    sys::close_fds_except(&[fds.status]);
    let st = fds.status;
    match child::host_pid() {
        Ok(pid) => {
            let _ = sys::write_all(st, format!("pid {pid}\n").as_bytes());
        }
        Err(e) => fail(st, &format!("host pid: {}", errstr(&e)), 127),
    }
    // Everything that needs host paths comes before joining the mount namespace.
    if let Ok(adj) = fs::read_to_string(proc_path(target, "oom_score_adj"))
        && let Ok(adj) = adj.trim().parse()
    {
        let _ = child::set_oom_score_adj(adj);
    }
    if let Err(msg) = child::join_cgroups(cgroup_procs) {
        fail(st, &msg, 127);
    }
    let mut files = Vec::new();
    for (name, t) in NAMESPACES {
        match fs::File::open(proc_path(target, &format!("ns/{name}"))) {
            Ok(f) => files.push((name, t, f)),
            Err(e) => fail(
                st,
                &format!("open {name} namespace of pid {target}: {}", errstr(&e)),
                127,
            ),
        }
    }
    for (name, t, f) in &files {
        if let Err(e) = sys::setns(f.as_raw_fd(), *t) {
            fail(st, &format!("setns {name}: {}", errstr(&e)), 127);
        }
    }
    drop(files);
    // Orphans of the exec'd tree (in the same pid namespace) come back to the helper.
    let _ = sys::set_child_subreaper();

    let pid = match sys::clone_process(0) {
        Ok(Some(pid)) => pid,
        Ok(None) => grandchild(info, &fds),
        Err(e) => fail(st, &format!("fork: {}", errstr(&e)), 127),
    };
    // Only the exec'd process tree holds the output pipes and the status pipe now.
    sys::close_fds_except(&[]);
    if let Ok(null) = sys::open_devnull() {
        for fd in 0..3 {
            let _ = sys::dup2(null.as_raw_fd(), fd);
        }
    }
    loop {
        match sys::wait_any() {
            Ok((p, exit)) if p == pid => sys::exit_now(exit.code()),
            Ok(_) => continue,
            Err(_) => sys::exit_now(127),
        }
    }
}

fn grandchild(info: &ExecInfo, fds: &ExecFds) -> ! {
    let st = fds.status;
    if let Err(e) = sys::setsid() {
        fail(st, &format!("setsid: {}", errstr(&e)), 127);
    }
    if fds.tty
        && let Err(e) = sys::set_controlling_tty(0)
    {
        fail(st, &format!("controlling tty: {}", errstr(&e)), 127);
    }
    if info.no_new_privileges
        && let Err(e) = sys::set_no_new_privs()
    {
        fail(st, &format!("no_new_privs: {}", errstr(&e)), 127);
    }
    let filter = match child::seccomp_filter(info.seccomp.as_ref()) {
        Ok(f) => f,
        Err(msg) => fail(st, &msg, 127),
    };
    if !info.no_new_privileges
        && let Some(f) = &filter
        && let Err(e) = f.install()
    {
        fail(st, &format!("seccomp: {}", errstr(&e)), 127);
    }
    if let Err(e) = crate::creds::become_user(
        info.uid,
        info.gid,
        &info.additional_gids,
        info.capabilities.as_ref(),
        &info.rlimits,
    ) {
        fail(st, &format!("credentials: {e}"), 127);
    }
    if let Err(e) = std::env::set_current_dir(&info.cwd) {
        fail(
            st,
            &format!("chdir {}: {}", info.cwd.display(), errstr(&e)),
            127,
        );
    }
    let last = filter.filter(|_| info.no_new_privileges);
    let msg = child::exec(&info.args, &info.env, last.as_ref());
    fail(st, &msg, 127)
}
