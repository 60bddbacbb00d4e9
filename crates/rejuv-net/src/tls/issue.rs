//! Making the fleet's CA and its certificates (`rejuv tls init`, `rejuv tls issue`, the
//! demo's own CA).
//!
//! Keys are ECDSA P-256. Files are written next to their final name and renamed into place,
//! so a part that reloads never reads half a file; keys are created with mode 0600.

use super::{Role, TlsError, URI_PREFIX};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use time::{Duration as TimeDuration, OffsetDateTime};

/// The CA's file names in its directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

/// The names every certificate gets unless told others: loopback by name and address.
pub const DEFAULT_SANS: [&str; 2] = ["127.0.0.1", "localhost"];

fn err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Writes `bytes` to `path` (mode `mode`) through a temporary file renamed into place.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| err(&tmp, format!("cannot create: {e}")))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| err(&tmp, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| err(path, format!("cannot write: {e}")))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and 16 bytes long in DER.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // An hour back: clocks of a fleet differ a little.
    params.not_before = now - TimeDuration::hours(1);
    params.not_after = now + TimeDuration::days(i64::from(days));
}

/// Makes a fleet CA in `dir`: `ca.pem` and `ca.key` (0600). Refuses to overwrite one.
pub fn init_ca(dir: &Path, days: u32) -> Result<(PathBuf, PathBuf), TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, format!("cannot create: {e}")))?;
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(err(
                p,
                "exists already: a fleet has one CA (remove it to start a new fleet)",
            ));
        }
    }
    let key = KeyPair::generate().map_err(|e| TlsError::Other(format!("making a key: {e}")))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "rejuv fleet CA");
    dn.push(DnType::OrganizationName, "rejuv");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    validity(&mut params, days);
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Other(format!("signing the CA: {e}")))?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

/// What [`issue`] makes.
#[derive(Debug, Clone)]
pub struct IssueRequest<'a> {
    pub ca_dir: &'a Path,
    pub role: Role,
    /// The part's name: an agent's server id, a controller's or proxy's name.
    pub name: &'a str,
    /// DNS names and IP addresses it is reached at.
    pub sans: &'a [String],
    pub days: u32,
    pub out_dir: &'a Path,
}

/// Signs a certificate for one part with the CA of `ca_dir`; writes `NAME.pem` and
/// `NAME.key` (0600) into `out_dir`, replacing older ones (a renewal: the parts reload them).
pub fn issue(req: &IssueRequest<'_>) -> Result<(PathBuf, PathBuf), TlsError> {
    let name_ok = !req.name.is_empty()
        && req.name.len() <= 64
        && req
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        return Err(TlsError::Other(format!(
            "--name '{}': must be 1 to 64 letters, digits, '-', '_' or '.'",
            req.name
        )));
    }
    let ca_cert_path = req.ca_dir.join(CA_CERT);
    let ca_key_path = req.ca_dir.join(CA_KEY);
    super::check_private(&ca_key_path)?;
    let ca_pem = std::fs::read_to_string(&ca_cert_path)
        .map_err(|e| err(&ca_cert_path, format!("cannot read: {e}")))?;
    let ca_key_pem = std::fs::read_to_string(&ca_key_path)
        .map_err(|e| err(&ca_key_path, format!("cannot read: {e}")))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| err(&ca_key_path, format!("not a PEM private key: {e}")))?;
    let ca = CertificateParams::from_ca_cert_pem(&ca_pem)
        .map_err(|e| err(&ca_cert_path, format!("not a CA certificate: {e}")))?
        .self_signed(&ca_key)
        .map_err(|e| err(&ca_key_path, format!("cannot sign with it: {e}")))?;

    let mut sans = Vec::new();
    for s in req.sans {
        let s = s.trim();
        let san = match s.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                s.try_into()
                    .map_err(|e| TlsError::Other(format!("--san '{s}': {e}")))?,
            ),
        };
        sans.push(san);
    }
    let uri = format!("{URI_PREFIX}{}/{}", req.role, req.name);
    sans.push(SanType::URI(
        uri.as_str()
            .try_into()
            .map_err(|e| TlsError::Other(format!("{uri}: {e}")))?,
    ));
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, req.name);
    dn.push(DnType::OrganizationalUnitName, req.role.as_str());
    dn.push(DnType::OrganizationName, "rejuv");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    validity(&mut params, req.days);
    let key = KeyPair::generate().map_err(|e| TlsError::Other(format!("making a key: {e}")))?;
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .map_err(|e| TlsError::Other(format!("signing {uri}: {e}")))?;
    std::fs::create_dir_all(req.out_dir)
        .map_err(|e| err(req.out_dir, format!("cannot create: {e}")))?;
    let cert_path = req.out_dir.join(format!("{}.pem", req.name));
    let key_path = req.out_dir.join(format!("{}.key", req.name));
    // The key first: a part reloading between the two renames sees a key that does not go
    // with its certificate and keeps the old pair until the certificate follows.
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{identity, PeerCheck, Tls};
    use rejuv_core::config::TlsFiles;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    #[test]
    fn an_issued_certificate_names_its_part_and_loads_under_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca, 30).unwrap();
        assert!(init_ca(&ca, 30).is_err(), "one CA per fleet");
        let sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
        let (pem, key) = issue(&IssueRequest {
            ca_dir: &ca,
            role: Role::Agent,
            name: "s1",
            sans: &sans,
            days: 10,
            out_dir: dir.path(),
        })
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let der = CertificateDer::from_pem_file(&pem).unwrap();
        let id = identity(&der).unwrap();
        assert_eq!((id.role, id.name.as_str()), (Role::Agent, "s1"));
        let tls = Tls::load(TlsFiles {
            ca: ca.join(CA_CERT),
            cert: pem,
            key,
            revoked: None,
        })
        .unwrap();
        let (own, ca_left) = tls.expiry_seconds();
        assert!((9 * 86400..=10 * 86400).contains(&own), "{own}");
        assert!(ca_left > 29 * 86400, "{ca_left}");
        let _ = tls.client_config(PeerCheck {
            role: Some(Role::Controller),
            name: None,
        });
    }
}
