//! Mutual TLS between the parts: the fleet's CA, each part's certificate, who may talk to
//! whom, reloading, revocation and expiry.
//!
//! Every certificate of a fleet is signed by its CA ([`issue`] makes both) and names its part
//! in a URI subject alternative name, `rejuv://ROLE/NAME` (also its common name NAME and
//! organizational unit ROLE): `rejuv://agent/s1` is the agent of server `s1`,
//! `rejuv://controller/controller` a controller, `rejuv://proxy/proxy` the builtin proxy.
//!
//! - A server (agent API, proxy admin API) asks for a client certificate of the fleet with the
//!   role it serves ([`Tls::server_config`] with `Some(Role::Controller)`); the controller's
//!   operator API asks for none (`None`).
//! - A client checks the server's chain and address (a DNS or IP name of the certificate),
//!   then its role and, for an agent, its name: the server the client meant to reach
//!   ([`PeerCheck`]).
//! - Both refuse a certificate named (by name, `ROLE/NAME` or serial) in the revocation
//!   file.
//! - The files are looked at again at most once a second when a handshake needs them (and
//!   by [`Tls::watch`]); a change (modification time or size) loads them anew. A file that
//!   does not load (a key that does not match its certificate while both are being replaced)
//!   leaves the last good ones in use. Connections of a certificate revoked since their
//!   handshake are closed ([`Tls::subscribe`] tells when to look).
//! - TLS resumption is off: every connection is verified against the current files.

pub mod issue;

use rejuv_core::config::TlsFiles;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// The series [`Tls::metrics_text`] writes.
pub const METRIC_NAMES: &[&str] = &["rejuv_tls_cert_expiry_seconds"];

/// How often the files are looked at (at most, on handshakes; at least, by [`Tls::watch`]).
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Which part a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Controller,
    Agent,
    Proxy,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Agent => "agent",
            Role::Proxy => "proxy",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "controller" => Ok(Role::Controller),
            "agent" => Ok(Role::Agent),
            "proxy" => Ok(Role::Proxy),
            _ => Err(format!(
                "unknown role '{s}': one of controller, agent, proxy"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scheme of the URI name that says a certificate's role and name.
pub const URI_PREFIX: &str = "rejuv://";

/// What a certificate of the fleet says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    pub name: String,
    /// Serial number, lower-case hex without separators.
    pub serial: String,
    /// End of validity, seconds since the epoch.
    pub not_after: i64,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} (serial {})", self.role, self.name, self.serial)
    }
}

/// Reads role, name, serial and expiry of a certificate (DER).
pub fn identity(der: &[u8]) -> Result<Identity, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let not_after = cert.validity().not_after.timestamp();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative names: {e}"))?;
    let uri = san
        .into_iter()
        .flat_map(|s| &s.value.general_names)
        .find_map(|n| match n {
            GeneralName::URI(u) => u.strip_prefix(URI_PREFIX),
            _ => None,
        });
    let Some(rest) = uri else {
        return Err(format!(
            "certificate (serial {serial}) names no part: no {URI_PREFIX}ROLE/NAME name"
        ));
    };
    let (role, name) = rest
        .split_once('/')
        .ok_or_else(|| format!("{URI_PREFIX}{rest}: not ROLE/NAME"))?;
    Ok(Identity {
        role: role.parse()?,
        name: name.to_string(),
        serial,
        not_after,
    })
}

/// What a client expects of the server it reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCheck {
    /// The role it must have; `None`: any part of the fleet (the demo's own checks).
    pub role: Option<Role>,
    /// The name it must have (an agent: the server id configured for its address).
    pub name: Option<String>,
}

/// The revocation list: names, `ROLE/NAME`s and serials.
#[derive(Debug, Clone, Default)]
struct Revoked(HashSet<String>);

impl Revoked {
    fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                // As `openssl x509 -serial` prints it.
                .map(|l| l.strip_prefix("serial=").unwrap_or(l))
                .map(|l| {
                    if l.contains('/') {
                        l.to_string()
                    } else if l.chars().all(|c| c.is_ascii_hexdigit() || c == ':') && l.len() >= 16
                    {
                        l.replace(':', "").to_ascii_lowercase()
                    } else {
                        l.to_string()
                    }
                })
                .collect(),
        )
    }

    fn refuses(&self, id: &Identity) -> bool {
        self.0.contains(&id.name)
            || self.0.contains(&format!("{}/{}", id.role, id.name))
            || self.0.contains(&id.serial)
    }
}

