//! Network isolators (Mesos's `network/*`).

pub mod cni;
