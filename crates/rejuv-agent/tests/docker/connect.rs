//! Connecting: the real Engine answers; a missing or silent socket fails fast, naming it.

use crate::common::{unique, within, SOCKET};
use rejuv_agent::docker::{Docker, DockerError};
use std::path::Path;
use std::time::{Duration, Instant};

#[tokio::test]
async fn the_engine_answers() {
    let d = Docker::connect(Path::new(SOCKET), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(d.socket(), Path::new(SOCKET));
}

#[tokio::test]
async fn a_missing_socket_fails_at_once_naming_it() {
    let path = std::env::temp_dir().join(format!("{}-missing.sock", unique()));
    let started = Instant::now();
    let e = Docker::connect(&path, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(matches!(e, DockerError::NoSocket { .. }), "{e:?}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}

#[tokio::test]
async fn an_engine_that_does_not_answer_times_out_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    // Accepts connections and never answers.
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    let started = Instant::now();
    let e = within(
        Duration::from_secs(10),
        "connect to a silent socket",
        Docker::connect(&path, Duration::from_millis(500)),
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(e, DockerError::Timeout { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("unix://{}", path.display())), "{msg}");
    assert!(msg.contains("does not answer"), "{msg}");
    held.abort();

    // A socket nobody listens on any more: refused, not a hang.
    drop(held);
    let e = within(
        Duration::from_secs(10),
        "connect to a dead socket",
        Docker::connect(&path, Duration::from_secs(5)),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}
