//! What a provider's failure was, and the gRPC code the CRI layer gives it: each
//! [`ProviderErrorKind`] documents its code; kubelet retries UNAVAILABLE pulls with
//! back-off and reports the rest.

use std::path::{Path, PathBuf};

/// What kind of failure, for the CRI layer's choice of gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderErrorKind {
    /// UNAVAILABLE: network trouble, a registry-side 5xx or rate limiting; retrying may help.
    Unreachable,
    /// NOT_FOUND: no such repository, tag, blob, archive, or no entry for this platform.
    NotFound,
    /// UNAUTHENTICATED: the registry refused us, with or without credentials.
    Unauthorized,
    /// INVALID_ARGUMENT: the image exists but is not something we can run
    /// (unsupported media type, artifact instead of an image).
    BadInput,
    /// DATA_LOSS (or INTERNAL): content did not match its digest or size, or is malformed.
    Corrupt,
    /// INTERNAL/UNKNOWN: local I/O, provider misconfiguration, unexpected HTTP status.
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("registry {address} is unreachable: {detail}")]
    Unreachable { address: String, detail: String },
    /// The registry's certificate was refused: persistent, unlike `Unreachable`.
    #[error("TLS with registry {address} failed: {detail}")]
    Tls { address: String, detail: String },
    #[error("image {reference} not found: {detail}")]
    NotFound { reference: String, detail: String },
    #[error("not authorized to pull from {registry}: {detail}")]
    Unauthorized { registry: String, detail: String },
    #[error("digest mismatch for {blob}: expected {expected}, got {actual}")]
    DigestMismatch {
        blob: String,
        expected: String,
        actual: String,
    },
    #[error("size mismatch for {blob}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        blob: String,
        expected: u64,
        actual: u64,
    },
    #[error("{reference}: unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
    },
    #[error("{reference}: invalid manifest: {detail}")]
    InvalidManifest { reference: String, detail: String },
    #[error("image {reference} has no manifest for platform {platform}")]
    NoMatchingPlatform { reference: String, platform: String },
    #[error("bad image provider configuration: {detail}")]
    BadConfig { detail: String },
    #[error("{url} answered HTTP {status}: {body}")]
    Http {
        status: u16,
        url: String,
        body: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ProviderError {
    pub fn kind(&self) -> ProviderErrorKind {
        use ProviderErrorKind as K;
        match self {
            Self::Unreachable { .. } => K::Unreachable,
            Self::NotFound { .. } | Self::NoMatchingPlatform { .. } => K::NotFound,
            Self::Unauthorized { .. } => K::Unauthorized,
            Self::UnsupportedMediaType { .. } => K::BadInput,
            Self::DigestMismatch { .. }
            | Self::SizeMismatch { .. }
            | Self::InvalidManifest { .. } => K::Corrupt,
            Self::Http { status, .. } if *status == 429 || *status >= 500 => K::Unreachable,
            Self::Http { .. } | Self::Tls { .. } | Self::BadConfig { .. } | Self::Io { .. } => {
                K::Other
            }
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn from_reqwest(address: &str, url: &str, e: reqwest::Error) -> Self {
        if e.is_builder() {
            return Self::BadConfig {
                detail: format!("{url}: {}", error_chain(&e)),
            };
        }
        if is_tls_error(&e) {
            return Self::Tls {
                address: address.to_string(),
                detail: error_chain(&e),
            };
        }
        // Connect failures, timeouts and connections dropped mid-body are all
        // "the registry could not be talked to".
        Self::Unreachable {
            address: address.to_string(),
            detail: error_chain(&e),
        }
    }
}

fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    // io::Error's `source()` skips the error it wraps, and the TLS stack nests
    // io::Errors, so those are unwrapped by hand.
    fn in_io(io: &std::io::Error) -> bool {
        match io.get_ref() {
            Some(inner) if inner.is::<rustls::Error>() => true,
            Some(inner) => inner.downcast_ref::<std::io::Error>().is_some_and(in_io),
            None => false,
        }
    }
    let mut source = Some(e);
    while let Some(err) = source {
        if err.is::<rustls::Error>() || err.downcast_ref::<std::io::Error>().is_some_and(in_io) {
            return true;
        }
        source = err.source();
    }
    false
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
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
