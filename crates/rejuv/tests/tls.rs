//! Mutual TLS between the parts, with real processes on loopback: `rejuv tls init|issue`
//! make the fleet's CA and certificates, agents serve only a controller of their fleet, the
//! controller accepts only the agent its config places at an address, revocation and a
//! replaced certificate are taken without a restart, and `config check` warns without
//! `[tls]`.

use rejuv_core::config::TlsFiles;
use rejuv_net::tls::{PeerCheck, Role, Tls};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_rejuv");

#[path = "support/procs.rs"]
mod procs;

fn free_port(ip: IpAddr) -> u16 {
    rejuv_net::free_port(ip).expect("a free port")
}

fn rejuv(args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running rejuv")
}

fn ok(args: &[&str]) {
    let out = rejuv(args);
    assert!(
        out.status.success(),
        "rejuv {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write_secret(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A fleet on paper (CA, certificates, config, tokens) and the processes started from it,
/// each in its own process group and ended on drop.
struct Fleet {
    dir: tempfile::TempDir,
    config: PathBuf,
    tls: PathBuf,
    token: String,
    controller: SocketAddr,
    admin: SocketAddr,
    agents: Vec<(String, SocketAddr)>,
    procs: Vec<(String, Child)>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, c) in &mut self.procs {
            let pgid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
        // The instances an agent started run in process groups of their own.
        procs::kill_env_tagged(&self.tag_env());
    }
}

impl Fleet {
    /// One primary (s1) and one spare (s2), the builtin proxy, TLS on.
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rejuv-tls-")
            .tempdir()
            .unwrap();
        let tls = dir.path().join("tls");
        let ca = dir.path().join("ca");
        ok(&["tls", "init", ca.to_str().unwrap()]);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let controller = SocketAddr::new(lo, free_port(lo));
        let admin = SocketAddr::new(lo, free_port(lo));
        let front = SocketAddr::new(lo, free_port(lo));
        let token: String = (0..16)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let token_path = dir.path().join("token");
        write_secret(&token_path, &token);
        let mut agents = Vec::new();
        for (i, id) in ["s1", "s2"].iter().enumerate() {
            let ip: IpAddr = format!("127.0.0.{}", 2 + i).parse().unwrap();
            agents.push((id.to_string(), SocketAddr::new(ip, free_port(ip))));
        }
        let issue = |role: &str, name: &str, san: &str| {
            ok(&[
                "tls",
                "issue",
                "--ca",
                ca.to_str().unwrap(),
                "--role",
                role,
                "--name",
                name,
                "--san",
                san,
                "--san",
                "127.0.0.1",
                "--out",
                tls.to_str().unwrap(),
            ])
        };
        issue("controller", "controller", "localhost");
        issue("proxy", "proxy", "localhost");
        for (id, addr) in &agents {
            issue("agent", id, &addr.ip().to_string());
        }
        let mut toml = format!(
            r#"
[cluster]
mode = "active-standby"

[auth]
agent_token_file = "{tp}"
api_token_file = "{tp}"
proxy_token_file = "{tp}"

[controller]
listen = "{controller}"
poll_interval = "300ms"
agent_timeout = "2s"

[agent]
sample_interval = "300ms"

[traffic]
adapter = "builtin"
admin = "{admin}"
listen = {{ web = "{front}" }}

[store]
path = "{store}"

[tls]
ca = "{ca}/ca.pem"
cert = "{tls}/{{name}}.pem"
key = "{tls}/{{name}}.key"
revoked_file = "{tls}/revoked.txt"
api = false

[services.web]
command = "{EXE}"
args = ["sample-service", "--listen", "{{address}}:{{port}}", "--instance-id", "{{instance}}"]
env = {{ REJUV_LOG = "warn", REJUV_TEST_TAG = "{tag}" }}
health = {{ path = "/healthz", interval = "200ms", timeout = "1s" }}
drain = "1s"
stop_grace = "2s"
"#,
            tp = token_path.display(),
            store = dir.path().join("rejuv.db").display(),
            ca = ca.display(),
            tls = tls.display(),
            tag = Self::tag_of(dir.path()),
        );
        for (i, (id, addr)) in agents.iter().enumerate() {
            let port = 21000 + (rand::random::<u16>() % 30000);
            toml.push_str(&format!(
                r#"
[[servers]]
id = "{id}"
address = "{ip}"
agent = "{addr}"
role = "{role}"
capacity = 4
port_range = [{port}, {hi}]
memory_budget_bytes = 268435456
instances = {inst}
data_dir = "{data}"
"#,
                ip = addr.ip(),
                role = if i == 0 { "primary" } else { "spare" },
                hi = port + 7,
                inst = if i == 0 { r#"["web"]"# } else { "[]" },
                data = dir.path().join("agents").join(id).display(),
            ));
        }
        let config = dir.path().join("rejuv.toml");
        std::fs::write(&config, toml).unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        Self {
            dir,
            config,
            tls,
            token,
            controller,
            admin,
            agents,
            procs: Vec::new(),
        }
    }

    /// The tag in the environment of this fleet's instances: its temp dir's name.
    fn tag_of(dir: &Path) -> String {
        dir.file_name().unwrap().to_string_lossy().into_owned()
    }

    fn tag_env(&self) -> String {
        format!("REJUV_TEST_TAG={}", Self::tag_of(self.dir.path()))
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("logs/{name}.log"))
    }

    fn spawn(&mut self, name: &str, args: &[&str]) {
        use std::os::unix::process::CommandExt;
        let f = std::fs::File::create(self.log(name)).unwrap();
        let mut cmd = Command::new(EXE);
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .stdin(Stdio::null())
            .process_group(0);
        self.procs.push((name.to_string(), cmd.spawn().unwrap()));
    }

    fn start_agent(&mut self, id: &str) {
        self.spawn(&format!("agent-{id}"), &["agent", "--server", id]);
    }

    fn still_running(&mut self, name: &str) -> bool {
        let (_, c) = self.procs.iter_mut().find(|(n, _)| n == name).unwrap();
        c.try_wait().unwrap().is_none()
    }

    fn agent(&self, id: &str) -> SocketAddr {
        self.agents.iter().find(|(i, _)| i == id).unwrap().1
    }

    /// A client with the certificate `cert` (of `ca`, the fleet's unless given), checking
    /// the server by `check`.
    fn client_as(
        &self,
        ca: Option<&Path>,
        cert: &str,
        check: PeerCheck,
    ) -> reqwest::blocking::Client {
        let ca = ca.map_or_else(|| self.ca_dir().join("ca.pem"), |c| c.join("ca.pem"));
        let dir = ca.parent().unwrap().to_path_buf();
        let certs = if dir == self.ca_dir() {
            self.tls.clone()
        } else {
            dir.join("out")
        };
        let tls = Tls::load(TlsFiles {
            ca,
            cert: certs.join(format!("{cert}.pem")),
            key: certs.join(format!("{cert}.key")),
            revoked: None,
        })
        .unwrap();
        reqwest::blocking::Client::builder()
            .use_preconfigured_tls(tls.client_config(check))
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap()
    }

    fn controller_client(&self, agent: &str) -> reqwest::blocking::Client {
        self.client_as(
            None,
            "controller",
            PeerCheck {
                role: Some(Role::Agent),
                name: Some(agent.to_string()),
            },
        )
    }

    fn status(&self) -> Option<Value> {
        reqwest::blocking::Client::new()
            .get(format!("http://{}/v1/status", self.controller))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(3))
            .send()
            .ok()
            .filter(|r| r.status().is_success())?
            .json()
            .ok()
    }

    fn reachable(&self, id: &str) -> Option<bool> {
        self.status()?["servers"]
            .as_array()?
            .iter()
            .find(|s| s["id"] == id)
            .and_then(|s| s["reachable"].as_bool())
    }
}

