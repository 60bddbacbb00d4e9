//! The server list follows the config: `rejuv reload` (and `SIGHUP`) over a running cluster
//! with real agents, proxy and controller, under load.

use crate::harness::{wait_for, Harness, Load, Spec, EXE};
use serde_json::Value;
use std::time::Duration;

/// The config text without the `[[servers]]` block of `id`.
fn without(text: &str, id: &str) -> String {
    text.split("\n[[servers]]")
        .enumerate()
        .filter(|(i, b)| *i == 0 || !b.contains(&format!("id = \"{id}\"")))
        .map(|(_, b)| b)
        .collect::<Vec<_>>()
        .join("\n[[servers]]")
}

/// Instances of the cluster, over all its servers.
fn instances(status: &Value) -> usize {
    status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["instances"].as_array().map_or(0, Vec::len))
        .sum()
}

fn servers(h: &Harness) -> Vec<String> {
    h.status()["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// `rejuv reload --config CFG`: exit code, stdout, stderr.
fn reload(h: &Harness) -> (i32, String, String) {
    run(h, &["reload", "--config", h.config.to_str().unwrap()])
}

fn run(h: &Harness, args: &[&str]) -> (i32, String, String) {
    let _ = h;
    let out = std::process::Command::new(EXE)
        .args(args)
        .env_remove("REJUV_CONTROLLER")
        .env_remove("REJUV_TOKEN_FILE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn servers_join_and_leave_on_reload_without_a_failed_request() {
    let spec = Spec {
        primaries: 2,
        spares: 2,
        ..Spec::default()
    };
    let mut h = Harness::new(&spec);
    h.start_controller(&[]);
    h.wait_serving();
    let original = std::fs::read_to_string(&h.config).unwrap();
    let load = Load::start(h.front, 40, Duration::from_secs(90));

    // An idle spare taken out of the config is forgotten at once.
    std::fs::write(&h.config, without(&original, "s4")).unwrap();
    let (code, out, err) = reload(&h);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("s4 is being removed"), "{out}");
    wait_for("s4 forgotten", Duration::from_secs(10), || {
        (!servers(&h).contains(&"s4".to_string())).then_some(())
    });

    // A primary taken out is evacuated (its instance moves to the spare), then forgotten.
    std::fs::write(&h.config, without(&without(&original, "s4"), "s1")).unwrap();
    let (code, out, err) = reload(&h);
    assert_eq!(code, 0, "{out}{err}");
    wait_for(
        "s1 evacuated and forgotten",
        Duration::from_secs(60),
        || (!servers(&h).contains(&"s1".to_string())).then_some(()),
    );
    let st = h.status();
    assert_eq!(instances(&st), 2, "both instances still run: {st:#}");

    // Listed again (its agent still runs): s4 joins as a spare.
    std::fs::write(&h.config, without(&original, "s1")).unwrap();
    let (code, out, err) = reload(&h);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("s4 joins"), "{out}");
    wait_for("s4 back and answering", Duration::from_secs(10), || {
        h.status()["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == "s4" && s["reachable"] == true)
            .map(|s| assert_eq!(s["role"], "spare"))
    });

    // A config the running cluster cannot take is refused whole: exit 3, the reason, and
    // nothing of it applied.
    let other_mode = without(&original, "s1")
        .replace("active-standby", "active-active")
        .replace("role = \"spare\"", "role = \"primary\"");
    std::fs::write(&h.config, other_mode).unwrap();
    let before = servers(&h);
    let (code, out, err) = reload(&h);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("cannot change its mode"), "{err}");
    assert_eq!(servers(&h), before);
    // Not a config at all: the controller answers 400 naming the file (exit 2).
    std::fs::write(&h.config, "[cluster\n").unwrap();
    let url = format!("http://{}", h.controller_addr);
    let token = h.dir.path().join("token");
    let (code, _, err) = run(
        &h,
        &[
            "reload",
            "--controller",
            &url,
            "--token-file",
            token.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("rejuv.toml"), "{err}");

    // SIGHUP reads the file as `rejuv reload` does.
    std::fs::write(&h.config, without(&without(&original, "s1"), "s4")).unwrap();
    let pid = h.controller.as_ref().unwrap().id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for("s4 forgotten after SIGHUP", Duration::from_secs(10), || {
        (!servers(&h).contains(&"s4".to_string())).then_some(())
    });
    assert!(h
        .events()
        .iter()
        .any(|e| e["kind"] == "config" && e["message"].as_str().unwrap().contains("SIGHUP")));

    let report = load.finish();
    assert!(report.requests_total > 0);
    assert_eq!(report.requests_failed, 0, "{report:?}");
    assert_eq!(instances(&h.status()), 2);
}
