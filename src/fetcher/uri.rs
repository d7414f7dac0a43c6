//! The URIs a container fetches: Mesos's `CommandInfo.URI`, named in the
//! `cri-mesos.io/fetch` annotation of the pod (for each of its containers) or of the
//! container (the CRI has no field for them).
//!
//! Everything about a URI that can be known without fetching it is checked here, at
//! RunPodSandbox and CreateContainer, so that a typo is an `InvalidArgument` naming the
//! annotation rather than a container that fails to start.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::quote::quote;

/// The annotation holding a JSON list of [`FetchUri`].
pub const FETCH_ANNOTATION: &str = "cri-mesos.io/fetch";

/// URIs of one annotation. A container is fetched in one sequential run, as Mesos's
/// fetcher does, and this keeps a start from taking forever by design.
pub const URIS_MAX: usize = 64;

/// One URI, with Mesos's fields and defaults (`extract` true, the rest false).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchUri {
    /// `http://`, `https://`, `file:///path` or an absolute host path.
    pub value: String,
    /// Make the fetched file executable (0755); an executable is never extracted.
    #[serde(default)]
    pub executable: bool,
    /// Unpack an archive (by its name: `.tar`, `.tgz`, `.zip`, ...) beside the fetched file.
    #[serde(default = "yes")]
    pub extract: bool,
    /// Go through the fetcher cache (keyed by the container's user and this value).
    #[serde(default)]
    pub cache: bool,
    /// Where in the sandbox the file lands (relative); default: the URI's last segment.
    #[serde(default)]
    pub output_file: Option<String>,
}

fn yes() -> bool {
    true
}

/// Where a URI's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Http(reqwest::Url),
    /// An absolute host path without `..`; the allow-list is checked by the fetcher.
    File(PathBuf),
}

/// Why an annotation was refused; the message names the annotation and the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct UriError {
    pub reason: String,
}

impl FetchUri {
    pub fn source(&self) -> Result<Source, String> {
        if self.value.is_empty() {
            return Err("value is empty".into());
        }
        if self.value.starts_with('/') {
            return file_path(&self.value).map(Source::File);
        }
        let url = reqwest::Url::parse(&self.value).map_err(|e| format!("not a URI: {e}"))?;
        match url.scheme() {
            "http" | "https" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err("has no host".into());
                }
                Ok(Source::Http(url))
            }
            "file" => {
                if url
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                {
                    return Err("a file URI names a host path; it cannot name another host".into());
                }
                let path = url
                    .to_file_path()
                    .map_err(|()| "not a host path".to_string())?;
                let text = path.to_str().ok_or("not a UTF-8 path")?.to_string();
                file_path(&text).map(Source::File)
            }
            other => Err(format!(
                "scheme {} is not supported (http, https, file)",
                quote(other)
            )),
        }
    }

    /// The sandbox-relative path the fetched file is written to.
    pub fn destination(&self) -> Result<PathBuf, String> {
        if let Some(out) = &self.output_file {
            return relative_path(out).map_err(|r| format!("output_file {}: {r}", quote(out)));
        }
        let name = match self.source()? {
            Source::File(path) => path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
                .unwrap_or_default(),
            Source::Http(url) => {
                let last = url
                    .path_segments()
                    .and_then(|mut s| s.next_back())
                    .unwrap_or_default()
                    .to_string();
                percent_decode(&last)
            }
        };
        relative_path(&name)
            .ok()
            .filter(|p| p.components().count() == 1)
            .ok_or_else(|| "names no file (its path ends in '/'); set output_file".to_string())
    }
}

/// An absolute host path of a `file` URI: no `..`, which could leave an allowed directory.
fn file_path(text: &str) -> Result<PathBuf, String> {
    let path = Path::new(text);
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err("a host path must not contain '..'".into());
    }
    if text.contains('\0') {
        return Err("NUL byte in the path".into());
    }
    if path.file_name().is_none() {
        return Err("names no file".into());
    }
    Ok(path.to_path_buf())
}

