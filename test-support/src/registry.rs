//! A throw-away Docker distribution registry, and a small client for its HTTP API.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use tempfile::TempDir;

use crate::image::{BuiltImage, BuiltIndex, MANIFEST_ACCEPT};
use crate::pushed::{TestImage, TestIndex};
use crate::sha256_digest;

/// Overrides the registry binary (default: Debian's `docker-registry` on `PATH`).
pub const REGISTRY_BIN_ENV: &str = "DOCKER_REGISTRY_BIN";

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Basic-auth credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// `docker-registry serve` on a free 127.0.0.1 port, storing into a temp dir; killed, reaped
/// and deleted on drop. Cheap enough (~0.1 s) to start one per test, which keeps access-log
/// assertions independent of other tests.
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    credentials: Option<Credentials>,
    log_path: PathBuf,
    dir: TempDir,
}

impl Registry {
    /// An anonymous registry (pull and push without credentials).
    pub async fn start() -> Result<Self> {
        Self::launch(None).await
    }

    /// A registry requiring HTTP basic auth (htpasswd) for every request, `/v2/` included.
    pub async fn start_with_auth(username: &str, password: &str) -> Result<Self> {
        Self::launch(Some(Credentials {
            username: username.into(),
            password: password.into(),
        }))
        .await
    }

    async fn launch(credentials: Option<Credentials>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("test-registry-")
            .tempdir()?;
        if let Some(c) = &credentials {
            // Cost 4 (the minimum): the registry checks the hash on every request, and the
            // default cost would add a quarter second to each one.
            let hash =
                bcrypt::hash_with_result(&c.password, 4)?.format_for_version(bcrypt::Version::TwoY);
            std::fs::write(
                dir.path().join("htpasswd"),
                format!("{}:{hash}\n", c.username),
            )?;
        }
        // The free port is released before the registry binds it, so another process may take
        // it in between; the registry then exits with "address already in use" and we retry.
        for _ in 0..5 {
            let addr = free_port()?;
            if let Some(child) = spawn_and_wait(dir.path(), addr, credentials.is_some()).await? {
                let log_path = dir.path().join("registry.log");
                return Ok(Self {
                    child,
                    addr,
                    credentials,
                    log_path,
                    dir,
                });
            }
        }
        bail!("docker-registry lost the race for a free port 5 times")
    }

    /// `127.0.0.1:PORT`, the registry host in image references.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The credentials the registry requires, if started with auth.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// The registry's storage root (`docker/registry/v2/...`), e.g. to corrupt a blob.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// A client for this registry, authenticated when the registry requires it.
    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(&self.addr(), self.credentials.clone())
    }

    /// Pushes `image` (blobs the registry lacks, then the manifest) as `name:tag`.
    pub async fn push(&self, name: &str, tag: &str, image: &BuiltImage) -> Result<TestImage> {
        self.client().push_image(name, Some(tag), image).await?;
        Ok(TestImage::new(
            &self.addr(),
            name,
            tag,
            image.clone(),
            Vec::new(),
        ))
    }

    /// Pushes an index: its images by digest, then the index as `name:tag`.
    pub async fn push_index(&self, name: &str, tag: &str, index: &BuiltIndex) -> Result<TestIndex> {
        self.client().push_index(name, tag, index).await?;
        let images = index
            .images
            .iter()
            .map(|image| TestImage::new(&self.addr(), name, tag, image.clone(), Vec::new()))
            .collect();
        Ok(TestIndex {
            registry: self.addr(),
            name: name.into(),
            tag: tag.into(),
            digest: index.digest.clone(),
            manifest: index.manifest.clone(),
            images,
        })
    }

    /// The registry's log file path (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the registry logged: its own messages and the combined-format access log.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Successful (2xx/3xx) requests with this method whose path contains `path_contains`,
    /// e.g. `count_requests("GET", "/v2/busybox/blobs/")`.
    pub fn count_requests(&self, method: &str, path_contains: &str) -> usize {
        count_requests(&self.access_log(), method, path_contains)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        crate::kill_and_reap(&mut self.child);
    }
}

