use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use super::testtar::{MTIME, Tar};
use super::*;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::stat;
use nix::sys::time::TimeSpec;

use super::unpack::parse_pax_time;

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A sandbox: `rootfs/` to extract into, and `outside/`, a sentinel tree that no
/// layer may touch.
struct Sandbox {
    _tmp: tempfile::TempDir,
    rootfs: PathBuf,
    outside: PathBuf,
    before: BTreeMap<PathBuf, (u32, u64, u64, Vec<u8>)>,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        let outside = tmp.path().join("outside");
        fs::create_dir(&rootfs).unwrap();
        fs::create_dir_all(outside.join("etc")).unwrap();
        fs::write(outside.join("etc/passwd"), b"root:x:0:0\n").unwrap();
        fs::write(outside.join("secret"), b"s3cret").unwrap();
        let mut sandbox = Sandbox {
            _tmp: tmp,
            rootfs,
            outside,
            before: BTreeMap::new(),
        };
        sandbox.before = sandbox.snapshot();
        sandbox
    }

    fn snapshot(&self) -> BTreeMap<PathBuf, (u32, u64, u64, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut todo = vec![self.outside.clone()];
        while let Some(dir) = todo.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                let data = if m.is_file() {
                    fs::read(&p).unwrap()
                } else {
                    Vec::new()
                };
                if m.is_dir() {
                    todo.push(p.clone());
                }
                out.insert(p, (m.mode(), m.nlink(), m.mtime() as u64, data));
            }
        }
        out
    }

    fn unpack(&self, tar: &[u8]) -> Result<LayerSummary, ExtractError> {
        unpack_layer(tar, Compression::None, &self.rootfs)
    }

    fn assert_outside_untouched(&self) {
        assert_eq!(
            self.snapshot(),
            self.before,
            "the sentinel tree outside the rootfs changed"
        );
    }

    fn outside_str(&self) -> String {
        self.outside.to_str().unwrap().to_string()
    }
}

fn assert_rejected(result: Result<LayerSummary, ExtractError>, entry: &str) {
    match result {
        Err(ExtractError::Rejected { entry: e, reason }) => {
            assert_eq!(e, entry, "rejected the wrong entry ({reason})");
            let msg = ExtractError::Rejected { entry: e, reason }.to_string();
            assert!(msg.contains(entry), "{msg}");
        }
        other => panic!("expected {entry:?} to be rejected, got {other:?}"),
    }
}

#[test]
fn dotdot_is_rejected() {
    let s = Sandbox::new();
    let tar = Tar::new().file("../outside/escape", 0o644, b"x").finish();
    assert_rejected(s.unpack(&tar), "../outside/escape");
    let tar = Tar::new()
        .dir("a", 0o755)
        .file("a/../../outside/escape2", 0o644, b"x")
        .finish();
    assert_rejected(s.unpack(&tar), "a/../../outside/escape2");
    s.assert_outside_untouched();
}

#[test]
fn absolute_paths_are_confined() {
    let s = Sandbox::new();
    let abs = format!("{}/pwned", s.outside_str());
    let tar = Tar::new()
        .file("/abs/path", 0o644, b"abs")
        .file(&abs, 0o644, b"x")
        .finish();
    s.unpack(&tar).unwrap();
    assert_eq!(fs::read(s.rootfs.join("abs/path")).unwrap(), b"abs");
    assert!(s.rootfs.join(abs.trim_start_matches('/')).is_file());
    s.assert_outside_untouched();
}

#[test]
fn files_through_a_symlinked_dir_are_rejected() {
    let s = Sandbox::new();
    let tar = Tar::new()
        .symlink("evil", &s.outside_str())
        .file("evil/passwd", 0o644, b"pwned")
        .finish();
    assert_rejected(s.unpack(&tar), "evil/passwd");
    s.assert_outside_untouched();

    // A relative symlink climbing out, then a directory entry through it.
    let s = Sandbox::new();
    let tar = Tar::new()
        .symlink("up", "../outside")
        .dir("up/etc/newdir", 0o755)
        .finish();
    assert_rejected(s.unpack(&tar), "up/etc/newdir");
    s.assert_outside_untouched();
}

