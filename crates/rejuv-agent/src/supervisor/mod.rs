//! The instance supervisor: starts services from the local catalog, watches their health,
//! restarts the ones that crash, and stops whole process trees.
//!
//! Each instance has one keeper task that owns its child process and is the only one to spawn,
//! reap, restart or stop it; requests reach it over a channel. Readers (the API, the collector)
//! see a small shared status behind a mutex.
//!
//! An instance is its whole process tree: its process group (the root is started as a group
//! leader), every descendant of its root, its cgroup where the host allows one, and every
//! process found in the tree before (so a `setsid` child that got reparented stays counted).
//! See [`crate::procfs::tree_members`].
//!
//! The folder keeps the instance (`instance`), the supervisor and its table (`table`),
//! starting (`start`), stopping a tree (`stop`), the per-instance keeper (`keeper`), one
//! process (`process`), one run of any backend (`run`), systemd units (`unit`), handing
//! instances over to the next agent and adopting them (`adopt`), state hand-off (`handoff`)
//! and the errors (`error`) apart.
//!
//! # Guarantees
//! - Only services from `config.services` are started; the controller names a service, never a
//!   command.
//! - A stop answers only once no process of the tree is left (or says which pids survived).
//! - The same id started twice gives the same instance; no second process.
//!
//! # Assumptions
//! Pids are not reused between a scan of `/proc` and the signal that follows it (microseconds);
//! pid and start time together identify a remembered process.

mod adopt;
mod error;
mod handoff;
mod instance;
mod keeper;
pub mod output;
mod process;
mod run;
mod start;
mod stop;
mod table;
mod unit;

pub use adopt::Adoption;
pub use error::SupervisorError;
pub use instance::{valid_instance_id, CollectView, Instance};
pub use run::LABEL_AGENT;
pub use table::Supervisor;

/// Whether a service's `user` and `group` exist on this host (`Err` says which does not).
pub fn check_credentials(spec: &rejuv_core::config::ServiceConfig) -> Result<(), String> {
    process::credentials(spec).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::process::describe_exit;
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn instance_ids_are_safe_names() {
        for ok in ["web-s2-7", "a", "x.y_z", "A1"] {
            assert!(valid_instance_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "-x",
            ".hidden",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(!valid_instance_id(bad), "{bad}");
        }
    }

    #[test]
    fn exits_are_described() {
        assert_eq!(
            describe_exit(Ok(ExitStatus::from_raw(3 << 8))),
            "exited with status 3"
        );
        assert_eq!(
            describe_exit(Ok(ExitStatus::from_raw(9))),
            "killed by signal 9 (SIGKILL)"
        );
    }
}
