//! RuntimeDefault: the default profile of moby and containerd, rule for rule — the same
//! allow list, the same capability-, architecture- and kernel-dependent rules, the same
//! argument filters, `EPERM` for everything else. Written as a [`Profile`] so that it is
//! read (includes/excludes) and compiled exactly as a Localhost profile is.

use super::profile::{Action, Arch, ArchMap, Arg, Condition, Op, Profile, Syscall};

/// Allowed for every container.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// What CAP_SYS_ADMIN opens: namespaces, mounts, the host name, BPF and tracing.
const WITH_SYS_ADMIN: &[&str] = &[
    "bpf",
    "clone",
    "clone3",
    "fanotify_init",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "perf_event_open",
    "quotactl",
    "quotactl_fd",
    "setdomainname",
    "sethostname",
    "setns",
    "syslog",
    "umount",
    "umount2",
    "unshare",
];

/// Other capabilities and what each opens.
const WITH_CAP: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Architecture-specific calls, by Go architecture.
const WITH_ARCH: &[(&[&str], &[&str])] = &[
    (&["ppc64le"], &["sync_file_range2", "swapcontext"]),
    (
        &["arm", "arm64"],
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
    ),
    (&["amd64", "x32"], &["arch_prctl"]),
    (&["amd64", "x32", "x86"], &["modify_ldt"]),
    (
        &["s390", "s390x"],
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
    ),
    (&["riscv64"], &["riscv_flush_icache"]),
];

/// `personality(2)` values allowed: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
/// and 0xffffffff (a query).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
/// | CLONE_NEWCGROUP`: without CAP_SYS_ADMIN, `clone` may create no namespace.
const CLONE_NAMESPACES: u64 = 0x7e02_0000;

/// AF_VSOCK: refused to every container (the host's vsock is not the container's).
const AF_VSOCK: u64 = 40;

const ENOSYS: u32 = 38;

fn rule(names: &[&str], action: Action) -> Syscall {
    Syscall {
        names: names.iter().map(|n| n.to_string()).collect(),
        name: None,
        action,
        errno_ret: None,
        args: Vec::new(),
        includes: Condition::default(),
        excludes: Condition::default(),
    }
}

fn allow(names: &[&str]) -> Syscall {
    rule(names, Action::Allow)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn arg0(op: Op, value: u64, value_two: u64) -> Vec<Arg> {
    vec![Arg {
        index: 0,
        value,
        value_two,
        op,
    }]
}

/// The profile, before it is read for a container's capabilities.
pub fn profile() -> Profile {
    let mut syscalls = vec![allow(ALLOWED)];
    syscalls.push(Syscall {
        includes: Condition {
            min_kernel: Some("4.8".into()),
            ..Default::default()
        },
        // Before 4.8 ptrace could bypass seccomp; after, it is as safe as the rest.
        ..allow(&["process_vm_readv", "process_vm_writev", "ptrace"])
    });
    syscalls.push(Syscall {
        args: arg0(Op::Ne, AF_VSOCK, 0),
        ..allow(&["socket"])
    });
    for &persona in PERSONALITIES {
        syscalls.push(Syscall {
            args: arg0(Op::Eq, persona, 0),
            ..allow(&["personality"])
        });
    }
    for (arches, names) in WITH_ARCH {
        syscalls.push(Syscall {
            includes: Condition {
                arches: strings(arches),
                ..Default::default()
            },
            ..allow(names)
        });
    }
    let with_caps = |caps: &[&str]| Condition {
        caps: strings(caps),
        ..Default::default()
    };
    syscalls.push(Syscall {
        includes: with_caps(&["CAP_SYS_ADMIN"]),
        ..allow(WITH_SYS_ADMIN)
    });
    // clone without CAP_SYS_ADMIN: allowed unless it creates namespaces (s390 passes the
    // flags second).
    syscalls.push(Syscall {
        args: arg0(Op::MaskedEq, CLONE_NAMESPACES, 0),
        excludes: Condition {
            caps: strings(&["CAP_SYS_ADMIN"]),
            arches: strings(&["s390", "s390x"]),
            min_kernel: None,
        },
        ..allow(&["clone"])
    });
    syscalls.push(Syscall {
        args: vec![Arg {
            index: 1,
            value: CLONE_NAMESPACES,
            value_two: 0,
            op: Op::MaskedEq,
        }],
        includes: Condition {
            arches: strings(&["s390", "s390x"]),
            ..Default::default()
        },
        excludes: with_caps(&["CAP_SYS_ADMIN"]),
        ..allow(&["clone"])
    });
    // clone3's flags are behind a pointer seccomp cannot read: ENOSYS makes libcs fall
    // back to clone, whose flags it can.
    syscalls.push(Syscall {
        errno_ret: Some(ENOSYS),
        excludes: with_caps(&["CAP_SYS_ADMIN"]),
        ..rule(&["clone3"], Action::Errno)
    });
    for (cap, names) in WITH_CAP {
        syscalls.push(Syscall {
            includes: with_caps(&[cap]),
            ..allow(names)
        });
    }
    Profile {
        default_action: Action::Errno,
        default_errno_ret: Some(libc::EPERM as u32),
        architectures: Vec::new(),
        // Only this host's entry: the others never apply on x86-64.
        arch_map: vec![ArchMap {
            architecture: Arch::X86_64,
            sub_architectures: vec![Arch::X86, Arch::X32],
        }],
        syscalls,
        flags: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::profile::resolve;
    use super::*;
    use crate::isolators::linux::capabilities;

    fn allowed(caps: u64, name: &str) -> bool {
        resolve(&profile(), caps, (6, 1))
            .rules
            .iter()
            .any(|r| r.name == name && r.action == Action::Allow && r.args.is_empty())
    }

    #[test]
    fn capabilities_open_their_calls() {
        let default = capabilities::DEFAULT
            .iter()
            .filter_map(|c| capabilities::bit(c))
            .fold(0, |m, b| m | b);
        let admin = capabilities::bit("SYS_ADMIN").unwrap();
        for name in ["sethostname", "mount", "unshare", "setns", "clone"] {
            assert!(!allowed(default, name), "{name} without CAP_SYS_ADMIN");
            assert!(allowed(default | admin, name), "{name} with CAP_SYS_ADMIN");
        }
        // chroot comes with containerd's default set (CAP_SYS_CHROOT); reboot does not.
        assert!(allowed(default, "chroot"));
        assert!(!allowed(default, "reboot"));
        assert!(allowed(default, "arch_prctl") && allowed(default, "ptrace"));
        assert!(!allowed(default, "set_tls"), "an arm call");
    }

    #[test]
    fn the_profile_round_trips_as_json() {
        let p = profile();
        let text = serde_json::to_vec(&p).unwrap();
        assert_eq!(super::super::profile::parse(&text).unwrap(), p);
    }
}
