//! The registry provider (Mesos `--image_providers=docker` with a registry
//! `--docker_registry`): Docker Registry HTTP API v2 / OCI distribution.
//!
//! `resolve` turns a reference into a verified manifest and config (small, in
//! memory); `fetch_blob` streams one layer to a file while hashing it, so a
//! layer is never held in memory and never lands unverified.
//!
//! Errors carry a [`ProviderErrorKind`] whose docs give the recommended gRPC
//! code; kubelet retries UNAVAILABLE pulls with back-off and reports the rest.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

pub use super::auth::Credentials;
use super::auth::{TokenCache, parse_challenges};
use crate::provisioner::reference::{DOCKER_HUB, ImageReference, validate_digest};

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

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
/// containerd's limit; a manifest bigger than this is not an image manifest.
const MANIFEST_MAX: usize = 4 << 20;
const CONFIG_MAX: usize = 16 << 20;
const DOCKER_HUB_URL: &str = "https://registry-1.docker.io";

#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Per registry host as written in image names (`docker.io`, `localhost:5000`).
    pub hosts: HashMap<String, HostConfig>,
    /// Mesos `--docker_registry` as a URL: where names without a host
    /// (normalised to `docker.io`) are pulled from. Default Docker Hub.
    pub default_registry: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// Endpoints such as `http://127.0.0.1:5000`, tried in order before the host itself.
    pub mirrors: Vec<String>,
    /// Extra PEM roots trusted for this host and its mirrors.
    pub ca_file: Option<PathBuf>,
}

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

