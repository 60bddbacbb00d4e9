//! The HTML report (`--html FILE`): one self-contained file (inline SVG and CSS, a few lines
//! of inline script to filter the charts; nothing fetched) that a browser opens without a
//! network.
//!
//! At the top, the fleet and the policies' figures; then a chart per server: the recorded
//! series (grey), the series as the `rejuv` policy left it (green), the capacity (red), the
//! forecasts the `rejuv` policy's workflows started on (orange, from the value then to the
//! capacity at the forecast moment), and below the plot one row per policy with a tick where
//! it rejuvenated and a cross where the series exhausted. Servers that exhausted under some
//! policy come first, then those the `rejuv` policy rejuvenated.
//!
//! Stable hooks for tests: `#summary tr[data-policy]`, `#charts figure[data-server]`,
//! `.recorded`, `.replayed`, `.capacity`, `.forecast`, `.marks [data-policy] .rejuvenation`,
//! `.exhaustion`.

use super::model::Track;
use super::replay::Forecast;
use super::report::{fmt_duration, PolicyRun, Report};
use std::fmt::Write as _;

/// Chart geometry, pixels.
const W: f64 = 920.0;
const LEFT: f64 = 96.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const PLOT_H: f64 = 140.0;
const ROW_H: f64 = 14.0;
/// Columns the series are drawn in (each column's lowest and highest sample).
const COLUMNS: usize = 420;

/// Colours of the policies' marks, in the order given.
const COLOURS: [&str; 6] = ["#2a6", "#36c", "#93c", "#c80", "#0aa", "#a55"];

pub fn render(report: &Report<'_>) -> String {
    let mut out = String::with_capacity(1 << 20);
    out += HEAD;
    summary(&mut out, report);
    charts(&mut out, report);
    out += TAIL;
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `950`, `12.5k`, `8.6G`: a value in the series' own unit, short.
fn quantity(v: f64) -> String {
    let units = ["", "k", "M", "G", "T", "P", "E"];
    let mut x = v;
    let mut i = 0;
    while x.abs() >= 1000.0 && i + 1 < units.len() {
        x /= 1000.0;
        i += 1;
    }
    if x.abs() >= 100.0 || x.fract() == 0.0 {
        format!("{x:.0}{}", units[i])
    } else {
        format!("{x:.1}{}", units[i])
    }
}

fn summary(out: &mut String, r: &Report<'_>) {
    let f = r.fleet;
    let primaries = f
        .servers
        .iter()
        .filter(|s| s.role == rejuv_core::types::Role::Primary)
        .count();
    let _ = writeln!(
        out,
        "<p class=\"meta\">{} servers ({} primaries, {} spares) · {} recorded · {} samples · reset model <b>{}</b> · <code>rejuv</code> policy: {} · {}</p>",
        f.servers.len(),
        primaries,
        f.servers.len() - primaries,
        fmt_duration(f.end_s() - f.start_s()),
        f.samples(),
        r.reset_model.name(),
        esc(&r.policy_origin),
        esc(&r.placement),
    );
    out.push_str("<table id=\"summary\"><thead><tr><th>policy</th><th>period</th><th>rejuvenations</th><th>exhaustions</th><th>servers exhausted</th><th>most at once</th><th>lowest capacity</th><th>median lead</th></tr></thead><tbody>\n");
    for (k, run) in r.runs.iter().enumerate() {
        let p = &run.result;
        let names = if p.servers_exhausted.is_empty() {
            "–".to_string()
        } else if p.servers_exhausted.len() > 8 {
            format!(
                "{}, … ({} in all)",
                p.servers_exhausted[..8].join(", "),
                p.servers_exhausted.len()
            )
        } else {
            p.servers_exhausted.join(", ")
        };
        let _ = writeln!(
            out,
            "<tr data-policy=\"{name}\"><td><span class=\"swatch\" style=\"background:{colour}\"></span><b>{name}</b></td><td>{period}</td><td>{rej}</td><td class=\"{bad}\">{exh}</td><td>{names}</td><td>{conc}</td><td>{cap:.1}%</td><td>{lead}</td></tr>",
            name = esc(&p.policy),
            colour = COLOURS[k % COLOURS.len()],
            period = p.period_s.map_or("–".into(), fmt_duration),
            rej = p.rejuvenations,
            bad = if p.exhaustions > 0 { "bad" } else { "good" },
            exh = p.exhaustions,
            names = esc(&names),
            conc = p.max_concurrent,
            cap = p.min_capacity_fraction * 100.0,
            lead = p.lead_s_median.map_or("–".into(), fmt_duration),
        );
    }
    out.push_str("</tbody></table>\n");
    for run in &r.runs {
        for n in &run.notes {
            let _ = writeln!(
                out,
                "<p class=\"note\"><b>{}</b>: {}</p>",
                esc(&run.result.policy),
                esc(n)
            );
        }
    }
    out.push_str(LEGEND);
}

fn charts(out: &mut String, r: &Report<'_>) {
    let n = r.fleet.servers.len();
    let rejuv = r.runs.iter().position(|x| x.result.policy == "rejuv");
    let exhausted = |i: usize| r.runs.iter().any(|x| !x.tracks[i].exhaustions.is_empty());
    let rejuvenated =
        |i: usize| rejuv.is_some_and(|k| !r.runs[k].tracks[i].rejuvenations.is_empty());
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (!exhausted(i), !rejuvenated(i), i));
    out.push_str("<div id=\"charts\">\n");
    for i in order {
        chart(out, r, i, rejuv, exhausted(i), rejuvenated(i));
    }
    out.push_str("</div>\n");
}

