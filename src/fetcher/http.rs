//! http(s) URIs: the registry provider's HTTP client (its TLS stack, user agent and the
//! per-host CA files of the config file's `registries`), with Mesos's stall rule: a
//! download that brings no byte for `--fetcher_stall_timeout` is aborted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use crate::provisioner::providers::registry::build_client;

/// One client per CA file (most hosts share the one without).
#[derive(Debug)]
pub struct HttpClient {
    clients: HashMap<Option<PathBuf>, reqwest::Client>,
    /// Host (or `host:port`) → the PEM file trusted for it.
    cas: HashMap<String, PathBuf>,
    stall: Duration,
}

/// A response whose body is being read.
pub struct Body {
    resp: reqwest::Response,
    stall: Duration,
    /// `Content-Length`, when the server sent one.
    pub announced: Option<u64>,
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

fn stalled(stall: Duration) -> String {
    format!(
        "stalled: no data for {}s (--fetcher_stall_timeout)",
        stall.as_secs_f64()
    )
}

impl HttpClient {
    pub fn new(cas: HashMap<String, PathBuf>, stall: Duration) -> Result<HttpClient, String> {
        // reqwest is built without a default crypto provider (see the registry provider);
        // Err only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut clients = HashMap::new();
        for ca in std::iter::once(None).chain(cas.values().cloned().map(Some)) {
            if clients.contains_key(&ca) {
                continue;
            }
            let client = build_client(ca.as_deref()).map_err(|e| e.to_string())?;
            clients.insert(ca, client);
        }
        Ok(HttpClient {
            clients,
            cas,
            stall,
        })
    }

    fn client(&self, url: &reqwest::Url) -> &reqwest::Client {
        let host = url.host_str().unwrap_or_default();
        let ca = url
            .port()
            .and_then(|p| self.cas.get(&format!("{host}:{p}")))
            .or_else(|| self.cas.get(host))
            .cloned();
        self.clients
            .get(&ca)
            .or_else(|| self.clients.get(&None))
            .expect("the client without a CA file is always built")
    }

    /// Sends the GET and waits (at most the stall timeout) for the response head; any
    /// status but 2xx is an error.
    pub async fn get(&self, url: &reqwest::Url) -> Result<Body, String> {
        let send = self.client(url).get(url.clone()).send();
        let resp = tokio::time::timeout(self.stall, send)
            .await
            .map_err(|_| stalled(self.stall))?
            .map_err(|e| chain(&e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!(
                "HTTP {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )
            .trim_end()
            .to_string());
        }
        Ok(Body {
            announced: resp.content_length(),
            resp,
            stall: self.stall,
        })
    }
}

impl Body {
    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        tokio::time::timeout(self.stall, self.resp.chunk())
            .await
            .map_err(|_| stalled(self.stall))?
            .map_err(|e| chain(&e))
    }
}
