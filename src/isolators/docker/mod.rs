//! Docker isolators (Mesos's `docker/*`): what a Docker image config means for the
//! container.

pub mod runtime;
