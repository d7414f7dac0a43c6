//! The wire protocol between the `cri-mesos` daemon and a pod supervisor.
//!
//! Transport: the supervisor's unix stream socket (mode 0600). **One request per connection**:
//! the client writes one JSON object ([`Request`]) followed by `\n`; the supervisor answers
//! with one JSON object ([`Response`]) followed by `\n` and closes the connection. Replies to
//! `launch`, `start`, `exec` and `shutdown` are deferred until the work is done (other
//! connections are served meanwhile), so clients must not use a short read timeout for them.
//! [`Request::Attach`] and [`Request::ExecStream`] are the replies that carry file
//! descriptors (SCM_RIGHTS); an exec stream's connection also stays open for a second
//! reply.
//!
//! Pids in replies are *host* pids (as seen by the daemon's `/proc`), even when the supervisor
//! holds its own pod pid namespace.
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The protocol's version, in every [`Response::Pong`]. Raise it with any change a peer
/// of the other version would misread. Both sides refuse unknown fields, so a newer daemon
/// cannot send an older supervisor a field (a security setting, say) that it would drop;
/// the daemon compares versions before Launch, Exec and Attach.
pub const PROTOCOL: u32 = 3;

/// One request (JSON: `{"op": "<snake_case name>", ...fields}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Liveness/identity check -> [`Response::Pong`].
    Ping,
    /// Fork a container child that sets itself up and then waits for `start`.
    /// -> [`Response::Launched`] once the child has finished its setup and is blocked on the
    /// start pipe (its cgroups are joined, so the daemon may run its isolators on `pid`), or
    /// [`Response::Error`] (the child is gone then and no record is kept).
    Launch(Box<LaunchInfo>),
    /// Release the start pipe of a launched container -> [`Response::Started`] once `execve`
    /// succeeded, or [`Response::Error`] with e.g. `exec: "foo": executable file not found in
    /// $PATH`; the container is then recorded as exited with code 128 and that message.
    Start { container_id: String },
    /// `kill(pid, signal)` of the container's init; with `all`, also every other process the
    /// supervisor can attribute to it (exec sessions and every process in the container's mount
    /// namespace) -> [`Response::Ok`]. Signalling an exited container is not an error.
    Signal {
        container_id: String,
        signal: i32,
        all: bool,
    },
    /// Run a process inside a running container and collect its output (ExecSync)
    /// -> [`Response::ExecResult`] when it ends (or times out), or [`Response::Error`] if it
    /// could not be started (e.g. command not found).
    Exec(Box<ExecInfo>),
    /// Start a process inside a running container for a streaming session (CRI Exec)
    /// -> [`Response::ExecStarted`] carrying (SCM_RIGHTS) the pty master for a tty, else
    /// the write end of its stdin pipe (if `stdin`), the read ends of its stdout (if
    /// `stdout`) and stderr (if `stderr`) pipes, in that order; streams not asked for are
    /// /dev/null. The connection stays open: [`Response::ExecExited`] follows when the
    /// process ends. The client closing the connection first kills the whole session.
    /// `exec.timeout_ms` and `exec.stdin_b64` must be absent.
    ExecStream {
        exec: Box<ExecInfo>,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    /// Close and reopen the container's log file by path (kubelet rotated it)
    /// -> [`Response::Ok`] / [`Response::Error`].
    ReopenLog { container_id: String },
    /// Every container record -> [`Response::StateReply`].
    State,
    /// Drop an exited (or never started) container's record -> [`Response::Ok`]; refused for a
    /// running container.
    Forget { container_id: String },
    /// Hand out the container's stdin: the reply [`Response::Attached`] carries (SCM_RIGHTS) a
    /// write descriptor for the container's stdin pipe, or the pty master for tty containers.
    /// With `stdin_once` the supervisor gives away its own copy of a pipe, so the container
    /// sees EOF when the receiver closes it. Output is read from the log file.
    Attach { container_id: String },
    /// Attach a streaming session (CRI Attach) -> [`Response::Attached`], carrying
    /// (SCM_RIGHTS) the container's stdin as [`Request::Attach`] hands it out when
    /// `stdin` is asked and the container has one (always the pty master for a tty
    /// container, for its resizes too), else no descriptor. The connection then carries the
    /// container's output as the supervisor logs it: frames of one stream byte
    /// ([`ATTACH_STDOUT`], [`ATTACH_STDERR`]), a 32-bit big-endian length and the bytes. It
    /// ends (EOF) when the container's output ends, or when this client fell more than
    /// [`ATTACH_BUFFER`] behind: a slow client loses its stream, the container never
    /// waits. The client closing the connection detaches it.
    AttachStream { container_id: String, stdin: bool },
    /// Set the window size of a tty container's pty -> [`Response::Ok`].
    Resize {
        container_id: String,
        width: u16,
        height: u16,
    },
    /// SIGKILL every remaining process, wait (at most ~2 s) for their exit records, remove the
    /// socket and pid file and exit -> [`Response::Ok`] (sent just before exiting).
    Shutdown,
}

