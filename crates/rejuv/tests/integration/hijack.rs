//! The builtin proxy's route table belongs to the controller alone: the operators' API token
//! cannot write it, a table no controller could issue is refused, and a table someone else
//! put in force is found out and is never taken for the controller's own (no switch counts as
//! done on it); one of the controller's own epoch is replaced by the controller's at once.

use crate::harness::{wait_for, Harness, Load, Spec};
use serde_json::{json, Value};
use std::time::Duration;

fn foreign(epoch: u64, version: u64) -> Value {
    json!({
        "epoch": epoch,
        "version": version,
        "services": {"web": {"backends": [
            {"id": "evil", "addr": "127.0.0.1:9", "state": "serving"}
        ], "hold": false, "max_hold_ms": 1000}}
    })
}

fn proxy_status(h: &Harness) -> Value {
    reqwest::blocking::Client::new()
        .get(format!("http://{}/v1/status", h.admin))
        .bearer_auth(&h.proxy_token)
        .send()
        .unwrap()
        .json()
        .unwrap()
}

fn put(h: &Harness, token: &str, table: &Value) -> reqwest::blocking::Response {
    reqwest::blocking::Client::new()
        .put(format!("http://{}/v1/routes", h.admin))
        .bearer_auth(token)
        .json(table)
        .send()
        .unwrap()
}

fn mismatch_events(h: &Harness) -> Vec<String> {
    h.events()
        .iter()
        .filter(|e| e["kind"] == "traffic-mismatch")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_route_table_cannot_be_hijacked_and_a_foreign_one_is_found_out() {
    let mut h = Harness::new(&Spec {
        primaries: 1,
        spares: 1,
        ..Spec::default()
    });
    h.start_controller(&[]);
    h.wait_serving();
    let load = Load::start(h.front, 40, Duration::from_secs(60));
    let ours = wait_for(
        "the controller's table in force",
        Duration::from_secs(20),
        || {
            let p = proxy_status(&h);
            (p["epoch"].as_u64()? >= 1).then_some(p)
        },
    );
    let epoch = ours["epoch"].as_u64().unwrap();

    // The operators' token is not the proxy's.
    let r = put(&h, &h.token, &foreign(epoch, u64::MAX));
    assert_eq!(r.status(), 401, "the API token cannot write routes");
    // Versions and epochs no controller could issue.
    for (e, v) in [(epoch, u64::MAX), (u64::MAX, 1), (epoch + 1_000_001, 1)] {
        let r = put(&h, &h.proxy_token, &foreign(e, v));
        assert_eq!(r.status(), 400, "({e}, {v})");
    }
    assert_eq!(proxy_status(&h)["digest"], ours["digest"]);

    // A foreign table of the controller's own epoch that outranks its versions: found out,
    // and replaced by the controller's.
    let r = put(&h, &h.proxy_token, &foreign(epoch, 1 << 40));
    assert_eq!(r.status(), 200);
    wait_for(
        "the controller's table back",
        Duration::from_secs(20),
        || {
            let p = proxy_status(&h);
            let back = p["epoch"] == epoch && p["digest"] == ours["digest"];
            (back && mismatch_events(&h).len() >= 2).then_some(())
        },
    );
    let ev = mismatch_events(&h);
    assert!(ev[0].contains("did not send"), "{ev:?}");
    assert!(ev[1].contains("again"), "{ev:?}");

    // A foreign table of a newer epoch is not overwritten (it may be a newer leader's) and no
    // switch counts as done on it: a workflow waits at its drain.
    let r = put(&h, &h.proxy_token, &foreign(epoch + 1, 1));
    assert_eq!(r.status(), 200);
    let r = h.api(reqwest::Method::POST, "/v1/servers/s1/rejuvenate");
    assert!(r.status().is_success());
    wait_for("the mismatch metric", Duration::from_secs(20), || {
        let text = h.api(reqwest::Method::GET, "/metrics").text().unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("rejuv_traffic_mismatch "))
            .any(|v| v.trim().parse::<f64>() == Ok(1.0))
            .then_some(())
    });
    // The workflow cannot finish while the proxy holds someone else's table: it stays in its
    // drain past the drain time (5 s here), where it would otherwise have gone on.
    let since = wait_for("the workflow draining", Duration::from_secs(30), || {
        let st = h.status();
        st["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["phase"] == "draining")
            .and_then(|w| w["phase_since_ms"].as_u64())
    });
    wait_for("the drain time to pass", Duration::from_secs(30), || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        (now > since + 8_000).then_some(())
    });
    let st = h.status();
    assert!(
        st["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["phase"] == "draining"),
        "still draining: {}",
        st["workflows"]
    );
    assert_eq!(h.completed(), 0, "no switch completed on a foreign table");
    drop(load);
}
