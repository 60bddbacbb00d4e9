//! The demo's progress display.
//!
//! On a terminal (stderr is a TTY) a live view is redrawn about once a second at the bottom of
//! the screen: one line per server (role, state, a sparkline of its instances' memory over the
//! last samples, judgement and why), one per running workflow (every step, the current one
//! marked, time in it), and the requests the demo's load has had served and failed. Log lines
//! (events) scroll above it on stdout. Without a terminal (tests, CI, a pipe) nothing is
//! redrawn: the demo prints a line per event and a one-line summary every ten seconds, so a
//! log stays readable.
//!
//! The redrawing is `indicatif`'s: the frame is the message of one bar on stderr, and a log
//! line is printed with the bar suspended, so it lands above the view.

use crate::table::{bytes, clip, now_ms, render, secs, table};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rejuv_core::wire::Status;
use rejuv_sample::loadgen::LiveSnapshot;
use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Samples kept per server for its sparkline (one per status poll, about one a second).
pub const SPARK_LEN: usize = 30;
/// How often the plain (non-terminal) display prints a summary line.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The workflow steps in order, for the step line of a running workflow.
const STEPS: [&str; 6] = [
    "duplexing",
    "gating",
    "draining",
    "handing-off",
    "rejuvenating",
    "verifying",
];

/// `values` as bars scaled to `full` (the budget, or the largest value when none is known),
/// right-aligned in `width` characters so sparklines of different lengths line up.
pub fn sparkline(values: &[u64], full: Option<u64>, width: usize) -> String {
    let top = full
        .filter(|f| *f > 0)
        .unwrap_or_else(|| values.iter().copied().max().unwrap_or(0))
        .max(1);
    let tail = &values[values.len().saturating_sub(width)..];
    let mut s: String = std::iter::repeat_n(' ', width - tail.len()).collect();
    for v in tail {
        let frac = (*v as f64 / top as f64).clamp(0.0, 1.0);
        let i = (frac * (BARS.len() - 1) as f64).round() as usize;
        s.push(BARS[i]);
    }
    s
}

/// What the view needs besides the controller's status.
pub struct Totals {
    pub load: LiveSnapshot,
    /// Since the load started.
    pub elapsed: Duration,
    pub duration: Duration,
    pub rps: u32,
}

/// The lines of one frame of the live view (without colour; the caller cuts them to width).
pub fn frame(
    mode: &str,
    status: &Status,
    history: &BTreeMap<String, VecDeque<u64>>,
    totals: &Totals,
    now_wall_ms: u64,
) -> Vec<String> {
    let mut lines = vec![format!(
        "── rejuv demo · {mode} · t+{:.0}s of {:.0}s · load {} req/s{} ──",
        totals.elapsed.as_secs_f64(),
        totals.duration.as_secs_f64(),
        totals.rps,
        if status.paused { " · PAUSED" } else { "" }
    )];
    let mut t = table(&["SERVER", "ROLE", "STATE", "MEMORY", "", "JUDGED", "WHY"]);
    for s in &status.servers {
        let budget = s.memory_budget_bytes;
        let values: Vec<u64> = history
            .get(&s.id)
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default();
        let rss = s.instances_rss_bytes;
        let mut state = s.state.clone();
        if s.maintenance {
            state.push_str(",maint");
        }
        t.add_row(vec![
            s.id.clone(),
            s.role.to_string(),
            state,
            sparkline(&values, budget, SPARK_LEN),
            match budget.filter(|b| *b > 0) {
                Some(b) => format!("{:>5} {:>3.0}%", bytes(rss), rss as f64 * 100.0 / b as f64),
                None => bytes(rss),
            },
            s.judgement.to_string(),
            s.explanation
                .as_ref()
                .map(|e| e.message.clone())
                .or_else(|| s.blocked_reason.clone())
                .unwrap_or_default(),
        ]);
    }
    lines.extend(render(&t).lines().map(|l| format!(" {l}")));
    if status.workflows.is_empty() {
        lines.push(" workflows: none running".into());
    }
    for w in &status.workflows {
        let phase = w.phase.to_string();
        let cur = STEPS.iter().position(|p| *p == phase);
        let steps: Vec<String> = STEPS
            .iter()
            .enumerate()
            .map(|(i, p)| match cur {
                Some(c) if i < c => format!("{p} ✓"),
                Some(c) if i == c => format!("[{p}]"),
                _ => p.to_string(),
            })
            .collect();
        // The current step and its time first: a narrow terminal cuts the end of the line.
        lines.push(format!(
            " workflow {} {}→{}: {} for {} ({} in all) · {}",
            w.id,
            w.server,
            w.target,
            phase,
            secs(now_wall_ms.saturating_sub(w.phase_since_ms) as f64 / 1000.0),
            secs(now_wall_ms.saturating_sub(w.started_at_ms) as f64 / 1000.0),
            steps.join(" "),
        ));
    }
    let l = &totals.load;
    lines.push(format!(
        " requests: {} served, {} failed ({:.2}%), {} in flight · POSTs {} ok · rejuvenated {}, aborted {}",
        l.requests.saturating_sub(l.failed),
        l.failed,
        if l.requests > 0 {
            l.failed as f64 * 100.0 / l.requests as f64
        } else {
            0.0
        },
        l.in_flight,
        l.posts_ok,
        status.completed_total,
        status.rolled_back_total + status.failed_total,
    ));
    lines
}

