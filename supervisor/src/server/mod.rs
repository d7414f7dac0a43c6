//! The supervisor proper: start-up and the single-threaded poll(2) loop.

use crate::child::{self, ChildFds, proc_path, same_file};
use crate::crilog::{self, LineSplitter, LogFile, Stream};
use crate::exec::{self, ExecFds};
use crate::protocol::{
    ContainerState, ContainerStatus, ExecInfo, ExecResult, ExitRecord, LaunchInfo, NsKind, Request,
    Response,
};
use crate::{b64, sys};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use self::conn::{fan_out, read_lines};
use self::shutdown::{kill_tree, proc_pids, signal_host_pid};

mod conn;
mod containers;
mod sessions;
mod shutdown;

/// How long output pipes may stay open after their process was reaped (orphans holding them).
const PIPE_GRACE: Duration = Duration::from_secs(1);
/// Exec output kept per stream.
const EXEC_OUTPUT_CAP: usize = 16 << 20;
/// Largest request line accepted.
const MAX_REQUEST: usize = 32 << 20;
/// supervisor.log is rotated (to supervisor.log.1) beyond this size.
const DIAG_LOG_MAX: u64 = 64 << 10;
/// Read chunk for pipes.
const READ_CHUNK: usize = 16 << 10;

/// Command-line configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub pod_id: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub new_pid_ns: bool,
    pub ready_fd: Option<RawFd>,
}

const USAGE: &str = "usage: cri-mesos-supervisor --pod-id ID --socket PATH --state-dir DIR [--new-pid-ns] [--ready-fd N]";

pub fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Config, String> {
    let mut c = Config::default();
    while let Some(a) = args.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut val = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(format!("{key} needs a value"))
        };
        match key.as_str() {
            "--pod-id" => c.pod_id = val()?,
            "--socket" => c.socket = val()?.into(),
            "--state-dir" => c.state_dir = val()?.into(),
            "--new-pid-ns" => c.new_pid_ns = true,
            "--ready-fd" => {
                c.ready_fd = Some(
                    val()?
                        .parse()
                        .map_err(|_| "--ready-fd needs a number".to_string())?,
                )
            }
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    if c.pod_id.is_empty() || c.socket.as_os_str().is_empty() || c.state_dir.as_os_str().is_empty()
    {
        return Err(USAGE.into());
    }
    Ok(c)
}

/// Entry point of the binary: spawned by the daemon, it forks the supervisor (as PID 1 of a new
/// pid namespace with `--new-pid-ns`), prints `pid <N>` (or `error: ...`) once the supervisor
/// serves its socket, and exits.
pub fn main_entry() -> ! {
    let cfg = match parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            let _ = sys::write_all(1, format!("error: {e}\n").as_bytes());
            sys::exit_now(2);
        }
    };
    let out = cfg.ready_fd.unwrap_or(1);
    let report = |line: String, code: i32| -> ! {
        let _ = sys::write_all(out, line.as_bytes());
        sys::exit_now(code)
    };
    // Leave the daemon's session and process group: its signals and its death are not ours.
    let _ = sys::setsid();
    sys::close_fds_except(&[out]);
    let (r, w) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => report(format!("error: pipe: {e}\n"), 1),
    };
    if cfg.new_pid_ns
        && let Err(e) = sys::unshare(libc::CLONE_NEWPID)
    {
        report(format!("error: unshare pid namespace: {e}\n"), 1);
    }
    match sys::clone_process(0) {
        Err(e) => report(format!("error: fork: {e}\n"), 1),
        Ok(None) => {
            drop(r);
            supervisor_main(cfg, w)
        }
        Ok(Some(pid)) => {
            drop(w);
            let mut msg = Vec::new();
            let mut buf = [0u8; 512];
            while let Ok(n @ 1..) = sys::read(r.as_raw_fd(), &mut buf) {
                msg.extend_from_slice(&buf[..n]);
            }
            let msg = String::from_utf8_lossy(&msg);
            if msg.trim() == "ok" {
                report(format!("pid {pid}\n"), 0)
            }
            let _ = sys::wait_nohang(pid);
            let msg = msg.trim();
            let msg = if msg.is_empty() {
                "supervisor exited during start-up"
            } else {
                msg
            };
            report(format!("error: {msg}\n"), 1)
        }
    }
}