/// A file's modification time and size, to see that it changed.
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// What was loaded from the files.
struct Loaded {
    stamp: Stamp,
    generation: u64,
    ca_not_after: i64,
    key: Arc<CertifiedKey>,
    own: Identity,
    revoked: Revoked,
    server_verifier: Arc<WebPkiServerVerifier>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

/// A part's TLS: its files, what was last loaded from them, and the checks.
pub struct Tls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    loaded: RwLock<Arc<Loaded>>,
    /// When the files were last looked at, and the stamp of the last load that failed (not
    /// logged again).
    checked: Mutex<(Instant, Option<Stamp>)>,
    changed: tokio::sync::watch::Sender<u64>,
    /// The expiry of each peer certificate seen in a handshake, by `ROLE/NAME`.
    peers: Mutex<std::collections::BTreeMap<String, i64>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

/// Why TLS could not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Other(String),
}

fn file_err(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

// ring builds without cmake or a C++ toolchain (aws-lc-rs needs them); its provider lacks
// post-quantum key exchange, which a fleet on one network does without.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Loads the files of a part. The key file must be readable by its owner only.
    ///
    /// # Errors
    /// A file is missing, unreadable, not PEM, group- or world-readable (the key); the
    /// certificate is not signed by the CA or names no part; the key does not match it.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let loaded = load_files(&files, &provider, 1)?;
        let (changed, _) = tokio::sync::watch::channel(1);
        Ok(Arc::new(Self {
            files,
            provider,
            loaded: RwLock::new(Arc::new(loaded)),
            checked: Mutex::new((Instant::now(), None)),
            changed,
            peers: Mutex::new(Default::default()),
        }))
    }

    /// The files in use.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// This part's certificate as last loaded.
    pub fn own(&self) -> Identity {
        self.current().own.clone()
    }

    /// Increases each time the files are loaded anew.
    pub fn generation(&self) -> u64 {
        self.current().generation
    }

    /// Tells of each new load (the generation).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Looks at the files every [`RELOAD_CHECK`] until `stop`, so that a change is taken
    /// (and open connections checked against a new revocation list) without handshakes.
    pub fn watch(self: &Arc<Self>, stop: CancellationToken) {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => { tls.refresh(true); }
                }
            }
        });
    }

    fn current(&self) -> Arc<Loaded> {
        self.refresh(false)
    }

    /// The loaded files, loaded anew first when they changed (looked at once a second at most
    /// unless `now`).
    fn refresh(&self, now: bool) -> Arc<Loaded> {
        let cur = self
            .loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        {
            let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
            if !now && checked.0.elapsed() < RELOAD_CHECK {
                return cur;
            }
            checked.0 = Instant::now();
            let stamp = stamp(&self.files);
            if stamp == cur.stamp || checked.1.as_ref() == Some(&stamp) {
                return cur;
            }
            match load_files(&self.files, &self.provider, cur.generation + 1) {
                Ok(new) => {
                    checked.1 = None;
                    tracing::info!(cert = %new.own, "TLS files changed: loaded anew");
                    let new = Arc::new(new);
                    *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
                    self.changed.send_replace(new.generation);
                    return new;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS files changed but do not load: still using the last good ones");
                    checked.1 = Some(stamp);
                }
            }
        }
        cur
    }

    /// Seconds until this part's certificate and the CA's expire (negative: expired).
    pub fn expiry_seconds(&self) -> (i64, i64) {
        let l = self.current();
        let now = unix_now();
        (l.own.not_after - now, l.ca_not_after - now)
    }

    /// Every certificate this part knows of and the seconds until it expires: its own
    /// (`own`), the CA (`ca`), and the peers it met in handshakes (`ROLE/NAME`).
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let (own, ca) = self.expiry_seconds();
        let now = unix_now();
        let mut out = vec![("own".to_string(), own), ("ca".to_string(), ca)];
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        out.extend(peers.iter().map(|(k, v)| (k.clone(), v - now)));
        out
    }

    /// The `rejuv_tls_cert_expiry_seconds` gauge in the text format, by `cert` (see
    /// [`Tls::expiries`]).
    pub fn metrics_text(&self) -> String {
        let mut out = String::from(
            "# HELP rejuv_tls_cert_expiry_seconds Seconds until a TLS certificate expires (negative: expired): this part's (own), the CA's (ca), and peers' met in handshakes (ROLE/NAME).\n\
             # TYPE rejuv_tls_cert_expiry_seconds gauge\n",
        );
        for (cert, left) in self.expiries() {
            out.push_str(&format!(
                "rejuv_tls_cert_expiry_seconds{{cert=\"{cert}\"}} {left}\n"
            ));
        }
        out
    }

    /// What expires within `within`, as a sentence for an alert or a log line.
    pub fn expiring(&self, within: Duration) -> Option<String> {
        let limit = within.as_secs() as i64;
        let own = self.own();
        let soon: Vec<String> = self
            .expiries()
            .into_iter()
            .filter(|(_, left)| *left < limit)
            .map(|(cert, left)| {
                let what = match cert.as_str() {
                    "own" => format!("this part's certificate ({own})"),
                    "ca" => "the fleet's CA".to_string(),
                    peer => format!("the certificate of {peer}"),
                };
                if left <= 0 {
                    format!("{what} has expired")
                } else {
                    format!("{what} expires in {:.1} days", left as f64 / 86400.0)
                }
            })
            .collect();
        (!soon.is_empty()).then(|| format!("TLS: {}", soon.join("; ")))
    }

    /// Whether a connection made with `peer`'s certificate may go on under the current
    /// files (it is not revoked since).
    pub fn still_trusted(&self, peer: &Identity) -> bool {
        !self.current().revoked.refuses(peer)
    }

    /// The server side: this part's certificate, and a client certificate of the fleet with
    /// role `client` required (none asked for with `None`).
    pub fn server_config(self: &Arc<Self>, client: Option<Role>) -> Arc<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions");
        let builder = match client {
            Some(role) => builder.with_client_cert_verifier(Arc::new(ClientVerifier {
                tls: self.clone(),
                role,
            })),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(OwnCert(self.clone())));
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// The client side: this part's certificate offered, the server checked by `check`.
    pub fn client_config(self: &Arc<Self>, check: PeerCheck) -> ClientConfig {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                tls: self.clone(),
                check,
            }))
            .with_client_cert_resolver(Arc::new(OwnCert(self.clone())));
        config.resumption = Resumption::disabled();
        config
    }

    /// A reqwest client of this part that reaches a server checked by `check`.
    pub fn reqwest_builder(self: &Arc<Self>, check: PeerCheck) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .use_preconfigured_tls(self.client_config(check))
            .https_only(true)
    }

    fn verify_peer(
        &self,
        end_entity: &CertificateDer<'_>,
        role: Option<Role>,
        name: Option<&str>,
    ) -> Result<Identity, rustls::Error> {
        let id = identity(end_entity).map_err(other)?;
        if let Some(role) = role.filter(|r| *r != id.role) {
            return Err(other(format!(
                "the peer's certificate is a {}'s ({id}), not a {role}'s",
                id.role
            )));
        }
        if let Some(want) = name.filter(|w| *w != id.name) {
            return Err(other(format!(
                "the peer's certificate names {} {} ({id}), not {want}",
                id.role, id.name
            )));
        }
        if self.current().revoked.refuses(&id) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(format!("{}/{}", id.role, id.name), id.not_after);
        Ok(id)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn other(msg: String) -> rustls::Error {
    #[derive(Debug)]
    struct Msg(String);
    impl fmt::Display for Msg {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Msg {}
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Msg(msg)))))
}

