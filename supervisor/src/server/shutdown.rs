//! Signals to the supervisor and the pod's shutdown: every process killed, exit records
//! written, then the supervisor exits.

use super::*;

impl Supervisor {
    pub(super) fn signals(&mut self) {
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

    pub(super) fn begin_shutdown(&mut self, conn: Option<u64>) {
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

    pub(super) fn shutdown_done(&self) -> bool {
        match self.shutdown {
            Some((_, deadline)) => {
                Instant::now() >= deadline
                    || (self.containers.iter().all(|c| c.phase == Phase::Exited)
                        && self.execs.is_empty())
            }
            None => false,
        }
    }

    pub(super) fn finish_shutdown(&mut self) -> ! {
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

/// Numeric entries of /proc (host pids).
pub(super) fn proc_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Signals a process known by its host pid, whatever pid namespace the supervisor is in.
pub(super) fn signal_host_pid(pid: i32, sig: i32) {
    if let Ok(dir) = File::open(proc_path(pid, "")) {
        let _ = sys::signal_procdir(dir.as_fd(), sig);
    }
}

/// (parent, session) of a host pid, from /proc/<pid>/stat (host numbering).
pub(super) fn parent_and_session(pid: i32) -> Option<(i32, i32)> {
    let s = fs::read_to_string(proc_path(pid, "stat")).ok()?;
    let mut f = s[s.rfind(')')? + 2..].split(' ');
    let ppid = f.nth(1)?.parse().ok()?;
    let sid = f.nth(1)?.parse().ok()?;
    Some((ppid, sid))
}

/// Signals every descendant of `root` (host pids) -- and every process in a session led by one
/// of them, which catches orphans reparented to a pid namespace's init -- then `root` itself.
/// Repeated a few times to catch processes forked meanwhile.
pub(super) fn kill_tree(root: i32, sig: i32) {
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
