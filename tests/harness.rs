//! Tests of the test harness itself: the registry serves exactly what `push_all` built, the
//! access log records it, auth works, and the images' documented expectations are true.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use k8s_cri::v1::{VersionRequest, VersionResponse};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use test_support::image::{
    DOCKER_LAYER_GZIP, OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD,
};
use test_support::{
    Daemon, Registry, RegistryClient, TestImage, TestImages, host_arch, other_arch, push_all,
    sha256_digest,
};

#[tokio::test]
async fn registry_serves_every_pushed_image() -> Result<()> {
    let registry = Registry::start().await?;
    let images = push_all(&registry).await?;
    let client = registry.client();

    for image in images.images() {
        check_image(&registry, &client, image)
            .await
            .with_context(|| image.reference())?;
    }
    check_multiarch(&registry, &client, &images).await?;

    // The compression variants share one tar, so a runtime can share the unpacked layer.
    let busybox = &images.busybox;
    for variant in [
        &images.busybox_docker,
        &images.busybox_zstd,
        &images.busybox_uncompressed,
    ] {
        assert_eq!(variant.diff_ids, busybox.diff_ids, "{}", variant.name);
        assert_ne!(
            variant.manifest_digest, busybox.manifest_digest,
            "{}",
            variant.name
        );
    }
    assert_eq!(images.layered.diff_ids.len(), 3);

    // Pushing again uploads nothing: every blob is already there.
    let uploads = registry.count_requests("PUT", "/blobs/uploads/");
    let again = push_all(&registry).await?;
    assert_eq!(registry.count_requests("PUT", "/blobs/uploads/"), uploads);
    assert_eq!(again.busybox.manifest_digest, busybox.manifest_digest);
    Ok(())
}

/// Fetches the manifest by tag and digest and every blob, checks all digests and what the
/// access log recorded.
async fn check_image(
    registry: &Registry,
    client: &RegistryClient,
    image: &TestImage,
) -> Result<()> {
    let name = &image.name;
    for reference in [&image.tag, &image.manifest_digest] {
        let fetched = client.get_manifest(name, reference).await?;
        ensure!(
            fetched.bytes == image.manifest,
            "manifest bytes by {reference}"
        );
        ensure!(
            fetched.media_type == image.manifest_media_type,
            "{}",
            fetched.media_type
        );
        ensure!(
            fetched.digest == image.manifest_digest,
            "Docker-Content-Digest {}",
            fetched.digest
        );
        ensure!(sha256_digest(&fetched.bytes) == image.manifest_digest);
        let path = format!("/v2/{name}/manifests/{reference}");
        ensure!(
            registry.count_requests("GET", &path) == 1,
            "access log lacks GET {path}"
        );
    }

    let manifest: Value = serde_json::from_slice(&image.manifest)?;
    ensure!(manifest["config"]["digest"] == image.config_digest.as_str());
    let layers = manifest["layers"].as_array().context("layers")?;
    let digests: Vec<&str> = layers.iter().filter_map(|l| l["digest"].as_str()).collect();
    ensure!(
        digests == image.layer_digests,
        "manifest layers {digests:?}"
    );

    let config: Value =
        serde_json::from_slice(&client.get_blob(name, &image.config_digest).await?)?;
    ensure!(
        config["os"] == "linux" && config["architecture"] == host_arch(),
        "{config}"
    );
    ensure!(
        config["rootfs"]["diff_ids"] == serde_json::json!(image.diff_ids),
        "{config}"
    );

    for (layer, diff_id) in layers.iter().zip(&image.diff_ids) {
        let digest = layer["digest"].as_str().context("layer digest")?;
        let blob = client.get_blob(name, digest).await?; // checks the digest
        ensure!(layer["size"] == blob.len(), "size of {digest}");
        let tar = decompress(layer["mediaType"].as_str().unwrap_or_default(), &blob)?;
        ensure!(sha256_digest(&tar) == *diff_id, "diff_id of {digest}");
    }
    for digest in std::iter::once(&image.config_digest).chain(&image.layer_digests) {
        let path = format!("/v2/{name}/blobs/{digest}");
        ensure!(
            registry.count_requests("GET", &path) >= 1,
            "access log lacks GET {path}"
        );
    }
    Ok(())
}

fn decompress(media_type: &str, blob: &[u8]) -> Result<Vec<u8>> {
    let mut tar = Vec::new();
    match media_type {
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => {
            flate2::read::GzDecoder::new(blob).read_to_end(&mut tar)?;
        }
        OCI_LAYER_ZSTD => tar = zstd::decode_all(blob)?,
        OCI_LAYER_TAR => tar = blob.to_vec(),
        other => anyhow::bail!("unexpected layer media type {other}"),
    }
    Ok(tar)
}

