//! Images built on this host: no registry is reachable, so an image for a service is made
//! `FROM scratch` out of a host binary, every shared library `ldd` lists for it, and the
//! dynamic loader, each at the path the loader expects (symlinks resolved to their contents).
//!
//! The tag from [`scratch_image_tag`] carries a hash of the binary's bytes, so a caller (the
//! demo) checks [`Docker::image_exists`] and builds only when the binary changed: a fresh
//! machine pays for one build, a second run for none. Every image built here has the label
//! [`LABEL_IMAGE`]`=1`, so a clean-up can find them.
//!
//! # Assumptions
//! The binary runs on the host as it is (same architecture and C library); `ldd` is the
//! host's. A statically linked binary needs no libraries and gets none.

use super::{is_status, Docker, DockerError, LABEL_IMAGE};
use bollard::query_parameters::{BuildImageOptionsBuilder, RemoveImageOptionsBuilder};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the binary is put inside the image.
const APP_DIR: &str = "app";
/// Part of the tag's hash: a change in how images are laid out makes new tags.
const LAYOUT_VERSION: &[u8] = b"rejuv-scratch-v1\n";
/// How long a build may take before the Engine's first answer.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// The tag of the scratch image for `binary`: `name:` and 16 hex digits of a hash of the
/// binary's bytes, e.g. `rejuv-demo:3f2a9c1e0b7d5a11`. Reads the whole binary (blocking).
///
/// # Errors
/// [`DockerError::InvalidSpec`] for a name Docker would refuse; [`DockerError::Read`].
pub fn scratch_image_tag(name: &str, binary: &Path) -> Result<String, DockerError> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c));
    if !valid {
        return Err(DockerError::InvalidSpec {
            field: "image name",
            reason: format!("'{name}' is not a lower-case repository name"),
        });
    }
    let read = |source| DockerError::Read {
        path: binary.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(binary).map_err(read)?;
    let mut hasher = Sha256::new();
    hasher.update(LAYOUT_VERSION);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(read)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest = hasher.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{name}:{hex}"))
}

/// Builds `tag` `FROM scratch`: `binary` at `/app/<its file name>` with its shared libraries
/// and loader, and `ENTRYPOINT ["/app/<name>", entrypoint_args...]`.
///
/// # Errors
/// [`DockerError::Ldd`] when `ldd` fails or a library is not found; [`DockerError::Read`];
/// [`DockerError::Build`] with the Engine's message when the build fails.
pub async fn build_scratch_image(
    docker: &Docker,
    tag: &str,
    binary: &Path,
    entrypoint_args: &[String],
) -> Result<(), DockerError> {
    build_scratch_image_with(docker, tag, binary, &[], entrypoint_args).await
}

/// [`build_scratch_image`] with more host binaries in the image: each `(host path, path
/// inside)` with its own shared libraries (e.g. `kill` for a container host's restart
/// command).
pub async fn build_scratch_image_with(
    docker: &Docker,
    tag: &str,
    binary: &Path,
    tools: &[(PathBuf, String)],
    entrypoint_args: &[String],
) -> Result<(), DockerError> {
    let mut libraries = shared_libraries(binary).await?;
    for (tool, _) in tools {
        for l in shared_libraries(tool).await? {
            if !libraries.contains(&l) {
                libraries.push(l);
            }
        }
    }
    let binary = binary.to_path_buf();
    let args = entrypoint_args.to_vec();
    let tools = tools.to_vec();
    let context =
        tokio::task::spawn_blocking(move || build_context(&binary, &tools, &libraries, &args))
            .await
            .map_err(|e| DockerError::Build {
                tag: tag.to_string(),
                message: format!("the build context task failed: {e}"),
            })??;

    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .forcerm(true)
        .build();
    let client = docker.client_with_extra(BUILD_TIMEOUT);
    let mut progress = client.build_image(
        options,
        None,
        Some(bollard::body_full(bytes::Bytes::from(context))),
    );
    while let Some(step) = progress.next().await {
        if let Err(e) = step {
            return Err(DockerError::Build {
                tag: tag.to_string(),
                message: e.to_string(),
            });
        }
    }
    if !docker.image_exists(tag).await? {
        return Err(DockerError::Build {
            tag: tag.to_string(),
            message: "the Engine reported no error but the image is not there".to_string(),
        });
    }
    Ok(())
}

