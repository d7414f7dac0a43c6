//! Mesos's local docker provider (`--docker_registry=/some/dir`): images are
//! archives in a directory, `<dir>/<repository>:<tag>.tar`, for nodes that
//! must not (or cannot) reach a registry.
//!
//! An archive is a `docker save` tarball (`manifest.json` + config + layer
//! tars) or an OCI image layout (`oci-layout`, `index.json`, `blobs/`); both
//! may be gzip-compressed as a whole. For `docker save` tarballs there is no
//! manifest, so one is synthesised from the config and layer digests: the
//! store and the CRI then treat local images exactly like pulled ones.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::blob::sha256_digest;
use super::error::ProviderError;
use super::manifest::{
    Descriptor, LayerDescriptor, OCI_CONFIG, OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD,
    OCI_MANIFEST, ResolvedImage, image_parts, is_index, manifest_media_type, parse_manifest,
    pick_platform,
};
use crate::provisioner::reference::{DOCKER_HUB, ImageReference, validate_digest};

const SMALL_MAX: u64 = 16 << 20;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

#[derive(Clone)]
pub struct LocalProvider {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// Per archive (and its mtime and size, so a replaced archive is
    /// re-read): blob digest → entry name. `docker save` layers are named by
    /// layer ID, not digest, and hashing them again for every fetch would
    /// read the archive once per layer.
    blobs: Mutex<HashMap<PathBuf, (ArchiveStamp, Blobs)>>,
}

type ArchiveStamp = (Option<SystemTime>, u64);
/// Blob digest → name of the archive entry holding it.
type Blobs = HashMap<String, String>;
/// Sees one entry (name, kind, data); returns false to stop the scan.
type Visit<'v> = dyn FnMut(&str, &EntryKind, &mut dyn Read) -> Result<bool, ProviderError> + 'v;

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

impl LocalProvider {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir: dir.into(),
                blobs: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Archive paths that may hold `image`, in the order they are tried. The
    /// registry host is not part of the path; Docker Hub's `library/` may be.
    pub fn candidates(&self, image: &ImageReference) -> Vec<PathBuf> {
        let mut repos = vec![image.repository.clone()];
        if image.registry == DOCKER_HUB
            && let Some(short) = image.repository.strip_prefix("library/")
        {
            repos.push(short.to_string());
        }
        let mut names = Vec::new();
        if let Some(tag) = &image.tag {
            names.push(format!(":{tag}.tar"));
        }
        if let Some(digest) = &image.digest {
            names.push(format!("@{digest}.tar"));
        }
        let mut out = Vec::new();
        for name in &names {
            for repo in &repos {
                out.push(self.inner.dir.join(format!("{repo}{name}")));
            }
        }
        out
    }

    fn find_archive(&self, image: &ImageReference) -> Result<PathBuf, ProviderError> {
        let candidates = self.candidates(image);
        if let Some(found) = candidates.iter().find(|p| p.is_file()) {
            return Ok(found.clone());
        }
        let tried: Vec<_> = candidates.iter().map(|p| p.display().to_string()).collect();
        Err(ProviderError::NotFound {
            reference: image.to_string(),
            detail: format!("no image archive at {}", tried.join(" or ")),
        })
    }

    pub async fn resolve(&self, image: &ImageReference) -> Result<ResolvedImage, ProviderError> {
        let path = self.find_archive(image)?;
        let this = self.clone();
        let image = image.clone();
        spawn_blocking(move || {
            let stamp = stamp(&path)?;
            let (resolved, blobs) = resolve_archive(&path, &image)?;
            let mut cache = this.inner.blobs.lock().unwrap_or_else(|e| e.into_inner());
            let entry = cache
                .entry(path.clone())
                .or_insert_with(|| (stamp, HashMap::new()));
            if entry.0 != stamp {
                *entry = (stamp, HashMap::new());
            }
            entry.1.extend(blobs);
            Ok(resolved)
        })
        .await
    }

