//! The node's own registry credentials: a docker `config.json` per registry host (what a
//! `kubernetes.io/dockerconfigjson` Secret holds, installed by the chart), used for pulls
//! that bring no credentials of their own. Read at each such pull, so a rotated Secret
//! takes effect without a restart.

use std::path::Path;

use serde::Deserialize;

use super::auth::Credentials;

#[derive(Debug, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::HashMap<String, Entry>,
}

#[derive(Debug, Default, Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, alias = "identitytoken")]
    identity_token: Option<String>,
    #[serde(default, alias = "registrytoken")]
    registry_token: Option<String>,
}

/// The host part of a config.json key: keys are written `host`, `https://host` or
/// `https://host/v1/` (Docker Hub's `https://index.docker.io/v1/`).
fn key_host(key: &str) -> &str {
    let rest = key.split_once("://").map_or(key, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// The credentials for `host` in the config.json text `bytes`; `None` when it has none.
pub fn credentials_for(bytes: &[u8], host: &str) -> Result<Option<Credentials>, String> {
    let config: DockerConfig =
        serde_json::from_slice(bytes).map_err(|e| format!("not a docker config.json: {e}"))?;
    let hub = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    let wanted = |k: &str| {
        let h = key_host(k);
        h == host || (hub.contains(&host) && hub.contains(&h))
    };
    let Some((_, entry)) = config.auths.iter().find(|(k, _)| wanted(k)) else {
        return Ok(None);
    };
    let opt = |s: &Option<String>| s.clone().filter(|v| !v.is_empty());
    let creds = Credentials {
        username: opt(&entry.username),
        password: opt(&entry.password),
        auth: opt(&entry.auth),
        identity_token: opt(&entry.identity_token),
        registry_token: opt(&entry.registry_token),
    };
    Ok(Some(creds))
}

/// Reads `path` and picks the entry of `host`.
pub async fn load(path: &Path, host: &str) -> Result<Option<Credentials>, String> {
    let bytes = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
    credentials_for(&bytes, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_host_in_any_spelling() {
        let json = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOnB3"},
            "registry.example.com": {"username": "u", "password": "p"},
            "http://127.0.0.1:5000": {"identitytoken": "tok"}
        }}"#;
        let hub = credentials_for(json, "docker.io").unwrap().unwrap();
        assert_eq!(hub.auth.as_deref(), Some("aHViOnB3"));
        let ex = credentials_for(json, "registry.example.com")
            .unwrap()
            .unwrap();
        assert_eq!(
            (ex.username.as_deref(), ex.password.as_deref()),
            (Some("u"), Some("p"))
        );
        let local = credentials_for(json, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(local.identity_token.as_deref(), Some("tok"));
        assert!(credentials_for(json, "other.io").unwrap().is_none());
        assert!(credentials_for(b"not json", "x").is_err());
    }
}
