//! `docs/api.md` names every route the three routers register, each under its own API's
//! section with a heading of its own (`### \`METHOD /path\``), and describes no route that
//! does not exist: a route added, renamed or removed without its documentation fails here.
//!
//! The routes are read from the routers' source (`.route("/path", get(h).post(h2))`), since
//! an axum `Router` does not list its routes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const METHODS: &[&str] = &["get", "post", "put", "delete", "patch", "head", "options"];

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crates/")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The text of the call that starts at `open` (the index of its `(`), without the parentheses.
fn call_args(text: &str, open: usize) -> &str {
    let mut depth = 0usize;
    let mut in_str = false;
    for (i, c) in text[open..].char_indices() {
        match c {
            '"' => in_str = !in_str,
            '(' if !in_str => depth += 1,
            ')' if !in_str => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced .route( call at byte {open}");
}

/// `METHOD /path` of every `.route(...)` call in `source` (before its tests).
fn routes_in(source: &str) -> BTreeSet<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or(source);
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices(".route(") {
        let args = call_args(code, at + ".route".len());
        let path = args
            .split('"')
            .nth(1)
            .unwrap_or_else(|| panic!("a .route( call without a path: {args}"));
        let handlers = &args[args.find(',').expect("path, handlers")..];
        let mut methods = 0;
        for (i, _) in handlers.char_indices() {
            let before = handlers[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            for m in METHODS {
                if handlers[i..].starts_with(&format!("{m}(")) {
                    out.insert(format!("{} {path}", m.to_uppercase()));
                    methods += 1;
                }
            }
        }
        assert!(methods > 0, "no method found for route {path}: {args}");
    }
    out
}

/// The `### \`METHOD /path\`` headings of the `## TITLE` section of the doc (a heading may
/// name several routes: `### \`POST /v1/pause\`, \`POST /v1/resume\``).
fn documented(doc: &str, title: &str) -> BTreeSet<String> {
    let start = doc
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("docs/api.md has no section '## {title}'"));
    let rest = &doc[start + 4..];
    let section = match rest.find("\n## ") {
        Some(end) => &rest[..end],
        None => rest,
    };
    let mut out = BTreeSet::new();
    for line in section.lines().filter(|l| l.starts_with("### ")) {
        for (i, part) in line.split('`').enumerate() {
            let is_route = i % 2 == 1
                && METHODS
                    .iter()
                    .any(|m| part.starts_with(&format!("{} /", m.to_uppercase())));
            if is_route {
                out.insert(part.to_string());
            }
        }
    }
    out
}

fn check(doc: &str, title: &str, sources: &[&str], at_least: usize) {
    let mut registered = BTreeSet::new();
    for s in sources {
        registered.extend(routes_in(&read(&crates_dir().join(s))));
    }
    assert!(
        registered.len() >= at_least,
        "{title}: found only {registered:?} in {sources:?}; is the route parser still right?"
    );
    let described = documented(doc, title);
    let missing: Vec<_> = registered.difference(&described).collect();
    let stale: Vec<_> = described.difference(&registered).collect();
    assert!(
        missing.is_empty(),
        "{title}: routes registered in {sources:?} without a '### `METHOD /path`' heading in docs/api.md: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "{title}: docs/api.md describes routes no router registers: {stale:?}"
    );
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let doc = read(&crates_dir().join("../docs/api.md"));
    check(
        &doc,
        "Controller API",
        &[
            "rejuv-controller/src/api.rs",
            "rejuv-controller/src/ha.rs",
            "rejuv-controller/src/shards.rs",
        ],
        14,
    );
    check(&doc, "Agent API", &["rejuv-agent/src/http.rs"], 9);
    check(
        &doc,
        "Builtin proxy admin API",
        &["rejuv-proxy/src/admin.rs"],
        3,
    );
}

#[test]
fn the_route_parser_reads_chained_and_multi_line_routes() {
    let src = r#"
        Router::new()
            .route("/a", get(one))
            .route(
                "/b/{id}",
                put(start).delete(stop),
            )
            .route("/c", get(x).put(y).layer(DefaultBodyLimit::max(9)))
            .route("/h", get(|| async { "ok" }))
        #[cfg(test)]
            .route("/not-a-route", get(t))
    "#;
    let want: BTreeSet<String> = [
        "GET /a",
        "PUT /b/{id}",
        "DELETE /b/{id}",
        "GET /c",
        "PUT /c",
        "GET /h",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(routes_in(src), want);
    let doc = "x\n## API\n### `GET /a`\n### `POST /p`, `POST /q`\ntext `GET /z`\n## Other\n### `GET /o`\n";
    let got: Vec<_> = documented(doc, "API").into_iter().collect();
    assert_eq!(got, ["GET /a", "POST /p", "POST /q"]);
}
