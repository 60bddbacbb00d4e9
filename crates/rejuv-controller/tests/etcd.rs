//! The etcd store against a real etcd (started per test on free loopback ports): round trip,
//! fencing of a deposed leader, and leadership moving when a leader's lease stops being kept
//! alive (a leader killed with SIGKILL stops exactly like that).
#![cfg(feature = "etcd")]

use rejuv_controller::etcd_store::{self, EtcdStore, Keys, LeaderInfo, Session};
use rejuv_controller::etcd_test_server::EtcdServer;
use rejuv_controller::store::{Store, StoreError};
use rejuv_core::cluster::{Cluster, EventKind, LogEvent};
use rejuv_core::config::Config;
use rejuv_core::time::Now;
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[cluster]
mode = "active-standby"

[traffic]
admin = "127.0.0.1:7071"
listen = { web = "127.0.0.1:8080" }

[[servers]]
id = "s1"
address = "127.0.0.2"
agent = "127.0.0.2:7001"
role = "primary"
port_range = [20000, 20010]
instances = ["web"]

[[servers]]
id = "s2"
address = "127.0.0.3"
agent = "127.0.0.3:7001"
role = "spare"
port_range = [20000, 20010]

[services.web]
command = "/usr/bin/true"
health = { path = "/healthz" }
"#;

fn me(n: u32) -> LeaderInfo {
    LeaderInfo {
        id: format!("c{n}"),
        api: format!("127.0.0.1:{}", 7000 + n),
        pid: n,
    }
}

fn event(i: u64) -> LogEvent {
    LogEvent {
        at_ms: 1000 + i,
        kind: EventKind::Other("test".into()),
        server: Some("s1".into()),
        workflow: None,
        message: format!("event {i}"),
        level: None,
    }
}

const TTL: Duration = Duration::from_secs(2);

