//! What a test pushed to a registry ([`TestImage`], [`TestIndex`]) and what a provisioned
//! rootfs of it must hold ([`Expect`], [`verify_rootfs`]): the records both the registry
//! (which pushes) and the standard images (which say what to expect) share.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Result, bail};

use crate::image::BuiltImage;

/// What a path in a provisioned rootfs must be; see [`verify_rootfs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A regular file with this content and these permission bits.
    File { content: Vec<u8>, mode: u32 },
    /// A directory with these permission bits.
    Dir { mode: u32 },
    /// A symlink with this target.
    Symlink(String),
    /// Nothing at all (whited out, hidden by an opaque dir, or a whiteout marker itself).
    Absent,
}

impl Expect {
    pub fn file(content: impl Into<Vec<u8>>, mode: u32) -> Self {
        Self::File {
            content: content.into(),
            mode,
        }
    }
}

/// Checks `root` against expectations (paths relative to the rootfs, leading `/` allowed);
/// reports every mismatch at once.
pub fn verify_rootfs(root: &Path, expected: &[(String, Expect)]) -> Result<()> {
    let mut failures = Vec::new();
    for (path, expect) in expected {
        let full = root.join(path.trim_start_matches('/'));
        let meta = std::fs::symlink_metadata(&full);
        let problem = match (expect, &meta) {
            (Expect::Absent, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
            (Expect::Absent, _) => Some("exists".to_owned()),
            (_, Err(e)) => Some(e.to_string()),
            (Expect::File { content, mode }, Ok(m)) if m.is_file() => {
                let actual = std::fs::read(&full).unwrap_or_default();
                let actual_mode = m.permissions().mode() & 0o7777;
                if actual != *content {
                    Some(format!("content differs ({} bytes)", actual.len()))
                } else if actual_mode != *mode {
                    Some(format!("mode {actual_mode:o}, want {mode:o}"))
                } else {
                    None
                }
            }
            (Expect::Dir { mode }, Ok(m)) if m.is_dir() => {
                let actual_mode = m.permissions().mode() & 0o7777;
                (actual_mode != *mode).then(|| format!("mode {actual_mode:o}, want {mode:o}"))
            }
            (Expect::Symlink(target), Ok(m)) if m.is_symlink() => {
                let actual = std::fs::read_link(&full).unwrap_or_default();
                (actual != Path::new(target)).then(|| format!("points to {}", actual.display()))
            }
            (_, Ok(m)) => Some(format!("wrong type {:?}", m.file_type())),
        };
        if let Some(problem) = problem {
            failures.push(format!("  {path}: {problem} (expected {expect:?})"));
        }
    }
    if !failures.is_empty() {
        bail!(
            "rootfs {} differs from the image:\n{}",
            root.display(),
            failures.join("\n")
        );
    }
    Ok(())
}

/// An image pushed to a registry.
#[derive(Clone, Debug)]
pub struct TestImage {
    /// `127.0.0.1:PORT`.
    pub registry: String,
    pub name: String,
    pub tag: String,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    /// The manifest bytes as pushed.
    pub manifest: Vec<u8>,
    /// `sha256:` of the config: the image id CRI reports.
    pub config_digest: String,
    /// Layer blob digests, bottom first.
    pub layer_digests: Vec<String>,
    /// `sha256:` of each uncompressed layer tar, bottom first.
    pub diff_ids: Vec<String>,
    /// What the image's rootfs must contain; check with [`TestImage::verify_rootfs`].
    pub expected: Vec<(String, Expect)>,
    /// Everything that was pushed, e.g. for [`BuiltImage::write_docker_archive`].
    pub image: BuiltImage,
}

impl TestImage {
    pub fn new(
        registry: &str,
        name: &str,
        tag: &str,
        image: BuiltImage,
        expected: Vec<(String, Expect)>,
    ) -> Self {
        Self {
            registry: registry.into(),
            name: name.into(),
            tag: tag.into(),
            manifest_digest: image.manifest_digest.clone(),
            manifest_media_type: image.media_type.into(),
            manifest: image.manifest.clone(),
            config_digest: image.config_digest.clone(),
            layer_digests: image.layer_digests(),
            diff_ids: image.diff_ids(),
            expected,
            image,
        }
    }

    /// `127.0.0.1:PORT/name:tag`, what a pod spec names.
    pub fn reference(&self) -> String {
        format!("{}/{}:{}", self.registry, self.name, self.tag)
    }

    /// `127.0.0.1:PORT/name@sha256:...`, the repo digest CRI reports.
    pub fn digest_reference(&self) -> String {
        format!("{}/{}@{}", self.registry, self.name, self.manifest_digest)
    }

    /// The image id (config digest).
    pub fn id(&self) -> &str {
        &self.config_digest
    }

    /// Checks a provisioned rootfs against [`TestImage::expected`].
    pub fn verify_rootfs(&self, root: &Path) -> Result<()> {
        verify_rootfs(root, &self.expected)
    }
}

/// An OCI index pushed to a registry: `name:tag` is the index, its images are pushed by digest
/// into the same repository (and carry the index's tag, so their `reference()` is the index).
#[derive(Clone, Debug)]
pub struct TestIndex {
    pub registry: String,
    pub name: String,
    pub tag: String,
    pub digest: String,
    pub manifest: Vec<u8>,
    /// The images in index order.
    pub images: Vec<TestImage>,
}

impl TestIndex {
    pub fn reference(&self) -> String {
        format!("{}/{}:{}", self.registry, self.name, self.tag)
    }

    pub fn digest_reference(&self) -> String {
        format!("{}/{}@{}", self.registry, self.name, self.digest)
    }

    /// The image for `linux/<arch>`.
    pub fn for_arch(&self, arch: &str) -> Option<&TestImage> {
        self.images.iter().find(|i| i.image.architecture == arch)
    }

    /// The image a runtime on this host must pick.
    pub fn host(&self) -> &TestImage {
        self.for_arch(crate::host_arch())
            .expect("the index has a host-arch image")
    }

    /// The image a runtime on this host must *not* pick.
    pub fn other(&self) -> &TestImage {
        self.for_arch(crate::other_arch())
            .expect("the index has an other-arch image")
    }
}