/// A port that was free a moment ago.
fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts the registry on `addr` and waits until it serves `/v2/`. `Ok(None)`: lost the port.
async fn spawn_and_wait(dir: &Path, addr: SocketAddr, auth: bool) -> Result<Option<Child>> {
    let config = dir.join("config.yml");
    std::fs::write(&config, config_yml(dir, addr, auth))?;
    let log_path = dir.join("registry.log");
    let log = File::create(&log_path)?;
    let bin = std::env::var_os(REGISTRY_BIN_ENV).unwrap_or_else(|| "docker-registry".into());
    let mut cmd = Command::new(&bin);
    cmd.arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut child = crate::spawn_tied(cmd).with_context(|| format!("spawn {bin:?}"))?;
    install_crypto_provider();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("http://{addr}/v2/");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(status) = child.try_wait()? {
            if log.contains("address already in use") {
                return Ok(None);
            }
            bail!("docker-registry exited ({status}) before it was ready:\n{log}");
        }
        // Wait for *our* registry's "listening on" first: a registry started by a concurrent
        // test that won the race for this port would answer /v2/ just as well.
        if log.contains(&format!("listening on {addr}")) {
            let ready = http.get(&url).send().await.is_ok_and(|r| {
                r.status() == StatusCode::OK || r.status() == StatusCode::UNAUTHORIZED
            });
            if ready {
                return Ok(Some(child));
            }
        }
        if Instant::now() > deadline {
            crate::kill_and_reap(&mut child);
            bail!("docker-registry not ready after {READY_TIMEOUT:?}:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config_yml(dir: &Path, addr: SocketAddr, auth: bool) -> String {
    let auth = if auth {
        format!(
            "auth:\n  htpasswd:\n    realm: test-registry\n    path: {}\n",
            dir.join("htpasswd").display()
        )
    } else {
        String::new()
    };
    // Info level: the access log goes to stdout regardless, and "listening on" (info) is how
    // we tell our registry from another one on the same port.
    format!(
        "version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: test-support-not-a-secret
{auth}",
        storage = dir.join("storage").display(),
    )
}

/// Counts successful combined-log-format lines:
/// `127.0.0.1 - - [date] "GET /v2/x/blobs/sha256:.. HTTP/1.1" 200 1234 "" "ua"`.
fn count_requests(log: &str, method: &str, path_contains: &str) -> usize {
    log.lines()
        .filter_map(parse_access_line)
        .filter(|&(m, path, status)| {
            m == method && path.contains(path_contains) && (200..400).contains(&status)
        })
        .count()
}

fn parse_access_line(line: &str) -> Option<(&str, &str, u16)> {
    let (_, rest) = line.split_once('"')?;
    let (request, rest) = rest.split_once('"')?;
    let mut request = request.split(' ');
    let (method, path, protocol) = (request.next()?, request.next()?, request.next()?);
    if !protocol.starts_with("HTTP/") {
        return None; // e.g. a `time="..."` field of the registry's own log lines
    }
    let status = rest.split_whitespace().next()?.parse().ok()?;
    Some((method, path, status))
}

/// A manifest as the registry served it.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    /// The `Content-Type` the registry answered with.
    pub media_type: String,
    /// The `Docker-Content-Digest` header.
    pub digest: String,
    pub bytes: Vec<u8>,
}

/// The registry HTTP API calls the tests need: push (blobs, manifests) and fetch.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    credentials: Option<Credentials>,
}

impl RegistryClient {
    /// A client for the registry at `addr` (`127.0.0.1:PORT`), plain http.
    pub fn new(addr: &str, credentials: Option<Credentials>) -> Self {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("a plain-http reqwest client");
        Self {
            http,
            base: format!("http://{addr}"),
            credentials,
        }
    }

    /// The same client without credentials.
    pub fn anonymous(&self) -> Self {
        Self {
            credentials: None,
            ..self.clone()
        }
    }

    /// A request to `path` (like `/v2/`) or an absolute URL, with basic auth if configured.
    pub fn request(&self, method: Method, path_or_url: &str) -> RequestBuilder {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let request = self.http.request(method, url);
        match &self.credentials {
            Some(c) => request.basic_auth(&c.username, Some(&c.password)),
            None => request,
        }
    }

    /// GET a manifest by tag or digest, accepting every manifest and index media type.
    pub async fn get_manifest(&self, name: &str, reference: &str) -> Result<FetchedManifest> {
        let response = self
            .request(Method::GET, &format!("/v2/{name}/manifests/{reference}"))
            .header("Accept", MANIFEST_ACCEPT.join(", "))
            .send()
            .await?;
        let response = check(response, &[StatusCode::OK], "GET manifest").await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let (media_type, digest) = (header("Content-Type"), header("Docker-Content-Digest"));
        let bytes = response.bytes().await?.to_vec();
        Ok(FetchedManifest {
            media_type,
            digest,
            bytes,
        })
    }

    /// GET a blob, checking its content against `digest`.
    pub async fn get_blob(&self, name: &str, digest: &str) -> Result<Vec<u8>> {
        let response = self
            .request(Method::GET, &format!("/v2/{name}/blobs/{digest}"))
            .send()
            .await?;
        let bytes = check(response, &[StatusCode::OK], "GET blob")
            .await?
            .bytes()
            .await?;
        let actual = sha256_digest(&bytes);
        ensure!(actual == digest, "blob {name}@{digest} has digest {actual}");
        Ok(bytes.to_vec())
    }