/// The agent's own certificate's days left, from its `/metrics`.
fn own_days_left(
    client: &reqwest::blocking::Client,
    agent: SocketAddr,
    token: &str,
) -> Option<f64> {
    let text = client
        .get(format!("https://{agent}/metrics"))
        .bearer_auth(token)
        .send()
        .ok()?
        .text()
        .ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with("rejuv_tls_cert_expiry_seconds{cert=\"own\"}"))?;
    let secs: f64 = line.rsplit(' ').next()?.parse().ok()?;
    Some(secs / 86400.0)
}

#[test]
fn an_agent_serves_only_a_controller_of_its_fleet_and_takes_a_new_certificate_without_restart() {
    let mut f = Fleet::new();
    f.start_agent("s1");
    let s1 = f.agent("s1");
    let controller = f.controller_client("s1");
    wait_for(
        "agent s1 answers a controller of its fleet",
        Duration::from_secs(30),
        || {
            let r = controller
                .get(format!("https://{s1}/healthz"))
                .send()
                .ok()?;
            r.status().is_success().then_some(())
        },
    );

    // Plain HTTP: no answer.
    let plain = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    assert!(plain.get(format!("http://{s1}/healthz")).send().is_err());

    // TLS without a client certificate: the handshake fails.
    let anonymous = reqwest::blocking::Client::builder()
        .use_preconfigured_tls(
            rejuv_net::tls::api_client_config(&f.ca_dir().join("ca.pem")).unwrap(),
        )
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let e = anonymous
        .get(format!("https://{s1}/healthz"))
        .send()
        .expect_err("no client certificate, no answer");
    assert!(e.is_connect() || e.is_request(), "{e:?}");

    // A controller certificate of another fleet's CA: refused.
    let other = f.dir.path().join("other");
    ok(&["tls", "init", other.to_str().unwrap()]);
    ok(&[
        "tls",
        "issue",
        "--ca",
        other.to_str().unwrap(),
        "--role",
        "controller",
        "--name",
        "controller",
        "--out",
        other.join("out").to_str().unwrap(),
    ]);
    let foreign = f.client_as(
        Some(&other),
        "controller",
        PeerCheck {
            role: None,
            name: None,
        },
    );
    assert!(foreign.get(format!("https://{s1}/healthz")).send().is_err());

    // A certificate of this fleet, but an agent's: not a controller, refused.
    let peer_agent = f.client_as(
        None,
        "s2",
        PeerCheck {
            role: Some(Role::Agent),
            name: None,
        },
    );
    assert!(peer_agent
        .get(format!("https://{s1}/healthz"))
        .send()
        .is_err());

    // The client side: expecting server s2 at s1's address, the controller refuses it.
    let wrong = f.controller_client("s2");
    let e = wrong
        .get(format!("https://{s1}/healthz"))
        .send()
        .unwrap_err();
    let chain = rejuv_core::error_chain(&e);
    assert!(chain.contains("not s2"), "{chain}");

    // The expiry metric, then a certificate replaced on disk is taken by the running agent.
    let days = wait_for("the expiry metric", Duration::from_secs(10), || {
        own_days_left(&controller, s1, &f.token)
    });
    assert!((364.0..=365.1).contains(&days), "{days}");
    let pem = f.tls.join("s1.pem");
    let before = std::fs::read(&pem).unwrap();
    ok(&[
        "tls",
        "issue",
        "--ca",
        f.ca_dir().to_str().unwrap(),
        "--role",
        "agent",
        "--name",
        "s1",
        "--san",
        "127.0.0.2",
        "--days",
        "5",
        "--out",
        f.tls.to_str().unwrap(),
    ]);
    assert_ne!(before, std::fs::read(&pem).unwrap());
    let days = wait_for(
        "the agent takes its new certificate",
        Duration::from_secs(15),
        || own_days_left(&controller, s1, &f.token).filter(|d| *d < 6.0),
    );
    assert!((4.9..=5.1).contains(&days), "{days}");
    assert!(f.still_running("agent-s1"), "taken without a restart");
    let log = std::fs::read_to_string(f.log("agent-s1")).unwrap();
    assert!(log.contains("loaded anew"), "{log}");
    assert!(!log.contains(&f.token), "the token is never logged");
}

