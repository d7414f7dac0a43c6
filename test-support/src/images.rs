//! The standard test images, built from busybox-static, and what a pushed image looks like.
//!
//! | name | what it exercises |
//! |---|---|
//! | `busybox` | one gzip OCI layer: a working shell rootfs with users and mount points |
//! | `layered` | three layers: whiteout, opaque directory, modes across layers |
//! | `configured` | config fields: Entrypoint, Cmd, Env, WorkingDir, User, StopSignal |
//! | `busybox-docker` | Docker schema 2 manifest of the same content |
//! | `busybox-zstd`, `busybox-uncompressed` | other layer compressions of the same tar (same diff_id) |
//! | `multiarch` | OCI index: host arch -> the busybox manifest, the other arch -> a marked image |
//!
//! Every image is tagged `latest`.

use std::sync::OnceLock;

use anyhow::{Context, Result};
use serde_json::json;

use crate::image::{BuiltImage, BuiltIndex, ImageBuilder, ManifestFormat};
use crate::layer::{Compression, Layer, TarEntry};
pub use crate::pushed::{Expect, TestImage, TestIndex, verify_rootfs};
use crate::registry::Registry;

/// Where busybox-static installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The tag of every standard image.
pub const TAG: &str = "latest";

/// `PATH` as Docker images set it.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Applets linked in `/bin` (symlinks to `busybox`).
pub const APPLETS: &[&str] = &[
    "[", "awk", "basename", "cat", "chmod", "chown", "cp", "cut", "date", "dd", "df", "dirname",
    "du", "echo", "env", "expr", "false", "find", "free", "grep", "head", "hostname", "id", "ip",
    "kill", "ln", "ls", "mkdir", "mkfifo", "mount", "mv", "nc", "nproc", "pidof", "printf", "ps",
    "pwd", "readlink", "rm", "rmdir", "sed", "seq", "sh", "sleep", "sort", "stat", "stty", "tail",
    "tee", "test", "timeout", "top", "touch", "tr", "true", "umount", "uname", "uniq", "unshare",
    "wc", "wget", "whoami", "xargs", "yes",
];

/// `/etc/passwd`: root, `app` (1000:1000, the unprivileged user of tests), `nobody`.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
";

/// `/etc/group`: `app` is also a member of `extra` (2000), so a container running as `app`
/// must get 2000 as a supplementary group from the image.
pub const GROUP: &str = "root:x:0:
app:x:1000:
extra:x:2000:app
nobody:x:65534:
";

/// All standard images pushed to one registry.
#[derive(Clone, Debug)]
pub struct TestImages {
    pub busybox: TestImage,
    pub layered: TestImage,
    pub configured: TestImage,
    pub busybox_docker: TestImage,
    pub busybox_zstd: TestImage,
    pub busybox_uncompressed: TestImage,
    pub multiarch: TestIndex,
}

impl TestImages {
    /// The six single-manifest images (not the index).
    pub fn images(&self) -> [&TestImage; 6] {
        [
            &self.busybox,
            &self.layered,
            &self.configured,
            &self.busybox_docker,
            &self.busybox_zstd,
            &self.busybox_uncompressed,
        ]
    }
}

/// Pushes every standard image to `registry` as `<name>:latest`. Idempotent: blobs the
/// registry has are skipped, manifests are re-put unchanged.
pub async fn push_all(registry: &Registry) -> Result<TestImages> {
    let s = standard();
    let push = |name: &'static str, image: &'static BuiltImage, expected| async move {
        let mut pushed = registry.push(name, TAG, image).await?;
        pushed.expected = expected;
        anyhow::Ok(pushed)
    };
    let host_expected = [
        busybox_expected(),
        vec![("/platform".into(), Expect::Absent)],
    ]
    .concat();
    let other_expected = vec![("/platform".into(), Expect::file(crate::other_arch(), 0o644))];
    Ok(TestImages {
        busybox: push("busybox", &s.busybox, busybox_expected()).await?,
        layered: push("layered", &s.layered, layered_expected()).await?,
        configured: push("configured", &s.configured, configured_expected()).await?,
        busybox_docker: push("busybox-docker", &s.busybox_docker, busybox_expected()).await?,
        busybox_zstd: push("busybox-zstd", &s.busybox_zstd, busybox_expected()).await?,
        busybox_uncompressed: push(
            "busybox-uncompressed",
            &s.busybox_uncompressed,
            busybox_expected(),
        )
        .await?,
        multiarch: {
            let mut index = registry.push_index("multiarch", TAG, &s.multiarch).await?;
            // Index order: other arch first.
            index.images[0].expected = other_expected;
            index.images[1].expected = host_expected;
            index
        },
    })
}

