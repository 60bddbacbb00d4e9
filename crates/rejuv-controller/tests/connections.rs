//! Issue 16, item 4 ("Unbounded connections and bodies"): the controller API closes
//! slowloris, silent and idle connections at its configured timeouts, refuses connections
//! over its cap, counts both in `/metrics`, and serves the connections it has meanwhile.
//! A real controller on 127.0.0.1:0 with a SQLite store in a temp dir; its agents and proxy
//! are addresses nobody listens on (the API does not need them).

use rejuv_controller::ControllerOptions;
use rejuv_core::config::Config;
use rejuv_net::probe;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "api-token-7d1e0c55";
/// Longest any probe may wait.
const LIMIT: Duration = Duration::from_secs(15);

/// A port on 127.0.0.1 that nothing listens on (bound, then let go).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(controller: &str) -> Config {
    let (agent, admin) = (closed_port(), closed_port());
    let text = format!(
        r#"
[cluster]
mode = "active-active"

[controller]
{controller}

[traffic]
admin = "127.0.0.1:{admin}"

[[servers]]
id = "s1"
address = "127.0.0.1"
agent = "127.0.0.1:{agent}"
role = "primary"
port_range = [20000, 20010]

[services.web]
command = "/usr/bin/true"
health = {{ path = "/healthz" }}
"#
    );
    Config::from_toml(&text).unwrap_or_else(|e| panic!("test config: {e}"))
}

/// A controller serving until dropped.
struct TestController {
    api: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl TestController {
    async fn start(config: Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let opts = ControllerOptions {
            config,
            agent_token: "agent-token-0b9f".into(),
            api_token: TOKEN.into(),
            proxy_token: TOKEN.into(),
            store_path: dir.path().join("rejuv.db"),
            paused: true,
            dry_run: false,
            adopt_agents: false,
            session_code_file: None,
            config_path: None,
            tls: None,
        };
        let task = tokio::spawn(rejuv_controller::run(listener, opts, shutdown.clone()));
        let controller = Self {
            api,
            shutdown,
            task,
            _dir: dir,
        };
        // Ready once /healthz answers.
        let ready = tokio::time::timeout(LIMIT, async {
            loop {
                assert!(!controller.task.is_finished(), "the controller stopped");
                if let Ok(mut conn) = TcpStream::connect(api).await {
                    if probe::get(&mut conn, "/healthz", None).await.0 == 200 {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(ready.is_ok(), "the controller's /healthz never answered");
        controller
    }
}

impl Drop for TestController {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

/// `took` is `timeout`, give or take the server's reaction (a loaded machine).
fn assert_at(what: &str, took: Option<Duration>, timeout: Duration) {
    let took = took.unwrap_or_else(|| panic!("{what}: still open after {LIMIT:?}"));
    assert!(
        took + Duration::from_millis(100) >= timeout
            && took <= timeout + Duration::from_millis(1500),
        "{what}: closed after {took:?}, the timeout is {timeout:?}"
    );
}

fn series(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_silent_and_idle_connections_are_closed_at_the_controller_api_timeouts() {
    let controller = TestController::start(config(
        "header_read_timeout = \"1s\"\nidle_timeout = \"2s\"",
    ))
    .await;
    let api = controller.api;
    let (slow, silent, idle) = tokio::join!(
        probe::slowloris(api, Duration::from_millis(100), LIMIT),
        probe::silent(api, LIMIT),
        probe::idle_after_request(api, "/healthz", LIMIT),
    );
    assert_at("slowloris", slow, Duration::from_secs(1));
    assert_at("silent connection", silent, Duration::from_secs(1));
    assert_at("idle keep-alive connection", idle, Duration::from_secs(2));

    let mut conn = TcpStream::connect(api).await.unwrap();
    let (status, metrics) = probe::get(&mut conn, "/metrics", Some(TOKEN)).await;
    assert_eq!(status, 200, "{metrics}");
    let timed_out = "rejuv_controller_connections_timed_out_total{listener=\"api\",timeout=";
    assert_eq!(
        series(&metrics, &format!("{timed_out}\"header-read\"}}")),
        2
    );
    // The readiness probe's connection went idle as well.
    assert!(series(&metrics, &format!("{timed_out}\"idle\"}}")) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_controller_api_cap_are_refused_and_counted_while_the_others_are_served(
) {
    let controller = TestController::start(config("max_connections = 4")).await;
    let api = controller.api;
    let mut served = TcpStream::connect(api).await.unwrap();
    assert_eq!(probe::get(&mut served, "/healthz", None).await.0, 200);

    // Silent connections until one is refused: held ones stay open (the header-read timeout
    // is 10 s), a refused one is closed at once. Readiness probes may still hold a place.
    let mut held = Vec::new();
    let mut refused = false;
    for _ in 0..8 {
        let mut conn = TcpStream::connect(api).await.unwrap();
        if probe::closed_within(&mut conn, Duration::from_millis(500))
            .await
            .is_some()
        {
            refused = true;
            break;
        }
        held.push(conn);
    }
    assert!(refused, "no connection refused at a cap of 4");
    assert!((1..=3).contains(&held.len()), "{} held", held.len());

    let (status, metrics) = probe::get(&mut served, "/metrics", Some(TOKEN)).await;
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(
        series(
            &metrics,
            "rejuv_controller_connections_refused_total{listener=\"api\"}"
        ),
        1
    );
    assert_eq!(
        series(
            &metrics,
            "rejuv_controller_connections_open{listener=\"api\"}"
        ),
        4
    );
}
