//! The content-addressed image store (`--docker_store_dir`), laid out as Mesos's docker
//! store: `staging/` for work in progress, `layers/<id>/{rootfs,summary.json}` for every
//! extracted layer (shared by all images that have it), and `images.json`, the image
//! records (name/tag/digest → config + ordered layers).
//!
//! A layer's id is the hex of its diff_id (the digest of the uncompressed tar), so the same
//! content pulled gzip'd, zstd'd or plain is stored once.

pub mod extract;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use self::extract::LayerSummary;
use crate::state::{self, CheckpointError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("layer {layer}: {reason}")]
    Layer { layer: String, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One image as the store knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// `sha256:<config digest>`, the CRI image id.
    pub id: String,
    /// Normalised `registry/repository:tag` names.
    pub repo_tags: Vec<String>,
    /// Normalised `registry/repository@sha256:<manifest digest>` names.
    pub repo_digests: Vec<String>,
    /// Layer ids (diff_id hex), bottom layer first.
    pub layers: Vec<String>,
    /// Compressed size of config + layers as the registry serves them (what kubelet's
    /// image GC accounts).
    pub size: u64,
    /// The image config as fetched (OCI / Docker image config JSON).
    pub config: serde_json::Value,
    pub manifest_digest: String,
}

impl ImageRecord {
    /// The name a client would recognise first: a tag, else a digest, else the id.
    pub fn display_name(&self) -> &str {
        self.repo_tags
            .first()
            .or(self.repo_digests.first())
            .map(String::as_str)
            .unwrap_or(&self.id)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: BTreeMap<String, ImageRecord>,
}

/// The store. Cheap to share (`Arc<Store>`); every method is synchronous and short, the
/// callers run blocking work (extraction, GC) on blocking threads.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    index: Mutex<Index>,
}

