//! Registry authentication: Docker's token flow, by hand.
//!
//! The registry answers 401 with a `WWW-Authenticate` challenge. `Basic` wants
//! the user's password on every request; `Bearer` names a token server
//! (realm) from which we get a short-lived token for a scope such as
//! `repository:library/busybox:pull`, anonymously or with the user's
//! credentials, or — for an identity token from `docker login` — through the
//! OAuth2 refresh-token grant.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest as _, Sha256};

use super::error::ProviderError;
use super::http::{authority_of, read_limited, snippet};

/// Credentials from the CRI `AuthConfig` of one PullImage request.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
    /// base64 of `user:password`, as in docker's config.json.
    pub auth: Option<String>,
    /// A refresh token for the OAuth2 flow (`docker login` against some registries).
    pub identity_token: Option<String>,
    /// A bearer token sent to the registry as is.
    pub registry_token: Option<String>,
}

// Secrets must not end up in logs through `{:?}`.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |o: &Option<String>| o.as_ref().filter(|s| !s.is_empty()).map(|_| "<set>");
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &set(&self.password))
            .field("auth", &set(&self.auth))
            .field("identity_token", &set(&self.identity_token))
            .field("registry_token", &set(&self.registry_token))
            .finish()
    }
}

fn non_empty(o: &Option<String>) -> Option<&str> {
    o.as_deref().filter(|s| !s.is_empty())
}

impl Credentials {
    pub fn is_empty(&self) -> bool {
        self.basic().is_none()
            && non_empty(&self.identity_token).is_none()
            && non_empty(&self.registry_token).is_none()
    }

    /// username/password, else the decoded `auth` field.
    pub fn basic(&self) -> Option<(String, String)> {
        if let Some(user) = non_empty(&self.username) {
            return Some((user.to_string(), self.password.clone().unwrap_or_default()));
        }
        let decoded = BASE64.decode(non_empty(&self.auth)?.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, pass) = decoded.split_once(':')?;
        Some((user.to_string(), pass.to_string()))
    }

    /// Tokens are cached per credential identity, so a token obtained with one
    /// pod's pull secret is never reused for a request made without it.
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for field in [
            &self.username,
            &self.password,
            &self.auth,
            &self.identity_token,
            &self.registry_token,
        ] {
            h.update(field.as_deref().unwrap_or("").as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    }
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased: `basic`, `bearer`.
    pub scheme: String,
    pub params: HashMap<String, String>,
}

/// Parses `Bearer realm="https://a/token",service="x",scope="repository:a:pull,push"`
/// (several challenges may share one header value, and quoted values may hold commas).
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let s = header.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && (s[*i] == b' ' || s[*i] == b'\t' || s[*i] == b',') {
            *i += 1;
        }
    };
    while i < s.len() {
        skip_ws(&mut i);
        let start = i;
        while i < s.len() && !matches!(s[i], b' ' | b'\t' | b',' | b'=') {
            i += 1;
        }
        let token = &header[start..i];
        if token.is_empty() {
            i += 1;
            continue;
        }
        if i < s.len() && s[i] == b'=' {
            // A parameter of the current challenge.
            i += 1;
            let value = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < s.len() && s[i] != b'"' {
                    if s[i] == b'\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    let ch = header[i..].chars().next().unwrap_or('\0');
                    v.push(ch);
                    i += ch.len_utf8();
                }
                i += 1;
                v
            } else {
                let vs = i;
                while i < s.len() && s[i] != b',' {
                    i += 1;
                }
                header[vs..i].trim().to_string()
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(token.to_ascii_lowercase(), value);
            }
        } else {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: HashMap::new(),
            });
        }
    }
    out
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The spec's default when the token server does not say.
const DEFAULT_TOKEN_LIFETIME: u64 = 60;
/// Basic auth does not expire; remembering it only saves the 401 round trip.
const BASIC_LIFETIME: Duration = Duration::from_secs(3600);
const TOKEN_RESPONSE_MAX: usize = 1 << 20;

type CacheKey = (String, String, String);

/// Authorization header values per (registry authority, scope, credentials).
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<CacheKey, (String, Instant)>>,
}

impl TokenCache {
    /// The header to send before any challenge: a cached one, or the
    /// caller's registry token.
    pub fn preauthorize(
        &self,
        authority: &str,
        scope: &str,
        creds: Option<&Credentials>,
    ) -> Option<String> {
        let key = key(authority, scope, creds);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&key) {
            Some((header, until)) if *until > Instant::now() => return Some(header.clone()),
            Some(_) => {
                entries.remove(&key);
            }
            None => {}
        }
        drop(entries);
        creds
            .and_then(|c| non_empty(&c.registry_token))
            .map(|t| format!("Bearer {t}"))
    }

    /// Forgets what was sent, so a rejected token is not sent again.
    pub fn invalidate(&self, authority: &str, scope: &str, creds: Option<&Credentials>) {
        let key = key(authority, scope, creds);
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }

    /// Answers the challenges of a 401 and returns the header to retry with.
    pub async fn authorize(
        &self,
        client: &reqwest::Client,
        registry: &str,
        challenges: &[Challenge],
        scope: &str,
        creds: Option<&Credentials>,
    ) -> Result<String, ProviderError> {
        let unauthorized = |detail: String| ProviderError::Unauthorized {
            registry: registry.to_string(),
            detail,
        };
        let (header, lifetime) = if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = c
                .params
                .get("realm")
                .ok_or_else(|| unauthorized("bearer challenge without a realm".into()))?;
            let service = c.params.get("service").map(String::as_str);
            let scope = c.params.get("scope").map_or(scope, String::as_str);
            let (token, ttl) = fetch_token(client, registry, realm, service, scope, creds).await?;
            (format!("Bearer {token}"), ttl)
        } else if challenges.iter().any(|c| c.scheme == "basic") {
            let (user, pass) = creds.and_then(Credentials::basic).ok_or_else(|| {
                unauthorized(
                    "registry requires basic authentication and no credentials were given".into(),
                )
            })?;
            let value = BASE64.encode(format!("{user}:{pass}"));
            (format!("Basic {value}"), BASIC_LIFETIME)
        } else {
            let schemes: Vec<_> = challenges.iter().map(|c| c.scheme.as_str()).collect();
            return Err(unauthorized(format!(
                "unsupported authentication challenge {schemes:?}"
            )));
        };
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                key(registry, scope, creds),
                (header.clone(), Instant::now() + lifetime),
            );
        Ok(header)
    }
}

