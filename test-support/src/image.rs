//! Image manifests, configs and indexes, built in memory from [`Layer`]s.
//!
//! JSON goes through `serde_json::Value`, whose maps are sorted, so a build is byte-for-byte
//! reproducible and digests can be compared across runs and processes.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde_json::{Map, Value, json};

use crate::layer::{Compression, Layer, TarEntry};
use crate::sha256_digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest media type, for `Accept` headers.
pub const MANIFEST_ACCEPT: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// Which manifest schema to emit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestFormat {
    /// OCI image manifest v1.
    Oci,
    /// Docker image manifest v2 schema 2 (gzip layers only, as Docker defines no others).
    Docker,
}

impl ManifestFormat {
    fn manifest_media_type(self) -> &'static str {
        match self {
            Self::Oci => OCI_MANIFEST,
            Self::Docker => DOCKER_MANIFEST,
        }
    }

    fn config_media_type(self) -> &'static str {
        match self {
            Self::Oci => OCI_CONFIG,
            Self::Docker => DOCKER_CONFIG,
        }
    }

    fn layer_media_type(self, compression: Compression) -> &'static str {
        match (self, compression) {
            (Self::Oci, Compression::None) => OCI_LAYER_TAR,
            (Self::Oci, Compression::Gzip) => OCI_LAYER_GZIP,
            (Self::Oci, Compression::Zstd) => OCI_LAYER_ZSTD,
            (Self::Docker, Compression::Gzip) => DOCKER_LAYER_GZIP,
            (Self::Docker, c) => panic!("Docker schema 2 has no {c:?} layer media type"),
        }
    }
}

/// Builds one image: layers (bottom first), platform and the config's `config` section.
///
/// ```no_run
/// use serde_json::json;
/// use test_support::{Compression, ImageBuilder, Layer, TarEntry, images::busybox_entries};
/// let mut entries = busybox_entries();
/// entries.push(TarEntry::file("/hello.txt", "hi"));
/// let image = ImageBuilder::oci()
///     .layer(Layer::new(entries), Compression::Gzip)
///     .config("Cmd", json!(["/bin/cat", "/hello.txt"]))
///     .build();
/// ```
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    format: ManifestFormat,
    os: String,
    architecture: String,
    layers: Vec<(Layer, Compression)>,
    config: Map<String, Value>,
}

impl ImageBuilder {
    /// An empty image for `linux/<host arch>` with the given manifest schema.
    pub fn new(format: ManifestFormat) -> Self {
        Self {
            format,
            os: "linux".into(),
            architecture: crate::host_arch().into(),
            layers: Vec::new(),
            config: Map::new(),
        }
    }

    /// Shorthand for `ImageBuilder::new(ManifestFormat::Oci)`.
    pub fn oci() -> Self {
        Self::new(ManifestFormat::Oci)
    }

    /// Shorthand for `ImageBuilder::new(ManifestFormat::Docker)`.
    pub fn docker() -> Self {
        Self::new(ManifestFormat::Docker)
    }

    /// Adds a layer on top of the previous ones.
    pub fn layer(mut self, layer: Layer, compression: Compression) -> Self {
        self.layers.push((layer, compression));
        self
    }

    /// Sets the GOARCH-spelled architecture (default: the host's).
    pub fn arch(mut self, architecture: &str) -> Self {
        self.architecture = architecture.into();
        self
    }

    /// Sets one field of the config's `config` object: `Cmd`, `Entrypoint`, `Env`,
    /// `WorkingDir`, `User`, `StopSignal`, `ExposedPorts`, `Volumes`, `Labels`...
    pub fn config(mut self, key: &str, value: Value) -> Self {
        self.config.insert(key.into(), value);
        self
    }

