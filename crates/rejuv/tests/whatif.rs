//! `rejuv whatif` end to end: a fleet directory written here, replayed by the binary, and the
//! figures that follow from the data; bad input refused with the file and the line (exit 2).

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_rejuv");

fn rejuv(args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .output()
        .expect("running rejuv")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Two primaries sampled every 10 s for 72,000 s against a capacity of 10,000: `a` leaks from
/// 3,000 by one per 10 s (it would reach the capacity at 70,000 s), `b` stays at 4,000.
fn fleet(dir: &Path) {
    let mut a = String::from("t_seconds,value\n");
    let mut b = String::from("t_seconds,value\n");
    for i in 0..=7200u64 {
        let t = i * 10;
        a += &format!("{t},{}\n", 3000 + t / 10);
        b += &format!("{t},4000\n");
    }
    std::fs::write(dir.join("fleet.csv"), "server,capacity\na,10000\nb,10000\n").unwrap();
    std::fs::write(dir.join("a.csv"), a).unwrap();
    std::fs::write(dir.join("b.csv"), b).unwrap();
}

#[test]
fn a_fleet_is_replayed_through_every_policy_with_the_figures_the_data_gives() {
    let d = tempfile::tempdir().unwrap();
    fleet(d.path());
    let html = d.path().join("report.html");
    let dir = d.path().to_str().unwrap();
    let out = rejuv(&[
        "whatif",
        "--samples",
        dir,
        "--policy",
        "rejuv",
        "--policy",
        "fixed:auto",
        "--policy",
        "fixed:4h",
        "--policy",
        "threshold:0.9",
        "--output",
        "json",
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON alone");
    let p = v["policies"].as_array().unwrap();
    let names: Vec<&str> = p.iter().map(|x| x["policy"].as_str().unwrap()).collect();
    assert_eq!(names, ["rejuv", "fixed:auto", "fixed:4h", "threshold:0.9"]);

    // The rejuv policy: the production core rejuvenates `a` once, before it runs out, with
    // `b` serving meanwhile (half the primaries' units on the list), and leaves `b` alone.
    let r = &p[0];
    let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "exhaustions",
            "lead_s_median",
            "max_concurrent",
            "min_capacity_fraction",
            "policy",
            "rejuvenations",
            "servers_exhausted"
        ],
        "no period for the rejuv policy"
    );
    assert_eq!(
        (
            &r["rejuvenations"],
            &r["exhaustions"],
            &r["servers_exhausted"]
        ),
        (&json!(1), &json!(0), &json!([]))
    );
    assert_eq!(
        (&r["max_concurrent"], &r["min_capacity_fraction"]),
        (&json!(1), &json!(0.5))
    );
    let lead = r["lead_s_median"].as_f64().unwrap();
    assert!((600.0..70_000.0).contains(&lead), "lead {lead}");

    // fixed:auto: `a` runs out at 70,000 s unless restarted by then; the longest such period
    // restarts each server once, both at once, the moment `a` reaches its capacity.
    assert_eq!(
        p[1],
        json!({"policy": "fixed:auto", "period_s": 70000.0, "rejuvenations": 2, "exhaustions": 0,
               "servers_exhausted": [], "max_concurrent": 2, "min_capacity_fraction": 0.0,
               "lead_s_median": 0.0})
    );
    // fixed:4h: five restarts each (14,400 s to 72,000 s); only `a`'s first had a crash
    // ahead of it in the recording (at 70,000 s: 55,600 s later).
    assert_eq!(
        p[2],
        json!({"policy": "fixed:4h", "period_s": 14400.0, "rejuvenations": 10, "exhaustions": 0,
               "servers_exhausted": [], "max_concurrent": 2, "min_capacity_fraction": 0.0,
               "lead_s_median": 55600.0})
    );
    // threshold:0.9: above 9,000 from 60,010 s, held the 60 s hold-down of the defaults:
    // restarted at 60,070 s, 9,930 s before the crash; after it `a` never gets there again.
    assert_eq!(
        p[3],
        json!({"policy": "threshold:0.9", "rejuvenations": 1, "exhaustions": 0,
               "servers_exhausted": [], "max_concurrent": 1, "min_capacity_fraction": 0.5,
               "lead_s_median": 9930.0})
    );

    let report = std::fs::read_to_string(&html).unwrap();
    assert!(report.starts_with("<!doctype html>"));
    for want in [
        "<figure class=\"chart\" data-server=\"a\"",
        "<figure class=\"chart\" data-server=\"b\"",
        "<g class=\"forecast\">",
        "class=\"replayed\"",
        "<tr data-policy=\"fixed:auto\">",
    ] {
        assert!(report.contains(want), "the report has no {want}");
    }
    assert!(
        !report.contains("http://") && !report.contains("https://"),
        "the report fetches nothing"
    );
    // A table for people without --output json.
    let table = rejuv(&["whatif", "--samples", dir, "--policy", "fixed:4h"]);
    assert_eq!(table.status.code(), Some(0));
    let t = text(&table.stdout);
    assert!(t.starts_with("POLICY") && t.contains("fixed:4h"), "{t}");
}

/// Runs whatif on a fleet directory made of `files`; its exit code and stderr.
fn refused(files: &[(&str, &str)], extra: &[&str]) -> (Option<i32>, String, String) {
    let d = tempfile::tempdir().unwrap();
    for (name, body) in files {
        std::fs::write(d.path().join(name), body).unwrap();
    }
    let mut args = vec!["whatif", "--samples", d.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = rejuv(&args);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

const FLEET: &str = "server,capacity\na,100\n";
const A: &str = "t_seconds,value\n0,1\n10,2\n";

#[test]
fn bad_input_is_refused_with_the_file_and_the_line() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("fleet.csv", FLEET), ("a.csv", A), ("b.csv", A)],
            "b.csv: server b has no row in",
        ),
        (
            &[
                ("fleet.csv", "server,capacity\na,100\nb,100\n"),
                ("a.csv", A),
            ],
            "fleet.csv line 3: server b has no series",
        ),
        (
            &[
                ("fleet.csv", FLEET),
                ("a.csv", "t_seconds,value\n0,1\n10,abc\n"),
            ],
            "a.csv line 3: value `abc` is not a number",
        ),
        (
            &[
                ("fleet.csv", FLEET),
                ("a.csv", "t_seconds,value\n0,1\n10,2\n5,3\n"),
            ],
            "a.csv line 4: t_seconds `5` does not increase",
        ),
        (
            &[("fleet.csv", FLEET), ("a.csv", "")],
            "a.csv line 1: the file is empty",
        ),
        (
            &[("fleet.csv", "server,capacity\na,lots\n"), ("a.csv", A)],
            "fleet.csv line 2: capacity `lots` is not a positive number",
        ),
        (&[("a.csv", A)], "fleet.csv: not found"),
    ];
    for (files, want) in cases {
        let (code, out, err) = refused(files, &["--output", "json"]);
        assert_eq!(code, Some(2), "{want}: {err}");
        assert!(err.contains(want), "want {want:?} in {err:?}");
        assert!(out.is_empty(), "nothing on stdout: {out}");
    }
}

