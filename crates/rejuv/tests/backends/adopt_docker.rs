//! Container instances across an agent restart, against this machine's Docker Engine, with an
//! image the test builds `FROM scratch` from the `rejuv` binary (the sample service).

use crate::common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Removes the agent's containers (by its scope label) and the test's image, even when the
/// test fails.
struct Cleanup {
    scope: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label=rejuv.agent={}", self.scope);
        if let Ok(out) = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f", "-v"])
                    .args(&ids)
                    .output();
            }
        }
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

fn build_image(w: &World) -> String {
    use rejuv_agent::docker::{build_scratch_image, Docker};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let docker = Docker::connect(
            std::path::Path::new("/var/run/docker.sock"),
            Duration::from_secs(5),
        )
        .await
        .expect("this machine's Docker Engine answers");
        let tag = format!("rejuv-test-adopt:{}", w.tag);
        build_scratch_image(&docker, &tag, std::path::Path::new(EXE), &[])
            .await
            .unwrap_or_else(|e| panic!("building {tag}: {e:#}"));
        tag
    })
}

fn docker_service(name: &str, image: &str) -> String {
    format!(
        r#"
[services.{name}]
backend = "docker"
image = "{image}"
network = "host"
args = ["sample-service", "--listen", "{{address}}:{{port}}", "--instance-id", "{{instance}}"]
health = {{ path = "/healthz", interval = "100ms", timeout = "2s" }}
stop_grace = "3s"
"#
    )
}

fn containers(scope: &str) -> Vec<String> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=rejuv.agent={scope}"),
        "--format",
        "{{.Label \"rejuv.instance\"}}",
    ]);
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn a_kept_container_is_adopted_by_its_labels_and_an_orphan_is_removed() {
    let mut w = World::new();
    let _ = std::fs::create_dir_all(w.data_dir());
    let scope = rejuv_agent::cgroup::scope("s1", &w.data_dir());
    let image = build_image(&w);
    let _cleanup = Cleanup {
        scope: scope.clone(),
        image: image.clone(),
    };
    let both = w.config(&format!(
        "{}{}",
        docker_service("web", &image),
        docker_service("old", &image)
    ));
    let a = w.start_agent(&both, true);
    w.put_instance("web-1", "web");
    w.put_instance("old-1", "old");
    let before = w.wait_running("web-1", T);
    w.wait_running("old-1", T);
    let addr = addr_of(&before);
    for n in 1..=3 {
        assert_eq!(bump(addr), n);
    }
    let labels = docker(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"rejuv.port\"}}",
        &format!("rejuv-{scope}-web-1"),
    ]);
    assert_eq!(labels, addr.port().to_string(), "the port is a label");

    w.stop_agent(a);
    assert_eq!(
        containers(&scope),
        ["old-1", "web-1"],
        "both outlive the agent"
    );
    assert_eq!(counter(addr), Some(3));

    let b = w.start_agent(&w.config(&docker_service("web", &image)), false);
    let after = w.wait_running("web-1", T);
    for field in ["id", "service", "addr", "pid", "started_at_ms", "crashes"] {
        assert_eq!(after[field], before[field], "{field}: {after} vs {before}");
    }
    assert!(w.instance("old-1").is_none());
    assert_eq!(
        containers(&scope),
        ["web-1"],
        "the orphan's container is removed"
    );
    assert_eq!(bump(addr), 4, "the adopted container's counter continues");
    let readings = wait_for("readings of the adopted container", T, || {
        let r = w.state()["sample"]["instances"]["web-1"].clone();
        (r["rss_bytes"].as_u64().unwrap_or(0) > 0).then_some(r)
    });
    assert!(readings["threads"].as_u64().unwrap() >= 1, "{readings}");

    let stopped = w.delete_instance("web-1");
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert!(containers(&scope).is_empty());
    w.stop_agent(b);
}

#[test]
fn containers_of_a_killed_agent_are_adopted_by_their_labels() {
    let mut w = World::new();
    let _ = std::fs::create_dir_all(w.data_dir());
    let scope = rejuv_agent::cgroup::scope("s1", &w.data_dir());
    let image = build_image(&w);
    let _cleanup = Cleanup {
        scope: scope.clone(),
        image: image.clone(),
    };
    let cfg = w.config(&docker_service("web", &image));
    let a = w.start_agent(&cfg, false);
    w.put_instance("web-1", "web");
    let before = w.wait_running("web-1", T);
    let addr = addr_of(&before);
    for n in 1..=2 {
        assert_eq!(bump(addr), n);
    }
    // Killed: no hand-over; the container runs on under the Engine.
    w.kill_agent(a);
    assert_eq!(containers(&scope), ["web-1"]);
    assert_eq!(counter(addr), Some(2));

    let b = w.start_agent(&cfg, false);
    let after = w.wait_running("web-1", T);
    for field in ["id", "service", "addr", "pid"] {
        assert_eq!(after[field], before[field], "{field}: {after} vs {before}");
    }
    assert_eq!(bump(addr), 3, "the adopted container's counter continues");
    assert_eq!(containers(&scope), ["web-1"], "nothing started twice");
    let stopped = w.delete_instance("web-1");
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert!(containers(&scope).is_empty());
    w.stop_agent(b);
}