/// Builds and pushes a one-layer image (gzip, OCI, `Cmd ["/bin/sh"]`, a `PATH`) from
/// `entries` as given to [`Layer::new`]; start from [`busybox_entries`] for a runnable image.
pub async fn push_entries(
    registry: &Registry,
    name: &str,
    tag: &str,
    entries: Vec<TarEntry>,
) -> Result<TestImage> {
    let image = base_config(ImageBuilder::oci())
        .layer(Layer::new(entries), Compression::Gzip)
        .build();
    registry.push(name, tag, &image).await
}

/// The standard images, built once per test process: compressing busybox takes a moment, and
/// identical bytes on every push are what make the pushes idempotent.
struct Standard {
    busybox: BuiltImage,
    layered: BuiltImage,
    configured: BuiltImage,
    busybox_docker: BuiltImage,
    busybox_zstd: BuiltImage,
    busybox_uncompressed: BuiltImage,
    multiarch: BuiltIndex,
}

fn standard() -> &'static Standard {
    static STANDARD: OnceLock<Standard> = OnceLock::new();
    STANDARD.get_or_init(|| Standard {
        busybox: busybox_image(ManifestFormat::Oci, Compression::Gzip),
        layered: layered_image(),
        configured: configured_image(),
        busybox_docker: busybox_image(ManifestFormat::Docker, Compression::Gzip),
        busybox_zstd: busybox_image(ManifestFormat::Oci, Compression::Zstd),
        busybox_uncompressed: busybox_image(ManifestFormat::Oci, Compression::None),
        multiarch: multiarch_index(),
    })
}

/// The bytes of busybox-static's binary.
pub fn busybox_binary() -> &'static [u8] {
    static BINARY: OnceLock<Vec<u8>> = OnceLock::new();
    BINARY.get_or_init(|| {
        std::fs::read(BUSYBOX)
            .with_context(|| format!("read {BUSYBOX} (apt-get install busybox-static)"))
            .unwrap()
    })
}

/// The entries of the busybox base layer; extend them to build custom images
/// (a later entry for the same path replaces the base one in [`Layer::new`]).
pub fn busybox_entries() -> Vec<TarEntry> {
    let mut entries = vec![TarEntry::file("bin/busybox", busybox_binary()).mode(0o755)];
    entries.extend(
        APPLETS
            .iter()
            .map(|a| TarEntry::symlink(format!("bin/{a}"), "busybox")),
    );
    // `#!/usr/bin/env` scripts are common enough to be worth one link.
    entries.push(TarEntry::symlink("usr/bin/env", "/bin/busybox"));
    // Mount points a read-only rootfs needs, since nothing can create them at start.
    for dir in ["proc", "dev", "sys", "etc", "var", "run"] {
        entries.push(TarEntry::dir(dir));
    }
    entries.push(TarEntry::dir("tmp").mode(0o1777));
    entries.push(TarEntry::dir("root").mode(0o700));
    entries.push(TarEntry::dir("home/app").owner(1000, 1000));
    for file in ["etc/hosts", "etc/resolv.conf", "etc/hostname"] {
        entries.push(TarEntry::file(file, Vec::new()));
    }
    entries.push(TarEntry::file("etc/passwd", PASSWD));
    entries.push(TarEntry::file("etc/group", GROUP));
    entries
}

/// What every busybox-based image's rootfs contains.
pub fn busybox_expected() -> Vec<(String, Expect)> {
    [
        ("/bin/busybox", Expect::file(busybox_binary(), 0o755)),
        ("/bin/sh", Expect::Symlink("busybox".into())),
        ("/tmp", Expect::Dir { mode: 0o1777 }),
        ("/root", Expect::Dir { mode: 0o700 }),
        ("/proc", Expect::Dir { mode: 0o755 }),
        ("/etc/resolv.conf", Expect::file("", 0o644)),
        ("/etc/passwd", Expect::file(PASSWD, 0o644)),
        ("/etc/group", Expect::file(GROUP, 0o644)),
    ]
    .into_iter()
    .map(|(path, expect)| (path.to_owned(), expect))
    .collect()
}

