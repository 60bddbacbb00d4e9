//! The files under `deploy/` and `docs/metrics.md` checked against the real tools and the code:
//! `promtool check config` on the Prometheus example, `systemd-analyze verify` on the units,
//! and the metric names of the docs, the code and the Grafana dashboard against each other.
//!
//! `promtool` comes with Debian's `prometheus` package and `systemd-analyze` with `systemd`; a
//! missing tool fails the test with the package to install (a check that silently skips would
//! pass on a machine that checks nothing).

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_rejuv");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Runs a tool, failing with the Debian package that brings it when it is not installed.
fn run(tool: &str, package: &str, args: &[&str], dir: &Path) -> Output {
    match Command::new(tool).args(args).current_dir(dir).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{tool}` is not installed: install the Debian package `{package}`")
        }
        Err(e) => panic!("running {tool}: {e}"),
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn prometheus_example_passes_promtool() {
    let dir = tempfile::tempdir().unwrap();
    // promtool wants the credentials files to exist: point them into the temp dir.
    let etc = format!("{}/", dir.path().display());
    let config = read("deploy/prometheus/prometheus.yml");
    assert!(
        config.matches("credentials_file:").count() >= 2,
        "both jobs must send their bearer token from a credentials_file:\n{config}"
    );
    let config = config.replace("/etc/prometheus/", &etc);
    std::fs::write(dir.path().join("prometheus.yml"), &config).unwrap();
    for name in ["rejuv-api.token", "rejuv-agent.token"] {
        std::fs::write(dir.path().join(name), "token\n").unwrap();
    }
    std::fs::write(
        dir.path().join("rejuv-alerts.yml"),
        read("deploy/prometheus/rejuv-alerts.yml"),
    )
    .unwrap();
    let o = run(
        "promtool",
        "prometheus",
        &["check", "config", "prometheus.yml"],
        dir.path(),
    );
    assert!(o.status.success(), "promtool check config: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("rule files found") && out.contains("rules found"),
        "the alert rules were not checked: {}",
        text(&o)
    );
}

#[test]
fn systemd_units_pass_verify() {
    let dir = tempfile::tempdir().unwrap();
    for unit in [
        "rejuv-agent.service",
        "rejuv-controller.service",
        "rejuv-proxy.service",
    ] {
        let body = read(&format!("deploy/systemd/{unit}"));
        assert!(
            body.contains("ExecStart=/usr/local/bin/rejuv "),
            "{unit}: ExecStart should run /usr/local/bin/rejuv"
        );
        // verify wants the program to exist: use the binary this test was built with.
        let body = body.replace("/usr/local/bin/rejuv ", &format!("{EXE} "));
        let path = dir.path().join(unit);
        std::fs::write(&path, body).unwrap();
        let o = run(
            "systemd-analyze",
            "systemd",
            &["verify", path.to_str().unwrap()],
            dir.path(),
        );
        // verify exits 0 on unknown keys and bad values, printing a warning that names the
        // file: any line about our unit is a failure.
        let all = text(&o);
        assert!(o.status.success(), "systemd-analyze verify {unit}: {all}");
        let about_unit: Vec<&str> = all
            .lines()
            .filter(|l| l.contains(unit) && !l.starts_with("status"))
            .collect();
        assert!(
            about_unit.is_empty(),
            "systemd-analyze verify {unit} complained:\n{}",
            about_unit.join("\n")
        );
    }
}

/// `rejuv agent` executes `rejuv-agent` only when it sits beside `rejuv`: the install steps must
/// build it (with its own profile, by the script) and put it in the same directory.
#[test]
fn the_install_steps_put_the_agent_binary_beside_rejuv() {
    let readme = read("deploy/systemd/README.md");
    for want in [
        "cargo build --release -p rejuv\n",
        "bash scripts/build-agent.sh        # → target/agent/rejuv-agent\n",
        "install -m 0755 target/release/rejuv target/agent/rejuv-agent /usr/local/bin/\n",
    ] {
        assert!(
            readme.contains(want),
            "deploy/systemd/README.md lacks {want:?}"
        );
    }
    let unit = read("deploy/systemd/rejuv-agent.service");
    assert!(
        unit.contains("/usr/local/bin/rejuv-agent"),
        "rejuv-agent.service should name the agent binary it needs beside rejuv"
    );
    let script = read("scripts/build-agent.sh");
    assert!(
        script.contains("--profile agent") && script.contains("$target/agent/rejuv-agent"),
        "scripts/build-agent.sh builds the agent profile into target/agent/rejuv-agent"
    );
    let manifest = read("Cargo.toml");
    assert!(
        manifest.contains("[profile.agent]"),
        "the agent profile the install steps build with"
    );
    assert_eq!(
        Path::new(env!("CARGO_BIN_EXE_rejuv-agent")).parent(),
        Path::new(EXE).parent(),
        "cargo builds rejuv-agent beside rejuv"
    );
}

/// The metric names in the first column of the tables of `docs/metrics.md`.
fn documented() -> BTreeSet<String> {
    read("docs/metrics.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("rejuv_"))
        .map(str::to_string)
        .collect()
}

fn declared() -> BTreeSet<String> {
    rejuv_controller::metrics::NAMES
        .iter()
        .chain(rejuv_agent::metrics::NAMES)
        .chain(rejuv_net::tls::METRIC_NAMES)
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn docs_list_exactly_the_metrics_the_code_writes() {
    let docs = documented();
    let code = declared();
    assert!(
        docs.len() > 30,
        "too few names parsed from the docs: {docs:?}"
    );
    let undocumented: Vec<_> = code.difference(&docs).collect();
    let gone: Vec<_> = docs.difference(&code).collect();
    assert!(
        undocumented.is_empty() && gone.is_empty(),
        "docs/metrics.md and the code disagree: written but not documented {undocumented:?}; \
         documented but not written {gone:?}"
    );
}

/// Every `rejuv_*` name a PromQL expression uses, a histogram's `_bucket`/`_sum`/`_count`
/// series folded into its family name.
fn names_in(expr: &str, known: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("rejuv_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| known.contains(*f))
            .unwrap_or(name);
        out.push(family.to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn dashboard_uses_only_documented_metrics() {
    let docs = documented();
    let dash: Value =
        serde_json::from_str(&read("deploy/grafana/rejuv-dashboard.json")).expect("valid JSON");
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    assert!(dash["schemaVersion"].as_u64().unwrap_or(0) >= 30);
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut queries = Vec::new();
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} used twice");
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "panel {id} has no gridPos.{k}");
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("target expr");
            assert!(t["refId"].is_string(), "panel {id}: target without refId");
            queries.push(expr.to_string());
            used.extend(names_in(expr, &docs));
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str() {
            used.extend(names_in(q, &docs));
        }
    }
    let undocumented: Vec<_> = used.difference(&docs).collect();
    assert!(
        undocumented.is_empty(),
        "the dashboard uses metrics docs/metrics.md does not list: {undocumented:?}"
    );
    // What the issue asks the dashboard to show.
    for name in [
        "rejuv_server_judgement",
        "rejuv_server_forecast_tte_seconds",
        "rejuv_workflows_total",
        "rejuv_recent_step_seconds",
        "rejuv_recent_switchover_seconds",
        "rejuv_available_servers",
        "rejuv_instance_crashes_total",
        "rejuv_agent_collection_duration_seconds",
        "rejuv_server_escalation_level",
        "rejuv_servers_kept_out",
    ] {
        assert!(used.contains(name), "the dashboard shows no {name}");
    }
    assert!(queries.len() >= 20, "{queries:?}");
}
