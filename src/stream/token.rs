//! Single-use tokens naming a pending streaming request, as kubelet's request cache:
//! random, consumed by the first request that presents them, expired after a minute,
//! at most [`MAX_PENDING`] waiting.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_cri::v1 as cri;

pub const TOKEN_TTL: Duration = Duration::from_secs(60);
pub const MAX_PENDING: usize = 1000;

/// What a token stands for.
#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

impl Pending {
    /// The URL path segment of this kind of request.
    pub fn route(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{MAX_PENDING} streaming requests are already waiting for their client; try again later")]
pub struct TooManyPending;

#[derive(Debug)]
pub struct Tokens {
    ttl: Duration,
    pending: Mutex<HashMap<String, (Instant, Pending)>>,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens::new(TOKEN_TTL)
    }
}

impl Tokens {
    pub fn new(ttl: Duration) -> Tokens {
        Tokens {
            ttl,
            pending: Mutex::default(),
        }
    }

    /// Stores `request` under a fresh token (16 bytes from the OS random source,
    /// URL-safe base64).
    pub fn insert(&self, request: Pending) -> Result<String, TooManyPending> {
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap();
        pending.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        if pending.len() >= MAX_PENDING {
            return Err(TooManyPending);
        }
        let token = loop {
            let bytes = *uuid::Uuid::new_v4().as_bytes();
            let t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            if !pending.contains_key(&t) {
                break t;
            }
        };
        pending.insert(token.clone(), (now, request));
        Ok(token)
    }

    /// Takes the request of `token` if it is there and not expired; never twice.
    pub fn consume(&self, token: &str) -> Option<Pending> {
        let (at, request) = self.pending.lock().unwrap().remove(token)?;
        (at.elapsed() < self.ttl).then_some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> Pending {
        Pending::PortForward(cri::PortForwardRequest {
            pod_sandbox_id: "p".into(),
            port: vec![80],
        })
    }

    #[test]
    fn a_token_is_used_once() {
        let tokens = Tokens::default();
        let t = tokens.insert(pf()).unwrap();
        assert!(t.len() >= 22 && !t.contains('/') && !t.contains('+'));
        assert_eq!(tokens.consume(&t), Some(pf()));
        assert_eq!(tokens.consume(&t), None);
        assert_eq!(tokens.consume("nope"), None);
    }

    #[test]
    fn an_expired_token_is_refused() {
        let tokens = Tokens::new(Duration::ZERO);
        let t = tokens.insert(pf()).unwrap();
        assert_eq!(tokens.consume(&t), None);
    }

    #[test]
    fn pending_requests_are_bounded() {
        let tokens = Tokens::default();
        for _ in 0..MAX_PENDING {
            tokens.insert(pf()).unwrap();
        }
        assert_eq!(tokens.insert(pf()), Err(TooManyPending));
    }
}
