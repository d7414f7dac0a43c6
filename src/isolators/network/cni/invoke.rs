//! Running CNI plugins (the part of libcni a runtime needs): one process per plugin with
//! the `CNI_*` environment and the network config on stdin, chains with `prevResult`,
//! `runtimeConfig` for the capabilities a plugin declares, and a deadline per call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use super::config::NetworkList;
use super::result::has_check;

/// Most of a plugin's stderr kept in an error message.
const STDERR_KEPT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("network {network:?}: plugin {plugin:?} not found in {dirs}")]
    NotFound {
        network: String,
        plugin: String,
        dirs: String,
    },
    #[error("network {network:?}: plugin {plugin} {command}: cannot run {path}: {source}")]
    Spawn {
        network: String,
        plugin: String,
        command: Command,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "network {network:?}: plugin {plugin} {command} did not finish within {timeout:?} (--network_cni_plugin_timeout) and was killed"
    )]
    Timeout {
        network: String,
        plugin: String,
        command: Command,
        timeout: Duration,
    },
    #[error("network {network:?}: plugin {plugin} {command} failed: {message}")]
    Failed {
        network: String,
        plugin: String,
        command: Command,
        /// The CNI error code, when the plugin printed a CNI error.
        code: Option<u64>,
        message: String,
    },
    #[error("network {network:?}: plugin {plugin} {command}: {reason}")]
    Output {
        network: String,
        plugin: String,
        command: Command,
        reason: String,
    },
    #[error(
        "network {network:?}: plugin {plugin} does not support cniVersion {version} (it supports {supported:?})"
    )]
    Version {
        network: String,
        plugin: String,
        version: String,
        supported: Vec<String>,
    },
}

/// What the runtime tells every plugin about the pod; checkpointed so a DEL gets what the
/// ADD got (portmap, for one, finds its rules from the port mappings).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeArgs {
    /// `CNI_CONTAINERID`: the pod sandbox id.
    pub container_id: String,
    /// `CNI_ARGS`.
    pub cni_args: String,
    /// Capability arguments by capability name (`portMappings`, `dns`, `bandwidth`,
    /// `ipRanges`); each plugin gets those it declares in `capabilities`.
    pub capabilities: Map<String, Value>,
}

/// One call's place: the interface and the namespace (`None`: it is gone, for DEL).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub ifname: &'a str,
    pub netns: Option<&'a Path>,
}

/// Supported versions by plugin path, with the binary's mtime when asked.
type VersionCache = HashMap<PathBuf, (Option<SystemTime>, Vec<String>)>;

#[derive(Debug)]
pub struct Invoker {
    dirs: Vec<PathBuf>,
    timeout: Duration,
    /// VERSION answers by plugin binary and its mtime: a plugin is asked once, not per pod.
    versions: Mutex<VersionCache>,
}

impl Invoker {
    pub fn new(dirs: Vec<PathBuf>, timeout: Duration) -> Self {
        Invoker {
            dirs,
            timeout,
            versions: Mutex::new(HashMap::new()),
        }
    }

    fn cni_path(&self) -> String {
        self.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The plugin binary: the first executable file of that name in the plugin dirs.
    pub fn find(&self, network: &str, plugin: &str) -> Result<PathBuf, PluginError> {
        use std::os::unix::fs::PermissionsExt;
        self.dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .ok_or_else(|| PluginError::NotFound {
                network: network.into(),
                plugin: plugin.into(),
                dirs: self.cni_path(),
            })
    }

    /// ADD through the chain; the last plugin's result is the network's result.
    pub async fn add(
        &self,
        list: &NetworkList,
        target: Target<'_>,
        args: &RuntimeArgs,
    ) -> Result<Value, PluginError> {
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let path = self.checked(list, plugin).await?;
            let stdin = plugin_config(list, plugin, args, prev.as_ref());
            let out = self
                .exec(list, plugin, &path, Command::Add, target, args, &stdin)
                .await?;
            let result: Value = serde_json::from_slice(&out).map_err(|e| PluginError::Output {
                network: list.name.clone(),
                plugin: NetworkList::plugin_type(plugin).into(),
                command: Command::Add,
                reason: format!("the result is not JSON ({e}): {}", lossy(&out, 512)),
            })?;
            prev = Some(result);
        }
        prev.ok_or_else(|| PluginError::Output {
            network: list.name.clone(),
            plugin: String::new(),
            command: Command::Add,
            reason: "the network has no plugins".into(),
        })
    }