#[test]
fn symlink_to_root_then_entries_through_it_are_rejected() {
    let s = Sandbox::new();
    let through = format!("x{}/etc/passwd", s.outside_str());
    let tar = Tar::new()
        .symlink("x", "/")
        .file(&through, 0o644, b"pwned")
        .finish();
    assert_rejected(s.unpack(&tar), &through);
    s.assert_outside_untouched();
    // Hardlinks, whiteouts and opaque markers through it fail the same way.
    for name in [
        format!("x{}/h", s.outside_str()),
        format!("x{}/.wh.secret", s.outside_str()),
    ] {
        let s = Sandbox::new();
        let tar = Tar::new()
            .file("f", 0o644, b"f")
            .symlink("x", "/")
            .hardlink_or_whiteout(&name)
            .finish();
        assert_rejected(s.unpack(&tar), &name);
        s.assert_outside_untouched();
    }
}

impl Tar {
    fn hardlink_or_whiteout(&mut self, name: &str) -> &mut Tar {
        if name.contains(".wh.") {
            self.file(name, 0o644, b"")
        } else {
            self.hardlink(name, "f")
        }
    }
}

#[test]
fn hardlinks_out_of_the_rootfs_are_rejected() {
    let s = Sandbox::new();
    let tar = Tar::new().hardlink("pw", "../../etc/passwd").finish();
    assert_rejected(s.unpack(&tar), "pw");
    let tar = Tar::new().hardlink("pw", "../outside/secret").finish();
    assert_rejected(s.unpack(&tar), "pw");
    // An absolute target is the rootfs's, which has no such file.
    let abs = format!("{}/secret", s.outside_str());
    let tar = Tar::new().hardlink("pw", &abs).finish();
    assert_rejected(s.unpack(&tar), "pw");
    s.assert_outside_untouched();
}