fn stamp(files: &TlsFiles) -> Stamp {
    let mut paths = vec![&files.ca, &files.cert, &files.key];
    if let Some(r) = &files.revoked {
        paths.push(r);
    }
    paths
        .into_iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        })
        .collect()
}

/// Refuses a file that its group or others can read (a key, a token).
pub fn check_private(path: &Path) -> Result<(), TlsError> {
    rejuv_core::secret::check_private(path).map_err(TlsError::Other)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "holds no certificate"));
    }
    Ok(certs)
}

fn load_files(
    files: &TlsFiles,
    provider: &Arc<CryptoProvider>,
    generation: u64,
) -> Result<Loaded, TlsError> {
    let stamp = stamp(files);
    let ca = read_certs(&files.ca)?;
    let ca_not_after = ca
        .iter()
        .filter_map(|c| x509_parser::parse_x509_certificate(c).ok())
        .map(|(_, c)| c.validity().not_after.timestamp())
        .min()
        .unwrap_or(0);
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots
            .add(c)
            .map_err(|e| file_err(&files.ca, format!("not a CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);
    check_private(&files.key)?;
    let chain = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| file_err(&files.key, format!("not a PEM private key: {e}")))?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        file_err(
            &files.key,
            format!("does not go with {}: {e}", files.cert.display()),
        )
    })?;
    let own = identity(&key.cert[0]).map_err(|e| file_err(&files.cert, e))?;
    let server_verifier =
        WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| file_err(&files.ca, format!("{e}")))?;
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| file_err(&files.ca, format!("{e}")))?;
    // The certificate must be one of this fleet's: its chain checked as a peer would.
    client_verifier
        .verify_client_cert(&key.cert[0], &key.cert[1..], UnixTime::now())
        .map_err(|e| {
            file_err(
                &files.cert,
                format!("not valid under {}: {e}", files.ca.display()),
            )
        })?;
    let revoked = match &files.revoked {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Revoked::parse(&t),
            // Not made yet: nothing is revoked.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Revoked::default(),
            Err(e) => return Err(file_err(p, format!("cannot read: {e}"))),
        },
        None => Revoked::default(),
    };
    Ok(Loaded {
        stamp,
        generation,
        ca_not_after,
        key: Arc::new(key),
        own,
        revoked,
        server_verifier,
        client_verifier,
    })
}

