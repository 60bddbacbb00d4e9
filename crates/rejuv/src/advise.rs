//! `rejuv controller --dry-run` over a Prometheus source without agents, and `--once`: the
//! advisory fleet report of [`rejuv_controller::source`], printed as a table or as JSON alone
//! on stdout (`--output json`: `{"servers": [{"server", "resource", "exhausts_in_s",
//! "action", ...}], "judged": [...], ...}`).
//!
//! Exit codes: 0 done (aging servers or not); 2 bad usage, or Prometheus unreachable,
//! answering an error, or a query whose series cannot be read (the message names the URL).

use crate::conn::{Output, EXIT_RUNTIME, EXIT_USAGE};
use crate::table::{render, secs, table};
use rejuv_controller::source::advisor::AdvisoryReport;
use rejuv_core::config::Config;
use rejuv_core::text::terminal_safe;
use std::io::Write;
use std::path::Path;

/// What the controller was asked for, besides its config.
pub struct AdviseArgs<'a> {
    pub config_path: &'a Path,
    pub dry_run: bool,
    pub once: bool,
    pub output: Option<Output>,
}

/// Whether the controller's command line asks for the advisory run of this module rather
/// than a controller of agents.
pub fn wanted(cfg: &Config, a: &AdviseArgs<'_>) -> bool {
    a.once || a.output.is_some() || cfg.advisory_only()
}

fn bad(msg: &str) -> anyhow::Result<i32> {
    eprintln!("rejuv: {}", terminal_safe(msg));
    Ok(EXIT_USAGE)
}

pub fn run(cfg: Config, a: AdviseArgs<'_>) -> anyhow::Result<i32> {
    let path = a.config_path.display();
    if a.output.is_some() && !a.once {
        return bad("--output goes with --once (the report of one judgement pass); without --once the controller logs its advisories");
    }
    if !cfg.source.is_prometheus() {
        return bad(&format!(
            "--once judges the servers of a Prometheus source: set [source] kind = \"prometheus\", url and queries in {path}"
        ));
    }
    if !a.dry_run {
        return bad(if cfg.servers.is_empty() {
            "with a Prometheus source and no [[servers]], the controller can only advise: pass --dry-run"
        } else {
            "--once only advises: pass --dry-run"
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if !a.once {
        let result = rt.block_on(async {
            let shutdown = crate::signals::shutdown_on_signal();
            rejuv_controller::source::advise(cfg, shutdown).await
        });
        return match result {
            Ok(()) => Ok(0),
            Err(e) => bad(&rejuv_core::error_chain(&e)),
        };
    }
    let report = match rt.block_on(rejuv_controller::source::once(&cfg)) {
        Ok(r) => r,
        Err(e) => return bad(&rejuv_core::error_chain(&e)),
    };
    for n in &report.notes {
        eprintln!("rejuv: note: {}", terminal_safe(n));
    }
    let text = match a.output.unwrap_or(Output::Table) {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(&report)?),
        Output::Table => render_table(&report),
    };
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return Ok(EXIT_RUNTIME);
    }
    Ok(0)
}

fn render_table(r: &AdvisoryReport) -> String {
    let mut out = format!(
        "{} server(s) judged from {}; {} aging\n",
        r.judged.len(),
        r.source,
        r.servers.len()
    );
    if r.servers.is_empty() {
        return out;
    }
    let mut t = table(&["SERVER", "RESOURCE", "EXHAUSTS IN", "ACTION", "WHY"]);
    for s in &r.servers {
        let action = match &s.instance {
            Some(i) => format!("{} {i}", s.action),
            None => s.action.clone(),
        };
        t.add_row(vec![
            s.server.clone(),
            s.resource.clone(),
            s.exhausts_in_s.map_or("-".into(), secs),
            action,
            s.message.clone(),
        ]);
    }
    out += "\n";
    out += &render(&t);
    terminal_safe(&out).into_owned()
}
