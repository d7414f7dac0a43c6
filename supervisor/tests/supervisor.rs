//! End-to-end tests of the supervisor binary through its socket. They need root (mounts,
//! namespaces), so they are `#[ignore = "needs root"]` (run them with `--include-ignored`),
//! and /bin/busybox (static), whose absence fails them.

use cri_mesos_supervisor::client;
use cri_mesos_supervisor::protocol::*;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cri-mesos-supervisor");
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "ls", "id", "hostname", "ps", "mount", "readlink", "touch",
    "pwd", "head", "tr", "grep", "stty", "wc", "true", "tty", "env",
];

/// A scratch directory under the target dir, removed at the end unless something is still
/// mounted below it.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "sup-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(p)
    }
}

/// Mount points (in the test's own mount namespace) below `dir`.
fn mounts_below(dir: &Path) -> Vec<String> {
    let d = dir.to_str().unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(d)))
        .map(String::from)
        .collect()
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if mounts_below(&self.0).is_empty() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A busybox root filesystem.
fn make_rootfs(dir: &Path) -> PathBuf {
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: install busybox-static (hack/install-deps.sh)"
    );
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    root
}

struct Sup {
    dir: TempDir,
    socket: PathBuf,
    pid: i32,
    root: PathBuf,
}

fn spawn(name: &str, extra: &[&str]) -> Sup {
    let dir = TempDir::new(name);
    let socket = dir.0.join("sup.sock");
    let out = Command::new(BIN)
        .args(["--pod-id", name, "--socket"])
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .args(extra)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "supervisor start failed: {line}");
    let pid = parse_spawn_line(&line).unwrap();
    let root = make_rootfs(&dir.0);
    Sup {
        dir,
        socket,
        pid,
        root,
    }
}

/// Running (not gone, not a zombie waiting for init to reap it).
fn alive(pid: i32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .is_some_and(|i| !stat[i + 2..].starts_with('Z'))
}

impl Drop for Sup {
    fn drop(&mut self) {
        let _ = client::call(
            &self.socket,
            &Request::Shutdown,
            Some(Duration::from_secs(10)),
        );
        let _ = Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = mounts_below(&self.dir.0);
        if !std::thread::panicking() {
            assert!(left.is_empty(), "mounts left behind: {left:?}");
        }
    }
}

impl Sup {
    fn call(&self, req: Request) -> Response {
        client::call(&self.socket, &req, Some(Duration::from_secs(30))).expect("supervisor call")
    }

    fn info(&self, id: &str, args: &[&str]) -> LaunchInfo {
        // The daemon makes the exit file's directory (its container's meta dir) first.
        fs::create_dir_all(self.dir.0.join("exits")).unwrap();
        LaunchInfo {
            container_id: id.into(),
            rootfs: self.root.clone(),
            process: ProcessSpec {
                args: args.iter().map(|s| s.to_string()).collect(),
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                ..Default::default()
            },
            log_path: Some(self.log_path(id)),
            exit_file: self.dir.0.join("exits").join(id),
            ..Default::default()
        }
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.dir.0.join("logs").join(format!("{id}.log"))
    }

    fn launch(&self, info: LaunchInfo) -> i32 {
        match self.call(Request::Launch(Box::new(info))) {
            Response::Launched { pid } => pid,
            r => panic!("launch: {r:?}"),
        }
    }

    fn start(&self, id: &str) -> i32 {
        match self.call(Request::Start {
            container_id: id.into(),
        }) {
            Response::Started { pid } => pid,
            r => panic!("start: {r:?}"),
        }
    }

    fn run(&self, info: LaunchInfo) -> i32 {
        let id = info.container_id.clone();
        let p = self.launch(info);
        assert_eq!(self.start(&id), p);
        p
    }

    fn state(&self, id: &str) -> Option<ContainerState> {
        match self.call(Request::State) {
            Response::StateReply { containers } => containers.into_iter().find(|c| c.id == id),
            r => panic!("state: {r:?}"),
        }
    }

    fn wait_exit(&self, id: &str) -> ContainerState {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.state(id).expect("container record");
            if s.status == ContainerStatus::Exited {
                return s;
            }
            assert!(Instant::now() < deadline, "{id} did not exit: {s:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exit_record(&self, id: &str) -> ExitRecord {
        serde_json::from_slice(&fs::read(self.dir.0.join("exits").join(id)).unwrap()).unwrap()
    }

    fn exec(&self, info: ExecInfo) -> Response {
        self.call(Request::Exec(Box::new(info)))
    }
}

/// (stream, tag, text) of each CRI log record; checks the timestamp format.
fn log_records(path: &Path) -> Vec<(String, String, String)> {
    let data = fs::read_to_string(path).unwrap_or_default();
    data.lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            let ts = it.next().unwrap();
            assert_eq!(ts.len(), 30, "timestamp {ts:?}");
            assert!(
                ts.ends_with('Z') && &ts[10..11] == "T" && &ts[19..20] == ".",
                "timestamp {ts:?}"
            );
            (
                it.next().unwrap().into(),
                it.next().unwrap().into(),
                it.next().unwrap_or("").into(),
            )
        })
        .collect()
}

