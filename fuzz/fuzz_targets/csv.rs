//! The CSV reader of `rejuv analyze` (and of what-if input): an error naming a line, or points
//! that are finite, non-negative, strictly increasing and within the time bound; the replay
//! through the detector never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rejuv_core::detect::analyze::{parse_csv, MAX_T_SECONDS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(points) = parse_csv(text) {
        for w in points.windows(2) {
            assert!(w[0].t_s < w[1].t_s);
        }
        for p in &points {
            assert!(p.t_s.is_finite() && p.t_s >= 0.0 && p.t_s <= MAX_T_SECONDS);
            assert!(p.value.is_finite() && p.value >= 0.0);
        }
        if points.len() < 5_000 {
            let _ = rejuv_core::detect::analyze::analyze_csv(text, 1_000_000_000, &Default::default());
        }
    }
});