    /// Copies one blob out of the image's archive into `dest` (created or
    /// truncated), verifying its digest; `dest` is removed on failure.
    pub async fn fetch_blob(
        &self,
        image: &ImageReference,
        blob: &LayerDescriptor,
        dest: &Path,
    ) -> Result<(), ProviderError> {
        validate_digest(&blob.digest).map_err(|detail| ProviderError::InvalidManifest {
            reference: image.to_string(),
            detail,
        })?;
        let path = self.find_archive(image)?;
        let cached = {
            let stamp = stamp(&path)?;
            let cache = self.inner.blobs.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&path)
                .filter(|(s, _)| *s == stamp)
                .and_then(|(_, blobs)| blobs.get(&blob.digest).cloned())
        };
        let entry = match cached {
            Some(entry) => Some(entry),
            None => {
                // Not resolved by this process (e.g. after a restart): index again.
                self.resolve(image).await?;
                let cache = self.inner.blobs.lock().unwrap_or_else(|e| e.into_inner());
                cache
                    .get(&path)
                    .and_then(|(_, blobs)| blobs.get(&blob.digest).cloned())
            }
        };
        let Some(entry) = entry else {
            return Err(ProviderError::NotFound {
                reference: image.digested_name(&blob.digest),
                detail: format!("blob is not in {}", path.display()),
            });
        };
        let blob = blob.clone();
        let dest = dest.to_path_buf();
        let name = image.digested_name(&blob.digest);
        spawn_blocking(move || {
            let result = copy_entry(&path, &entry, &name, &blob, &dest);
            if result.is_err() {
                let _ = std::fs::remove_file(&dest);
            }
            result
        })
        .await
    }
}

async fn spawn_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProviderError> + Send + 'static,
) -> Result<T, ProviderError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ProviderError::io(
            Path::new("<local provider>"),
            io::Error::other(e),
        ))
    })
}

fn stamp(path: &Path) -> Result<ArchiveStamp, ProviderError> {
    let meta = std::fs::metadata(path).map_err(|e| ProviderError::io(path, e))?;
    Ok((meta.modified().ok(), meta.len()))
}

// ---- reading archives ------------------------------------------------------

#[derive(Debug, Clone)]
enum EntryKind {
    File {
        size: u64,
    },
    /// Target as an archive path (symlinks resolved against their directory).
    Link(String),
}

/// Archive paths without `./` and with `..` applied, so links and names compare.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

/// Calls `visit` with every entry of the archive, plain or gzip'd as a whole.
/// Plain archives skip unread file data by seeking, so looking for one entry
/// does not read the layers before it. `visit` returns false to stop.
fn scan(
    path: &Path,
    mut visit: impl FnMut(&str, &EntryKind, &mut dyn Read) -> Result<bool, ProviderError>,
) -> Result<(), ProviderError> {
    let io_err = |e: io::Error| ProviderError::io(path, e);
    let mut file = File::open(path).map_err(io_err)?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(io_err)?;
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;

    fn walk<'a, R: Read + 'a>(
        path: &Path,
        entries: impl Iterator<Item = io::Result<tar::Entry<'a, R>>>,
        visit: &mut Visit<'_>,
    ) -> Result<(), ProviderError> {
        for entry in entries {
            let mut entry = entry.map_err(|e| ProviderError::io(path, e))?;
            let name = normalize(&entry.path().map_err(|e| ProviderError::io(path, e))?);
            let header = entry.header();
            let kind = match header.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    EntryKind::File { size: entry.size() }
                }
                t @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                    let Some(target) = entry.link_name().map_err(|e| ProviderError::io(path, e))?
                    else {
                        continue;
                    };
                    let target = if t == tar::EntryType::Symlink && !target.is_absolute() {
                        Path::new(&name)
                            .parent()
                            .unwrap_or(Path::new(""))
                            .join(target)
                    } else {
                        target.into_owned()
                    };
                    EntryKind::Link(normalize(&target))
                }
                _ => continue,
            };
            if !visit(&name, &kind, &mut entry)? {
                break;
            }
        }
        Ok(())
    }

    if n == 2 && magic == GZIP_MAGIC {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
        let entries = archive.entries().map_err(io_err)?;
        walk(path, entries, &mut visit)
    } else {
        let mut archive = tar::Archive::new(file);
        let entries = archive.entries_with_seek().map_err(io_err)?;
        walk(path, entries, &mut visit)
    }
}