    /// HEAD a blob.
    pub async fn blob_exists(&self, name: &str, digest: &str) -> Result<bool> {
        let path = format!("/v2/{name}/blobs/{digest}");
        let response = self.request(Method::HEAD, &path).send().await?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status => bail!("HEAD {path}: {status}"),
        }
    }

    /// Uploads a blob in one monolithic PUT, unless the repository already has it.
    pub async fn push_blob(&self, name: &str, data: &[u8]) -> Result<String> {
        let digest = sha256_digest(data);
        if self.blob_exists(name, &digest).await? {
            return Ok(digest);
        }
        let response = self
            .request(Method::POST, &format!("/v2/{name}/blobs/uploads/"))
            .send()
            .await?;
        let response = check(response, &[StatusCode::ACCEPTED], "POST blob upload").await?;
        let location = response
            .headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .context("upload without a Location")?;
        // The Location may be relative and already carries a `_state` query.
        let mut url = Url::parse(&self.base)?.join(location)?;
        url.query_pairs_mut().append_pair("digest", &digest);
        let response = self
            .request(Method::PUT, url.as_str())
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await?;
        check(response, &[StatusCode::CREATED], "PUT blob").await?;
        Ok(digest)
    }

    /// PUTs a manifest (or index) under a tag or digest; returns the registry's digest for it.
    pub async fn push_manifest(
        &self,
        name: &str,
        reference: &str,
        media_type: &str,
        manifest: &[u8],
    ) -> Result<String> {
        let response = self
            .request(Method::PUT, &format!("/v2/{name}/manifests/{reference}"))
            .header("Content-Type", media_type)
            .body(manifest.to_vec())
            .send()
            .await?;
        let response = check(response, &[StatusCode::CREATED], "PUT manifest").await?;
        let digest = response
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        ensure!(
            digest == sha256_digest(manifest),
            "registry digests the manifest as {digest:?}"
        );
        Ok(digest)
    }

    /// Pushes an image's blobs, then its manifest under `tag` (or only by digest if `None`).
    pub async fn push_image(
        &self,
        name: &str,
        tag: Option<&str>,
        image: &BuiltImage,
    ) -> Result<()> {
        for (_, blob) in image.blobs() {
            self.push_blob(name, blob).await?;
        }
        let reference = tag.unwrap_or(&image.manifest_digest);
        self.push_manifest(name, reference, image.media_type, &image.manifest)
            .await?;
        Ok(())
    }

    /// Pushes every image of the index by digest (the registry wants them present in the
    /// repository first), then the index under `tag`.
    pub async fn push_index(&self, name: &str, tag: &str, index: &BuiltIndex) -> Result<()> {
        for image in &index.images {
            self.push_image(name, None, image).await?;
        }
        self.push_manifest(name, tag, index.media_type, &index.manifest)
            .await?;
        Ok(())
    }
}

async fn check(response: Response, ok: &[StatusCode], what: &str) -> Result<Response> {
    if ok.contains(&response.status()) {
        return Ok(response);
    }
    let (status, url) = (response.status(), response.url().clone());
    let body = response.text().await.unwrap_or_default();
    bail!("{what} {url}: {status}: {body}")
}

/// In the workspace, reqwest is built with `rustls-no-provider` (the daemon's choice, which
/// avoids aws-lc's C build), so every client needs a provider installed first, even for
/// plain http.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_successful_access_log_lines_only() {
        let log = r#"time="2024-01-01T00:00:00Z" level=info msg="response completed" http.request.method=GET
127.0.0.1 - - [01/Jan/2024:00:00:00 +0000] "GET /v2/ HTTP/1.1" 401 87 "" "reqwest"
127.0.0.1 - - [01/Jan/2024:00:00:00 +0000] "GET /v2/busybox/blobs/sha256:ab HTTP/1.1" 200 10 "" "x"
127.0.0.1 - - [01/Jan/2024:00:00:00 +0000] "HEAD /v2/busybox/blobs/sha256:ab HTTP/1.1" 200 0 "" "x"
127.0.0.1 - - [01/Jan/2024:00:00:00 +0000] "GET /v2/busybox/blobs/sha256:cd HTTP/1.1" 404 0 "" "x"
127.0.0.1 - - [01/Jan/2024:00:00:00 +0000] "GET /v2/busybox/blobs/sha256:ab HTTP/1.1" 307 0 "" "x""#;
        assert_eq!(count_requests(log, "GET", "/v2/busybox/blobs/"), 2);
        assert_eq!(count_requests(log, "HEAD", "sha256:ab"), 1);
        assert_eq!(count_requests(log, "GET", "/v2/"), 2);
    }
}