/// One reply (JSON: `{"reply": "<snake_case name>", ...fields}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Ok,
    /// `pid`: the supervisor's host pid; `pod_id` as given on its command line.
    /// `protocol`: [`PROTOCOL`] of the supervisor; absent (0) from supervisors that
    /// predate versioning.
    Pong {
        pod_id: String,
        pid: i32,
        version: String,
        #[serde(default)]
        protocol: u32,
    },
    /// Host pid of the container's init (blocked on its start pipe).
    Launched {
        pid: i32,
    },
    /// Host pid of the container's init, now running the container's command.
    Started {
        pid: i32,
    },
    ExecResult(ExecResult),
    StateReply {
        containers: Vec<ContainerState>,
    },
    /// A descriptor accompanies this reply (see [`Request::Attach`]).
    Attached {
        tty: bool,
    },
    /// An [`Request::ExecStream`] session runs; its descriptors accompany this reply.
    ExecStarted {
        tty: bool,
    },
    /// The session's process ended: its exit code (128 + signal), or why it never ran
    /// (`error`, e.g. the executable was not found).
    ExecExited {
        exit_code: i32,
        #[serde(default)]
        error: Option<String>,
    },
    Error {
        message: String,
    },
}

/// Stream bytes of [`Request::AttachStream`] output frames.
pub const ATTACH_STDOUT: u8 = 1;
pub const ATTACH_STDERR: u8 = 2;
/// Output an attach client may have pending before it is dropped.
pub const ATTACH_BUFFER: usize = 1 << 20;

/// Everything the container child needs to set itself up (the work of Mesos's
/// `mesos-containerizer launch`). Optional fields may be omitted in JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchInfo {
    /// Unique within the pod; names the record in every later request.
    pub container_id: String,
    /// Host path of the container's root filesystem (already provisioned).
    pub rootfs: PathBuf,
    /// Remount the root filesystem read-only after all mounts are made.
    #[serde(default)]
    pub rootfs_readonly: bool,
    /// Mount /sys read-write (privileged containers); otherwise it is read-only.
    #[serde(default)]
    pub sysfs_writable: bool,
    #[serde(default)]
    pub namespaces: NamespaceSpec,
    /// `cgroup.procs` files the child writes itself into first, before any other setup
    /// (cgroup v1: one per controller; v2: one).
    #[serde(default)]
    pub cgroup_procs: Vec<PathBuf>,
    /// Extra mounts, made in order after the standard ones (/proc, /dev, /dev/pts,
    /// /dev/mqueue, /sys). /dev/shm, /etc/hosts, /etc/resolv.conf, volumes... come from here.
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// Device nodes to create (after the mounts).
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    /// Paths hidden from the container: /dev/null is bound over files, an empty read-only
    /// tmpfs over directories. Missing paths are skipped.
    #[serde(default)]
    pub masked_paths: Vec<PathBuf>,
    /// Paths made read-only (bound onto themselves, remounted ro). Missing paths are skipped.
    #[serde(default)]
    pub readonly_paths: Vec<PathBuf>,
    /// Hostname; only applied when `namespaces.join` contains a `uts` namespace (never the
    /// supervisor's own UTS namespace, which is the host's).
    #[serde(default)]
    pub hostname: Option<String>,
    pub process: ProcessSpec,
    /// CRI log file (absolute host path), created with its parent directories; `None` discards
    /// the output.
    #[serde(default)]
    pub log_path: Option<PathBuf>,
    /// The pod's log directory: when set, `log_path` is inside it and opened beneath it
    /// (no symlink, no `..`), so the file cannot be anywhere else on the host.
    #[serde(default)]
    pub log_directory: Option<PathBuf>,
    /// Where the [`ExitRecord`] JSON is written (atomically) when the container ends. Its
    /// directory must exist; it is not recreated once the daemon removed it.
    pub exit_file: PathBuf,
    /// The signal StopContainer sends first (the image's `StopSignal`), as the isolators'
    /// `prepare` decided it. The daemon's alone: never sent to the supervisor, which only
    /// signals on request.
    #[serde(skip)]
    pub stop_signal: Option<i32>,
}

