//! The content-addressed layer store (`--docker_store_dir`).

pub mod extract;