#[test]
fn bad_usage_is_refused_before_anything_is_replayed() {
    let ok = [("fleet.csv", FLEET), ("a.csv", A)];
    let (code, _, err) = refused(&ok, &["--policy", "cron"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("`cron` is not a policy"), "{err}");
    let (code, _, err) = refused(&ok, &["--policy", "threshold:1.5"]);
    assert_eq!(code, Some(2), "{err}");

    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("rejuv.toml");
    std::fs::write(&cfg, "[policy.trend]\npoints = 3\n").unwrap();
    let (code, _, err) = refused(&ok, &["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("policy.trend.points"), "{err}");

    let out = rejuv(&[
        "whatif",
        "--prometheus",
        "http://127.0.0.1:9",
        "--query",
        "up",
        "--since",
        "1h",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("http://127.0.0.1:9: the servers' capacity is missing"),
        "{}",
        text(&out.stderr)
    );
    // Nothing listens on port 9 (discard): the URL is named.
    let out = rejuv(&[
        "whatif",
        "--prometheus",
        "http://127.0.0.1:9",
        "--query",
        "up",
        "--since",
        "1h",
        "--capacity",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("Prometheus at http://127.0.0.1:9 is unreachable"),
        "{}",
        text(&out.stderr)
    );
    // --prometheus needs its query and span, and excludes --samples.
    assert_eq!(
        rejuv(&["whatif", "--prometheus", "http://127.0.0.1:9"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(rejuv(&["whatif"]).status.code(), Some(2));
}
