//! The CRI face of the runtime: request validation and translation between CRI
//! messages and the containerizer. One module per gRPC service.

pub mod events;
pub mod image;
pub mod metrics;
pub mod runtime;
pub mod stats;
pub mod status;
pub mod usage;
pub mod validate;

use tonic::{Code, Status};

use crate::containerizer::ContainerizerError;

/// Answer for an RPC whose issue has not landed yet: kubelet treats `Unimplemented` as
/// "feature absent" for optional RPCs, which is the truth.
pub(crate) fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented by cri-mesos yet"))
}

/// Maps containerizer failures onto the gRPC codes the CRI documents.
pub(crate) fn containerizer_status(error: &ContainerizerError) -> Status {
    use crate::isolators::chain::IsolatorError;
    use crate::launcher::supervisor::SupervisorError;
    let code = match error.root() {
        ContainerizerError::InvalidArgument { .. } => Code::InvalidArgument,
        ContainerizerError::NotFound { .. } => Code::NotFound,
        ContainerizerError::AlreadyExists(_) => Code::AlreadyExists,
        ContainerizerError::FailedPrecondition(_) => Code::FailedPrecondition,
        ContainerizerError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        ContainerizerError::Isolator(IsolatorError::InvalidArgument { .. }) => {
            Code::InvalidArgument
        }
        ContainerizerError::Isolator(IsolatorError::FailedPrecondition { .. }) => {
            Code::FailedPrecondition
        }
        ContainerizerError::Isolator(IsolatorError::NotFound { .. }) => Code::NotFound,
        ContainerizerError::Isolator(IsolatorError::DeadlineExceeded { .. }) => {
            Code::DeadlineExceeded
        }
        ContainerizerError::Provision(p) => image::provision_status(p).code(),
        ContainerizerError::Supervisor(SupervisorError::Version { .. }) => Code::FailedPrecondition,
        _ => Code::Internal,
    };
    Status::new(code, validate::bounded(error.to_string()))
}