/// Maps the recording's time and the series' values to the chart.
struct Axes {
    t0: f64,
    t1: f64,
    vmax: f64,
}

impl Axes {
    fn x(&self, t: f64) -> f64 {
        LEFT + (t - self.t0) / (self.t1 - self.t0) * (W - LEFT - RIGHT)
    }
    fn y(&self, v: f64) -> f64 {
        TOP + PLOT_H - (v / self.vmax).clamp(0.0, 1.0) * PLOT_H
    }
}

/// The series as a polyline: each column's samples in order, reduced to their lowest and
/// highest, so a spike survives the reduction.
fn polyline(a: &Axes, t: &[f64], v: &[f64], class: &str) -> String {
    let mut pts: Vec<(f64, f64)> = Vec::new();
    let span = a.t1 - a.t0;
    let col = |x: f64| (((x - a.t0) / span) * COLUMNS as f64).floor() as usize;
    let mut i = 0;
    while i < t.len() {
        let c = col(t[i]);
        let (mut lo, mut hi) = (i, i);
        let mut j = i;
        while j < t.len() && col(t[j]) == c {
            if v[j] < v[lo] {
                lo = j;
            }
            if v[j] > v[hi] {
                hi = j;
            }
            j += 1;
        }
        let (first, second) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        pts.push((a.x(t[first]), a.y(v[first])));
        if second != first {
            pts.push((a.x(t[second]), a.y(v[second])));
        }
        i = j;
    }
    let mut s = format!("<polyline class=\"{class}\" points=\"");
    for (x, y) in pts {
        let _ = write!(s, "{x:.1},{y:.1} ");
    }
    s.push_str("\"/>");
    s
}

fn chart(
    out: &mut String,
    r: &Report<'_>,
    i: usize,
    rejuv: Option<usize>,
    exhausted: bool,
    rejuvenated: bool,
) {
    let s = &r.fleet.servers[i];
    let t1 = if s.t_last() > s.t0() {
        s.t_last()
    } else {
        s.t0() + 1.0
    };
    let vmax = s.v.iter().copied().fold(s.capacity, f64::max) * 1.08;
    let a = Axes {
        t0: s.t0(),
        t1,
        vmax,
    };
    let rows = r.runs.len() as f64;
    let h = TOP + PLOT_H + 10.0 + rows * ROW_H + 18.0;
    let per_policy: Vec<String> = r
        .runs
        .iter()
        .map(|run| caption_part(run, &run.tracks[i]))
        .collect();
    let _ = write!(
        out,
        "<figure class=\"chart\" data-server=\"{id}\" data-exhausted=\"{ex}\" data-rejuvenated=\"{rj}\"><figcaption><b>{id}</b> · {role} · capacity {cap} · {units} unit(s) · {parts}</figcaption>\n<svg width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\" role=\"img\">",
        id = esc(&s.id),
        ex = u8::from(exhausted),
        rj = u8::from(rejuvenated),
        role = s.role,
        cap = quantity(s.capacity),
        units = s.units,
        parts = per_policy.join(" · "),
    );
    let base = TOP + PLOT_H;
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{base}\" x2=\"{x2}\" y2=\"{base}\"/><line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{base}\"/><text x=\"{lx}\" y=\"{base}\" text-anchor=\"end\">0</text>",
        x2 = W - RIGHT,
        lx = LEFT - 4.0,
    );
    let cy = a.y(s.capacity);
    let _ = write!(
        out,
        "<line class=\"capacity\" x1=\"{LEFT}\" y1=\"{cy:.1}\" x2=\"{x2}\" y2=\"{cy:.1}\"/><text class=\"capacity\" x=\"{lx}\" y=\"{ty:.1}\" text-anchor=\"end\">{cap}</text>",
        x2 = W - RIGHT,
        lx = LEFT - 4.0,
        ty = cy + 3.0,
        cap = quantity(s.capacity),
    );
    out.push_str(&polyline(&a, &s.t, &s.v, "recorded"));
    if let Some(k) = rejuv {
        let tr = &r.runs[k].tracks[i];
        let reset = !tr.rejuvenations.is_empty() || !tr.exhaustions.is_empty();
        if let (true, Some(v)) = (reset, &tr.replayed) {
            out.push_str(&polyline(&a, &s.t[..v.len()], v, "replayed"));
        }
        for f in r.runs[k].forecasts.iter().filter(|f| f.server == i) {
            forecast(out, &a, f, s.capacity);
        }
    }
    // Time labels: the recording's time since the fleet's first sample.
    for k in 0..=4 {
        let t = a.t0 + (a.t1 - a.t0) * k as f64 / 4.0;
        let anchor = match k {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            a.x(t),
            h - 4.0,
            fmt_duration(t - r.fleet.start_s())
        );
    }
    out.push_str("<g class=\"marks\">");
    for (k, run) in r.runs.iter().enumerate() {
        marks(out, &a, k, run, &run.tracks[i]);
    }
    out.push_str("</g></svg></figure>\n");
}