fn supervisor_main(cfg: Config, ready: OwnedFd) -> ! {
    // The daemon's pipes (stdout, --ready-fd) belong to the spawned process, not to us: the
    // daemon must see EOF on them as soon as that one exits.
    if let Ok(null) = sys::open_devnull() {
        for fd in 0..3 {
            let _ = sys::dup2(null.as_raw_fd(), fd);
        }
    }
    sys::close_fds_except(&[ready.as_raw_fd()]);
    match Supervisor::init(cfg) {
        Ok(mut s) => {
            let _ = sys::write_all(ready.as_raw_fd(), b"ok\n");
            drop(ready);
            let pid = s.host_pid;
            s.diag(format_args!("supervisor started (pid {pid})"));
            s.run()
        }
        Err(e) => {
            let _ = sys::write_all(ready.as_raw_fd(), e.as_bytes());
            sys::exit_now(1)
        }
    }
}

/// Writes `data` to `path` atomically: temp file, fsync, rename, fsync of the directory.
/// The directory must exist: an exit file whose container the daemon already removed must
/// not bring its directory back.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// A short diagnostic log (rotated once).
struct DiagLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

impl DiagLog {
    fn open(path: PathBuf) -> DiagLog {
        let mut d = DiagLog {
            path,
            file: None,
            size: 0,
        };
        d.reopen();
        d
    }

    fn reopen(&mut self) {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path);
        self.size = f
            .as_ref()
            .ok()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        self.file = f.ok();
    }

    fn write(&mut self, msg: std::fmt::Arguments<'_>) {
        if self.size > DIAG_LOG_MAX {
            let mut old = self.path.as_os_str().to_owned();
            old.push(".1");
            let _ = fs::rename(&self.path, old);
            self.reopen();
        }
        let mut line = Vec::with_capacity(128);
        crilog::format_timestamp(crilog::now_ns(), &mut line);
        let _ = writeln!(line, " {msg}");
        if let Some(f) = &mut self.file
            && f.write_all(&line).is_ok()
        {
            self.size += line.len() as u64;
        }
    }
}

#[derive(Debug)]
enum ConnState {
    Reading,
    /// A reply comes later (launch, start, exec, shutdown).
    Waiting,
    Writing,
    /// An exec stream session: the reply went out, the final one comes when the process
    /// ends; the client closing the connection (readable: EOF) ends the session.
    Session,
}

#[derive(Debug)]
struct Conn {
    id: u64,
    stream: UnixStream,
    state: ConnState,
    buf: Vec<u8>,
    sent: usize,
    fd_to_send: Vec<OwnedFd>,
    /// Become a [`ConnState::Session`] once the reply is written, instead of closing.
    then_session: bool,
    /// An attach client: the output it is sent.
    attach: Option<AttachOut>,
    closed: bool,
}

/// Output queued for an attach client ([`Request::AttachStream`]).
#[derive(Debug)]
struct AttachOut {
    container_key: u64,
    buf: Vec<u8>,
    sent: usize,
    /// The container's output ended: close once `buf` is sent.
    closing: bool,
}

/// An output pipe (or pty master) feeding a log or a buffer.
#[derive(Debug)]
struct Pipe {
    fd: OwnedFd,
    split: LineSplitter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Forked; the child is setting itself up.
    Launching,
    /// Ready and blocked on the start pipe.
    Created,
    /// Start byte written; waiting for exec (EOF on the status pipe) or an error.
    Starting,
    Running,
    /// Exit recorded.
    Exited,
}

