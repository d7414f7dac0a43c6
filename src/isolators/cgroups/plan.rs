//! The writes one request makes to a cgroup, checked before the first and undone if the
//! kernel refuses one: a request takes effect whole or not at all.

use std::fs;
use std::io;
use std::path::PathBuf;

use crate::cgroups::ControllerDir;
use crate::isolators::chain::IsolatorError;

/// One value into one cgroup file, for the CRI field it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub file: PathBuf,
    pub value: String,
    /// The CRI field, e.g. `config.linux.resources.memory_limit_in_bytes`.
    pub field: String,
}

/// The writes of a request, in the order the kernel needs them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub writes: Vec<Write>,
}

impl Plan {
    pub fn push(&mut self, dir: &ControllerDir, file: &str, value: impl Into<String>, field: &str) {
        self.writes.push(Write {
            file: dir.path.join(file),
            value: value.into(),
            field: field.to_string(),
        });
    }

    /// The value planned for a file name (tests and the status read it).
    pub fn value_of(&self, file: &str) -> Option<&str> {
        self.writes
            .iter()
            .find(|w| w.file.file_name().is_some_and(|n| n == file))
            .map(|w| w.value.as_str())
    }

    /// Checks that every file exists (its controller is there for this cgroup), so
    /// that a missing one is refused before anything was written.
    pub fn check_files(&self) -> Result<(), IsolatorError> {
        for w in &self.writes {
            if !w.file.exists() {
                return Err(IsolatorError::FailedPrecondition {
                    field: w.field.clone(),
                    reason: format!(
                        "{} does not exist: its controller is not enabled for this cgroup",
                        w.file.display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Writes in order. When the kernel refuses one, what was written is put back (in
    /// reverse, which is also the order the kernel's own constraints, memsw ≥ memory,
    /// accept) and the refused field is named.
    pub fn apply(&self) -> Result<(), IsolatorError> {
        self.check_files()?;
        let mut done: Vec<(&Write, String)> = Vec::new();
        for w in &self.writes {
            let result = fs::read_to_string(&w.file)
                .map_err(|e| io_error(w, e))
                .and_then(|old| {
                    fs::write(&w.file, &w.value)
                        .map(|()| old)
                        .map_err(|e| refused(w, e))
                });
            match result {
                Ok(old) => done.push((w, old)),
                Err(e) => {
                    rollback(&done);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

fn rollback(done: &[(&Write, String)]) {
    for (undo, previous) in done.iter().rev() {
        if let Err(e) = fs::write(&undo.file, previous.trim()) {
            tracing::warn!(file = %undo.file.display(), error = %e, "cgroup value not restored");
        }
    }
}

fn refused(w: &Write, e: io::Error) -> IsolatorError {
    IsolatorError::InvalidArgument {
        field: w.field.clone(),
        reason: format!(
            "the kernel refused {} in {}: {e}",
            crate::quote::quote(&w.value),
            w.file.display()
        ),
    }
}

fn io_error(w: &Write, source: io::Error) -> IsolatorError {
    IsolatorError::Io {
        isolator: super::NAME,
        path: w.file.clone(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::Version;

    #[test]
    fn a_missing_file_refuses_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let d = ControllerDir {
            path: dir.path().to_path_buf(),
            version: Version::V1,
        };
        fs::write(dir.path().join("a"), "1\n").unwrap();
        let mut plan = Plan::default();
        plan.push(&d, "a", "2", "x.a");
        plan.push(&d, "missing", "3", "x.missing");
        let e = plan.apply().unwrap_err();
        assert!(
            matches!(e, IsolatorError::FailedPrecondition { ref field, .. } if field == "x.missing")
        );
        assert_eq!(fs::read_to_string(dir.path().join("a")).unwrap(), "1\n");
    }

    #[test]
    fn a_refused_write_puts_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let d = ControllerDir {
            path: dir.path().to_path_buf(),
            version: Version::V1,
        };
        fs::write(dir.path().join("a"), "1\n").unwrap();
        // Readable, but every write is refused, as the kernel refuses a bad value.
        std::os::unix::fs::symlink("/proc/version", dir.path().join("b")).unwrap();
        let mut plan = Plan::default();
        plan.push(&d, "a", "2", "x.a");
        plan.push(&d, "b", "3", "x.b");
        let e = plan.apply().unwrap_err();
        assert!(
            matches!(e, IsolatorError::InvalidArgument { ref field, .. } if field == "x.b"),
            "{e}"
        );
        assert_eq!(fs::read_to_string(dir.path().join("a")).unwrap(), "1");
    }
}
