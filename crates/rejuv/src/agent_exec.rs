//! `rejuv agent` hands over to the small `rejuv-agent` binary.
//!
//! The agent is the one part that runs on every server, so its own footprint counts. `rejuv
//! agent` therefore replaces itself (exec: same PID, same arguments, same signals) with the
//! small `rejuv-agent` binary when that sits beside the `rejuv` executable: a binary holding
//! only the agent's code, whose resident code pages are a fraction of those of the whole
//! `rejuv` binary (controller, proxy, simulator, demo). Without it, the agent runs in the
//! `rejuv` process itself, the same code with the same flags and exit codes.

use crate::agent_cmd::{own_executable, run, AgentArgs};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The file name of the small agent binary, looked for beside the `rejuv` executable.
pub const SMALL_BINARY: &str = "rejuv-agent";

/// The command line that gives `args` again (each value in `--flag=VALUE` form, so a value
/// starting with `-` stays a value).
pub fn to_args(args: &AgentArgs) -> Vec<OsString> {
    fn flag(name: &str, value: impl AsRef<std::ffi::OsStr>) -> OsString {
        let mut s = OsString::from(format!("--{name}="));
        s.push(value);
        s
    }
    let mut out = vec![flag("config", &args.config), flag("server", &args.server)];
    if let Some(t) = &args.token_file {
        out.push(flag("token-file", t));
    }
    if let Some(d) = &args.data_dir {
        out.push(flag("data-dir", d));
    }
    if args.keep_instances {
        out.push("--keep-instances".into());
    }
    let j = &args.join;
    if let Some(url) = &j.join {
        out.push(flag("join", url));
        if let Some(f) = &j.join_token_file {
            out.push(flag("join-token-file", f));
        }
        if let Some(r) = &j.role {
            out.push(flag("role", r));
        }
        out.push(flag("capacity", j.capacity.to_string()));
        if !j.services.is_empty() {
            out.push(flag("services", j.services.join(",")));
        }
        if !j.instances.is_empty() {
            out.push(flag("instances", j.instances.join(",")));
        }
        if let Some(a) = &j.address {
            out.push(flag("address", a.to_string()));
        }
        out.push(flag(
            "port-range",
            format!("{}-{}", j.port_range[0], j.port_range[1]),
        ));
        if let Some(m) = j.memory_budget_bytes {
            out.push(flag("memory-budget-bytes", m.to_string()));
        }
    }
    out
}

/// The small agent binary beside `exe`, when there is an executable file of that name.
pub fn small_binary_beside(exe: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let small = exe.parent()?.join(SMALL_BINARY);
    let meta = std::fs::metadata(&small).ok()?;
    (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(small)
}

/// `rejuv agent`: replaces this process with the small agent binary beside it, or (none
/// there, or it cannot be executed) runs the agent here.
pub fn run_or_exec_small(args: AgentArgs) -> anyhow::Result<i32> {
    if let Some(small) = own_executable()
        .ok()
        .and_then(|exe| small_binary_beside(&exe))
    {
        use std::os::unix::process::CommandExt;
        // Returns only if the exec failed.
        let err = std::process::Command::new(&small)
            .args(to_args(&args))
            .exec();
        eprintln!(
            "rejuv: cannot execute {} ({err}): running the agent in this process",
            small.display()
        );
    }
    run(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_given_again_parse_to_the_same_flags() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: AgentArgs,
        }
        use clap::Parser;
        for line in [
            vec!["x", "--config", "/etc/rejuv/rejuv.toml", "--server", "s1"],
            vec![
                "x",
                "--config",
                "a b.toml",
                "--server=-odd",
                "--token-file=--t",
                "--data-dir",
                "/var/lib/rejuv",
                "--keep-instances",
            ],
            vec![
                "x",
                "--config",
                "c.toml",
                "--server-id",
                "s7",
                "--join",
                "https://10.0.0.10:7070",
                "--join-token-file",
                "join.token",
                "--role",
                "primary",
                "--capacity",
                "8",
                "--services",
                "web,cache",
                "--instances",
                "web",
                "--address",
                "10.0.0.17:7001",
                "--port-range",
                "20000-20099",
                "--memory-budget-bytes",
                "1073741824",
            ],
        ] {
            let first = Cli::try_parse_from(&line).unwrap().args;
            let again = std::iter::once(OsString::from("x")).chain(to_args(&first));
            let second = Cli::try_parse_from(again).unwrap().args;
            assert_eq!(format!("{first:?}"), format!("{second:?}"), "{line:?}");
        }
    }

    #[test]
    fn the_small_binary_is_used_only_when_an_executable_file_sits_beside() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("rejuv");
        assert_eq!(small_binary_beside(&exe), None, "nothing beside");
        let small = dir.path().join(SMALL_BINARY);
        std::fs::create_dir(&small).unwrap();
        assert_eq!(small_binary_beside(&exe), None, "a directory of that name");
        std::fs::remove_dir(&small).unwrap();
        std::fs::write(&small, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&small, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(small_binary_beside(&exe), None, "not executable");
        std::fs::set_permissions(&small, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(small_binary_beside(&exe), Some(small));
    }
}
