//! The shared shell (`rejuv_core::shell`) against a scripted world: what it commits, what it
//! carries out and when, and what it feeds back.

use rejuv_core::api::{AgentState, InstanceState, InstanceStatus};
use rejuv_core::cluster::{Cluster, Command, CommandKind, CommandResult, LogEvent, Workflow};
use rejuv_core::config::Config;
use rejuv_core::detector::Level;
use rejuv_core::shell::{Attempt, Effects, Shell, Step};
use rejuv_core::time::Now;
use rejuv_core::types::Sample;
use std::net::SocketAddr;
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;
const GIB: u64 = 1 << 30;

const TOML: &str = r#"
[cluster]
name = "shell"
mode = "active-standby"

[traffic]
admin = "127.0.0.1:7071"

[policy]
hold_down = "2s"
rules = [{ resource = "memory-used", above = 0.9 }]

[gate]
max_load = 2.0
min_running_time = "0s"

[services.web]
command = "/usr/bin/true"
health = { path = "/healthz" }

[[servers]]
id = "s1"
address = "127.0.0.2"
agent = "127.0.0.2:7001"
role = "primary"
port_range = [20000, 20009]
instances = ["web"]

[[servers]]
id = "s2"
address = "127.0.0.3"
agent = "127.0.0.3:7001"
role = "spare"
port_range = [20000, 20009]
"#;

/// A world that records what the shell asks of it.
#[derive(Default)]
struct World {
    commits: usize,
    refuse_commits: bool,
    attempts: Vec<(Command, u32)>,
    wakes: Vec<(u64, u64, u32)>,
    steps: Vec<bool>,
    events: Vec<LogEvent>,
}

impl Effects for World {
    fn commit(&mut self, _: &Cluster, _: &[LogEvent], _: &[Workflow]) -> Result<(), String> {
        if self.refuse_commits {
            return Err("disk full".into());
        }
        self.commits += 1;
        Ok(())
    }
    fn carry_out(&mut self, command: &Command, attempt: u32) {
        self.attempts.push((command.clone(), attempt));
    }
    fn wake_at(&mut self, at_mono_ms: u64, command: u64, attempt: u32) {
        self.wakes.push((at_mono_ms, command, attempt));
    }
    fn stepped(&mut self, step: &Step<'_>) {
        self.steps.push(step.committed);
        self.events.extend(step.events.iter().cloned());
    }
}

fn now(ms: u64) -> Now {
    Now::new(ms, T0 + ms)
}

fn shell() -> (Shell, World) {
    let cfg = Arc::new(Config::from_toml(TOML).expect("config"));
    let (cluster, _) = Cluster::new(&cfg, now(0));
    let mut shell = Shell::new(cfg, cluster, false);
    let mut world = World::default();
    shell.start(now(0), &mut world);
    (shell, world)
}

/// The agent's answer at `ms`, memory used at `mem` of 8 GiB, running `instances`.
fn state(server: &str, ms: u64, mem: f64, instances: &[(&str, u16)]) -> AgentState {
    let total = 8 * GIB;
    let used = (mem * total as f64) as u64;
    AgentState {
        server_id: server.into(),
        agent_started_at_ms: T0,
        running_since_ms: T0,
        epoch: 1,
        sample: Sample {
            taken_at_ms: T0 + ms,
            load1: 0.5,
            running_time_s: ms as f64 / 1000.0 + 3600.0,
            mem_total_bytes: total,
            mem_used_bytes: used,
            mem_available_bytes: total - used,
            max_fds: 1 << 20,
            open_fds: 100,
            ..Sample::default()
        },
        instances: instances
            .iter()
            .map(|(id, port)| InstanceStatus {
                id: id.to_string(),
                service: "web".into(),
                addr: Some(SocketAddr::from(([127, 0, 0, 2], *port))),
                pid: Some(1),
                state: InstanceState::Running,
                healthy: true,
                started_at_ms: Some(T0),
                crashes: 0,
                last_exit: None,
                last_output: Vec::new(),
            })
            .collect(),
        crashes_total: 0,
        last_rejuvenation: None,
        version: "test".into(),
        boot_id: String::new(),
    }
}

/// Answers the first start the shell carried out and reports its instance healthy.
fn bring_up(shell: &mut Shell, w: &mut World) -> String {
    let (start, attempt) = w.attempts.remove(0);
    let CommandKind::StartInstance { instance, .. } = &start.kind else {
        panic!("the first command is a start, not {start:?}");
    };
    let answer = Attempt::Answered(CommandResult::Started {
        addr: Some(SocketAddr::from(([127, 0, 0, 2], 20_000))),
    });
    shell.attempted(start.id, attempt, answer, now(100), w);
    let s = state("s1", 200, 0.3, &[(instance, 20_000)]);
    shell.sample("s1", T0 + 200, Ok(&s), now(200), w);
    instance.clone()
}