/// All entries, plus the contents of the few small metadata files.
struct Listing {
    entries: HashMap<String, EntryKind>,
    files: HashMap<String, Vec<u8>>,
}

impl Listing {
    fn read(path: &Path, wanted: &[&str]) -> Result<Self, ProviderError> {
        let mut entries = HashMap::new();
        let mut files = HashMap::new();
        scan(path, |name, kind, data| {
            entries.insert(name.to_string(), kind.clone());
            if wanted.contains(&name)
                && let EntryKind::File { .. } = kind
            {
                files.insert(name.to_string(), read_small(path, name, data)?);
            }
            Ok(true)
        })?;
        Ok(Self { entries, files })
    }

    /// Follows links to the regular file holding `name`'s data.
    fn resolve(&self, name: &str) -> Option<(String, u64)> {
        let mut name = name.to_string();
        for _ in 0..16 {
            match self.entries.get(&name)? {
                EntryKind::File { size } => return Some((name, *size)),
                EntryKind::Link(target) => name = target.clone(),
            }
        }
        None
    }
}

fn read_small(path: &Path, name: &str, data: &mut dyn Read) -> Result<Vec<u8>, ProviderError> {
    let mut buf = Vec::new();
    data.take(SMALL_MAX + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ProviderError::io(path, e))?;
    if buf.len() as u64 > SMALL_MAX {
        return Err(ProviderError::io(
            path,
            io::Error::other(format!("{name} is larger than {SMALL_MAX} bytes")),
        ));
    }
    Ok(buf)
}

/// Reads the named (small) entries in one pass.
fn read_entries(
    path: &Path,
    listing: &Listing,
    names: &[&str],
) -> Result<HashMap<String, Vec<u8>>, ProviderError> {
    let mut by_file: HashMap<String, Vec<String>> = HashMap::new();
    for name in names {
        let (file, _) = listing.resolve(name).ok_or_else(|| missing(path, name))?;
        by_file.entry(file).or_default().push(name.to_string());
    }
    let mut out = HashMap::new();
    scan(path, |name, kind, data| {
        if let (Some(wanting), EntryKind::File { .. }) = (by_file.get(name), kind) {
            let bytes = read_small(path, name, data)?;
            for w in wanting {
                out.insert(w.clone(), bytes.clone());
            }
        }
        Ok(out.len() < names.len())
    })?;
    match names.iter().find(|n| !out.contains_key(**n)) {
        Some(name) => Err(missing(path, name)),
        None => Ok(out),
    }
}

fn missing(path: &Path, name: &str) -> ProviderError {
    ProviderError::InvalidManifest {
        reference: path.display().to_string(),
        detail: format!("archive has no entry {name:?}"),
    }
}

fn sniff_layer_type(head: &[u8]) -> &'static str {
    if head.starts_with(&GZIP_MAGIC) {
        OCI_LAYER_GZIP
    } else if head.starts_with(&ZSTD_MAGIC) {
        OCI_LAYER_ZSTD
    } else {
        OCI_LAYER
    }
}

// ---- resolving -------------------------------------------------------------

