//! The pod's containers: launching (fork, blocked on a pipe), starting, signals, logs,
//! attach, and what happens when one exits (its exit record, written atomically).

use super::*;

impl Supervisor {
    pub(super) fn find(&self, id: &str) -> Option<usize> {
        self.containers
            .iter()
            .position(|c| c.id == id && !c.discard)
    }

    pub(super) fn launch(&mut self, info: LaunchInfo, conn: u64) -> Option<Response> {
        match self.try_launch(info, conn) {
            Ok(()) => None,
            Err(e) => Some(err(e)),
        }
    }

    pub(super) fn try_launch(&mut self, info: LaunchInfo, conn: u64) -> Result<(), String> {
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

    pub(super) fn start(&mut self, id: &str, conn: u64) -> Option<Response> {
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

    pub(super) fn signal(&mut self, id: &str, sig: i32, all: bool) -> Response {
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

    pub(super) fn reopen_log(&mut self, id: &str) -> Response {
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

    pub(super) fn state(&self) -> Vec<ContainerState> {
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

    pub(super) fn forget(&mut self, id: &str) -> Response {
        let Some(i) = self.find(id) else {
            return Response::Ok;
        };
        if self.containers[i].phase != Phase::Exited {
            return err(format!("container {id} has not exited; signal it first"));
        }
        self.containers.remove(i);
        Response::Ok
    }

    pub(super) fn attach(&mut self, id: &str) -> Result<(bool, OwnedFd), Response> {
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
    pub(super) fn attach_stream(&mut self, id: &str, stdin: bool, conn: u64) {
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

    pub(super) fn resize(&mut self, id: &str, width: u16, height: u16) -> Response {
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

    pub(super) fn container_status(&mut self, key: u64) {
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

    pub(super) fn container_output(&mut self, key: u64, stream: Stream) {
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

    pub(super) fn write_log(&mut self, i: usize) {
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

    /// Attach clients whose container's output ended are closed once flushed.
    pub(super) fn end_attaches(&mut self) {
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

    pub(super) fn exit_record(&self, c: &Container) -> ExitRecord {
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

    pub(super) fn finalize_container(&mut self, i: usize) {
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
}
