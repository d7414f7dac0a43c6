//! Noticing a pod supervisor's death without polling: a pidfd (pidfd_open(2)) becomes
//! readable when its process ends, whoever its parent is (a supervisor is not the
//! daemon's child: it double-forks so that it outlives the daemon).

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use tokio::io::Interest;

/// A descriptor of one process, readable once that process ended.
#[derive(Debug)]
pub struct PidFd(OwnedFd);

impl PidFd {
    /// Opens a pidfd of `pid`. ESRCH: no such process.
    pub fn open(pid: i32) -> io::Result<PidFd> {
        if pid <= 0 {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        crate::sys::pidfd_open(pid).map(PidFd)
    }

    /// Opens a pidfd of the supervisor of `pod_id` recorded as `pid`, checking that the
    /// process at that pid is that supervisor: after a reboot or a long downtime the pid
    /// may belong to something else. The check comes after the open: had the opened
    /// process ended and its pid been reused in between, the descriptor would report that
    /// end at once, which is the truth about the supervisor.
    pub fn open_supervisor(pid: i32, pod_id: &str) -> io::Result<PidFd> {
        let fd = PidFd::open(pid)?;
        let cmdline = std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline"))?;
        let mut args = cmdline.split(|&b| b == 0);
        let ours = args.any(|a| a == b"--pod-id") && args.next() == Some(pod_id.as_bytes());
        if !ours {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("pid {pid} is not the supervisor of pod {pod_id}"),
            ));
        }
        Ok(fd)
    }

    /// Resolves once the process has ended (at once if it already had).
    pub async fn exited(self) -> io::Result<()> {
        let fd = crate::sys::async_fd(self.0, Interest::READABLE)?;
        let _ready = fd.readable().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pidfd_is_readable_once_its_process_ended() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let fd = PidFd::open(child.id() as i32).unwrap();
        let waited = tokio::time::timeout(std::time::Duration::from_secs(10), fd.exited());
        waited.await.expect("readable after the exit").unwrap();
        child.wait().unwrap();
        assert!(PidFd::open(child.id() as i32).is_err(), "reaped: ESRCH");
        assert!(PidFd::open_supervisor(std::process::id() as i32, "pod").is_err());
    }
}