    /// Compresses the layers and writes config and manifest.
    pub fn build(self) -> BuiltImage {
        let layers: Vec<BuiltLayer> = self
            .layers
            .iter()
            .map(|(layer, compression)| {
                let blob = layer.compressed(*compression);
                BuiltLayer {
                    media_type: self.format.layer_media_type(*compression),
                    digest: sha256_digest(&blob),
                    blob,
                    diff_id: layer.diff_id().to_owned(),
                    tar: layer.tar().to_vec(),
                }
            })
            .collect();
        let config = json!({
            "created": "2020-01-01T00:00:00Z",
            "architecture": self.architecture,
            "os": self.os,
            "config": self.config,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>(),
            },
            "history": layers.iter().map(|_| json!({
                "created": "2020-01-01T00:00:00Z",
                "created_by": "test-support",
            })).collect::<Vec<_>>(),
        });
        let config = serde_json::to_vec(&config).expect("serialize a config");
        let config_digest = sha256_digest(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": self.format.manifest_media_type(),
            "config": descriptor(self.format.config_media_type(), &config_digest, config.len()),
            "layers": layers
                .iter()
                .map(|l| descriptor(l.media_type, &l.digest, l.blob.len()))
                .collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec(&manifest).expect("serialize a manifest");
        BuiltImage {
            media_type: self.format.manifest_media_type(),
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config_media_type: self.format.config_media_type(),
            config_digest,
            config,
            layers,
            os: self.os,
            architecture: self.architecture,
        }
    }
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> Value {
    json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// One layer as pushed: the compressed blob plus the tar it came from.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    pub media_type: &'static str,
    /// The blob in the registry (compressed as the media type says).
    pub blob: Vec<u8>,
    /// `sha256:` of `blob`.
    pub digest: String,
    /// `sha256:` of `tar`.
    pub diff_id: String,
    /// The uncompressed tar.
    pub tar: Vec<u8>,
}

/// A complete image in memory: manifest, config and layer blobs, with their digests.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub media_type: &'static str,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config_media_type: &'static str,
    pub config: Vec<u8>,
    /// `sha256:` of the config: the image id.
    pub config_digest: String,
    pub layers: Vec<BuiltLayer>,
    pub os: String,
    pub architecture: String,
}

impl BuiltImage {
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest.clone()).collect()
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    /// Every blob the registry must hold for this image: (digest, bytes), config first.
    pub fn blobs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        std::iter::once((self.config_digest.as_str(), self.config.as_slice())).chain(
            self.layers
                .iter()
                .map(|l| (l.digest.as_str(), l.blob.as_slice())),
        )
    }

    /// Writes a `docker save`-style archive: `manifest.json`, `<config hex>.json` and
    /// `<diff_id hex>/layer.tar` (uncompressed), plus the legacy `repositories` file.
    /// `repo_tags` are like `"busybox:latest"`; they may be empty (an untagged image).
    pub fn write_docker_archive(&self, path: &Path, repo_tags: &[&str]) -> Result<()> {
        let hex = |digest: &str| digest.trim_start_matches("sha256:").to_owned();
        let config_name = format!("{}.json", hex(&self.config_digest));
        let layer_names: Vec<String> = self
            .layers
            .iter()
            .map(|l| format!("{}/layer.tar", hex(&l.diff_id)))
            .collect();
        let manifest = json!([{
            "Config": config_name,
            "RepoTags": repo_tags,
            "Layers": layer_names,
        }]);
        let mut repositories = Map::new();
        if let Some(top) = self.layers.last() {
            for repo_tag in repo_tags {
                let (repo, tag) = repo_tag.rsplit_once(':').context("repo tag without ':'")?;
                let tags = repositories.entry(repo).or_insert_with(|| json!({}));
                tags[tag] = json!(hex(&top.diff_id));
            }
        }
        let mut entries = vec![
            TarEntry::file("manifest.json", serde_json::to_vec(&manifest)?),
            TarEntry::file("repositories", serde_json::to_vec(&repositories)?),
            TarEntry::file(config_name, self.config.clone()),
        ];
        for (layer, name) in self.layers.iter().zip(layer_names) {
            entries.push(TarEntry::file(name, layer.tar.clone()));
        }
        std::fs::write(path, Layer::new(entries).tar())
            .with_context(|| format!("write {}", path.display()))
    }
}

/// An OCI image index over several images (by platform).
#[derive(Clone, Debug)]
pub struct BuiltIndex {
    pub media_type: &'static str,
    pub manifest: Vec<u8>,
    pub digest: String,
    /// The images, in index order.
    pub images: Vec<BuiltImage>,
}

impl BuiltIndex {
    /// An OCI index listing `images` with their `os`/`architecture` as platform, in order.
    pub fn new(images: Vec<BuiltImage>) -> Result<Self> {
        ensure!(!images.is_empty(), "an index needs at least one image");
        let manifests: Vec<Value> = images
            .iter()
            .map(|image| {
                let mut d = descriptor(
                    image.media_type,
                    &image.manifest_digest,
                    image.manifest.len(),
                );
                d["platform"] = json!({ "os": image.os, "architecture": image.architecture });
                d
            })
            .collect();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        }))?;
        Ok(Self {
            media_type: OCI_INDEX,
            digest: sha256_digest(&manifest),
            manifest,
            images,
        })
    }
}
