//! Test harness: a connection, unique names, images built from host binaries, bounded waits,
//! and a guard that removes every container and image the test made.
//!
//! Every container a test starts carries `rejuv.test=<unique>`; dropping the [`Harness`]
//! removes those containers and the test's images with the `docker` CLI (synchronously, so it
//! also runs while a failed test unwinds).

use rejuv_agent::docker::{
    build_scratch_image, scratch_image_tag, ContainerSpec, Docker, LABEL_INSTANCE, LABEL_SERVER,
    LABEL_SERVICE,
};
use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const SOCKET: &str = "/var/run/docker.sock";
pub const TEST_LABEL: &str = "rejuv.test";

/// A name no other test, in this run or a parallel one, uses.
pub fn unique() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "rt{}-{:x}-{}",
        std::process::id(),
        nanos,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct Harness {
    pub docker: Docker,
    pub id: String,
    images: Mutex<Vec<String>>,
}

impl Harness {
    pub async fn new() -> Harness {
        let docker = Docker::connect(Path::new(SOCKET), Duration::from_secs(5))
            .await
            .expect("this machine's Docker Engine answers");
        Harness {
            docker,
            id: unique(),
            images: Mutex::new(Vec::new()),
        }
    }

    /// A scratch image of `binary` (its tag removed when the harness drops).
    pub async fn image(&self, what: &str, binary: &Path, args: &[&str]) -> String {
        let tag = scratch_image_tag(&format!("rejuv-test-{what}-{}", self.id), binary).unwrap();
        self.images.lock().unwrap().push(tag.clone());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        build_scratch_image(&self.docker, &tag, binary, &args)
            .await
            .unwrap_or_else(|e| panic!("building {tag}: {e:#}"));
        tag
    }

    /// `/bin/sleep` in a scratch image (its entrypoint; the spec's args are its arguments).
    pub async fn sleep_image(&self) -> String {
        self.image("sleep", Path::new("/bin/sleep"), &[]).await
    }

    /// A spec labelled as the agent would, plus this test's label.
    pub fn spec(&self, instance: &str, image: &str) -> ContainerSpec {
        let mut s = ContainerSpec::new(format!("{}-{instance}", self.id), image);
        for (k, v) in [
            (TEST_LABEL, self.id.as_str()),
            (LABEL_INSTANCE, instance),
            (LABEL_SERVICE, "sleeper"),
            (LABEL_SERVER, "s1"),
        ] {
            s.labels.insert(k.to_string(), v.to_string());
        }
        s
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let filter = format!("label={TEST_LABEL}={}", self.id);
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f", "-v"])
                    .args(&ids)
                    .output();
            }
        }
        let images = self.images.lock().map(|i| i.clone()).unwrap_or_default();
        if !images.is_empty() {
            let _ = Command::new("docker")
                .args(["rmi", "-f"])
                .args(&images)
                .output();
        }
    }
}

/// Runs a test body with a deadline that says what probably hung.
pub async fn within<T>(limit: Duration, what: &str, body: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, body).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// Polls `check` until it is true, or panics after `limit` naming `what`.
pub async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not seen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True while a process `pid` exists on the host and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}
