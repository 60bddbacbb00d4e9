//! The operator commands as an operator runs them: the real `rejuv` binary against a real
//! controller. JSON alone on stdout, messages on stderr, documented exit codes, every action an
//! event naming who asked.

use crate::harness::{wait_for, Harness, Spec, EXE};
use serde_json::Value;
use std::io::BufRead;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// `rejuv ARGS --controller URL --token-file PATH` (no token from the environment).
fn cli(h: &Harness, args: &[&str]) -> Output {
    cli_env(h, args, true, &[])
}

fn cli_env(h: &Harness, args: &[&str], token_file: bool, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(EXE);
    cmd.args(args)
        .args(["--controller", &format!("http://{}", h.controller_addr)])
        .env_remove("REJUV_TOKEN")
        .env_remove("REJUV_TOKEN_FILE")
        .env_remove("REJUV_CONTROLLER")
        .env_remove("REJUV_ACTOR")
        .stdin(Stdio::null());
    if token_file {
        cmd.arg("--token-file").arg(h.dir.path().join("token"));
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running rejuv")
}

fn ok_json(o: &Output, what: &str) -> Value {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{what}: stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not JSON alone ({e}):\n{}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn server<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {status}"))
}

/// `rejuv events --follow` in its own process group, ended (with the group) on drop.
struct Follower {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follower {
    fn start(h: &Harness) -> Self {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(EXE)
            .args([
                "events",
                "--follow",
                "--output",
                "json",
                "--interval",
                "200ms",
            ])
            .args(["--controller", &format!("http://{}", h.controller_addr)])
            .arg("--token-file")
            .arg(h.dir.path().join("token"))
            .env_remove("REJUV_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawning rejuv events --follow");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Lines until one satisfies `want`, each parsed as JSON; panics after `limit`.
    fn until(&self, limit: Duration, want: impl Fn(&Value) -> bool) -> Vec<Value> {
        let until = std::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let v: Value = serde_json::from_str(&l)
                        .unwrap_or_else(|e| panic!("a --follow line is not JSON ({e}): {l}"));
                    let done = want(&v);
                    seen.push(v);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("timed out after {limit:?} following events; saw {seen:?}"),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let pg = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

#[test]
fn operator_commands_show_act_and_name_who_asked() {
    let mut h = Harness::new(&Spec {
        primaries: 2,
        spares: 1,
        ..Spec::default()
    });
    h.start_controller(&[]);
    h.wait_serving();
    // Two reads of the status are compared below: both after every instance is healthy and
    // read (the front end serves as soon as one is).
    wait_for(
        "every instance healthy with a reading",
        Duration::from_secs(30),
        || {
            h.status()["servers"]
                .as_array()?
                .iter()
                .flat_map(|s| s["instances"].as_array().cloned().unwrap_or_default())
                .all(|i| i["healthy"] == true && i["rss_bytes"].is_u64())
                .then_some(())
        },
    );

    // status --output json: an object whose `servers` lists every server with role and state.
    let st = ok_json(&cli(&h, &["status", "--output", "json"]), "status");
    let servers = st["servers"].as_array().expect("a servers array");
    let mut ids: Vec<&str> = servers.iter().map(|s| s["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["s1", "s2", "s3"], "{st}");
    for s in servers {
        let role = s["role"].as_str().unwrap();
        let want = if s["id"] == "s3" { "spare" } else { "primary" };
        assert_eq!(role, want, "{s}");
        assert_eq!(s["state"], "in-service", "{s}");
        assert!(
            s["judgement"].is_string() && s["on_list"].is_boolean(),
            "{s}"
        );
    }
    assert_eq!(st["paused"], false);

    // The table names every server on its own line.
    let table = cli(&h, &["status"]);
    assert_eq!(table.status.code(), Some(0), "{}", stderr(&table));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("SERVER") && text.contains("JUDGED"), "{text}");
    for id in ["s1", "s2", "s3"] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{id} "))),
            "{id} missing:\n{text}"
        );
    }

    // REJUV_TOKEN instead of a file.
    let env = cli_env(
        &h,
        &["status", "--output", "json"],
        false,
        &[("REJUV_TOKEN", h.token.as_str())],
    );
    assert_eq!(
        ok_json(&env, "status with REJUV_TOKEN")["servers"],
        st["servers"]
    );

    // A wrong token: exit 4, a clear message on stderr, nothing on stdout.
    let bad = cli_env(
        &h,
        &["status", "--output", "json"],
        false,
        &[("REJUV_TOKEN", "not-the-token")],
    );
    assert_eq!(bad.status.code(), Some(4), "{}", stderr(&bad));
    assert!(bad.stdout.is_empty(), "stdout: {:?}", bad.stdout);
    assert!(stderr(&bad).contains("unauthorized"), "{}", stderr(&bad));

    // Follow the events from here on.
    let follower = Follower::start(&h);
    // No wait needed: an action before the follower's first poll is in its first batch (the
    // newest events), one after it comes in a later poll.

    // pause, by a named operator; status shows it; the event names who asked.
    let p = cli_env(
        &h,
        &["pause", "--output", "json"],
        true,
        &[("REJUV_ACTOR", "alice")],
    );
    let ack = ok_json(&p, "pause");
    assert_eq!(ack["accepted"], true, "{ack}");
    assert_eq!(ack["actor"], "alice", "{ack}");
    let st = ok_json(&cli(&h, &["status", "--output", "json"]), "status");
    assert_eq!(st["paused"], true, "{st}");
    let table = String::from_utf8_lossy(&cli(&h, &["status"]).stdout).into_owned();
    assert!(table.contains("PAUSED"), "{table}");

    let seen = follower.until(Duration::from_secs(20), |e| {
        e["kind"] == "operator" && e["message"].as_str().is_some_and(|m| m.contains("paused"))
    });
    let ev = seen.last().unwrap();
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains("alice (api token)"),
        "the event names the actor and the token: {ev}"
    );
    assert!(ev["seq"].is_i64() && ev["at_ms"].is_u64(), "{ev}");

    // Without --actor (and no $USER) the actor is still named.
    let r = cli_env(&h, &["resume"], true, &[("USER", "")]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    assert!(String::from_utf8_lossy(&r.stdout).contains("resumed"));
    let seen = follower.until(Duration::from_secs(20), |e| {
        e["message"].as_str().is_some_and(|m| m.contains("resumed"))
    });
    assert!(
        seen.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .starts_with("operator (api token)"),
        "{seen:?}"
    );
    assert_eq!(
        ok_json(&cli(&h, &["status", "-o", "json"]), "status")["paused"],
        false
    );

    // maintenance on/off.
    let m = cli(&h, &["maintenance", "s3", "on", "--actor", "bob"]);
    assert_eq!(m.status.code(), Some(0), "{}", stderr(&m));
    let st = ok_json(&cli(&h, &["status", "--output", "json"]), "status");
    assert_eq!(server(&st, "s3")["maintenance"], true, "{st}");
    let m = cli(&h, &["maintenance", "s3", "off", "--actor", "bob"]);
    assert_eq!(m.status.code(), Some(0), "{}", stderr(&m));
    let st = ok_json(&cli(&h, &["status", "--output", "json"]), "status");
    assert_eq!(server(&st, "s3")["maintenance"], false, "{st}");

    // events --output json: every line is one JSON object; the actions are there, by name.
    let ev = cli(&h, &["events", "--output", "json", "--limit", "1000"]);
    assert_eq!(ev.status.code(), Some(0), "{}", stderr(&ev));
    let text = String::from_utf8_lossy(&ev.stdout);
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(events.iter().all(Value::is_object));
    let ops: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "operator")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        ops.iter()
            .any(|m| m.contains("bob (api token) turned maintenance on for s3")),
        "{ops:?}"
    );
    // The table form prints one line per event.
    let tev = cli(&h, &["events", "--limit", "5"]);
    assert_eq!(String::from_utf8_lossy(&tev.stdout).lines().count(), 5);

    // Refusals: exit 3 and the reason on stderr, nothing on stdout.
    let r = cli(&h, &["rejuvenate", "nope", "--output", "json"]);
    assert_eq!(r.status.code(), Some(3), "{}", stderr(&r));
    assert!(r.stdout.is_empty());
    assert!(
        stderr(&r).contains("no server named 'nope'"),
        "{}",
        stderr(&r)
    );
    let r = cli(&h, &["explain", "nope"]);
    assert_eq!(r.status.code(), Some(3), "{}", stderr(&r));
    let r = cli(&h, &["rejuvenate", "s3"]);
    assert_eq!(r.status.code(), Some(3), "s3 is a spare: {}", stderr(&r));

    // workflows: running and finished, both arrays (none yet).
    let w = ok_json(&cli(&h, &["workflows", "--output", "json"]), "workflows");
    assert!(w["running"].is_array() && w["finished"].is_array(), "{w}");

    // A manual rejuvenation runs the same workflow, and its event names who asked.
    let r = cli(
        &h,
        &["rejuvenate", "s1", "--actor", "carol", "--output", "json"],
    );
    let ack = ok_json(&r, "rejuvenate");
    assert_eq!(ack["server"], "s1");
    assert_eq!(ack["force"], false);
    follower.until(Duration::from_secs(20), |e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("carol (api token) asked to rejuvenate s1"))
    });
    wait_for(
        "the manual rejuvenation to complete",
        Duration::from_secs(60),
        || (h.completed() >= 1).then_some(()),
    );
    let w = ok_json(&cli(&h, &["workflows", "--output", "json"]), "workflows");
    let first = &w["finished"][0];
    assert_eq!(first["server"], "s1", "{w}");
    assert_eq!(first["outcome"]["outcome"], "completed", "{w}");
    let table = String::from_utf8_lossy(&cli(&h, &["workflows"]).stdout).into_owned();
    assert!(table.contains("completed"), "{table}");
}