async fn check_multiarch(
    registry: &Registry,
    client: &RegistryClient,
    images: &TestImages,
) -> Result<()> {
    let multiarch = &images.multiarch;
    let fetched = client.get_manifest("multiarch", &multiarch.tag).await?;
    ensure!(fetched.media_type == OCI_INDEX, "{}", fetched.media_type);
    ensure!(fetched.bytes == multiarch.manifest && fetched.digest == multiarch.digest);
    ensure!(registry.count_requests("GET", "/v2/multiarch/manifests/latest") == 1);

    let index: Value = serde_json::from_slice(&fetched.bytes)?;
    let entries = index["manifests"].as_array().context("manifests")?;
    let platforms: BTreeSet<(&str, &str)> = entries
        .iter()
        .filter_map(|m| {
            Some((
                m["platform"]["os"].as_str()?,
                m["platform"]["architecture"].as_str()?,
            ))
        })
        .collect();
    ensure!(platforms == BTreeSet::from([("linux", host_arch()), ("linux", other_arch())]));
    // Listed first, so "take the first entry" is caught.
    ensure!(entries[0]["platform"]["architecture"] == other_arch());

    let (host, other) = (multiarch.host(), multiarch.other());
    ensure!(
        host.manifest_digest == images.busybox.manifest_digest,
        "host entry is busybox"
    );
    ensure!(other.manifest_digest != host.manifest_digest);
    for image in [host, other] {
        let child = client
            .get_manifest("multiarch", &image.manifest_digest)
            .await?;
        ensure!(child.bytes == image.manifest);
        let config: Value =
            serde_json::from_slice(&client.get_blob("multiarch", &image.config_digest).await?)?;
        ensure!(config["architecture"] == image.image.architecture.as_str());
    }
    Ok(())
}

#[tokio::test]
async fn auth_registry_requires_credentials() -> Result<()> {
    let registry = Registry::start_with_auth("tester", "s3cret").await?;
    let client = registry.client();
    let anonymous = client.anonymous();

    let status = anonymous
        .request(Method::GET, "/v2/")
        .send()
        .await?
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let challenge = anonymous.request(Method::GET, "/v2/").send().await?;
    let www = challenge
        .headers()
        .get("WWW-Authenticate")
        .context("no challenge")?
        .to_str()?;
    assert!(www.starts_with("Basic"), "{www}");

    let images = push_all(&registry).await?; // pushes with the registry's credentials
    let busybox = &images.busybox;
    let fetched = client.get_manifest(&busybox.name, &busybox.tag).await?;
    assert_eq!(fetched.bytes, busybox.manifest);
    client
        .get_blob(&busybox.name, &busybox.layer_digests[0])
        .await?;
    assert!(
        registry.count_requests(
            "GET",
            &format!("/v2/busybox/blobs/{}", busybox.layer_digests[0])
        ) == 1
    );

    assert!(
        anonymous
            .get_manifest(&busybox.name, &busybox.tag)
            .await
            .is_err()
    );
    let wrong = RegistryClient::new(
        &registry.addr(),
        Some(test_support::Credentials {
            username: "tester".into(),
            password: "wrong".into(),
        }),
    );
    let status = wrong.request(Method::GET, "/v2/").send().await?.status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    Ok(())
}

/// The expectations documented on each image hold for its layers applied in order with OCI
/// whiteout semantics, so provisioner tests can rely on them.
#[test]
fn image_expectations_match_their_layers() -> Result<()> {
    use test_support::images::*;
    use test_support::{Compression, ManifestFormat};
    let cases = [
        (
            busybox_image(ManifestFormat::Oci, Compression::Gzip),
            busybox_expected(),
        ),
        (layered_image(), layered_expected()),
    ];
    for (image, expected) in cases {
        let root = tempfile::tempdir()?;
        for layer in &image.layers {
            apply_layer(root.path(), &layer.tar)?;
        }
        verify_rootfs(root.path(), &expected)?;
    }
    Ok(())
}

