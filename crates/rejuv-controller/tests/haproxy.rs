//! The HAProxy adapter against a real HAProxy 2.6 process and real HTTP upstreams.

mod haproxy_support;

use haproxy_support::*;
use rejuv_controller::engine::Msg;
use rejuv_controller::haproxy::{
    admin, reconcile_haproxy, Haproxy, HaproxyConfig, HaproxyError, HaproxySocket, HealthCheck,
    ServerState,
};
use rejuv_core::api::BackendState::{Draining, Serving};
use rejuv_core::cluster::Event;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(90);

fn adapter(sock: HaproxySocket) -> Haproxy {
    Haproxy::new(HaproxyConfig::new(
        sock,
        BTreeMap::from([("web".to_string(), "web".to_string())]),
    ))
}

struct Setup {
    _dir: tempfile::TempDir,
    hp: HaproxyProc,
    front: SocketAddr,
}

async fn setup(extra_global: &str, static_servers: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = test_config(dir.path(), front, extra_global, static_servers);
    let hp = HaproxyProc::start(dir.path(), &cfg).await;
    Setup {
        _dir: dir,
        hp,
        front,
    }
}

fn find<'a>(servers: &'a [ServerState], name: &str) -> Option<&'a ServerState> {
    servers.iter().find(|s| s.name == name)
}

