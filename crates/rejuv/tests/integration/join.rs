//! Servers that join instead of being listed: real agents started with `rejuv agent --join`
//! ask a real controller, an operator approves (a `read` token may not), the joined server is
//! polled and takes part like a listed one, a restarted controller keeps it, and
//! `rejuv server remove` takes it off and forgets it.

use crate::harness::{
    free_port, free_range, hold_at_gate, spawn, wait_for, write_secret, Harness, Load, Server,
    Spec, EXE,
};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const JOIN_TOKEN: &str = "join-token-0123456789abcdef";
const READ_TOKEN: &str = "read-token-0123456789abcdef";

/// `[join]` (and a `read` operator) for the harness's config.
fn join_toml(dir: &std::path::Path, auto_approve: bool) -> String {
    let join = dir.join("join.token");
    write_secret(&join, JOIN_TOKEN);
    let viewer = dir.join("viewer.token");
    write_secret(&viewer, READ_TOKEN);
    format!(
        "\n[join]\ntoken_file = \"{}\"\nauto_approve = {auto_approve}\n\n[[auth.operators]]\nname = \"viewer\"\ntoken_file = \"{}\"\nrole = \"read\"\n",
        join.display(),
        viewer.display()
    )
}

/// Starts `rejuv agent --join` for server `id` on `ip`, in its own process group; the
/// harness ends it with the others.
fn start_joining_agent(
    h: &mut Harness,
    keys: &std::path::Path,
    id: &str,
    ip: &str,
    role: &str,
) -> SocketAddr {
    let ip: IpAddr = ip.parse().unwrap();
    let agent = SocketAddr::new(ip, free_port(ip));
    let ports = free_range(ip, 8);
    let mut cmd = Command::new(EXE);
    cmd.args(["agent", "--config"])
        .arg(&h.config)
        .args(["--server-id", id])
        .args(["--join", &format!("http://{}", h.controller_addr)])
        .arg("--join-token-file")
        .arg(keys.join("join.token"))
        .args(["--role", role, "--capacity", "4"])
        .args(["--address", &agent.to_string()])
        .args(["--port-range", &format!("{}-{}", ports[0], ports[1])])
        .arg("--data-dir")
        .arg(h.dir.path().join("agents").join(id));
    let proc = spawn(&mut cmd, &h.dir.path().join(format!("logs/agent-{id}.log")));
    h.servers.push(Server {
        id: id.to_string(),
        agent,
        proc: Some(proc),
    });
    agent
}

