//! A one-member etcd on loopback, as the demo (`rejuv demo --store etcd`) and the tests run
//! it: the command line, and whether `etcd` is on PATH. Needs no etcd client, so it is built
//! with or without the `etcd` feature.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

/// Whether an `etcd` binary answers `etcd --version` (Debian package `etcd-server`).
pub fn on_path() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `etcd` serving clients on `client` and its one peer on `peer`, with its data in
/// `data_dir`; stdin, stdout, stderr and the process group are the caller's to set.
pub fn command(name: &str, data_dir: &Path, client: SocketAddr, peer: SocketAddr) -> Command {
    let mut cmd = Command::new("etcd");
    cmd.args(["--name", name, "--data-dir"])
        .arg(data_dir)
        .arg("--listen-client-urls")
        .arg(format!("http://{client}"))
        .arg("--advertise-client-urls")
        .arg(format!("http://{client}"))
        .arg("--listen-peer-urls")
        .arg(format!("http://{peer}"))
        .arg("--initial-advertise-peer-urls")
        .arg(format!("http://{peer}"))
        .arg("--initial-cluster")
        .arg(format!("{name}=http://{peer}"));
    cmd
}