#[test]
fn hardlinks_through_a_symlink_are_rejected() {
    let s = Sandbox::new();
    let tar = Tar::new()
        .symlink("sl", &s.outside_str())
        .hardlink("h", "sl/secret")
        .finish();
    assert_rejected(s.unpack(&tar), "h");
    let tar = Tar::new()
        .symlink("sl2", &s.outside_str())
        .hardlink("h2", "sl2")
        .finish();
    // A hardlink to the symlink itself is fine: it is a second name of the link.
    s.unpack(&tar).unwrap();
    assert!(
        fs::symlink_metadata(s.rootfs.join("h2"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    s.assert_outside_untouched();
}

#[test]
fn symlink_replaced_by_a_dir_is_confined() {
    let s = Sandbox::new();
    let tar = Tar::new()
        .symlink("d", &s.outside_str())
        .dir("d", 0o755)
        .file("d/f", 0o644, b"inside")
        .finish();
    s.unpack(&tar).unwrap();
    assert!(fs::symlink_metadata(s.rootfs.join("d")).unwrap().is_dir());
    assert_eq!(fs::read(s.rootfs.join("d/f")).unwrap(), b"inside");
    s.assert_outside_untouched();
}

#[test]
fn dir_replaced_by_a_symlink_is_not_followed() {
    let s = Sandbox::new();
    let tar = Tar::new()
        .dir("e", 0o755)
        .file("e/f", 0o644, b"x")
        .symlink("e", &s.outside_str())
        .file("e/secret", 0o644, b"pwned")
        .finish();
    assert_rejected(s.unpack(&tar), "e/secret");
    assert!(
        fs::symlink_metadata(s.rootfs.join("e"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    s.assert_outside_untouched();
}

#[test]
fn file_over_a_symlink_replaces_the_symlink() {
    let s = Sandbox::new();
    let target = format!("{}/secret", s.outside_str());
    let tar = Tar::new()
        .symlink("s", &target)
        .file("s", 0o600, b"mine")
        .finish();
    s.unpack(&tar).unwrap();
    let m = fs::symlink_metadata(s.rootfs.join("s")).unwrap();
    assert!(m.is_file());
    assert_eq!(fs::read(s.rootfs.join("s")).unwrap(), b"mine");
    s.assert_outside_untouched();
}

/// Every kind of entry with its metadata; device nodes only with `devices` (mknod
/// needs root, and without it they are skipped).
fn metadata_layer(devices: bool) -> Vec<u8> {
    let mut tar = Tar::new();
    tar.raw("bin/", b'5', 0o755, (0, 0), MTIME + 1, "", (0, 0), b"")
        .raw(
            "bin/su",
            b'0',
            0o4755,
            (0, 0),
            MTIME + 2,
            "",
            (0, 0),
            b"#!su",
        )
        .raw("tmp/", b'5', 0o1777, (0, 0), MTIME + 3, "", (0, 0), b"")
        .raw(
            "home/u/",
            b'5',
            0o2750,
            (1234, 5678),
            MTIME + 4,
            "",
            (0, 0),
            b"",
        )
        .raw(
            "home/u/file",
            b'0',
            0o640,
            (1234, 5678),
            MTIME + 5,
            "",
            (0, 0),
            b"data",
        )
        .raw("ro/", b'5', 0o555, (0, 0), MTIME + 6, "", (0, 0), b"")
        .raw(
            "ro/inner",
            b'0',
            0o444,
            (0, 0),
            MTIME + 7,
            "",
            (0, 0),
            b"ro",
        )
        .raw(
            "bin/sh",
            b'2',
            0o777,
            (1234, 5678),
            MTIME + 8,
            "su",
            (0, 0),
            b"",
        )
        .raw(
            "bin/su2",
            b'1',
            0o4755,
            (0, 0),
            MTIME + 9,
            "bin/su",
            (0, 0),
            b"",
        )
        .pax(&[
            ("SCHILY.xattr.user.test", b"hello"),
            ("mtime", b"1600000010.5"),
        ])
        .raw("x", b'0', 0o600, (0, 0), MTIME, "", (0, 0), b"xattr")
        .pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")])
        .raw("y", b'0', 0o600, (0, 0), MTIME, "", (0, 0), b"");
    if devices {
        tar.raw("dev/null", b'3', 0o666, (0, 0), MTIME, "", (1, 3), b"")
            .raw("dev/sda", b'4', 0o660, (0, 6), MTIME, "", (8, 0), b"");
    }
    tar.raw("fifo", b'6', 0o620, (0, 0), MTIME + 11, "", (0, 0), b"");
    tar.finish()
}

#[test]
fn metadata_is_preserved() {
    let s = Sandbox::new();
    let summary = s.unpack(&metadata_layer(root())).unwrap();

    let meta = |p: &str| fs::symlink_metadata(s.rootfs.join(p)).unwrap();
    assert_eq!(meta("bin").mode() & 0o7777, 0o755);
    assert_eq!(
        meta("bin").mtime() as u64,
        MTIME + 1,
        "dir mtime survives its children"
    );
    assert_eq!(meta("bin/su").mode() & 0o7777, 0o4755);
    assert_eq!(meta("bin/su").mtime() as u64, MTIME + 2);
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(meta("home/u").mode() & 0o7777, 0o2750);
    assert_eq!(meta("home/u").mtime() as u64, MTIME + 4);
    assert_eq!(meta("ro").mode() & 0o7777, 0o555);
    assert_eq!(meta("ro").mtime() as u64, MTIME + 6);
    assert_eq!(fs::read(s.rootfs.join("ro/inner")).unwrap(), b"ro");
    assert!(meta("bin/sh").file_type().is_symlink());
    assert_eq!(
        fs::read_link(s.rootfs.join("bin/sh")).unwrap(),
        Path::new("su")
    );
    assert_eq!(
        meta("bin/sh").mtime() as u64,
        MTIME + 8,
        "symlink mtime (lutimes)"
    );
    assert_eq!(meta("bin/su2").ino(), meta("bin/su").ino(), "hardlink");
    assert_eq!(meta("x").mtime(), 1_600_000_010);
    assert_eq!(meta("x").mtime_nsec(), 500_000_000);
    assert_eq!(meta("fifo").mode() & 0o7777, 0o620);
    assert!(meta("fifo").file_type().is_fifo());
    let xattrs = get_xattrs_at(open_dir_for(&s.rootfs).as_fd(), b"x").unwrap();
    assert_eq!(
        xattrs,
        vec![(CString::new("user.test").unwrap(), b"hello".to_vec())]
    );
    let xattrs = get_xattrs_at(open_dir_for(&s.rootfs).as_fd(), b"y").unwrap();
    assert!(
        xattrs.is_empty(),
        "a layer's own overlay xattrs are dropped: {xattrs:?}"
    );
    assert_eq!(summary.size_bytes, 4 + 4 + 2 + 5);
    assert!(summary.whiteouts.is_empty() && summary.opaque_dirs.is_empty());
    // 5 files, 5 dirs (bin tmp home home/u ro), symlink, fifo, not the hardlink; as root
    // also dev/ and its two nodes.
    let expected = 5 + 5 + 1 + 1 + if root() { 3 } else { 0 };
    assert_eq!(summary.entries, expected);
}

#[test]
#[ignore = "needs root"]
fn owners_and_device_nodes_are_preserved() {
    let s = Sandbox::new();
    s.unpack(&metadata_layer(true)).unwrap();
    let meta = |p: &str| fs::symlink_metadata(s.rootfs.join(p)).unwrap();
    assert_eq!((meta("home/u").uid(), meta("home/u").gid()), (1234, 5678));
    assert_eq!(
        (meta("home/u/file").uid(), meta("home/u/file").gid()),
        (1234, 5678)
    );
    assert_eq!(
        (meta("bin/sh").uid(), meta("bin/sh").gid()),
        (1234, 5678),
        "lchown"
    );
    assert!(meta("dev/null").file_type().is_char_device());
    assert_eq!(meta("dev/null").rdev(), stat::makedev(1, 3));
    assert_eq!(meta("dev/null").mode() & 0o7777, 0o666);
    assert!(meta("dev/sda").file_type().is_block_device());
    assert_eq!(meta("dev/sda").gid(), 6);
}

fn open_dir_for(path: &Path) -> OwnedFd {
    nix::fcntl::open(path, dir_flags(), Mode::empty()).unwrap()
}

fn whiteout_layer() -> Vec<u8> {
    Tar::new()
        .dir("etc", 0o755)
        .file("etc/.wh.passwd", 0o644, b"")
        .dir("var/lib", 0o755)
        .file("var/lib/.wh..wh..opq", 0o644, b"")
        .file("var/lib/new", 0o644, b"n")
        .file(".wh.gone", 0o644, b"")
        .file(".wh..wh.plnk/123.456", 0o644, b"aufs hardlink store")
        .file(".wh..wh.aufs", 0o644, b"")
        .finish()
}

#[test]
fn whiteouts_are_converted_and_recorded() {
    let s = Sandbox::new();
    let summary = s.unpack(&whiteout_layer()).unwrap();
    assert_eq!(
        summary.whiteouts,
        vec![PathBuf::from("etc/passwd"), PathBuf::from("gone")]
    );
    assert_eq!(summary.opaque_dirs, vec![PathBuf::from("var/lib")]);
    let names: Vec<_> = fs::read_dir(&s.rootfs)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.to_string_lossy().starts_with(".wh.")),
        "{names:?}"
    );
    assert!(!s.rootfs.join("etc/.wh.passwd").exists());
    assert_eq!(fs::read(s.rootfs.join("var/lib/new")).unwrap(), b"n");
    let json = serde_json::to_string(&summary).unwrap();
    assert_eq!(
        serde_json::from_str::<LayerSummary>(&json).unwrap(),
        summary
    );
}

#[test]
#[ignore = "needs root"]
fn whiteouts_become_overlay_whiteouts_and_opaque_xattrs() {
    let s = Sandbox::new();
    s.unpack(&whiteout_layer()).unwrap();
    let wh = fs::symlink_metadata(s.rootfs.join("etc/passwd")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(
        fs::symlink_metadata(s.rootfs.join("gone"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    let x = get_xattrs_at(open_dir_for(&s.rootfs).as_fd(), b"var/lib").unwrap();
    assert_eq!(
        x,
        vec![(CString::new(OVERLAY_OPAQUE_XATTR).unwrap(), b"y".to_vec())]
    );
}

#[test]
fn whiteout_then_recreated_dir_becomes_opaque() {
    let s = Sandbox::new();
    let tar = Tar::new()
        .file(".wh.data", 0o644, b"")
        .dir("data", 0o755)
        .file("data/new", 0o644, b"n")
        .file(".wh.file", 0o644, b"")
        .file("file", 0o644, b"f")
        .finish();
    let summary = s.unpack(&tar).unwrap();
    assert!(summary.whiteouts.is_empty(), "{summary:?}");
    assert_eq!(summary.opaque_dirs, vec![PathBuf::from("data")]);
    assert!(
        fs::symlink_metadata(s.rootfs.join("file"))
            .unwrap()
            .is_file()
    );
}

#[test]
fn bad_whiteouts_are_rejected() {
    let s = Sandbox::new();
    assert_rejected(
        s.unpack(&Tar::new().file(".wh...", 0o644, b"").finish()),
        ".wh...",
    );
    assert_rejected(
        s.unpack(&Tar::new().file(".wh.x/y", 0o644, b"").finish()),
        ".wh.x/y",
    );
}

fn sample() -> Vec<u8> {
    Tar::new()
        .dir("./", 0o755)
        .dir("./a", 0o700)
        .file("./a/b", 0o644, &vec![7u8; 100_000])
        .symlink("./c", "a/b")
        .finish()
}

#[test]
fn compressions_and_diff_id() {
    use std::io::Write;
    let tar = sample();
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    for (blob, declared) in [
        (&tar, Compression::None),
        (&gz, Compression::Gzip),
        (&zst, Compression::Zstd),
        // Mislabelled: the magic bytes win.
        (&gz, Compression::None),
        (&zst, Compression::Gzip),
        (&tar, Compression::Zstd),
    ] {
        let s = Sandbox::new();
        let summary = unpack_layer(&blob[..], declared, &s.rootfs).unwrap();
        assert_eq!(summary.diff_id, diff_id, "{declared:?}");
        assert_eq!(fs::read(s.rootfs.join("a/b")).unwrap().len(), 100_000);
        assert_eq!(
            fs::metadata(s.rootfs.join("a"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(summary.size_bytes, 100_000);
    }
}

#[test]
fn diff_id_covers_trailing_padding() {
    let mut tar = sample();
    tar.extend(std::iter::repeat_n(0u8, 10240 - tar.len() % 10240));
    let s = Sandbox::new();
    let summary = s.unpack(&tar).unwrap();
    assert_eq!(
        summary.diff_id,
        format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
    );
}

#[test]
fn corrupt_streams_fail() {
    let s = Sandbox::new();
    let mut tar = sample();
    tar[148] ^= 1; // header checksum
    assert!(matches!(s.unpack(&tar), Err(ExtractError::Stream(_))));
    let s = Sandbox::new();
    let gz = [0x1f, 0x8b, 8, 0, 0, 0];
    assert!(matches!(
        unpack_layer(&gz[..], Compression::Gzip, &s.rootfs),
        Err(ExtractError::Stream(_))
    ));
}

#[test]
fn media_types() {
    use Compression::*;
    for (mt, c) in [
        ("application/vnd.oci.image.layer.v1.tar", None),
        ("application/vnd.oci.image.layer.v1.tar+gzip", Gzip),
        ("application/vnd.oci.image.layer.v1.tar+zstd", Zstd),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            Gzip,
        ),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", Gzip),
        (
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            Gzip,
        ),
        ("application/x-tar", None),
        ("", None),
    ] {
        assert_eq!(Compression::from_media_type(mt), c, "{mt}");
    }
    assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Gzip);
    assert_eq!(Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Zstd);
    assert_eq!(Compression::sniff(b"etc/"), None);
}

#[test]
fn pax_times() {
    assert_eq!(parse_pax_time("12"), Some(TimeSpec::new(12, 0)));
    assert_eq!(
        parse_pax_time("12.25"),
        Some(TimeSpec::new(12, 250_000_000))
    );
    assert_eq!(parse_pax_time("-1.5"), Some(TimeSpec::new(-2, 500_000_000)));
    assert_eq!(parse_pax_time("x"), Option::None);
}

#[test]
fn replaced_entries_update_accounting() {
    let s = Sandbox::new();
    let tar = Tar::new()
        .dir("d", 0o755)
        .file("d/a", 0o644, b"aaaa")
        .file("d/b", 0o644, b"bb")
        .file("d", 0o644, b"now a file")
        .finish();
    let summary = s.unpack(&tar).unwrap();
    assert_eq!(summary.entries, 1);
    assert_eq!(summary.size_bytes, 10);
}
