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

    fn accept(&mut self) {
        let Some(l) = &self.listener else { return };
        for _ in 0..16 {
            match l.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.next_key += 1;
                    let id = self.next_key;
                    self.conns.push(Conn {
                        id,
                        stream,
                        state: ConnState::Reading,
                        buf: Vec::new(),
                        sent: 0,
                        fd_to_send: Vec::new(),
                        then_session: false,
                        attach: None,
                        closed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.diag(format_args!("accept: {e}"));
                    break;
                }
            }
        }
    }

    fn conn_event(&mut self, id: u64, revents: libc::c_short) {
        let Some(i) = self.conns.iter().position(|c| c.id == id) else {
            return;
        };
        match self.conns[i].state {
            ConnState::Reading => self.conn_read(i),
            ConnState::Writing => self.conn_write(i),
            ConnState::Waiting => {
                // The client went away; the deferred reply will be dropped.
                if revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                    self.conns[i].closed = true;
                }
            }
            ConnState::Session => {
                if revents & libc::POLLOUT != 0 {
                    self.attach_write(i);
                }
                if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
                    return;
                }
                // Nothing more is expected from the client: data or EOF both end it.
                let mut buf = [0u8; 64];
                match sys::read(self.conns[i].stream.as_raw_fd(), &mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    _ => {
                        self.conns[i].closed = true;
                        self.end_session(id);
                    }
                }
            }
        }
    }

    fn conn_read(&mut self, i: usize) {
        let mut buf = [0u8; 4096];
        let c = &mut self.conns[i];
        let eof = loop {
            match sys::read(c.stream.as_raw_fd(), &mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    c.buf.extend_from_slice(&buf[..n]);
                    if c.buf.contains(&b'\n') {
                        break false;
                    }
                    if c.buf.len() > MAX_REQUEST {
                        c.closed = true;
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    c.closed = true;
                    return;
                }
            }
        };
        let line = std::mem::take(&mut c.buf);
        let line = match line.iter().position(|&b| b == b'\n') {
            Some(p) => &line[..p],
            None if eof && !line.is_empty() => &line[..],
            None => {
                c.closed = true;
                return;
            }
        };
        let id = c.id;
        c.state = ConnState::Waiting;
        let resp = match serde_json::from_slice::<Request>(line) {
            Ok(req) => self.handle(req, id),
            Err(e) => Some(err(format!("bad request: {e}"))),
        };
        if let Some(r) = resp {
            self.reply(id, r, None);
        }
    }

    fn conn_write(&mut self, i: usize) {
        let c = &mut self.conns[i];
        while c.sent < c.buf.len() {
            let fd = c.stream.as_raw_fd();
            let r = if c.fd_to_send.is_empty() {
                sys::write(fd, &c.buf[c.sent..])
            } else {
                let raw: Vec<RawFd> = c.fd_to_send.iter().map(|f| f.as_raw_fd()).collect();
                sys::send_with_fds(fd, &c.buf[c.sent..], &raw)
            };
            match r {
                Ok(n) => {
                    c.sent += n;
                    // Sent with the first bytes; our copies close now.
                    c.fd_to_send.clear();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    c.closed = true;
                    let id = c.id;
                    self.end_session(id);
                    return;
                }
            }
        }
        if std::mem::take(&mut c.then_session) {
            c.state = ConnState::Session;
            c.buf = Vec::new();
        } else {
            c.closed = true;
        }
    }

    /// Sends an attach client what is queued for it, as far as the socket takes it.
    fn attach_write(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(a) = &mut c.attach else { return };
        while a.sent < a.buf.len() {
            match sys::write(c.stream.as_raw_fd(), &a.buf[a.sent..]) {
                Ok(n) => a.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    c.closed = true;
                    return;
                }
            }
        }
        if a.sent == a.buf.len() {
            a.buf.clear();
            a.sent = 0;
            if a.buf.capacity() > 64 << 10 {
                a.buf = Vec::new();
            }
            if a.closing {
                c.closed = true;
            }
        }
    }

    /// Queues `resp` on connection `id` (if still there) and starts writing it.
    fn reply(&mut self, id: u64, resp: Response, fd: Option<OwnedFd>) {
        self.reply_fds(id, resp, fd.into_iter().collect(), false);
    }

    /// Like [`Self::reply`] with any number of descriptors; with `session`, the
    /// connection stays open afterwards (exec streams).
    fn reply_fds(&mut self, id: u64, resp: Response, fds: Vec<OwnedFd>, session: bool) {
        let Some(i) = self.conns.iter().position(|c| c.id == id && !c.closed) else {
            return;
        };
        let c = &mut self.conns[i];
        c.buf = serde_json::to_vec(&resp)
            .unwrap_or_else(|_| b"{\"reply\":\"error\",\"message\":\"encode\"}".to_vec());
        c.buf.push(b'\n');
        c.sent = 0;
        c.fd_to_send = fds;
        c.then_session = session;
        c.state = ConnState::Writing;
        self.conn_write(i);
    }

    // ---- requests ----------------------------------------------------------------------

    fn find(&self, id: &str) -> Option<usize> {
        self.containers
            .iter()
            .position(|c| c.id == id && !c.discard)
    }

    fn handle(&mut self, req: Request, conn: u64) -> Option<Response> {
        if self.shutdown.is_some() && !matches!(req, Request::Ping | Request::State) {
            return Some(err("supervisor is shutting down"));
        }
        match req {
            Request::Ping => Some(Response::Pong {
                pod_id: self.cfg.pod_id.clone(),
                pid: self.host_pid,
                version: env!("CARGO_PKG_VERSION").into(),
                protocol: crate::protocol::PROTOCOL,
            }),
            Request::Launch(info) => self.launch(*info, conn),
            Request::Start { container_id } => self.start(&container_id, conn),
            Request::Signal {
                container_id,
                signal,
                all,
            } => Some(self.signal(&container_id, signal, all)),
            Request::Exec(info) => self.exec(*info, conn),
            Request::ExecStream {
                exec,
                stdin,
                stdout,
                stderr,
            } => {
                if let Err(e) = self.try_exec_stream(*exec, [stdin, stdout, stderr], conn) {
                    self.reply(conn, err(e), None);
                }
                None
            }
            Request::ReopenLog { container_id } => Some(self.reopen_log(&container_id)),
            Request::State => Some(Response::StateReply {
                containers: self.state(),
            }),
            Request::Forget { container_id } => Some(self.forget(&container_id)),
            Request::Attach { container_id } => {
                match self.attach(&container_id) {
                    Ok((tty, fd)) => self.reply(conn, Response::Attached { tty }, Some(fd)),
                    Err(e) => self.reply(conn, e, None),
                }
                None
            }
            Request::AttachStream {
                container_id,
                stdin,
            } => {
                self.attach_stream(&container_id, stdin, conn);
                None
            }
            Request::Resize {
                container_id,
                width,
                height,
            } => Some(self.resize(&container_id, width, height)),
            Request::Shutdown => {
                self.begin_shutdown(Some(conn));
                None
            }
        }
    }

    fn launch(&mut self, info: LaunchInfo, conn: u64) -> Option<Response> {
        match self.try_launch(info, conn) {
            Ok(()) => None,
            Err(e) => Some(err(e)),
        }
    }

    fn try_launch(&mut self, info: LaunchInfo, conn: u64) -> Result<(), String> {
        let id = info.container_id.clone();
        if id.is_empty() {
            return Err("container_id is empty".into());
        }
        if self.find(&id).is_some() {
            return Err(format!("container {id} already exists"));
        }
        if info.process.args.is_empty() {
            return Err("process.args is empty".into());
        }
        if !info.namespaces.new_mount {
            return Err("namespaces.new_mount=false is not supported".into());
        }
        // A pid namespace other than ours is entered around the clone (setns(CLONE_NEWPID)
        // only affects children); ours (pod-shared pid namespace) needs nothing.
        let own_pid_ns = Path::new("/proc/self/ns/pid");
        let enter_pid = info
            .namespaces
            .join
            .iter()
            .find(|j| j.kind == NsKind::Pid && !same_file(&j.path, own_pid_ns))
            .map(|j| j.path.clone());
        if enter_pid.is_some() && info.namespaces.new_pid {
            return Err("namespaces: new_pid and joining a pid namespace are exclusive".into());
        }
        let log = match &info.log_path {
            Some(p) => {
                let dir = info.log_directory.as_deref();
                Some(LogFile::open(p, dir).map_err(|e| format!("open log {}: {e}", p.display()))?)
            }
            None => None,
        };
        fn e(what: &'static str) -> impl Fn(io::Error) -> String {
            move |e| format!("{what}: {e}")
        }
        let (status_r, status_w) = sys::pipe().map_err(e("pipe"))?;
        let (start_r, start_w) = sys::pipe().map_err(e("pipe"))?;
        let p = &info.process;
        // (child ends, supervisor ends)
        let (child_in, child_out, child_err, stdin, master, out_r, err_r);
        if p.tty {
            let (m, s) = sys::openpty().map_err(e("openpty"))?;
            let s = Rc::new(s);
            child_in = s.clone();
            child_out = s.clone();
            child_err = s;
            master = Some(m.try_clone().map_err(e("dup"))?);
            stdin = None;
            out_r = Some(m);
            err_r = None;
        } else {
            let (ir, iw) = if p.stdin {
                let (r, w) = sys::pipe().map_err(e("pipe"))?;
                (r, Some(w))
            } else {
                (sys::open_devnull().map_err(e("/dev/null"))?, None)
            };
            let (or, ow) = sys::pipe().map_err(e("pipe"))?;
            let (er, ew) = sys::pipe().map_err(e("pipe"))?;
            child_in = Rc::new(ir);
            child_out = Rc::new(ow);
            child_err = Rc::new(ew);
            stdin = iw;
            master = None;
            out_r = Some(or);
            err_r = Some(er);
        }
        let fds = ChildFds {
            stdin: child_in.as_raw_fd(),
            stdout: child_out.as_raw_fd(),
            stderr: child_err.as_raw_fd(),
            status: status_w.as_raw_fd(),
            start: start_r.as_raw_fd(),
            tty: p.tty,
        };
        let mut flags = libc::CLONE_NEWNS;
        if info.namespaces.new_pid {
            flags |= libc::CLONE_NEWPID;
        }
        let restore_pid_ns = match &enter_pid {
            Some(path) => {
                let own = File::open(own_pid_ns).map_err(e("open own pid namespace"))?;
                let target = File::open(path).map_err(e("open pid namespace"))?;
                sys::setns(target.as_raw_fd(), libc::CLONE_NEWPID).map_err(e("setns pid"))?;
                Some(own)
            }
            None => None,
        };
        let forked = sys::clone_process(flags);
        if let Some(own) = restore_pid_ns
            && let Err(er) = sys::setns(own.as_raw_fd(), libc::CLONE_NEWPID)
        {
            self.diag(format_args!("restoring pid namespace for children: {er}"));
        }
        let pid = match forked.map_err(e("clone"))? {
            None => in_child(|| child::run(&info, fds)),
            Some(pid) => pid,
        };
        drop((status_w, start_r, child_in, child_out, child_err));
        for f in [Some(&status_r), out_r.as_ref(), err_r.as_ref()]
            .into_iter()
            .flatten()
        {
            let _ = sys::set_nonblocking(f.as_raw_fd(), true);
        }
        let key = self.key();
        let pipe = |fd: Option<OwnedFd>, s: Stream| {
            fd.map(|fd| Pipe {
                fd,
                split: LineSplitter::new(s),
            })
        };
        self.containers.push(Container {
            key,
            id,
            pid,
            host_pid: 0,
            phase: Phase::Launching,
            status_fd: Some(status_r),
            status_buf: Vec::new(),
            start_fd: Some(start_w),
            stdin,
            stdin_once: p.stdin_once,
            master,
            stdout: pipe(out_r, Stream::Stdout),
            stderr: pipe(err_r, Stream::Stderr),
            log,
            log_failed: false,
            exit_file: info.exit_file,
            cgroup_procs: info.cgroup_procs,
            mnt_ns: None,
            waiter: Some(conn),
            exit: None,
            reaped_at: None,
            started_at_ns: 0,
            finished_at_ns: 0,
            error: None,
            discard: false,
        });
        Ok(())
    }

    fn start(&mut self, id: &str, conn: u64) -> Option<Response> {
        let Some(i) = self.find(id) else {
            return Some(err(format!("container {id} not found")));
        };
        let c = &mut self.containers[i];
        if c.phase != Phase::Created || c.exit.is_some() {
            return Some(err(format!("container {id} is not in created state")));
        }
        let Some(start) = c.start_fd.take() else {
            return Some(err("no start pipe"));
        };
        if let Err(e) = sys::write(start.as_raw_fd(), b"S") {
            return Some(err(format!("release start pipe: {e}")));
        }
        c.phase = Phase::Starting;
        c.waiter = Some(conn);
        None
    }

    fn signal(&mut self, id: &str, sig: i32, all: bool) -> Response {
        let Some(i) = self.find(id) else {
            return err(format!("container {id} not found"));
        };
        let c = &self.containers[i];
        if c.exit.is_some() {
            return Response::Ok;
        }
        if let Err(e) = sys::kill(c.pid, sig)
            && e.raw_os_error() != Some(libc::ESRCH)
        {
            return err(format!("kill: {e}"));
        }
        if all {
            let key = c.key;
            let mnt = c.mnt_ns;
            let helpers: Vec<i32> = self
                .execs
                .iter()
                .filter(|e| e.container_key == key && e.exit.is_none())
                .filter_map(|e| e.host_pid)
                .collect();
            for h in helpers {
                kill_tree(h, sig);
            }
            if let Some(ns) = mnt {
                for p in proc_pids() {
                    let ns_of = fs::metadata(proc_path(p, "ns/mnt")).map(|m| (m.dev(), m.ino()));
                    if ns_of.is_ok_and(|x| x == ns) {
                        signal_host_pid(p, sig);
                    }
                }
            }
        }
        Response::Ok
    }

    fn reopen_log(&mut self, id: &str) -> Response {
        let Some(i) = self.find(id) else {
            return err(format!("container {id} not found"));
        };
        let c = &mut self.containers[i];
        match &mut c.log {
            Some(l) => match l.reopen() {
                Ok(()) => {
                    c.log_failed = false;
                    Response::Ok
                }
                Err(e) => err(format!("reopen {}: {e}", l.path.display())),
            },
            None => Response::Ok,
        }
    }

    fn state(&self) -> Vec<ContainerState> {
        self.containers
            .iter()
            .filter(|c| !c.discard)
            .map(|c| ContainerState {
                id: c.id.clone(),
                pid: c.host_pid,
                status: match c.phase {
                    Phase::Launching | Phase::Created | Phase::Starting => ContainerStatus::Created,
                    Phase::Running => ContainerStatus::Running,
                    Phase::Exited => ContainerStatus::Exited,
                },
                exit_code: (c.phase == Phase::Exited).then(|| self.exit_record(c).exit_code),
                signal: match (c.phase, c.exit) {
                    (Phase::Exited, Some(sys::Exit::Signal(s))) => Some(s),
                    _ => None,
                },
                started_at_ns: c.started_at_ns,
                finished_at_ns: c.finished_at_ns,
                error: c.error.clone(),
            })
            .collect()
    }

    fn forget(&mut self, id: &str) -> Response {
        let Some(i) = self.find(id) else {
            return Response::Ok;
        };
        if self.containers[i].phase != Phase::Exited {
            return err(format!("container {id} has not exited; signal it first"));
        }
        self.containers.remove(i);
        Response::Ok
    }

    fn attach(&mut self, id: &str) -> Result<(bool, OwnedFd), Response> {
        let Some(i) = self.find(id) else {
            return Err(err(format!("container {id} not found")));
        };
        let c = &mut self.containers[i];
        if c.phase == Phase::Exited {
            return Err(err(format!("container {id} has exited")));
        }
        if let Some(m) = &c.master {
            return m
                .try_clone()
                .map(|fd| (true, fd))
                .map_err(|e| err(format!("dup: {e}")));
        }
        let fd = if c.stdin_once {
            c.stdin.take()
        } else {
            c.stdin
                .as_ref()
                .map(|f| f.try_clone())
                .transpose()
                .map_err(|e| err(format!("dup: {e}")))?
        };
        fd.map(|fd| (false, fd))
            .ok_or_else(|| err(format!("container {id} has no stdin")))
    }

    /// Registers `conn` as an attach client of container `id` and replies with its
    /// stdin (if asked and there is one; a tty's master always).
    fn attach_stream(&mut self, id: &str, stdin: bool, conn: u64) {
        let Some(i) = self.find(id) else {
            return self.reply(conn, err(format!("container {id} not found")), None);
        };
        let c = &self.containers[i];
        if c.phase != Phase::Running || (c.stdout.is_none() && c.stderr.is_none()) {
            return self.reply(conn, err(format!("container {id} is not running")), None);
        }
        let (key, tty, has_stdin) = (c.key, c.master.is_some(), c.stdin.is_some());
        let fds = if tty || (stdin && has_stdin) {
            match self.attach(id) {
                Ok((_, fd)) => vec![fd],
                Err(e) => return self.reply(conn, e, None),
            }
        } else {
            Vec::new()
        };
        self.reply_fds(conn, Response::Attached { tty }, fds, true);
        if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
            c.attach = Some(AttachOut {
                container_key: key,
                buf: Vec::new(),
                sent: 0,
                closing: false,
            });
        }
    }

    fn resize(&mut self, id: &str, width: u16, height: u16) -> Response {
        let Some(i) = self.find(id) else {
            return err(format!("container {id} not found"));
        };
        match &self.containers[i].master {
            Some(m) => match sys::set_winsize(m.as_raw_fd(), height, width) {
                Ok(()) => Response::Ok,
                Err(e) => err(format!("resize: {e}")),
            },
            None => err(format!("container {id} has no tty")),
        }
    }

    fn exec(&mut self, info: ExecInfo, conn: u64) -> Option<Response> {
        match self.try_exec(info, conn) {
            Ok(()) => None,
            Err(e) => Some(err(e)),
        }
    }

    fn try_exec(&mut self, info: ExecInfo, conn: u64) -> Result<(), String> {
        let (target, container_key, cgroups) = self.exec_target(&info)?;
        let stdin_data = match &info.stdin_b64 {
            Some(s) => Some(b64::decode(s).ok_or("stdin_b64 is not valid base64")?),
            None => None,
        };
        fn e(what: &'static str) -> impl Fn(io::Error) -> String {
            move |e| format!("{what}: {e}")
        }
        let (status_r, status_w) = sys::pipe().map_err(e("pipe"))?;
        let (child_in, child_out, child_err, stdin, out_r, err_r);
        if info.tty {
            let (m, s) = sys::openpty().map_err(e("openpty"))?;
            let s = Rc::new(s);
            (child_in, child_out, child_err) = (s.clone(), s.clone(), s);
            stdin = match stdin_data {
                Some(_) => Some(m.try_clone().map_err(e("dup"))?),
                None => None,
            };
            out_r = Some(m);
            err_r = None;
        } else {
            let (ir, iw) = match stdin_data {
                Some(_) => {
                    let (r, w) = sys::pipe().map_err(e("pipe"))?;
                    (r, Some(w))
                }
                None => (sys::open_devnull().map_err(e("/dev/null"))?, None),
            };
            let (or, ow) = sys::pipe().map_err(e("pipe"))?;
            let (er, ew) = sys::pipe().map_err(e("pipe"))?;
            child_in = Rc::new(ir);
            child_out = Rc::new(ow);
            child_err = Rc::new(ew);
            stdin = iw;
            out_r = Some(or);
            err_r = Some(er);
        }
        let fds = ExecFds {
            stdin: child_in.as_raw_fd(),
            stdout: child_out.as_raw_fd(),
            stderr: child_err.as_raw_fd(),
            status: status_w.as_raw_fd(),
            tty: info.tty,
        };
        let pid = match sys::clone_process(0).map_err(e("fork"))? {
            None => in_child(|| exec::run_helper(&info, target, &cgroups, fds)),
            Some(pid) => pid,
        };
        drop((status_w, child_in, child_out, child_err));
        for f in [
            Some(&status_r),
            out_r.as_ref(),
            err_r.as_ref(),
            stdin.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = sys::set_nonblocking(f.as_raw_fd(), true);
        }
        let key = self.key();
        self.execs.push(ExecSession {
            key,
            container_key,
            pid,
            host_pid: None,
            conn,
            status_fd: Some(status_r),
            status_buf: Vec::new(),
            stdin,
            stdin_data: info
                .stdin_b64
                .as_deref()
                .and_then(b64::decode)
                .unwrap_or_default(),
            stdin_off: 0,
            stdout: out_r,
            stderr: err_r,
            out: Vec::new(),
            err: Vec::new(),
            deadline: info
                .timeout_ms
                .filter(|&t| t > 0)
                .map(|t| Instant::now() + Duration::from_millis(t)),
            timed_out: false,
            exit: None,
            reaped_at: None,
            error: None,
            stream: false,
        });
        Ok(())
    }

    /// The container (running) an exec targets: its host pid, key and cgroups.
    fn exec_target(&self, info: &ExecInfo) -> Result<(i32, u64, Vec<PathBuf>), String> {
        let id = &info.container_id;
        let i = self
            .find(id)
            .ok_or_else(|| format!("container {id} not found"))?;
        let c = &self.containers[i];
        if c.phase != Phase::Running || c.exit.is_some() {
            return Err(format!("container {id} is not running"));
        }
        if info.args.is_empty() {
            return Err("args is empty".into());
        }
        Ok((c.host_pid, c.key, c.cgroup_procs.clone()))
    }

    /// Forks the exec helper of a streaming session and hands the client its ends of the
    /// pipes (or the pty master). `want`: stdin, stdout, stderr.
    fn try_exec_stream(
        &mut self,
        info: ExecInfo,
        want: [bool; 3],
        conn: u64,
    ) -> Result<(), String> {
        if info.timeout_ms.is_some() || info.stdin_b64.is_some() {
            return Err("timeout_ms and stdin_b64 are for exec, not exec_stream".into());
        }
        let (target, container_key, cgroups) = self.exec_target(&info)?;
        fn e(what: &'static str) -> impl Fn(io::Error) -> String {
            move |e| format!("{what}: {e}")
        }
        let (status_r, status_w) = sys::pipe().map_err(e("pipe"))?;
        let mut give = Vec::new();
        let child: [Rc<OwnedFd>; 3];
        if info.tty {
            let (m, s) = sys::openpty().map_err(e("openpty"))?;
            let s = Rc::new(s);
            child = [s.clone(), s.clone(), s];
            give.push(m);
        } else {
            let mut ends = Vec::new();
            for (n, wanted) in want.into_iter().enumerate() {
                if !wanted {
                    ends.push(Rc::new(sys::open_devnull().map_err(e("/dev/null"))?));
                    continue;
                }
                let (r, w) = sys::pipe().map_err(e("pipe"))?;
                let (mine, theirs) = if n == 0 { (r, w) } else { (w, r) };
                ends.push(Rc::new(mine));
                give.push(theirs);
            }
            child = [ends[0].clone(), ends[1].clone(), ends[2].clone()];
        }
        let fds = ExecFds {
            stdin: child[0].as_raw_fd(),
            stdout: child[1].as_raw_fd(),
            stderr: child[2].as_raw_fd(),
            status: status_w.as_raw_fd(),
            tty: info.tty,
        };
        let pid = match sys::clone_process(0).map_err(e("fork"))? {
            None => in_child(|| exec::run_helper(&info, target, &cgroups, fds)),
            Some(pid) => pid,
        };
        drop((status_w, child));
        let _ = sys::set_nonblocking(status_r.as_raw_fd(), true);
        let key = self.key();
        self.execs.push(ExecSession {
            key,
            container_key,
            pid,
            host_pid: None,
            conn,
            status_fd: Some(status_r),
            status_buf: Vec::new(),
            stdin: None,
            stdin_data: Vec::new(),
            stdin_off: 0,
            stdout: None,
            stderr: None,
            out: Vec::new(),
            err: Vec::new(),
            deadline: None,
            timed_out: false,
            exit: None,
            reaped_at: None,
            error: None,
            stream: true,
        });
        let tty = info.tty;
        self.reply_fds(conn, Response::ExecStarted { tty }, give, true);
        Ok(())
    }

    /// The client of an exec stream went away: the session's processes die.
    fn end_session(&mut self, conn: u64) {
        for e in self.execs.iter().filter(|e| e.stream && e.conn == conn) {
            if e.exit.is_none() {
                if let Some(h) = e.host_pid {
                    kill_tree(h, libc::SIGKILL);
                }
                let _ = sys::kill(e.pid, libc::SIGKILL);
            }
        }
    }

    // ---- children ----------------------------------------------------------------------

    fn signals(&mut self) {
        let mut term = false;
        while let Ok(Some(sig)) = sys::read_signalfd(self.sigfd.as_raw_fd()) {
            if matches!(sig as i32, libc::SIGTERM | libc::SIGINT) {
                term = true;
            }
        }
        while let Ok(Some((pid, exit))) = sys::wait_nohang(-1) {
            let now = Instant::now();
            if let Some(c) = self
                .containers
                .iter_mut()
                .find(|c| c.pid == pid && c.exit.is_none())
            {
                c.exit = Some(exit);
                c.reaped_at = Some(now);
                c.finished_at_ns = crilog::now_ns();
            } else if let Some(e) = self
                .execs
                .iter_mut()
                .find(|e| e.pid == pid && e.exit.is_none())
            {
                e.exit = Some(exit);
                e.reaped_at = Some(now);
            }
        }
        if term && self.shutdown.is_none() {
            self.diag(format_args!("terminating on signal"));
            self.begin_shutdown(None);
        }
    }

    fn container_status(&mut self, key: u64) {
        let Some(i) = self.containers.iter().position(|c| c.key == key) else {
            return;
        };
        let Some(fd) = self.containers[i].status_fd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        let (lines, eof) = read_lines(fd, &mut self.containers[i].status_buf);
        for line in lines {
            let c = &mut self.containers[i];
            if let Some(pid) = line.strip_prefix("ready ") {
                c.host_pid = pid.trim().parse().unwrap_or(0);
                c.mnt_ns = fs::metadata(proc_path(c.host_pid, "ns/mnt"))
                    .ok()
                    .map(|m| (m.dev(), m.ino()));
                if c.phase == Phase::Launching {
                    c.phase = Phase::Created;
                    let (w, pid) = (c.waiter.take(), c.host_pid);
                    if let Some(w) = w {
                        self.reply(w, Response::Launched { pid }, None);
                    }
                }
            } else {
                let msg = line.strip_prefix("error: ").unwrap_or(&line).to_string();
                if c.phase == Phase::Launching {
                    c.discard = true;
                }
                c.error = Some(msg.clone());
                if let Some(w) = c.waiter.take() {
                    let (id, discard) = (c.id.clone(), c.discard);
                    self.reply(w, err(msg.clone()), None);
                    if discard {
                        self.diag(format_args!("launch of {id} failed: {msg}"));
                    }
                }
            }
        }
        if eof {
            let c = &mut self.containers[i];
            c.status_fd = None;
            match c.phase {
                Phase::Launching => {
                    c.discard = true;
                    if let Some(w) = c.waiter.take() {
                        self.reply(w, err("container process exited during setup"), None);
                    }
                }
                Phase::Starting if c.error.is_none() => {
                    c.phase = Phase::Running;
                    c.started_at_ns = crilog::now_ns();
                    let (w, pid) = (c.waiter.take(), c.host_pid);
                    if let Some(w) = w {
                        self.reply(w, Response::Started { pid }, None);
                    }
                }
                _ => {}
            }
        }
    }

    fn container_output(&mut self, key: u64, stream: Stream) {
        let Some(i) = self.containers.iter().position(|c| c.key == key) else {
            return;
        };
        if self.scratch.len() < READ_CHUNK {
            self.scratch.resize(READ_CHUNK, 0);
        }
        let c = &mut self.containers[i];
        let pipe = match stream {
            Stream::Stdout => &mut c.stdout,
            Stream::Stderr => &mut c.stderr,
        };
        let Some(p) = pipe else { return };
        let mut ts = Vec::with_capacity(32);
        crilog::format_timestamp(crilog::now_ns(), &mut ts);
        self.logbuf.clear();
        let done = match sys::read(p.fd.as_raw_fd(), &mut self.scratch) {
            Ok(0) => true,
            Ok(n) => {
                p.split.push(&self.scratch[..n], &ts, &mut self.logbuf);
                fan_out(&mut self.conns, key, stream, &self.scratch[..n]);
                false
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => true, // EIO: the pty's slave side is closed
        };
        if done {
            p.split.finish(&ts, &mut self.logbuf);
            *pipe = None;
        }
        self.write_log(i);
    }

    fn write_log(&mut self, i: usize) {
        let c = &mut self.containers[i];
        if let Some(l) = &mut c.log
            && let Err(e) = l.write(&self.logbuf)
            && !c.log_failed
        {
            c.log_failed = true;
            let msg = format!("log {} of {}: {e}", l.path.display(), c.id);
            self.diag(format_args!("{msg}"));
        }
        self.logbuf.clear();
        if self.logbuf.capacity() > 64 << 10 {
            self.logbuf = Vec::new();
        }
    }

    fn exec_status(&mut self, key: u64) {
        let Some(e) = self.execs.iter_mut().find(|e| e.key == key) else {
            return;
        };
        let Some(fd) = &e.status_fd else { return };
        let fd = fd.as_raw_fd();
        let (lines, eof) = read_lines(fd, &mut e.status_buf);
        for line in lines {
            if let Some(pid) = line.strip_prefix("pid ") {
                e.host_pid = pid.trim().parse().ok();
            } else {
                e.error = Some(line.strip_prefix("error: ").unwrap_or(&line).to_string());
            }
        }
        if eof {
            e.status_fd = None;
        }
    }

    fn exec_output(&mut self, key: u64, stream: Stream) {
        let Some(e) = self.execs.iter_mut().find(|e| e.key == key) else {
            return;
        };
        if self.scratch.len() < READ_CHUNK {
            self.scratch.resize(READ_CHUNK, 0);
        }
        let (fd, buf) = match stream {
            Stream::Stdout => (&mut e.stdout, &mut e.out),
            Stream::Stderr => (&mut e.stderr, &mut e.err),
        };
        let Some(f) = fd else { return };
        match sys::read(f.as_raw_fd(), &mut self.scratch) {
            Ok(0) => *fd = None,
            Ok(n) => {
                let room = EXEC_OUTPUT_CAP.saturating_sub(buf.len());
                buf.extend_from_slice(&self.scratch[..n.min(room)]);
            }
            Err(er) if er.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => *fd = None,
        }
    }

    fn exec_stdin(&mut self, key: u64) {
        let Some(e) = self.execs.iter_mut().find(|e| e.key == key) else {
            return;
        };
        let Some(f) = &e.stdin else { return };
        while e.stdin_off < e.stdin_data.len() {
            match sys::write(f.as_raw_fd(), &e.stdin_data[e.stdin_off..]) {
                Ok(n) => e.stdin_off += n,
                Err(er) if er.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        // All written (or the reader is gone): EOF for a pipe. A pty master stays open (it is
        // also the output side) and is dropped with the stdout descriptor.
        e.stdin = None;
        e.stdin_data = Vec::new();
    }

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

    /// Attach clients whose container's output ended are closed once flushed.
    fn end_attaches(&mut self) {
        for c in &mut self.conns {
            let Some(a) = &mut c.attach else { continue };
            let key = a.container_key;
            let live = self
                .containers
                .iter()
                .any(|k| k.key == key && (k.stdout.is_some() || k.stderr.is_some()));
            if !live && !a.closing {
                a.closing = true;
                if a.sent == a.buf.len() && matches!(c.state, ConnState::Session) {
                    c.closed = true;
                }
            }
        }
    }

    fn exit_record(&self, c: &Container) -> ExitRecord {
        let start_failed = c.started_at_ns == 0 && c.error.is_some();
        ExitRecord {
            exit_code: if start_failed {
                128
            } else {
                c.exit.map_or(-1, sys::Exit::code)
            },
            signal: match c.exit {
                Some(sys::Exit::Signal(s)) => Some(s),
                _ => None,
            },
            finished_at_ns: c.finished_at_ns,
            started_at_ns: c.started_at_ns,
            oom_killed: false,
            error: c.error.clone(),
        }
    }

    fn finalize_container(&mut self, i: usize) {
        let mut ts = Vec::with_capacity(32);
        crilog::format_timestamp(crilog::now_ns(), &mut ts);
        self.logbuf.clear();
        let c = &mut self.containers[i];
        for p in [c.stdout.take(), c.stderr.take()].into_iter().flatten() {
            let mut p = p;
            p.split.finish(&ts, &mut self.logbuf);
        }
        self.write_log(i);
        let c = &mut self.containers[i];
        c.phase = Phase::Exited;
        c.stdin = None;
        c.master = None;
        c.start_fd = None;
        c.log = None;
        if let Some(w) = c.waiter.take() {
            let msg = c
                .error
                .clone()
                .unwrap_or_else(|| "container exited before it could start".into());
            self.reply(w, err(msg), None);
        }
        let c = &self.containers[i];
        let rec = self.exit_record(c);
        let data = serde_json::to_vec(&rec).unwrap_or_default();
        if let Err(e) = write_atomic(&c.exit_file, &data) {
            let msg = format!("exit file {} of {}: {e}", c.exit_file.display(), c.id);
            self.diag(format_args!("{msg}"));
        }
    }

    // ---- shutdown ----------------------------------------------------------------------

    fn begin_shutdown(&mut self, conn: Option<u64>) {
        self.shutdown = Some((conn, Instant::now() + Duration::from_secs(2)));
        for c in self.containers.iter().filter(|c| c.exit.is_none()) {
            let _ = sys::kill(c.pid, libc::SIGKILL);
        }
        for e in self.execs.iter().filter(|e| e.exit.is_none()) {
            if let Some(h) = e.host_pid {
                kill_tree(h, libc::SIGKILL);
            }
            let _ = sys::kill(e.pid, libc::SIGKILL);
        }
    }

    fn shutdown_done(&self) -> bool {
        match self.shutdown {
            Some((_, deadline)) => {
                Instant::now() >= deadline
                    || (self.containers.iter().all(|c| c.phase == Phase::Exited)
                        && self.execs.is_empty())
            }
            None => false,
        }
    }

    fn finish_shutdown(&mut self) -> ! {
        let _ = fs::remove_file(&self.cfg.socket);
        let _ = fs::remove_file(self.cfg.state_dir.join("supervisor.pid"));
        if let Some((Some(conn), _)) = self.shutdown
            && let Some(c) = self.conns.iter().find(|c| c.id == conn && !c.closed)
        {
            let _ = c.stream.set_nonblocking(false);
            let _ = c.stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = (&c.stream).write_all(b"{\"reply\":\"ok\"}\n");
        }
        self.diag(format_args!("supervisor exiting"));
        sys::exit_now(0)
    }
}

/// Runs a forked child's body; a panic must never unwind into the copy of the supervisor's
/// loop, so it ends the child instead.
/// Queues output of container `key` for its attach clients; a client that would fall
/// more than ATTACH_BUFFER behind is dropped instead (the container never waits).
fn fan_out(conns: &mut [Conn], key: u64, stream: Stream, data: &[u8]) {
    let tag = match stream {
        Stream::Stdout => crate::protocol::ATTACH_STDOUT,
        Stream::Stderr => crate::protocol::ATTACH_STDERR,
    };
    for c in conns.iter_mut().filter(|c| !c.closed) {
        let Some(a) = &mut c.attach else { continue };
        if a.container_key != key || a.closing {
            continue;
        }
        if a.buf.len() - a.sent + data.len() + 5 > crate::protocol::ATTACH_BUFFER {
            c.closed = true;
            continue;
        }
        a.buf.push(tag);
        a.buf.extend_from_slice(&(data.len() as u32).to_be_bytes());
        a.buf.extend_from_slice(data);
    }
}

fn in_child(f: impl FnOnce() -> std::convert::Infallible) -> ! {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    sys::exit_now(128)
}

/// Reads what is available from a status pipe: complete lines, and whether EOF was reached.
fn read_lines(fd: RawFd, buf: &mut Vec<u8>) -> (Vec<String>, bool) {
    let mut chunk = [0u8; 1024];
    let eof = loop {
        match sys::read(fd, &mut chunk) {
            Ok(0) => break true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    let mut lines = Vec::new();
    while let Some(p) = buf.iter().position(|&b| b == b'\n') {
        let l: Vec<u8> = buf.drain(..=p).collect();
        lines.push(String::from_utf8_lossy(&l[..p]).into_owned());
    }
    if eof && !buf.is_empty() {
        lines.push(String::from_utf8_lossy(buf).into_owned());
        buf.clear();
    }
    (lines, eof)
}

/// Numeric entries of /proc (host pids).
fn proc_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Signals a process known by its host pid, whatever pid namespace the supervisor is in.
fn signal_host_pid(pid: i32, sig: i32) {
    if let Ok(dir) = File::open(proc_path(pid, "")) {
        let _ = sys::signal_procdir(dir.as_fd(), sig);
    }
}

/// (parent, session) of a host pid, from /proc/<pid>/stat (host numbering).
fn parent_and_session(pid: i32) -> Option<(i32, i32)> {
    let s = fs::read_to_string(proc_path(pid, "stat")).ok()?;
    let mut f = s[s.rfind(')')? + 2..].split(' ');
    let ppid = f.nth(1)?.parse().ok()?;
    let sid = f.nth(1)?.parse().ok()?;
    Some((ppid, sid))
}

/// Signals every descendant of `root` (host pids) -- and every process in a session led by one
/// of them, which catches orphans reparented to a pid namespace's init -- then `root` itself.
/// Repeated a few times to catch processes forked meanwhile.
fn kill_tree(root: i32, sig: i32) {
    for _ in 0..3 {
        let procs: Vec<(i32, i32, i32)> = proc_pids()
            .into_iter()
            .filter_map(|p| parent_and_session(p).map(|(pp, sid)| (p, pp, sid)))
            .collect();
        let mut tree = vec![root];
        let mut k = 0;
        while k < tree.len() {
            let parent = tree[k];
            for &(p, pp, sid) in &procs {
                let member = pp == parent || (k > 0 && sid == parent);
                if member && !tree.contains(&p) {
                    tree.push(p);
                }
            }
            k += 1;
        }
        for &p in tree.iter().skip(1) {
            signal_host_pid(p, sig);
        }
        if tree.len() == 1 {
            break;
        }
    }
    signal_host_pid(root, sig);
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
