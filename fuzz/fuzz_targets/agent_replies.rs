//! Agents' state replies as the controller decodes them: whatever an agent sends, the text
//! kept from it is bounded and free of control characters.
#![no_main]
use libfuzzer_sys::fuzz_target;

fn safe(s: &str, max: usize) {
    assert!(s.len() <= max * 6 + 64, "{} bytes kept", s.len());
    assert!(!s.chars().any(char::is_control), "control character kept: {s:?}");
}

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Vec<rejuv_core::types::Sample>>(data);
    let Ok(state) = rejuv_core::reply::decode_state(data) else {
        return;
    };
    safe(&state.version, rejuv_core::reply::MAX_SHORT_TEXT);
    for i in &state.instances {
        if let Some(e) = &i.last_exit {
            safe(e, rejuv_core::text::MAX_REMOTE_TEXT);
        }
    }
    if let Some(r) = &state.last_rejuvenation {
        for a in &r.actions {
            safe(&a.detail, rejuv_core::text::MAX_REMOTE_TEXT);
        }
    }
});