    /// DEL through the chain in reverse. Every plugin is called even after a failure, so
    /// one broken plugin does not leak what the others hold; the first error is returned.
    pub async fn del(
        &self,
        list: &NetworkList,
        target: Target<'_>,
        args: &RuntimeArgs,
        cached: Option<&Value>,
    ) -> Result<(), PluginError> {
        // The spec hands the ADD result to DEL from 0.4.0 on.
        let prev = cached.filter(|_| has_check(&list.cni_version));
        let mut first = None;
        for plugin in list.plugins.iter().rev() {
            let call = async {
                let path = self.find(&list.name, NetworkList::plugin_type(plugin))?;
                let stdin = plugin_config(list, plugin, args, prev);
                self.exec(list, plugin, &path, Command::Del, target, args, &stdin)
                    .await
            };
            if let Err(e) = call.await {
                tracing::warn!(error = %e, "CNI DEL");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// CHECK through the chain with the ADD result; a no-op before 0.4.0 or with
    /// `disableCheck`, as in libcni.
    pub async fn check(
        &self,
        list: &NetworkList,
        target: Target<'_>,
        args: &RuntimeArgs,
        cached: &Value,
    ) -> Result<(), PluginError> {
        if !has_check(&list.cni_version) || list.disable_check {
            return Ok(());
        }
        for plugin in &list.plugins {
            let path = self.checked(list, plugin).await?;
            let stdin = plugin_config(list, plugin, args, Some(cached));
            self.exec(list, plugin, &path, Command::Check, target, args, &stdin)
                .await?;
        }
        Ok(())
    }

    /// The CNI versions a plugin speaks (VERSION), cached per binary.
    pub async fn versions(
        &self,
        list: &NetworkList,
        plugin: &Map<String, Value>,
        path: &Path,
    ) -> Result<Vec<String>, PluginError> {
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if let Some((cached_mtime, versions)) = self.lock_versions().get(path)
            && *cached_mtime == mtime
        {
            return Ok(versions.clone());
        }
        let stdin = serde_json::to_vec(&serde_json::json!({ "cniVersion": list.cni_version }))
            .unwrap_or_default();
        let target = Target {
            ifname: "",
            netns: None,
        };
        let out = self
            .exec(
                list,
                plugin,
                path,
                Command::Version,
                target,
                &RuntimeArgs::default(),
                &stdin,
            )
            .await?;
        #[derive(Deserialize)]
        struct VersionInfo {
            #[serde(rename = "supportedVersions", default)]
            supported: Vec<String>,
        }
        let info: VersionInfo = serde_json::from_slice(&out).map_err(|e| PluginError::Output {
            network: list.name.clone(),
            plugin: NetworkList::plugin_type(plugin).into(),
            command: Command::Version,
            reason: format!("not a version answer ({e}): {}", lossy(&out, 512)),
        })?;
        self.lock_versions()
            .insert(path.to_path_buf(), (mtime, info.supported.clone()));
        Ok(info.supported)
    }

    fn lock_versions(&self) -> std::sync::MutexGuard<'_, VersionCache> {
        self.versions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The plugin's path once it is known to speak the network's version (libcni's
    /// ValidateNetworkList, done lazily).
    async fn checked(
        &self,
        list: &NetworkList,
        plugin: &Map<String, Value>,
    ) -> Result<PathBuf, PluginError> {
        let name = NetworkList::plugin_type(plugin);
        let path = self.find(&list.name, name)?;
        let supported = self.versions(list, plugin, &path).await?;
        if !supported.contains(&list.cni_version) {
            return Err(PluginError::Version {
                network: list.name.clone(),
                plugin: name.into(),
                version: list.cni_version.clone(),
                supported,
            });
        }
        Ok(path)
    }

    /// Runs one plugin to completion, or kills its whole process group at the deadline
    /// (a plugin script's children must not outlive it). Returns stdout on success.
    #[allow(clippy::too_many_arguments)]
    async fn exec(
        &self,
        list: &NetworkList,
        plugin: &Map<String, Value>,
        path: &Path,
        command: Command,
        target: Target<'_>,
        args: &RuntimeArgs,
        stdin: &[u8],
    ) -> Result<Vec<u8>, PluginError> {
        let name = NetworkList::plugin_type(plugin);
        let netns = target
            .netns
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut cmd = tokio::process::Command::new(path);
        cmd.env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", &args.container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", target.ifname)
            .env("CNI_ARGS", &args.cni_args)
            .env("CNI_PATH", self.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let started = std::time::Instant::now();
        let mut child = cmd.spawn().map_err(|source| PluginError::Spawn {
            network: list.name.clone(),
            plugin: name.into(),
            command,
            path: path.to_path_buf(),
            source,
        })?;
        let pid = child.id();
        let mut input = child.stdin.take();
        let stdin = stdin.to_vec();
        let run = async move {
            if let Some(input) = &mut input {
                // A plugin may exit without reading its config; its exit status tells.
                let _ = input.write_all(&stdin).await;
            }
            drop(input);
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(output)) => output,
            Ok(Err(source)) => {
                return Err(PluginError::Spawn {
                    network: list.name.clone(),
                    plugin: name.into(),
                    command,
                    path: path.to_path_buf(),
                    source,
                });
            }
            Err(_) => {
                // Dropping the child killed the plugin itself; this gets what it forked.
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return Err(PluginError::Timeout {
                    network: list.name.clone(),
                    plugin: name.into(),
                    command,
                    timeout: self.timeout,
                });
            }
        };
        crate::metrics::METRICS.cni_plugin(name, command.as_str(), started.elapsed());
        tracing::debug!(
            network = %list.name,
            plugin = name,
            %command,
            ifname = target.ifname,
            elapsed_ms = started.elapsed().as_millis() as u64,
            status = %output.status,
            "CNI plugin"
        );
        if output.status.success() {
            return Ok(output.stdout);
        }
        let (code, message) = failure_message(&output.status, &output.stdout, &output.stderr);
        Err(PluginError::Failed {
            network: list.name.clone(),
            plugin: name.into(),
            command,
            code,
            message,
        })
    }
}

/// The config one plugin of a chain reads on stdin: its own object plus the network's
/// name and version, the previous result, and the capability arguments it asked for.
pub fn plugin_config(
    list: &NetworkList,
    plugin: &Map<String, Value>,
    args: &RuntimeArgs,
    prev: Option<&Value>,
) -> Vec<u8> {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    if let Some(Value::Object(caps)) = plugin.get("capabilities") {
        let runtime: Map<String, Value> = caps
            .iter()
            .filter(|(_, on)| **on == Value::Bool(true))
            .filter_map(|(cap, _)| Some((cap.clone(), args.capabilities.get(cap)?.clone())))
            .collect();
        if !runtime.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime));
        }
    }
    serde_json::to_vec(&conf).unwrap_or_default()
}

