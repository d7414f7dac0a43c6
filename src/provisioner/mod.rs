//! Mesos's provisioner: image providers fetch images, the store keeps their layers
//! once, and a backend turns an ordered list of layers into a container rootfs.
//!
//! Pulls are deduplicated at two levels, as Mesos's fetcher cache does for URIs: two
//! pulls of one image wait on one pull, and two images sharing a layer download it once.
//! The work runs on detached tasks, so a client that gives up (kubelet's deadline) never
//! leaves a half-pulled layer behind, and the next caller reuses the finished work.

pub mod backends;
#[allow(unsafe_code)]
pub(crate) mod fsat;
pub mod providers;
pub mod reference;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use self::backends::{Backend, BackendError, LayerRef};
use self::providers::auth::Credentials;
use self::providers::local::LocalProvider;
use self::providers::manifest::LayerDescriptor;
use self::providers::registry::{HostConfig, RegistryConfig, RegistryProvider};
use self::providers::{Provider, ProviderError};
use self::reference::{ImageReference, ReferenceError};
use self::store::extract::{self, ExtractError};
use self::store::{ImageRecord, Store, StoreError};
use crate::inflight::Inflight;
use crate::state::{self, CheckpointError};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("layer {blob}: {source}")]
    Extract { blob: String, source: ExtractError },
    #[error(
        "layer {blob}: uncompressed digest {actual} does not match the config's diff_id {expected}"
    )]
    DiffIdMismatch {
        blob: String,
        expected: String,
        actual: String,
    },
    #[error("image {image}: bad image config: {reason}")]
    BadConfig { image: String, reason: String },
    #[error("image {0} is not in the image store")]
    ImageNotFound(String),
    #[error("{0}")]
    Shared(Arc<ProvisionError>),
    #[error("provisioner task failed: {0}")]
    Task(String),
    /// The node's credentials file for a registry cannot be used.
    #[error("registry {host}: credentials file {}: {reason}", path.display())]
    NodeCredentials {
        host: String,
        path: PathBuf,
        reason: String,
    },
}

impl ProvisionError {
    /// The error behind the sharing wrapper, for callers that map error kinds.
    pub fn root(&self) -> &ProvisionError {
        match self {
            ProvisionError::Shared(inner) => inner.root(),
            other => other,
        }
    }
}

type SharedResult<T> = Result<T, Arc<ProvisionError>>;

fn task_died<T>(reason: String) -> SharedResult<T> {
    Err(Arc::new(ProvisionError::Task(reason)))
}

/// What the provisioner remembers of a container's rootfs, checkpointed before the rootfs
/// is made so that a crash in between still lets destroy and layer GC find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ContainerRootfs {
    backend: String,
    rootfs_id: String,
    image_id: String,
    layers: Vec<String>,
}

/// What a container gets from [`Provisioner::provision`].
#[derive(Debug, Clone)]
pub struct ProvisionInfo {
    pub rootfs: PathBuf,
    /// Where the container's writes land (see [`backends::Backend::writable`]).
    pub writable: Option<PathBuf>,
    pub backend: &'static str,
    pub image: ImageRecord,
}

/// What the provisioner is made of (Mesos's `--docker_store_dir`,
/// `--image_provisioner_backend`, `--docker_registry` and the registry settings).
#[derive(Debug, Clone, Default)]
pub struct ProvisionerConfig {
    pub work_dir: PathBuf,
    /// The layer store.
    pub store_dir: PathBuf,
    /// `None`: the first of overlay, aufs, copy that works.
    pub backend: Option<String>,
    /// A registry URL for names without a host, or a local directory of archives.
    pub docker_registry: String,
    pub hosts: HashMap<String, HostConfig>,
    /// The node's own credentials (docker config.json files) by registry host.
    pub auth_files: HashMap<String, PathBuf>,
    pub max_concurrent_downloads: usize,
}

impl ProvisionerConfig {
    /// The provisioner's part of the agent flags.
    pub fn from_flags(flags: &crate::flags::Flags) -> ProvisionerConfig {
        ProvisionerConfig {
            work_dir: flags.work_dir.clone(),
            store_dir: flags.docker_store_dir.clone(),
            backend: flags.image_provisioner_backend.clone(),
            docker_registry: flags.docker_registry.clone(),
            hosts: flags
                .registries
                .iter()
                .map(|(host, c)| {
                    let config = HostConfig {
                        insecure: c.insecure,
                        mirrors: c.mirrors.clone(),
                        ca_file: c.ca_file.clone(),
                    };
                    (host.clone(), config)
                })
                .collect(),
            auth_files: flags
                .registries
                .iter()
                .filter_map(|(host, c)| c.auth_file.clone().map(|f| (host.clone(), f)))
                .collect(),
            max_concurrent_downloads: flags.max_concurrent_downloads,
        }
    }
}

