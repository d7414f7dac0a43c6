//! Exec sessions in a container's namespaces: ExecSync with captured output, and
//! streaming sessions whose pipes go back to the daemon.

use super::*;

impl Supervisor {
    pub(super) fn exec(&mut self, info: ExecInfo, conn: u64) -> Option<Response> {
        match self.try_exec(info, conn) {
            Ok(()) => None,
            Err(e) => Some(err(e)),
        }
    }

    pub(super) fn try_exec(&mut self, info: ExecInfo, conn: u64) -> Result<(), String> {
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
    pub(super) fn exec_target(&self, info: &ExecInfo) -> Result<(i32, u64, Vec<PathBuf>), String> {
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
    pub(super) fn try_exec_stream(
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
    pub(super) fn end_session(&mut self, conn: u64) {
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

    pub(super) fn exec_status(&mut self, key: u64) {
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

    pub(super) fn exec_output(&mut self, key: u64, stream: Stream) {
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

    pub(super) fn exec_stdin(&mut self, key: u64) {
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
}