impl Docker {
    /// Whether an image `tag` is on this host.
    pub async fn image_exists(&self, tag: &str) -> Result<bool, DockerError> {
        match self.client().inspect_image(tag).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(DockerError::api("image inspect", tag, e)),
        }
    }

    /// Removes the image `tag`; one that is not there is fine.
    ///
    /// # Errors
    /// When a container still uses it (409), or the Engine fails.
    pub async fn remove_image(&self, tag: &str) -> Result<(), DockerError> {
        let options = RemoveImageOptionsBuilder::default().build();
        match self.client().remove_image(tag, Some(options), None).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(DockerError::api("image remove", tag, e)),
        }
    }
}

/// The absolute paths `ldd binary` lists (libraries and the loader), in its order.
async fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, DockerError> {
    let ldd_error = |stderr: String| DockerError::Ldd {
        binary: binary.to_path_buf(),
        stderr,
    };
    let out = tokio::process::Command::new("ldd")
        .arg(binary)
        .env("LC_ALL", "C")
        .output()
        .await
        .map_err(|e| ldd_error(format!("cannot run ldd: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // glibc's ldd says so (and fails) for a static binary: nothing to copy.
        if format!("{stdout}{stderr}").contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(ldd_error(format!("{}{}", stderr.trim(), stdout.trim())));
    }
    parse_ldd(&stdout).map_err(ldd_error)
}

/// Parses `ldd` output: `name => /path (0x..)`, `/path (0x..)` (the loader), `name (0x..)`
/// (the vDSO, no file). A library `not found` is an error.
fn parse_ldd(out: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("{} not found", name.trim()));
                }
                rest
            }
            None => line,
        };
        let path = target.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') && !paths.iter().any(|p: &PathBuf| p == Path::new(path)) {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// The build context: a Dockerfile and `rootfs/` with the binary and its libraries.
fn build_context(
    binary: &Path,
    tools: &[(PathBuf, String)],
    libraries: &[PathBuf],
    args: &[String],
) -> Result<Vec<u8>, DockerError> {
    let file_name =
        binary
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| DockerError::InvalidSpec {
                field: "binary",
                reason: format!("{} has no UTF-8 file name", binary.display()),
            })?;
    let inside = format!("/{APP_DIR}/{file_name}");
    let mut entrypoint = vec![inside.clone()];
    entrypoint.extend(args.iter().cloned());
    let entrypoint = serde_json::to_string(&entrypoint).unwrap_or_default();
    let dockerfile =
        format!("FROM scratch\nCOPY rootfs/ /\nLABEL {LABEL_IMAGE}=1\nENTRYPOINT {entrypoint}\n");

    let mut tar = tar::Builder::new(Vec::new());
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DockerError::Read { path, source }
    };
    append_bytes(&mut tar, "Dockerfile", dockerfile.as_bytes(), 0o644).map_err(io(binary))?;
    // Services write temporary files; a scratch image has no /tmp of its own.
    append_dir(&mut tar, "rootfs/tmp", 0o1777).map_err(io(binary))?;
    let mut files = vec![(binary.to_path_buf(), inside)];
    files.extend(tools.iter().cloned());
    files.extend(
        libraries
            .iter()
            .map(|l| (l.clone(), l.to_string_lossy().into_owned())),
    );
    for (from, to) in files {
        // Read through symlinks: the image holds the contents at the path the loader asks for.
        let bytes = std::fs::read(&from).map_err(io(&from))?;
        let name = format!("rootfs{to}");
        append_bytes(&mut tar, &name, &bytes, 0o755).map_err(io(&from))?;
    }
    tar.into_inner().map_err(io(binary))
}

fn append_bytes(
    tar: &mut tar::Builder<Vec<u8>>,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(mode);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, bytes)
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(mode);
    header.set_entry_type(tar::EntryType::Directory);
    tar.append_data(&mut header, name, std::io::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f88)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f88)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        let missing = "\tlibfoo.so.1 => not found\n";
        assert!(parse_ldd(missing).unwrap_err().contains("libfoo.so.1"));
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }

    #[test]
    fn tags_hash_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"one").unwrap();
        std::fs::write(&b, b"two").unwrap();
        let ta = scratch_image_tag("rejuv-demo", &a).unwrap();
        assert!(ta.starts_with("rejuv-demo:"), "{ta}");
        assert_eq!(ta.len(), "rejuv-demo:".len() + 16);
        assert_eq!(ta, scratch_image_tag("rejuv-demo", &a).unwrap());
        assert_ne!(ta, scratch_image_tag("rejuv-demo", &b).unwrap());
        assert!(scratch_image_tag("Rejuv", &a).is_err());
    }
}