fn texts(path: &Path, stream: &str) -> Vec<String> {
    log_records(path)
        .into_iter()
        .filter(|r| r.0 == stream)
        .map(|r| r.2)
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exec_info(id: &str, args: &[&str]) -> ExecInfo {
    ExecInfo {
        container_id: id.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        ..Default::default()
    }
}

fn processes_with_cmdline(needle: &str) -> Vec<i32> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(c) = fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&c).replace('\0', " ").trim() == needle
        {
            v.push(pid);
        }
    }
    v
}

#[test]
#[ignore = "needs root"]
fn output_and_exit_code() {
    let s = spawn("basic", &[]);
    assert!(matches!(s.call(Request::Ping), Response::Pong { pid, .. } if pid == s.pid));
    let st = fs::metadata(&s.socket).unwrap();
    assert_eq!(st.permissions().mode() & 0o777, 0o600);
    let pidfile = fs::read_to_string(s.dir.0.join("state/supervisor.pid")).unwrap();
    assert_eq!(pidfile.trim(), s.pid.to_string());

    let mut info = s.info(
        "c1",
        &["sh", "-c", "echo out; echo err >&2; printf tail; exit 3"],
    );
    // Lower than ours: refused without CAP_SYS_RESOURCE, the current value is kept.
    info.process.oom_score_adj = Some(-999);
    let pid = s.run(info);
    assert!(pid > 1);
    let st = s.wait_exit("c1");
    assert_eq!((st.exit_code, st.signal), (Some(3), None));
    assert!(st.started_at_ns > 0 && st.finished_at_ns >= st.started_at_ns);
    let rec = s.exit_record("c1");
    assert_eq!(
        (rec.exit_code, rec.signal, rec.oom_killed),
        (3, None, false)
    );
    assert_eq!(rec.started_at_ns, st.started_at_ns);
    let recs = log_records(&s.log_path("c1"));
    assert!(
        recs.contains(&("stdout".into(), "F".into(), "out".into())),
        "{recs:?}"
    );
    assert!(
        recs.contains(&("stderr".into(), "F".into(), "err".into())),
        "{recs:?}"
    );
    assert!(
        recs.contains(&("stdout".into(), "F".into(), "tail".into())),
        "{recs:?}"
    );
    // A record can be forgotten once exited; a second launch with the same id then works.
    assert_eq!(
        s.call(Request::Forget {
            container_id: "c1".into()
        }),
        Response::Ok
    );
    assert!(s.state("c1").is_none());
}

