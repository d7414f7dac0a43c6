//! Image providers: where images come from (a registry, or a local directory of archives).

pub mod docker;
pub mod local;
