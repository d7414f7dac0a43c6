//! Filesystem isolators (Mesos's `filesystem/*`): the container's root filesystem and
//! what the runtime itself mounts into it.

pub mod linux;

use std::path::{Component, Path, PathBuf};

/// A container path as an absolute, lexically clean path (as Go's `filepath.Clean` of an
/// absolute path), so that "/etc/hosts/", "/etc//hosts" and "/etc/./hosts" name the same
/// mount point when deciding whose mount wins and in which order mounts are made.
pub(crate) fn clean_container_path(path: &str) -> PathBuf {
    let mut clean = PathBuf::from("/");
    for component in Path::new(path).components() {
        match component {
            Component::Normal(name) => clean.push(name),
            Component::ParentDir => {
                clean.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    clean
}

/// Number of components below `/`: a mount must be made after the mounts of its parents,
/// or they would hide it.
pub(crate) fn depth(path: &Path) -> usize {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_like_go() {
        assert_eq!(
            clean_container_path("/etc/hosts/"),
            PathBuf::from("/etc/hosts")
        );
        assert_eq!(
            clean_container_path("/etc//./hosts"),
            PathBuf::from("/etc/hosts")
        );
        assert_eq!(
            clean_container_path("/a/../etc/hosts"),
            PathBuf::from("/etc/hosts")
        );
        assert_eq!(clean_container_path("/../.."), PathBuf::from("/"));
        assert_eq!(depth(Path::new("/")), 0);
        assert_eq!(depth(Path::new("/var/run/secrets")), 3);
    }
}
