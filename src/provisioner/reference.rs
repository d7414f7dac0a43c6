//! Docker-compatible image references.
//!
//! Kubelet hands us whatever the pod spec says (`busybox`, `foo/bar:1`,
//! `registry.k8s.io/pause:3.10@sha256:...`), and it later matches images by the
//! normalised names we report, so the normalisation has to be Docker's
//! (distribution/reference `ParseNormalizedNamed`), not something looser.

use std::fmt;

/// The registry for names without a host, as Docker spells it in normalised names.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API actually lives.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
const DEFAULT_TAG: &str = "latest";
/// Docker's limit on the `registry/repository` part.
const NAME_MAX: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {}: {reason}", crate::quote::quote(reference))]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

/// A parsed, normalised reference. A reference with neither tag nor digest
/// gets the tag `latest`; one with both keeps both (the digest is what is
/// pulled, the tag is what is reported).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    /// `docker.io`, `registry.k8s.io`, `localhost:5000`, ...
    pub registry: String,
    /// The path inside the registry, e.g. `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 lowercase hex>`.
    pub digest: Option<String>,
}

impl ImageReference {
    /// Parses and normalises like `docker pull`. Image IDs (`sha256:<hex>`
    /// without a name) are not references; callers resolve those first.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let err = |reason: &str| ReferenceError {
            reference: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(err("reference is empty"));
        }
        if input.trim() != input || input.chars().any(char::is_whitespace) {
            return Err(err("reference contains whitespace"));
        }

        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                validate_digest(digest).map_err(|r| err(&r))?;
                (rest, Some(digest.to_string()))
            }
            None => (input, None),
        };

        // A ':' after the last '/' is a tag; one before it belongs to a host port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(&rest[at + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(err(&format!(
                "invalid tag {tag:?} (tags are [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})"
            )));
        }
        if name.is_empty() {
            return Err(err("repository name is empty"));
        }
        if digest.is_none() && is_hex64(name) {
            return Err(err(
                "a 64-character hexadecimal string is an image ID, not a repository name",
            ));
        }

        let (registry, remainder) = split_registry(name);
        if let Some(registry) = registry
            && !valid_registry(registry)
        {
            return Err(err(&format!("invalid registry host {registry:?}")));
        }
        if remainder.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(err("repository name must be lowercase"));
        }
        for component in remainder.split('/') {
            if !valid_path_component(component) {
                return Err(err(&format!(
                    "invalid repository path component {component:?}"
                )));
            }
        }

        let mut registry = registry.unwrap_or(DOCKER_HUB).to_string();
        if registry == "index.docker.io" {
            registry = DOCKER_HUB.to_string();
        }
        let repository = if registry == DOCKER_HUB && !remainder.contains('/') {
            format!("library/{remainder}")
        } else {
            remainder.to_string()
        };
        if registry.len() + 1 + repository.len() > NAME_MAX {
            return Err(err(&format!(
                "repository name is longer than {NAME_MAX} characters"
            )));
        }

        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag` when the reference has a tag (a CRI repo tag).
    pub fn tagged_name(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|tag| format!("{}:{tag}", self.name()))
    }

    /// `registry/repository@digest` (a CRI repo digest) for any manifest digest.
    pub fn digested_name(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }

    /// What goes into `/v2/<repository>/manifests/<here>`: the digest when
    /// there is one, because a digest pins the content and a tag does not.
    pub fn api_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }

    /// The host (with port) serving the registry API for this reference.
    pub fn registry_host_for_api(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ImageReference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Only sha256 is accepted: it is what every registry and the store use, and
/// accepting digests we cannot verify would defeat pulling by digest.
pub fn validate_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!(
            "invalid digest {digest:?} (expected sha256:<64 hex digits>)"
        ));
    };
    if algorithm != "sha256" {
        return Err(format!(
            "unsupported digest algorithm {algorithm:?} (only sha256 is supported)"
        ));
    }
    if !is_hex64(hex) {
        return Err(format!(
            "invalid sha256 digest {digest:?} (expected 64 lowercase hex digits)"
        ));
    }
    Ok(())
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Docker's rule: the first component is a host if it has a '.' or ':', is
/// `localhost`, or has uppercase letters (repositories cannot).
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn valid_registry(host: &str) -> bool {
    let valid_port = |port: &str| {
        !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
    };
    if let Some(inner) = host.strip_prefix('[') {
        // Bracketed IPv6 literal, optionally with a port.
        let Some((addr, after)) = inner.split_once(']') else {
            return false;
        };
        return addr.parse::<std::net::Ipv6Addr>().is_ok()
            && (after.is_empty() || after.strip_prefix(':').is_some_and(valid_port));
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if valid_port(port) => name,
        Some(_) => return false,
        None => host,
    };
    name.split('.').all(|label| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    })
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| word(b) || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = ImageReference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        (r.registry, r.repository, r.tag, r.digest)
    }

    fn full(s: &str) -> String {
        ImageReference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_docker_hub_names() {
        assert_eq!(full("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(full("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(full("foo/bar"), "docker.io/foo/bar:latest");
        assert_eq!(full("foo/bar/baz:v1"), "docker.io/foo/bar/baz:v1");
        assert_eq!(
            full("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            full("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            full("docker.io/library/busybox:latest"),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn detects_hosts_like_docker() {
        assert_eq!(
            parts("localhost:5000/x"),
            (
                "localhost:5000".into(),
                "x".into(),
                Some("latest".into()),
                None
            )
        );
        assert_eq!(
            parts("localhost/x"),
            ("localhost".into(), "x".into(), Some("latest".into()), None)
        );
        assert_eq!(
            parts("127.0.0.1:5000/x:tag"),
            (
                "127.0.0.1:5000".into(),
                "x".into(),
                Some("tag".into()),
                None
            )
        );
        assert_eq!(
            parts("registry.k8s.io/e2e-test-images/busybox:1.29-2"),
            (
                "registry.k8s.io".into(),
                "e2e-test-images/busybox".into(),
                Some("1.29-2".into()),
                None
            )
        );
        assert_eq!(
            parts("myhost:5000/a/b"),
            (
                "myhost:5000".into(),
                "a/b".into(),
                Some("latest".into()),
                None
            )
        );
        // No '.', ':' and not localhost: a Docker Hub user, not a host.
        assert_eq!(parts("myhost/a").0, "docker.io");
        assert_eq!(parts("myhost/a").1, "myhost/a");
        // Uppercase first component can only be a host.
        assert_eq!(parts("Example/a").0, "Example");
        assert_eq!(parts("[::1]:5000/a").0, "[::1]:5000");
    }

    #[test]
    fn digests() {
        let r = ImageReference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.api_reference(), D);
        assert_eq!(r.tagged_name(), None);

        let r = ImageReference::parse(&format!("registry.k8s.io/pause:3.10@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("3.10"));
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.to_string(), format!("registry.k8s.io/pause:3.10@{D}"));
        assert_eq!(r.api_reference(), D);

        let r = ImageReference::parse(&format!("localhost:5000/x@{D}")).unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "x");
    }

    #[test]
    fn accessors() {
        let r = ImageReference::parse("busybox").unwrap();
        assert_eq!(r.name(), "docker.io/library/busybox");
        assert_eq!(
            r.tagged_name().as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(r.digested_name(D), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.registry_host_for_api(), "registry-1.docker.io");
        assert_eq!(r.api_reference(), "latest");
        let r = ImageReference::parse("quay.io/a/b:c").unwrap();
        assert_eq!(r.registry_host_for_api(), "quay.io");
        assert_eq!("quay.io/a/b:c".parse::<ImageReference>().unwrap(), r);
    }

    #[test]
    fn tag_grammar() {
        assert!(ImageReference::parse("a:_x").is_ok());
        assert!(ImageReference::parse("a:v1.2-rc.3_x").is_ok());
        assert!(ImageReference::parse(&format!("a:{}", "t".repeat(128))).is_ok());
        for bad in [
            "a:",
            "a:.x",
            "a:-x",
            "a:x+y",
            &format!("a:{}", "t".repeat(129)),
        ] {
            let e = ImageReference::parse(bad).unwrap_err();
            assert!(e.to_string().contains("invalid tag"), "{bad}: {e}");
            assert_eq!(e.reference, bad);
        }
    }

    #[test]
    fn rejects_bad_names() {
        let cases = [
            ("", "empty"),
            (" busybox", "whitespace"),
            ("Busybox", "lowercase"),
            ("foo/Bar", "lowercase"),
            ("localhost:5000/Foo", "lowercase"),
            ("foo//bar", "path component"),
            ("foo/-bar", "path component"),
            ("foo/bar-", "path component"),
            ("foo/a...b", "path component"),
            ("foo/a___b", "path component"),
            ("/foo", "path component"),
            ("foo/", "path component"),
            ("exa_mple.com/foo", "registry host"),
            ("example.com:port/foo", "registry host"),
            ("-example.com/foo", "registry host"),
            (":5000/foo", "registry host"),
            (
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "image ID",
            ),
        ];
        for (bad, why) in cases {
            let e = ImageReference::parse(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        let long = format!("example.com/{}", "a".repeat(250));
        assert!(
            ImageReference::parse(&long)
                .unwrap_err()
                .reason
                .contains("longer")
        );
        // foo/a__b and foo/a--b are valid separators.
        assert!(ImageReference::parse("foo/a__b").is_ok());
        assert!(ImageReference::parse("foo/a---b.c_d").is_ok());
    }

    #[test]
    fn rejects_bad_digests() {
        let cases = [
            ("busybox@", "invalid digest"),
            ("busybox@sha256", "invalid digest"),
            ("busybox@sha256:abc", "64 lowercase hex"),
            (
                &format!("busybox@{}", D.to_uppercase().replace("SHA256", "sha256")),
                "64 lowercase hex",
            ),
            (
                &format!("busybox@sha512:{}", "a".repeat(128)),
                "unsupported digest algorithm",
            ),
            (
                &format!("busybox@md5:{}", "a".repeat(32)),
                "unsupported digest algorithm",
            ),
            (&format!("busybox@{D}@{D}"), "digest"),
        ];
        for (bad, why) in cases {
            let e = ImageReference::parse(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
            assert_eq!(e.reference, bad);
        }
    }
}
