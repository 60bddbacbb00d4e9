//! Secrets on disk: files that hold a key or a token must be the owner's alone. (Tokens are
//! compared in constant time by [`crate::digest::constant_time_eq`].)

use std::path::Path;

/// Refuses a file that its group or others may read or write (a private key, a token file),
/// naming the file and its mode.
pub fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}: its group or others can read it; it holds a secret, so it must be the owner's alone (chmod 600 {})",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_others_can_read_is_refused_naming_it_and_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.token");
        std::fs::write(&p, "secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_private(&p).unwrap_err();
        assert!(e.contains("t.token") && e.contains("0644"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_private(&p).unwrap();
    }
}