#[derive(Debug)]
pub struct Provisioner {
    store: Arc<Store>,
    provider: Provider,
    backend: Arc<dyn Backend>,
    containers_dir: PathBuf,
    downloads: Arc<Semaphore>,
    pulls: Inflight<SharedResult<ImageRecord>>,
    layers: Inflight<SharedResult<()>>,
    /// Layers that pulls and provisions are about to reference (committed but not yet in
    /// an image record, or looked up but not yet checkpointed for a container), with a
    /// count of holders. Layer GC spares them; it decides and unlinks under this lock.
    pins: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    /// Per registry host, the node's credentials file (`registries.HOST.auth_file`).
    auth_files: HashMap<String, PathBuf>,
}

/// Releases its layers' pins when dropped.
struct Pins {
    map: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    layers: Vec<String>,
}

impl Drop for Pins {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for layer in &self.layers {
            if let Some(n) = map.get_mut(layer) {
                *n -= 1;
                if *n == 0 {
                    map.remove(layer);
                }
            }
        }
    }
}

impl std::fmt::Debug for dyn Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Provisioner {
    pub fn new(
        store: Store,
        provider: Provider,
        backend: Box<dyn Backend>,
        work_dir: &Path,
        max_concurrent_downloads: usize,
    ) -> Result<Arc<Provisioner>, ProvisionError> {
        Self::assemble(store, provider, backend, work_dir, max_concurrent_downloads).map(Arc::new)
    }

    fn assemble(
        store: Store,
        provider: Provider,
        backend: Box<dyn Backend>,
        work_dir: &Path,
        max_concurrent_downloads: usize,
    ) -> Result<Provisioner, ProvisionError> {
        let containers_dir = work_dir.join("provisioner/containers");
        fs::create_dir_all(&containers_dir).map_err(|source| StoreError::Io {
            path: containers_dir.clone(),
            source,
        })?;
        Ok(Provisioner {
            store: Arc::new(store),
            provider,
            backend: Arc::from(backend),
            containers_dir,
            downloads: Arc::new(Semaphore::new(max_concurrent_downloads.max(1))),
            pulls: Inflight::default(),
            layers: Inflight::default(),
            pins: Arc::default(),
            auth_files: HashMap::new(),
        })
    }

    /// Builds the provisioner `config` describes: store, provider and backend. Fails on a
    /// backend the kernel or the store's filesystem cannot serve, or a bad registry setting.
    pub fn create(config: &ProvisionerConfig) -> Result<Arc<Provisioner>, ProvisionError> {
        let store = Store::open(&config.store_dir)?;
        let provider = if config.docker_registry.starts_with('/') {
            Provider::Local(LocalProvider::new(&config.docker_registry))
        } else {
            Provider::Registry(RegistryProvider::new(RegistryConfig {
                hosts: config.hosts.clone(),
                default_registry: Some(config.docker_registry.clone()),
            })?)
        };
        let backend = backends::create(config.backend.as_deref(), &config.store_dir)?;
        tracing::info!(backend = backend.name(), store = %config.store_dir.display(), "provisioner ready");
        let mut provisioner = Provisioner::assemble(
            store,
            provider,
            backend,
            &config.work_dir,
            config.max_concurrent_downloads,
        )?;
        provisioner.auth_files = config.auth_files.clone();
        Ok(Arc::new(provisioner))
    }

    fn pin(&self, layers: Vec<String>) -> Pins {
        let mut map = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        for layer in &layers {
            *map.entry(layer.clone()).or_default() += 1;
        }
        Pins {
            map: self.pins.clone(),
            layers,
        }
    }