/// One summary line for the plain display.
pub fn summary_line(status: &Status, totals: &Totals) -> String {
    let parts: Vec<String> = status
        .servers
        .iter()
        .map(|s| {
            format!(
                "{} {}/{} {} {}",
                s.id,
                s.role.to_string().chars().next().unwrap_or('?'),
                s.state,
                bytes(s.instances_rss_bytes),
                s.judgement
            )
        })
        .collect();
    let running: Vec<String> = status
        .workflows
        .iter()
        .map(|w| format!("workflow {} {}→{} {}", w.id, w.server, w.target, w.phase))
        .collect();
    format!(
        "status t+{:.0}s: {}{} | requests {} served, {} failed | rejuvenated {}",
        totals.elapsed.as_secs_f64(),
        parts.join(" | "),
        if running.is_empty() {
            String::new()
        } else {
            format!(" | {}", running.join(", "))
        },
        totals.load.requests.saturating_sub(totals.load.failed),
        totals.load.failed,
        status.completed_total,
    )
}

/// The demo's output: log lines on stdout, and the live view on stderr when it is a terminal.
pub struct Progress {
    start: Instant,
    /// stderr is a terminal: draw the live view.
    live: bool,
    /// stdout is a terminal: dim the timestamps.
    color: bool,
    mode: String,
    /// The live view (hidden without a terminal).
    bar: ProgressBar,
    history: BTreeMap<String, VecDeque<u64>>,
    last_summary: Option<Instant>,
}

impl Progress {
    pub fn new(mode: &str) -> Self {
        let live = std::io::stderr().is_terminal() && std::env::var_os("REJUV_NO_VIEW").is_none();
        let target = if live {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(ProgressStyle::with_template("{msg}").expect("a valid template"));
        Self {
            start: Instant::now(),
            live,
            color: std::io::stdout().is_terminal(),
            mode: mode.to_string(),
            bar,
            history: BTreeMap::new(),
            last_summary: None,
        }
    }

    /// A log line on stdout, stamped with the time since the demo started, above the view.
    pub fn line(&mut self, s: &str) {
        let t = self.start.elapsed().as_secs_f64();
        let stamp = format!("[{t:6.1}s]");
        let stamp = if self.color {
            console::style(stamp).dim().force_styling(true).to_string()
        } else {
            stamp
        };
        self.raw(&format!("{stamp} {s}"));
    }

    /// A line on stdout as is (the `dashboard:` and `token file:` lines, the summary), which
    /// scripts look for at the start of a line.
    pub fn raw(&mut self, s: &str) {
        let print = || {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", rejuv_core::text::terminal_safe(s));
            let _ = out.flush();
        };
        // Once finished, the last frame stays where it is and what follows prints below it.
        if self.bar.is_finished() {
            print();
        } else {
            self.bar.suspend(print);
        }
    }

    /// Records a status poll: the view redraws; the plain display prints a summary every
    /// [`SUMMARY_EVERY`].
    pub fn update(&mut self, status: &Status, totals: &Totals) {
        for s in &status.servers {
            let h = self.history.entry(s.id.clone()).or_default();
            h.push_back(s.instances_rss_bytes);
            while h.len() > SPARK_LEN {
                h.pop_front();
            }
        }
        if self.live {
            let lines = frame(&self.mode, status, &self.history, totals, now_ms());
            self.bar.set_message(Self::paint(&lines));
        } else if self
            .last_summary
            .is_none_or(|t| t.elapsed() >= SUMMARY_EVERY)
        {
            self.last_summary = Some(Instant::now());
            self.line(&summary_line(status, totals));
        }
    }

    /// Stops redrawing; the last frame stays on screen above what follows.
    pub fn finish(&mut self) {
        self.bar.abandon();
    }

    /// The frame cut to the terminal's width (a wrapped table is hard to read), the heading in
    /// bold, a line with an unstable server or failed requests in yellow.
    fn paint(lines: &[String]) -> String {
        let (_, cols) = console::Term::stderr().size();
        let width = usize::from(cols).max(20).saturating_sub(1);
        let painted: Vec<String> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let l = clip(l, width);
                let warn = l.contains(" unstable ")
                    || (l.contains(" failed (") && !l.contains(" 0 failed"));
                match (i, warn) {
                    (0, _) => console::style(l).bold().for_stderr().to_string(),
                    (_, true) => console::style(l).yellow().for_stderr().to_string(),
                    _ => l,
                }
            })
            .collect();
        painted.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sparkline_scales_to_the_budget_and_keeps_its_width() {
        assert_eq!(sparkline(&[0, 50, 100], Some(100), 5), "  ▁▅█");
        // Without a budget the largest value is the top.
        assert_eq!(sparkline(&[1, 2, 4], None, 3), "▃▅█");
        // Above the budget is the top bar, not a panic.
        assert_eq!(sparkline(&[300], Some(100), 1), "█");
        assert_eq!(sparkline(&[], Some(100), 3), "   ");
        // Only the newest `width` samples.
        assert_eq!(sparkline(&[100, 0, 0], Some(100), 2), "▁▁");
    }