/// Namespaces of the container child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    /// A new mount namespace (required by the filesystem/linux setup; must be true).
    #[serde(default = "yes")]
    pub new_mount: bool,
    /// A new pid namespace: the container's init is PID 1 of its own namespace.
    #[serde(default)]
    pub new_pid: bool,
    /// Existing namespaces to join with setns: pinned pod namespaces (bind-mounted nsfs
    /// files) or `/proc/<pid>/ns/*` paths. A `pid` entry equal to the supervisor's own pid
    /// namespace is a no-op (pod-shared pid namespace); another one is entered for the child
    /// (and is incompatible with `new_pid`).
    #[serde(default)]
    pub join: Vec<JoinNs>,
}

fn yes() -> bool {
    true
}

impl Default for NamespaceSpec {
    fn default() -> Self {
        NamespaceSpec {
            new_mount: true,
            new_pid: false,
            join: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinNs {
    pub kind: NsKind,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NsKind {
    Net,
    Uts,
    Ipc,
    Pid,
    Mnt,
}

/// One mount inside the container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// Host path for bind mounts; the device/fs name (e.g. "tmpfs") otherwise.
    pub source: PathBuf,
    /// Path inside the container; resolved component by component inside the rootfs, so a
    /// symlink never leads out of it.
    pub destination: PathBuf,
    /// Filesystem type; `None` (or "bind"/"none") for bind mounts.
    #[serde(default)]
    pub fstype: Option<String>,
    /// fstab-like options: "bind", "rbind", "ro", "rw", "nosuid", "nodev", "noexec",
    /// "relatime", "noatime", "strictatime", ... ; propagation "private", "rprivate", "slave",
    /// "rslave", "shared", "rshared", "unbindable", "runbindable" (applied after the mount);
    /// anything else ("mode=755", "size=65536k") is passed as filesystem data.
    #[serde(default)]
    pub options: Vec<String>,
    /// What to create at the destination when it is missing.
    #[serde(default)]
    pub create: CreateKind,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreateKind {
    /// A file when the mount is a bind mount of a non-directory, a directory otherwise.
    #[default]
    Auto,
    Dir,
    File,
    /// Nothing: the destination must exist.
    None,
}

/// A device node created in the container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    /// Path inside the container.
    pub path: PathBuf,
    /// 'c' (character) or 'b' (block).
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    /// Permission bits (e.g. 0o666).
    pub file_mode: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// Host node to bind-mount when mknod is not permitted (defaults to `path` on the host).
    #[serde(default)]
    pub host_path: Option<PathBuf>,
}

/// The container's process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in the container's `PATH` (from `env`, default
    /// `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`) unless it contains '/'.
    pub args: Vec<String>,
    /// "KEY=value" entries, the complete environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory inside the container; created if missing (as runc does).
    #[serde(default = "root_dir")]
    pub cwd: PathBuf,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Allocate a pty: the container gets the slave as controlling terminal and its output is
    /// logged as `stdout`.
    #[serde(default)]
    pub tty: bool,
    /// Keep a stdin pipe (see [`Request::Attach`]); otherwise stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// Close stdin after the first attach session ends.
    #[serde(default)]
    pub stdin_once: bool,
    /// Written to /proc/self/oom_score_adj; a value below the current one that the kernel
    /// refuses (no CAP_SYS_RESOURCE) keeps the current value.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// prctl(PR_SET_NO_NEW_PRIVS).
    #[serde(default)]
    pub no_new_privileges: bool,
    /// The capability sets the process gets; `None` keeps the supervisor's own (all).
    #[serde(default)]
    pub capabilities: Option<CapabilitySet>,
    /// setrlimit(2) of each, before the user changes.
    #[serde(default)]
    pub rlimits: Vec<RlimitSpec>,
    /// The seccomp filter the process runs under; `None`: unconfined.
    #[serde(default)]
    pub seccomp: Option<SeccompProgram>,
}

/// A seccomp-BPF program the daemon compiled: the `struct sock_filter` array as the kernel
/// takes it (8 bytes an instruction, host byte order), base64. The child installs it the
/// way runc does: with `no_new_privileges`, as the last step before `execve`; without,
/// before the user and capabilities change (loading a filter then needs CAP_SYS_ADMIN).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeccompProgram {
    pub bpf_b64: String,
    /// `seccomp(2)` flags (`SECCOMP_FILTER_FLAG_LOG`, `_SPEC_ALLOW`) the profile asked for.
    #[serde(default)]
    pub flags: u32,
}

impl SeccompProgram {
    pub fn new(bpf: &[u8], flags: u32) -> SeccompProgram {
        SeccompProgram {
            bpf_b64: crate::b64::encode(bpf),
            flags,
        }
    }

