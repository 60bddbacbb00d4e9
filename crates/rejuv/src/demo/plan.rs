//! The demo's cluster on paper: ports, the token, `rejuv.toml` and HAProxy's config, written
//! to the state directory.

use crate::demo::args::{DemoArgs, Lb};
use crate::procs::free_port;
use anyhow::Context;
use rejuv_core::types::Mode;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// A range of `n` ports on `ip` that are free right now and hold no port picked before.
fn free_range(ip: IpAddr, n: u16) -> anyhow::Result<[u16; 2]> {
    rejuv_net::free_range(ip, n).with_context(|| format!("finding {n} free ports on {ip}"))
}

/// The file in the state directory that holds the dashboard link's one-time code; each
/// controller is started with it and removes it when the code is used.
pub const SESSION_CODE_FILE: &str = "dashboard.code";

/// How the demo itself reaches a kind of part: its agents and its proxy's admin API over
/// mutual TLS with the controller's certificate, as the controller does; the controllers'
/// operator API over plain HTTP on loopback, or over HTTPS verified with the demo's CA.
#[derive(Clone)]
pub struct Parts {
    pub http: reqwest::Client,
    scheme: &'static str,
}

impl Parts {
    /// The URL of `path` on a part at `addr`.
    pub fn url(&self, addr: SocketAddr, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme)
    }
}

/// The demo's fleet CA and certificates, in `dir/tls`: a CA (kept from an earlier run in the
/// same state directory), and a certificate for the controllers, the proxy and each agent
/// (named by its server id, for its loopback address). Gives the `[tls]` section.
fn issue_certificates(
    dir: &Path,
    agents: &[(String, IpAddr)],
    api: bool,
) -> anyhow::Result<String> {
    use rejuv_net::tls::issue::{init_ca, issue, IssueRequest, CA_CERT};
    use rejuv_net::tls::Role;
    let tls = dir.join("tls");
    if !tls.join(CA_CERT).exists() {
        init_ca(&tls, 30).context("making the demo's CA")?;
    }
    let lo = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let mut parts = vec![
        (Role::Controller, "controller".to_string(), lo.clone()),
        (Role::Proxy, "proxy".to_string(), lo.clone()),
    ];
    for (id, ip) in agents {
        let mut sans = lo.clone();
        sans.push(ip.to_string());
        parts.push((Role::Agent, id.clone(), sans));
    }
    for (role, name, sans) in &parts {
        issue(&IssueRequest {
            ca_dir: &tls,
            role: *role,
            name,
            sans,
            days: 30,
            out_dir: &tls,
        })
        .with_context(|| format!("issuing the demo's certificate of {role} {name}"))?;
    }
    Ok(format!(
        "# The parts talk mutual TLS with the demo's CA; the operator API (dashboard, /v1,\n\
         # /metrics) {api_line}.\n\
         [tls]\nca = \"{ca}\"\ncert = \"{dir}/{{name}}.pem\"\nkey = \"{dir}/{{name}}.key\"\napi = {api}\n",
        api_line = if api {
            "is HTTPS with the controller's certificate (verify it with this CA)"
        } else {
            "stays plain HTTP on loopback"
        },
        ca = tls.join(CA_CERT).display(),
        dir = tls.display(),
    ))
}

/// What [`write_config`] wrote and chose.
pub struct Plan {
    /// How the demo reaches agents and the proxy's admin API.
    pub parts: Parts,
    /// How the demo reaches the controllers' operator API (HTTPS with `--hosts docker`).
    pub api: Parts,
    pub config_path: PathBuf,
    pub token_path: PathBuf,
    pub config: rejuv_core::config::Config,
    /// The controllers' API addresses; the first is `controller.listen` of the config.
    pub controllers: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub servers: Vec<(String, SocketAddr)>,
    pub token: String,
    /// The builtin proxy's admin token.
    pub proxy_token: String,
    /// The dashboard link's one-time code (`/ui#code=...`), in
    /// [`SESSION_CODE_FILE`].
    pub session_code: String,
}