/// This part's certificate, as last loaded, for both sides of a handshake.
#[derive(Debug)]
struct OwnCert(Arc<Tls>);

impl ResolvesServerCert for OwnCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }
}

impl ResolvesClientCert for OwnCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A server's check of its clients: the fleet's, of one role, not revoked.
#[derive(Debug)]
struct ClientVerifier {
    tls: Arc<Tls>,
    role: Role,
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints are optional; the CA's subject would have to outlive a reload.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let l = self.tls.current();
        l.client_verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        self.tls.verify_peer(end_entity, Some(self.role), None)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.tls.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.tls.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.tls
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client's check of the server it reached.
#[derive(Debug)]
struct ServerVerifier {
    tls: Arc<Tls>,
    check: PeerCheck,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let l = self.tls.current();
        l.server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.tls
            .verify_peer(end_entity, self.check.role, self.check.name.as_deref())?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.tls.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.tls.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.tls
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `text` (a part's metrics in the OpenMetrics text format) with `tls`'s expiry gauge
/// added before its `# EOF`.
pub fn with_metrics(mut text: String, tls: &Tls) -> String {
    let extra = tls.metrics_text();
    match text.rfind("# EOF") {
        Some(at) => text.insert_str(at, &extra),
        None => text.push_str(&extra),
    }
    text
}

/// A client of an HTTPS server of the fleet that offers no certificate of its own (the CLI
/// and scripts on the operator API): the server's chain and address checked against `ca`.
pub fn api_client_config(ca: &Path) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| file_err(ca, format!("not a CA certificate: {e}")))?;
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_entries_match_by_name_role_name_or_serial() {
        let r = Revoked::parse(
            "s2 # retired\n\nagent/s3\n0A:1B:2C:3D:4E:5F:60:71\nserial=0A1B2C3D4E5F6099\n",
        );
        let id = |name: &str, serial: &str| Identity {
            role: Role::Agent,
            name: name.into(),
            serial: serial.into(),
            not_after: 0,
        };
        assert!(r.refuses(&id("s2", "00")));
        assert!(r.refuses(&id("s3", "00")));
        assert!(r.refuses(&id("s9", "0a1b2c3d4e5f6071")));
        assert!(r.refuses(&id("s9", "0a1b2c3d4e5f6099")));
        assert!(!r.refuses(&id("s1", "0a1b2c3d4e5f6072")));
    }
}