    /// The instructions; `None` when the text is not base64 of whole instructions.
    pub fn instructions(&self) -> Option<Vec<[u8; 8]>> {
        let bytes = crate::b64::decode(&self.bpf_b64)?;
        if bytes.is_empty() || bytes.len() % 8 != 0 {
            return None;
        }
        Some(
            bytes
                .chunks_exact(8)
                .map(|c| c.try_into().expect("8 bytes"))
                .collect(),
        )
    }
}

/// One resource limit: `resource` is the `RLIMIT_*` number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlimitSpec {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// Linux capability sets as bit masks (bit N = capability N, as in /proc/PID/status), set
/// the way runc sets them: the bounding set is cut before the user changes, then
/// effective, permitted and inheritable, then the ambient capabilities are raised. Bits the
/// supervisor itself lacks (its bounding set) are left out rather than failing the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilitySet {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

fn root_dir() -> PathBuf {
    PathBuf::from("/")
}

/// A process to run in a running container's namespaces and cgroups (ExecSync).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecInfo {
    pub container_id: String,
    /// argv, looked up in `PATH` of `env` like the container's command.
    pub args: Vec<String>,
    /// Complete environment (the daemon passes the container's environment).
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default = "root_dir")]
    pub cwd: PathBuf,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Run on a pty; all output is reported as stdout.
    #[serde(default)]
    pub tty: bool,
    /// Kill the whole exec process tree (SIGKILL) after this long; `timed_out` is then set.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Bytes written to the process's stdin (then closed); `None`: stdin is /dev/null.
    #[serde(default)]
    pub stdin_b64: Option<String>,
    /// The container's capabilities and `no_new_privs`: an exec session gets the
    /// container's security, not the supervisor's.
    #[serde(default)]
    pub capabilities: Option<CapabilitySet>,
    #[serde(default)]
    pub no_new_privileges: bool,
    /// The container's resource limits (`posix/rlimits`).
    #[serde(default)]
    pub rlimits: Vec<RlimitSpec>,
    /// The container's seccomp filter.
    #[serde(default)]
    pub seccomp: Option<SeccompProgram>,
}

/// The outcome of an [`Request::Exec`]. Output is capped at 16 MiB per stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecResult {
    /// Exit code; 128 + signal when killed by a signal.
    pub exit_code: i32,
    /// Standard output, base64 (standard alphabet, padded); omitted when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_b64: Option<String>,
    pub timed_out: bool,
}

impl ExecResult {
    /// Decoded stdout (empty when absent or malformed).
    pub fn stdout(&self) -> Vec<u8> {
        self.stdout_b64
            .as_deref()
            .and_then(crate::b64::decode)
            .unwrap_or_default()
    }
    /// Decoded stderr (empty when absent or malformed).
    pub fn stderr(&self) -> Vec<u8> {
        self.stderr_b64
            .as_deref()
            .and_then(crate::b64::decode)
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    /// Launched (or still setting up), waiting for `start`.
    Created,
    Running,
    Exited,
}

/// One container record in a [`Response::StateReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerState {
    pub id: String,
    /// Host pid of the container's init (0 while it is still being set up).
    pub pid: i32,
    pub status: ContainerStatus,
    /// Set once exited (128 + signal for a signal death; 128 for a start error).
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    /// Wall clock (ns since the epoch) of the successful exec; 0 if never started.
    pub started_at_ns: i64,
    /// Wall clock of the exit; 0 while not exited.
    pub finished_at_ns: i64,
    /// Why the container failed to start, if it did.
    #[serde(default)]
    pub error: Option<String>,
}

