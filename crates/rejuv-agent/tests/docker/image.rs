//! Scratch images from host binaries: a tiny HTTP server compiled here serves from its
//! container through a published port; images are labelled and found by their tag.

use crate::common::{eventually, within, Harness};
use rejuv_agent::docker::{scratch_image_tag, DockerError, ExitReason, PublishedPort, LABEL_IMAGE};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A std-only HTTP server: `tiny-http PORT` answers every request `200 ok`.
const TINY_HTTP: &str = r#"
use std::io::{Read, Write};
fn main() {
    let port = std::env::args().nth(1).expect("PORT");
    let l = std::net::TcpListener::bind(("0.0.0.0", port.parse::<u16>().unwrap())).unwrap();
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    }
}
"#;

fn compile_tiny_http(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("tiny_http.rs");
    std::fs::write(&src, TINY_HTTP).unwrap();
    let out = dir.join("tiny-http");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let status = Command::new(rustc)
        .args(["--edition", "2021", "-O", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("rustc runs");
    assert!(status.success(), "compiling the tiny HTTP server failed");
    out
}

fn get(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[tokio::test]
async fn a_scratch_image_of_a_host_binary_serves_through_a_published_port() {
    let h = Harness::new().await;
    within(Duration::from_secs(300), "build and serve", async {
        let dir = tempfile::tempdir().unwrap();
        let binary = compile_tiny_http(dir.path());
        let image = h.image("http", &binary, &["8080"]).await;
        assert_eq!(
            image,
            scratch_image_tag(image.split(':').next().unwrap(), &binary).unwrap()
        );
        assert!(h.docker.image_exists(&image).await.unwrap());
        let label = Command::new("docker")
            .args(["image", "inspect", "-f"])
            .arg(format!("{{{{index .Config.Labels \"{LABEL_IMAGE}\"}}}}"))
            .arg(&image)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "1");

        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut spec = h.spec("web", &image);
        spec.port = Some(PublishedPort {
            host_ip: "127.0.0.1".parse().unwrap(),
            host_port: port,
            container_port: 8080,
        });
        let c = h.docker.create_and_start(&spec).await.unwrap();
        eventually(Duration::from_secs(20), "200 from the container", || {
            get(port).is_some_and(|r| r.starts_with("HTTP/1.1 200") && r.ends_with("ok"))
        })
        .await;
        h.docker
            .stop_and_remove(&c.id, Duration::from_secs(1))
            .await
            .unwrap();

        h.docker.remove_image(&image).await.unwrap();
        assert!(!h.docker.image_exists(&image).await.unwrap());
        // Gone already is fine.
        h.docker.remove_image(&image).await.unwrap();
    })
    .await;
}

/// The demo's path: an image of the running binary (this test binary, tens of MB in a debug
/// build), built once and then found by its tag.
#[tokio::test]
async fn an_image_of_the_running_binary_builds_in_time_and_is_found_by_its_tag() {
    let h = Harness::new().await;
    within(
        Duration::from_secs(300),
        "build from the running binary",
        async {
            let exe = std::env::current_exe().unwrap();
            let started = std::time::Instant::now();
            let image = h.image("self", &exe, &["--list"]).await;
            let took = started.elapsed();
            eprintln!("built {image} from {} in {took:?}", exe.display());
            assert!(took < Duration::from_secs(120), "took {took:?}");
            assert!(h.docker.image_exists(&image).await.unwrap());
            let tag = scratch_image_tag(image.split(':').next().unwrap(), &exe).unwrap();
            assert_eq!(
                tag, image,
                "the same binary gives the same tag: no second build"
            );

            // It runs in the image: every library it needs is there (`--list` exits 0).
            let spec = h.spec("self", &image);
            let reason = match h.docker.create_and_start(&spec).await {
                Ok(c) => h.docker.wait(&c.id).await.unwrap(),
                Err(DockerError::ExitedAtStart { reason, .. }) => reason,
                Err(e) => panic!("{e:#}"),
            };
            assert_eq!(reason, ExitReason::Exited(0), "{reason}");
        },
    )
    .await;
}