#[test]
fn explain_names_the_rule_and_the_forecast_of_an_unstable_server() {
    // A steady leak, far from the threshold, so the trend rule fires first with a forecast.
    let mut h = Harness::new(&Spec {
        primaries: 1,
        spares: 1,
        leak_per_second: 2 * 1024 * 1024,
        limit: 1024 * 1024 * 1024,
        memory_budget: 256 * 1024 * 1024,
        above: 0.95,
        extra_toml: r#"
[policy.trend]
window = "32s"
min_window = "6s"
horizon = "10m"
max_extrapolation = 30.0
min_persistence = "1s"
resources = ["instance-rss"]
"#
        .into(),
        ..Spec::default()
    });
    h.start_controller(&[]);
    // Paused, so the server stays judged rather than being rejuvenated at once.
    let p = cli(&h, &["pause"]);
    assert_eq!(p.status.code(), Some(0), "{}", stderr(&p));
    wait_for(
        "s1 to be judged unstable by the trend rule",
        Duration::from_secs(90),
        || {
            let st = h.try_status()?;
            let s = server(&st, "s1");
            (s["judgement"] == "unstable" && s["explanation"]["rule"] == "trend").then_some(())
        },
    );
    let v = ok_json(&cli(&h, &["explain", "s1", "--output", "json"]), "explain");
    assert_eq!(v["judgement"], "unstable", "{v}");
    assert_eq!(v["explanation"]["rule"], "trend", "{v}");
    assert_eq!(v["explanation"]["resource"], "instance-rss", "{v}");
    let tte = v["explanation"]["tte_s"].as_f64().expect("a forecast");
    assert!(tte > 0.0 && tte < 600.0, "{v}");

    let out = cli(&h, &["explain", "s1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("s1: unstable"), "{text}");
    assert!(text.contains("rule:     trend on instance-rss"), "{text}");
    assert!(text.contains("forecast: exhausted in about"), "{text}");
    assert!(
        text.contains("will be exhausted"),
        "the detector's own words: {text}"
    );
    // The stable spare has no rule to name.
    let out = cli(&h, &["explain", "s2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rule:     none fired"), "{text}");
}

#[test]
fn export_samples_writes_the_history_the_controller_holds_as_a_fleet_directory() {
    // A leaking primary, a steady one and a spare; paused, so nothing moves meanwhile.
    let mut h = Harness::new(&Spec {
        primaries: 2,
        spares: 1,
        leak_per_second: 1024 * 1024,
        limit: 1024 * 1024 * 1024,
        above: 0.95,
        ..Spec::default()
    });
    h.start_controller(&[]);
    let p = cli(&h, &["pause"]);
    assert_eq!(p.status.code(), Some(0), "{}", stderr(&p));
    wait_for(
        "the controller to hold four readings of every server",
        Duration::from_secs(60),
        || {
            ["s1", "s2", "s3"]
                .iter()
                .all(|id| {
                    let v: Value = h
                        .api(reqwest::Method::GET, &format!("/v1/servers/{id}/history"))
                        .json()
                        .unwrap_or_default();
                    v["points"].as_array().is_some_and(|p| p.len() >= 4)
                })
                .then_some(())
        },
    );
    let unknown = h.api(reqwest::Method::GET, "/v1/servers/nope/history");
    assert_eq!(unknown.status(), 404);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fleet");
    let o = cli(
        &h,
        &[
            "export",
            "samples",
            "--since",
            "10m",
            "--out",
            out.to_str().unwrap(),
            "--output",
            "json",
        ],
    );
    let v = ok_json(&o, "export samples");
    let written = v["servers"].as_array().unwrap();
    assert_eq!(written.len(), 3, "{v}");
    for w in written {
        assert!(w["samples"].as_u64() >= Some(4), "{v}");
        assert_eq!(w["capacity"], 256 * 1024 * 1024, "the memory budget: {v}");
    }
    let fleet = std::fs::read_to_string(out.join("fleet.csv")).unwrap();
    let rows: Vec<&str> = fleet.lines().collect();
    assert_eq!(rows[0], "server,capacity,role,units");
    assert!(rows.contains(&"s3,268435456,spare,4"), "{fleet}");
    // The leaking primary's series: seconds since --since, rising RSS bytes.
    let s1 = std::fs::read_to_string(out.join("s1.csv")).unwrap();
    let points: Vec<(f64, u64)> = s1
        .lines()
        .skip(1)
        .map(|l| {
            let (t, v) = l.split_once(',').unwrap();
            (t.parse().unwrap(), v.parse().unwrap())
        })
        .collect();
    assert!(points.len() >= 4, "{s1}");
    assert!(
        points.iter().all(|(t, _)| (0.0..=600.0).contains(t)),
        "{s1}"
    );
    assert!(points.windows(2).all(|w| w[0].0 < w[1].0), "{s1}");
    assert!(points.last().unwrap().1 > points[0].1, "s1 leaks: {s1}");

    // What it wrote is what whatif reads.
    let w = Command::new(EXE)
        .args([
            "whatif",
            "--samples",
            out.to_str().unwrap(),
            "--policy",
            "fixed:1h",
        ])
        .args(["--output", "json"])
        .output()
        .unwrap();
    let v = ok_json(&w, "whatif on the export");
    assert_eq!(v["policies"][0]["policy"], "fixed:1h", "{v}");

    // A directory holding another series would be read as a server of the fleet.
    std::fs::write(out.join("stranger.csv"), "t_seconds,value\n0,1\n").unwrap();
    let o = cli(
        &h,
        &[
            "export",
            "samples",
            "--since",
            "10m",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("stranger.csv"), "{}", stderr(&o));
}
