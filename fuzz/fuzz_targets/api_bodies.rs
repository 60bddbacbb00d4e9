//! The bodies the controller, the agents and the proxy take from clients: decoding never
//! panics, whatever the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rejuv_core::api::{RejuvenateRequest, RouteTable, StartInstance};
use rejuv_core::wire::MaintenanceRequest;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<MaintenanceRequest>(data);
    let _ = serde_json::from_slice::<StartInstance>(data);
    let _ = serde_json::from_slice::<RejuvenateRequest>(data);
    if let Ok(t) = serde_json::from_slice::<RouteTable>(data) {
        // What the proxy echoes back must encode again.
        let _ = serde_json::to_vec(&t).expect("a decoded table encodes");
    }
});
