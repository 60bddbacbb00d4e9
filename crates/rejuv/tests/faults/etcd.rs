//! etcd goes away for 20 s in the middle of a workflow and comes back. The leader stops
//! acting (it exits, to be restarted by its supervisor: here the test), nothing is carried
//! out on the agents while etcd is down, and once etcd is back a leader resumes the stored
//! workflow and completes it; the front end serves throughout.
//!
//! etcd runs out of quota (its `NOSPACE` alarm) in the middle of a workflow: every commit is
//! refused, the controller acts on nothing and says so, and once an operator has freed space
//! and disarmed the alarm the workflow goes on and completes; the stored state is whole.
#![cfg(feature = "etcd")]

use crate::common::{aging_spec, outcome, slot};
use crate::harness::{wait_for, Harness, Load, EXE};
use crate::invariants::{settle_and_assert, Checker};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn kill_group(c: &mut Child) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = c.wait();
}

/// One etcd member that can be stopped and started again on the same data and ports
/// (the shared test server cannot restart).
struct Etcd {
    dir: PathBuf,
    client: SocketAddr,
    peer: SocketAddr,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Etcd {
    fn start(dir: PathBuf) -> Self {
        Self::start_with(dir, &[])
    }

    fn start_with(dir: PathBuf, extra: &[&str]) -> Self {
        let mut e = Etcd {
            dir,
            client: free_addr(),
            peer: free_addr(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        e.up();
        e
    }

    /// Runs `etcdctl` against this member, with `stdin` as its input; returns its stdout and
    /// whether it succeeded (stderr is appended to the output on failure).
    fn ctl(&self, args: &[&str], stdin: &[u8]) -> (bool, String) {
        use std::io::Write;
        let mut child = Command::new("etcdctl")
            .arg(format!("--endpoints=http://{}", self.client))
            .args(["--command-timeout=10s"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running etcdctl (Debian package etcd-client)");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            text.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        (out.status.success(), text)
    }

    fn up(&mut self) {
        use std::os::unix::process::CommandExt;
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let mut cmd = rejuv_controller::etcd_member::command(
            "t",
            &self.dir.join("data"),
            self.client,
            self.peer,
        );
        cmd.args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .process_group(0);
        self.child = Some(
            cmd.spawn()
                .expect("spawning etcd (Debian package etcd-server)"),
        );
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let url = format!("http://{}/health", self.client);
        wait_for("etcd to become healthy", Duration::from_secs(30), || {
            let body = http.get(&url).send().ok()?.text().ok()?;
            body.contains("\"health\":\"true\"").then_some(())
        });
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&mut c);
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.down();
    }
}

/// The controller under a supervisor that restarts it when it exits (at most once a second),
/// as systemd's `Restart=always` would.
struct Supervised {
    child: Option<Child>,
    started: Instant,
    exits: u32,
}

impl Supervised {
    fn spawn(h: &Harness) -> Child {
        use std::os::unix::process::CommandExt;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(h.dir.path().join("logs/controller.log"))
            .unwrap();
        Command::new(EXE)
            .args(["controller", "--config"])
            .arg(&h.config)
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawning the controller")
    }

    fn start(h: &Harness) -> Self {
        Self {
            child: Some(Self::spawn(h)),
            started: Instant::now(),
            exits: 0,
        }
    }

    /// Whether the controller process is running now (restarting it if due).
    fn keep_up(&mut self, h: &Harness) -> bool {
        if let Some(c) = self.child.as_mut() {
            if c.try_wait().unwrap().is_none() {
                return true;
            }
            self.child = None;
            self.exits += 1;
        }
        if self.started.elapsed() >= Duration::from_secs(1) {
            self.child = Some(Self::spawn(h));
            self.started = Instant::now();
        }
        false
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&mut c);
        }
    }
}

/// Points the harness's controller at `etcd` (lease TTL 3 s).
fn use_etcd(h: &Harness, etcd: &Etcd) {
    h.use_etcd(&format!("http://{}", etcd.client), "/rejuv-faults", "3s");
    // A target whose copy a rollback stopped is avoided for failed_target_cooldown; the
    // harness's 60 s would leave no free spare for the rest of a scenario.
    let text = std::fs::read_to_string(&h.config).unwrap();
    let cooldown = "failed_target_cooldown = \"60s\"";
    assert!(
        text.contains(cooldown),
        "the harness's [rejuvenation] changed"
    );
    let text = text.replace(cooldown, "failed_target_cooldown = \"5s\"");
    std::fs::write(&h.config, text).unwrap();
}

/// Instance ids each agent runs, straight from the agents.
fn agent_instances(h: &Harness) -> BTreeMap<String, Vec<String>> {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    h.servers
        .iter()
        .map(|s| {
            let v: Value = http
                .get(format!("http://{}/v1/state", s.agent))
                .bearer_auth(&h.token)
                .send()
                .expect("agent /v1/state")
                .json()
                .expect("agent state json");
            let ids = v["instances"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect();
            (s.id.clone(), ids)
        })
        .collect()
}

#[test]
fn etcd_stopped_for_20s_and_restarted() {
    let _slot = slot();
    let h = Harness::new(&aging_spec());
    let mut etcd = Etcd::start(h.dir.path().join("etcd"));
    use_etcd(&h, &etcd);
    let mut ctl = Supervised::start(&h);
    h.wait_serving();
    let checker = Checker::start(&h);
    let load = Load::start(h.front, 50, Duration::from_secs(110));

    let w = wait_for("a running workflow", Duration::from_secs(45), || {
        h.try_status()?["workflows"].as_array()?.first().cloned()
    });
    let id = w["id"].as_u64().unwrap();
    etcd.down();
    let down_at = Instant::now();
    wait_for(
        "the leader to stop acting (exit) without etcd",
        Duration::from_secs(15),
        || (ctl.exits >= 1 || !ctl.keep_up_no_restart()).then_some(()),
    );
    let exited_after = down_at.elapsed();
    let before = agent_instances(&h);
    while down_at.elapsed() < Duration::from_secs(20) {
        ctl.keep_up(&h);
        assert_eq!(
            agent_instances(&h),
            before,
            "an agent's instances changed while etcd was down"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    etcd.up();
    let up_at = Instant::now();
    let done = wait_for(
        "a leader to resume and end the workflow",
        Duration::from_secs(60),
        || {
            ctl.keep_up(&h);
            let st = h.try_status()?;
            st["history"]
                .as_array()?
                .iter()
                .find(|x| x["id"] == id)
                .cloned()
        },
    );
    let resumed_in = up_at.elapsed();
    // The resumed leader goes on acting: a workflow completes after the outage.
    wait_for(
        "a completed workflow after the outage",
        Duration::from_secs(60),
        || {
            ctl.keep_up(&h);
            (h.completed() >= 1).then_some(())
        },
    );
    let report = load.finish();
    let obs = checker.finish();
    let st = settle_and_assert(&h, &obs, &[]);
    eprintln!(
        "etcd down 20 s; the leader exited {exited_after:?} after; workflow {id} {} ({}) \
         {resumed_in:?} after etcd returned ({} controller exits); load {report:?}",
        outcome(&done),
        done["outcome"]["reason"],
        ctl.exits
    );
    // The workflow's deadlines run on through the outage (they are wall-clock times in the
    // stored state): one caught in duplexing is rolled back by the resumed leader (duplex
    // timeout 10 s < 20 s down), one past the switch completes. Both are clean ends.
    assert!(
        ["completed", "rolled-back"].contains(&outcome(&done)),
        "{done}"
    );
    assert!(
        st["epoch"].as_u64().unwrap() >= 2,
        "a new leader term after the outage"
    );
    assert!(
        h.log("controller")
            .contains("resuming stored cluster state"),
        "the new leader resumed the stored state"
    );
    assert!(report.requests_total > 1000, "too little load: {report:?}");
    assert_eq!(report.requests_failed, 0, "{report:?}");
}

impl Supervised {
    /// Whether the controller process still runs (without restarting it).
    fn keep_up_no_restart(&mut self) -> bool {
        let Some(c) = self.child.as_mut() else {
            return false;
        };
        if c.try_wait().unwrap().is_none() {
            return true;
        }
        self.child = None;
        self.exits += 1;
        false
    }
}

/// etcd's backend quota in this scenario: small, so that a few writes fill it.
const QUOTA_BYTES: u64 = 16 * 1024 * 1024;

#[test]
fn etcd_out_of_quota_fails_closed_and_goes_on_after_disarm() {
    let _slot = slot();
    // A veto hook before the switch holds the workflow at the gate for 8 s: the quota runs
    // out while it runs, so its result comes back to a store that refuses every commit.
    let spec = crate::harness::Spec {
        extra_toml: format!(
            "{}\n[[hooks]]\nname = \"warm-up\"\nstep = \"draining\"\nwhen = \"before\"\nveto = true\ntimeout = \"30s\"\ncommand = [\"/bin/sleep\", \"8\"]\n",
            aging_spec().extra_toml
        ),
        ..aging_spec()
    };
    let h = Harness::new(&spec);
    let quota = QUOTA_BYTES.to_string();
    let etcd = Etcd::start_with(
        h.dir.path().join("etcd"),
        &["--quota-backend-bytes", &quota],
    );
    use_etcd(&h, &etcd);
    let mut ctl = Supervised::start(&h);
    h.wait_serving();
    let checker = Checker::start(&h);
    let load = Load::start(h.front, 50, Duration::from_secs(110));

    let w = crate::common::wait_phase(&h, &["gating"], Duration::from_secs(60));
    let id = w["id"].as_u64().unwrap();
    let before = agent_instances(&h);
    // Fill the quota as another tenant of the etcd cluster (or years of unretained history)
    // would: 1 MB values until etcd refuses a write and raises its NOSPACE alarm.
    let value = vec![b'x'; 1_000_000];
    let mut filled = 0u64;
    let full = loop {
        let (ok, out) = etcd.ctl(&["put", &format!("/filler/{filled:04}")], &value);
        if !ok {
            break out;
        }
        filled += 1;
        assert!(
            filled <= 2 * QUOTA_BYTES / 1_000_000,
            "etcd took {filled} MB under a quota of {QUOTA_BYTES} bytes"
        );
    };
    let full_at = Instant::now();
    assert!(
        full.contains("database space exceeded"),
        "etcd refused the filler for another reason: {full}"
    );
    let (_, alarms) = etcd.ctl(&["alarm", "list"], b"");
    assert!(alarms.contains("NOSPACE"), "no NOSPACE alarm: {alarms}");

    // The controller sees its commits refused and says so; nothing moves meanwhile.
    let status = wait_for(
        "the status to say the store refuses commits",
        Duration::from_secs(20),
        || {
            ctl.keep_up(&h);
            let st = h.try_status()?;
            st["store"]["failing_since_ms"].is_u64().then_some(st)
        },
    );
    let error = status["store"]["last_error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        error.contains("database space exceeded"),
        "the status names etcd's reason: {error:?}"
    );
    let scrape = reqwest::blocking::Client::new()
        .get(format!("http://{}/metrics", h.controller_addr))
        .bearer_auth(&h.token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        scrape
            .lines()
            .any(|l| l == "rejuv_store_failing 1" || l == "rejuv_store_failing 1.0"),
        "the metric says the store fails"
    );
    while full_at.elapsed() < Duration::from_secs(15) {
        ctl.keep_up(&h);
        assert_eq!(
            agent_instances(&h),
            before,
            "an agent's instances changed while etcd refused every write"
        );
        if let Some(st) = h.try_status() {
            let phase = st["workflows"]
                .as_array()
                .and_then(|ws| ws.iter().find(|x| x["id"] == id))
                .map(|x| x["phase"].clone());
            assert_eq!(
                phase,
                Some(Value::from("gating")),
                "the workflow left the gate while etcd refused every write: {st}"
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        h.log("controller").contains("hook"),
        "the hook ran and finished while the store was full"
    );

    // What an operator does (docs/operations.md): free space, compact at the revision after
    // the delete (an earlier one keeps the deleted values), defragment, disarm.
    let recover_at = Instant::now();
    let (ok, out) = etcd.ctl(&["del", "--prefix", "/filler/"], b"");
    assert!(ok, "etcdctl del: {out}");
    let (revision, _) = endpoint_status(&etcd);
    for args in [
        &["compact", &revision.to_string()][..],
        &["defrag"][..],
        &["alarm", "disarm"][..],
    ] {
        let (ok, out) = etcd.ctl(args, b"");
        assert!(ok, "etcdctl {args:?}: {out}");
    }
    let (_, db_size) = endpoint_status(&etcd);
    assert!(
        db_size < QUOTA_BYTES / 4,
        "the database is {db_size} bytes after the clean-up (quota {QUOTA_BYTES})"
    );
    let done = wait_for(
        "the held workflow to end once etcd takes writes again",
        Duration::from_secs(60),
        || {
            ctl.keep_up(&h);
            crate::common::finished(&h, id)
        },
    );
    let resumed_in = recover_at.elapsed();
    assert_eq!(
        outcome(&done),
        "completed",
        "the workflow whose hook result was refused went on: {done}"
    );
    assert!(
        h.status()["store"]["failing_since_ms"].is_null(),
        "the status says the store works again"
    );
    let log = h.log("controller");
    assert!(
        ctl.exits > 0 || log.contains("the store takes commits again"),
        "the controller says when the store takes commits again"
    );
    let report = load.finish();
    let obs = checker.finish();
    let st = settle_and_assert(&h, &obs, &[]);
    let completed = st["completed_total"].as_u64().unwrap();
    let failures = st["store"]["commit_failures_total"].as_u64().unwrap_or(0);

    // Nothing corrupted: a controller killed now resumes exactly what was stored.
    let exits = ctl.exits;
    let epoch = st["epoch"].as_u64().unwrap();
    if let Some(c) = ctl.child.as_mut() {
        kill_group(c);
    }
    ctl.child = None;
    let st2 = wait_for(
        "a restarted controller to resume the stored state",
        Duration::from_secs(30),
        || {
            ctl.keep_up(&h);
            let st = h.try_status()?;
            (st["epoch"].as_u64()? > epoch).then_some(st)
        },
    );
    assert_eq!(st2["completed_total"].as_u64().unwrap(), completed);
    assert_eq!(st2["history"], st["history"], "the history came back whole");
    eprintln!(
        "etcd full after {filled} MB of filler; store error {error:?}; {failures} commits refused; \
         workflow {id} {} {resumed_in:?} after the operator's recovery ({exits} controller exits \
         meanwhile); load {report:?}",
        outcome(&done),
    );
    assert!(report.requests_total > 1000, "too little load: {report:?}");
    assert_eq!(report.requests_failed, 0, "{report:?}");
}

/// etcd's current revision and database size, as `etcdctl endpoint status` reports them.
fn endpoint_status(etcd: &Etcd) -> (i64, u64) {
    let (ok, out) = etcd.ctl(&["endpoint", "status", "-w", "json"], b"");
    assert!(ok, "etcdctl endpoint status: {out}");
    let v: Value = serde_json::from_str(&out).expect("endpoint status json");
    let status = &v[0]["Status"];
    (
        status["header"]["revision"]
            .as_i64()
            .expect("a revision in the endpoint status"),
        status["dbSize"]
            .as_u64()
            .expect("dbSize in the endpoint status"),
    )
}