#[derive(Debug)]
struct Container {
    key: u64,
    id: String,
    /// Pid in the supervisor's pid namespace (for kill/waitpid).
    pid: libc::pid_t,
    /// Pid in the host's (daemon's) pid namespace.
    host_pid: i32,
    phase: Phase,
    status_fd: Option<OwnedFd>,
    status_buf: Vec<u8>,
    start_fd: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    stdin_once: bool,
    /// pty master (tty containers): dup of the stdout pipe's fd, for attach and resize.
    master: Option<OwnedFd>,
    stdout: Option<Pipe>,
    stderr: Option<Pipe>,
    log: Option<LogFile>,
    log_failed: bool,
    exit_file: PathBuf,
    cgroup_procs: Vec<PathBuf>,
    mnt_ns: Option<(u64, u64)>,
    waiter: Option<u64>,
    exit: Option<sys::Exit>,
    reaped_at: Option<Instant>,
    started_at_ns: i64,
    finished_at_ns: i64,
    error: Option<String>,
    /// Launch failed: drop the record once the child is reaped (no exit file).
    discard: bool,
}

#[derive(Debug)]
struct ExecSession {
    key: u64,
    container_key: u64,
    pid: libc::pid_t,
    host_pid: Option<i32>,
    conn: u64,
    status_fd: Option<OwnedFd>,
    status_buf: Vec<u8>,
    stdin: Option<OwnedFd>,
    stdin_data: Vec<u8>,
    stdin_off: usize,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    out: Vec<u8>,
    err: Vec<u8>,
    deadline: Option<Instant>,
    timed_out: bool,
    exit: Option<sys::Exit>,
    reaped_at: Option<Instant>,
    error: Option<String>,
    /// A streaming session: the client holds the process's descriptors, the reply is
    /// [`Response::ExecExited`].
    stream: bool,
}

#[derive(Debug, Clone, Copy)]
enum Tok {
    Listener,
    Signals,
    Conn(u64),
    CStatus(u64),
    COut(u64, Stream),
    EStatus(u64),
    EOut(u64, Stream),
    EIn(u64),
}

struct Supervisor {
    cfg: Config,
    host_pid: i32,
    listener: Option<UnixListener>,
    sigfd: OwnedFd,
    diag: DiagLog,
    conns: Vec<Conn>,
    containers: Vec<Container>,
    execs: Vec<ExecSession>,
    next_key: u64,
    scratch: Vec<u8>,
    logbuf: Vec<u8>,
    shutdown: Option<(Option<u64>, Instant)>,
}

fn err(message: impl Into<String>) -> Response {
    Response::Error {
        message: message.into(),
    }
}

