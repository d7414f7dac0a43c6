//! Top-level containers: pod sandboxes (their namespaces, files, network, supervisor).

use super::*;

impl MesosContainerizer {
    // ---- pod sandboxes (top-level containers) ----

    /// RunPodSandbox: idempotent by name for an identical config, AlreadyExists otherwise.
    pub(super) async fn launch_pod(
        self: &Arc<Self>,
        config: cri::PodSandboxConfig,
        handler: String,
    ) -> Result<String> {
        // The CRI layer (cri::validate) refused a config without metadata.
        let meta = config.metadata.clone().unwrap_or_default();
        if !handler.is_empty() && handler != "mesos" {
            return Err(ContainerizerError::NotFound {
                what: "runtime handler",
                id: crate::quote::quote(&handler),
            });
        }
        let key = pod_key(&meta);
        let id = reserve(&mut self.tables().pod_names, &key, &config, |holder| {
            format!(
                "pod sandbox name {} is reserved for {holder}",
                crate::quote::quote(&key)
            )
        })?;
        if self
            .tables()
            .pods
            .get(&id)
            .is_some_and(|p| p.mesos_state == MesosState::Running)
        {
            return Ok(id);
        }
        let span = tracing::info_span!("pod", pod_id = %id);
        self.create_once(
            id,
            span,
            |t, id| t.pod_names.retain(|_, r| r.id != id),
            move |this, id| async move { this.launch_pod_uncached(&id, config, handler).await },
        )
        .await
    }

