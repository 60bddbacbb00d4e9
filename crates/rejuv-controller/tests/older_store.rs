//! A store written by the release before workflows had a scope and a placement (the demo's
//! SQLite file after two rejuvenations, `tests/fixtures/store-0.1/rejuv.db`) still loads, and
//! its workflows read as what they were: whole-server workflows onto a spare.

use rejuv_core::cluster::{Placement, Scope};

#[test]
fn a_store_from_before_scopes_and_placements_loads() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rejuv.db");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/store-0.1/rejuv.db"
        ),
        &db,
    )
    .unwrap();
    let mut store = rejuv_controller::store::Store::open(&db, 1000, 100).unwrap();
    let mut cluster = store.load().unwrap().expect("a stored cluster");
    assert!(
        !cluster.history.is_empty(),
        "the fixture holds finished workflows"
    );
    assert!(cluster.history.iter().all(|w| w.placement.is_none()));
    cluster.fill_defaults();
    for w in &cluster.history {
        assert_eq!(w.scope, Scope::Server);
        assert_eq!(w.placement, Some(Placement::Spare));
    }
    let finished = store.finished_workflows(100).unwrap();
    assert!(finished.len() >= 2, "{} finished workflows", finished.len());
    assert!(finished.iter().all(|w| w.scope == Scope::Server));
}