/// [`busybox_entries`] as a layer, built once per process (it hashes 2 MB).
pub fn busybox_layer() -> Layer {
    static LAYER: OnceLock<Layer> = OnceLock::new();
    LAYER.get_or_init(|| Layer::new(busybox_entries())).clone()
}

fn base_config(builder: ImageBuilder) -> ImageBuilder {
    builder
        .config("Cmd", json!(["/bin/sh"]))
        .config("Env", json!([DEFAULT_PATH]))
}

/// `busybox` in any manifest format and layer compression; the layer tar (so the diff_id) is
/// the same in all of them.
pub fn busybox_image(format: ManifestFormat, compression: Compression) -> BuiltImage {
    base_config(ImageBuilder::new(format))
        .layer(busybox_layer(), compression)
        .build()
}

/// `layered`: whiteout and opaque directory across three gzip layers; see [`layered_expected`].
pub fn layered_image() -> BuiltImage {
    let mut base = busybox_entries();
    base.extend([
        TarEntry::file("data/keep.txt", "keep\n"),
        TarEntry::file("data/remove-me.txt", "remove me\n"),
        TarEntry::file("opaque/old-a.txt", "old a\n"),
        TarEntry::file("opaque/sub/old-b.txt", "old b\n"),
    ]);
    let layer2 = [
        TarEntry::file("data/added.txt", "layer2").mode(0o640),
        TarEntry::whiteout("data/remove-me.txt"),
    ];
    let layer3 = [
        TarEntry::opaque("opaque"),
        TarEntry::file("opaque/new.txt", "new\n"),
        TarEntry::file("usr/local/bin/tool", "#!/bin/sh\necho tool\n").mode(0o755),
    ];
    base_config(ImageBuilder::oci())
        .layer(Layer::new(base), Compression::Gzip)
        .layer(Layer::new(layer2), Compression::Gzip)
        .layer(Layer::new(layer3), Compression::Gzip)
        .build()
}

/// The merged rootfs of [`layered_image`].
pub fn layered_expected() -> Vec<(String, Expect)> {
    let mut expected = busybox_expected();
    expected.extend(
        [
            ("/data/keep.txt", Expect::file("keep\n", 0o644)),
            ("/data/remove-me.txt", Expect::Absent),
            ("/data/.wh.remove-me.txt", Expect::Absent),
            ("/data/added.txt", Expect::file("layer2", 0o640)),
            ("/opaque", Expect::Dir { mode: 0o755 }),
            ("/opaque/old-a.txt", Expect::Absent),
            ("/opaque/sub", Expect::Absent),
            ("/opaque/.wh..wh..opq", Expect::Absent),
            ("/opaque/new.txt", Expect::file("new\n", 0o644)),
            (
                "/usr/local/bin/tool",
                Expect::file("#!/bin/sh\necho tool\n", 0o755),
            ),
        ]
        .into_iter()
        .map(|(path, expect)| (path.to_owned(), expect)),
    );
    expected
}

/// `configured`: every config field a container inherits from its image.
pub fn configured_image() -> BuiltImage {
    let mut entries = busybox_entries();
    entries.push(TarEntry::dir("work"));
    ImageBuilder::oci()
        .layer(Layer::new(entries), Compression::Gzip)
        .config("Entrypoint", json!(["/bin/sh", "-c"]))
        .config("Cmd", json!(["echo from-cmd"]))
        .config("Env", json!(["FOO=bar", DEFAULT_PATH]))
        .config("WorkingDir", json!("/work"))
        .config("User", json!("1000:1000"))
        .config("StopSignal", json!("SIGUSR1"))
        .build()
}

fn configured_expected() -> Vec<(String, Expect)> {
    let mut expected = busybox_expected();
    expected.push(("/work".into(), Expect::Dir { mode: 0o755 }));
    expected
}

/// `multiarch`: an OCI index whose host-arch entry is the `busybox` manifest (same digest) and
/// whose other-arch entry adds `/platform` (containing the arch name) on top of it. The other
/// arch is listed first, so a runtime that just takes the first entry fails the tests.
pub fn multiarch_index() -> BuiltIndex {
    let other = base_config(ImageBuilder::oci().arch(crate::other_arch()))
        .layer(busybox_layer(), Compression::Gzip)
        .layer(
            Layer::new([TarEntry::file("platform", crate::other_arch())]),
            Compression::Gzip,
        )
        .build();
    let host = busybox_image(ManifestFormat::Oci, Compression::Gzip);
    BuiltIndex::new(vec![other, host]).expect("a two-image index")
}