/// A path inside the sandbox: relative, without `..`, naming a file.
fn relative_path(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("is empty".into());
    }
    if text.contains('\0') {
        return Err("NUL byte in the name".into());
    }
    if text.ends_with('/') {
        return Err("names a directory, not a file".into());
    }
    let mut out = PathBuf::new();
    for c in Path::new(text).components() {
        match c {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err("must not contain '..'".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("must be relative to the sandbox".into());
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("names no file".into());
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URIs of one annotation map (a pod's or a container's); none without the key.
pub fn parse(annotations: &HashMap<String, String>) -> Result<Vec<FetchUri>, UriError> {
    let Some(text) = annotations.get(FETCH_ANNOTATION) else {
        return Ok(Vec::new());
    };
    let uris: Vec<FetchUri> = serde_json::from_str(text).map_err(|e| UriError {
        reason: format!(
            "expected a JSON list of {{value, executable, extract, cache, output_file}}: {e}"
        ),
    })?;
    if uris.len() > URIS_MAX {
        return Err(UriError {
            reason: format!("{} URIs, more than the {URIS_MAX} allowed", uris.len()),
        });
    }
    for (i, uri) in uris.iter().enumerate() {
        uri.destination().map_err(|reason| UriError {
            reason: format!("entry {i} ({}): {reason}", quote(&uri.value)),
        })?;
    }
    Ok(uris)
}

/// What a container fetches: its pod's URIs, then its own (a later file of the same name
/// replaces an earlier one).
pub fn for_container(
    pod: &HashMap<String, String>,
    container: &HashMap<String, String>,
) -> Result<Vec<FetchUri>, UriError> {
    let mut uris = parse(pod)?;
    uris.extend(parse(container)?);
    Ok(uris)
}

/// The field an annotation error names, as the CRI layer reports it.
pub fn field(prefix: &str) -> String {
    format!("{prefix}.annotations[{FETCH_ANNOTATION}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(json: &str) -> Result<Vec<FetchUri>, UriError> {
        parse(&HashMap::from([(
            FETCH_ANNOTATION.to_string(),
            json.to_string(),
        )]))
    }

    #[test]
    fn mesos_defaults_and_destinations() {
        let uris = one(r#"[{"value": "http://h:8080/a/b/app.tar.gz"},
                {"value": "https://h/run%20me.sh", "executable": true, "cache": true},
                {"value": "file:///srv/x/data.bin", "output_file": "d/data"},
                {"value": "/srv/x/plain"}]"#)
        .unwrap();
        assert!(uris[0].extract && !uris[0].executable && !uris[0].cache);
        let dest: Vec<PathBuf> = uris.iter().map(|u| u.destination().unwrap()).collect();
        assert_eq!(
            dest,
            ["app.tar.gz", "run me.sh", "d/data", "plain"].map(PathBuf::from)
        );
        assert_eq!(
            uris[2].source().unwrap(),
            Source::File("/srv/x/data.bin".into())
        );
    }

    #[test]
    fn malformed_entries_are_refused_naming_them() {
        for (json, needle) in [
            ("{}", "JSON list"),
            (r#"[{"value": "http://h/x", "bogus": 1}]"#, "bogus"),
            (r#"[{"value": "ftp://h/x"}]"#, "scheme \"ftp\""),
            (r#"[{"value": "http://h/dir/"}]"#, "set output_file"),
            (
                r#"[{"value": "http://h/x", "output_file": "../x"}]"#,
                "'..'",
            ),
            (
                r#"[{"value": "http://h/x", "output_file": "/etc/x"}]"#,
                "relative",
            ),
            (r#"[{"value": "/srv/../etc/shadow"}]"#, "'..'"),
            (r#"[{"value": "file://other/etc/x"}]"#, "another host"),
            (r#"[{"value": ""}]"#, "empty"),
            (r#"[{"value": "relative/path"}]"#, "not a URI"),
        ] {
            let err = one(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
        let many = format!("[{}]", vec![r#"{"value": "http://h/x"}"#; 65].join(","));
        assert!(one(&many).unwrap_err().to_string().contains("65 URIs"));
    }

    #[test]
    fn pod_uris_come_first() {
        let pod = HashMap::from([(
            FETCH_ANNOTATION.to_string(),
            r#"[{"value": "http://h/a"}]"#.to_string(),
        )]);
        let c = HashMap::from([(
            FETCH_ANNOTATION.to_string(),
            r#"[{"value": "http://h/b"}]"#.to_string(),
        )]);
        let all = for_container(&pod, &c).unwrap();
        assert_eq!(
            all.iter().map(|u| u.value.as_str()).collect::<Vec<_>>(),
            ["http://h/a", "http://h/b"]
        );
        assert!(
            for_container(&HashMap::new(), &HashMap::new())
                .unwrap()
                .is_empty()
        );
    }
}
