//! A real Prometheus for tests, and the pieces around it: a child process killed with its
//! group on drop, a free loopback address, and a bounded wait. Included by the test crates
//! that start one (`#[path = ".../support/prometheus.rs"] mod ...`); each uses some of it.
#![allow(dead_code)]

use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A child in its own process group, killed with its group on drop (even on failure).
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .process_group(0);
        match cmd.spawn() {
            Ok(child) => Self { child },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("`{name}` is not installed: install the Debian package `{name}`")
            }
            Err(e) => panic!("starting {name}: {e}"),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

/// A real Prometheus with its own data directory, on a free port.
pub struct Prometheus {
    _proc: Proc,
    pub url: String,
    http: reqwest::blocking::Client,
}

impl Prometheus {
    /// Starts it with `config` (its YAML) in `dir`.
    pub fn start(dir: &Path, config: &str) -> Self {
        let addr = free_addr();
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let proc = Proc::spawn(
            "prometheus",
            Command::new("prometheus")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("prometheus-data").display()
                ))
                .arg(format!("--web.listen-address={addr}")),
            &dir.join("prometheus.log"),
        );
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Self {
            _proc: proc,
            url: format!("http://{addr}"),
            http,
        }
    }

    /// The single value of an instant query, or `None` while there is none.
    pub fn scalar(&self, q: &str) -> Option<f64> {
        let v: Value = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", q)])
            .send()
            .ok()?
            .json()
            .ok()?;
        let r = v["data"]["result"].as_array()?;
        r.first()?["value"][1].as_str()?.parse().ok()
    }
}

pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