impl Supervisor {
    fn init(cfg: Config) -> Result<Supervisor, String> {
        let host_pid = child::host_pid().map_err(|e| format!("host pid: {e}"))?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.state_dir)
            .map_err(|e| format!("state dir {}: {e}", cfg.state_dir.display()))?;
        let diag = DiagLog::open(cfg.state_dir.join("supervisor.log"));
        let _ = sys::set_child_subreaper();
        sys::ignore_sigpipe();
        let sigfd = sys::signalfd(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
            .map_err(|e| format!("signalfd: {e}"))?;
        if let Ok(m) = fs::symlink_metadata(&cfg.socket) {
            use std::os::unix::fs::FileTypeExt;
            if m.file_type().is_socket() {
                let _ = fs::remove_file(&cfg.socket);
            }
        }
        if let Some(dir) = cfg.socket.parent() {
            let _ = fs::create_dir_all(dir);
        }
        sys::umask(0o177); // the socket is created 0600
        let listener = UnixListener::bind(&cfg.socket);
        sys::umask(0o022);
        let listener = listener.map_err(|e| format!("bind {}: {e}", cfg.socket.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("socket: {e}"))?;
        fs::create_dir_all(&cfg.state_dir).map_err(|e| format!("state dir: {e}"))?;
        write_atomic(
            &cfg.state_dir.join("supervisor.pid"),
            format!("{host_pid}\n").as_bytes(),
        )
        .map_err(|e| format!("pid file: {e}"))?;
        let _ = std::env::set_current_dir("/");
        Ok(Supervisor {
            cfg,
            host_pid,
            listener: Some(listener),
            sigfd,
            diag,
            conns: Vec::new(),
            containers: Vec::new(),
            execs: Vec::new(),
            next_key: 1,
            scratch: Vec::new(),
            logbuf: Vec::new(),
            shutdown: None,
        })
    }

    fn diag(&mut self, msg: std::fmt::Arguments<'_>) {
        self.diag.write(msg);
    }

    fn key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    fn run(&mut self) -> ! {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut toks: Vec<Tok> = Vec::new();
        loop {
            fds.clear();
            toks.clear();
            let mut add = |fd: RawFd, events: libc::c_short, t: Tok| {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                toks.push(t);
            };
            if let (Some(l), None) = (&self.listener, &self.shutdown) {
                add(l.as_raw_fd(), libc::POLLIN, Tok::Listener);
            }
            add(self.sigfd.as_raw_fd(), libc::POLLIN, Tok::Signals);
            for c in &self.conns {
                let ev = match c.state {
                    ConnState::Reading => libc::POLLIN,
                    ConnState::Waiting => 0,
                    ConnState::Writing => libc::POLLOUT,
                    ConnState::Session => match &c.attach {
                        Some(a) if a.sent < a.buf.len() => libc::POLLIN | libc::POLLOUT,
                        _ => libc::POLLIN,
                    },
                };
                add(c.stream.as_raw_fd(), ev, Tok::Conn(c.id));
            }
            for c in &self.containers {
                if let Some(f) = &c.status_fd {
                    add(f.as_raw_fd(), libc::POLLIN, Tok::CStatus(c.key));
                }
                if let Some(p) = &c.stdout {
                    add(
                        p.fd.as_raw_fd(),
                        libc::POLLIN,
                        Tok::COut(c.key, Stream::Stdout),
                    );
                }
                if let Some(p) = &c.stderr {
                    add(
                        p.fd.as_raw_fd(),
                        libc::POLLIN,
                        Tok::COut(c.key, Stream::Stderr),
                    );
                }
            }
            for e in &self.execs {
                if let Some(f) = &e.status_fd {
                    add(f.as_raw_fd(), libc::POLLIN, Tok::EStatus(e.key));
                }
                if let Some(f) = &e.stdout {
                    add(
                        f.as_raw_fd(),
                        libc::POLLIN,
                        Tok::EOut(e.key, Stream::Stdout),
                    );
                }
                if let Some(f) = &e.stderr {
                    add(
                        f.as_raw_fd(),
                        libc::POLLIN,
                        Tok::EOut(e.key, Stream::Stderr),
                    );
                }
                if let Some(f) = &e.stdin {
                    add(f.as_raw_fd(), libc::POLLOUT, Tok::EIn(e.key));
                }
            }
            let timeout = self.next_deadline().map_or(-1, |d| {
                let ms = d.saturating_duration_since(Instant::now()).as_millis();
                ms.min(60_000) as i32 + 1
            });
            if let Err(e) = sys::poll(&mut fds, timeout) {
                self.diag(format_args!("poll: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            for (pfd, tok) in fds.iter().zip(toks.iter()) {
                if pfd.revents != 0 {
                    self.event(*tok, pfd.revents);
                }
            }
            self.timers();
            self.progress();
            self.end_attaches();
            self.conns.retain(|c| !c.closed);
            if self.shutdown_done() {
                self.finish_shutdown();
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let c = self
            .containers
            .iter()
            .filter(|c| c.exit.is_some() && c.phase != Phase::Exited);
        let grace = c.filter_map(|c| c.reaped_at.map(|t| t + PIPE_GRACE));
        let ex = self.execs.iter().flat_map(|e| {
            let timeout = e.deadline.filter(|_| !e.timed_out && e.exit.is_none());
            [timeout, e.reaped_at.map(|t| t + PIPE_GRACE)]
        });
        let ex = ex.flatten();
        let sd = self.shutdown.map(|(_, d)| d);
        grace.chain(ex).chain(sd).min()
    }

    fn event(&mut self, tok: Tok, revents: libc::c_short) {
        match tok {
            Tok::Listener => self.accept(),
            Tok::Signals => self.signals(),
            Tok::Conn(id) => self.conn_event(id, revents),
            Tok::CStatus(k) => self.container_status(k),
            Tok::COut(k, s) => self.container_output(k, s),
            Tok::EStatus(k) => self.exec_status(k),
            Tok::EOut(k, s) => self.exec_output(k, s),
            Tok::EIn(k) => self.exec_stdin(k),
        }
    }

    // ---- connections -------------------------------------------------------------------

    fn timers(&mut self) {
        let now = Instant::now();
        for i in 0..self.execs.len() {
            let e = &mut self.execs[i];
            if e.exit.is_none() && !e.timed_out && e.deadline.is_some_and(|d| d <= now) {
                e.timed_out = true;
                if let Some(h) = e.host_pid {
                    kill_tree(h, libc::SIGKILL);
                }
                let _ = sys::kill(e.pid, libc::SIGKILL);
            }
        }
    }

    /// Finishes whatever can be finished: container exits, exec replies, orphaned pipes.
    fn progress(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.containers.len() {
            let c = &mut self.containers[i];
            if c.phase == Phase::Exited || c.exit.is_none() {
                i += 1;
                continue;
            }
            if c.status_fd.is_some() {
                // At EOF once the child died; read it before deciding anything.
                let key = c.key;
                self.container_status(key);
            }
            let c = &mut self.containers[i];
            let late = c.reaped_at.is_some_and(|t| now >= t + PIPE_GRACE);
            if c.status_fd.is_some() && !late {
                i += 1;
                continue;
            }
            c.status_fd = None;
            let pipes_open = c.stdout.is_some() || c.stderr.is_some();
            if pipes_open && !late {
                i += 1;
                continue;
            }
            if c.discard {
                if let Some(w) = c.waiter.take() {
                    self.reply(w, err("container process exited during setup"), None);
                }
                self.containers.remove(i);
                continue;
            }
            self.finalize_container(i);
            i += 1;
        }
        let mut j = 0;
        while j < self.execs.len() {
            let e = &mut self.execs[j];
            let late = e.reaped_at.is_some_and(|t| now >= t + PIPE_GRACE);
            if e.exit.is_some() && e.status_fd.is_some() {
                let key = e.key;
                self.exec_status(key);
            }
            let e = &self.execs[j];
            let open = e.status_fd.is_some() || e.stdout.is_some() || e.stderr.is_some();
            if e.exit.is_none() || (open && !late) {
                j += 1;
                continue;
            }
            let e = self.execs.remove(j);
            if e.stream {
                let resp = Response::ExecExited {
                    exit_code: e.exit.map_or(-1, sys::Exit::code),
                    error: e.error,
                };
                self.reply(e.conn, resp, None);
                continue;
            }
            let resp = match (e.error, e.timed_out) {
                (Some(msg), false) => err(msg),
                _ => Response::ExecResult(ExecResult {
                    exit_code: e.exit.map_or(-1, sys::Exit::code),
                    stdout_b64: (!e.out.is_empty()).then(|| b64::encode(&e.out)),
                    stderr_b64: (!e.err.is_empty()).then(|| b64::encode(&e.err)),
                    timed_out: e.timed_out,
                }),
            };
            self.reply(e.conn, resp, None);
        }
    }
}

/// Runs a forked child's body; a panic must never unwind into the copy of the supervisor's
/// loop, so it ends the child instead.
fn in_child(f: impl FnOnce() -> std::convert::Infallible) -> ! {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    sys::exit_now(128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let a = |v: &[&str]| parse_args(v.iter().map(|s| s.to_string()));
        let c = a(&[
            "--pod-id",
            "p",
            "--socket=/s",
            "--state-dir",
            "/d",
            "--new-pid-ns",
            "--ready-fd",
            "5",
        ])
        .unwrap();
        assert_eq!(
            (c.pod_id.as_str(), c.new_pid_ns, c.ready_fd),
            ("p", true, Some(5))
        );
        assert_eq!(c.socket, PathBuf::from("/s"));
        assert!(a(&["--pod-id", "p"]).is_err());
        assert!(a(&["--bogus"]).is_err());
    }
}