/// `rejuv: 1 (lead 3h02m)`, `fixed:auto: 125`, with exhaustions when there were any.
fn caption_part(run: &PolicyRun<'_>, tr: &Track<'_>) -> String {
    let mut s = format!("{}: {}", esc(&run.result.policy), tr.rejuvenations.len());
    let leads: Vec<f64> = tr.rejuvenations.iter().filter_map(|x| x.lead_s).collect();
    if leads.len() == 1 && tr.rejuvenations.len() == 1 {
        let _ = write!(s, " (lead {})", fmt_duration(leads[0]));
    }
    if !tr.exhaustions.is_empty() {
        let _ = write!(
            s,
            ", <span class=\"bad\">{} exhausted</span>",
            tr.exhaustions.len()
        );
    }
    s
}

/// The trend line of a forecast, from the value at the workflow's start to the capacity at
/// the forecast moment (cut at the chart's end).
fn forecast(out: &mut String, a: &Axes, f: &Forecast, capacity: f64) {
    let end_t = f.t_s + f.tte_s;
    let (t2, v2) = if end_t > a.t1 && f.tte_s > 0.0 {
        (
            a.t1,
            f.value + (capacity - f.value) * (a.t1 - f.t_s) / f.tte_s,
        )
    } else {
        (end_t, capacity)
    };
    let _ = write!(
        out,
        "<g class=\"forecast\"><title>forecast at {at}: exhausted in about {tte}</title><line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\"/><circle cx=\"{x1:.1}\" cy=\"{y1:.1}\" r=\"3\"/>",
        at = fmt_duration(f.t_s - a.t0),
        tte = fmt_duration(f.tte_s),
        x1 = a.x(f.t_s),
        y1 = a.y(f.value),
        x2 = a.x(t2),
        y2 = a.y(v2),
    );
    if end_t <= a.t1 {
        let _ = write!(
            out,
            "<circle class=\"end\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\"/>",
            a.x(t2),
            a.y(v2)
        );
    }
    let (x, anchor) = if a.x(f.t_s) > W / 2.0 {
        (a.x(f.t_s) - 6.0, "end")
    } else {
        (a.x(f.t_s) + 6.0, "start")
    };
    let _ = write!(
        out,
        "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">forecast: exhausted in ~{}</text></g>",
        (a.y(f.value) - 6.0).max(TOP + 8.0),
        fmt_duration(f.tte_s)
    );
}

