//! `[tls]`: mutual TLS between the parts (controller, agents, builtin proxy), with the fleet's
//! CA and each part's certificate. Without the section the parts talk plain HTTP, and
//! [`Config::warnings`](super::Config::warnings) says so unless `insecure = true`.

use super::field::Errors;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The placeholder in `cert` and `key` replaced by the part's own name: the server id in an
/// agent, `controller` in a controller, `proxy` in the builtin proxy.
pub const NAME_PLACEHOLDER: &str = "{name}";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The fleet's CA certificate (PEM), made by `rejuv tls init`.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// This part's certificate (PEM), made by `rejuv tls issue`; `{name}` stands for the
    /// part's name (see [`NAME_PLACEHOLDER`]).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// This part's private key (PEM, mode 0600 or stricter); `{name}` as in `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Plain HTTP between the parts on purpose: no TLS, and no warning about it.
    #[serde(default)]
    pub insecure: bool,
    /// Whether the controller's operator API (dashboard, `/v1`, `/metrics`) is HTTPS too,
    /// with the controller's certificate; it never asks for a client certificate.
    #[serde(default = "default_api")]
    pub api: bool,
    /// A file of revoked certificates: one certificate name or serial number (hex) a line,
    /// `#` starts a comment. Read again when it changes.
    #[serde(default)]
    pub revoked_file: Option<PathBuf>,
    /// A certificate (the part's own, or the CA) expiring within this raises an alert.
    #[serde(with = "humantime_serde", default = "default_expiry_warning")]
    pub expiry_warning: Duration,
}

fn default_api() -> bool {
    true
}

fn default_expiry_warning() -> Duration {
    Duration::from_secs(14 * 86400)
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca: None,
            cert: None,
            key: None,
            insecure: false,
            api: default_api(),
            revoked_file: None,
            expiry_warning: default_expiry_warning(),
        }
    }
}

/// The files one part uses, its `{name}` filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub revoked: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether the parts talk TLS.
    pub fn enabled(&self) -> bool {
        !self.insecure && self.ca.is_some()
    }

    /// The files of the part named `name`, when TLS is on.
    pub fn files(&self, name: &str) -> Option<TlsFiles> {
        if !self.enabled() {
            return None;
        }
        let fill = |p: &Path| PathBuf::from(p.to_string_lossy().replace(NAME_PLACEHOLDER, name));
        Some(TlsFiles {
            ca: self.ca.clone()?,
            cert: fill(self.cert.as_deref()?),
            key: fill(self.key.as_deref()?),
            revoked: self.revoked_file.clone(),
        })
    }

    pub(crate) fn validate(&self, errs: &mut Errors) {
        let named = [
            ("tls.ca", self.ca.is_some()),
            ("tls.cert", self.cert.is_some()),
            ("tls.key", self.key.is_some()),
        ];
        if self.insecure {
            for (field, set) in named {
                if set {
                    errs.add(
                        field,
                        "set with insecure = true, which turns TLS off: remove one of them",
                    );
                }
            }
            return;
        }
        for (field, set) in named {
            if !set {
                errs.add(
                    field,
                    "required in [tls] (or set insecure = true for plain HTTP on purpose)",
                );
            }
        }
        if self.expiry_warning < Duration::from_secs(3600) {
            errs.add("tls.expiry_warning", "must be at least 1h");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_filled_in_and_insecure_turns_it_off() {
        let t: TlsConfig =
            toml::from_str("ca = \"/t/ca.pem\"\ncert = \"/t/{name}.pem\"\nkey = \"/t/{name}.key\"")
                .unwrap();
        let f = t.files("s1").unwrap();
        assert_eq!(f.cert, PathBuf::from("/t/s1.pem"));
        assert_eq!(f.key, PathBuf::from("/t/s1.key"));
        assert!(t.api, "the operator API follows by default");
        let mut errs = Errors::default();
        t.validate(&mut errs);
        assert!(errs.into_vec().is_empty());

        let off: TlsConfig = toml::from_str("insecure = true").unwrap();
        assert!(!off.enabled());
        assert_eq!(off.files("s1"), None);
    }

    #[test]
    fn a_section_without_its_files_is_refused() {
        let t: TlsConfig = toml::from_str("ca = \"/t/ca.pem\"").unwrap();
        let mut errs = Errors::default();
        t.validate(&mut errs);
        let fields: Vec<String> = errs.into_vec().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["tls.cert", "tls.key"]);

        let t: TlsConfig = toml::from_str("insecure = true\nca = \"/t/ca.pem\"").unwrap();
        let mut errs = Errors::default();
        t.validate(&mut errs);
        assert_eq!(errs.into_vec()[0].field, "tls.ca");
    }
}