/// A minimal OCI layer applier: opaque markers clear the directory, `.wh.` files delete.
fn apply_layer(root: &Path, tar: &[u8]) -> Result<()> {
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let dir = root.join(path.parent().unwrap_or(Path::new("")));
        if name == ".wh..wh..opq" {
            for child in std::fs::read_dir(&dir)? {
                let child = child?.path();
                if child.is_dir() && !child.is_symlink() {
                    std::fs::remove_dir_all(child)?;
                } else {
                    std::fs::remove_file(child)?;
                }
            }
        } else if let Some(hidden) = name.strip_prefix(".wh.") {
            let target = dir.join(hidden);
            if target.is_dir() && !target.is_symlink() {
                std::fs::remove_dir_all(target)?;
            } else {
                std::fs::remove_file(target)?;
            }
        } else {
            entry.set_preserve_permissions(true);
            entry.unpack_in(root)?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn docker_archive_round_trips() -> Result<()> {
    let image = test_support::images::configured_image();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("configured.tar");
    image.write_docker_archive(&path, &["configured:latest"])?;

    let mut files = std::collections::BTreeMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&path)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        files.insert(name, data);
    }
    let manifest: Value = serde_json::from_slice(&files["manifest.json"])?;
    let entry = &manifest[0];
    assert_eq!(entry["RepoTags"], serde_json::json!(["configured:latest"]));
    let config = &files[entry["Config"].as_str().context("Config")?];
    assert_eq!(sha256_digest(config), image.config_digest);
    let config: Value = serde_json::from_slice(config)?;
    assert_eq!(config["config"]["User"], "1000:1000");
    assert_eq!(config["config"]["StopSignal"], "SIGUSR1");
    let layers = entry["Layers"].as_array().context("Layers")?;
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| sha256_digest(&files[l.as_str().unwrap_or_default()]))
        .collect();
    assert_eq!(diff_ids, image.diff_ids());
    Ok(())
}

#[tokio::test]
async fn daemon_starts_stops_and_restarts() -> Result<()> {
    let mut daemon = Daemon::start(env!("CARGO_BIN_EXE_cri-mesos")).await?;
    assert!(!version(&daemon).await?.runtime_name.is_empty());
    assert!(
        daemon.socket().exists() && daemon.work_dir().is_dir() && daemon.runtime_dir().is_dir()
    );
    daemon.image_client().await?;

    let status = daemon.stop().await?;
    assert!(status.success(), "{status}; log:\n{}", daemon.log());
    assert!(!daemon.is_running());

    daemon.restart().await?;
    version(&daemon).await?;
    let status = daemon.kill9()?;
    assert!(!status.success());
    daemon.restart().await?; // over the stale socket a crash leaves
    version(&daemon).await?;
    assert!(daemon.log().contains("daemon restarted"));
    Ok(())
}

async fn version(daemon: &Daemon) -> Result<VersionResponse> {
    let request = VersionRequest {
        version: "v1".into(),
    };
    Ok(daemon
        .runtime_client()
        .await?
        .version(request)
        .await?
        .into_inner())
}

#[test]
fn run_once_reports_a_refused_flag() -> Result<()> {
    let out = test_support::run_once(env!("CARGO_BIN_EXE_cri-mesos"), ["--no-such-flag"])?;
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    assert!(out.stderr.contains("no-such-flag"), "{out:?}");
    Ok(())
}

/// Custom images: extra files on the busybox base, and a malicious layer that the tar crate's
/// path-checking builder would refuse to write.
#[tokio::test]
async fn custom_and_malicious_images_push() -> Result<()> {
    use test_support::images::busybox_entries;
    use test_support::{Compression, ImageBuilder, Layer, TarEntry, push_entries};

    let registry = Registry::start().await?;
    let mut entries = busybox_entries();
    entries.push(TarEntry::file("/hello.txt", "hi").owner(1000, 1000));
    let custom = push_entries(&registry, "custom", "v1", entries).await?;
    let fetched = registry.client().get_manifest("custom", "v1").await?;
    assert_eq!(fetched.digest, custom.manifest_digest);

    let evil = Layer::raw([
        TarEntry::file("../escape", "x"),
        TarEntry::symlink("etc-link", "/etc"),
        TarEntry::file("etc-link/passwd", "x"),
        TarEntry::hardlink("shadow", "../../etc/shadow"),
    ]);
    let image = ImageBuilder::oci().layer(evil, Compression::Gzip).build();
    let pushed = registry.push("evil", "latest", &image).await?;
    let blob = registry
        .client()
        .get_blob("evil", &pushed.layer_digests[0])
        .await?;
    let tar = decompress(OCI_LAYER_GZIP, &blob)?;
    let mut archive = tar::Archive::new(tar.as_slice());
    let paths: Vec<String> = archive
        .entries()?
        .map(|e| Ok(String::from_utf8_lossy(&e?.path_bytes()).into_owned()))
        .collect::<Result<_>>()?;
    assert_eq!(
        paths,
        ["../escape", "etc-link", "etc-link/passwd", "shadow"]
    );
    Ok(())
}