#[test]
#[ignore = "needs root"]
fn pid_namespace_user_cwd_env() {
    let s = spawn("proc", &[]);
    let mut info = s.info(
        "c",
        &[
            "sh",
            "-c",
            "echo pid=$$; id -u; id -g; id -G; pwd; echo $FOO; umask",
        ],
    );
    info.namespaces.new_pid = true;
    info.process.uid = 1000;
    info.process.gid = 1001;
    info.process.additional_gids = vec![1001, 2000];
    info.process.cwd = "/work/dir".into();
    info.process.env.push("FOO=bar baz".into());
    info.process.oom_score_adj = Some(500);
    info.process.no_new_privileges = true;
    s.run(info);
    assert_eq!(s.wait_exit("c").exit_code, Some(0));
    let out = texts(&s.log_path("c"), "stdout");
    assert_eq!(
        out,
        [
            "pid=1",
            "1000",
            "1001",
            "1001 2000",
            "/work/dir",
            "bar baz",
            "0022"
        ],
        "{out:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn mounts_masks_and_readonly() {
    let s = spawn("mounts", &[]);
    let data = s.dir.0.join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), "hello\n").unwrap();
    let single = s.dir.0.join("single-file");
    fs::write(&single, "one file\n").unwrap();
    fs::create_dir_all(s.root.join("etc/hidden")).unwrap();
    fs::write(s.root.join("etc/hidden/x"), "x").unwrap();
    fs::write(s.root.join("etc/secret"), "secret").unwrap();
    fs::create_dir_all(s.root.join("rodir")).unwrap();
    // A symlink pointing out of the rootfs: the mount must land inside it.
    std::os::unix::fs::symlink("/", s.root.join("escape")).unwrap();
    let script = "cat /data/f; \
        if touch /data/x 2>/dev/null; then echo data-rw; else echo data-ro; fi; \
        cat /etc/one; cat /escape/etc/via-link; \
        cat /etc/secret; echo; ls /etc/hidden | wc -l; \
        if touch /rodir/x 2>/dev/null; then echo rodir-rw; else echo rodir-ro; fi; \
        grep -c ' /scratch tmpfs' /proc/mounts; \
        ls /dev | tr '\\n' ' '; echo; readlink /dev/fd; \
        if touch /newfile 2>/dev/null; then echo root-rw; else echo root-ro; fi";
    let mut info = s.info("m", &["sh", "-c", script]);
    info.mounts = vec![
        MountSpec {
            source: data.clone(),
            destination: "/data".into(),
            options: vec!["rbind".into(), "ro".into(), "rprivate".into()],
            ..Default::default()
        },
        MountSpec {
            source: single.clone(),
            destination: "/etc/one".into(),
            options: vec!["bind".into()],
            ..Default::default()
        },
        MountSpec {
            source: single,
            destination: "/escape/etc/via-link".into(),
            options: vec!["bind".into()],
            ..Default::default()
        },
        MountSpec {
            source: "tmpfs".into(),
            destination: "/scratch".into(),
            fstype: Some("tmpfs".into()),
            options: vec!["nosuid".into(), "size=1m".into(), "mode=755".into()],
            ..Default::default()
        },
    ];
    info.masked_paths = vec![
        "/etc/secret".into(),
        "/etc/hidden".into(),
        "/does/not/exist".into(),
    ];
    info.readonly_paths = vec!["/rodir".into(), "/missing".into()];
    info.devices = vec![DeviceSpec {
        path: "/dev/mydev".into(),
        kind: 'c',
        major: 1,
        minor: 3,
        file_mode: 0o620,
        uid: 0,
        gid: 0,
        host_path: None,
    }];
    info.rootfs_readonly = true;
    s.run(info);
    assert_eq!(s.wait_exit("m").exit_code, Some(0));
    let out = texts(&s.log_path("m"), "stdout");
    let err = texts(&s.log_path("m"), "stderr");
    assert_eq!(
        out[..9],
        [
            "hello",
            "data-ro",
            "one file",
            "one file",
            "",
            "0",
            "rodir-ro",
            "1",
            out[8].as_str()
        ],
        "{out:?} {err:?}"
    );
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue", "ptmx", "fd",
        "stdin", "mydev",
    ] {
        assert!(
            out[8].split(' ').any(|x| x == d),
            "/dev lacks {d}: {}",
            out[8]
        );
    }
    assert_eq!(out[9..], ["/proc/self/fd", "root-ro"], "{out:?}");
    // The host was not touched through the symlink.
    assert!(!Path::new("/etc/via-link").exists());
    assert!(s.root.join("etc/via-link").exists());
}