    pub(super) async fn launch_pod_uncached(
        &self,
        id: &str,
        config: cri::PodSandboxConfig,
        handler: String,
    ) -> Result<()> {
        let lock = self.lock_of(id);
        let _guard = lock.lock().await;
        let options = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let pid_mode = match cri::NamespaceMode::try_from(options.pid)
            .unwrap_or(cri::NamespaceMode::Container)
        {
            cri::NamespaceMode::Pod => NsMode::Pod,
            cri::NamespaceMode::Node => NsMode::Node,
            cri::NamespaceMode::Container => NsMode::Container,
            // cri::validate refuses TARGET for a pod: it names a container.
            cri::NamespaceMode::Target => {
                return Err(ContainerizerError::Internal(
                    "pid namespace mode TARGET reached a pod sandbox".into(),
                ));
            }
        };
        let dir = self.flags.runtime_dir.join("pods").join(id);
        let cgroup_parent = config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default();
        let (pod_cgroup, owns_pod_cgroup) = if cgroup_parent.is_empty() {
            (
                Cgroup::at(
                    &self.hierarchies,
                    &format!("{}/{id}", self.flags.cgroups_root),
                )?,
                true,
            )
        } else {
            // kubelet's systemd driver names the pod's slice; systemd would put it at the
            // path its name spells, and so does this.
            let path = if self.flags.cgroup_driver == "systemd" {
                crate::cgroups::systemd::expand_slice(&cgroup_parent)
                    .map_err(|e| invalid("config.linux.cgroup_parent", &e.to_string()))?
            } else {
                cgroup_parent.clone()
            };
            let cgroup = Cgroup::at(&self.hierarchies, &path)
                .map_err(|e| invalid("config.linux.cgroup_parent", &e.to_string()))?;
            (cgroup, false)
        };
        let supervisor_cgroup = pod_cgroup.child(id)?;
        // An empty hostname is the node's, as containerd does: the pod's name is not a
        // hostname (it may be longer than sethostname's 64 bytes). The CRI layer has
        // checked a hostname the client sent.
        let hostname = if config.hostname.is_empty() {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default()
        } else {
            config.hostname.clone()
        };
        let mut record = PodRecord {
            info: PodInfo {
                id: id.to_string(),
                config: config.clone(),
                dir: dir.clone(),
                net_ns: None,
                uts_ns: None,
                ipc_ns: None,
                pid_mode,
                cgroup: pod_cgroup.clone(),
            },
            created_at: now_ns(),
            ready: false,
            mesos_state: MesosState::Preparing,
            runtime_handler: handler,
            supervisor_pid: 0,
            supervisor_socket: self
                .flags
                .runtime_dir
                .join("sv")
                .join(format!("{}.sock", &id[..16])),
            supervisor_cgroup,
            owns_pod_cgroup,
            network: None,
            lost: None,
        };
        // The checkpoint comes first, so that a crash at any later step leaves a record
        // that StopPodSandbox/RemovePodSandbox can clean up from.
        self.checkpoint_pod(&record).await?;
        self.tables().pods.insert(id.to_string(), record.clone());
        failpoint::hit("run_pod.checkpointed");

        let result = self.prepare_pod(&mut record, &hostname).await;
        match result {
            Ok(()) => {
                record.ready = true;
                record.mesos_state = MesosState::Running;
                self.checkpoint_pod(&record).await?;
                let pid = record.supervisor_pid;
                self.tables().pods.insert(id.to_string(), record);
                if !self.watch_supervisor(id, pid) {
                    // Dead already: handled once this launch let go of the pod's lock.
                    self.on_supervisor_exit(id, pid, Box::pin(std::future::ready(())));
                }
                // As containerd: the sandbox's own events carry its id as the container's.
                self.events.created(id, id);
                self.events.started(id);
                tracing::info!("pod sandbox ready");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "pod sandbox launch failed; undoing");
                match self.teardown_pod(&record).await {
                    Ok(()) => {
                        if let Err(leftover) = self.remove_pod_leftovers(&record) {
                            tracing::warn!(error = %leftover, "pod cgroups not removed");
                        }
                        self.forget_pod(id);
                    }
                    Err(undo) => {
                        // The network could not be released: keep the sandbox, NOTREADY,
                        // so kubelet's sandbox GC (Stop/Remove) retries the DEL. Its name
                        // is free for the retry of RunPodSandbox, which gets a new id.
                        tracing::warn!(error = %undo, "pod network not released; sandbox kept NOTREADY");
                        record.ready = false;
                        record.mesos_state = MesosState::Destroying;
                        self.checkpoint_pod(&record).await?;
                        let mut tables = self.tables();
                        tables.pods.insert(id.to_string(), record);
                        tables.pod_names.retain(|_, r| r.id != id);
                    }
                }
                Err(e)
            }
        }
    }

    /// The pod's launch, in the order pods need: the isolators' `prepare_pod` (which
    /// namespaces) → the namespaces created and pinned → their `isolate_pod` (network/cni:
    /// CNI ADD) → pod sysctls (interface ones need the ADD) → the pod's files (`/etc/hosts` needs the IP) →
    /// cgroups and the supervisor, last. The caller undoes a failure (`teardown_pod`).
    pub(super) async fn prepare_pod(&self, record: &mut PodRecord, hostname: &str) -> Result<()> {
        let dir = record.info.dir.clone();
        std::fs::create_dir_all(&dir).map_err(ContainerizerError::io(&dir))?;
        let mut wanted = PodNamespaces::default();
        let prep = PodPrep {
            id: &record.info.id,
            config: &record.info.config,
            dir: &dir,
        };
        for isolator in &self.isolators {
            isolator.prepare_pod(&prep, &mut wanted).await?;
        }
        let targets = namespaces::Pinned {
            net: wanted.net,
            uts: wanted.uts,
            ipc: wanted.ipc,
        };
        if targets.ipc.is_some() {
            let shm = dir.join("shm");
            self.pod_host
                .mount_shm(&shm, SHM_SIZE)
                .map_err(ContainerizerError::io(&shm))?;
        }
        let host = hostname.to_string();
        let pod_host = self.pod_host.clone();
        let pinned = tokio::task::spawn_blocking(move || pod_host.pin(&targets, &host))
            .await
            .map_err(|e| ContainerizerError::Internal(e.to_string()))??;
        record.info.net_ns = pinned.net;
        record.info.uts_ns = pinned.uts;
        record.info.ipc_ns = pinned.ipc;
        self.checkpoint_pod(record).await?;
        failpoint::hit("run_pod.namespaces");
        let mut isolation = PodIsolation::default();
        for isolator in &self.isolators {
            isolator.isolate_pod(&record.info, &mut isolation).await?;
        }
        if isolation.network.is_some() {
            record.network = isolation.network;
            self.checkpoint_pod(record).await?;
        }
        failpoint::hit("run_pod.network");
        self.write_pod_sysctls(record).await?;
        let (info, host, network) = (
            record.info.clone(),
            hostname.to_string(),
            record.network.clone(),
        );
        tokio::task::spawn_blocking(move || write_pod_files(&info, &host, network.as_ref()))
            .await
            .map_err(|e| ContainerizerError::Internal(e.to_string()))??;

        record.info.cgroup.create()?;
        record.supervisor_cgroup.create()?;
        let socket = record.supervisor_socket.clone();
        if let Some(parent) = socket.parent() {
            std::fs::create_dir_all(parent).map_err(ContainerizerError::io(parent))?;
        }
        if socket.exists() {
            // A 16-hex-digit prefix collision, or a leftover: refuse rather than share.
            return Err(ContainerizerError::Internal(format!(
                "supervisor socket {} already exists",
                socket.display()
            )));
        }
        let spec = SupervisorSpec {
            pod_id: &record.info.id,
            socket: &socket,
            state_dir: &dir.join("supervisor"),
            new_pid_ns: record.info.pid_mode == NsMode::Pod,
        };
        let pid = self.launcher.spawn_supervisor(&spec).await?;
        record.supervisor_pid = pid;
        self.checkpoint_pod(record).await?;
        // Charged to the pod, as the pause container is under containerd.
        self.launcher.charge(&record.supervisor_cgroup, pid)?;
        failpoint::hit("run_pod.supervisor");
        Ok(())
    }

    /// The pod's sysctls, written once in its namespaces: every container joins them.
    async fn write_pod_sysctls(&self, record: &PodRecord) -> Result<()> {
        let Some(linux) = &record.info.config.linux else {
            return Ok(());
        };
        let invalid = |e: SysctlError| ContainerizerError::InvalidArgument {
            field: "config.linux.sysctls".into(),
            reason: e.to_string(),
        };
        let sysctls = linux
            .sysctls
            .iter()
            .map(|(name, value)| sysctls::parse(name, value))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        if sysctls.is_empty() {
            return Ok(());
        }
        let (pod_host, net, ipc) = (
            self.pod_host.clone(),
            record.info.net_ns.clone(),
            record.info.ipc_ns.clone(),
        );
        tokio::task::spawn_blocking(move || {
            pod_host.write_sysctls(net.as_deref(), ipc.as_deref(), &sysctls)
        })
        .await
        .map_err(|e| ContainerizerError::Internal(e.to_string()))?
        .map_err(|e| match e.sysctl() {
            Some(_) => invalid(e),
            None => ContainerizerError::Internal(e.to_string()),
        })
    }

    pub(super) async fn checkpoint_pod(&self, record: &PodRecord) -> Result<()> {
        let path = meta_dir(&self.flags)
            .join("pods")
            .join(format!("{}.json", record.info.id));
        state::checkpoint_async(&path, record).await?;
        Ok(())
    }

    pub(super) fn forget_pod(&self, id: &str) {
        let _ = std::fs::remove_file(
            meta_dir(&self.flags)
                .join("pods")
                .join(format!("{id}.json")),
        );
        let mut tables = self.tables();
        tables.pods.remove(id);
        tables.pod_names.retain(|_, r| r.id != id);
    }

    /// StopPodSandbox: kills every container, stops the supervisor, releases the pod's
    /// namespaces and shm. Idempotent, also for unknown ids.
    pub(super) async fn stop_pod(&self, id: &str) -> Result<()> {
        let Ok(record) = self.find_pod(id) else {
            return Ok(());
        };
        let lock = self.lock_of(&record.info.id);
        let _guard = lock.lock().await;
        self.stop_pod_locked(&record.info.id).await
    }

    pub(super) async fn stop_pod_locked(&self, id: &str) -> Result<()> {
        let Ok(mut record) = self.find_pod(id) else {
            return Ok(());
        };
        let containers = self.container_ids_of(id);
        for cid in containers {
            self.stop_container_locked(&cid).await?;
        }
        if record.ready || record.mesos_state != MesosState::Destroying {
            record.ready = false;
            record.mesos_state = MesosState::Destroying;
            self.checkpoint_pod(&record).await?;
            self.tables().pods.insert(id.to_string(), record.clone());
        }
        failpoint::hit("stop_pod.marked");
        self.events.stopped(id);
        self.teardown_pod(&record).await
    }

    /// Releases what a pod holds on the host, whatever state it got to. Idempotent. A
    /// failed `cleanup_pod` (a CNI DEL) is returned (StopPodSandbox fails, kubelet
    /// retries); the isolator kept what it needs for the retry.
    pub(super) async fn teardown_pod(&self, record: &PodRecord) -> Result<()> {
        if record.supervisor_pid > 0
            && let Err(e) = self.launcher.shutdown(&record.supervisor_socket).await
        {
            tracing::debug!(error = %e, "supervisor shutdown");
        }
        if let Err(e) = self
            .launcher
            .kill_all(&record.supervisor_cgroup, KILL_TIMEOUT)
            .await
        {
            tracing::debug!(error = %e, "supervisor cgroup kill");
        }
        let _ = std::fs::remove_file(&record.supervisor_socket);
        failpoint::hit("stop_pod.supervisor");
        // Reverse chain order, while the namespaces still exist; each isolator tries even
        // when one before it failed, and the first failure is returned.
        let mut failed = None;
        for isolator in self.isolators.iter().rev() {
            if let Err(e) = isolator.cleanup_pod(&record.info).await {
                tracing::warn!(isolator = %isolator.name(), error = %e, "pod cleanup failed");
                failed.get_or_insert(e);
            }
        }
        // The network namespace is network/cni's, unpinned by it once its DEL succeeded.
        let pinned = namespaces::Pinned {
            net: None,
            uts: record.info.uts_ns.clone(),
            ipc: record.info.ipc_ns.clone(),
        };
        self.pod_host.unpin(&pinned);
        // Without our own IPC namespace there is no shm mount of ours to remove.
        self.pod_host.unmount_shm(&record.info.dir.join("shm"));
        failed.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Removes the pod's cgroups (ours only) and its directory, once nothing runs in them.
    pub(super) fn remove_pod_leftovers(&self, record: &PodRecord) -> Result<()> {
        record.supervisor_cgroup.destroy()?;
        if record.owns_pod_cgroup {
            record.info.cgroup.destroy()?;
        }
        let _ = std::fs::remove_dir_all(&record.info.dir);
        let sandboxes = sandboxes_dir(&self.flags).join(&record.info.id);
        std::fs::remove_dir_all(&sandboxes)
            .or_else(ignore_missing)
            .map_err(ContainerizerError::io(&sandboxes))?;
        Ok(())
    }

    /// RemovePodSandbox: stops the pod, removes its containers and everything it left.
    /// Idempotent.
    pub(super) async fn remove_pod(&self, id: &str) -> Result<()> {
        let Ok(record) = self.find_pod(id) else {
            return Ok(());
        };
        let id = record.info.id.clone();
        let lock = self.lock_of(&id);
        let _guard = lock.lock().await;
        self.stop_pod_locked(&id).await?;
        let containers = self.container_ids_of(&id);
        for cid in containers {
            self.remove_container_locked(&cid).await?;
        }
        failpoint::hit("remove_pod.containers");
        self.remove_pod_leftovers(&record)?;
        failpoint::hit("remove_pod.leftovers");
        self.forget_pod(&id);
        self.events.deleted(&id);
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        tracing::info!(pod_id = %id, "pod sandbox removed");
        Ok(())
    }

    // ---- containers (nested containers) ----
}

