use super::*;
use crate::provisioner::providers::ProviderErrorKind;
use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use tokio::io::AsyncWriteExt as _;

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
    pub(crate) async fn push_image(&self, repo: &str, tag: Option<&str>, arch: &str) -> TestImage {
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
                            Some((ctype, data)) => ("200 OK", *ctype, data.clone(), String::new()),
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