fn key(authority: &str, scope: &str, creds: Option<&Credentials>) -> CacheKey {
    (
        authority.to_string(),
        scope.to_string(),
        creds.map(Credentials::fingerprint).unwrap_or_default(),
    )
}

async fn fetch_token(
    client: &reqwest::Client,
    registry: &str,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    creds: Option<&Credentials>,
) -> Result<(String, Duration), ProviderError> {
    let realm_url = reqwest::Url::parse(realm).map_err(|e| ProviderError::Unauthorized {
        registry: registry.to_string(),
        detail: format!("invalid token realm {realm:?}: {e}"),
    })?;
    if !matches!(realm_url.scheme(), "http" | "https") {
        return Err(ProviderError::Unauthorized {
            registry: registry.to_string(),
            detail: format!("token realm {realm:?} is not an http(s) URL"),
        });
    }
    let mut params: Vec<(&str, &str)> = Vec::new();
    if let Some(service) = service {
        params.push(("service", service));
    }
    if !scope.is_empty() {
        params.push(("scope", scope));
    }

    let request = if let Some(refresh) = creds.and_then(|c| non_empty(&c.identity_token)) {
        params.extend([
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", "cri-mesos"),
        ]);
        client
            .post(realm_url.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form_encode(&params))
    } else {
        let mut url = realm_url.clone();
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &params {
                q.append_pair(k, v);
            }
        }
        let req = client.get(url);
        match creds.and_then(Credentials::basic) {
            Some((user, pass)) => req.basic_auth(user, Some(pass)),
            None => req,
        }
    };

    let address = authority_of(&realm_url);
    let resp = request
        .send()
        .await
        .map_err(|e| ProviderError::from_reqwest(&address, realm, e))?;
    let status = resp.status();
    let body = read_limited(resp, TOKEN_RESPONSE_MAX, &address, realm).await?;
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(ProviderError::Unauthorized {
            registry: registry.to_string(),
            detail: format!(
                "token server {realm} refused the credentials ({status}): {}",
                snippet(&body)
            ),
        });
    }
    if !status.is_success() {
        return Err(ProviderError::Http {
            status: status.as_u16(),
            url: realm.to_string(),
            body: snippet(&body),
        });
    }
    let parsed: TokenResponse =
        serde_json::from_slice(&body).map_err(|e| ProviderError::Unauthorized {
            registry: registry.to_string(),
            detail: format!("token server {realm} sent an unreadable answer: {e}"),
        })?;
    let token = parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ProviderError::Unauthorized {
            registry: registry.to_string(),
            detail: format!("token server {realm} sent no token"),
        })?;
    // Renew a little early so a token does not expire between check and use.
    let secs = parsed.expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME);
    let ttl = Duration::from_secs(secs.saturating_sub(secs / 10).max(1));
    Ok((token, ttl))
}

/// `application/x-www-form-urlencoded` (reqwest's `form` feature is not enabled).
fn form_encode(pairs: &[(&str, &str)]) -> String {
    fn enc(s: &str, out: &mut String) {
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        enc(k, &mut out);
        out.push('=');
        enc(v, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["service"], "registry.docker.io");
        assert_eq!(c[0].params["scope"], "repository:library/busybox:pull,push");

        let c =
            parse_challenges(r#"Basic realm="basic-realm", Bearer realm=https://x/t,service=s"#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].params["realm"], "basic-realm");
        assert_eq!(c[1].params["realm"], "https://x/t");
        assert_eq!(c[1].params["service"], "s");
    }

    #[test]
    fn credentials() {
        let c = Credentials {
            auth: Some(BASE64.encode("user:p:w")),
            ..Default::default()
        };
        assert_eq!(c.basic(), Some(("user".into(), "p:w".into())));
        assert!(!c.is_empty());
        assert!(Credentials::default().is_empty());
        let c = Credentials {
            username: Some("u".into()),
            password: Some("secret".into()),
            ..Default::default()
        };
        assert_eq!(c.basic(), Some(("u".into(), "secret".into())));
        assert!(!format!("{c:?}").contains("secret"));
        assert_ne!(c.fingerprint(), Credentials::default().fingerprint());
        assert_eq!(
            form_encode(&[("scope", "repository:a/b:pull"), ("x", "a b&")]),
            "scope=repository%3Aa%2Fb%3Apull&x=a+b%26"
        );
    }
}
