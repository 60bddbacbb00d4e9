//! The example configs under `deploy/` are valid, and `docs/config.md` names every field of
//! every section: a field added to the config model without its documentation fails here.
//!
//! The fields are read from the model itself: a config that sets every optional part (hooks,
//! freeze windows, operators, HAProxy checks, a hand-off) is parsed and serialized back, and
//! every key of the result must appear in the reference as `` `key` `` or `` `section.key` ``.

use rejuv_core::config::{Config, TrafficAdapter};
use serde_json::Value;
use std::path::PathBuf;

fn repo_file(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn parse(rel: &str) -> Config {
    Config::from_toml(&repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn the_builtin_proxy_example_is_valid_and_warns_of_nothing() {
    let c = parse("deploy/rejuv.proxy.example.toml");
    assert_eq!(c.traffic.adapter, TrafficAdapter::Builtin);
    assert!(c.traffic.admin.is_some(), "traffic.admin");
    assert!(!c.traffic.listen.is_empty(), "traffic.listen");
    assert!(
        c.auth.proxy_token_file.is_some(),
        "the proxy has a token of its own"
    );
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    assert!(
        c.store.path.is_absolute(),
        "a fleet's store path is absolute: {}",
        c.store.path.display()
    );
}

/// Every optional part set, on top of the HAProxy example.
fn everything() -> Config {
    let text = repo_file("deploy/rejuv.example.toml").replace(
        "backends = { checkout = \"be_checkout\" }",
        "backends = { checkout = \"be_checkout\" }\ncheck = { inter = \"2s\" }",
    ) + r#"
[[auth.operators]]
name = "alice"
token_file = "/etc/rejuv/operators/alice.token"

[alerts]
webhook = "http://127.0.0.1:9095/rejuv"

[[hooks]]
name = "smoke"
step = "rejoin"
when = "before"
command = ["/usr/local/bin/smoke-test"]
veto = true

[[freeze]]
name = "peak"
start = "18:00"
duration = "6h"

[join]
token_file = "/etc/rejuv/join.token"
auto_approve = true
"#;
    Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}"))
}

/// `(path, key)` of every object key in `v`, arrays looked into, below `path`.
fn keys(path: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                out.push((path.to_string(), k.clone()));
                keys(&format!("{path}.{k}"), child, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                keys(path, item, out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_reference_names_every_field_of_the_model() {
    let doc = repo_file("docs/config.md");
    let model = serde_json::to_value(everything()).expect("the config serializes");
    let mut all = Vec::new();
    keys("", &model, &mut all);
    assert!(all.len() > 150, "only {} fields found", all.len());
    let mut missing = Vec::new();
    for (path, key) in &all {
        // Maps whose keys are the operator's names, not fields.
        let named = [".services", ".traffic.listen", ".traffic.haproxy.backends"]
            .contains(&path.as_str())
            || path.ends_with(".env")
            || path.ends_with(".labels");
        if named {
            continue;
        }
        if path.is_empty() {
            // `## \`[policy]\``, `## \`[[servers]]\``, `## \`[services.NAME]\``.
            let section = [
                format!("## `[{key}]"),
                format!("## `[{key}."),
                format!("## `[[{key}]]"),
            ];
            if !section.iter().any(|s| doc.contains(s.as_str())) {
                missing.push(format!("section {key}"));
            }
            continue;
        }
        if !doc.contains(&format!("`{key}`")) && !doc.contains(&format!(".{key}`")) {
            missing.push(format!("{}.{key}", &path[1..]));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/config.md does not name: {missing:?}"
    );
}