#[test]
fn the_controller_refuses_an_agent_naming_another_server_and_a_revoked_one() {
    let mut f = Fleet::new();
    // s2's address shows a certificate of this fleet that names s1.
    let imposter = f.dir.path().join("imposter");
    ok(&[
        "tls",
        "issue",
        "--ca",
        f.ca_dir().to_str().unwrap(),
        "--role",
        "agent",
        "--name",
        "s1",
        "--san",
        "127.0.0.3",
        "--out",
        imposter.to_str().unwrap(),
    ]);
    std::fs::copy(imposter.join("s1.pem"), f.tls.join("s2.pem")).unwrap();
    std::fs::copy(imposter.join("s1.key"), f.tls.join("s2.key")).unwrap();
    f.start_agent("s1");
    f.start_agent("s2");
    f.spawn("proxy", &["proxy"]);
    f.spawn("controller", &["controller"]);
    wait_for("the controller reaches s1", Duration::from_secs(60), || {
        f.reachable("s1").filter(|r| *r)
    });
    // The controller tried s2 and refused its certificate: the log says why.
    let log = wait_for(
        "the refusal of s2's certificate is logged",
        Duration::from_secs(20),
        || {
            let log = std::fs::read_to_string(f.log("controller")).ok()?;
            log.contains("refusing the agent's TLS certificate")
                .then_some(log)
        },
    );
    assert!(
        log.contains("names agent s1") && log.contains("not s2"),
        "{log}"
    );
    assert_eq!(f.reachable("s2"), Some(false), "s2 is never reached");

    // The proxy's admin API serves the controller only; its certificate is a proxy's.
    let to_proxy = |cert: &str| {
        f.client_as(
            None,
            cert,
            PeerCheck {
                role: Some(Role::Proxy),
                name: None,
            },
        )
    };
    let admin = f.admin;
    let metrics = to_proxy("controller")
        .get(format!("https://{admin}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("rejuv_tls_cert_expiry_seconds{cert=\"own\"}"),
        "{metrics}"
    );
    assert!(to_proxy("s1")
        .get(format!("https://{admin}/healthz"))
        .send()
        .is_err());
    // An agent's address is not where a proxy is: the controller's check refuses it.
    let s1 = f.agent("s1");
    assert!(to_proxy("controller")
        .get(format!("https://{s1}/healthz"))
        .send()
        .is_err());
    // Both agents run: it is the controller that refuses.
    assert!(f.still_running("agent-s2"));

    // Revoking s1 by name: the controller drops it without a restart.
    std::fs::write(f.tls.join("revoked.txt"), "# retired\ns1\n").unwrap();
    wait_for(
        "the revoked s1 is no longer reached",
        Duration::from_secs(20),
        || f.reachable("s1").filter(|r| !*r),
    );
    assert!(f.still_running("controller"));
    let metrics = reqwest::blocking::Client::new()
        .get(format!("http://{}/metrics", f.controller))
        .bearer_auth(&f.token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("rejuv_tls_cert_expiry_seconds{cert=\"own\"}")
            && metrics.contains("rejuv_tls_cert_expiry_seconds{cert=\"agent/s1\"}"),
        "{metrics}"
    );
}

#[test]
fn a_key_others_can_read_is_refused() {
    let mut f = Fleet::new();
    let key = f.tls.join("s1.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    f.start_agent("s1");
    let (_, child) = f.procs.iter_mut().next().unwrap();
    let status = wait_for("the agent exits", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    assert!(!status.success());
    let log = std::fs::read_to_string(f.log("agent-s1")).unwrap();
    assert!(
        log.contains(&key.display().to_string()) && log.contains("0644"),
        "{log}"
    );
}

#[test]
fn config_check_warns_about_plain_http_unless_it_is_on_purpose() {
    let f = Fleet::new();
    let text = std::fs::read_to_string(&f.config).unwrap();
    let at = text.find("[tls]").unwrap();
    let end = text[at..].find("[services.web]").unwrap() + at;
    let plain = f.dir.path().join("plain.toml");
    std::fs::write(&plain, format!("{}{}", &text[..at], &text[end..])).unwrap();
    let out = rejuv(&["config", "check", plain.to_str().unwrap()]);
    assert!(out.status.success(), "a warning, not an error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: tls: not set"), "{err}");

    let insecure = f.dir.path().join("insecure.toml");
    std::fs::write(
        &insecure,
        format!("{}[tls]\ninsecure = true\n\n{}", &text[..at], &text[end..]),
    )
    .unwrap();
    let out = rejuv(&["config", "check", insecure.to_str().unwrap()]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("tls"), "{err}");

    let out = rejuv(&["config", "check", f.config.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("tls"));
}

#[test]
fn the_operator_api_is_https_without_a_client_certificate_when_asked() {
    let mut f = Fleet::new();
    let text = std::fs::read_to_string(&f.config).unwrap();
    std::fs::write(&f.config, text.replace("api = false", "api = true")).unwrap();
    f.spawn("controller", &["controller"]);
    let ca = f.ca_dir().join("ca.pem");
    let https = reqwest::blocking::Client::builder()
        .use_preconfigured_tls(rejuv_net::tls::api_client_config(&ca).unwrap())
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let url = format!("https://{}/v1/status", f.controller);
    let status = wait_for(
        "the controller API answers over HTTPS",
        Duration::from_secs(30),
        || {
            let r = https.get(&url).bearer_auth(&f.token).send().ok()?;
            Some(r.status())
        },
    );
    assert_eq!(
        status, 200,
        "no client certificate needed, the token decides"
    );
    let r = https.get(&url).send().unwrap();
    assert_eq!(r.status(), 401, "still a token");
    assert!(reqwest::blocking::get(format!("http://{}/v1/status", f.controller)).is_err());

    // The CLI takes https:// and the CA from the config.
    let out = rejuv(&[
        "status",
        "--config",
        f.config.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mode"], "active-standby");
    // Without the CA, an https:// controller is refused with a clear message.
    let out = rejuv(&[
        "status",
        "--controller",
        &format!("https://{}", f.controller),
        "--token-file",
        f.dir.path().join("token").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cacert"));
}

#[test]
fn a_joining_agent_needs_a_certificate_naming_the_id_it_claims() {
    let mut f = Fleet::new();
    let join = f.dir.path().join("join.token");
    write_secret(&join, "join-token-0123456789abcdef");
    let mut text = std::fs::read_to_string(&f.config).unwrap();
    text.push_str(&format!(
        "\n[join]\ntoken_file = \"{}\"\nauto_approve = true\n",
        join.display()
    ));
    std::fs::write(&f.config, text).unwrap();
    let issue = |name: &str, san: &str, out: &Path| {
        ok(&[
            "tls",
            "issue",
            "--ca",
            f.ca_dir().to_str().unwrap(),
            "--role",
            "agent",
            "--name",
            name,
            "--san",
            san,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    // s3 holds a certificate for s3; s4 holds one of this fleet that names s1.
    issue("s3", "127.0.0.4", &f.tls);
    let imposter = f.dir.path().join("imposter");
    issue("s1", "127.0.0.5", &imposter);
    std::fs::copy(imposter.join("s1.pem"), f.tls.join("s4.pem")).unwrap();
    std::fs::copy(imposter.join("s1.key"), f.tls.join("s4.key")).unwrap();
    f.start_agent("s1");
    f.start_agent("s2");
    f.spawn("proxy", &["proxy"]);
    f.spawn("controller", &["controller"]);
    wait_for("the controller reaches s1", Duration::from_secs(60), || {
        f.reachable("s1").filter(|r| *r)
    });
    let controller = format!("http://{}", f.controller);
    let join_as = |f: &mut Fleet, id: &str, ip: &str| {
        let ip: IpAddr = ip.parse().unwrap();
        let addr = SocketAddr::new(ip, free_port(ip));
        let port = 21000 + (rand::random::<u16>() % 30000);
        let data = f.dir.path().join("agents").join(id);
        f.spawn(
            &format!("agent-{id}"),
            &[
                "agent",
                "--server-id",
                id,
                "--join",
                &controller,
                "--join-token-file",
                join.to_str().unwrap(),
                "--role",
                "spare",
                "--address",
                &addr.to_string(),
                "--port-range",
                &format!("{port}-{}", port + 7),
                "--data-dir",
                data.to_str().unwrap(),
            ],
        );
    };
    join_as(&mut f, "s4", "127.0.0.5");
    let name = "agent-s4".to_string();
    let status = wait_for("the agent of s4 exits", Duration::from_secs(20), || {
        let (_, c) = f.procs.iter_mut().find(|(n, _)| *n == name).unwrap();
        c.try_wait().unwrap()
    });
    assert!(!status.success());
    let log = std::fs::read_to_string(f.log("agent-s4")).unwrap();
    assert!(
        log.contains("names agent/s1") && log.contains("joins as server 's4'"),
        "{log}"
    );
    // With a certificate that names it, s3 joins and the controller reaches it over TLS.
    join_as(&mut f, "s3", "127.0.0.4");
    wait_for("the controller reaches s3", Duration::from_secs(30), || {
        f.reachable("s3").filter(|r| *r)
    });
    assert_eq!(f.reachable("s4"), None, "s4 never joined");
}