/// What kind of failure, for the CRI layer's choice of gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderErrorKind {
    /// UNAVAILABLE: network trouble, a registry-side 5xx or rate limiting; retrying may help.
    Unreachable,
    /// NOT_FOUND: no such repository, tag, blob, archive, or no entry for this platform.
    NotFound,
    /// UNAUTHENTICATED: the registry refused us, with or without credentials.
    Unauthorized,
    /// INVALID_ARGUMENT: the image exists but is not something we can run
    /// (unsupported media type, artifact instead of an image).
    BadInput,
    /// DATA_LOSS (or INTERNAL): content did not match its digest or size, or is malformed.
    Corrupt,
    /// INTERNAL/UNKNOWN: local I/O, provider misconfiguration, unexpected HTTP status.
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("registry {address} is unreachable: {detail}")]
    Unreachable { address: String, detail: String },
    /// The registry's certificate was refused: persistent, unlike `Unreachable`.
    #[error("TLS with registry {address} failed: {detail}")]
    Tls { address: String, detail: String },
    #[error("image {reference} not found: {detail}")]
    NotFound { reference: String, detail: String },
    #[error("not authorized to pull from {registry}: {detail}")]
    Unauthorized { registry: String, detail: String },
    #[error("digest mismatch for {blob}: expected {expected}, got {actual}")]
    DigestMismatch {
        blob: String,
        expected: String,
        actual: String,
    },
    #[error("size mismatch for {blob}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        blob: String,
        expected: u64,
        actual: u64,
    },
    #[error("{reference}: unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
    },
    #[error("{reference}: invalid manifest: {detail}")]
    InvalidManifest { reference: String, detail: String },
    #[error("image {reference} has no manifest for platform {platform}")]
    NoMatchingPlatform { reference: String, platform: String },
    #[error("bad image provider configuration: {detail}")]
    BadConfig { detail: String },
    #[error("{url} answered HTTP {status}: {body}")]
    Http {
        status: u16,
        url: String,
        body: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ProviderError {
    pub fn kind(&self) -> ProviderErrorKind {
        use ProviderErrorKind as K;
        match self {
            Self::Unreachable { .. } => K::Unreachable,
            Self::NotFound { .. } | Self::NoMatchingPlatform { .. } => K::NotFound,
            Self::Unauthorized { .. } => K::Unauthorized,
            Self::UnsupportedMediaType { .. } => K::BadInput,
            Self::DigestMismatch { .. }
            | Self::SizeMismatch { .. }
            | Self::InvalidManifest { .. } => K::Corrupt,
            Self::Http { status, .. } if *status == 429 || *status >= 500 => K::Unreachable,
            Self::Http { .. } | Self::Tls { .. } | Self::BadConfig { .. } | Self::Io { .. } => {
                K::Other
            }
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn from_reqwest(address: &str, url: &str, e: reqwest::Error) -> Self {
        if e.is_builder() {
            return Self::BadConfig {
                detail: format!("{url}: {}", error_chain(&e)),
            };
        }
        if is_tls_error(&e) {
            return Self::Tls {
                address: address.to_string(),
                detail: error_chain(&e),
            };
        }
        // Connect failures, timeouts and connections dropped mid-body are all
        // "the registry could not be talked to".
        Self::Unreachable {
            address: address.to_string(),
            detail: error_chain(&e),
        }
    }
}

fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    // io::Error's `source()` skips the error it wraps, and the TLS stack nests
    // io::Errors, so those are unwrapped by hand.
    fn in_io(io: &std::io::Error) -> bool {
        match io.get_ref() {
            Some(inner) if inner.is::<rustls::Error>() => true,
            Some(inner) => inner.downcast_ref::<std::io::Error>().is_some_and(in_io),
            None => false,
        }
    }
    let mut source = Some(e);
    while let Some(err) = source {
        if err.is::<rustls::Error>() || err.downcast_ref::<std::io::Error>().is_some_and(in_io) {
            return true;
        }
        source = err.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

/// `host:port` of a URL, the way errors name an address.
pub(crate) fn authority_of(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// A bounded, printable excerpt of an error body.
pub(crate) fn snippet(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<RegistryError>,
    }
    #[derive(Deserialize)]
    struct RegistryError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(errors) = serde_json::from_slice::<Errors>(body)
        && !errors.errors.is_empty()
    {
        return errors
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; ");
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(512) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

/// Reads a whole (small) body, refusing more than `max` bytes.
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    max: usize,
    address: &str,
    url: &str,
) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ProviderError::from_reqwest(address, url, e))?
    {
        if body.len() + chunk.len() > max {
            return Err(ProviderError::Http {
                status: resp.status().as_u16(),
                url: url.to_string(),
                body: format!("response larger than {max} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

// ---- manifests -------------------------------------------------------------

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

fn check_digest_syntax(digest: &str, reference: &str) -> Result<(), ProviderError> {
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

fn verify(blob: &str, expected: &str, bytes: &[u8]) -> Result<(), ProviderError> {
    let actual = sha256_digest(bytes);
    if actual != expected {
        return Err(ProviderError::DigestMismatch {
            blob: blob.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

// ---- the provider ----------------------------------------------------------

#[derive(Debug, Clone)]
struct Endpoint {
    /// `scheme://authority[/prefix]`, without `/v2`.
    base: String,
    /// `host:port`, for errors and the token cache.
    authority: String,
    ca: Option<PathBuf>,
    /// The image's own registry: the only endpoint that gets the caller's
    /// credentials, so a mirror never sees a pull secret meant for another host.
    origin: bool,
}

#[derive(Clone)]
pub struct RegistryProvider {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RegistryProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryProvider")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: RegistryConfig,
    clients: HashMap<Option<PathBuf>, reqwest::Client>,
    default_registry: Endpoint,
    tokens: TokenCache,
    /// Image name → the endpoint base that last served it, tried first so
    /// that every layer does not wait on a dead mirror again.
    preferred: Mutex<HashMap<String, String>>,
}

/// Parses an endpoint URL; a bare `host:port` means HTTPS (HTTP if `insecure`).
fn parse_endpoint(
    url: &str,
    insecure: bool,
    ca: Option<PathBuf>,
    origin: bool,
) -> Result<Endpoint, ProviderError> {
    let bad = |why: String| ProviderError::BadConfig {
        detail: format!("registry endpoint {url:?}: {why}"),
    };
    let full = if url.contains("://") {
        url.to_string()
    } else {
        format!("{}://{url}", if insecure { "http" } else { "https" })
    };
    let parsed = reqwest::Url::parse(&full).map_err(|e| bad(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad("expected an http(s) URL".into()));
    }
    let path = parsed.path().trim_end_matches('/');
    let path = path.strip_suffix("/v2").unwrap_or(path);
    let mut base = format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or(""));
    if let Some(port) = parsed.port() {
        base.push_str(&format!(":{port}"));
    }
    base.push_str(path);
    Ok(Endpoint {
        base,
        authority: authority_of(&parsed),
        ca,
        origin,
    })
}

fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn build_client(ca: Option<&Path>) -> Result<reqwest::Client, ProviderError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("cri-mesos/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        // Per read, not per request: big layers take long, stalls should not.
        .read_timeout(Duration::from_secs(300));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| ProviderError::BadConfig {
            detail: format!("CA file {}: {e}", ca.display()),
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ProviderError::BadConfig {
                detail: format!("CA file {}: {}", ca.display(), error_chain(&e)),
            })?;
        if certs.is_empty() {
            return Err(ProviderError::BadConfig {
                detail: format!("CA file {} holds no PEM certificate", ca.display()),
            });
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| ProviderError::BadConfig {
        detail: format!(
            "HTTP client{}: {}",
            ca.map(|c| format!(" with CA file {}", c.display()))
                .unwrap_or_default(),
            error_chain(&e)
        ),
    })
}

impl RegistryProvider {
    pub fn new(config: RegistryConfig) -> Result<Self, ProviderError> {
        // reqwest is built without a default crypto provider; both the daemon
        // and tests get ring from here. Err only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let mut cas: HashSet<Option<PathBuf>> = HashSet::from([None]);
        for (host, hc) in &config.hosts {
            cas.insert(hc.ca_file.clone());
            for mirror in &hc.mirrors {
                parse_endpoint(mirror, hc.insecure, None, false).map_err(|e| {
                    ProviderError::BadConfig {
                        detail: format!("mirror of {host}: {e}"),
                    }
                })?;
            }
        }
        let clients = cas
            .into_iter()
            .map(|ca| Ok((ca.clone(), build_client(ca.as_deref())?)))
            .collect::<Result<HashMap<_, _>, ProviderError>>()?;

        let hub = config.hosts.get(DOCKER_HUB);
        let default_url = config.default_registry.as_deref().unwrap_or(DOCKER_HUB_URL);
        if !default_url.contains("://") {
            return Err(ProviderError::BadConfig {
                detail: format!(
                    "--docker_registry {default_url:?} is neither an http(s) URL nor handled by the local provider"
                ),
            });
        }
        let mut default_registry = parse_endpoint(
            default_url,
            hub.is_some_and(|h| h.insecure),
            hub.and_then(|h| h.ca_file.clone()),
            true,
        )?;
        if let Some(hc) = config.hosts.get(&default_registry.authority) {
            default_registry.ca = hc.ca_file.clone();
        }

        Ok(Self {
            inner: Arc::new(Inner {
                config,
                clients,
                default_registry,
                tokens: TokenCache::default(),
                preferred: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Mirrors in configured order, then the registry itself; the endpoint
    /// that last worked for this image goes first.
    fn endpoints(&self, image: &ImageReference) -> Result<Vec<Endpoint>, ProviderError> {
        let cfg = &self.inner.config;
        let host_cfg = cfg
            .hosts
            .get(&image.registry)
            .or_else(|| cfg.hosts.get(image.registry_host_for_api()));
        let parent_ca = host_cfg.and_then(|h| h.ca_file.clone());
        let mut out = Vec::new();
        if let Some(hc) = host_cfg {
            for mirror in &hc.mirrors {
                let mut ep = parse_endpoint(mirror, hc.insecure, parent_ca.clone(), false)?;
                if let Some(own) = cfg.hosts.get(&ep.authority)
                    && own.ca_file.is_some()
                {
                    ep.ca = own.ca_file.clone();
                }
                out.push(ep);
            }
        }
        let origin = if image.registry == DOCKER_HUB {
            self.inner.default_registry.clone()
        } else {
            let host = image.registry_host_for_api();
            // Like Docker, loopback registries are plain HTTP unless configured.
            let insecure = host_cfg.map_or_else(|| is_loopback(host), |h| h.insecure);
            parse_endpoint(host, insecure, parent_ca, true)?
        };
        out.push(origin);

        let preferred = self
            .inner
            .preferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&image.name())
            .cloned();
        if let Some(base) = preferred
            && let Some(i) = out.iter().position(|e| e.base == base)
        {
            let ep = out.remove(i);
            out.insert(0, ep);
        }
        Ok(out)
    }

    fn client(&self, ep: &Endpoint) -> &reqwest::Client {
        self.inner
            .clients
            .get(&ep.ca)
            .or_else(|| self.inner.clients.get(&None))
            .expect("the default client always exists")
    }

    /// Tries each endpoint in turn. The origin's error wins over a mirror's,
    /// since a mirror missing an image says nothing about the image.
    async fn with_endpoints<T, F, Fut>(
        &self,
        image: &ImageReference,
        what: &str,
        mut attempt: F,
    ) -> Result<T, ProviderError>
    where
        F: FnMut(Endpoint) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let mut origin_err = None;
        let mut last_err = None;
        for ep in self.endpoints(image)? {
            let base = ep.base.clone();
            let origin = ep.origin;
            match attempt(ep).await {
                Ok(v) => {
                    self.inner
                        .preferred
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(image.name(), base);
                    return Ok(v);
                }
                Err(e) => {
                    tracing::warn!(image = %image, endpoint = %base, "{what} failed: {e}");
                    if origin {
                        origin_err = Some(e);
                    } else {
                        last_err = Some(e);
                    }
                }
            }
        }
        Err(origin_err
            .or(last_err)
            .expect("there is always at least one endpoint"))
    }

    /// GET `<base>/v2/<repository>/<path>`, answering auth challenges once.
    async fn get(
        &self,
        ep: &Endpoint,
        image: &ImageReference,
        creds: Option<&Credentials>,
        path: &str,
        accept: Option<&str>,
    ) -> Result<(reqwest::Response, String), ProviderError> {
        let client = self.client(ep);
        let url = format!("{}/v2/{}/{path}", ep.base, image.repository);
        let scope = format!("repository:{}:pull", image.repository);
        let creds = if ep.origin {
            creds.filter(|c| !c.is_empty())
        } else {
            None
        };
        let tokens = &self.inner.tokens;
        let send = |auth: Option<String>| {
            let mut req = client.get(&url);
            if let Some(accept) = accept {
                req = req.header(ACCEPT, accept);
            }
            if let Some(auth) = auth {
                req = req.header(AUTHORIZATION, auth);
            }
            async {
                req.send()
                    .await
                    .map_err(|e| ProviderError::from_reqwest(&ep.authority, &url, e))
            }
        };

        let resp = send(tokens.preauthorize(&ep.authority, &scope, creds)).await?;
        let resp = if resp.status() == StatusCode::UNAUTHORIZED {
            tokens.invalidate(&ep.authority, &scope, creds);
            let challenges: Vec<_> = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(parse_challenges)
                .collect();
            if challenges.is_empty() {
                let body = read_limited(resp, 64 << 10, &ep.authority, &url).await?;
                return Err(ProviderError::Unauthorized {
                    registry: ep.authority.clone(),
                    detail: format!("401 without a challenge: {}", snippet(&body)),
                });
            }
            let header = tokens
                .authorize(client, &ep.authority, &challenges, &scope, creds)
                .await?;
            send(Some(header)).await?
        } else {
            resp
        };

        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            tokens.invalidate(&ep.authority, &scope, creds);
            let body = read_limited(resp, 64 << 10, &ep.authority, &url).await?;
            return Err(ProviderError::Unauthorized {
                registry: ep.authority.clone(),
                detail: format!(
                    "{status} for {url}{}: {}",
                    if creds.is_some() {
                        ""
                    } else {
                        " (no credentials)"
                    },
                    snippet(&body)
                ),
            });
        }
        Ok((resp, url))
    }

    async fn error_for(
        &self,
        ep: &Endpoint,
        resp: reqwest::Response,
        url: &str,
        not_found: &str,
    ) -> ProviderError {
        let status = resp.status();
        let body = match read_limited(resp, 64 << 10, &ep.authority, url).await {
            Ok(body) => body,
            Err(e) => return e,
        };
        if status == StatusCode::NOT_FOUND {
            return ProviderError::NotFound {
                reference: not_found.to_string(),
                detail: format!("{url}: {}", snippet(&body)),
            };
        }
        ProviderError::Http {
            status: status.as_u16(),
            url: url.to_string(),
            body: snippet(&body),
        }
    }

    /// Fetches a manifest by tag or digest: (bytes, media type, digest).
    async fn fetch_manifest(
        &self,
        ep: &Endpoint,
        image: &ImageReference,
        creds: Option<&Credentials>,
        reference: &str,
        expected: Option<&str>,
    ) -> Result<(Vec<u8>, String, ManifestJson, String), ProviderError> {
        let display = image.to_string();
        let (resp, url) = self
            .get(
                ep,
                image,
                creds,
                &format!("manifests/{reference}"),
                Some(MANIFEST_ACCEPT),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.error_for(ep, resp, &url, &display).await);
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = read_limited(resp, MANIFEST_MAX, &ep.authority, &url).await?;
        let digest = sha256_digest(&bytes);
        let expected = expected.or(header_digest
            .as_deref()
            .filter(|d| d.starts_with("sha256:")));
        if let Some(expected) = expected
            && digest != expected
        {
            return Err(ProviderError::DigestMismatch {
                blob: format!("manifest {display}"),
                expected: expected.to_string(),
                actual: digest,
            });
        }
        let parsed = parse_manifest(&bytes, &display)?;
        let media_type = manifest_media_type(content_type.as_deref(), &parsed, &display)?;
        Ok((bytes, media_type, parsed, digest))
    }

    async fn resolve_at(
        &self,
        ep: &Endpoint,
        image: &ImageReference,
        creds: Option<&Credentials>,
    ) -> Result<ResolvedImage, ProviderError> {
        let display = image.to_string();
        let mut manifest = self
            .fetch_manifest(
                ep,
                image,
                creds,
                image.api_reference(),
                image.digest.as_deref(),
            )
            .await?;
        if is_index(&manifest.1) {
            let entry = pick_platform(&manifest.2, &display)?;
            check_digest_syntax(&entry.digest, &display)?;
            manifest = self
                .fetch_manifest(ep, image, creds, &entry.digest, Some(&entry.digest))
                .await?;
            if is_index(&manifest.1) {
                return Err(ProviderError::UnsupportedMediaType {
                    reference: display,
                    media_type: format!("{} nested in an index", manifest.1),
                });
            }
        }
        let (bytes, media_type, parsed, digest) = manifest;
        let (config, layers) = image_parts(&parsed, &display)?;

        let (resp, url) = self
            .get(ep, image, creds, &format!("blobs/{}", config.digest), None)
            .await?;
        if !resp.status().is_success() {
            let not_found = image.digested_name(&config.digest);
            return Err(self.error_for(ep, resp, &url, &not_found).await);
        }
        let config_bytes = read_limited(resp, CONFIG_MAX, &ep.authority, &url).await?;
        verify(
            &format!("config of {display}"),
            &config.digest,
            &config_bytes,
        )?;

        Ok(ResolvedImage {
            manifest_digest: digest,
            manifest_media_type: media_type,
            manifest: bytes,
            config_digest: config.digest,
            config: config_bytes,
            layers,
            endpoint: ep.base.clone(),
        })
    }

    /// Fetches and verifies the manifest and config of `image` for this
    /// machine's platform.
    pub async fn resolve(
        &self,
        image: &ImageReference,
        creds: Option<&Credentials>,
    ) -> Result<ResolvedImage, ProviderError> {
        self.with_endpoints(image, "resolve", |ep| async move {
            self.resolve_at(&ep, image, creds).await
        })
        .await
    }

    /// Streams one blob into `dest` (created or truncated), checking
    /// size and sha256 on the way. On any failure `dest` is removed.
    pub async fn fetch_blob(
        &self,
        image: &ImageReference,
        creds: Option<&Credentials>,
        blob: &LayerDescriptor,
        dest: &Path,
    ) -> Result<(), ProviderError> {
        // The digest becomes part of a URL; refuse anything that is not one.
        check_digest_syntax(&blob.digest, &image.to_string())?;
        self.with_endpoints(image, "blob fetch", |ep| async move {
            let result = self.fetch_blob_at(&ep, image, creds, blob, dest).await;
            if result.is_err() {
                remove_quietly(dest).await;
            }
            result
        })
        .await
    }

    async fn fetch_blob_at(
        &self,
        ep: &Endpoint,
        image: &ImageReference,
        creds: Option<&Credentials>,
        blob: &LayerDescriptor,
        dest: &Path,
    ) -> Result<(), ProviderError> {
        let (resp, url) = self
            .get(ep, image, creds, &format!("blobs/{}", blob.digest), None)
            .await?;
        if !resp.status().is_success() {
            let not_found = image.digested_name(&blob.digest);
            return Err(self.error_for(ep, resp, &url, &not_found).await);
        }
        let name = image.digested_name(&blob.digest);
        let mut writer = BlobWriter::create(dest, &name, &blob.digest, blob.size).await?;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ProviderError::from_reqwest(&ep.authority, &url, e))?;
            crate::metrics::METRICS
                .image_bytes_pulled
                .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            writer.write(&chunk).await?;
        }
        writer.finish().await
    }
}

async fn remove_quietly(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), "cannot remove failed blob: {e}");
    }
}

/// A file being filled with a blob of known digest and size. The size is
/// checked while writing so an endless or oversized stream stops early.
pub(crate) struct BlobWriter {
    file: tokio::io::BufWriter<tokio::fs::File>,
    path: PathBuf,
    name: String,
    expected: String,
    /// 0 = unknown.
    size: u64,
    written: u64,
    hasher: Sha256,
}

impl BlobWriter {
    pub(crate) async fn create(
        path: &Path,
        name: &str,
        expected: &str,
        size: u64,
    ) -> Result<Self, ProviderError> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|e| ProviderError::io(path, e))?;
        Ok(Self {
            file: tokio::io::BufWriter::with_capacity(256 << 10, file),
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: expected.to_string(),
            size,
            written: 0,
            hasher: Sha256::new(),
        })
    }

    pub(crate) async fn write(&mut self, chunk: &[u8]) -> Result<(), ProviderError> {
        self.written += chunk.len() as u64;
        if self.size != 0 && self.written > self.size {
            return Err(ProviderError::SizeMismatch {
                blob: self.name.clone(),
                expected: self.size,
                actual: self.written,
            });
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| ProviderError::io(&self.path, e))
    }

    pub(crate) async fn finish(mut self) -> Result<(), ProviderError> {
        if self.size != 0 && self.written != self.size {
            return Err(ProviderError::SizeMismatch {
                blob: self.name,
                expected: self.size,
                actual: self.written,
            });
        }
        let actual = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        if actual != self.expected {
            return Err(ProviderError::DigestMismatch {
                blob: self.name,
                expected: self.expected,
                actual,
            });
        }
        let path = self.path;
        // No fsync: the blob is a staging file the store extracts and deletes at once;
        // what must survive is the committed layer, not its download.
        self.file
            .flush()
            .await
            .map_err(|e| ProviderError::io(&path, e))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Child, Command, Stdio};

    /// bcrypt (cost 4) of "secret", as docker-registry's htpasswd wants it.
    const HTPASSWD: &str = "user:$2y$04$KP8H.86si4z9KVMpCYUU/uaffdswaEaXnpcLf.BlR.2C1LDoga/XS\n";

    /// A P-256 CA and a server certificate for IP 127.0.0.1 signed by it, valid to 2126.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBnzCCAUWgAwIBAgIUSq4wwgzn1FrUeQ/Kx9fraiirvBYwCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRY3JpLW1lc29zIHRlc3QgQ0EwIBcNMjYxMTIzMTQwNDIyWhgP
MjEyNjEwMzAxNDA0MjJaMBwxGjAYBgNVBAMMEWNyaS1tZXNvcyB0ZXN0IENBMFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAETLjiX5KwTtjQUHIuJoKF3t9QDOs4x51O
4cVykIOq+wmsMqwi3xT8RJemLQ0TzLPdD+MhMmkb4G6pzs4ZQ116P6NjMGEwHQYD
VR0OBBYEFG1S5MK7toam/9tnt/klyDIikIu6MB8GA1UdIwQYMBaAFG1S5MK7toam
/9tnt/klyDIikIu6MA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgIEMAoG
CCqGSM49BAMCA0gAMEUCIDburDq9lGhCroY9doYUyjRJQjHMCd3oveaT13u+1Pi9
AiEA7+hAEtobQ76BW38ggClFH+PcI4I4L0Ww9AT/W0RnkqQ=
-----END CERTIFICATE-----
";
    const TEST_SERVER_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBtTCCAVugAwIBAgIUCQ+xjaBGBk0ipo3yln9s9RUpoaIwCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRY3JpLW1lc29zIHRlc3QgQ0EwIBcNMjYxMTIzMTQwNDIyWhgP
MjEyNjEwMzAxNDA0MjJaMBQxEjAQBgNVBAMMCTEyNy4wLjAuMTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABLjYgmHCFAwINbTTtTGYlix9oBHBJ0Kurxz0Tx0seMPM
0GoyfmnZHtDEs0oD4Z44rxx8nxzXnqAOirbPHPrXsTijgYAwfjAPBgNVHREECDAG
hwR/AAABMAkGA1UdEwQCMAAwEwYDVR0lBAwwCgYIKwYBBQUHAwEwCwYDVR0PBAQD
AgeAMB0GA1UdDgQWBBR0j3zPj3kEJpx8RqRpB3IBVCu06DAfBgNVHSMEGDAWgBRt
UuTCu7aGpv/bZ7f5JcgyIpCLujAKBggqhkjOPQQDAgNIADBFAiEAuRJZhuiMAnvk
zgIwYkMmBvLrBSmcm+n53fPs/g2vyOACIDaaNZi/NtjbMor/WBaHELImASDBsjuB
fh4BgUuTqgXV
-----END CERTIFICATE-----
";
    const TEST_SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgZnVdgINHyNajhARD
yC/gJeCdejtlN1P0A9mGbIfKCeihRANCAAS42IJhwhQMCDW007UxmJYsfaARwSdC
rq8c9E8dLHjDzNBqMn5p2R7QxLNKA+GeOK8cfJ8c156gDoq2zxz617E4
-----END PRIVATE KEY-----
";

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A `docker-registry` on a free port with a temp store; killed on drop.
    pub(crate) struct Registry {
        child: Child,
        pub port: u16,
        pub dir: tempfile::TempDir,
        basic: Option<(&'static str, &'static str)>,
    }

    impl Drop for Registry {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Registry {
        pub(crate) async fn start(with_auth: bool) -> Registry {
            Self::launch(with_auth, false).await
        }

        async fn launch(with_auth: bool, tls: bool) -> Registry {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("store");
            let mut auth = String::new();
            if with_auth {
                std::fs::write(dir.path().join("htpasswd"), HTPASSWD).unwrap();
                auth = format!(
                    "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                );
            }
            let mut tls_config = String::new();
            if tls {
                std::fs::write(dir.path().join("srv.pem"), TEST_SERVER_CERT).unwrap();
                std::fs::write(dir.path().join("srv.key"), TEST_SERVER_KEY).unwrap();
                tls_config = format!(
                    "  tls:\n    certificate: {0}/srv.pem\n    key: {0}/srv.key\n",
                    dir.path().display()
                );
            }
            for _ in 0..5 {
                let port = free_port();
                let config = dir.path().join("config.yml");
                std::fs::write(
                    &config,
                    format!(
                        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n{auth}http:\n  addr: 127.0.0.1:{port}\n{tls_config}",
                        root.display()
                    ),
                )
                .unwrap();
                let mut child = Command::new("/usr/bin/docker-registry")
                    .arg("serve")
                    .arg(&config)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("docker-registry");
                for _ in 0..200 {
                    if child.try_wait().unwrap().is_some() {
                        break; // port taken meanwhile: try another
                    }
                    if tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
                    {
                        let basic = with_auth.then_some(("user", "secret"));
                        return Registry {
                            child,
                            port,
                            dir,
                            basic,
                        };
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            panic!("docker-registry did not start");
        }

        pub(crate) fn host(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }

        fn req(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
            let req = reqwest::Client::new().request(method, url);
            match self.basic {
                Some((u, p)) => req.basic_auth(u, Some(p)),
                None => req,
            }
        }

        pub(crate) async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
            let digest = sha256_digest(data);
            let url = format!("http://{}/v2/{repo}/blobs/uploads/", self.host());
            let resp = self.req(reqwest::Method::POST, &url).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::ACCEPTED);
            let location = resp.headers()["location"].to_str().unwrap().to_string();
            let location = if location.starts_with('/') {
                format!("http://{}{location}", self.host())
            } else {
                location
            };
            let sep = if location.contains('?') { '&' } else { '?' };
            let resp = self
                .req(
                    reqwest::Method::PUT,
                    &format!("{location}{sep}digest={digest}"),
                )
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(data.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::CREATED,
                "{:?}",
                resp.text().await
            );
            digest
        }

        pub(crate) async fn push_manifest(
            &self,
            repo: &str,
            reference: &str,
            media_type: &str,
            body: &[u8],
        ) -> String {
            let url = format!("http://{}/v2/{repo}/manifests/{reference}", self.host());
            let resp = self
                .req(reqwest::Method::PUT, &url)
                .header(CONTENT_TYPE, media_type)
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::CREATED,
                "{:?}",
                resp.text().await
            );
            sha256_digest(body)
        }

        /// Pushes config + one gzip layer + an OCI manifest; returns its parts.
        pub(crate) async fn push_image(
            &self,
            repo: &str,
            tag: Option<&str>,
            arch: &str,
        ) -> TestImage {
            let image = TestImage::build(arch, &format!("{repo} {arch}"));
            self.push_blob(repo, &image.config).await;
            self.push_blob(repo, &image.layer).await;
            let reference = tag.map_or(image.manifest_digest.clone(), str::to_string);
            self.push_manifest(repo, &reference, OCI_MANIFEST, &image.manifest)
                .await;
            image
        }

        /// Path of a blob's bytes in the registry's filesystem store.
        fn blob_path(&self, digest: &str) -> PathBuf {
            let hex = digest.strip_prefix("sha256:").unwrap();
            self.dir
                .path()
                .join("store/docker/registry/v2/blobs/sha256")
                .join(&hex[..2])
                .join(hex)
                .join("data")
        }
    }

    pub(crate) struct TestImage {
        pub config: Vec<u8>,
        pub layer: Vec<u8>,
        pub manifest: Vec<u8>,
        pub manifest_digest: String,
    }

    impl TestImage {
        pub(crate) fn build(arch: &str, content: &str) -> TestImage {
            let mut tar = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, "hello.txt", content.as_bytes())
                .unwrap();
            let tar = tar.into_inner().unwrap();
            let diff_id = sha256_digest(&tar);
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            let layer = gz.finish().unwrap();
            let config = serde_json::to_vec(&serde_json::json!({
                "architecture": arch, "os": "linux",
                "config": {"Cmd": ["/hello"]},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }))
            .unwrap();
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(&config), "size": config.len()},
                "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256_digest(&layer), "size": layer.len()}],
            }))
            .unwrap();
            let manifest_digest = sha256_digest(&manifest);
            TestImage {
                config,
                layer,
                manifest,
                manifest_digest,
            }
        }

        pub(crate) fn layer_descriptor(&self) -> LayerDescriptor {
            LayerDescriptor {
                digest: sha256_digest(&self.layer),
                media_type: OCI_LAYER_GZIP.into(),
                size: self.layer.len() as u64,
            }
        }
    }

    fn reference(s: &str) -> ImageReference {
        ImageReference::parse(s).unwrap()
    }

    fn provider() -> RegistryProvider {
        RegistryProvider::new(RegistryConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn pulls_by_tag_and_by_digest() {
        let reg = Registry::start(false).await;
        let image = reg.push_image("test/img", Some("v1"), "amd64").await;
        let p = provider();

        let by_tag = reference(&format!("{}/test/img:v1", reg.host()));
        let r = p.resolve(&by_tag, None).await.unwrap();
        assert_eq!(r.manifest_digest, image.manifest_digest);
        assert_eq!(r.manifest, image.manifest);
        assert_eq!(r.manifest_media_type, OCI_MANIFEST);
        assert_eq!(r.config, image.config);
        assert_eq!(r.config_digest, sha256_digest(&image.config));
        assert_eq!(r.layers, vec![image.layer_descriptor()]);
        assert_eq!(r.endpoint, format!("http://{}", reg.host()));

        for s in [
            format!("{}/test/img@{}", reg.host(), image.manifest_digest),
            format!("{}/test/img:ignored@{}", reg.host(), image.manifest_digest),
        ] {
            let r = p.resolve(&reference(&s), None).await.unwrap();
            assert_eq!(r.manifest_digest, image.manifest_digest, "{s}");
        }

        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("layer");
        p.fetch_blob(&by_tag, None, &r.layers[0], &dest)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), image.layer);

        for missing in [
            format!("{}/test/img:nope", reg.host()),
            format!("{}/test/nothere:v1", reg.host()),
            format!("{}/test/img@sha256:{}", reg.host(), "0".repeat(64)),
        ] {
            let e = p.resolve(&reference(&missing), None).await.unwrap_err();
            assert!(
                matches!(e, ProviderError::NotFound { .. }),
                "{missing}: {e}"
            );
            assert_eq!(e.kind(), ProviderErrorKind::NotFound);
            assert!(
                e.to_string().contains(&reference(&missing).to_string()),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn index_picks_the_host_platform() {
        let reg = Registry::start(false).await;
        let amd64 = reg.push_image("multi", None, "amd64").await;
        let arm64 = reg.push_image("multi", None, "arm64").await;
        let entry = |img: &TestImage, arch: &str, variant: Option<&str>| {
            let mut platform = serde_json::json!({"architecture": arch, "os": "linux"});
            if let Some(v) = variant {
                platform["variant"] = v.into();
            }
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": img.manifest_digest,
                "size": img.manifest.len(), "platform": platform})
        };
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [entry(&amd64, "amd64", None), entry(&arm64, "arm64", Some("v8"))],
        }))
        .unwrap();
        let index_digest = reg.push_manifest("multi", "v1", OCI_INDEX, &index).await;
        let expected = match host_platform().1 {
            "arm64" => &arm64,
            _ => &amd64,
        };
        let p = provider();
        for s in [
            format!("{}/multi:v1", reg.host()),
            format!("{}/multi@{index_digest}", reg.host()),
        ] {
            let r = p.resolve(&reference(&s), None).await.unwrap();
            assert_eq!(r.manifest_digest, expected.manifest_digest, "{s}");
            assert_eq!(r.config, expected.config);
        }

        // An index without this machine's platform.
        let entries: Vec<_> = [entry(&amd64, "s390x", None), entry(&arm64, "amd64", None)]
            .into_iter()
            .filter(|e| e["platform"]["architecture"] != host_platform().1)
            .collect();
        let foreign = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries,
        }))
        .unwrap();
        reg.push_manifest("multi", "foreign", OCI_INDEX, &foreign)
            .await;
        let e = p
            .resolve(&reference(&format!("{}/multi:foreign", reg.host())), None)
            .await
            .unwrap_err();
        assert!(matches!(e, ProviderError::NoMatchingPlatform { .. }), "{e}");
        assert!(e.to_string().contains(&platform_string()), "{e}");
    }

    #[tokio::test]
    async fn corrupt_blobs_are_rejected_and_removed() {
        let reg = Registry::start(false).await;
        let image = reg.push_image("c", Some("v1"), "amd64").await;
        let p = provider();
        let r = reference(&format!("{}/c:v1", reg.host()));
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("layer");
        let good = image.layer_descriptor();

        // The registry serves other bytes of the right length under the digest.
        let stored = reg.blob_path(&good.digest);
        let mut bytes = std::fs::read(&stored).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&stored, &bytes).unwrap();
        let e = p.fetch_blob(&r, None, &good, &dest).await.unwrap_err();
        match &e {
            ProviderError::DigestMismatch {
                blob,
                expected,
                actual,
            } => {
                assert!(blob.contains(&good.digest));
                assert_eq!(expected, &good.digest);
                assert_eq!(actual, &sha256_digest(&bytes));
            }
            other => panic!("{other}"),
        }
        assert_eq!(e.kind(), ProviderErrorKind::Corrupt);
        assert!(!dest.exists());

        // A descriptor with the wrong size stops the download as well.
        let config = LayerDescriptor {
            digest: sha256_digest(&image.config),
            media_type: OCI_CONFIG.into(),
            size: image.config.len() as u64 - 1,
        };
        let e = p.fetch_blob(&r, None, &config, &dest).await.unwrap_err();
        assert!(matches!(e, ProviderError::SizeMismatch { .. }), "{e}");
        assert!(!dest.exists());

        // A digest the registry does not have, and one that is not a digest.
        let mut unknown = good.clone();
        unknown.digest = format!("sha256:{}", "1".repeat(64));
        let e = p.fetch_blob(&r, None, &unknown, &dest).await.unwrap_err();
        assert!(matches!(e, ProviderError::NotFound { .. }), "{e}");
        unknown.digest = "sha256:../../etc".into();
        let e = p.fetch_blob(&r, None, &unknown, &dest).await.unwrap_err();
        assert!(matches!(e, ProviderError::InvalidManifest { .. }), "{e}");
        assert!(!dest.exists());
    }

    #[tokio::test]
    async fn mirrors_are_tried_in_order_keeping_the_repository_path() {
        let reg = Registry::start(false).await;
        let image = reg
            .push_image("e2e-test-images/busybox", Some("1.29-2"), "amd64")
            .await;
        let dead = free_port();
        let mut config = RegistryConfig::default();
        config.hosts.insert(
            "registry.k8s.io".into(),
            HostConfig {
                mirrors: vec![
                    format!("http://127.0.0.1:{dead}"),
                    format!("http://{}/v2/", reg.host()),
                ],
                ..Default::default()
            },
        );
        let p = RegistryProvider::new(config).unwrap();
        let r = reference("registry.k8s.io/e2e-test-images/busybox:1.29-2");
        let resolved = p.resolve(&r, None).await.unwrap();
        assert_eq!(resolved.manifest_digest, image.manifest_digest);
        assert_eq!(resolved.endpoint, format!("http://{}", reg.host()));
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("layer");
        p.fetch_blob(&r, None, &resolved.layers[0], &dest)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), image.layer);
        // The mirror that worked is now tried first.
        assert_eq!(
            p.endpoints(&r).unwrap()[0].base,
            format!("http://{}", reg.host())
        );

        // Names without a host go to --docker_registry, mirrors of docker.io first.
        let hub = RegistryProvider::new(RegistryConfig {
            default_registry: Some(format!("http://{}", reg.host())),
            ..Default::default()
        })
        .unwrap();
        let pushed = reg
            .push_image("library/hello", Some("latest"), "amd64")
            .await;
        let r = hub.resolve(&reference("hello"), None).await.unwrap();
        assert_eq!(r.manifest_digest, pushed.manifest_digest);
    }

    #[tokio::test]
    async fn unreachable_registries_name_the_address() {
        let dead = free_port();
        let p = provider();
        let e = p
            .resolve(&reference(&format!("127.0.0.1:{dead}/x:1")), None)
            .await
            .unwrap_err();
        match &e {
            ProviderError::Unreachable { address, .. } => {
                assert_eq!(address, &format!("127.0.0.1:{dead}"))
            }
            other => panic!("{other}"),
        }
        assert_eq!(e.kind(), ProviderErrorKind::Unreachable);
        assert!(e.to_string().contains(&format!("127.0.0.1:{dead}")));

        // With every mirror dead too, the registry's own error is reported.
        let mut config = RegistryConfig::default();
        let other = free_port();
        config.hosts.insert(
            format!("127.0.0.1:{dead}"),
            HostConfig {
                mirrors: vec![format!("127.0.0.1:{other}")],
                insecure: true,
                ..Default::default()
            },
        );
        let p = RegistryProvider::new(config).unwrap();
        let e = p
            .resolve(&reference(&format!("127.0.0.1:{dead}/x:1")), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ProviderError::Unreachable { address, .. } if *address == format!("127.0.0.1:{dead}")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn basic_auth() {
        let reg = Registry::start(true).await;
        let image = reg.push_image("private/img", Some("v1"), "amd64").await;
        let p = provider();
        let r = reference(&format!("{}/private/img:v1", reg.host()));

        let e = p.resolve(&r, None).await.unwrap_err();
        assert!(matches!(e, ProviderError::Unauthorized { .. }), "{e}");
        assert_eq!(e.kind(), ProviderErrorKind::Unauthorized);
        let wrong = Credentials {
            username: Some("user".into()),
            password: Some("wrong".into()),
            ..Default::default()
        };
        let e = p.resolve(&r, Some(&wrong)).await.unwrap_err();
        assert!(matches!(e, ProviderError::Unauthorized { .. }), "{e}");

        let by_password = Credentials {
            username: Some("user".into()),
            password: Some("secret".into()),
            ..Default::default()
        };
        use base64::Engine as _;
        let by_auth = Credentials {
            auth: Some(base64::engine::general_purpose::STANDARD.encode("user:secret")),
            ..Default::default()
        };
        for creds in [by_password, by_auth] {
            let resolved = p.resolve(&r, Some(&creds)).await.unwrap();
            assert_eq!(resolved.manifest_digest, image.manifest_digest);
            let tmp = tempfile::tempdir().unwrap();
            let dest = tmp.path().join("layer");
            p.fetch_blob(&r, Some(&creds), &resolved.layers[0], &dest)
                .await
                .unwrap();
            assert_eq!(std::fs::read(&dest).unwrap(), image.layer);
        }
        // What one caller's credentials unlocked is not handed to the next caller.
        let e = p.resolve(&r, None).await.unwrap_err();
        assert!(matches!(e, ProviderError::Unauthorized { .. }), "{e}");
    }

    /// A registry + token server speaking just enough HTTP/1.1 for the token
    /// flow; it records (request line, authorization, body) of each request.
    struct MockRegistry {
        port: u16,
        log: Arc<Mutex<Vec<(String, String, String)>>>,
    }

    impl MockRegistry {
        async fn start(image: &TestImage) -> MockRegistry {
            use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let log: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
            let mut blobs: HashMap<String, (&str, Vec<u8>)> = HashMap::new();
            blobs.insert(
                "/v2/repo/manifests/v1".into(),
                (OCI_MANIFEST, image.manifest.clone()),
            );
            blobs.insert(
                format!("/v2/repo/blobs/{}", sha256_digest(&image.config)),
                ("application/octet-stream", image.config.clone()),
            );
            let (blobs, log2) = (Arc::new(blobs), log.clone());
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let (blobs, log) = (blobs.clone(), log2.clone());
                    tokio::spawn(async move {
                        let mut stream = BufReader::new(stream);
                        let (mut line, mut auth, mut len) = (String::new(), String::new(), 0usize);
                        stream.read_line(&mut line).await.unwrap();
                        loop {
                            let mut h = String::new();
                            stream.read_line(&mut h).await.unwrap();
                            let lower = h.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("authorization:") {
                                auth = h[h.len() - v.len()..].trim().to_string();
                            } else if let Some(v) = lower.strip_prefix("content-length:") {
                                len = v.trim().parse().unwrap();
                            } else if h.trim().is_empty() {
                                break;
                            }
                        }
                        let mut body = vec![0; len];
                        stream.read_exact(&mut body).await.unwrap();
                        let body = String::from_utf8(body).unwrap();
                        let line = line.trim().to_string();
                        log.lock()
                            .unwrap()
                            .push((line.clone(), auth.clone(), body.clone()));
                        let path = line.split(' ').nth(1).unwrap().to_string();
                        let json = |s: &str| {
                            (
                                "200 OK",
                                "application/json",
                                s.as_bytes().to_vec(),
                                String::new(),
                            )
                        };
                        let (status, ctype, payload, extra) = if path.starts_with("/token") {
                            if line.starts_with("POST") && body.contains("refresh_token=idtok") {
                                json(r#"{"access_token":"tok-oauth","expires_in":300}"#)
                            } else if line.starts_with("POST") {
                                (
                                    "401 Unauthorized",
                                    "text/plain",
                                    b"no".to_vec(),
                                    String::new(),
                                )
                            } else if auth.is_empty() {
                                json(r#"{"token":"tok-anon"}"#)
                            } else {
                                json(r#"{"token":"tok-basic","expires_in":300}"#)
                            }
                        } else if !auth.starts_with("Bearer tok-") {
                            let challenge = format!(
                                "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"mock\",scope=\"repository:repo:pull\"\r\n"
                            );
                            ("401 Unauthorized", "application/json", br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(), challenge)
                        } else {
                            match blobs.get(&path) {
                                Some((ctype, data)) => {
                                    ("200 OK", *ctype, data.clone(), String::new())
                                }
                                None => ("404 Not Found", "text/plain", Vec::new(), String::new()),
                            }
                        };
                        let head = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                            payload.len()
                        );
                        let stream = stream.get_mut();
                        stream.write_all(head.as_bytes()).await.unwrap();
                        stream.write_all(&payload).await.unwrap();
                    });
                }
            });
            MockRegistry { port, log }
        }

        fn take_log(&self) -> Vec<(String, String, String)> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }
    }

    #[tokio::test]
    async fn bearer_token_flow() {
        let image = TestImage::build("amd64", "x");
        let mock = MockRegistry::start(&image).await;
        let p = provider();
        let r = reference(&format!("127.0.0.1:{}/repo:v1", mock.port));
        let token_requests = |log: &[(String, String, String)]| {
            log.iter()
                .filter(|(l, _, _)| l.contains("/token"))
                .cloned()
                .collect::<Vec<_>>()
        };

        // Anonymous: GET realm?service&scope, then the token is reused.
        p.resolve(&r, None).await.unwrap();
        let log = mock.take_log();
        let tokens = token_requests(&log);
        assert_eq!(tokens.len(), 1, "{log:?}");
        assert!(
            tokens[0]
                .0
                .starts_with("GET /token?service=mock&scope=repository%3Arepo%3Apull "),
            "{tokens:?}"
        );
        assert_eq!(tokens[0].1, "");
        assert!(log.last().unwrap().1 == "Bearer tok-anon", "{log:?}");
        p.resolve(&r, None).await.unwrap();
        assert!(token_requests(&mock.take_log()).is_empty());

        // Username/password: basic auth to the token server.
        let basic = Credentials {
            username: Some("u".into()),
            password: Some("p".into()),
            ..Default::default()
        };
        p.resolve(&r, Some(&basic)).await.unwrap();
        let log = mock.take_log();
        assert_eq!(token_requests(&log)[0].1, "Basic dTpw");
        assert_eq!(log.last().unwrap().1, "Bearer tok-basic");

        // Identity token: the OAuth2 refresh-token grant.
        let oauth = Credentials {
            identity_token: Some("idtok".into()),
            ..Default::default()
        };
        p.resolve(&r, Some(&oauth)).await.unwrap();
        let log = mock.take_log();
        let tokens = token_requests(&log);
        assert!(tokens[0].0.starts_with("POST /token "), "{tokens:?}");
        for part in [
            "grant_type=refresh_token",
            "refresh_token=idtok",
            "client_id=cri-mesos",
            "service=mock",
            "scope=repository%3Arepo%3Apull",
        ] {
            assert!(
                tokens[0].2.split('&').any(|p| p == part),
                "{part} in {:?}",
                tokens[0].2
            );
        }
        assert_eq!(log.last().unwrap().1, "Bearer tok-oauth");
        let bad = Credentials {
            identity_token: Some("other".into()),
            ..Default::default()
        };
        let e = p.resolve(&r, Some(&bad)).await.unwrap_err();
        assert!(matches!(e, ProviderError::Unauthorized { .. }), "{e}");
        mock.take_log();

        // A registry token is sent as is, without asking the token server.
        let direct = Credentials {
            registry_token: Some("tok-direct".into()),
            ..Default::default()
        };
        p.resolve(&r, Some(&direct)).await.unwrap();
        let log = mock.take_log();
        assert!(token_requests(&log).is_empty(), "{log:?}");
        assert!(
            log.iter().all(|(_, a, _)| a == "Bearer tok-direct"),
            "{log:?}"
        );
    }

    #[tokio::test]
    async fn ca_files_are_trusted_per_host() {
        let reg = Registry::launch(false, true).await;
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca.pem");
        std::fs::write(&ca, TEST_CA).unwrap();
        let r = reference(&format!("{}/x:1", reg.host()));
        let with_ca = |ca_file: Option<PathBuf>| {
            let mut config = RegistryConfig::default();
            let host = HostConfig {
                ca_file,
                ..Default::default()
            };
            config.hosts.insert(reg.host(), host);
            RegistryProvider::new(config).unwrap()
        };
        // An HTTP answer (404) means the handshake succeeded.
        let e = with_ca(Some(ca)).resolve(&r, None).await.unwrap_err();
        assert!(matches!(e, ProviderError::NotFound { .. }), "{e}");
        let e = with_ca(None).resolve(&r, None).await.unwrap_err();
        assert!(
            matches!(&e, ProviderError::Tls { address, .. } if *address == reg.host()),
            "{e}"
        );
        assert_eq!(e.kind(), ProviderErrorKind::Other);
    }

    #[test]
    fn bad_configuration_fails_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        for host in [
            HostConfig {
                ca_file: Some(ca.clone()),
                ..Default::default()
            },
            HostConfig {
                ca_file: Some(tmp.path().join("missing.pem")),
                ..Default::default()
            },
            HostConfig {
                mirrors: vec!["ftp://mirror".into()],
                ..Default::default()
            },
        ] {
            let mut config = RegistryConfig::default();
            config.hosts.insert("example.com".into(), host);
            let e = RegistryProvider::new(config).expect_err("an error");
            assert!(matches!(e, ProviderError::BadConfig { .. }), "{e}");
        }
        let e = RegistryProvider::new(RegistryConfig {
            default_registry: Some("/var/lib/images".into()),
            ..Default::default()
        })
        .expect_err("an error");
        assert!(matches!(e, ProviderError::BadConfig { .. }), "{e}");
    }

    #[test]
    fn endpoints() {
        let mut config = RegistryConfig::default();
        config.hosts.insert(
            "docker.io".into(),
            HostConfig {
                mirrors: vec!["mirror.example.com:5000".into()],
                ..Default::default()
            },
        );
        let p = RegistryProvider::new(config).unwrap();
        let eps = p.endpoints(&reference("busybox")).unwrap();
        let bases: Vec<_> = eps.iter().map(|e| (e.base.as_str(), e.origin)).collect();
        assert_eq!(
            bases,
            [
                ("https://mirror.example.com:5000", false),
                ("https://registry-1.docker.io", true)
            ]
        );
        let eps = p.endpoints(&reference("localhost:5000/x")).unwrap();
        assert_eq!(eps[0].base, "http://localhost:5000");
        let eps = p.endpoints(&reference("quay.io/x/y")).unwrap();
        assert_eq!(
            (eps[0].base.as_str(), eps[0].authority.as_str()),
            ("https://quay.io", "quay.io:443")
        );
    }
}
