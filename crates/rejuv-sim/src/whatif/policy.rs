//! The policies a replay compares, as given on the command line (`--policy`):
//! - `rejuv`: the production core with the config's policy sections (or the defaults);
//! - `fixed:DURATION`: every server restarts at `t_0 + k·DURATION`, cron-like;
//! - `fixed:auto`: the fixed period with the fewest restarts and no exhaustion, searched;
//! - `threshold:FRACTION`: a server restarts once its value has stayed above
//!   `FRACTION × capacity` for the policy's hold-down.
//!
//! The baselines are applied by the replay itself, outside the core: at once, outside the
//! budget and the gate.

use std::time::Duration;

/// What a policy is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Rejuv,
    Fixed { period_s: f64 },
    FixedAuto,
    Threshold { fraction: f64 },
}

/// A policy and its name as given (`fixed:auto` stays `fixed:auto` in the report).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub kind: Kind,
}

impl Policy {
    /// Parses `--policy`'s value.
    pub fn parse(s: &str) -> Result<Self, String> {
        let name = s.trim().to_string();
        let usage = "a policy is `rejuv`, `fixed:DURATION` (e.g. fixed:7d), `fixed:auto` or `threshold:FRACTION` (e.g. threshold:0.9)";
        let kind = match name.split_once(':') {
            None if name == "rejuv" => Kind::Rejuv,
            Some(("fixed", "auto")) => Kind::FixedAuto,
            Some(("fixed", d)) => {
                let period = humantime::parse_duration(d)
                    .map_err(|e| format!("`{name}`: `{d}` is not a duration ({e})"))?;
                if period < Duration::from_secs(1) {
                    return Err(format!("`{name}`: the period must be at least 1s"));
                }
                Kind::Fixed {
                    period_s: period.as_secs_f64(),
                }
            }
            Some(("threshold", f)) => {
                let fraction: f64 = f
                    .parse()
                    .ok()
                    .filter(|x: &f64| x.is_finite() && *x > 0.0 && *x <= 1.0)
                    .ok_or_else(|| {
                        format!("`{name}`: `{f}` is not a fraction of the capacity in (0, 1]")
                    })?;
                Kind::Threshold { fraction }
            }
            _ => return Err(format!("`{name}` is not a policy: {usage}")),
        };
        Ok(Self { name, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_as_the_command_line_gives_them() {
        let p = |s: &str| Policy::parse(s).map(|p| p.kind);
        assert_eq!(p("rejuv"), Ok(Kind::Rejuv));
        assert_eq!(p("fixed:auto"), Ok(Kind::FixedAuto));
        assert_eq!(
            p("fixed:7d"),
            Ok(Kind::Fixed {
                period_s: 604_800.0
            })
        );
        assert_eq!(p("fixed:90m"), Ok(Kind::Fixed { period_s: 5_400.0 }));
        assert_eq!(p("threshold:0.9"), Ok(Kind::Threshold { fraction: 0.9 }));
        assert_eq!(Policy::parse("fixed:auto").unwrap().name, "fixed:auto");
        for bad in [
            "cron",
            "fixed:",
            "fixed:soon",
            "fixed:500ms",
            "threshold:1.5",
            "threshold:0",
            "threshold:x",
            "rejuv:1",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
