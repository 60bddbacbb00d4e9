//! Processes found by a tag in their environment: the instances an agent started (in process
//! groups of their own) that outlive a killed agent, ended by a test's clean-up.

/// Pids of the processes whose environment holds `needle` (`KEY=VALUE`).
pub fn pids_with_env(needle: &str) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

/// SIGKILLs every process whose environment holds `needle` (`KEY=VALUE`).
pub fn kill_env_tagged(needle: &str) {
    for pid in pids_with_env(needle) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