#[test]
fn a_poll_that_changes_no_judgement_role_or_workflow_writes_nothing() {
    let (mut shell, mut w) = shell();
    let instance = bring_up(&mut shell, &mut w);
    let spare = state("s2", 200, 0.2, &[]);
    shell.sample("s2", T0 + 200, Ok(&spare), now(200), &mut w);
    let commits = w.commits;
    let steps = w.steps.len();
    for k in 1..=20u64 {
        let ms = 200 + k * 1000;
        let s1 = state("s1", ms, 0.3, &[(&instance, 20_000)]);
        shell.sample("s1", T0 + ms, Ok(&s1), now(ms), &mut w);
        let s2 = state("s2", ms, 0.2, &[]);
        shell.sample("s2", T0 + ms, Ok(&s2), now(ms), &mut w);
        shell.tick(now(ms + 500), &mut w);
    }
    assert_eq!(w.commits, commits, "steady polls were written to the store");
    // What was read is still published: status shows the newest reading.
    let obs = shell.cluster().servers["s1"]
        .observation
        .clone()
        .expect("observed");
    assert_eq!(obs.at_ms, T0 + 20_200);
    // A steady poll of a server that takes part in nothing is read without a step (no
    // planning pass over the fleet); the ticks still step, and none of them was written.
    assert_eq!(
        w.steps.len() - steps,
        20,
        "one step per tick, none per steady poll"
    );
    assert!(w.steps[steps..].iter().all(|c| !c));
}

#[test]
fn a_transient_failure_is_retried_with_backoff_until_the_deadline() {
    let (mut shell, mut w) = shell();
    let (start, _) = w.attempts.remove(0);
    let mut t = 0;
    let mut attempt = 0;
    let mut waits = Vec::new();
    loop {
        let failed = Attempt::Failed {
            error: "connection refused".into(),
            permanent: false,
        };
        shell.attempted(start.id, attempt, failed, now(t), &mut w);
        let Some((at, id, next)) = w.wakes.pop() else {
            break;
        };
        assert_eq!((id, next), (start.id, attempt + 1));
        waits.push(at - t);
        t = at;
        shell.wake(id, next, &mut w);
        let (again, n) = w.attempts.pop().expect("the retry went");
        assert_eq!((again.id, n), (start.id, next));
        attempt = next;
    }
    assert_eq!(
        &waits[..5],
        &[200, 400, 800, 1600, 3000],
        "backoff doubles up to 3 s"
    );
    assert!(
        t <= 30_000 && t > 26_000,
        "gave up at {t} ms, not at its 30 s deadline"
    );
    let failed = w
        .events
        .iter()
        .any(|e| e.message.contains("gave up after 30s: connection refused"));
    assert!(failed, "the core was told why: {:?}", w.events);
}

#[test]
fn a_permanent_failure_ends_the_command_at_once_and_a_late_answer_is_ignored() {
    let (mut shell, mut w) = shell();
    let (start, attempt) = w.attempts.remove(0);
    let refused = Attempt::Failed {
        error: "422: no such service".into(),
        permanent: true,
    };
    shell.attempted(start.id, attempt, refused, now(50), &mut w);
    assert!(w.wakes.is_empty(), "a permanent failure is not retried");
    assert!(!shell.cluster().pending.contains_key(&start.id));
    let commits = w.commits;
    let late = Attempt::Answered(CommandResult::Started { addr: None });
    shell.attempted(start.id, attempt, late, now(60), &mut w);
    assert_eq!(
        w.commits, commits,
        "an answer to a finished command changed the state"
    );
}

#[test]
fn a_failed_commit_acts_on_nothing_and_the_outbox_goes_again_once_commits_succeed() {
    let (mut shell, mut w) = shell();
    let instance = bring_up(&mut shell, &mut w);
    let spare = state("s2", 200, 0.2, &[]);
    shell.sample("s2", T0 + 200, Ok(&spare), now(200), &mut w);
    shell
        .operator("alice".into(), manual("s1"), now(300), &mut w)
        .ok();
    // The disk fills before the request's first command is acknowledged.
    let (start, attempt) = w.attempts.pop().expect("the copy's start went out");
    w.refuse_commits = true;
    let done = Attempt::Answered(CommandResult::Started { addr: None });
    shell.attempted(start.id, attempt, done, now(400), &mut w);
    assert_eq!(shell.store_health().failing_since_ms, Some(T0 + 400));
    assert!(
        shell.cluster().pending.contains_key(&start.id),
        "the dropped step is undone"
    );
    let s1 = state("s1", 500, 0.3, &[(&instance, 20_000)]);
    shell.sample("s1", T0 + 500, Ok(&s1), now(500), &mut w);
    assert!(
        w.attempts.is_empty(),
        "acted while the store refused commits"
    );
    // The store is back: the recorded start goes again.
    w.refuse_commits = false;
    let judged_ms = 1_500;
    shell
        .operator(
            "alice".into(),
            rejuv_core::cluster::OperatorCommand::Pause,
            now(judged_ms),
            &mut w,
        )
        .ok();
    assert_eq!(shell.store_health().failing_since_ms, None);
    let again: Vec<u64> = w.attempts.iter().map(|(c, _)| c.id).collect();
    assert!(
        again.contains(&start.id),
        "the outbox did not go again: {again:?}"
    );
}

