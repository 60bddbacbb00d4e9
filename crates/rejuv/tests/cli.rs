//! The command line itself, without a cluster: every subcommand's `--help` carries examples,
//! `--version` names the version, completion scripts are generated, and operator commands
//! fail with their documented exit codes before any request when they cannot work.

use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_rejuv");

fn rejuv(args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .env_remove("REJUV_TOKEN")
        .env_remove("REJUV_TOKEN_FILE")
        .env_remove("REJUV_CONTROLLER")
        .output()
        .expect("running rejuv")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The subcommands listed under `Commands:` in a help text.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_subcommand_has_help_with_examples() {
    let top = rejuv(&["--help"]);
    assert_eq!(top.status.code(), Some(0));
    let text = stdout(&top);
    assert!(text.contains("Examples:"), "{text}");
    let cmds = subcommands(&text);
    // The list is read from the help itself, so a new subcommand is checked too; these must be
    // there at least.
    for want in [
        "agent",
        "controller",
        "proxy",
        "demo",
        "sample-service",
        "loadgen",
        "analyze",
        "config",
        "status",
        "events",
        "workflows",
        "explain",
        "rejuvenate",
        "maintenance",
        "pause",
        "resume",
        "completions",
    ] {
        assert!(
            cmds.iter().any(|c| c == want),
            "{want} missing from {cmds:?}"
        );
    }
    let mut paths: Vec<Vec<String>> = cmds.iter().map(|c| vec![c.clone()]).collect();
    let mut i = 0;
    while i < paths.len() {
        let path = paths[i].clone();
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = rejuv(&args);
        let help = stdout(&out);
        assert_eq!(out.status.code(), Some(0), "rejuv {args:?}");
        assert!(
            help.contains("Examples:"),
            "no Examples: in `rejuv {args:?}`:\n{help}"
        );
        // Every example line starts with `rejuv` (or sets an environment variable first).
        let examples: Vec<&str> = help
            .lines()
            .skip_while(|l| !l.starts_with("Examples:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .collect();
        assert!(!examples.is_empty(), "{help}");
        assert!(
            examples
                .iter()
                .all(|l| l.trim_start().starts_with("rejuv") || l.contains("rejuv ")),
            "{examples:?}"
        );
        for sub in subcommands(&help) {
            let mut p = path.clone();
            p.push(sub);
            paths.push(p);
        }
        i += 1;
    }
    assert!(
        paths.iter().any(|p| p == &["config", "check"]),
        "nested subcommands are checked: {paths:?}"
    );
}

#[test]
fn operator_commands_document_their_options() {
    let help = stdout(&rejuv(&["status", "--help"]));
    for want in [
        "--controller",
        "REJUV_CONTROLLER",
        "--token-file",
        "REJUV_TOKEN",
        "--output",
        "json",
    ] {
        assert!(help.contains(want), "{want} missing:\n{help}");
    }
    let help = stdout(&rejuv(&["events", "--help"]));
    assert!(help.contains("--follow"), "{help}");
}

#[test]
fn version_names_the_crate_version() {
    let out = rejuv(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("rejuv {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
}

#[test]
fn completions_are_generated_for_each_shell() {
    let out = rejuv(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let bash = stdout(&out);
    assert!(bash.contains("_rejuv()"), "{bash}");
    assert!(
        bash.contains("complete ") && bash.contains("rejuv"),
        "{bash}"
    );
    assert!(bash.contains("rejuvenate"), "subcommands are completed");
    for shell in ["zsh", "fish"] {
        let out = rejuv(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(stdout(&out).contains("rejuv"), "{shell}");
    }
    let out = rejuv(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is bad usage");
}

#[test]
fn an_operator_command_without_a_token_is_unauthorized_and_prints_nothing() {
    // Port 9 (discard) on loopback: nothing is sent anyway, the token is checked first.
    let out = rejuv(&[
        "status",
        "--controller",
        "http://127.0.0.1:9",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("REJUV_TOKEN") && err.contains("--token-file"),
        "{err}"
    );
}

#[test]
fn an_unreachable_controller_is_a_runtime_failure() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The listener is dropped: nothing listens on the port now.
    let out = Command::new(EXE)
        .args([
            "status",
            "--controller",
            &format!("http://127.0.0.1:{port}"),
            "--output",
            "json",
        ])
        .env("REJUV_TOKEN", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the controller"), "{err}");
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(
        rejuv(&["status", "--output", "yaml"]).status.code(),
        Some(2)
    );
    assert_eq!(
        rejuv(&["maintenance", "s1", "maybe"]).status.code(),
        Some(2)
    );
    assert_eq!(
        rejuv(&["events", "--interval", "1ms"]).status.code(),
        Some(2)
    );
    let out = Command::new(EXE)
        .args([
            "status",
            "--controller",
            "ftp://x",
            "--token-file",
            "/nonexistent/token",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "an unreadable token file");
}
