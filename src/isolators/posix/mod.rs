//! POSIX isolators (Mesos's `posix/*`).

pub mod rlimits {
    //! `posix/rlimits`: the node's default resource limits (the config file's `rlimits`)
    //! for every container and its exec sessions.

    use cri_mesos_supervisor::protocol::{LaunchInfo, RlimitSpec};

    use crate::isolators::IsolatorName;
    use crate::isolators::chain::{ContainerPrep, Isolator, IsolatorError};

    #[derive(Debug, Default)]
    pub struct PosixRlimits {
        pub limits: Vec<RlimitSpec>,
    }

    #[tonic::async_trait]
    impl Isolator for PosixRlimits {
        fn name(&self) -> IsolatorName {
            IsolatorName("posix/rlimits")
        }

        async fn prepare(
            &self,
            _container: &ContainerPrep<'_>,
            launch: &mut LaunchInfo,
        ) -> Result<(), IsolatorError> {
            launch.process.rlimits = self.limits.clone();
            Ok(())
        }
    }
}
