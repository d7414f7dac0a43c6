//! Noticing container exits as they happen: the supervisor writes each exit record by
//! renaming it into `<meta>/containers/<id>/exit`, so an inotify watch on each running
//! container's directory hears every exit without polling any container.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::UnboundedSender;

use crate::sys;

/// The exit record's file name in a container's directory.
const EXIT: &str = "exit";

#[derive(Default)]
struct Watches {
    by_wd: HashMap<WatchDescriptor, (String, PathBuf)>,
    by_id: HashMap<String, WatchDescriptor>,
}

pub struct ExitWatcher {
    fd: Arc<AsyncFd<sys::Owned<Inotify>>>,
    watches: Arc<Mutex<Watches>>,
    exited: UnboundedSender<String>,
}

impl std::fmt::Debug for ExitWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitWatcher").finish_non_exhaustive()
    }
}

impl ExitWatcher {
    /// Starts the watcher task on the current tokio runtime; the id of each container
    /// whose exit record appears is sent to `exited` (more than once is possible).
    pub fn start(exited: UnboundedSender<String>) -> std::io::Result<ExitWatcher> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let fd = sys::async_fd(inotify, Interest::READABLE)?;
        let fd = Arc::new(fd);
        let watches: Arc<Mutex<Watches>> = Arc::default();
        let (task_fd, task_watches, events) = (fd.clone(), watches.clone(), exited.clone());
        tokio::spawn(async move {
            loop {
                let Ok(mut ready) = task_fd.readable().await else {
                    return;
                };
                let read = ready.try_io(|fd| fd.get_ref().read_events().map_err(Into::into));
                let batch = match read {
                    Ok(Ok(batch)) => batch,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "exit watcher");
                        return;
                    }
                    Err(_would_block) => continue,
                };
                for event in batch {
                    if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                        // Events were lost: look at every watched container's file.
                        let all: Vec<(String, PathBuf)> =
                            lock(&task_watches).by_wd.values().cloned().collect();
                        for (id, dir) in all {
                            if dir.join(EXIT).exists() {
                                let _ = events.send(id);
                            }
                        }
                        continue;
                    }
                    let found = lock(&task_watches).by_wd.get(&event.wd).cloned();
                    let Some((id, _)) = found else { continue };
                    if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                        let mut w = lock(&task_watches);
                        w.by_wd.remove(&event.wd);
                        if w.by_id.get(&id) == Some(&event.wd) {
                            w.by_id.remove(&id);
                        }
                        continue;
                    }
                    if event.name.as_deref() == Some(std::ffi::OsStr::new(EXIT)) {
                        let _ = events.send(id);
                    }
                }
            }
        });
        Ok(ExitWatcher {
            fd,
            watches,
            exited,
        })
    }

    /// Watches `dir` (the container's directory) for its exit record. An exit that was
    /// already written is reported at once: nothing is missed between a start and its
    /// watch.
    pub fn watch(&self, id: &str, dir: &Path) {
        let mask = AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE;
        match self.fd.get_ref().add_watch(dir, mask) {
            Ok(wd) => {
                let mut w = lock(&self.watches);
                w.by_wd.insert(wd, (id.to_string(), dir.to_path_buf()));
                w.by_id.insert(id.to_string(), wd);
            }
            Err(e) => tracing::warn!(container_id = %id, error = %e, "exit not watched"),
        }
        if dir.join(EXIT).exists() {
            let _ = self.exited.send(id.to_string());
        }
    }

    /// Stops watching (the container is being removed). Unknown ids are fine.
    pub fn unwatch(&self, id: &str) {
        let wd = {
            let mut w = lock(&self.watches);
            let wd = w.by_id.remove(id);
            if let Some(wd) = wd {
                w.by_wd.remove(&wd);
            }
            wd
        };
        if let Some(wd) = wd {
            let _ = self.fd.get_ref().rm_watch(wd);
        }
    }
}

fn lock(w: &Mutex<Watches>) -> std::sync::MutexGuard<'_, Watches> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}
