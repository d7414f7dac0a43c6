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

use super::auth::{Credentials, TokenCache, parse_challenges};
use super::blob::{BlobWriter, remove_quietly, sha256_digest, verify};
use super::error::{ProviderError, error_chain};
use super::http::{authority_of, read_limited, snippet};
use super::manifest::*;
use crate::provisioner::reference::{DOCKER_HUB, ImageReference};

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

#[cfg(test)]
pub(crate) mod tests;