#[test]
fn judgements_come_from_the_detector_and_a_held_signal_starts_a_workflow() {
    let (mut shell, mut w) = shell();
    let instance = bring_up(&mut shell, &mut w);
    for k in 0..=4u64 {
        let ms = 1_000 + k * 1_000;
        let spare = state("s2", ms, 0.2, &[]);
        shell.sample("s2", T0 + ms, Ok(&spare), now(ms), &mut w);
        let s1 = state("s1", ms, 0.95, &[(&instance, 20_000)]);
        shell.sample("s1", T0 + ms, Ok(&s1), now(ms), &mut w);
    }
    assert_eq!(shell.cluster().servers["s1"].judgement, Level::Unstable);
    assert_eq!(shell.cluster().servers["s2"].judgement, Level::Stable);
    assert_eq!(
        shell.cluster().workflows.len(),
        1,
        "no workflow for the unstable primary"
    );
    let to_spare = w.attempts.iter().any(
        |(c, _)| matches!(&c.kind, CommandKind::StartInstance { server, .. } if server == "s2"),
    );
    assert!(
        to_spare,
        "the copy was not started on the spare: {:?}",
        w.attempts
    );
}

fn manual(server: &str) -> rejuv_core::cluster::OperatorCommand {
    rejuv_core::cluster::OperatorCommand::Rejuvenate {
        server: server.into(),
        force: true,
    }
}

#[test]
fn samples_that_queued_together_take_one_step_and_lose_nothing() {
    let (mut shell, mut w) = shell();
    let instance = bring_up(&mut shell, &mut w);
    let steps = w.steps.len();
    // s2's first answer (news: it was never seen) and s1's, its memory near the limit: one
    // step applies both, and what each says lands.
    let s1 = state("s1", 1_200, 0.99, &[(&instance, 20_000)]);
    let s2 = state("s2", 1_200, 0.2, &[]);
    let batch = [("s1", T0 + 1_200, Ok(&s1)), ("s2", T0 + 1_200, Ok(&s2))];
    shell.samples(&batch, now(1_200), &mut w);
    assert_eq!(w.steps.len() - steps, 1, "one step for the batch");
    let c = shell.fresh().clone();
    assert_eq!(
        c.servers["s2"].observation.as_ref().map(|o| o.at_ms),
        Some(T0 + 1_200)
    );
    assert_eq!(
        c.servers["s1"].observation.as_ref().map(|o| o.at_ms),
        Some(T0 + 1_200)
    );
    // A batch of routine samples takes no step at all.
    let steps = w.steps.len();
    let s2 = state("s2", 2_200, 0.2, &[]);
    shell.samples(&[("s2", T0 + 2_200, Ok(&s2))], now(2_200), &mut w);
    assert_eq!(w.steps.len(), steps);
    assert_eq!(
        shell.fresh().servers["s2"]
            .observation
            .as_ref()
            .map(|o| o.at_ms),
        Some(T0 + 2_200)
    );
}

#[test]
fn a_shards_slots_hold_planned_workflows_and_never_bind_below_those_running() {
    let (mut shell, mut w) = shell();
    let instance = bring_up(&mut shell, &mut w);
    assert_eq!(shell.limit_concurrent(0), 0, "no workflow runs: bound at 0");
    let age = |shell: &mut Shell, w: &mut World, from: u64| {
        for k in 0..=4u64 {
            let ms = from + k * 1_000;
            let spare = state("s2", ms, 0.2, &[]);
            shell.sample("s2", T0 + ms, Ok(&spare), now(ms), w);
            let s1 = state("s1", ms, 0.95, &[(&instance, 20_000)]);
            shell.sample("s1", T0 + ms, Ok(&s1), now(ms), w);
        }
    };
    age(&mut shell, &mut w, 1_000);
    assert_eq!(shell.cluster().servers["s1"].judgement, Level::Unstable);
    assert!(
        shell.cluster().workflows.is_empty(),
        "no slot: the workflow waits"
    );
    assert_eq!(
        shell.cluster().waiting_for_budget(),
        1,
        "it waits for the budget: {:?}",
        shell.cluster().servers["s1"].blocked_reason
    );
    assert_eq!(shell.limit_concurrent(1), 1);
    shell.tick(now(7_000), &mut w);
    assert_eq!(shell.cluster().workflows.len(), 1, "a slot: it starts");
    assert_eq!(shell.cluster().waiting_for_budget(), 0);
    assert_eq!(
        shell.limit_concurrent(0),
        1,
        "the bound never goes below the workflows running"
    );
    assert_eq!(shell.config().budget.max_concurrent, 1);
}
