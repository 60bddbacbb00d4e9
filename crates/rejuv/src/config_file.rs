//! Reading a config file: bounded in size, refused when it is not text, parsed with the
//! field of every error named. Every command that takes `--config` reads it here, and every
//! token file is read by [`read_token`].

use anyhow::Context;
use rejuv_core::config::Config;
use std::path::Path;

/// Largest config file read (a fleet of 10,000 servers is about 2 MB of TOML).
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Why a config file's text could not be had: `Io` (exit 1) or `NotText` (bad input, exit 2).
pub enum ConfigText {
    Io(anyhow::Error),
    NotText(String),
}

/// The text of a config file: refused if it is too big or not UTF-8, without reading it all.
pub fn config_text(path: &Path) -> Result<String, ConfigText> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .with_context(|| format!("reading config {}", path.display()))
        .map_err(ConfigText::Io)?;
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading config {}", path.display()))
        .map_err(ConfigText::Io)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigText::NotText(format!(
            "larger than {} MiB: not a rejuv config",
            MAX_CONFIG_BYTES >> 20
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        ConfigText::NotText(format!(
            "not a text file (invalid UTF-8 at byte {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    let text = config_text(path).map_err(|e| match e {
        ConfigText::Io(e) => e,
        ConfigText::NotText(why) => anyhow::anyhow!("config {}: {why}", path.display()),
    })?;
    Config::from_toml(&text)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("in {}", path.display()))
}

/// Reads a token file: its content without surrounding whitespace, never empty. A file its
/// group or others can read is refused (naming the file and its mode).
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    rejuv_core::secret::check_private(path).map_err(|e| anyhow::anyhow!("token file {e}"))?;
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    let t = t.trim().to_string();
    anyhow::ensure!(!t.is_empty(), "token file {} is empty", path.display());
    Ok(t)
}