    /// Where each container's rootfs (and the backend's writable layer) lives.
    pub fn containers_dir(&self) -> &Path {
        &self.containers_dir
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Pulls an image into the store and records its names.
    pub async fn pull(
        self: &Arc<Self>,
        image: &str,
        credentials: Option<Credentials>,
    ) -> Result<ImageRecord, ProvisionError> {
        let reference = ImageReference::parse(image)?;
        let credentials = match credentials {
            Some(c) => Some(c),
            None => self.node_credentials(&reference).await?,
        };
        // Pulls with different credentials must not share an answer (one may be refused).
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        if let Some(c) = &credentials {
            (
                &c.username,
                &c.password,
                &c.auth,
                &c.identity_token,
                &c.registry_token,
            )
                .hash(&mut hasher);
        }
        let key = format!("{reference}#{:x}", hasher.finish());
        let this = self.clone();
        self.pulls
            .run(
                &key,
                move || async move {
                    this.pull_uncached(reference, credentials)
                        .await
                        .map_err(Arc::new)
                },
                task_died,
            )
            .await
            .map_err(ProvisionError::Shared)
    }

    /// The node's credentials for the image's registry, when it has a file for it.
    async fn node_credentials(
        &self,
        reference: &ImageReference,
    ) -> Result<Option<Credentials>, ProvisionError> {
        let Some(path) = self.auth_files.get(&reference.registry) else {
            return Ok(None);
        };
        providers::node_auth::load(path, &reference.registry)
            .await
            .map_err(|reason| ProvisionError::NodeCredentials {
                host: reference.registry.clone(),
                path: path.clone(),
                reason,
            })
    }

    async fn pull_uncached(
        self: Arc<Self>,
        reference: ImageReference,
        credentials: Option<Credentials>,
    ) -> Result<ImageRecord, ProvisionError> {
        let resolved = self
            .provider
            .resolve(&reference, credentials.as_ref())
            .await?;
        let config: serde_json::Value =
            serde_json::from_slice(&resolved.config).map_err(|e| ProvisionError::BadConfig {
                image: reference.to_string(),
                reason: e.to_string(),
            })?;
        let diff_ids: Vec<String> = config
            .pointer("/rootfs/diff_ids")
            .and_then(|v| v.as_array())
            .map(|ids| {
                ids.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if diff_ids.len() != resolved.layers.len() {
            return Err(ProvisionError::BadConfig {
                image: reference.to_string(),
                reason: format!(
                    "{} diff_ids for {} layers",
                    diff_ids.len(),
                    resolved.layers.len()
                ),
            });
        }
        let _pins = self.pin(diff_ids.iter().filter_map(|d| layer_id(d)).collect());
        let mut fetches = Vec::new();
        for (descriptor, diff_id) in resolved.layers.iter().zip(&diff_ids) {
            let layer = layer_id(diff_id).ok_or_else(|| ProvisionError::BadConfig {
                image: reference.to_string(),
                reason: format!("diff_id '{diff_id}' is not a sha256 digest"),
            })?;
            fetches.push(self.clone().ensure_layer(
                reference.clone(),
                credentials.clone(),
                descriptor.clone(),
                layer,
            ));
        }
        for result in futures_util::future::join_all(fetches).await {
            result?;
        }
        let size =
            resolved.config.len() as u64 + resolved.layers.iter().map(|l| l.size).sum::<u64>();
        let record = ImageRecord {
            id: resolved.config_digest.clone(),
            repo_tags: reference.tagged_name().into_iter().collect(),
            repo_digests: vec![reference.digested_name(&resolved.manifest_digest)],
            layers: diff_ids.iter().filter_map(|d| layer_id(d)).collect(),
            size,
            config,
            manifest_digest: resolved.manifest_digest.clone(),
        };
        let store = self.store.clone();
        let record = tokio::task::spawn_blocking(move || store.put_image(record))
            .await
            .map_err(|e| ProvisionError::Task(e.to_string()))??;
        tracing::info!(image = %reference, id = %record.id, "image pulled");
        Ok(record)
    }

    /// Makes sure one layer is in the store, downloading and extracting it at most once
    /// however many pulls ask for it at the same time.
    async fn ensure_layer(
        self: Arc<Self>,
        reference: ImageReference,
        credentials: Option<Credentials>,
        descriptor: LayerDescriptor,
        layer: String,
    ) -> Result<(), ProvisionError> {
        if self.store.has_layer(&layer) {
            return Ok(());
        }
        let this = self.clone();
        let key = layer.clone();
        self.layers
            .run(
                &key,
                move || async move {
                    this.fetch_layer(reference, credentials, descriptor, layer)
                        .await
                        .map_err(Arc::new)
                },
                task_died,
            )
            .await
            .map_err(ProvisionError::Shared)
    }

    async fn fetch_layer(
        self: Arc<Self>,
        reference: ImageReference,
        credentials: Option<Credentials>,
        descriptor: LayerDescriptor,
        layer: String,
    ) -> Result<(), ProvisionError> {
        if self.store.has_layer(&layer) {
            return Ok(());
        }
        let _permit = self
            .downloads
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ProvisionError::Task(e.to_string()))?;
        let staging = self.store.staging_dir()?;
        let result = self
            .fetch_layer_into(
                &reference,
                credentials.as_ref(),
                &descriptor,
                &layer,
                &staging,
            )
            .await;
        if result.is_err() {
            let staging = staging.clone();
            let _ = tokio::task::spawn_blocking(move || store::remove_tree(&staging)).await;
        }
        result
    }

    async fn fetch_layer_into(
        &self,
        reference: &ImageReference,
        credentials: Option<&Credentials>,
        descriptor: &LayerDescriptor,
        layer: &str,
        staging: &Path,
    ) -> Result<(), ProvisionError> {
        let blob = staging.join("blob");
        self.provider
            .fetch_blob(reference, credentials, descriptor, &blob)
            .await?;
        let store = self.store.clone();
        let staging = staging.to_path_buf();
        let descriptor = descriptor.clone();
        let layer = layer.to_string();
        tokio::task::spawn_blocking(move || -> Result<(), ProvisionError> {
            let rootfs = staging.join("rootfs");
            fs::create_dir(&rootfs).map_err(|source| StoreError::Io {
                path: rootfs.clone(),
                source,
            })?;
            let file = fs::File::open(&blob).map_err(|source| StoreError::Io {
                path: blob.clone(),
                source,
            })?;
            let compression = extract::Compression::from_media_type(&descriptor.media_type);
            let summary = extract::unpack_layer(
                std::io::BufReader::with_capacity(1 << 20, file),
                compression,
                &rootfs,
            )
            .map_err(|source| ProvisionError::Extract {
                blob: descriptor.digest.clone(),
                source,
            })?;
            let expected = format!("sha256:{layer}");
            if summary.diff_id != expected {
                return Err(ProvisionError::DiffIdMismatch {
                    blob: descriptor.digest.clone(),
                    expected,
                    actual: summary.diff_id.clone(),
                });
            }
            fs::remove_file(&blob).map_err(|source| StoreError::Io {
                path: blob.clone(),
                source,
            })?;
            crate::failpoint::hit("pull.staged");
            store.commit_layer(&layer, &staging, &summary)?;
            Ok(())
        })
        .await
        .map_err(|e| ProvisionError::Task(e.to_string()))?
    }

    /// Removes an image (all its names) and collects the layers nobody uses any more.
    pub async fn remove_image(&self, id: &str) -> Result<Option<ImageRecord>, ProvisionError> {
        let (store, id) = (self.store.clone(), id.to_string());
        let removed = tokio::task::spawn_blocking(move || store.remove_image(&id))
            .await
            .map_err(|e| ProvisionError::Task(e.to_string()))??;
        if removed.is_some() {
            self.collect().await?;
        }
        Ok(removed)
    }

    /// Deletes layers referenced by no image and no container rootfs.
    pub async fn collect(&self) -> Result<usize, ProvisionError> {
        let store = self.store.clone();
        let containers_dir = self.containers_dir.clone();
        let pins = self.pins.clone();
        tokio::task::spawn_blocking(move || {
            let doomed = {
                // Deciding and unlinking under the pins' lock: a pull that pins a layer
                // after this either finds it gone (and fetches it) or kept.
                let pins = pins.lock().unwrap_or_else(|e| e.into_inner());
                let mut in_use = layers_in_use(&containers_dir);
                in_use.extend(pins.keys().cloned());
                store.unlink_unreferenced(&in_use)?
            };
            Store::remove_unlinked(&doomed);
            Ok(doomed.len())
        })
        .await
        .map_err(|e| ProvisionError::Task(e.to_string()))?
    }

    /// Makes the rootfs of container `cid` from image `image` (an id or a name in the store).
    pub async fn provision(&self, cid: &str, image: &str) -> Result<ProvisionInfo, ProvisionError> {
        let record = self
            .store
            .lookup(image)
            .or_else(|| {
                ImageReference::parse(image)
                    .ok()
                    .and_then(|r| self.store.lookup(&r.to_string()))
            })
            .ok_or_else(|| ProvisionError::ImageNotFound(image.to_string()))?;
        let pins = self.pin(record.layers.clone());
        // Pinned after the lookup: a collection in between may have taken a layer of an
        // image removed meanwhile; then the image is gone too.
        if record.layers.iter().any(|l| !self.store.has_layer(l)) {
            return Err(ProvisionError::ImageNotFound(image.to_string()));
        }
        let backend = self.backend.clone();
        let rootfs_id = uuid::Uuid::new_v4().simple().to_string();
        let checkpoint = ContainerRootfs {
            backend: backend.name().to_string(),
            rootfs_id: rootfs_id.clone(),
            image_id: record.id.clone(),
            layers: record.layers.clone(),
        };
        let container_dir = self.containers_dir.join(cid);
        let (rootfs, scratch) = paths(&container_dir, &checkpoint);
        state::checkpoint_async(&container_dir.join("rootfs.json"), &checkpoint).await?;
        // From here the checkpoint keeps the layers.
        drop(pins);
        let layers = record
            .layers
            .iter()
            .map(|layer| {
                Ok(LayerRef {
                    rootfs: self.store.layer_rootfs(layer),
                    summary: self.store.layer_summary(layer)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>();
        let made = match layers {
            Ok(layers) => {
                let (rootfs, scratch) = (rootfs.clone(), scratch.clone());
                let backend = backend.clone();
                tokio::task::spawn_blocking(move || backend.provision(&layers, &rootfs, &scratch))
                    .await
                    .map_err(|e| ProvisionError::Task(e.to_string()))
                    .and_then(|r| r.map_err(ProvisionError::from))
            }
            Err(e) => Err(e.into()),
        };
        if let Err(e) = made {
            // Undo everything this call created, so a failed create leaves nothing behind.
            let _ = self.destroy(cid).await;
            return Err(e);
        }
        Ok(ProvisionInfo {
            writable: backend.writable(&rootfs, &scratch),
            rootfs,
            backend: backend.name(),
            image: record,
        })
    }

    /// Where container `cid`'s writes land, from its checkpoint, as `provision` said then
    /// (recovery rebuilds what measures them); `None` for a read-only backend, a rootfs
    /// another backend made, or none.
    pub fn writable_of(&self, cid: &str) -> Option<PathBuf> {
        let container_dir = self.containers_dir.join(cid);
        let checkpoint: ContainerRootfs = state::recover(&container_dir.join("rootfs.json"))
            .ok()
            .flatten()?;
        if checkpoint.backend != self.backend.name() {
            return None;
        }
        let (rootfs, scratch) = paths(&container_dir, &checkpoint);
        self.backend.writable(&rootfs, &scratch)
    }

    /// Removes container `cid`'s rootfs (idempotent; unknown containers are fine).
    pub async fn destroy(&self, cid: &str) -> Result<(), ProvisionError> {
        let container_dir = self.containers_dir.join(cid);
        let checkpoint: Option<ContainerRootfs> =
            state::recover(&container_dir.join("rootfs.json"))?;
        if let Some(checkpoint) = checkpoint {
            let (rootfs, scratch) = paths(&container_dir, &checkpoint);
            let backend = self.backend.clone();
            if checkpoint.backend != backend.name() {
                tracing::warn!(container = cid, backend = %checkpoint.backend, "rootfs made by another backend; removing with the current one");
            }
            tokio::task::spawn_blocking(move || backend.destroy(&rootfs, &scratch))
                .await
                .map_err(|e| ProvisionError::Task(e.to_string()))??;
        }
        let dir = container_dir.clone();
        tokio::task::spawn_blocking(move || store::remove_tree(&dir))
            .await
            .map_err(|e| ProvisionError::Task(e.to_string()))?
            .map_err(|source| StoreError::Io {
                path: container_dir,
                source,
            })?;
        self.collect().await?;
        Ok(())
    }
}

fn paths(container_dir: &Path, checkpoint: &ContainerRootfs) -> (PathBuf, PathBuf) {
    let base = container_dir.join("backends").join(&checkpoint.backend);
    (
        base.join("rootfses").join(&checkpoint.rootfs_id),
        base.join("scratch").join(&checkpoint.rootfs_id),
    )
}

/// Layers used by container rootfses, from their checkpoints (survives restarts).
fn layers_in_use(containers_dir: &Path) -> HashSet<String> {
    let mut in_use = HashSet::new();
    if let Ok(entries) = fs::read_dir(containers_dir) {
        for entry in entries.flatten() {
            if let Ok(Some(c)) =
                state::recover::<ContainerRootfs>(&entry.path().join("rootfs.json"))
            {
                in_use.extend(c.layers);
            }
        }
    }
    in_use
}

/// The store's layer id for a diff_id: its hex, when it is a well-formed sha256 digest.
fn layer_id(diff_id: &str) -> Option<String> {
    let hex = diff_id.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
    .then(|| hex.to_string())
}