/// Runs `f` under the test time limit so a hang reads as a failure with a reason.
async fn bounded<F: std::future::Future<Output = ()>>(what: &str, f: F) {
    tokio::time::timeout(LIMIT, f).await.unwrap_or_else(|_| {
        panic!("{what}: did not finish within {LIMIT:?} (HAProxy or an upstream hung?)")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_adds_servers_traffic_flows_and_a_second_pass_only_reads() {
    bounded("add servers", async {
        let s = setup("", "").await;
        let relay = Relay::start(&s.hp.dir, &s.hp.sock);
        let h = adapter(HaproxySocket::Unix(relay.path.clone()));
        let (a, b) = (Upstream::start("A").await, Upstream::start("B").await);
        let t = table(
            1,
            &[("web-s1-1", a.addr, Serving), ("web-s2-2", b.addr, Serving)],
        );

        let r = h.reconcile_report(&t).await.expect("first pass");
        assert_eq!(
            r.commands.len(),
            2,
            "one add+enable request per server: {:?}",
            r.commands
        );
        assert!(
            r.commands[0].starts_with("add server web/rj-web-s1-1 "),
            "{:?}",
            r.commands
        );
        assert_eq!(
            r.in_flight,
            BTreeMap::from([("web-s1-1".to_string(), 0), ("web-s2-2".to_string(), 0)])
        );
        let servers = h.servers("web").await.unwrap();
        for (name, up) in [("rj-web-s1-1", &a), ("rj-web-s2-2", &b)] {
            let sv = find(&servers, name).unwrap_or_else(|| panic!("{name} missing: {servers:?}"));
            assert_eq!(sv.admin_state, 0, "{name} ready");
            assert_eq!(sv.socket_addr(), Some(up.addr));
        }

        let client = http();
        for _ in 0..20 {
            let (status, body) = get_body(&client, s.front, "/").await;
            assert_eq!(status, 200, "{body}");
            assert!(body == "A" || body == "B", "{body}");
        }
        assert_eq!(a.hits() + b.hits(), 20);
        assert!(
            a.hits() > 0 && b.hits() > 0,
            "round robin uses both: A {} B {}",
            a.hits(),
            b.hits()
        );

        relay.take();
        let r2 = h.reconcile_report(&t).await.expect("second pass");
        assert!(r2.commands.is_empty(), "{:?}", r2.commands);
        assert!(!r2.restarted);
        let sent = relay.take();
        assert!(!sent.is_empty());
        assert!(
            sent.iter().all(|l| l.starts_with("show ")),
            "an identical pass only reads: {sent:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_server_finishes_in_flight_gets_nothing_new_and_is_deleted() {
    bounded("drain", async {
        let s = setup("", "").await;
        let h = adapter(HaproxySocket::Unix(s.hp.sock.clone()));
        let (a, b) = (Upstream::start("A").await, Upstream::start("B").await);
        h.reconcile(&table(1, &[("a", a.addr, Serving)]))
            .await
            .unwrap();

        let client = http();
        let (c2, front) = (client.clone(), s.front);
        let slow = tokio::spawn(async move { get_body(&c2, front, "/slow").await });
        wait_for(
            "the slow request to reach A",
            Duration::from_secs(10),
            || async { (a.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(()) },
        )
        .await;

        // Switchover: B takes traffic, A drains.
        let v2 = table(2, &[("a", a.addr, Draining), ("b", b.addr, Serving)]);
        let r = h.reconcile_report(&v2).await.unwrap();
        assert!(
            r.commands
                .iter()
                .any(|c| c.starts_with("add server web/rj-b ")),
            "{:?}",
            r.commands
        );
        assert!(
            r.commands
                .contains(&"set server web/rj-a state drain".to_string()),
            "{:?}",
            r.commands
        );
        assert_eq!(
            r.in_flight.get("a"),
            Some(&1),
            "the slow request is in flight on A: {r:?}"
        );

        let a_before = a.hits();
        for _ in 0..15 {
            let (status, body) = get_body(&client, s.front, "/").await;
            assert_eq!(
                (status, body.as_str()),
                (200, "B"),
                "a draining server gets no new request"
            );
        }
        assert_eq!(a.hits(), a_before);
        assert_eq!(
            a.in_flight.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "still in flight"
        );

        a.release_slow();
        let (status, body) = slow.await.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "A"),
            "the in-flight request finished on A"
        );
        wait_for(
            "in_flight of a to reach 0",
            Duration::from_secs(10),
            || async {
                let r = h.reconcile(&v2).await.unwrap();
                (r.get("a") == Some(&0)).then_some(())
            },
        )
        .await;

        // Gone from the table: maint, then deleted.
        let v3 = table(3, &[("b", b.addr, Serving)]);
        let mut sent = Vec::new();
        let d = Deadline::new("rj-a to be deleted", Duration::from_secs(10));
        loop {
            sent.extend(h.reconcile_report(&v3).await.unwrap().commands);
            if find(&h.servers("web").await.unwrap(), "rj-a").is_none() {
                break;
            }
            d.tick().await;
        }
        assert!(
            sent.contains(&"set server web/rj-a state maint".to_string()),
            "{sent:?}"
        );
        assert!(
            sent.contains(&"del server web/rj-a".to_string()),
            "{sent:?}"
        );
        assert!(
            !sent.iter().any(|c| c.contains("rj-b")),
            "B untouched: {sent:?}"
        );
        assert_eq!(
            get_body(&client, s.front, "/").await,
            (200, "B".to_string())
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_change_is_a_new_server() {
    bounded("address change", async {
        let s = setup("", "").await;
        let h = adapter(HaproxySocket::Unix(s.hp.sock.clone()));
        let (old, new) = (Upstream::start("old").await, Upstream::start("new").await);
        h.reconcile(&table(1, &[("a", old.addr, Serving)]))
            .await
            .unwrap();
        let client = http();
        assert_eq!(
            get_body(&client, s.front, "/").await,
            (200, "old".to_string())
        );

        let t2 = table(2, &[("a", new.addr, Serving)]);
        let mut sent = Vec::new();
        let d = Deadline::new("rj-a at the new address", Duration::from_secs(10));
        loop {
            sent.extend(h.reconcile_report(&t2).await.unwrap().commands);
            let servers = h.servers("web").await.unwrap();
            if find(&servers, "rj-a")
                .is_some_and(|x| x.socket_addr() == Some(new.addr) && x.admin_state == 0)
            {
                break;
            }
            d.tick().await;
        }
        assert_eq!(
            sent.iter()
                .map(|c| c.split(' ').take(2).collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>(),
            ["set server", "set server", "del server", "add server"],
            "drain, maint, delete, add: {sent:?}"
        );
        for _ in 0..5 {
            assert_eq!(
                get_body(&client, s.front, "/").await,
                (200, "new".to_string())
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_servers_are_never_touched() {
    bounded("static servers", async {
        let st = Upstream::start("S").await;
        let tcp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let s = setup(
            &format!("    stats socket ipv4@{tcp} level admin"),
            &format!(
                "    server static-s {}\n    server static-off 127.0.0.1:9 disabled\n",
                st.addr
            ),
        )
        .await;
        // Over the TCP socket this time.
        let h = adapter(HaproxySocket::Tcp(tcp));
        let snapshot = |servers: &[ServerState]| {
            let mut v: Vec<_> = servers
                .iter()
                .filter(|x| x.name.starts_with("static"))
                .map(|x| {
                    (
                        x.name.clone(),
                        x.socket_addr(),
                        x.admin_state,
                        x.op_state,
                        x.id,
                    )
                })
                .collect();
            v.sort();
            v
        };
        let before = snapshot(&h.servers("web").await.unwrap());
        assert_eq!(before.len(), 2);
        assert_eq!(
            before[0].2,
            admin::FMAINT | admin::CMAINT,
            "static-off is disabled"
        );

        let a = Upstream::start("A").await;
        let mut sent = Vec::new();
        sent.extend(
            h.reconcile_report(&table(1, &[("a", a.addr, Serving)]))
                .await
                .unwrap()
                .commands,
        );
        sent.extend(
            h.reconcile_report(&table(2, &[("a", a.addr, Draining)]))
                .await
                .unwrap()
                .commands,
        );
        let d = Deadline::new("rj-a deleted", Duration::from_secs(10));
        loop {
            sent.extend(h.reconcile_report(&table(3, &[])).await.unwrap().commands);
            if find(&h.servers("web").await.unwrap(), "rj-a").is_none() {
                break;
            }
            d.tick().await;
        }
        // A table without the service at all: still nothing for the static servers.
        let empty = rejuv_core::api::RouteTable {
            epoch: 0,
            version: 4,
            services: BTreeMap::new(),
        };
        sent.extend(h.reconcile_report(&empty).await.unwrap().commands);
        assert!(
            sent.iter().any(|c| c.contains("rj-a")),
            "the adapter did work: {sent:?}"
        );
        assert!(!sent.iter().any(|c| c.contains("static")), "{sent:?}");
        assert_eq!(snapshot(&h.servers("web").await.unwrap()), before);
        let (status, body) = get_body(&http(), s.front, "/").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "S"),
            "the static server still serves"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_put_in_maintenance_by_an_operator_is_left_alone() {
    bounded("operator maint", async {
        let s = setup("", "").await;
        let relay = Relay::start(&s.hp.dir, &s.hp.sock);
        let h = adapter(HaproxySocket::Unix(relay.path.clone()));
        let (a, b) = (Upstream::start("A").await, Upstream::start("B").await);
        let t = table(1, &[("a", a.addr, Serving), ("b", b.addr, Serving)]);
        h.reconcile(&t).await.unwrap();

        let answer = raw_command(&s.hp.sock, "set server web/rj-a state maint")
            .await
            .unwrap();
        assert_eq!(answer.trim(), "", "operator's command accepted");
        relay.take();
        for pass in 0..3 {
            let r = h.reconcile_report(&t).await.unwrap();
            assert!(r.commands.is_empty(), "pass {pass}: {:?}", r.commands);
            assert_eq!(
                r.operator_maint,
                vec!["web/rj-a".to_string()],
                "pass {pass}"
            );
        }
        // Draining it while the operator holds it changes nothing either.
        let t2 = table(2, &[("a", a.addr, Draining), ("b", b.addr, Serving)]);
        assert!(h.reconcile_report(&t2).await.unwrap().commands.is_empty());
        let sent = relay.take();
        assert!(sent.iter().all(|l| l.starts_with("show ")), "{sent:?}");
        let servers = h.servers("web").await.unwrap();
        assert_eq!(find(&servers, "rj-a").unwrap().admin_state, admin::FMAINT);
        let client = http();
        for _ in 0..6 {
            assert_eq!(
                get_body(&client, s.front, "/").await,
                (200, "B".to_string())
            );
        }
        assert_eq!(a.hits(), 0);

        // The operator hands it back: rejuv manages it again, without sending anything.
        raw_command(&s.hp.sock, "set server web/rj-a state ready")
            .await
            .unwrap();
        let r = h.reconcile_report(&t).await.unwrap();
        assert!(
            r.commands.is_empty() && r.operator_maint.is_empty(),
            "{r:?}"
        );
        for _ in 0..6 {
            assert_eq!(get_body(&client, s.front, "/").await.0, 200);
        }
        assert!(a.hits() > 0, "A serves again");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_haproxy_is_put_right_by_the_loop() {
    bounded("restart", async {
        let mut s = setup("", "").await;
        let h = adapter(HaproxySocket::Unix(s.hp.sock.clone()));
        let (a, b) = (Upstream::start("A").await, Upstream::start("B").await);
        let t = table(7, &[("a", a.addr, Serving), ("b", b.addr, Serving)]);
        let (routes_tx, routes_rx) = tokio::sync::watch::channel(t.clone());
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(reconcile_haproxy(
            h.clone(),
            routes_rx,
            tx,
            shutdown.clone(),
        ));

        let synced = |rx: &mut tokio::sync::mpsc::Receiver<Msg>| {
            let mut got = None;
            while let Ok(m) = rx.try_recv() {
                if let Msg::Event(Event::TrafficSynced { version, in_flight }) = m {
                    got = Some((version, in_flight));
                }
            }
            got
        };
        let expected = BTreeMap::from([("a".to_string(), 0), ("b".to_string(), 0)]);
        let d = Deadline::new("a first TrafficSynced", Duration::from_secs(10));
        while synced(&mut rx).is_none() {
            d.tick().await;
        }
        let client = http();
        assert_eq!(get_body(&client, s.front, "/").await.0, 200);

        let old_pid = s.hp.pid();
        s.hp.restart().await;
        assert_ne!(s.hp.pid(), old_pid);
        // Drop the syncs from before the restart; then wait for servers and traffic.
        let _ = synced(&mut rx);
        let mut bodies = Vec::new();
        let d = Deadline::new("both servers back and serving", Duration::from_secs(20));
        loop {
            if let Ok(servers) = h.servers("web").await {
                let ready = ["rj-a", "rj-b"]
                    .iter()
                    .all(|n| find(&servers, n).is_some_and(|x| x.admin_state == 0));
                if ready {
                    let (status, body) = get_body(&client, s.front, "/").await;
                    if status == 200 {
                        bodies.push(body);
                        break;
                    }
                }
            }
            d.tick().await;
        }
        let d = Deadline::new("a TrafficSynced after the restart", Duration::from_secs(10));
        let (version, in_flight) = loop {
            if let Some(got) = synced(&mut rx) {
                break got;
            }
            d.tick().await;
        };
        assert_eq!(version, 7);
        assert_eq!(in_flight, expected);
        for _ in 0..6 {
            let (status, body) = get_body(&client, s.front, "/").await;
            assert_eq!(status, 200);
            bodies.push(body);
        }
        assert!(
            bodies.iter().any(|x| x == "A") && bodies.iter().any(|x| x == "B"),
            "{bodies:?}"
        );

        // A table change reaches HAProxy through the loop as well.
        routes_tx.send_replace(table(8, &[("b", b.addr, Serving)]));
        wait_for(
            "rj-a gone after the table change",
            Duration::from_secs(10),
            || async {
                let servers = h.servers("web").await.ok()?;
                find(&servers, "rj-a").is_none().then_some(())
            },
        )
        .await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the loop stops on shutdown")
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_addresses_are_refused_before_sending() {
    bounded("validation", async {
        let s = setup("", "").await;
        let relay = Relay::start(&s.hp.dir, &s.hp.sock);
        let h = adapter(HaproxySocket::Unix(relay.path.clone()));
        let good: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let zoned: SocketAddr = "[fe80::1%2]:8080".parse().unwrap();
        for (id, addr, needle) in [
            ("a;b", good, "a;b"),
            ("a b", good, "a b"),
            ("a\nshow info", good, "show info"),
            ("ok", zoned, "fe80::1%2"),
        ] {
            let e = h
                .reconcile(&table(1, &[("fine", good, Serving), (id, addr, Serving)]))
                .await
                .expect_err("refused");
            assert!(matches!(e, HaproxyError::InvalidArgument { .. }), "{e}");
            assert!(
                e.to_string().contains(needle),
                "the error names the value: {e}"
            );
        }
        let e = h
            .command("show info; shutdown sessions server web/x")
            .await
            .unwrap_err();
        assert!(matches!(e, HaproxyError::InvalidArgument { .. }), "{e}");
        let bad_backend = Haproxy::new(HaproxyConfig::new(
            HaproxySocket::Unix(relay.path.clone()),
            BTreeMap::from([("web".to_string(), "web; del server web/x".to_string())]),
        ));
        assert!(matches!(
            bad_backend.reconcile(&table(1, &[])).await,
            Err(HaproxyError::InvalidArgument { .. })
        ));
        assert!(matches!(
            h.servers("web x").await,
            Err(HaproxyError::InvalidArgument { .. })
        ));
        assert_eq!(
            relay.connections(),
            0,
            "nothing was sent: {:?}",
            relay.take()
        );

        // The same adapter with a valid table does talk to HAProxy.
        h.reconcile(&table(2, &[("fine", good, Serving)]))
            .await
            .unwrap();
        assert!(relay.connections() > 0);
        // An unknown backend is HAProxy's refusal, reported as such.
        let e = h.servers("nosuch").await.unwrap_err();
        assert!(matches!(e, HaproxyError::Refused { .. }), "{e}");
    })
    .await;
}

/// `deploy/haproxy/haproxy.cfg`, with its socket, state-file paths and port substituted,
/// passes `haproxy -c`, starts, and serves through servers the adapter adds with checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_config_is_valid_and_serves() {
    bounded("example config", async {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/haproxy/haproxy.cfg");
        let mut cfg = std::fs::read_to_string(&path).expect("deploy/haproxy/haproxy.cfg");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let state = dir.path().join("server-state");
        std::fs::write(&state, "").unwrap();
        for (from, to) in [
            (
                "/run/haproxy/admin.sock",
                dir.path().join("admin.sock").display().to_string(),
            ),
            ("/var/lib/haproxy/server-state", state.display().to_string()),
            ("bind 127.0.0.1:8080", format!("bind 127.0.0.1:{port}")),
        ] {
            assert!(
                cfg.contains(from),
                "the example no longer contains {from:?}"
            );
            cfg = cfg.replace(from, &to);
        }
        let file = dir.path().join("check.cfg");
        std::fs::write(&file, &cfg).unwrap();
        let out = std::process::Command::new(HAPROXY)
            .arg("-c")
            .arg("-f")
            .arg(&file)
            .output()
            .expect("run haproxy -c");
        assert!(
            out.status.success(),
            "haproxy -c rejects the example:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let hp = HaproxyProc::start(dir.path(), &cfg).await;
        let mut hc = HaproxyConfig::new(
            HaproxySocket::Unix(hp.sock.clone()),
            BTreeMap::from([("web".to_string(), "be_web".to_string())]),
        );
        hc.health_check = Some(HealthCheck {
            inter: Duration::from_millis(300),
            rise: 1,
            fall: 2,
        });
        let h = Haproxy::new(hc);
        let a = Upstream::start("A").await;
        let r = h
            .reconcile_report(&table(1, &[("web-s1-1", a.addr, Serving)]))
            .await
            .unwrap();
        assert_eq!(r.commands.len(), 1, "{:?}", r.commands);
        assert!(
            r.commands[0].contains(" check inter 300ms rise 1 fall 2; enable health "),
            "{:?}",
            r.commands
        );
        let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let client = http();
        wait_for(
            "a 200 from A through the example config",
            Duration::from_secs(10),
            || async {
                let (status, body) = get_body(&client, front, "/").await;
                (status == 200 && body == "A").then_some(())
            },
        )
        .await;
        let servers = h.servers("be_web").await.unwrap();
        let sv = find(&servers, "rj-web-s1-1").unwrap();
        assert_eq!(
            (sv.admin_state, sv.op_state),
            (0, 2),
            "ready and running: {sv:?}"
        );
        assert_eq!(
            sv.check_state & 0x06,
            0x06,
            "checks configured and enabled: {sv:?}"
        );
        drop(hp);
    })
    .await;
}
