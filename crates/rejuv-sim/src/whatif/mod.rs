//! `rejuv whatif`: what a policy would have done on a fleet's own recorded series, beside
//! cron-like baselines, as a fleet over time.
//!
//! ```text
//! fleet dir ─▶ input ─▶ Fleet ─┬─▶ replay (rejuv: the production shell, core, detector, gate,
//!                              │            budget, cooldown, escalation; simulated agents
//!                              │            and clock)
//!                              └─▶ baselines (fixed:, fixed:auto, threshold:, outside the core)
//!                                      │
//!                     model (reset, exhaustion, lead) ─▶ report (JSON, table) ─▶ html
//! ```
//!
//! - [`input`]: the fleet directory (`fleet.csv`, one `SERVER.csv` per server).
//! - [`policy`]: `--policy` values.
//! - [`config`]: the `rejuv` policy (a config's policy sections, or the built-in defaults)
//!   and the cluster config made around it; [`placement`]: where copies go.
//! - [`model`]: the reset model and the accounting every policy shares.
//! - [`replay`]: the `rejuv` policy through the real core; [`timing`]: what the simulated
//!   world's steps take.
//! - [`baselines`]: `fixed:`, `fixed:auto`, `threshold:`.
//! - [`report`]: the figures; [`html`]: the self-contained HTML report.
//!
//! # Errors
//! Bad input (a file, a line, a policy section) is a [`WhatifError`] that says where;
//! [`WhatifError::is_bad_input`] tells it from a failure to read (exit codes 2 and 1).

pub mod baselines;
pub mod config;
pub mod html;
pub mod input;
pub mod model;
pub mod placement;
pub mod policy;
pub mod replay;
pub mod report;
pub mod timing;

pub use config::PolicySections;
pub use input::{read_fleet, Fleet, Series};
pub use model::ResetModel;
pub use policy::{Kind, Policy};
pub use report::{PolicyResult, PolicyRun, Report, Summary};

use placement::Placement;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a replay could not be made.
#[derive(Debug)]
pub enum WhatifError {
    /// Bad input: the file, the 1-based line where there is one, and what is wrong.
    Input {
        file: PathBuf,
        line: Option<usize>,
        reason: String,
    },
    /// A file that exists could not be read.
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    /// The `rejuv` policy's sections, or the cluster made from them, are not valid (the
    /// message names the field).
    Config(String),
}

impl WhatifError {
    pub fn input(file: &Path, line: Option<usize>, reason: impl Into<String>) -> Self {
        Self::Input {
            file: file.to_path_buf(),
            line,
            reason: reason.into(),
        }
    }

    /// Bad input (exit code 2), as opposed to a failure to read (1).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Io { .. })
    }
}

impl std::fmt::Display for WhatifError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Input { file, line, reason } => {
                write!(f, "{}", file.display())?;
                if let Some(l) = line {
                    write!(f, " line {l}")?;
                }
                write!(f, ": {reason}")
            }
            Self::Io { file, .. } => write!(f, "reading {}", file.display()),
            Self::Config(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for WhatifError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct Options {
    /// In the order given; the report keeps it.
    pub policies: Vec<Policy>,
    /// The `rejuv` policy (and the hold-down of `threshold:` policies).
    pub sections: PolicySections,
    pub reset_model: ResetModel,
}

/// How far a replay has come, for a progress line.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'p> {
    pub policy: &'p str,
    /// Share of the policy's replay done, 0 to 1.
    pub done: f64,
    pub rejuvenations: usize,
}

/// Replays `fleet` through every policy of `opts`.
///
/// # Errors
/// [`WhatifError::Config`] when the `rejuv` policy is not valid for this fleet.
pub fn run<'a>(
    fleet: &'a Fleet,
    opts: &Options,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Report<'a>, WhatifError> {
    let placement = Placement::for_fleet(fleet);
    let needs_core = opts.policies.iter().any(|p| p.kind == Kind::Rejuv);
    let cfg = if needs_core {
        Some(Arc::new(config::cluster_config(
            fleet,
            &opts.sections,
            placement,
        )?))
    } else {
        None
    };
    let model = opts.reset_model;
    let mut runs = Vec::new();
    for p in &opts.policies {
        let name = p.name.as_str();
        let mut tell = |done: f64, rejuvenations: usize| {
            progress(Progress {
                policy: name,
                done,
                rejuvenations,
            })
        };
        let run = match p.kind {
            Kind::Rejuv => {
                let cfg = cfg.clone().expect("made above for a rejuv policy");
                let r = replay::replay(fleet, cfg, model, &mut tell);
                let mut run = PolicyRun::new(
                    name,
                    None,
                    r.tracks,
                    r.max_concurrent,
                    r.min_capacity_fraction,
                );
                run.forecasts = r.forecasts;
                if r.rolled_back + r.failed > 0 {
                    run.notes.push(format!(
                        "{} workflows completed, {} rolled back, {} failed",
                        r.completed, r.rolled_back, r.failed
                    ));
                }
                if !r.kept_out.is_empty() {
                    run.notes.push(format!(
                        "kept out of service at the end: {}",
                        r.kept_out.join(", ")
                    ));
                }
                run
            }
            Kind::Fixed { period_s } => {
                let b = baselines::fixed(fleet, period_s, model);
                PolicyRun::new(
                    name,
                    Some(period_s),
                    b.tracks,
                    b.max_concurrent,
                    b.min_capacity_fraction,
                )
            }
            Kind::FixedAuto => {
                let auto = baselines::auto_period(fleet, model, &mut |d| tell(d, 0));
                let b = baselines::fixed(fleet, auto.period_s, model);
                let mut run = PolicyRun::new(
                    name,
                    Some(auto.period_s),
                    b.tracks,
                    b.max_concurrent,
                    b.min_capacity_fraction,
                );
                if !auto.safe {
                    run.notes.push(format!(
                        "no period from {} up prevents every exhaustion; this is the shortest tried",
                        report::fmt_duration(baselines::MIN_PERIOD_S)
                    ));
                }
                run
            }
            Kind::Threshold { fraction } => {
                let hold_s = opts.sections.policy.hold_down.as_secs_f64();
                let b = baselines::threshold(fleet, fraction, hold_s, model);
                PolicyRun::new(
                    name,
                    None,
                    b.tracks,
                    b.max_concurrent,
                    b.min_capacity_fraction,
                )
            }
        };
        runs.push(run);
    }
    Ok(Report {
        fleet,
        runs,
        reset_model: model,
        policy_origin: opts.sections.origin.clone(),
        placement: placement.describe(),
    })
}