/// The exit file's content (written atomically: temp file, fsync, rename, fsync dir).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_at_ns: i64,
    pub started_at_ns: i64,
    /// Always false here: the daemon knows OOM kills from the memory cgroup.
    pub oom_killed: bool,
    /// The start error, when the container never ran its command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Parses the line the spawned `cri-mesos-supervisor` process prints (on stdout, or on
/// `--ready-fd`) before it exits: `pid <N>` -> `Ok(N)` (host pid of the supervisor, which is
/// then serving its socket); `error: <message>` -> `Err(message)`.
pub fn parse_spawn_line(line: &str) -> Result<i32, String> {
    let line = line.trim();
    if let Some(pid) = line.strip_prefix("pid ") {
        return pid
            .trim()
            .parse()
            .map_err(|_| format!("bad supervisor pid line: {line:?}"));
    }
    Err(line.strip_prefix("error: ").unwrap_or(line).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_with_their_tag() {
        let launch = Request::Launch(Box::new(LaunchInfo {
            container_id: "c".into(),
            process: ProcessSpec {
                args: vec!["true".into()],
                capabilities: Some(CapabilitySet::default()),
                ..Default::default()
            },
            ..Default::default()
        }));
        let text = serde_json::to_string(&launch).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), launch);
        let ping: Request = serde_json::from_str(r#"{"op":"ping"}"#).unwrap();
        assert_eq!(ping, Request::Ping);
    }

    /// A field this side does not know is refused, at any depth: dropping it could drop a
    /// security setting a newer peer meant.
    #[test]
    fn unknown_fields_are_refused_at_any_depth() {
        for text in [
            r#"{"op":"start","container_id":"c","seccomp":"x"}"#,
            r#"{"op":"launch","container_id":"c","rootfs":"/r","exit_file":"/e","process":{"args":[]},"new_thing":1}"#,
            r#"{"op":"launch","container_id":"c","rootfs":"/r","exit_file":"/e","process":{"args":[],"landlock":true}}"#,
            r#"{"op":"exec","container_id":"c","args":[],"capabilities":{"bounding":0,"effective":0,"permitted":0,"inheritable":0,"ambient":0,"extra":0}}"#,
        ] {
            let err = serde_json::from_str::<Request>(text).unwrap_err();
            assert!(err.to_string().contains("unknown field"), "{text}: {err}");
        }
        let err = serde_json::from_str::<Response>(r#"{"reply":"launched","pid":1,"later":2}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn stream_requests_and_replies_round_trip() {
        let exec = Request::ExecStream {
            exec: Box::new(ExecInfo {
                container_id: "c".into(),
                args: vec!["sh".into()],
                tty: true,
                ..Default::default()
            }),
            stdin: true,
            stdout: true,
            stderr: false,
        };
        let text = serde_json::to_string(&exec).unwrap();
        assert!(text.starts_with(r#"{"op":"exec_stream""#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), exec);
        let attach: Request =
            serde_json::from_str(r#"{"op":"attach_stream","container_id":"c","stdin":false}"#)
                .unwrap();
        assert!(matches!(attach, Request::AttachStream { stdin: false, .. }));
        for reply in [
            Response::ExecStarted { tty: false },
            Response::ExecExited {
                exit_code: 3,
                error: None,
            },
            Response::ExecExited {
                exit_code: 127,
                error: Some("exec: \"x\": not found".into()),
            },
        ] {
            let text = serde_json::to_string(&reply).unwrap();
            assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), reply);
        }
    }

    #[test]
    fn a_pong_without_a_protocol_is_version_zero() {
        let pong: Response =
            serde_json::from_str(r#"{"reply":"pong","pod_id":"p","pid":1,"version":"0.1.0"}"#)
                .unwrap();
        assert!(matches!(pong, Response::Pong { protocol: 0, .. }));
    }

    #[test]
    fn seccomp_programs_are_whole_instructions() {
        let bpf: Vec<u8> = (0..16).collect();
        let p = SeccompProgram::new(&bpf, 2);
        let i = p.instructions().unwrap();
        assert_eq!(
            i,
            [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15]]
        );
        assert_eq!(SeccompProgram::new(&bpf[..12], 0).instructions(), None);
        assert_eq!(SeccompProgram::new(&[], 0).instructions(), None);
        // Older daemons send no flags.
        let p: SeccompProgram = serde_json::from_str(r#"{"bpf_b64": "AAAAAAAAAAA="}"#).unwrap();
        assert_eq!(p.flags, 0);
    }
}