fn resolve_archive(
    path: &Path,
    image: &ImageReference,
) -> Result<(ResolvedImage, Blobs), ProviderError> {
    let listing = Listing::read(path, &["index.json", "manifest.json", "oci-layout"])?;
    // Docker 25+ writes both; the OCI layout has the registry's real digests.
    if listing.files.contains_key("index.json") {
        resolve_oci(path, image, &listing)
    } else if let Some(manifest) = listing.files.get("manifest.json") {
        resolve_docker_save(path, image, &listing, manifest)
    } else {
        Err(ProviderError::InvalidManifest {
            reference: path.display().to_string(),
            detail: "neither a docker save archive (manifest.json) nor an OCI layout (index.json)"
                .into(),
        })
    }
}

fn blob_name(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

/// Names an index entry may carry for `image`: the OCI tag annotation, or
/// the full name as containerd and Docker write it.
fn ref_names(image: &ImageReference) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(tag) = &image.tag {
        names.push(tag.clone());
        names.push(format!("{}:{tag}", image.name()));
        names.push(format!("{}:{tag}", image.repository));
        if let Some(short) = image
            .repository
            .strip_prefix("library/")
            .filter(|_| image.registry == DOCKER_HUB)
        {
            names.push(format!("{short}:{tag}"));
        }
    }
    names.push(image.to_string());
    names
}

fn resolve_oci(
    path: &Path,
    image: &ImageReference,
    listing: &Listing,
) -> Result<(ResolvedImage, Blobs), ProviderError> {
    let display = image.to_string();
    let index = parse_manifest(&listing.files["index.json"], &display)?;
    let names = ref_names(image);
    let annotated = |d: &Descriptor| {
        d.annotations.as_ref().is_some_and(|a| {
            [
                "org.opencontainers.image.ref.name",
                "io.containerd.image.name",
            ]
            .iter()
            .filter_map(|k| a.get(*k))
            .any(|v| names.contains(v))
        })
    };
    let chosen = index
        .manifests
        .iter()
        .find(|d| image.digest.as_deref() == Some(d.digest.as_str()))
        .or_else(|| index.manifests.iter().find(|d| annotated(d)))
        .or(match index.manifests.as_slice() {
            [only] => Some(only),
            _ => None,
        })
        .cloned()
        .ok_or_else(|| ProviderError::NotFound {
            reference: display.clone(),
            detail: format!("no entry for it in index.json of {}", path.display()),
        })?;

    let mut descriptor = chosen;
    let mut accepted_digests = vec![descriptor.digest.clone()];
    let (manifest, media_type, parsed) = loop {
        validate_digest(&descriptor.digest).map_err(|detail| ProviderError::InvalidManifest {
            reference: display.clone(),
            detail,
        })?;
        let name = blob_name(&descriptor.digest);
        let bytes = read_entries(path, listing, &[&name])?
            .remove(&name)
            .unwrap_or_default();
        verify(&display, &descriptor.digest, &bytes)?;
        let parsed = parse_manifest(&bytes, &display)?;
        let media_type = manifest_media_type(descriptor.media_type.as_deref(), &parsed, &display)?;
        if !is_index(&media_type) {
            break (bytes, media_type, parsed);
        }
        if accepted_digests.len() > 2 {
            return Err(ProviderError::UnsupportedMediaType {
                reference: display,
                media_type: "index nested in an index nested in an index".into(),
            });
        }
        descriptor = pick_platform(&parsed, &display)?;
        accepted_digests.push(descriptor.digest.clone());
    };
    if let Some(wanted) = &image.digest
        && !accepted_digests.contains(wanted)
    {
        return Err(ProviderError::NotFound {
            reference: display,
            detail: format!("{} holds another image", path.display()),
        });
    }
    let (config, layers) = image_parts(&parsed, &display)?;
    let config_name = blob_name(&config.digest);
    let config_bytes = read_entries(path, listing, &[&config_name])?
        .remove(&config_name)
        .unwrap_or_default();
    verify(&display, &config.digest, &config_bytes)?;

    let blobs = layers
        .iter()
        .map(|l| {
            let name = blob_name(&l.digest);
            let file = listing.resolve(&name).map_or(name, |(file, _)| file);
            (l.digest.clone(), file)
        })
        .collect();
    Ok((
        ResolvedImage {
            manifest_digest: sha256_digest(&manifest),
            manifest_media_type: media_type,
            manifest,
            config_digest: config.digest,
            config: config_bytes,
            layers,
            endpoint: path.display().to_string(),
        },
        blobs,
    ))
}

