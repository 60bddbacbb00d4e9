//! A real, throw-away etcd for tests (this crate's and the `rejuv` integration tests): one
//! member on free loopback ports with its own data directory, in its own process group,
//! killed and removed on drop (even when the test fails).
//!
//! There is no fake: a test that needs etcd fails with a clear message when the `etcd`
//! binary (Debian package `etcd-server`) is missing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdServer {
    child: Option<Child>,
    dir: PathBuf,
    pub client: SocketAddr,
}

fn free_port() -> u16 {
    rejuv_net::free_port([127, 0, 0, 1].into()).expect("a free loopback port")
}

impl EtcdServer {
    /// Starts etcd and waits (up to 30 s) until it answers `/health`.
    ///
    /// # Panics
    /// `etcd` is not installed, or does not become healthy in time (its log is printed).
    pub fn start() -> Self {
        assert!(
            crate::etcd_member::on_path(),
            "the etcd tests need a real etcd: `etcd` is not on PATH (Debian: apt-get install etcd-server)"
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("rejuv-etcd-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("etcd test directory");
        let client: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let peer: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd log file");
        let mut cmd = crate::etcd_member::command("t", &dir.join("data"), client, peer);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log));
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd.spawn().expect("spawning etcd");
        let server = Self {
            child: Some(child),
            dir,
            client,
        };
        let until = Instant::now() + Duration::from_secs(30);
        while !server.healthy() {
            if Instant::now() > until {
                let log = std::fs::read_to_string(server.dir.join("etcd.log")).unwrap_or_default();
                panic!("etcd did not become healthy within 30 s; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// The client URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.client, Duration::from_millis(500)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
