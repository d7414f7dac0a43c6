//! Image manifests, indexes and configs: the media types, the JSON shapes, choosing
//! this host's platform from an index, and what a resolved image is. Shared by the
//! registry and the local-archive providers.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::error::ProviderError;
use crate::provisioner::reference::validate_digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Layer media types the store can unpack (plain, gzip, zstd tar, including
/// the "non-distributable" spellings, whose blobs are still fetched by digest).
const LAYER_TYPES: &[&str] = &[
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    DOCKER_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDescriptor {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// Digest of the platform manifest (not of an index it was picked from).
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest: Vec<u8>,
    pub config_digest: String,
    pub config: Vec<u8>,
    pub layers: Vec<LayerDescriptor>,
    /// Which mirror or registry answered (base URL, or archive path for local images).
    pub endpoint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestJson {
    #[serde(default)]
    pub schema_version: Option<u32>,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

pub(crate) fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// The media type of a fetched manifest: Content-Type when it is specific,
/// else the document's own `mediaType`, else its shape (OCI allows both to be
/// absent).
pub(crate) fn manifest_media_type(
    content_type: Option<&str>,
    parsed: &ManifestJson,
    reference: &str,
) -> Result<String, ProviderError> {
    let header = content_type
        .map(|ct| ct.split(';').next().unwrap_or("").trim())
        .filter(|ct| ct.starts_with("application/vnd."));
    let media_type = match (header, parsed.media_type.as_deref()) {
        (Some(h), _) => h.to_string(),
        (None, Some(m)) => m.to_string(),
        (None, None) if !parsed.manifests.is_empty() => OCI_INDEX.to_string(),
        (None, None) if parsed.config.is_some() => OCI_MANIFEST.to_string(),
        (None, None) => {
            return Err(ProviderError::InvalidManifest {
                reference: reference.to_string(),
                detail: "neither an image manifest nor an index".into(),
            });
        }
    };
    if ![
        OCI_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
    ]
    .contains(&media_type.as_str())
    {
        return Err(ProviderError::UnsupportedMediaType {
            reference: reference.to_string(),
            media_type,
        });
    }
    Ok(media_type)
}

pub(crate) fn parse_manifest(bytes: &[u8], reference: &str) -> Result<ManifestJson, ProviderError> {
    let parsed: ManifestJson =
        serde_json::from_slice(bytes).map_err(|e| ProviderError::InvalidManifest {
            reference: reference.to_string(),
            detail: e.to_string(),
        })?;
    if parsed.schema_version != Some(2) {
        // Schema 1 (signed JWS manifests) is long gone from registries.
        return Err(ProviderError::UnsupportedMediaType {
            reference: reference.to_string(),
            media_type: format!(
                "manifest schemaVersion {}",
                parsed
                    .schema_version
                    .map_or("missing".to_string(), |v| v.to_string())
            ),
        });
    }
    Ok(parsed)
}

/// Config descriptor and layers of an image manifest, with media types checked
/// so an artifact (Helm chart, WASM, ...) fails here with a precise error.
pub(crate) fn image_parts(
    parsed: &ManifestJson,
    reference: &str,
) -> Result<(Descriptor, Vec<LayerDescriptor>), ProviderError> {
    let config = parsed
        .config
        .clone()
        .ok_or_else(|| ProviderError::InvalidManifest {
            reference: reference.to_string(),
            detail: "manifest has no config".into(),
        })?;
    let config_type = config.media_type.as_deref().unwrap_or(OCI_CONFIG);
    if config_type != OCI_CONFIG && config_type != DOCKER_CONFIG {
        return Err(ProviderError::UnsupportedMediaType {
            reference: reference.to_string(),
            media_type: config_type.to_string(),
        });
    }
    check_digest_syntax(&config.digest, reference)?;
    let mut layers = Vec::with_capacity(parsed.layers.len());
    for layer in &parsed.layers {
        let media_type = layer.media_type.clone().unwrap_or_default();
        if !LAYER_TYPES.contains(&media_type.as_str()) {
            return Err(ProviderError::UnsupportedMediaType {
                reference: reference.to_string(),
                media_type,
            });
        }
        check_digest_syntax(&layer.digest, reference)?;
        layers.push(LayerDescriptor {
            digest: layer.digest.clone(),
            media_type,
            size: layer.size,
        });
    }
    Ok((config, layers))
}

pub(crate) fn check_digest_syntax(digest: &str, reference: &str) -> Result<(), ProviderError> {
    validate_digest(digest).map_err(|detail| ProviderError::InvalidManifest {
        reference: reference.to_string(),
        detail,
    })
}

/// (os, GOARCH, preferred variant) of this machine.
pub(crate) fn host_platform() -> (&'static str, &'static str, Option<&'static str>) {
    let (arch, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "powerpc64" => ("ppc64", None),
        "loongarch64" => ("loong64", None),
        "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
        other => (other, None), // s390x, riscv64 are spelled the same
    };
    ("linux", arch, variant)
}

pub(crate) fn platform_string() -> String {
    let (os, arch, variant) = host_platform();
    match variant {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    }
}

/// Picks this machine's entry of an index: an exact variant first, then an
/// entry without a variant, then any variant of the architecture.
pub(crate) fn pick_platform(
    index: &ManifestJson,
    reference: &str,
) -> Result<Descriptor, ProviderError> {
    let (os, arch, variant) = host_platform();
    index
        .manifests
        .iter()
        .filter_map(|d| {
            let p = d.platform.as_ref()?;
            if p.os != os || p.architecture != arch {
                return None;
            }
            let rank = match p.variant.as_deref().filter(|v| !v.is_empty()) {
                v if v == variant => 0,
                None => 1,
                Some(_) => 2,
            };
            Some((rank, d))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, d)| d.clone())
        .ok_or_else(|| ProviderError::NoMatchingPlatform {
            reference: reference.to_string(),
            platform: platform_string(),
        })
}