/// A failed plugin's CNI error (`{"code", "msg", "details"}` on stdout) and its stderr,
/// or whatever it printed when it printed no CNI error.
fn failure_message(
    status: &std::process::ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> (Option<u64>, String) {
    #[derive(Deserialize)]
    struct CniErrorOut {
        code: Option<u64>,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    let mut message;
    let mut code = None;
    match serde_json::from_slice::<CniErrorOut>(stdout) {
        Ok(e) if !e.msg.is_empty() || e.code.is_some() => {
            code = e.code;
            message = e.msg;
            if !e.details.is_empty() {
                message.push_str(&format!(" ({})", e.details));
            }
            if let Some(code) = e.code {
                message.push_str(&format!(" [CNI error code {code}]"));
            }
        }
        _ => {
            message = format!("{status}");
            if !stdout.is_empty() {
                message.push_str(&format!("; stdout: {}", lossy(stdout, STDERR_KEPT)));
            }
        }
    }
    let stderr = lossy(stderr, STDERR_KEPT);
    if !stderr.is_empty() {
        message.push_str(&format!("; stderr: {stderr}"));
    }
    (code, message)
}

/// The last `max` bytes of a plugin's output as text (the end says what went wrong).
fn lossy(bytes: &[u8], max: usize) -> String {
    let tail = &bytes[bytes.len().saturating_sub(max)..];
    String::from_utf8_lossy(tail).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    fn list(plugins: Value) -> NetworkList {
        NetworkList::parse(
            serde_json::to_vec(&json!({"cniVersion": "1.0.0", "name": "n1", "plugins": plugins}))
                .unwrap()
                .as_slice(),
        )
        .unwrap()
    }

    #[test]
    fn plugin_config_gets_name_version_prev_and_declared_capabilities_only() {
        let list = list(json!([
            {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}},
            {"type": "bridge"}
        ]));
        let args = RuntimeArgs {
            container_id: "c".into(),
            cni_args: String::new(),
            capabilities: json!({
                "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                "bandwidth": {"ingressRate": 1000},
            })
            .as_object()
            .unwrap()
            .clone(),
        };
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let conf: Value =
            serde_json::from_slice(&plugin_config(&list, &list.plugins[0], &args, Some(&prev)))
                .unwrap();
        assert_eq!(conf["name"], "n1");
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["prevResult"], prev);
        assert_eq!(
            conf["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
        );
        let conf: Value =
            serde_json::from_slice(&plugin_config(&list, &list.plugins[1], &args, None)).unwrap();
        assert!(conf.get("runtimeConfig").is_none());
        assert!(conf.get("prevResult").is_none());
    }

    #[test]
    fn failure_messages_keep_the_cni_error_and_stderr() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::ExitStatus::from_raw(1 << 8);
        let (code, message) = failure_message(
            &status,
            br#"{"cniVersion":"1.0.0","code":7,"msg":"no way","details":"really"}"#,
            b"trace line\n",
        );
        assert_eq!(code, Some(7));
        assert_eq!(
            message,
            "no way (really) [CNI error code 7]; stderr: trace line"
        );
        let (code, message) = failure_message(&status, b"garbage", b"");
        assert_eq!(code, None);
        assert!(
            message.contains("exit status: 1") && message.contains("garbage"),
            "{message}"
        );
    }

    fn script(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn chains_pass_prev_results_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let version = r#"if [ "$CNI_COMMAND" = VERSION ]; then echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}'; exit 0; fi"#;
        script(
            dir.path(),
            "first",
            &format!(
                r#"{version}
cat > /dev/null
echo "first $CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME $CNI_NETNS $CNI_ARGS $CNI_PATH" >> {log}
echo '{{"cniVersion":"1.0.0","ips":[{{"address":"10.0.0.2/24"}}]}}'"#,
                log = log.display()
            ),
        );
        script(
            dir.path(),
            "second",
            &format!(
                r#"{version}
grep -q '"prevResult":{{"cniVersion":"1.0.0",.*"address":"10.0.0.2/24"' || {{ echo no prev >&2; exit 3; }}
echo "second $CNI_COMMAND" >> {log}
[ "$CNI_COMMAND" = ADD ] && echo '{{"cniVersion":"1.0.0","ips":[{{"address":"10.0.0.2/24"}}],"dns":{{"nameservers":["1.1.1.1"]}}}}'
exit 0"#,
                log = log.display()
            ),
        );
        let invoker = Invoker::new(
            vec![dir.path().join("missing"), dir.path().to_path_buf()],
            Duration::from_secs(10),
        );
        let list = list(json!([{"type": "first"}, {"type": "second"}]));
        let args = RuntimeArgs {
            container_id: "pod1".into(),
            cni_args: "IgnoreUnknown=1;K8S_POD_NAME=p".into(),
            capabilities: Map::new(),
        };
        let netns = dir.path().join("ns");
        let target = Target {
            ifname: "eth0",
            netns: Some(&netns),
        };
        let result = invoker.add(&list, target, &args).await.unwrap();
        assert_eq!(result["dns"]["nameservers"][0], "1.1.1.1");
        invoker.check(&list, target, &args, &result).await.unwrap();
        let gone = Target {
            ifname: "eth0",
            netns: None,
        };
        invoker
            .del(&list, gone, &args, Some(&result))
            .await
            .unwrap();
        let log = std::fs::read_to_string(&log).unwrap();
        let cni_path = format!("{}/missing:{}", dir.path().display(), dir.path().display());
        assert_eq!(
            log.lines().collect::<Vec<_>>(),
            [
                format!(
                    "first ADD pod1 eth0 {} IgnoreUnknown=1;K8S_POD_NAME=p {cni_path}",
                    netns.display()
                ),
                "second ADD".to_string(),
                format!(
                    "first CHECK pod1 eth0 {} IgnoreUnknown=1;K8S_POD_NAME=p {cni_path}",
                    netns.display()
                ),
                "second CHECK".to_string(),
                "second DEL".to_string(),
                format!("first DEL pod1 eth0  IgnoreUnknown=1;K8S_POD_NAME=p {cni_path}"),
            ]
        );
    }

    #[tokio::test]
    async fn failures_timeouts_and_missing_plugins_name_the_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let version = r#"if [ "$CNI_COMMAND" = VERSION ]; then echo '{"supportedVersions":["1.0.0"]}'; exit 0; fi"#;
        script(
            dir.path(),
            "fails",
            &format!(
                r#"{version}
echo 'it broke' >&2; echo '{{"cniVersion":"1.0.0","code":11,"msg":"boom"}}'; exit 1"#
            ),
        );
        let pid_file = dir.path().join("sleeper.pid");
        script(
            dir.path(),
            "hangs",
            &format!(
                "{version}\nsleep 1000 & echo $! > {}\nwait",
                pid_file.display()
            ),
        );
        script(
            dir.path(),
            "old",
            r#"echo '{"supportedVersions":["0.3.1"]}'"#,
        );
        let invoker = Invoker::new(vec![dir.path().to_path_buf()], Duration::from_millis(500));
        let args = RuntimeArgs::default();
        let target = Target {
            ifname: "eth0",
            netns: None,
        };

        let err = invoker
            .add(&list(json!([{"type": "fails"}])), target, &args)
            .await
            .unwrap_err();
        assert!(
            matches!(err, PluginError::Failed { code: Some(11), .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("plugin fails ADD failed: boom") && text.contains("it broke"),
            "{text}"
        );

        let err = invoker
            .add(&list(json!([{"type": "hangs"}])), target, &args)
            .await
            .unwrap_err();
        assert!(matches!(err, PluginError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("plugin hangs ADD"), "{err}");
        let sleeper: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
            .is_ok_and(|s| !s.contains(") Z "))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the plugin's child survived"
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        let err = invoker
            .add(&list(json!([{"type": "nowhere"}])), target, &args)
            .await
            .unwrap_err();
        assert!(matches!(err, PluginError::NotFound { .. }), "{err}");
        let err = invoker
            .add(&list(json!([{"type": "old"}])), target, &args)
            .await
            .unwrap_err();
        assert!(matches!(err, PluginError::Version { .. }), "{err}");
    }
}
