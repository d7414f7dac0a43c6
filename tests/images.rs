//! ImageService and the provisioner through the CRI socket, against a real registry.

mod common;

use std::path::Path;

use common::{BIN, Env, container};
use k8s_cri::v1 as cri;
use test_support::{Compression, Daemon, ImageBuilder, Layer, Registry, TarEntry, run_once};
use tonic::Code;

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn status(env: &mut Env, image: &str) -> Option<cri::Image> {
    env.image
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
}

fn layer_count(daemon: &Daemon) -> usize {
    std::fs::read_dir(daemon.work_dir().join("store/docker/layers"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
#[ignore = "needs root"]
async fn every_harness_image_pulls_by_tag_and_digest() {
    let mut env = Env::start(&[]).await;
    let images: Vec<_> = env.images.images().into_iter().cloned().collect();
    for image in &images {
        let id = env.pull(&image.reference()).await;
        assert_eq!(
            id,
            image.id(),
            "{}: image id is the config digest",
            image.name
        );
        let by_digest = env.pull(&image.digest_reference()).await;
        assert_eq!(by_digest, id, "{}: same id by digest", image.name);
        let found = status(&mut env, &image.reference())
            .await
            .expect("status by tag");
        assert_eq!(found.id, id);
        assert!(
            found.repo_tags.contains(&image.reference()),
            "{:?}",
            found.repo_tags
        );
        assert!(
            found.repo_digests.contains(&image.digest_reference()),
            "{:?}",
            found.repo_digests
        );
        assert!(found.size > 0);
        assert_eq!(
            status(&mut env, &id).await.map(|i| i.id),
            Some(id.clone()),
            "status by id"
        );
        assert_eq!(
            status(&mut env, &image.digest_reference())
                .await
                .map(|i| i.id),
            Some(id.clone())
        );
    }
    // The index resolves to this machine's platform.
    let index = env.images.multiarch.clone();
    let id = env.pull(&index.reference()).await;
    assert_eq!(
        id,
        index.host().id(),
        "picked linux/{}",
        test_support::host_arch()
    );

    // The busybox content in OCI gzip, Docker schema 2, zstd and plain tar is one layer.
    assert_eq!(
        layer_count(&env.daemon),
        1 + 3 + 1,
        "busybox shared by 4 images and the index; layered has 3; configured 1"
    );

    let list = env
        .image
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    for image in &images {
        // Identical configs (the busybox variants) are one image with several names.
        assert!(
            list.images
                .iter()
                .any(|i| i.id == image.id() && i.repo_tags.contains(&image.reference())),
            "{} listed",
            image.reference()
        );
    }
    let filtered = env
        .image
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec(&images[0].reference()),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.images.len(), 1);

    // Removing by one tag removes every name of the image, and is idempotent.
    let configured = env.images.configured.clone();
    env.image
        .remove_image(cri::RemoveImageRequest {
            image: spec(&configured.reference()),
        })
        .await
        .unwrap();
    assert!(
        status(&mut env, &configured.digest_reference())
            .await
            .is_none()
    );
    assert!(status(&mut env, configured.id()).await.is_none());
    env.image
        .remove_image(cri::RemoveImageRequest {
            image: spec(&configured.reference()),
        })
        .await
        .unwrap();

    let fs = env
        .image
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert!(
        usage.used_bytes.as_ref().unwrap().value > 1_000_000,
        "busybox is over 1 MB"
    );
    assert!(usage.inodes_used.as_ref().unwrap().value > 10);
    assert!(
        usage
            .fs_id
            .as_ref()
            .unwrap()
            .mountpoint
            .ends_with("store/docker")
    );
}

#[tokio::test]
#[ignore = "needs root"]
async fn bad_references_and_missing_images_have_clear_codes() {
    let mut env = Env::start(&[]).await;
    let err = env
        .image
        .pull_image(cri::PullImageRequest {
            image: spec("UPPERCASE:latest"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("UPPERCASE"), "{}", err.message());
    let missing = format!("{}/nothing-here:latest", env.registry.addr());
    let err = env
        .image
        .pull_image(cri::PullImageRequest {
            image: spec(&missing),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let err = env
        .image
        .pull_image(cri::PullImageRequest {
            image: spec("127.0.0.1:1/busybox:latest"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("127.0.0.1:1"), "{}", err.message());
    assert!(
        status(&mut env, "never-pulled:latest").await.is_none(),
        "missing image: empty answer, no error"
    );
}

#[tokio::test]
#[ignore = "needs root"]
async fn mirrors_keep_the_original_name() {
    let registry = Registry::start().await.unwrap();
    let image =
        test_support::images::busybox_image(test_support::ManifestFormat::Oci, Compression::Gzip);
    registry
        .push("e2e-test-images/busybox", "1.29-2", &image)
        .await
        .unwrap();
    let daemon = Daemon::builder(BIN)
        .arg(format!(
            "--registry_mirrors=registry.k8s.io=http://{}",
            registry.addr()
        ))
        .start()
        .await
        .unwrap();
    let mut images = daemon.image_client().await.unwrap();
    let name = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
    images
        .pull_image(cri::PullImageRequest {
            image: spec(name),
            ..Default::default()
        })
        .await
        .unwrap();
    let found = images
        .image_status(cri::ImageStatusRequest {
            image: spec(name),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(found.repo_tags, vec![name.to_string()]);
    assert!(found.repo_digests[0].starts_with("registry.k8s.io/e2e-test-images/busybox@sha256:"));
    assert!(registry.count_requests("GET", "/v2/e2e-test-images/busybox/manifests/1.29-2") >= 1);
}

#[tokio::test]
#[ignore = "needs root"]
async fn the_local_directory_provider_serves_docker_save_archives() {
    let dir = tempfile::tempdir().unwrap();
    let image = test_support::images::busybox_image(
        test_support::ManifestFormat::Docker,
        Compression::Gzip,
    );
    image
        .write_docker_archive(&dir.path().join("busybox:latest.tar"), &["busybox:latest"])
        .unwrap();
    std::fs::create_dir_all(dir.path().join("e2e-test-images")).unwrap();
    image
        .write_docker_archive(
            &dir.path().join("e2e-test-images/busybox:1.29-2.tar"),
            &["e2e-test-images/busybox:1.29-2"],
        )
        .unwrap();
    let daemon = Daemon::builder(BIN)
        .arg(format!("--docker_registry={}", dir.path().display()))
        .start()
        .await
        .unwrap();
    let mut images = daemon.image_client().await.unwrap();
    let id = images
        .pull_image(cri::PullImageRequest {
            image: spec("busybox"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    assert_eq!(id, image.config_digest);
    let found = images
        .image_status(cri::ImageStatusRequest {
            image: spec("docker.io/library/busybox:latest"),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(
        found.repo_tags,
        vec!["docker.io/library/busybox:latest".to_string()]
    );
    images
        .pull_image(cri::PullImageRequest {
            image: spec("e2e-test-images/busybox:1.29-2"),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = images
        .pull_image(cri::PullImageRequest {
            image: spec("absent:1"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// The node's own credentials (`registries.HOST.auth_file`, a docker config.json as a
/// dockerconfigjson Secret holds it) authenticate pulls that bring none, read per pull.
#[tokio::test]
#[ignore = "needs root"]
async fn node_credentials_file_authenticates_pulls_without_credentials() {
    let registry = Registry::start_with_auth("puller", "s3cret").await.unwrap();
    let images = test_support::push_all(&registry).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.json");
    let write_auth = |password: &str| {
        let encoded = cri_mesos_supervisor::b64::encode(format!("puller:{password}").as_bytes());
        std::fs::write(
            &auth,
            format!(
                r#"{{"auths": {{"http://{}": {{"auth": "{encoded}"}}}}}}"#,
                registry.addr()
            ),
        )
        .unwrap();
    };
    write_auth("s3cret");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "registries:\n  \"{}\":\n    insecure: true\n    auth_file: {}\n",
            registry.addr(),
            auth.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::builder(BIN)
        .arg(format!("--config={}", config.display()))
        .start()
        .await
        .unwrap();
    let mut client = daemon.image_client().await.unwrap();
    let pull = |image: String| cri::PullImageRequest {
        image: spec(&image),
        ..Default::default()
    };
    let id = client
        .pull_image(pull(images.busybox.reference()))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()))
        .into_inner()
        .image_ref;
    assert_eq!(id, images.busybox.id());
    // A rotated secret is read at the next pull: a wrong password now fails.
    write_auth("wrong");
    let err = client
        .pull_image(pull(images.configured.reference()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    // A file that cannot be read says which, as FailedPrecondition.
    std::fs::write(&auth, "not json").unwrap();
    let err = client
        .pull_image(pull(images.configured.reference()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("auth.json"), "{}", err.message());
}

#[tokio::test]
#[ignore = "needs root"]
async fn basic_auth_with_htpasswd() {
    let registry = Registry::start_with_auth("puller", "s3cret").await.unwrap();
    let images = test_support::push_all(&registry).await.unwrap();
    let daemon = Daemon::builder(BIN)
        .arg(format!("--insecure_registries={}", registry.addr()))
        .start()
        .await
        .unwrap();
    let mut client = daemon.image_client().await.unwrap();
    let auth = |user: &str, pass: &str| {
        Some(cri::AuthConfig {
            username: user.into(),
            password: pass.into(),
            ..Default::default()
        })
    };
    let err = client
        .pull_image(cri::PullImageRequest {
            image: spec(&images.busybox.reference()),
            auth: auth("puller", "wrong"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(
        err.message().contains(&registry.addr()),
        "{}",
        err.message()
    );
    let err = client
        .pull_image(cri::PullImageRequest {
            image: spec(&images.busybox.reference()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let id = client
        .pull_image(cri::PullImageRequest {
            image: spec(&images.busybox.reference()),
            auth: auth("puller", "s3cret"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    assert_eq!(id, images.busybox.id());
    // The `auth` field (base64 user:password) works too.
    let encoded = cri_mesos_supervisor::b64::encode(b"puller:s3cret");
    client
        .pull_image(cri::PullImageRequest {
            image: spec(&images.configured.reference()),
            auth: Some(cri::AuthConfig {
                auth: encoded,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs root"]
async fn concurrent_pulls_fetch_each_blob_once() {
    let mut env = Env::start(&[]).await;
    let image = env.images.layered.clone();
    let (mut a, mut b) = (env.image.clone(), env.image.clone());
    let request = cri::PullImageRequest {
        image: spec(&image.reference()),
        ..Default::default()
    };
    let (ra, rb) = tokio::join!(a.pull_image(request.clone()), b.pull_image(request.clone()));
    assert_eq!(
        ra.unwrap().into_inner().image_ref,
        rb.unwrap().into_inner().image_ref
    );
    for digest in image.layer_digests.iter().chain([&image.config_digest]) {
        let n = env
            .registry
            .count_requests("GET", &format!("/blobs/{digest}"));
        assert_eq!(
            n,
            1,
            "blob {digest} fetched {n} times:\n{}",
            env.registry.access_log()
        );
    }
    // A second image sharing busybox's layer does not download it again.
    let (busybox, docker) = (
        env.images.busybox.reference(),
        env.images.busybox_docker.reference(),
    );
    env.pull(&busybox).await;
    env.pull(&docker).await;
    let busybox_layer = &env.images.busybox.layer_digests[0];
    assert_eq!(
        env.registry
            .count_requests("GET", &format!("/blobs/{busybox_layer}")),
        1
    );
}

#[tokio::test]
#[ignore = "needs root"]
async fn malicious_layers_leave_the_host_untouched() {
    let mut env = Env::start(&[]).await;
    let sentinel = tempfile::tempdir().unwrap();
    let target = sentinel.path().display().to_string();
    let tricks: Vec<(&str, Vec<TarEntry>)> = vec![
        (
            "dotdot",
            vec![TarEntry::file(
                format!("../../../../../../..{target}/dotdot"),
                "x",
            )],
        ),
        (
            "absolute",
            vec![TarEntry::file(format!("{target}/absolute"), "x")],
        ),
        (
            "symlink-dir",
            vec![
                TarEntry::symlink("evil", target.clone()),
                TarEntry::file("evil/through-symlink", "x"),
            ],
        ),
        (
            "symlink-root",
            vec![
                TarEntry::symlink("root", "/"),
                TarEntry::file(format!("root{target}/through-root"), "x"),
            ],
        ),
        (
            "hardlink-out",
            vec![TarEntry::hardlink(
                "stolen",
                "../../../../../../../etc/hostname",
            )],
        ),
        (
            "hardlink-via-symlink",
            vec![
                TarEntry::symlink("etc-link", "/etc"),
                TarEntry::hardlink("stolen", "etc-link/hostname"),
            ],
        ),
    ];
    let hostname_before = std::fs::read("/etc/hostname").ok();
    for (name, entries) in tricks {
        let built = ImageBuilder::oci()
            .layer(Layer::raw(entries), Compression::Gzip)
            .build();
        let pushed = env
            .registry
            .push(&format!("evil-{name}"), "latest", &built)
            .await
            .unwrap();
        let result = env
            .image
            .pull_image(cri::PullImageRequest {
                image: spec(&pushed.reference()),
                ..Default::default()
            })
            .await;
        if let Err(e) = &result {
            assert!(!e.message().is_empty());
        }
        let escaped: Vec<_> = std::fs::read_dir(sentinel.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(
            escaped.is_empty(),
            "{name}: wrote outside the rootfs: {escaped:?}"
        );
    }
    assert_eq!(std::fs::read("/etc/hostname").ok(), hostname_before);
    let staging = env.daemon.work_dir().join("store/docker/staging");
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "no staging leftovers"
    );
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_corrupted_blob_stores_nothing_and_staging_is_cleaned_at_start() {
    let mut env = Env::start(&[]).await;
    let image = env.images.layered.clone();
    // Corrupt one layer in the registry's own storage: it serves the bytes unchecked.
    let hex = image.layer_digests[1]
        .trim_start_matches("sha256:")
        .to_string();
    let data = env.registry.storage_dir().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let err = env
        .image
        .pull_image(cri::PullImageRequest {
            image: spec(&image.reference()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains(&image.layer_digests[1]),
        "names the blob: {}",
        err.message()
    );
    assert!(
        status(&mut env, &image.reference()).await.is_none(),
        "no image record"
    );
    assert!(
        !env.daemon
            .work_dir()
            .join("store/docker/layers")
            .join(&hex)
            .exists()
    );
    let staging = env.daemon.work_dir().join("store/docker/staging");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);

    // A crash mid-pull leaves staging work behind; the next start removes it.
    std::fs::create_dir_all(staging.join("crashed/rootfs/bin")).unwrap();
    std::fs::write(staging.join("crashed/blob"), b"partial").unwrap();
    env.daemon.kill9().unwrap();
    env.daemon.restart().await.unwrap();
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
}

#[tokio::test]
#[ignore = "needs root"]
async fn layers_go_with_the_last_image_and_container_using_them() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    assert_eq!(layer_count(&env.daemon), 1);
    env.image
        .remove_image(cri::RemoveImageRequest {
            image: spec(&image),
        })
        .await
        .unwrap();
    assert_eq!(layer_count(&env.daemon), 0, "collected with its last image");

    env.pull(&image).await;
    let pod = env.pod_config("gc");
    let pod_id = env.run_pod(&pod).await;
    let cid = env
        .create(&pod_id, &pod, container("user", &image, &["true"]))
        .await
        .unwrap();
    env.image
        .remove_image(cri::RemoveImageRequest {
            image: spec(&image),
        })
        .await
        .unwrap();
    assert_eq!(
        layer_count(&env.daemon),
        1,
        "kept while a container uses it"
    );
    env.runtime
        .remove_container(cri::RemoveContainerRequest { container_id: cid })
        .await
        .unwrap();
    assert_eq!(
        layer_count(&env.daemon),
        0,
        "collected with its last container"
    );
    env.stop_remove_pod(&pod_id).await;
}

async fn rootfs_of(
    env: &mut Env,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    image: &str,
    name: &str,
) -> Result<String, tonic::Status> {
    let id = env
        .create(pod_id, pod, container(name, image, &["true"]))
        .await?;
    let s = env
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: id,
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).unwrap();
    Ok(info["rootfs"].as_str().unwrap().to_string())
}

#[tokio::test]
#[ignore = "needs root"]
async fn overlay_and_copy_honour_whiteouts() {
    for backend in ["overlay", "copy"] {
        let mut env = Env::start(&[&format!("--image_provisioner_backend={backend}")]).await;
        let image = env.images.layered.clone();
        env.pull(&image.reference()).await;
        let pod = env.pod_config(&format!("wh-{backend}"));
        let pod_id = env.run_pod(&pod).await;
        let rootfs = rootfs_of(&mut env, &pod_id, &pod, &image.reference(), "layered")
            .await
            .unwrap();
        image
            .verify_rootfs(Path::new(&rootfs))
            .unwrap_or_else(|e| panic!("{backend}: {e:#}"));
        env.stop_remove_pod(&pod_id).await;
        assert!(
            !Path::new(&rootfs).exists(),
            "{backend}: rootfs removed with its container"
        );
    }
}

#[tokio::test]
#[ignore = "needs root"]
async fn bind_serves_one_layer_read_only_and_refuses_more() {
    let mut env = Env::start(&["--image_provisioner_backend=bind"]).await;
    let busybox = env.images.busybox.clone();
    let layered = env.images.layered.clone();
    env.pull(&busybox.reference()).await;
    env.pull(&layered.reference()).await;
    let pod = env.pod_config("bind");
    let pod_id = env.run_pod(&pod).await;
    let rootfs = rootfs_of(&mut env, &pod_id, &pod, &busybox.reference(), "one")
        .await
        .unwrap();
    busybox.verify_rootfs(Path::new(&rootfs)).unwrap();
    let err = std::fs::write(Path::new(&rootfs).join("tmp/x"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = rootfs_of(&mut env, &pod_id, &pod, &layered.reference(), "three")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains('3'),
        "names the layer count: {}",
        err.message()
    );
    // A read-only rootfs without /mnt/mesos/sandbox cannot show the container its
    // sandbox: fetch URIs for it are refused, not fetched for nothing.
    let mut fetching = container("fetching", &busybox.reference(), &["true"]);
    fetching.annotations.insert(
        "cri-mesos.io/fetch".into(),
        r#"[{"value": "http://127.0.0.1:1/x"}]"#.into(),
    );
    let err = env.create(&pod_id, &pod, fetching).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("cri-mesos.io/fetch")
            && err.message().contains("/mnt/mesos/sandbox"),
        "{}",
        err.message()
    );
    env.stop_remove_pod(&pod_id).await;
}

#[test]
fn aufs_fails_at_start_on_this_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_once(
        BIN,
        [
            format!("--listen={}", dir.path().join("s.sock").display()),
            format!("--work_dir={}", dir.path().join("w").display()),
            format!("--runtime_dir={}", dir.path().join("r").display()),
            "--image_provisioner_backend=aufs".to_string(),
        ],
    )
    .unwrap();
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("aufs"), "{}", out.stderr);
    assert!(!dir.path().join("s.sock").exists());
}