#[test]
#[ignore = "needs root"]
fn long_lines_are_split() {
    let s = spawn("long", &[]);
    s.run(s.info(
        "l",
        &[
            "sh",
            "-c",
            "head -c 40960 /dev/zero | tr '\\0' x; echo; echo short",
        ],
    ));
    s.wait_exit("l");
    let recs = log_records(&s.log_path("l"));
    let shape: Vec<(String, usize)> = recs.iter().map(|r| (r.1.clone(), r.2.len())).collect();
    assert_eq!(
        shape,
        [
            ("P".into(), 16384),
            ("P".into(), 16384),
            ("F".into(), 8192),
            ("F".into(), 5)
        ],
        "{shape:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn reopen_log_and_kill() {
    let s = spawn("reopen", &[]);
    s.run(s.info(
        "t",
        &["sh", "-c", "while true; do echo tick; sleep 0.05; done"],
    ));
    let log = s.log_path("t");
    wait_for("first tick", || !texts(&log, "stdout").is_empty());
    let rotated = log.with_extension("log.1");
    fs::rename(&log, &rotated).unwrap();
    assert_eq!(
        s.call(Request::ReopenLog {
            container_id: "t".into()
        }),
        Response::Ok
    );
    wait_for("ticks in the new file", || texts(&log, "stdout").len() >= 2);
    assert!(!texts(&rotated, "stdout").is_empty());
    assert_eq!(
        s.call(Request::Signal {
            container_id: "t".into(),
            signal: 9,
            all: false
        }),
        Response::Ok
    );
    let st = s.wait_exit("t");
    assert_eq!((st.exit_code, st.signal), (Some(137), Some(9)));
    // Running containers cannot be forgotten, exited ones can; signalling them is fine.
    assert_eq!(
        s.call(Request::Signal {
            container_id: "t".into(),
            signal: 15,
            all: true
        }),
        Response::Ok
    );
}

#[test]
#[ignore = "needs root"]
fn exec_sync() {
    let s = spawn("exec", &[]);
    let mut info = s.info("e", &["sleep", "1000"]);
    info.namespaces.new_pid = true;
    fs::write(s.root.join("etc/marker"), "in-container\n").unwrap();
    s.run(info);
    assert!(matches!(
        s.call(Request::Forget {
            container_id: "e".into()
        }),
        Response::Error { .. }
    ));

    let mut ex = exec_info(
        "e",
        &[
            "sh",
            "-c",
            "cat /etc/marker; echo e >&2; ps -o pid,args | grep -c '^ *1 sleep 1000'; exit 5",
        ],
    );
    ex.uid = 0;
    match s.exec(ex) {
        Response::ExecResult(r) => {
            assert_eq!(r.exit_code, 5);
            assert_eq!(String::from_utf8_lossy(&r.stdout()), "in-container\n1\n");
            assert_eq!(r.stderr(), b"e\n");
            assert!(!r.timed_out);
        }
        r => panic!("exec: {r:?}"),
    }
    // stdin, cwd and uid
    let mut ex = exec_info("e", &["sh", "-c", "cat; pwd; id -u"]);
    ex.stdin_b64 = Some(cri_mesos_supervisor::b64::encode(b"from-stdin\n"));
    ex.cwd = "/tmp".into();
    ex.uid = 123;
    match s.exec(ex) {
        Response::ExecResult(r) => assert_eq!(
            String::from_utf8_lossy(&r.stdout()),
            "from-stdin\n/tmp\n123\n"
        ),
        r => panic!("exec: {r:?}"),
    }
    // a tty exec: output comes back as stdout
    let mut ex = exec_info("e", &["sh", "-c", "test -t 1 && echo is-a-tty"]);
    ex.tty = true;
    match s.exec(ex) {
        Response::ExecResult(r) => {
            assert_eq!(String::from_utf8_lossy(&r.stdout()).trim_end(), "is-a-tty");
            assert_eq!(r.exit_code, 0);
        }
        r => panic!("exec: {r:?}"),
    }
    // a timeout kills the whole tree
    let mut ex = exec_info(
        "e",
        &["sh", "-c", "(sleep 1009 &); sleep 1001 & sleep 1002"],
    );
    ex.timeout_ms = Some(500);
    match s.exec(ex) {
        Response::ExecResult(r) => assert!(r.timed_out, "{r:?}"),
        r => panic!("exec: {r:?}"),
    }
    wait_for("exec tree gone", || {
        ["sleep 1001", "sleep 1002", "sleep 1009"]
            .iter()
            .all(|c| processes_with_cmdline(c).iter().all(|&p| !alive(p)))
    });
    // a missing command is an error
    match s.exec(exec_info("e", &["no-such-tool"])) {
        Response::Error { message } => assert!(
            message.contains("\"no-such-tool\": executable file not found in $PATH"),
            "{message}"
        ),
        r => panic!("exec: {r:?}"),
    }
    // exec into an unknown container
    assert!(matches!(
        s.exec(exec_info("nope", &["true"])),
        Response::Error { .. }
    ));
    // the container survived all of that
    assert_eq!(s.state("e").unwrap().status, ContainerStatus::Running);
}

#[test]
#[ignore = "needs root"]
fn missing_command() {
    let s = spawn("missing", &[]);
    s.launch(s.info("x", &["nonexistent-cmd", "arg"]));
    match s.call(Request::Start {
        container_id: "x".into(),
    }) {
        Response::Error { message } => {
            assert_eq!(
                message,
                "exec: \"nonexistent-cmd\": executable file not found in $PATH"
            )
        }
        r => panic!("start: {r:?}"),
    }
    let st = s.wait_exit("x");
    assert_eq!(st.exit_code, Some(128));
    assert!(st.error.as_deref().unwrap().contains("nonexistent-cmd"));
    let rec = s.exit_record("x");
    assert_eq!(rec.exit_code, 128);
    assert_eq!(rec.started_at_ns, 0);
    // A launch failure (bad rootfs) is reported and leaves no record.
    let mut bad = s.info("bad", &["true"]);
    bad.rootfs = s.dir.0.join("no-rootfs");
    match s.call(Request::Launch(Box::new(bad))) {
        Response::Error { message } => assert!(message.contains("rootfs"), "{message}"),
        r => panic!("launch: {r:?}"),
    }
    wait_for("bad record dropped", || s.state("bad").is_none());
    // A cgroup that does not exist: launch error naming it.
    let mut bad = s.info("bad2", &["true"]);
    bad.cgroup_procs = vec![s.dir.0.join("nocgroup/cgroup.procs")];
    assert!(
        matches!(s.call(Request::Launch(Box::new(bad))), Response::Error { message } if message.contains("join cgroup"))
    );
}

#[test]
#[ignore = "needs root"]
fn survives_daemon_death_and_bad_clients() {
    let dir = TempDir::new("daemon");
    let socket = dir.0.join("sup.sock");
    // A fake daemon that spawns the supervisor and stays around.
    let mut daemon = Command::new("/bin/busybox")
        .args([
            "sh",
            "-c",
            "\"$@\"; exec sleep 1000",
            "sh",
            BIN,
            "--pod-id",
            "d",
            "--socket",
        ])
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(daemon.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = parse_spawn_line(&line).unwrap();
    let s = Sup {
        root: make_rootfs(&dir.0),
        dir,
        socket,
        pid,
    };
    // The supervisor is not the daemon's child and not in its session.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_ne!(fields[1], daemon.id().to_string());
    assert_eq!(
        fields[3], fields[2],
        "supervisor is in its own session's group? {fields:?}"
    );

    s.run(s.info(
        "t",
        &["sh", "-c", "while true; do echo tick; sleep 0.05; done"],
    ));
    let log = s.log_path("t");
    wait_for("ticks", || !texts(&log, "stdout").is_empty());
    // Bad clients: half a request, garbage, immediate close.
    {
        let mut c = std::os::unix::net::UnixStream::connect(&s.socket).unwrap();
        c.write_all(b"{\"op\": \"sta").unwrap();
    }
    drop(std::os::unix::net::UnixStream::connect(&s.socket).unwrap());
    match client::call(&s.socket, &Request::Ping, None) {
        Ok(Response::Pong { .. }) => {}
        r => panic!("{r:?}"),
    }
    let mut c = std::os::unix::net::UnixStream::connect(&s.socket).unwrap();
    c.write_all(b"not json\n").unwrap();
    let mut reply = String::new();
    BufReader::new(c).read_line(&mut reply).unwrap();
    assert!(reply.contains("\"error\""), "{reply}");
    // A client that launches and disconnects before the reply.
    {
        let mut c = std::os::unix::net::UnixStream::connect(&s.socket).unwrap();
        let mut req =
            serde_json::to_vec(&Request::Launch(Box::new(s.info("orphan", &["true"])))).unwrap();
        req.push(b'\n');
        c.write_all(&req).unwrap();
    }
    // SIGKILL the daemon.
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let n = texts(&log, "stdout").len();
    wait_for("ticks after the daemon died", || {
        texts(&log, "stdout").len() > n + 5
    });
    assert_eq!(s.state("t").unwrap().status, ContainerStatus::Running);
    wait_for("orphan launched", || {
        s.state("orphan")
            .is_some_and(|c| c.status == ContainerStatus::Created)
    });
}

#[test]
#[ignore = "needs root"]
fn tty_container() {
    let s = spawn("tty", &[]);
    let mut info = s.info(
        "t",
        &[
            "sh",
            "-c",
            "sleep 0.5; echo hello-tty; stty size; test -t 0 && echo stdin-tty",
        ],
    );
    info.process.tty = true;
    s.launch(info);
    assert_eq!(
        s.call(Request::Resize {
            container_id: "t".into(),
            width: 100,
            height: 40
        }),
        Response::Ok
    );
    s.start("t");
    assert_eq!(s.wait_exit("t").exit_code, Some(0));
    let out: Vec<String> = texts(&s.log_path("t"), "stdout")
        .into_iter()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    assert_eq!(out, ["hello-tty", "40 100", "stdin-tty"]);
    assert!(texts(&s.log_path("t"), "stderr").is_empty());
}

#[test]
#[ignore = "needs root"]
fn attach_stdin_once() {
    let s = spawn("attach", &[]);
    let mut info = s.info(
        "a",
        &["sh", "-c", "read line; echo got:$line; cat; echo eof"],
    );
    info.process.stdin = true;
    info.process.stdin_once = true;
    s.run(info);
    let (r, fd) = client::call_with_fd(
        &s.socket,
        &Request::Attach {
            container_id: "a".into(),
        },
        None,
    )
    .unwrap();
    assert_eq!(r, Response::Attached { tty: false });
    let mut f = fs::File::from(fd.expect("stdin fd"));
    f.write_all(b"hello\nmore\n").unwrap();
    drop(f);
    assert_eq!(s.wait_exit("a").exit_code, Some(0));
    assert_eq!(
        texts(&s.log_path("a"), "stdout"),
        ["got:hello", "more", "eof"]
    );
}

#[test]
#[ignore = "needs root"]
fn pod_pid_namespace() {
    let s = spawn("podpid", &["--new-pid-ns"]);
    let status = fs::read_to_string(format!("/proc/{}/status", s.pid)).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.split_whitespace().last() == Some("1"), "{nspid}");
    let a = s.run(s.info("a", &["sleep", "1000"]));
    let mut b = s.info("b", &["sh", "-c", "ps -o pid,args; echo me=$$"]);
    // Joining the supervisor's own pid namespace is a no-op.
    b.namespaces.join = vec![JoinNs {
        kind: NsKind::Pid,
        path: format!("/proc/{}/ns/pid", s.pid).into(),
    }];
    s.run(b);
    s.wait_exit("b");
    let out = texts(&s.log_path("b"), "stdout");
    let joined = out.join("\n");
    assert!(
        out.iter()
            .any(|l| l.trim().starts_with("1 ") && l.contains("cri-mesos-supervisor")),
        "{joined}"
    );
    assert!(
        out.iter().any(|l| l.trim().ends_with("sleep 1000")),
        "{joined}"
    );
    assert!(
        out.iter().any(|l| l.starts_with("me=") && l != "me=1"),
        "{joined}"
    );
    // Host pids are reported even though the supervisor lives in its own pid namespace.
    let cmd = fs::read(format!("/proc/{a}/cmdline")).unwrap();
    assert_eq!(cmd, b"sleep\x001000\x00");
    // Shutdown kills everything and records exits.
    assert_eq!(s.call(Request::Shutdown), Response::Ok);
    let rec = s.exit_record("a");
    assert_eq!((rec.exit_code, rec.signal), (137, Some(9)));
    assert!(!s.socket.exists());
}

#[test]
#[ignore = "needs root"]
fn join_pinned_namespaces() {
    let s = spawn("join", &[]);
    let ns = s.dir.0.join("ns");
    fs::create_dir_all(&ns).unwrap();
    for n in ["uts", "net", "ipc"] {
        fs::write(ns.join(n), "").unwrap();
    }
    let st = Command::new("unshare")
        .arg(format!("--uts={}", ns.join("uts").display()))
        .arg(format!("--net={}", ns.join("net").display()))
        .arg(format!("--ipc={}", ns.join("ipc").display()))
        .arg("true")
        .status();
    if !st.is_ok_and(|s| s.success()) {
        eprintln!("skipping: unshare could not pin namespaces");
        return;
    }
    let mut info = s.info(
        "j",
        &[
            "sh",
            "-c",
            "hostname; cat /proc/net/dev | wc -l; ls /sys/class/net",
        ],
    );
    info.namespaces.join = ["uts", "net", "ipc"]
        .iter()
        .map(|n| JoinNs {
            kind: match *n {
                "uts" => NsKind::Uts,
                "net" => NsKind::Net,
                _ => NsKind::Ipc,
            },
            path: ns.join(n),
        })
        .collect();
    info.hostname = Some("pod-host".into());
    s.run(info);
    let code = s.wait_exit("j").exit_code;
    for n in ["uts", "net", "ipc"] {
        let _ = Command::new("umount").arg(ns.join(n)).status();
    }
    assert_eq!(code, Some(0), "{:?}", texts(&s.log_path("j"), "stderr"));
    assert_eq!(texts(&s.log_path("j"), "stdout"), ["pod-host", "3", "lo"]);
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host.trim(), "pod-host");
}