async fn leader_store(client: &etcd_client::Client, keys: &Keys, n: u32) -> (Session, Store) {
    let s = Session::start(client.clone(), keys.clone(), TTL)
        .await
        .unwrap();
    let fence = tokio::time::timeout(Duration::from_secs(10), s.campaign(&me(n), |_| {}))
        .await
        .expect("an uncontested campaign wins at once")
        .unwrap();
    let store = Store::Etcd(Box::new(EtcdStore::leader(
        client.clone(),
        keys.clone(),
        fence,
        s.guard(),
        TTL,
        5,
        5,
    )));
    (s, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_and_a_deposed_leader_is_fenced() {
    let etcd = EtcdServer::start();
    let client = etcd_store::connect(&[etcd.endpoint()]).await.unwrap();
    let keys = Keys::new("/test/round-trip");
    let cfg = Config::from_toml(CONFIG).unwrap();

    let (s1, mut store1) = leader_store(&client, &keys, 1).await;
    let e1 = store1.next_epoch().unwrap();
    assert!(
        store1.load().unwrap().is_none(),
        "a fresh prefix has no state"
    );
    let (mut cluster, _) = Cluster::new(&cfg, Now::new(0, 1_000));
    // Three commits of events: retention keeps the newest 5 of 9.
    for round in 0..3 {
        let evs: Vec<_> = (0..3).map(|i| event(round * 3 + i)).collect();
        cluster.paused = round % 2 == 0;
        store1.commit(&cluster, &evs, &[]).unwrap();
    }
    let reader = Store::Etcd(Box::new(EtcdStore::reader(
        client.clone(),
        keys.clone(),
        TTL,
    )));
    let loaded = {
        let mut r = Store::Etcd(Box::new(EtcdStore::reader(
            client.clone(),
            keys.clone(),
            TTL,
        )));
        r.load().unwrap().expect("state stored")
    };
    assert_eq!(
        serde_json::to_value(&loaded).unwrap(),
        serde_json::to_value(&cluster).unwrap(),
        "the state reads back equal"
    );
    let recent = reader.recent_events(100).unwrap();
    let seqs: Vec<i64> = recent.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        vec![4, 5, 6, 7, 8, 9],
        "retention kept the newest batches"
    );
    let after = reader.events(7, 100).unwrap();
    assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![8, 9]);
    assert_eq!(after[1].event.message, "event 8");
    assert_eq!(reader.events(5, 2).unwrap().len(), 2, "limit holds");

    // The leader key goes (as when etcd expired the lease of a leader stalled past its TTL)
    // while leader 1 still believes its lease valid; a second controller wins.
    let mut kv = client.kv_client();
    kv.delete(keys.leader(), None).await.unwrap();
    let (_s2, mut store2) = leader_store(&client, &keys, 2).await;
    let e2 = store2.next_epoch().unwrap();
    assert!(e2 > e1, "epochs strictly increase: {e1} then {e2}");
    store2
        .load()
        .unwrap()
        .expect("the new leader resumes the state");
    cluster.paused = true;
    store2.commit(&cluster, &[event(100)], &[]).unwrap();

    assert!(s1.guard().still_leader(), "leader 1 has not noticed yet");
    cluster.paused = false;
    let err = store1.commit(&cluster, &[event(200)], &[]).unwrap_err();
    assert!(
        matches!(&err, StoreError::Etcd(etcd_store::EtcdError::Fenced)),
        "a deposed leader's write is refused by etcd: {err}"
    );
    assert!(!s1.guard().still_leader(), "and it steps down");
    assert!(
        s1.guard().lost_reason().unwrap().contains("fenced"),
        "{:?}",
        s1.guard().lost_reason()
    );
    let err = store1.next_epoch().unwrap_err();
    assert!(err.to_string().contains("does not lead"), "{err}");

    let mut r = Store::Etcd(Box::new(EtcdStore::reader(
        client.clone(),
        keys.clone(),
        TTL,
    )));
    assert!(r.load().unwrap().unwrap().paused, "leader 2's state stands");
    let last = reader.recent_events(1).unwrap();
    assert_eq!(
        last[0].event.message, "event 100",
        "leader 1's event never landed"
    );
    let err = r.commit(&cluster, &[], &[]).unwrap_err();
    assert!(
        err.to_string().contains("does not lead"),
        "a reader never writes: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_within_the_ttl_when_a_leader_dies() {
    let etcd = EtcdServer::start();
    let client = etcd_store::connect(&[etcd.endpoint()]).await.unwrap();
    let keys = Keys::new("/test/election");

    let s1 = Session::start(client.clone(), keys.clone(), TTL)
        .await
        .unwrap();
    s1.campaign(&me(1), |_| {}).await.unwrap();
    assert!(s1.guard().still_leader());
    assert_eq!(
        etcd_store::current_leader(&client, &keys)
            .await
            .unwrap()
            .unwrap()
            .id,
        "c1"
    );

    let s2 = Session::start(client.clone(), keys.clone(), TTL)
        .await
        .unwrap();
    let (seen_tx, mut seen_rx) = tokio::sync::watch::channel(None);
    let guard2 = s2.guard();
    let follower = tokio::spawn(async move {
        let r = s2
            .campaign(&me(2), |l| {
                seen_tx.send_replace(l.map(|l| l.id));
            })
            .await;
        (s2, r)
    });
    tokio::time::timeout(Duration::from_secs(5), seen_rx.wait_for(|l| l.is_some()))
        .await
        .expect("the follower learns who leads")
        .unwrap();
    assert_eq!(seen_rx.borrow().as_deref(), Some("c1"));
    assert!(!guard2.still_leader(), "a follower does not lead");

    // Leader 1 dies: its keep-alive stops, nothing is revoked (what SIGKILL does).
    let died = Instant::now();
    drop(s1);
    let (s2, r) = tokio::time::timeout(TTL + Duration::from_secs(5), follower)
        .await
        .expect("the follower took over")
        .unwrap();
    r.unwrap();
    let handover = died.elapsed();
    println!("leadership moved {handover:?} after the leader died (TTL {TTL:?})");
    assert!(
        handover <= TTL + Duration::from_secs(1),
        "handover took {handover:?}, more than TTL + 1 s"
    );
    assert!(s2.guard().still_leader());
    assert_eq!(
        etcd_store::current_leader(&client, &keys)
            .await
            .unwrap()
            .unwrap()
            .id,
        "c2"
    );

    // A clean stop hands over at once.
    s2.resign().await;
    assert!(etcd_store::current_leader(&client, &keys)
        .await
        .unwrap()
        .is_none());
}