/// One policy's row under the plot: a tick per rejuvenation, a cross per exhaustion.
fn marks(out: &mut String, a: &Axes, k: usize, run: &PolicyRun<'_>, tr: &Track<'_>) {
    let y = TOP + PLOT_H + 10.0 + k as f64 * ROW_H;
    let colour = COLOURS[k % COLOURS.len()];
    let _ = write!(
        out,
        "<g data-policy=\"{name}\"><text class=\"row\" x=\"{lx}\" y=\"{ty:.1}\" text-anchor=\"end\">{name}</text><line class=\"lane\" x1=\"{LEFT}\" y1=\"{my:.1}\" x2=\"{x2}\" y2=\"{my:.1}\"/>",
        name = esc(&run.result.policy),
        lx = LEFT - 4.0,
        ty = y + 9.0,
        my = y + 5.5,
        x2 = W - RIGHT,
    );
    for r in &tr.rejuvenations {
        let x = a.x(r.t_s);
        let lead = r.lead_s.map_or(String::new(), |l| {
            format!(", {} before exhaustion", fmt_duration(l))
        });
        let _ = write!(
            out,
            "<line class=\"rejuvenation\" stroke=\"{colour}\" x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\"><title>rejuvenated at {}{lead}</title></line>",
            y + 1.0,
            y + 10.0,
            fmt_duration(r.t_s - a.t0),
        );
    }
    for t in &tr.exhaustions {
        let x = a.x(*t);
        let _ = write!(
            out,
            "<path class=\"exhaustion\" d=\"M{:.1} {:.1}l8 8m0 -8l-8 8\"/>",
            x - 4.0,
            y + 1.5
        );
    }
    out.push_str("</g>");
}

const HEAD: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>rejuv whatif</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 1.2em 1.5em; color: #222; background: #fafafa; }
  h1 { font-size: 1.3em; margin: 0 0 .3em; }
  .meta, .note { color: #555; margin: .3em 0; }
  table { border-collapse: collapse; background: #fff; margin: .6em 0; }
  td, th { border-bottom: 1px solid #eee; padding: 3px 10px; text-align: left; font-size: .9em; }
  th { color: #555; font-weight: 600; }
  td.bad, .bad { color: #c33; font-weight: 600; } td.good { color: #2a6; }
  .swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
  .legend { color: #555; font-size: .85em; margin: .4em 0 .8em; }
  .legend i { display: inline-block; width: 18px; height: 0; vertical-align: middle; margin: 0 4px 0 12px; border-top: 2px solid; }
  #charts { display: flex; flex-direction: column; gap: 10px; }
  .chart { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 6px 10px; margin: 0; width: fit-content; }
  .chart figcaption { font-size: .85em; color: #444; margin-bottom: 2px; }
  svg { display: block; }
  svg text { font-size: 10px; fill: #666; }
  svg .axis { stroke: #ccc; } svg .lane { stroke: #f0f0f0; }
  svg .capacity { stroke: #c33; stroke-dasharray: 5 3; } svg text.capacity { fill: #c33; stroke: none; }
  svg .recorded { fill: none; stroke: #aaa; stroke-width: 1; }
  svg .replayed { fill: none; stroke: #2a6; stroke-width: 1.4; }
  svg .forecast line { stroke: #e80; stroke-width: 1.5; stroke-dasharray: 4 3; }
  svg .forecast circle { fill: #e80; } svg .forecast text { fill: #b50; font-weight: 600; }
  svg .rejuvenation { stroke-width: 1.5; }
  svg .exhaustion { stroke: #c33; stroke-width: 2; fill: none; }
  svg text.row { fill: #444; }
</style>
</head>
<body>
<h1>rejuv whatif</h1>
"#;

const LEGEND: &str = r#"<div class="legend">Charts, one per server, on its own recording's span:<i style="border-color:#aaa"></i>recorded series<i style="border-color:#2a6"></i>as the <code>rejuv</code> policy left it<i style="border-color:#c33;border-top-style:dashed"></i>capacity<i style="border-color:#e80;border-top-style:dashed"></i>forecast a workflow started on · below: a tick where each policy rejuvenated, <span class="bad">×</span> where the series exhausted.
<label style="margin-left:1em">show <select id="show"><option value="all">every server</option><option value="exhausted">servers that exhausted under some policy</option><option value="rejuvenated">servers the rejuv policy rejuvenated</option></select></label></div>
"#;

const TAIL: &str = r#"<script>
'use strict';
document.getElementById('show').addEventListener('change', e => {
  const want = e.target.value;
  for (const f of document.querySelectorAll('#charts figure')) {
    f.style.display = want === 'all' || f.dataset[want] === '1' ? '' : 'none';
  }
});
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_short() {
        assert_eq!(quantity(950.0), "950");
        assert_eq!(quantity(12_500.0), "12.5k");
        assert_eq!(quantity(8_589_934_592.0), "8.6G");
        assert_eq!(quantity(65_536.0), "65.5k");
        assert_eq!(esc("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
    }
}