#[test]
#[ignore = "needs root"]
fn join_container_pid_namespace_and_signal_all() {
    let s = spawn("target", &[]);
    let mut t = s.info("target", &["sleep", "1005"]);
    t.namespaces.new_pid = true;
    let tpid = s.run(t);
    // An ephemeral-debug-like container in the target container's pid namespace.
    let mut d = s.info("dbg", &["sh", "-c", "ps -o pid,args; echo me=$$"]);
    d.namespaces.join = vec![JoinNs {
        kind: NsKind::Pid,
        path: format!("/proc/{tpid}/ns/pid").into(),
    }];
    s.run(d);
    assert_eq!(s.wait_exit("dbg").exit_code, Some(0));
    let out = texts(&s.log_path("dbg"), "stdout");
    assert!(out.iter().any(|l| l.trim() == "1 sleep 1005"), "{out:?}");
    assert!(
        out.iter().any(|l| l.starts_with("me=") && l != "me=1"),
        "{out:?}"
    );
    // new_pid and a pid join are exclusive
    let mut bad = s.info("bad", &["true"]);
    bad.namespaces.new_pid = true;
    bad.namespaces.join = vec![JoinNs {
        kind: NsKind::Pid,
        path: format!("/proc/{tpid}/ns/pid").into(),
    }];
    assert!(matches!(
        s.call(Request::Launch(Box::new(bad))),
        Response::Error { .. }
    ));

    // Signal with all=true reaches processes that left the init's process tree (no pid ns).
    s.run(s.info(
        "bg",
        &[
            "sh",
            "-c",
            "(sleep 1006 &) ; (sleep 1007 &); exec sleep 1008",
        ],
    ));
    wait_for("background sleeps", || {
        !processes_with_cmdline("sleep 1006").is_empty()
            && !processes_with_cmdline("sleep 1007").is_empty()
    });
    assert_eq!(
        s.call(Request::Signal {
            container_id: "bg".into(),
            signal: 9,
            all: true
        }),
        Response::Ok
    );
    assert_eq!(s.wait_exit("bg").exit_code, Some(137));
    wait_for("all gone", || {
        ["sleep 1006", "sleep 1007", "sleep 1008"]
            .iter()
            .all(|c| processes_with_cmdline(c).iter().all(|&p| !alive(p)))
    });
    assert_eq!(s.state("target").unwrap().status, ContainerStatus::Running);
}

