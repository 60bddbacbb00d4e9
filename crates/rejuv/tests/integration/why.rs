//! Why a copy failed reaches the operator: its exit and last output in the rolled-back
//! workflow and its event, `restarts` and `last_exit` in status, and `rejuv logs`.

use crate::harness::{wait_for, Harness, Spec, EXE};
use serde_json::Value;
use std::time::Duration;

#[test]
fn a_copy_that_crashes_says_why_in_the_workflow_status_and_logs() {
    let spec = Spec {
        primaries: 1,
        spares: 1,
        in_place: false,
        // s2 (the spare) is on 127.0.0.3: its copies print an error and exit.
        crash_address: Some("127.0.0.3".into()),
        ..Spec::default()
    };
    let mut h = Harness::new(&spec);
    h.start_controller(&[]);
    h.wait_serving();
    assert_eq!(
        h.api(reqwest::Method::POST, "/v1/servers/s1/rejuvenate")
            .status(),
        202
    );
    // While it duplexes: status counts the copy's restarts and says how it last ended.
    let copy = wait_for(
        "the copy on s2 to have crashed",
        Duration::from_secs(20),
        || {
            let st = h.status();
            let s2 = st["servers"]
                .as_array()?
                .iter()
                .find(|s| s["id"] == "s2")?
                .clone();
            let i = s2["instances"].as_array()?.first()?.clone();
            (i["restarts"].as_u64()? >= 1).then_some(i)
        },
    );
    let last_exit = copy["last_exit"].as_str().unwrap_or_default().to_string();
    assert!(last_exit.contains('3'), "{copy:#}");
    let id = copy["id"].as_str().unwrap().to_string();
    let out = std::process::Command::new(EXE)
        .args(["logs", &id, "--config"])
        .arg(&h.config)
        .env_remove("REJUV_CONTROLLER")
        .env_remove("REJUV_TOKEN_FILE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}", out);
    assert!(
        text.contains("reading /etc/web.conf: no such file"),
        "{text}"
    );

    // The duplex times out: the rollback's reason carries the exit and the output.
    let rolled = wait_for("the workflow to roll back", Duration::from_secs(40), || {
        let st = h.status();
        st["history"]
            .as_array()?
            .iter()
            .find(|w| w["outcome"]["outcome"] == "rolled-back")
            .cloned()
    });
    let reason = rolled["outcome"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&id), "{rolled:#}");
    assert!(reason.contains("no such file"), "{rolled:#}");
    let events: Vec<Value> = h.events();
    assert!(
        events.iter().any(|e| e["kind"] == "workflow-rolled-back"
            && e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("no such file")),
        "{events:#?}"
    );
    // s1 kept serving all along.
    h.wait_serving();
}
