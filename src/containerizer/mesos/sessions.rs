//! Sessions in running containers: ExecSync, streaming exec and attach, and the log
//! reopened for kubelet's rotation.

use super::*;

impl MesosContainerizer {
    /// The container a session is for, which must be running, and its pod.
    fn running_with_pod(&self, id: &str) -> Result<(ContainerRecord, PodRecord)> {
        let record = self.find_container(id)?;
        if record.cri_state(&record.exit()) != cri::ContainerState::ContainerRunning {
            return Err(ContainerizerError::FailedPrecondition(format!(
                "container {} is not running",
                record.id
            )));
        }
        let pod = self.find_pod(&record.pod_id)?;
        Ok((record, pod))
    }

    /// ExecSync: runs a command in the container's namespaces and cgroup, with the
    /// container's env, user and cwd.
    pub(super) async fn exec_sync_in(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<ExecResult> {
        let (record, pod) = self.running_with_pod(id)?;
        let mut exec = exec_info(&record, cmd, false);
        exec.timeout_ms = (timeout > 0).then(|| (timeout as u64).saturating_mul(1000));
        // The supervisor enforces the timeout; ours only guards against a lost reply.
        let guard = if timeout > 0 {
            Duration::from_secs((timeout as u64).saturating_add(30))
        } else {
            Duration::from_secs(24 * 3600)
        };
        match self
            .launcher
            .exec(&pod.supervisor_socket, exec, guard)
            .await
        {
            Ok(result) if result.timed_out => Err(ContainerizerError::DeadlineExceeded(format!(
                "command timed out after {timeout}s in container {}",
                record.id
            ))),
            Ok(result) => Ok(result),
            Err(e) => Err(session_error(e)),
        }
    }

    /// Exec: a streaming session in the container, with the same security as ExecSync.
    pub(super) async fn exec_stream_in(
        &self,
        id: &str,
        cmd: Vec<String>,
        tty: bool,
        want: [bool; 3],
    ) -> Result<ExecStream> {
        let (record, pod) = self.running_with_pod(id)?;
        let exec = exec_info(&record, cmd, tty);
        self.launcher
            .exec_stream(&pod.supervisor_socket, exec, want)
            .await
            .map_err(session_error)
    }

    /// Attach: the container's live output (and its stdin when asked).
    pub(super) async fn attach_stream_in(&self, id: &str, stdin: bool) -> Result<AttachStream> {
        let (record, pod) = self.running_with_pod(id)?;
        self.launcher
            .attach_stream(&pod.supervisor_socket, &record.id, stdin)
            .await
            .map_err(session_error)
    }

    /// ReopenContainerLog: the supervisor reopens the log file by path.
    pub(super) async fn reopen_log_of(&self, id: &str) -> Result<()> {
        let (record, pod) = self.running_with_pod(id)?;
        self.launcher
            .reopen_log(&pod.supervisor_socket, &record.id)
            .await
            .map(drop)
            .map_err(session_error)
    }
}

/// A supervisor that refuses a session (the container is gone from it) is a failed
/// precondition to the client; anything else keeps its own kind.
fn session_error(e: SupervisorError) -> ContainerizerError {
    match e {
        SupervisorError::Refused(message) => ContainerizerError::FailedPrecondition(message),
        e => e.into(),
    }
}

/// What an exec session (ExecSync or a streaming Exec) runs with: the container's env,
/// user, groups, cwd and its whole security context. The one place that builds an
/// [`ExecInfo`], so a security field added to the container's process reaches every
/// exec.
pub(super) fn exec_info(record: &ContainerRecord, cmd: Vec<String>, tty: bool) -> ExecInfo {
    ExecInfo {
        container_id: record.id.clone(),
        args: cmd,
        env: record.process.env.clone(),
        cwd: record.process.cwd.clone(),
        uid: record.process.uid,
        gid: record.process.gid,
        additional_gids: record.process.additional_gids.clone(),
        tty,
        timeout_ms: None,
        stdin_b64: None,
        capabilities: record.process.capabilities,
        no_new_privileges: record.process.no_new_privileges,
        rlimits: record.process.rlimits.clone(),
        seccomp: record.process.seccomp.clone(),
    }
}