#[test]
#[ignore = "needs root"]
fn cgroups_are_joined() {
    let name = format!("cri-mesos-sup-test-{}", std::process::id());
    // hybrid: a v1 controller and the v2 tree; pure v2: the root; pure v1: a controller.
    let bases: &[&str] = if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        &["/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified"]
    } else if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        &["/sys/fs/cgroup"]
    } else {
        &["/sys/fs/cgroup/pids"]
    };
    let dirs: Vec<PathBuf> = bases
        .iter()
        .map(|b| Path::new(b).join(&name))
        .filter(|d| fs::create_dir(d).is_ok())
        .collect();
    let procs: Vec<PathBuf> = dirs.iter().map(|d| d.join("cgroup.procs")).collect();
    if procs.is_empty() {
        eprintln!("skipping: no writable cgroup hierarchy");
        return;
    }
    let s = spawn("cgroups", &[]);
    let mut info = s.info("c", &["sleep", "1000"]);
    info.cgroup_procs = procs.clone();
    let pid = s.run(info);
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let ex = match s.exec(exec_info("c", &["sh", "-c", "cat /proc/self/cgroup"])) {
        Response::ExecResult(r) => String::from_utf8_lossy(&r.stdout()).to_string(),
        r => panic!("{r:?}"),
    };
    let _ = s.call(Request::Signal {
        container_id: "c".into(),
        signal: 9,
        all: true,
    });
    s.wait_exit("c");
    std::thread::sleep(Duration::from_millis(100));
    for d in &dirs {
        let _ = fs::remove_dir(d);
    }
    let n = own
        .lines()
        .filter(|l| l.ends_with(&format!("/{name}")))
        .count();
    assert_eq!(n, dirs.len(), "{own}");
    // The exec's view is in the container's cgroup namespace-less hierarchy too.
    assert_eq!(
        ex.lines()
            .filter(|l| l.ends_with(&format!("/{name}")))
            .count(),
        dirs.len(),
        "{ex}"
    );
}