/// Writes the token and `rejuv.toml` for `args` into `dir`, on free loopback ports.
pub fn write_config(
    args: &DemoArgs,
    dir: &Path,
    mode: Mode,
    etcd: Option<&str>,
    image: Option<&str>,
    hosts: Option<&crate::demo::host_layout::Layout>,
) -> anyhow::Result<Plan> {
    let exe = std::env::current_exe().context("finding the rejuv executable")?;
    let token = new_secret();
    let token_path = dir.join("token");
    write_secret(&token_path, &token)?;
    // The proxy's admin API has a token of its own: the operators' cannot move traffic.
    let proxy_token_path = dir.join("proxy.token");
    let proxy_token = new_secret();
    write_secret(&proxy_token_path, &proxy_token)?;
    // Tokens for people and scripts, one per role: `tokens/read.token` reads (status, events,
    // metrics, dashboard), `tokens/operate.token` also acts.
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens)?;
    for role in ["read", "operate"] {
        write_secret(&tokens.join(format!("{role}.token")), &new_secret())?;
    }
    let session_code: String = (0..16)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    write_secret(&dir.join(SESSION_CODE_FILE), &session_code)?;
    let lo: IpAddr = "127.0.0.1".parse()?;
    let mut controllers = Vec::new();
    for _ in 0..args.controllers {
        controllers.push(SocketAddr::new(lo, free_port(lo)?));
    }
    let controller = controllers[0];
    let admin = SocketAddr::new(lo, free_port(lo)?);
    let (primaries, spares) = match mode {
        Mode::ActiveStandby => (args.servers.unwrap_or(3), args.spares.unwrap_or(1)),
        Mode::ActiveActive => (args.servers.unwrap_or(4), 0),
    };
    anyhow::ensure!(primaries >= 1, "--servers must be at least 1");

    anyhow::ensure!(primaries + spares <= 200, "at most 200 servers in a demo");
    // Host containers run their agents as root, with host actions their own to take.
    let host_actions = hosts.is_some() || nix::unistd::geteuid().is_root();
    let mut toml = format!(
        r#"# Written by `rejuv demo`.
[cluster]
name = "demo"
mode = "{mode}"

[auth]
agent_token_file = "{token}"
api_token_file = "{token}"
proxy_token_file = "{proxy_token}"
operators = [
  {{ name = "read", token_file = "{tokens}/read.token", role = "read" }},
  {{ name = "operate", token_file = "{tokens}/operate.token", role = "operate" }},
]

[controller]
listen = "{controller}"
poll_interval = "500ms"
agent_timeout = "2s"

[policy]
hold_down = "1s"
# A safety net only: the trend rule below acts long before.
rules = [
  {{ resource = "instance-rss", above = 0.8 }},
  {{ resource = "memory-used", above = 0.97 }},
]

# The predictive rule, scaled for services that age within a minute (sampled twice a second).
# On one machine every agent sees the same host, so the demo judges instance-rss (each server's
# instances against its memory budget) and health latency, not host-wide readings.
[policy.trend]
window = "48s"
min_window = "8s"
horizon = "60s"
min_persistence = "2s"
resources = ["instance-rss", "health-latency-ms"]

[gate]
max_load = 64.0
min_running_time = "5s"
max_wait = "10s"

[budget]
max_concurrent = 1
# One primary at a time may be out of service: the one a workflow moves.
min_available_capacity = {floor}

[rejuvenation]
actions = ["stop-instances", "clear-scratch", "drop-caches", "compact-memory", "restart-agent"]
duplex_timeout = "15s"
verify_timeout = "20s"
failed_target_cooldown = "30s"
# Instance-scope rejuvenations that do not hold take the whole server next; scaled, as the
# trend windows are, for services that age within a minute.
instance_escalation_window = "10s"
{escalation}
[agent]
host_actions = {host_actions}
sample_interval = "500ms"
{restart_command}
{traffic}

{store}

[services.web]
{run}
args = ["sample-service", "--listen", "{{address}}:{{port}}", "--instance-id", "{{instance}}",
        "--leak-per-request", "{lpr}", "--leak-per-second", "{lps}", "--limit", "{limit}",
        "--latency-per-mib-us", "20"]
env = {{ REJUV_LOG = "warn" }}
health = {{ path = "/healthz", interval = "250ms", timeout = "1s" }}
drain = "5s"
stop_grace = "3s"
handoff = {{ export = "/_rejuv/state", import = "/_rejuv/state", hold = "{hold}" }}

# The same service without a leak: instances that age beside it are rejuvenated alone.
[services.steady]
{run}
args = ["sample-service", "--listen", "{{address}}:{{port}}", "--instance-id", "{{instance}}",
        "--leak-per-request", "0", "--leak-per-second", "0"]
env = {{ REJUV_LOG = "warn" }}
health = {{ path = "/healthz", interval = "250ms", timeout = "1s" }}
drain = "2s"
stop_grace = "3s"

# A cache that warms up to a plateau and stays there: the detector must leave its server alone.
[services.cache]
{run}
args = ["sample-service", "--listen", "{{address}}:{{port}}", "--instance-id", "{{instance}}",
        "--leak-per-second", "{cache_rate}", "--leak-cap", "{cache_cap}"]
env = {{ REJUV_LOG = "warn" }}
health = {{ path = "/healthz", interval = "250ms", timeout = "1s" }}
drain = "2s"
stop_grace = "3s"
"#,
        cache_rate = 10 * 1024 * 1024,
        cache_cap = args.memory_budget * 2 / 5,
        token = token_path.display(),
        proxy_token = proxy_token_path.display(),
        tokens = tokens.display(),
        traffic = match args.lb {
            Lb::Builtin => format!(
                "[traffic]\nadapter = \"builtin\"\nadmin = \"{admin}\"\nlisten = {{ web = \"{}\" }}\n",
                args.listen
            ),
            Lb::Haproxy => format!(
                "[traffic]\nadapter = \"haproxy\"\n[traffic.haproxy]\nsocket = \"unix:{}\"\nbackends = {{ web = \"be_web\" }}\n",
                dir.join("haproxy.sock").display()
            ),
        },
        floor = primaries.saturating_sub(1) * 4,
        // Requests held during a hand-off must outlast a leader's replacement (lease 3 s).
        hold = if etcd.is_some() { "5s" } else { "3s" },
        store = match etcd {
            // A short lease: a dead leader is replaced within about 3 s.
            Some(endpoint) => format!(
                "[store]\nkind = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"/rejuv/demo\"\nlease_ttl = \"3s\"\n"
            ),
            None => format!("[store]\npath = \"{}\"\n", dir.join("rejuv.db").display()),
        },
        // In a container the image's entrypoint is this binary.
        run = match (image, hosts) {
            (Some(tag), _) => format!("backend = \"docker\"\nimage = \"{tag}\"\nnetwork = \"host\""),
            // In a host container the binary is the image's.
            (None, Some(h)) => format!("command = \"{}\"", h.binary),
            (None, None) => format!("command = \"{}\"", exe.display()),
        },
        escalation = hosts.map_or(String::new(), |h| h.escalation()),
        restart_command = hosts.map_or(String::new(), |h| h.restart_command()),
        lpr = args.leak_per_request,
        lps = args.leak_per_second,
        limit = args.leak_limit,
    );
    let mut servers = Vec::new();
    for i in 0..primaries + spares {
        let id = format!("s{}", i + 1);
        // A host container has an address and ports of its own; here, a loopback address.
        let (ip, agent, range) = match hosts {
            Some(h) => h.server(i as usize)?,
            None => {
                let ip: IpAddr = format!("127.0.0.{}", 2 + i).parse()?;
                (ip, SocketAddr::new(ip, free_port(ip)?), free_range(ip, 16)?)
            }
        };
        let role = if i < primaries { "primary" } else { "spare" };
        // With three primaries or more, the last one runs the plateauing cache instead of the
        // aging web service: a server rejuv should leave alone.
        let aging = args.aging.unwrap_or(args.instances);
        let web: Vec<&str> = (0..args.instances)
            .map(|k| if k < aging { "\"web\"" } else { "\"steady\"" })
            .collect();
        let instances = if i + 1 == primaries && primaries >= 3 {
            r#"["cache"]"#.to_string()
        } else if i < primaries {
            format!("[{}]", web.join(", "))
        } else {
            "[]".to_string()
        };
        toml.push_str(&format!(
            r#"
[[servers]]
id = "{id}"
address = "{ip}"
agent = "{agent}"
role = "{role}"
capacity = 4
port_range = [{}, {}]
memory_budget_bytes = {budget}
instances = {instances}
data_dir = "{data}"
"#,
            range[0],
            range[1],
            budget = args.memory_budget,
            data = dir.join("agents").join(&id).display(),
        ));
        servers.push((id, agent));
    }
    let agents: Vec<(String, IpAddr)> =
        servers.iter().map(|(id, a)| (id.clone(), a.ip())).collect();
    toml.push('\n');
    // With host containers the operator API leaves loopback's trust: HTTPS, as in a fleet.
    let api_tls = hosts.is_some();
    toml.push_str(&issue_certificates(dir, &agents, api_tls)?);
    let config_path = dir.join("rejuv.toml");
    std::fs::write(&config_path, &toml)?;
    let config = rejuv_core::config::Config::from_toml(&toml)
        .context("the demo wrote a config it cannot read")?;
    let files = config
        .tls_files("controller")
        .context("the demo's config has no [tls]")?;
    let tls = rejuv_net::tls::Tls::load(files).context("loading the demo's certificates")?;
    // Agents and the proxy: any part of the demo's fleet.
    let check = rejuv_net::tls::PeerCheck {
        role: None,
        name: None,
    };
    let parts = Parts {
        http: reqwest::Client::builder()
            .use_preconfigured_tls(tls.client_config(check))
            .timeout(std::time::Duration::from_secs(2))
            .build()
            .context("the demo's HTTPS client")?,
        scheme: "https",
    };
    let api = Parts {
        http: {
            let b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5));
            if api_tls {
                let ca = dir.join("tls").join(rejuv_net::tls::issue::CA_CERT);
                b.use_preconfigured_tls(
                    rejuv_net::tls::api_client_config(&ca)
                        .context("the demo's client of the operator API")?,
                )
            } else {
                b
            }
        }
        .build()
        .context("the demo's client of the operator API")?,
        scheme: if api_tls { "https" } else { "http" },
    };
    // Where operators and scripts find the (first) controller's API: one line, no slash.
    std::fs::write(
        dir.join("controller.url"),
        format!("{}\n", api.url(controller, "")),
    )?;
    Ok(Plan {
        parts,
        api,
        config_path,
        token_path,
        config,
        controllers,
        admin,
        servers,
        token,
        proxy_token,
        session_code,
    })
}

/// The HAProxy the demo runs with `--lb haproxy`: a frontend on `listen`, an empty backend
/// whose servers rejuv adds at run time, and the runtime API on a socket in the state dir.
pub fn haproxy_config(dir: &Path, listen: SocketAddr) -> String {
    format!(
        r#"# Written by `rejuv demo --lb haproxy` (see deploy/haproxy/ for a commented example).
global
    stats socket {sock} mode 600 level admin
    stats timeout 10s

defaults
    mode http
    option redispatch
    retries 3
    retry-on conn-failure
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout queue 5s
    timeout http-request 10s
    timeout http-keep-alive 10s

frontend web
    bind {listen}
    default_backend be_web

backend be_web
    balance roundrobin
"#,
        sock = dir.join("haproxy.sock").display()
    )
}

/// A new token: 32 random bytes in hex.
fn new_secret() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Writes a secret readable by its owner alone: a new file is made 0600, and an old one
/// (a reused `--state-dir`) is made 0600 before anything is written to it.
fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.set_len(0)?;
    f.write_all(secret.as_bytes())?;
    Ok(())
}
