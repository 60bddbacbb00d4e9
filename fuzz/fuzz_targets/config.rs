//! The config parser and every section's validation, on any text: an error or a config, and
//! every error's text bounded (a bad line is clipped, not echoed whole).
#![no_main]
use libfuzzer_sys::fuzz_target;
use rejuv_core::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text) {
        Ok(c) => {
            let _ = c.warnings();
        }
        Err(e) => {
            let msg = e.to_string();
            if let rejuv_core::config::ConfigError::Parse(_) = e {
                assert!(msg.len() < 8 * 1024, "parse error of {} bytes", msg.len());
            }
        }
    }
});