/// Sends `req` and reads the one-line reply, keeping the connection (attach streams).
fn open_session(
    socket: &Path,
    req: &Request,
) -> (Response, std::os::unix::net::UnixStream, Vec<u8>) {
    use std::io::Read;
    let mut c = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let mut line = serde_json::to_vec(req).unwrap();
    line.push(b'\n');
    c.write_all(&line).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.contains(&b'\n') {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the reply");
        got.extend_from_slice(&buf[..n]);
    }
    let end = got.iter().position(|&b| b == b'\n').unwrap();
    let reply = serde_json::from_slice(&got[..end]).unwrap();
    (reply, c, got[end + 1..].to_vec())
}

/// The attach frames' payloads of `stream` in `bytes` (complete frames only).
fn attach_payload(bytes: &[u8], stream: u8) -> Vec<u8> {
    let (mut out, mut b) = (Vec::new(), bytes);
    while b.len() >= 5 {
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        if b.len() < 5 + len {
            break;
        }
        if b[0] == stream {
            out.extend_from_slice(&b[5..5 + len]);
        }
        b = &b[5 + len..];
    }
    out
}

#[test]
#[ignore = "needs root"]
fn attach_streams_fan_out_and_a_slow_client_is_dropped() {
    use std::io::Read;
    let s = spawn("attachfan", &[]);
    let mut info = s.info(
        "f",
        &[
            "sh",
            "-c",
            "read go; echo out-$go; echo err-$go >&2; seq 1 400000; echo last",
        ],
    );
    info.process.stdin = true;
    s.run(info);
    // A reader with stdin, and one that never reads.
    let (r, mut reader, mut got) = open_session(
        &s.socket,
        &Request::AttachStream {
            container_id: "f".into(),
            stdin: false,
        },
    );
    assert_eq!(r, Response::Attached { tty: false });
    let (r, mut slow, mut slow_got) = open_session(
        &s.socket,
        &Request::AttachStream {
            container_id: "f".into(),
            stdin: false,
        },
    );
    assert_eq!(r, Response::Attached { tty: false });
    let (r, fd) = client::call_with_fd(
        &s.socket,
        &Request::Attach {
            container_id: "f".into(),
        },
        None,
    )
    .unwrap();
    assert_eq!(r, Response::Attached { tty: false });
    let mut stdin = fs::File::from(fd.unwrap());
    stdin.write_all(b"now\n").unwrap();
    // The reading client gets everything, in order, until the output ends (EOF).
    reader.read_to_end(&mut got).unwrap();
    let out = String::from_utf8(attach_payload(&got, 1)).unwrap();
    assert!(
        out.starts_with("out-now\n1\n2\n"),
        "{}",
        &out[..40.min(out.len())]
    );
    assert!(out.ends_with("400000\nlast\n"));
    assert_eq!(attach_payload(&got, 2), b"err-now\n");
    // The one that never read (about 2.3 MB of output were pending) did not hold the
    // container back, and the log has it all.
    assert_eq!(s.wait_exit("f").exit_code, Some(0));
    let log = texts(&s.log_path("f"), "stdout");
    assert_eq!(log.last().map(String::as_str), Some("last"));
    assert_eq!(log.len(), 400002);
    // ... and it lost its stream: what it had queued ends early, then EOF.
    slow.read_to_end(&mut slow_got).unwrap();
    let partial = attach_payload(&slow_got, 1);
    assert!(
        partial.len() < out.len()
            && partial.starts_with(
                b"out-now
"
            )
    );
    // Attaching to an exited container is refused.
    let (r, _, _) = open_session(
        &s.socket,
        &Request::AttachStream {
            container_id: "f".into(),
            stdin: false,
        },
    );
    assert!(matches!(r, Response::Error { .. }), "{r:?}");
}