/// /etc/hostname, /etc/hosts and /etc/resolv.conf of the pod, bound into its containers.
fn write_pod_files(pod: &PodInfo, hostname: &str, network: Option<&PodNetwork>) -> Result<()> {
    state::atomic_write(&pod.hostname_file(), format!("{hostname}\n").as_bytes())?;
    let mut hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n".to_string();
    for ip in network.map(PodNetwork::pod_ips).unwrap_or_default() {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    state::atomic_write(&pod.hosts_file(), hosts.as_bytes())?;
    // Priority as Mesos: the pod's DNSConfig, then the network's DNS, then the host's.
    let network_dns = network.and_then(PodNetwork::dns);
    let resolv = match pod
        .config
        .dns_config
        .as_ref()
        .filter(|d| !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty())
    {
        Some(dns) => {
            let mut text = String::new();
            for server in &dns.servers {
                text.push_str(&format!("nameserver {server}\n"));
            }
            if !dns.searches.is_empty() {
                text.push_str(&format!("search {}\n", dns.searches.join(" ")));
            }
            if !dns.options.is_empty() {
                text.push_str(&format!("options {}\n", dns.options.join(" ")));
            }
            text
        }
        None => match network_dns {
            Some(dns) => {
                let mut text = String::new();
                for server in &dns.nameservers {
                    text.push_str(&format!("nameserver {server}\n"));
                }
                if !dns.search.is_empty() {
                    text.push_str(&format!("search {}\n", dns.search.join(" ")));
                } else if !dns.domain.is_empty() {
                    text.push_str(&format!("domain {}\n", dns.domain));
                }
                if !dns.options.is_empty() {
                    text.push_str(&format!("options {}\n", dns.options.join(" ")));
                }
                text
            }
            None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        },
    };
    state::atomic_write(&pod.resolv_conf(), resolv.as_bytes())?;
    Ok(())
}
