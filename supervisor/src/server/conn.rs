//! Connections from the daemon: accepting, reading request lines, writing replies
//! (with descriptors), attach streams, and dispatching each request to its handler.

use super::*;

impl Supervisor {
    pub(super) fn accept(&mut self) {
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

    pub(super) fn conn_event(&mut self, id: u64, revents: libc::c_short) {
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

    pub(super) fn conn_read(&mut self, i: usize) {
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

    pub(super) fn conn_write(&mut self, i: usize) {
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
    pub(super) fn attach_write(&mut self, i: usize) {
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
    pub(super) fn reply(&mut self, id: u64, resp: Response, fd: Option<OwnedFd>) {
        self.reply_fds(id, resp, fd.into_iter().collect(), false);
    }

    /// Like [`Self::reply`] with any number of descriptors; with `session`, the
    /// connection stays open afterwards (exec streams).
    pub(super) fn reply_fds(&mut self, id: u64, resp: Response, fds: Vec<OwnedFd>, session: bool) {
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

    pub(super) fn handle(&mut self, req: Request, conn: u64) -> Option<Response> {
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
}

/// Runs a forked child's body; a panic must never unwind into the copy of the supervisor's
/// loop, so it ends the child instead.
/// Queues output of container `key` for its attach clients; a client that would fall
/// more than ATTACH_BUFFER behind is dropped instead (the container never waits).
pub(super) fn fan_out(conns: &mut [Conn], key: u64, stream: Stream, data: &[u8]) {
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

/// Reads what is available from a status pipe: complete lines, and whether EOF was reached.
pub(super) fn read_lines(fd: RawFd, buf: &mut Vec<u8>) -> (Vec<String>, bool) {
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