    fn status() -> Status {
        crate::testdata::status(json!({
            "paused": false, "completed_total": 2, "rolled_back_total": 0,
            "servers": [
                {"id": "s1", "role": "primary", "state": "rejuvenating", "judgement": "unstable",
                 "instances_rss_bytes": 60_000_000u64, "memory_budget_bytes": 100_000_000u64,
                 "explanation": {"message": "instance-rss will be exhausted in about 20s"}},
                {"id": "s2", "role": "spare", "state": "in-service", "judgement": "stable",
                 "instances_rss_bytes": 0, "memory_budget_bytes": 100_000_000u64}
            ],
            "workflows": [
                {"id": 3, "server": "s1", "target": "s2", "phase": "draining",
                 "started_at_ms": 10_000, "phase_since_ms": 12_000}
            ]
        }))
    }

    fn totals() -> Totals {
        Totals {
            load: LiveSnapshot {
                requests: 1000,
                failed: 2,
                posts_ok: 99,
                posts_failed: 0,
                in_flight: 3,
            },
            elapsed: Duration::from_secs(42),
            duration: Duration::from_secs(90),
            rps: 300,
        }
    }

    #[test]
    fn the_frame_shows_servers_steps_and_requests() {
        let mut history = BTreeMap::new();
        history.insert(
            "s1".to_string(),
            VecDeque::from(vec![20_000_000, 60_000_000]),
        );
        let f = frame("active-standby", &status(), &history, &totals(), 14_500);
        let text = f.join("\n");
        assert!(f[0].contains("t+42s of 90s"), "{text}");
        let s1 = f.iter().find(|l| l.starts_with(" s1 ")).expect(&text);
        assert!(
            s1.contains("▂▅") && s1.contains("60MB  60%") && s1.contains("unstable"),
            "{text}"
        );
        let wf = f.iter().find(|l| l.contains("workflow 3")).expect(&text);
        assert!(
            wf.contains("duplexing ✓ gating ✓ [draining] handing-off"),
            "{text}"
        );
        assert!(
            wf.starts_with(" workflow 3 s1→s2: draining for 2.5s (4.5s in all)"),
            "{text}"
        );
        let req = f.last().unwrap();
        assert!(req.contains("998 served, 2 failed (0.20%)"), "{text}");
        assert!(req.contains("rejuvenated 2"), "{text}");
    }

    #[test]
    fn the_summary_line_is_one_line() {
        let l = summary_line(&status(), &totals());
        assert!(!l.contains('\n'));
        assert!(l.contains("s1 p/rejuvenating 60MB unstable"), "{l}");
        assert!(l.contains("workflow 3 s1→s2 draining"), "{l}");
        assert!(l.contains("998 served, 2 failed"), "{l}");
    }
}