impl Store {
    /// Opens (or creates) the store at `root`. Staging leftovers of a crash are removed:
    /// nothing in staging was ever visible to a client.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for dir in ["staging", "layers"] {
            fs::create_dir_all(root.join(dir)).map_err(io_err(root))?;
        }
        let staging = root.join("staging");
        for entry in fs::read_dir(&staging).map_err(io_err(&staging))? {
            let path = entry.map_err(io_err(&staging))?.path();
            tracing::info!(path = %path.display(), "removing staging leftover");
            remove_tree(&path).map_err(io_err(&path))?;
        }
        let index = state::recover::<Index>(&root.join("images.json"))?.unwrap_or_default();
        Ok(Store {
            root: root.to_path_buf(),
            index: Mutex::new(index),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh directory under `staging/` for one piece of work; renamed into place when
    /// done, or removed on failure.
    pub fn staging_dir(&self) -> Result<PathBuf, StoreError> {
        let dir = self
            .root
            .join("staging")
            .join(uuid::Uuid::new_v4().simple().to_string());
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        Ok(dir)
    }

    pub fn layer_dir(&self, layer: &str) -> PathBuf {
        self.root.join("layers").join(layer)
    }

    pub fn layer_rootfs(&self, layer: &str) -> PathBuf {
        self.layer_dir(layer).join("rootfs")
    }

    pub fn has_layer(&self, layer: &str) -> bool {
        self.layer_dir(layer).join("summary.json").exists()
    }

    pub fn layer_summary(&self, layer: &str) -> Result<LayerSummary, StoreError> {
        let path = self.layer_dir(layer).join("summary.json");
        state::recover(&path)?.ok_or_else(|| StoreError::Layer {
            layer: layer.into(),
            reason: "not in the store".into(),
        })
    }

    /// Moves an extracted layer from staging into the store. `staged` holds `rootfs/`;
    /// the summary is written last, so a layer without one is incomplete.
    pub fn commit_layer(
        &self,
        layer: &str,
        staged: &Path,
        summary: &LayerSummary,
    ) -> Result<(), StoreError> {
        state::checkpoint(&staged.join("summary.json"), summary)?;
        let dest = self.layer_dir(layer);
        if self.has_layer(layer) {
            // Someone else committed it meanwhile (another provider path); keep theirs.
            remove_tree(staged).map_err(io_err(staged))?;
            return Ok(());
        }
        if dest.exists() {
            remove_tree(&dest).map_err(io_err(&dest))?;
        }
        fs::rename(staged, &dest).map_err(io_err(&dest))?;
        fs::File::open(self.root.join("layers"))
            .and_then(|d| d.sync_all())
            .map_err(io_err(&dest))?;
        Ok(())
    }

    /// Records an image. A tag or digest name that pointed at another image moves here, as
    /// a re-pushed tag does in a registry.
    pub fn put_image(&self, mut record: ImageRecord) -> Result<ImageRecord, StoreError> {
        let mut index = self.lock();
        for other in index.images.values_mut() {
            if other.id != record.id {
                other.repo_tags.retain(|t| !record.repo_tags.contains(t));
                other
                    .repo_digests
                    .retain(|d| !record.repo_digests.contains(d));
            }
        }
        if let Some(existing) = index.images.get(&record.id) {
            for tag in &existing.repo_tags {
                if !record.repo_tags.contains(tag) {
                    record.repo_tags.push(tag.clone());
                }
            }
            for digest in &existing.repo_digests {
                if !record.repo_digests.contains(digest) {
                    record.repo_digests.push(digest.clone());
                }
            }
        }
        record.repo_tags.sort();
        record.repo_digests.sort();
        index.images.insert(record.id.clone(), record.clone());
        state::checkpoint(&self.root.join("images.json"), &*index)?;
        Ok(record)
    }

    /// Finds an image by id (`sha256:<hex>`, the bare hex, or a unique hex prefix of at
    /// least 12 characters), by normalised tag or by normalised digest name.
    pub fn lookup(&self, key: &str) -> Option<ImageRecord> {
        let index = self.lock();
        if let Some(record) = index.images.get(key) {
            return Some(record.clone());
        }
        let by_name = index.images.values().find(|r| {
            r.repo_tags.iter().any(|t| t == key) || r.repo_digests.iter().any(|d| d == key)
        });
        if let Some(record) = by_name {
            return Some(record.clone());
        }
        let hex = key.strip_prefix("sha256:").unwrap_or(key);
        if hex.len() >= 12 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            let mut matches = index
                .images
                .values()
                .filter(|r| r.id["sha256:".len()..].starts_with(hex));
            if let (Some(only), None) = (matches.next(), matches.next()) {
                return Some(only.clone());
            }
        }
        None
    }

    pub fn images(&self) -> Vec<ImageRecord> {
        self.lock().images.values().cloned().collect()
    }

    /// Removes an image with all its names. Its layers stay until [`Store::collect`].
    pub fn remove_image(&self, id: &str) -> Result<Option<ImageRecord>, StoreError> {
        let mut index = self.lock();
        let removed = index.images.remove(id);
        if removed.is_some() {
            state::checkpoint(&self.root.join("images.json"), &*index)?;
        }
        Ok(removed)
    }

    /// Takes every layer that no image and no container (`in_use`) references out of
    /// `layers/` (a rename into staging, so a crash never leaves half a layer that looks
    /// whole) and returns where they went, for [`Store::remove_unlinked`]. A layer that
    /// cannot be moved is logged and skipped: one stuck layer must not stop the others.
    pub fn unlink_unreferenced(
        &self,
        in_use: &HashSet<String>,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let referenced: HashSet<String> = {
            let index = self.lock();
            index
                .images
                .values()
                .flat_map(|r| r.layers.iter().cloned())
                .collect()
        };
        let layers = self.root.join("layers");
        let mut doomed = Vec::new();
        for entry in fs::read_dir(&layers).map_err(io_err(&layers))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if referenced.contains(&name) || in_use.contains(&name) {
                continue;
            }
            let target = self
                .root
                .join("staging")
                .join(format!("gc-{}", uuid::Uuid::new_v4().simple()));
            match fs::rename(entry.path(), &target) {
                Ok(()) => {
                    tracing::info!(layer = %name, "layer collected");
                    doomed.push(target);
                }
                Err(e) => tracing::warn!(layer = %name, error = %e, "layer not collected"),
            }
        }
        Ok(doomed)
    }

    /// Deletes what [`Store::unlink_unreferenced`] moved aside (slow; no lock needed).
    pub fn remove_unlinked(doomed: &[PathBuf]) {
        for path in doomed {
            if let Err(e) = remove_tree(path) {
                tracing::warn!(path = %path.display(), error = %e, "collected layer not deleted; the next start removes it");
            }
        }
    }

    /// Bytes and inodes the extracted layers use, from their summaries (no tree walk).
    pub fn usage(&self) -> (u64, u64) {
        let layers = self.root.join("layers");
        let mut bytes = 0;
        let mut inodes = 0;
        if let Ok(entries) = fs::read_dir(&layers) {
            for entry in entries.flatten() {
                if let Ok(summary) = self.layer_summary(&entry.file_name().to_string_lossy()) {
                    bytes += summary.size_bytes;
                    inodes += summary.entries;
                }
            }
        }
        (bytes, inodes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes a directory tree that may hold read-only directories (layers keep image modes).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(path);
            match fs::remove_dir_all(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        }
    }
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::symlink_metadata(path)
        && meta.is_dir()
    {
        let _ = fs::set_permissions(
            path,
            fs::Permissions::from_mode(meta.permissions().mode() | 0o700),
        );
        if let Ok(entries) = fs::read_dir(path) {
            for entry in entries.flatten() {
                make_writable(&entry.path());
            }
        }
    }
}