fn verify(display: &str, expected: &str, bytes: &[u8]) -> Result<(), ProviderError> {
    let actual = sha256_digest(bytes);
    if actual != expected {
        return Err(ProviderError::DigestMismatch {
            blob: format!("{display} ({expected})"),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutManifest {
    schema_version: u32,
    media_type: &'static str,
    config: OutDescriptor,
    layers: Vec<OutDescriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutDescriptor {
    media_type: String,
    digest: String,
    size: u64,
}

fn resolve_docker_save(
    path: &Path,
    image: &ImageReference,
    listing: &Listing,
    manifest_json: &[u8],
) -> Result<(ResolvedImage, Blobs), ProviderError> {
    let display = image.to_string();
    let entries: Vec<SaveEntry> =
        serde_json::from_slice(manifest_json).map_err(|e| ProviderError::InvalidManifest {
            reference: path.display().to_string(),
            detail: format!("manifest.json: {e}"),
        })?;
    let names = ref_names(image);
    let entry = entries
        .iter()
        .find(|e| e.repo_tags.iter().flatten().any(|t| names.contains(t)))
        .or(match entries.as_slice() {
            [only] => Some(only),
            _ => None,
        })
        .ok_or_else(|| ProviderError::NotFound {
            reference: display.clone(),
            detail: format!("no RepoTags entry for it in {}", path.display()),
        })?;

    // One pass: the config in memory, every layer hashed as stored.
    let config_file = listing
        .resolve(&entry.config)
        .ok_or_else(|| missing(path, &entry.config))?
        .0;
    let mut layer_files = Vec::with_capacity(entry.layers.len());
    for layer in &entry.layers {
        layer_files.push(
            listing
                .resolve(layer)
                .ok_or_else(|| missing(path, layer))?
                .0,
        );
    }
    let mut config = None;
    let mut hashed: HashMap<String, (String, u64, &'static str)> = HashMap::new();
    scan(path, |name, kind, data| {
        if !matches!(kind, EntryKind::File { .. }) {
            return Ok(true);
        }
        if name == config_file {
            config = Some(read_small(path, name, data)?);
        } else if layer_files.iter().any(|l| l == name) {
            hashed.insert(name.to_string(), hash_stream(path, data)?);
        }
        Ok(true)
    })?;
    let config = config.ok_or_else(|| missing(path, &entry.config))?;
    let config_digest = sha256_digest(&config);

    let mut layers = Vec::with_capacity(layer_files.len());
    let mut blobs = HashMap::new();
    for file in &layer_files {
        let (digest, size, media_type) = hashed.get(file).ok_or_else(|| missing(path, file))?;
        blobs.insert(digest.clone(), file.clone());
        layers.push(LayerDescriptor {
            digest: digest.clone(),
            media_type: media_type.to_string(),
            size: *size,
        });
    }
    let manifest = serde_json::to_vec(&OutManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST,
        config: OutDescriptor {
            media_type: OCI_CONFIG.to_string(),
            digest: config_digest.clone(),
            size: config.len() as u64,
        },
        layers: layers
            .iter()
            .map(|l| OutDescriptor {
                media_type: l.media_type.clone(),
                digest: l.digest.clone(),
                size: l.size,
            })
            .collect(),
    })
    .expect("a manifest always serialises");
    let manifest_digest = sha256_digest(&manifest);
    if let Some(wanted) = &image.digest
        && *wanted != manifest_digest
    {
        return Err(ProviderError::NotFound {
            reference: display,
            detail: format!(
                "{} holds an image with manifest digest {manifest_digest}",
                path.display()
            ),
        });
    }
    Ok((
        ResolvedImage {
            manifest_digest,
            manifest_media_type: OCI_MANIFEST.to_string(),
            manifest,
            config_digest,
            config,
            layers,
            endpoint: path.display().to_string(),
        },
        blobs,
    ))
}

/// (digest, size, media type sniffed from the first bytes).
fn hash_stream(
    path: &Path,
    data: &mut dyn Read,
) -> Result<(String, u64, &'static str), ProviderError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut head = Vec::with_capacity(4);
    let mut size = 0u64;
    loop {
        let n = data
            .read(&mut buf)
            .map_err(|e| ProviderError::io(path, e))?;
        if n == 0 {
            break;
        }
        if head.len() < 4 {
            let take = (4 - head.len()).min(n);
            head.extend_from_slice(&buf[..take]);
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((
        format!("sha256:{}", hex::encode(hasher.finalize())),
        size,
        sniff_layer_type(&head),
    ))
}

/// `entry` is a regular file's name (links were followed when indexing).
fn copy_entry(
    archive: &Path,
    entry: &str,
    name: &str,
    blob: &LayerDescriptor,
    dest: &Path,
) -> Result<(), ProviderError> {
    let mut result = None;
    scan(archive, |n, kind, data| {
        if n != entry || !matches!(kind, EntryKind::File { .. }) {
            return Ok(true);
        }
        result = Some(write_verified(data, archive, name, blob, dest));
        Ok(false)
    })?;
    result.unwrap_or_else(|| Err(missing(archive, entry)))
}

fn write_verified(
    data: &mut dyn Read,
    archive: &Path,
    name: &str,
    blob: &LayerDescriptor,
    dest: &Path,
) -> Result<(), ProviderError> {
    let out = File::create(dest).map_err(|e| ProviderError::io(dest, e))?;
    let mut out = io::BufWriter::with_capacity(256 << 10, out);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut size = 0u64;
    loop {
        let n = data
            .read(&mut buf)
            .map_err(|e| ProviderError::io(archive, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        out.write_all(&buf[..n])
            .map_err(|e| ProviderError::io(dest, e))?;
    }
    if blob.size != 0 && size != blob.size {
        return Err(ProviderError::SizeMismatch {
            blob: name.to_string(),
            expected: blob.size,
            actual: size,
        });
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != blob.digest {
        return Err(ProviderError::DigestMismatch {
            blob: name.to_string(),
            expected: blob.digest.clone(),
            actual,
        });
    }
    // Flushed, not fsync'd: a staging file the store extracts and deletes at once.
    out.into_inner()
        .map(drop)
        .map_err(|e| ProviderError::io(dest, e.into_error()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provisioner::providers::ProviderErrorKind;
    use crate::provisioner::providers::manifest::{OCI_INDEX, host_platform};
    use crate::provisioner::providers::registry::tests::TestImage;

    enum E<'a> {
        File(&'a [u8]),
        Link(&'a str),
    }

    fn tar_of(entries: &[(&str, E)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, entry) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            match entry {
                E::File(data) => {
                    h.set_size(data.len() as u64);
                    tar.append_data(&mut h, name, *data).unwrap();
                }
                E::Link(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    tar.append_link(&mut h, name, target).unwrap();
                }
            }
        }
        tar.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn write(dir: &Path, name: &str, data: &[u8]) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    fn reference(s: &str) -> ImageReference {
        ImageReference::parse(s).unwrap()
    }

    async fn fetch(p: &LocalProvider, image: &ImageReference, layer: &LayerDescriptor) -> Vec<u8> {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("blob");
        p.fetch_blob(image, layer, &dest).await.unwrap();
        std::fs::read(dest).unwrap()
    }

    #[tokio::test]
    async fn docker_save_tarballs() {
        let dir = tempfile::tempdir().unwrap();
        let plain = tar_of(&[("one.txt", E::File(b"one"))]);
        let gzipped = gzip(&tar_of(&[("two.txt", E::File(b"two"))]));
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_name = format!("{}.json", &sha256_digest(config)[7..]);
        let manifest = format!(
            r#"[{{"Config":"{config_name}","RepoTags":["busybox:latest"],"Layers":["a/layer.tar","b/layer.tar","c/layer.tar"]}}]"#
        );
        // docker save writes repeated layers once and links the others to it.
        let archive = tar_of(&[
            ("a/layer.tar", E::File(&plain)),
            ("b/layer.tar", E::File(&gzipped)),
            ("c/layer.tar", E::Link("../a/layer.tar")),
            (&config_name, E::File(config)),
            ("manifest.json", E::File(manifest.as_bytes())),
        ]);
        write(dir.path(), "busybox:latest.tar", &archive);

        let p = LocalProvider::new(dir.path());
        let image = reference("busybox");
        let r = p.resolve(&image).await.unwrap();
        assert_eq!(r.config, config);
        assert_eq!(r.config_digest, sha256_digest(config));
        assert_eq!(r.manifest_digest, sha256_digest(&r.manifest));
        assert_eq!(r.manifest_media_type, OCI_MANIFEST);
        assert_eq!(
            r.endpoint,
            dir.path().join("busybox:latest.tar").display().to_string()
        );
        let expect = |data: &[u8], media_type: &str| LayerDescriptor {
            digest: sha256_digest(data),
            media_type: media_type.into(),
            size: data.len() as u64,
        };
        assert_eq!(
            r.layers,
            [
                expect(&plain, OCI_LAYER),
                expect(&gzipped, OCI_LAYER_GZIP),
                expect(&plain, OCI_LAYER)
            ]
        );
        // The synthesised manifest is a valid OCI manifest of the same parts.
        let parsed = parse_manifest(&r.manifest, "x").unwrap();
        let (config_desc, layers) = image_parts(&parsed, "x").unwrap();
        assert_eq!(config_desc.digest, r.config_digest);
        assert_eq!(layers, r.layers);

        assert_eq!(fetch(&p, &image, &r.layers[0]).await, plain);
        assert_eq!(fetch(&p, &image, &r.layers[1]).await, gzipped);
        // A fresh provider (a restarted daemon) indexes the archive again.
        let fresh = LocalProvider::new(dir.path());
        assert_eq!(fetch(&fresh, &image, &r.layers[2]).await, plain);

        // Pinning the synthesised digest works; another digest is another image.
        let pinned = reference(&format!("busybox:latest@{}", r.manifest_digest));
        assert_eq!(
            p.resolve(&pinned).await.unwrap().manifest_digest,
            r.manifest_digest
        );
        let other = reference(&format!("busybox:latest@sha256:{}", "0".repeat(64)));
        let e = p.resolve(&other).await.unwrap_err();
        assert!(matches!(e, ProviderError::NotFound { .. }), "{e}");
    }

    /// An OCI layout holding an index for amd64 + arm64, tagged `tag`.
    fn oci_layout(tag: &str, images: &[(&TestImage, &str)]) -> Vec<(String, Vec<u8>)> {
        let mut blobs = Vec::new();
        let mut manifests = Vec::new();
        for (image, arch) in images {
            for data in [&image.config, &image.layer, &image.manifest] {
                blobs.push((blob_name(&sha256_digest(data)), data.clone()));
            }
            manifests.push(
                serde_json::json!({"mediaType": OCI_MANIFEST, "digest": image.manifest_digest,
                "size": image.manifest.len(), "platform": {"architecture": arch, "os": "linux"}}),
            );
        }
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}))
        .unwrap();
        let top = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": OCI_INDEX, "digest": sha256_digest(&index), "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
        .unwrap();
        blobs.push((blob_name(&sha256_digest(&index)), index));
        blobs.push(("index.json".into(), top));
        blobs.push((
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ));
        blobs
    }

    fn tar_of_owned(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
        let borrowed: Vec<_> = entries
            .iter()
            .map(|(n, d)| (n.as_str(), E::File(d)))
            .collect();
        tar_of(&borrowed)
    }

    #[tokio::test]
    async fn oci_layout_archives() {
        let dir = tempfile::tempdir().unwrap();
        let amd64 = TestImage::build("amd64", "amd64");
        let arm64 = TestImage::build("arm64", "arm64");
        let layout = oci_layout("1.29-2", &[(&amd64, "amd64"), (&arm64, "arm64")]);
        // Compressed as a whole, in a subdirectory named after the repository.
        write(
            dir.path(),
            "e2e-test-images/busybox:1.29-2.tar",
            &gzip(&tar_of_owned(&layout)),
        );

        let p = LocalProvider::new(dir.path());
        let image = reference("registry.k8s.io/e2e-test-images/busybox:1.29-2");
        let r = p.resolve(&image).await.unwrap();
        let expected = if host_platform().1 == "arm64" {
            &arm64
        } else {
            &amd64
        };
        assert_eq!(r.manifest_digest, expected.manifest_digest);
        assert_eq!(r.manifest, expected.manifest);
        assert_eq!(r.config, expected.config);
        assert_eq!(r.layers, [expected.layer_descriptor()]);
        assert_eq!(fetch(&p, &image, &r.layers[0]).await, expected.layer);

        // A layer whose bytes do not match its digest: error, and no file left.
        let mut corrupt = oci_layout("v1", &[(&amd64, host_platform().1)]);
        let layer_name = blob_name(&sha256_digest(&amd64.layer));
        for (name, data) in &mut corrupt {
            if *name == layer_name {
                let last = data.len() - 1;
                data[last] ^= 0xff;
            }
        }
        write(
            dir.path(),
            "library/corrupt:v1.tar",
            &tar_of_owned(&corrupt),
        );
        let image = reference("corrupt:v1");
        let r = p.resolve(&image).await.unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("blob");
        let e = p.fetch_blob(&image, &r.layers[0], &dest).await.unwrap_err();
        assert!(
            matches!(&e, ProviderError::DigestMismatch { expected, .. } if *expected == r.layers[0].digest),
            "{e}"
        );
        assert_eq!(e.kind(), ProviderErrorKind::Corrupt);
        assert!(!dest.exists());
    }

    #[tokio::test]
    async fn missing_archives_name_the_paths_tried() {
        let dir = tempfile::tempdir().unwrap();
        let p = LocalProvider::new(dir.path());
        let e = p.resolve(&reference("busybox:1.36")).await.unwrap_err();
        assert_eq!(e.kind(), ProviderErrorKind::NotFound);
        let text = e.to_string();
        for tried in ["library/busybox:1.36.tar", "/busybox:1.36.tar"] {
            assert!(
                text.contains(
                    &dir.path()
                        .join(tried.trim_start_matches('/'))
                        .display()
                        .to_string()
                ),
                "{text}"
            );
        }
        assert_eq!(
            p.candidates(&reference("quay.io/a/b@sha256:0000000000000000000000000000000000000000000000000000000000000000")),
            [dir.path().join("a/b@sha256:0000000000000000000000000000000000000000000000000000000000000000.tar")]
        );

        // Something that is no image archive at all.
        write(
            dir.path(),
            "junk:v1.tar",
            &tar_of(&[("hello", E::File(b"hi"))]),
        );
        let e = p.resolve(&reference("junk:v1")).await.unwrap_err();
        assert!(matches!(e, ProviderError::InvalidManifest { .. }), "{e}");
    }
}
