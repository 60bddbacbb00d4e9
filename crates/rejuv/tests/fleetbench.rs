//! `rejuv bench fleet` end to end on a small fleet: the real controller and proxy against the
//! swarm, aged servers rejuvenated through whole workflows, none judged wrongly, and the
//! summary's figures present and sane. (Speed goals are the benchmark's, in bench/RESULTS.md;
//! this checks behaviour only.)

use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_rejuv");

#[test]
fn a_small_fleet_rejuvenates_its_aged_servers_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("fleet.json");
    let out = Command::new(EXE)
        .args([
            "bench",
            "fleet",
            "--servers",
            "40",
            "--aged",
            "2",
            "--interval",
            "1s",
            "--warmup",
            "10s",
            "--duration",
            "45s",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .arg("--summary-json")
        .arg(&summary)
        .output()
        .expect("running rejuv bench fleet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["servers"], 40);
    assert_eq!(s["servers_aged"], 2, "{s}");
    // By default the controller and the simulated agents talk mutual TLS, one certificate
    // per agent, as production does; the polls below went over it.
    assert_eq!(s["tls"], true, "{s}");
    let certs = std::fs::read_dir(dir.path().join("state/tls"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".pem"))
        })
        .count();
    assert_eq!(
        certs,
        40 + 3,
        "the CA, the controller, the proxy and one per agent"
    );
    assert_eq!(
        s["aged_rejuvenated"], 2,
        "every aged server rejuvenated: {s}"
    );
    assert_eq!(s["judged_unstable_wrongly"], 0, "{s}");
    assert!(s["workflows_completed"].as_u64().unwrap() >= 2, "{s}");
    // Forty agents answering once a second: about 40 judged readings a second.
    let polls = s["polls_per_s"].as_f64().unwrap();
    assert!((20.0..=60.0).contains(&polls), "polls_per_s {polls}: {s}");
    for field in ["controller_cpu_pct", "controller_rss_mb", "swarm_cpu_pct"] {
        assert!(s[field].as_f64().unwrap() > 0.0, "{field}: {s}");
    }
    assert!(
        s["judge_latency_ms"]["p99"].as_f64().unwrap()
            >= s["judge_latency_ms"]["p50"].as_f64().unwrap()
    );
    // Nothing of the run is left: the controller, proxy and swarm were ended.
    let state = dir.path().join("state").display().to_string();
    let ps = Command::new("pgrep").args(["-f", &state]).output().unwrap();
    assert!(
        ps.stdout.is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}