#[test]
#[ignore = "needs root"]
fn exec_stream_hands_over_pipes_and_reports_the_exit_later() {
    use std::io::Read;
    let s = spawn("execstream", &[]);
    s.run(s.info("e", &["sleep", "1000"]));
    let req = Request::ExecStream {
        exec: Box::new(exec_info("e", &["sh", "-c", "cat; echo err >&2; exit 9"])),
        stdin: true,
        stdout: true,
        stderr: true,
    };
    let mut c = std::os::unix::net::UnixStream::connect(&s.socket).unwrap();
    let mut line = serde_json::to_vec(&req).unwrap();
    line.push(b'\n');
    c.write_all(&line).unwrap();
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    let mut fds = Vec::new();
    while !got.contains(&b'\n') {
        let (n, more) = client::recv_fds(std::os::fd::AsRawFd::as_raw_fd(&c), &mut buf).unwrap();
        assert!(n > 0);
        fds.extend(more);
        got.extend_from_slice(&buf[..n]);
    }
    let end = got.iter().position(|&b| b == b'\n').unwrap();
    let r: Response = serde_json::from_slice(&got[..end]).unwrap();
    assert_eq!(r, Response::ExecStarted { tty: false });
    assert_eq!(fds.len(), 3);
    let mut fds = fds.into_iter().map(fs::File::from);
    let (mut i, mut o, mut e) = (
        fds.next().unwrap(),
        fds.next().unwrap(),
        fds.next().unwrap(),
    );
    i.write_all(b"through\n").unwrap();
    drop(i);
    let mut out = String::new();
    o.read_to_string(&mut out).unwrap();
    let mut err = String::new();
    e.read_to_string(&mut err).unwrap();
    assert_eq!((out.as_str(), err.as_str()), ("through\n", "err\n"));
    let mut rest = got[end + 1..].to_vec();
    c.read_to_end(&mut rest).unwrap();
    let r: Response = serde_json::from_slice(rest.trim_ascii()).unwrap();
    assert_eq!(
        r,
        Response::ExecExited {
            exit_code: 9,
            error: None
        }
    );
}