fn cli(h: &Harness, token: &std::path::Path, args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .args(["--controller", &format!("http://{}", h.controller_addr)])
        .arg("--token-file")
        .arg(token)
        .env_remove("REJUV_TOKEN")
        .env_remove("REJUV_TOKEN_FILE")
        .env_remove("REJUV_CONTROLLER")
        .env_remove("REJUV_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("running rejuv")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn server<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
}

/// Waits until `id` is in the status and its agent answers the controller's polls.
fn wait_polled(h: &Harness, id: &str) -> Value {
    wait_for(
        &format!("{id} in /v1/status and polled"),
        Duration::from_secs(20),
        || {
            let st = h.try_status()?;
            let s = server(&st, id)?;
            (s["reachable"] == true && s["running_time_s"].is_number()).then(|| s.clone())
        },
    )
}

fn post_join(h: &Harness, token: &str, body: &Value) -> reqwest::blocking::Response {
    reqwest::blocking::Client::new()
        .post(format!("http://{}/v1/join", h.controller_addr))
        .bearer_auth(token)
        .json(body)
        .send()
        .unwrap()
}

#[test]
fn an_approved_server_joins_survives_a_restart_and_is_removed() {
    let keys = tempfile::tempdir().unwrap();
    let spec = Spec {
        extra_toml: join_toml(keys.path(), false),
        ..Spec::default()
    };
    let mut h = Harness::new(&spec);
    h.start_controller(&[]);
    let operate = h.dir.path().join("token");
    let viewer = keys.path().join("viewer.token");

    let agent = start_joining_agent(&mut h, keys.path(), "s4", "127.0.0.5", "spare");
    let pending = wait_for("s4's join request pending", Duration::from_secs(20), || {
        let o = cli(&h, &operate, &["server", "pending", "--output", "json"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|p| p["request"]["id"] == "s4")
            .cloned()
    });
    assert_eq!(pending["request"]["agent"], agent.to_string());
    assert_eq!(pending["request"]["role"], "spare");
    assert!(
        server(&h.status(), "s4").is_none(),
        "not in before approval"
    );
    let table = cli(&h, &viewer, &["server", "pending"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("s4"),
        "{}",
        text(&table)
    );

    // The join token is the only way in; wrong facts are named.
    let good = json!({"id": "s9", "role": "spare", "capacity": 4, "services": ["web"],
                      "agent": "127.0.0.9:7001", "port_range": [30000, 30010]});
    let r = post_join(&h, "not-the-token", &good);
    assert_eq!(r.status(), 401);
    assert_eq!(
        post_join(&h, &h.token, &good).status(),
        401,
        "the API token is not a join token"
    );
    let mut bad = good.clone();
    bad["role"] = json!("boss");
    bad["capacity"] = json!(0);
    bad["services"] = json!(["web", "cache"]);
    let r = post_join(&h, JOIN_TOKEN, &bad);
    assert_eq!(r.status(), 400);
    let why = r.text().unwrap();
    for part in [
        "role: must be \\\"primary\\\" or \\\"spare\\\"",
        "capacity: must be",
        "services[1]: 'cache'",
    ] {
        assert!(why.contains(part), "{part} not in {why}");
    }
    let mut taken = good.clone();
    taken["id"] = json!("s1");
    let r = post_join(&h, JOIN_TOKEN, &taken);
    assert_eq!(r.status(), 409);
    assert!(r.text().unwrap().contains("'s1' is listed"));

    // A read token may look, not approve.
    let r = reqwest::blocking::Client::new()
        .post(format!(
            "http://{}/v1/servers/s4/approve",
            h.controller_addr
        ))
        .bearer_auth(READ_TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let o = cli(&h, &viewer, &["server", "approve", "s4"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        server(&h.status(), "s4").is_none(),
        "a read token let s4 in"
    );

    let o = cli(&h, &operate, &["server", "approve", "s4"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("s4 joins the cluster"),
        "{}",
        text(&o)
    );
    let s4 = wait_polled(&h, "s4");
    assert_eq!(s4["role"], "spare");
    assert_eq!(s4["on_list"], true);
    let o = cli(&h, &operate, &["server", "pending", "--output", "json"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "[]",
        "{}",
        text(&o)
    );
    let joins: Vec<String> = h
        .events()
        .iter()
        .filter(|e| e["kind"] == "join")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        joins.iter().any(|m| m.starts_with("s4 asks to join")),
        "{joins:?}"
    );
    assert!(
        joins.iter().any(|m| m.starts_with("s4 approved by")),
        "{joins:?}"
    );

    // A restarted controller has it from its store, and polls it again.
    h.kill_controller();
    h.start_controller(&[]);
    wait_polled(&h, "s4");

    // Removed: off the list, then forgotten (an idle spare goes at once).
    let o = cli(&h, &operate, &["server", "remove", "s4"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("s4 is being removed"),
        "{}",
        text(&o)
    );
    wait_for("s4 forgotten", Duration::from_secs(20), || {
        server(&h.status(), "s4").is_none().then_some(())
    });
    assert!(h.events().iter().any(
        |e| e["kind"] == "config" && e["message"].as_str().unwrap().starts_with("s4 forgotten")
    ));
    // ... and stays forgotten across a restart.
    h.kill_controller();
    h.start_controller(&[]);
    wait_polled(&h, "s3");
    assert!(server(&h.status(), "s4").is_none(), "{:#}", h.status());
    let o = cli(&h, &operate, &["server", "remove", "s1"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("listed in the config"),
        "{}",
        text(&o)
    );
}

#[test]
fn an_auto_approved_spare_joins_at_once_takes_a_primarys_instances_and_is_evacuated() {
    let keys = tempfile::tempdir().unwrap();
    let spec = Spec {
        primaries: 1,
        spares: 0,
        in_place: false,
        // Workflows wait 3 s at the gate: long enough to ask for a removal meanwhile.
        extra_toml: join_toml(keys.path(), true) + &hold_at_gate(3),
        ..Spec::default()
    };
    let mut h = Harness::new(&spec);
    h.start_controller(&[]);
    h.wait_serving();
    let operate = h.dir.path().join("token");
    start_joining_agent(&mut h, keys.path(), "s2", "127.0.0.3", "spare");
    let s2 = wait_polled(&h, "s2");
    assert_eq!(s2["role"], "spare");
    assert!(h.events().iter().any(|e| e["kind"] == "join"
        && e["message"]
            .as_str()
            .unwrap()
            .starts_with("s2 joined by join.auto_approve")));

    // The joined spare is a target like a listed one: s1's instance moves onto it.
    assert_eq!(
        h.api(reqwest::Method::POST, "/v1/servers/s1/rejuvenate")
            .status(),
        202
    );
    wait_for("s1's workflow at the gate", Duration::from_secs(20), || {
        let st = h.try_status()?;
        let w = st["workflows"].as_array()?.first()?.clone();
        (w["phase"] == "gating").then_some(())
    });
    // Not while a workflow runs on it.
    let o = cli(&h, &operate, &["server", "remove", "s2"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("runs on s2"),
        "{}",
        text(&o)
    );
    let done = wait_for(
        "the rejuvenation of s1 to complete",
        Duration::from_secs(60),
        || {
            let st = h.try_status()?;
            (st["completed_total"].as_u64()? >= 1).then_some(st)
        },
    );
    let last = &done["history"].as_array().unwrap()[0];
    assert_eq!(last["server"], "s1");
    assert_eq!(last["target"], "s2", "{last:#}");
    let s2 = server(&done, "s2").unwrap();
    assert_eq!(s2["role"], "primary");
    assert_eq!(s2["instances"].as_array().unwrap().len(), 1, "{s2:#}");

    // Removed while it serves: its instance moves back to s1 (now the spare), without a
    // failed request, and then it is forgotten.
    let load = Load::start(h.front, 20, Duration::from_secs(60));
    let o = cli(&h, &operate, &["server", "remove", "s2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    wait_for(
        "s2 evacuated and forgotten",
        Duration::from_secs(60),
        || server(&h.try_status()?, "s2").is_none().then_some(()),
    );
    let report = load.finish();
    assert!(report.requests_total > 0);
    assert_eq!(report.requests_failed, 0, "{report:?}");
    let st = h.status();
    let s1 = server(&st, "s1").unwrap();
    assert_eq!(s1["instances"].as_array().unwrap().len(), 1, "{st:#}");
}

#[test]
fn a_joined_primary_starts_with_an_instance_of_each_of_its_services() {
    let keys = tempfile::tempdir().unwrap();
    let spec = Spec {
        primaries: 1,
        spares: 1,
        extra_toml: join_toml(keys.path(), true),
        ..Spec::default()
    };
    let mut h = Harness::new(&spec);
    h.start_controller(&[]);
    h.wait_serving();
    start_joining_agent(&mut h, keys.path(), "s9", "127.0.0.9", "primary");
    wait_polled(&h, "s9");
    // Not given --instances: a primary runs one instance of each service it announced.
    let instances = wait_for(
        "a healthy web instance on the joined primary",
        Duration::from_secs(30),
        || {
            let st = h.try_status()?;
            let s = server(&st, "s9")?;
            let all = s["instances"].as_array()?.clone();
            all.iter()
                .any(|i| i["service"] == "web" && i["healthy"] == true)
                .then_some(all)
        },
    );
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(server(&h.status(), "s9").unwrap()["role"], "primary");
}
