//! The systemd backend against a real systemd: PID 1 of a Debian bookworm container built once
//! per machine by `systemd-image.sh` (debootstrap + `docker import`, tagged by the script's
//! hash). The test copies the `rejuv` binary in (the agent, and the sample service as
//! `rejuv sample-service`), runs the agent there, and drives it over its HTTP API from the
//! host, on the container's address on a Docker network the test made. The container and the
//! network are removed even when the test fails; the image is kept (it is the cache).
//!
//! Without the cached image, the first run builds it (about a minute here: debootstrap needs
//! Debian's mirror).

use crate::common::*;
use serde_json::Value;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const AGENT_PORT: u16 = 7001;

/// Builds the image if missing; its tag.
fn image() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/backends/systemd-image.sh");
    let out = Command::new(&script)
        .output()
        .expect("running systemd-image.sh");
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("the script prints the tag")
        .to_string()
}

/// A container whose PID 1 is systemd, on a network of its own; removed on drop.
struct SystemdBox {
    name: String,
    network: String,
    address: IpAddr,
}

impl SystemdBox {
    fn start(tag: &str) -> SystemdBox {
        let name = format!("rejuv-test-systemd-{}-{}", std::process::id(), nanos());
        let network = format!("{name}-net");
        docker(&["network", "create", &network]);
        let mut b = SystemdBox {
            name: name.clone(),
            network: network.clone(),
            address: "0.0.0.0".parse().unwrap(),
        };
        // `--privileged` is refused here ("unable to apply caps"); systemd runs with
        // CAP_SYS_ADMIN, no seccomp filter, a writable cgroup tree and tmpfs on /run.
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &network,
            "--cap-add",
            "SYS_ADMIN",
            "--security-opt",
            "seccomp=unconfined",
            "--cgroupns",
            "host",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--stop-signal",
            "SIGRTMIN+3",
            "--label",
            "rejuv.test=systemd",
            tag,
        ]);
        b.address = docker(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &name,
        ])
        .parse()
        .expect("the container's address");
        wait_for("systemd to finish booting", T, || {
            let out = Command::new("docker")
                .args(["exec", &name, "systemctl", "is-system-running"])
                .output()
                .ok()?;
            let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
            matches!(s.as_str(), "running" | "degraded").then_some(())
        });
        b
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }

    fn sh(&self, script: &str) -> String {
        self.exec(&["sh", "-c", script])
    }

    fn write(&self, path: &str, text: &str) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), text).unwrap();
        docker(&[
            "cp",
            tmp.path().to_str().unwrap(),
            &format!("{}:{path}", self.name),
        ]);
    }

    fn url(&self) -> String {
        format!("http://{}:{AGENT_PORT}", self.address)
    }

    /// Starts the agent inside with `config`; waits until it serves.
    fn start_agent(&self, config: &str, keep: bool) {
        self.write("/etc/rejuv/rejuv.toml", config);
        let keep = if keep { " --keep-instances" } else { "" };
        self.exec(&[
            "sh",
            "-c",
            &format!(
                "/usr/local/bin/rejuv agent --config /etc/rejuv/rejuv.toml \
                 --server s1 --token-file /etc/rejuv/token --data-dir /var/lib/rejuv{keep} \
                 >> /var/log/rejuv-agent.log 2>&1 & echo $! > /run/agent.pid"
            ),
        ]);
        let c = client();
        let url = format!("{}/healthz", self.url());
        wait_for("the agent in the container to serve", T, || {
            c.get(&url)
                .send()
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        });
    }

    /// SIGTERM to the agent; waits until it is gone.
    fn stop_agent(&self) {
        self.sh("kill -TERM $(cat /run/agent.pid)");
        wait_for("the agent in the container to exit", T, || {
            let out = Command::new("docker")
                .args([
                    "exec",
                    &self.name,
                    "sh",
                    "-c",
                    "kill -0 $(cat /run/agent.pid)",
                ])
                .output()
                .ok()?;
            (!out.status.success()).then_some(())
        });
    }

    fn log(&self) -> String {
        Command::new("docker")
            .args(["exec", &self.name, "cat", "/var/log/rejuv-agent.log"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn state(&self) -> Value {
        client()
            .get(format!("{}/v1/state", self.url()))
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    fn instance(&self, id: &str) -> Option<Value> {
        self.state()["instances"]
            .as_array()?
            .iter()
            .find(|i| i["id"] == id)
            .cloned()
    }

    fn put(&self, id: &str, service: &str) {
        let r = client()
            .put(format!("{}/v1/instances/{id}", self.url()))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({ "epoch": 1, "service": service }))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().unwrap_or_default());
    }

    fn delete(&self, id: &str) -> Value {
        let r = client()
            .delete(format!("{}/v1/instances/{id}?epoch=1", self.url()))
            .bearer_auth(TOKEN)
            .send()
            .unwrap();
        let status = r.status();
        let body: Value = r.json().unwrap();
        assert!(status.is_success(), "{status} {body}\n{}", self.log());
        body
    }

    fn wait_running(&self, id: &str) -> Value {
        let begun = std::time::Instant::now();
        loop {
            if let Some(i) = self.instance(id).filter(|i| i["state"] == "running") {
                return i;
            }
            assert!(
                begun.elapsed() < T,
                "instance {id} not running: {:?}\nagent log:\n{}",
                self.instance(id),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `systemctl show -p PROP --value UNIT`.
    fn unit_prop(&self, unit: &str, prop: &str) -> String {
        self.exec(&["systemctl", "show", "-p", prop, "--value", unit])
    }
}

impl Drop for SystemdBox {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["stop", "-t", "5", &self.name])
            .output();
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.name])
            .output();
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

fn config(address: IpAddr, with_gone: bool) -> String {
    let sample = |name: &str| {
        format!(
            r#"
[services.{name}]
backend = "systemd"
command = "/usr/local/bin/rejuv"
args = ["sample-service", "--listen", "{{address}}:{{port}}", "--instance-id", "{{instance}}"]
health = {{ path = "/healthz", interval = "100ms", timeout = "2s" }}
memory_limit = "256MiB"
stop_grace = "3s"
"#
        )
    };
    let gone = if with_gone {
        sample("gone")
    } else {
        String::new()
    };
    format!(
        r#"
[cluster]
mode = "active-active"

[traffic]
admin = "127.0.0.1:1"

[[servers]]
id = "s1"
address = "{address}"
agent = "{address}:{AGENT_PORT}"
role = "primary"
port_range = [21000, 21009]

[agent]
sample_interval = "200ms"
{web}{gone}
[services.tmpl]
backend = "systemd"
unit = "websvc@.service"
health = {{ path = "/healthz", interval = "100ms", timeout = "2s" }}
stop_grace = "3s"
"#,
        web = sample("web"),
    )
}

#[test]
fn instances_run_as_units_of_a_real_systemd_and_are_adopted_after_an_agent_restart() {
    let tag = image();
    let b = SystemdBox::start(&tag);
    docker(&["cp", EXE, &format!("{}:/usr/local/bin/rejuv", b.name)]);
    b.sh("mkdir -p /etc/rejuv /var/lib/rejuv");
    b.write("/etc/rejuv/token", TOKEN);
    b.sh("chmod 600 /etc/rejuv/token");
    // The operator's template unit: its instance name is the port.
    b.write(
        "/etc/systemd/system/websvc@.service",
        &format!(
            "[Unit]\nDescription=sample web on port %i\n[Service]\nType=exec\n\
             ExecStart=/usr/local/bin/rejuv sample-service --listen {}:%i --instance-id tmpl-%i\n",
            b.address
        ),
    );
    b.exec(&["systemctl", "daemon-reload"]);

    b.start_agent(&config(b.address, true), true);
    b.put("web-1", "web");
    b.put("tmpl-1", "tmpl");
    b.put("gone-1", "gone");
    let web = b.wait_running("web-1");
    let tmpl = b.wait_running("tmpl-1");
    b.wait_running("gone-1");
    let web_addr = addr_of(&web);
    let tmpl_addr = addr_of(&tmpl);
    for n in 1..=3 {
        assert_eq!(bump(web_addr), n);
        assert_eq!(bump(tmpl_addr), n);
    }
    // Each is a unit: the agent's transient one, the operator's template instance.
    let units = b.exec(&[
        "systemctl",
        "list-units",
        "--plain",
        "--no-legend",
        "rejuv-*",
        "websvc@*",
    ]);
    let web_unit = units
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|u| u.ends_with("-web-1.service"))
        .unwrap_or_else(|| panic!("a transient unit for web-1 in:\n{units}"))
        .to_string();
    let tmpl_unit = format!("websvc@{}.service", tmpl_addr.port());
    assert!(units.contains(&tmpl_unit), "{units}");
    assert_eq!(b.unit_prop(&web_unit, "ActiveState"), "active");
    assert_eq!(
        b.unit_prop(&web_unit, "MainPID"),
        web["pid"].to_string(),
        "the instance's pid is its unit's main process"
    );
    assert_eq!(
        b.unit_prop(&web_unit, "MemoryMax"),
        (256u64 << 20).to_string()
    );
    // Readings from the unit's processes.
    let readings = wait_for("readings of the unit", T, || {
        let r = b.state()["sample"]["instances"]["web-1"].clone();
        (r["rss_bytes"].as_u64().unwrap_or(0) > 0).then_some(r)
    });
    assert!(readings["threads"].as_u64().unwrap() >= 1, "{readings}");
    assert!(readings["fds"].as_u64().unwrap() >= 1, "{readings}");

    // The agent is stopped keeping its instances; a new one, without `gone`, adopts.
    b.stop_agent();
    assert_eq!(counter(web_addr), Some(3), "served with no agent running");
    b.start_agent(&config(b.address, false), false);
    let web2 = b.wait_running("web-1");
    let tmpl2 = b.wait_running("tmpl-1");
    for field in ["addr", "pid", "started_at_ms", "crashes"] {
        assert_eq!(web2[field], web[field], "{field}");
        assert_eq!(tmpl2[field], tmpl[field], "{field}");
    }
    assert!(b.instance("gone-1").is_none(), "{}", b.state());
    let gone_unit = web_unit.replace("-web-1.service", "-gone-1.service");
    assert_ne!(b.unit_prop(&gone_unit, "ActiveState"), "active");
    assert_eq!(bump(web_addr), 4, "the counter continues");
    assert_eq!(bump(tmpl_addr), 4);

    // A unit's process killed behind the agent's back: a crash, and a fresh unit run.
    b.exec(&["systemctl", "kill", "--signal=SIGKILL", &web_unit]);
    let back = wait_for("web-1 restarted after its crash", T, || {
        b.instance("web-1")
            .filter(|i| i["crashes"] == 1 && i["state"] == "running")
    });
    assert_eq!(back["addr"], web["addr"]);
    assert_eq!(bump(web_addr), 1);

    // Stops with the service's grace; the units are gone or inactive.
    assert_eq!(b.delete("web-1")["state"], "stopped");
    assert_eq!(b.delete("tmpl-1")["state"], "stopped");
    assert_ne!(b.unit_prop(&web_unit, "ActiveState"), "active");
    assert_eq!(b.unit_prop(&tmpl_unit, "ActiveState"), "inactive");
    b.stop_agent();
}

#[test]
fn an_agent_without_systemd_exits_naming_the_socket() {
    if Path::new(rejuv_agent::systemd::SOCKET).exists() {
        eprintln!("note: this host runs systemd; the missing-socket case cannot be shown here");
        return;
    }
    let w = World::new();
    let cfg = w.path("rejuv.toml");
    std::fs::write(
        &cfg,
        w.config(
            r#"
[services.web]
backend = "systemd"
command = "/bin/sleep"
args = ["1000"]
health = { tcp = true }
"#,
        ),
    )
    .unwrap();
    let out = Command::new(EXE)
        .args(["agent", "--config"])
        .arg(&cfg)
        .args(["--server", "s1", "--token-file"])
        .arg(w.path("token"))
        .arg("--data-dir")
        .arg(w.data_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("/run/systemd/private") && stderr.contains("services.web"),
        "{stderr}"
    );
}
