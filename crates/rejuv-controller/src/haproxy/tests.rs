//! The parsers on captured HAProxy answers, the planner on captured states, and the argument
//! checks.

use super::args::{check_addr, check_command, check_name};
use super::config::{HaproxyConfig, HaproxySocket};
use super::error::HaproxyError;
use super::plan::{plan_backend, Change};
use super::state::{admin, parse_servers_state, parse_stat_sessions};
use rejuv_core::api::{Backend, BackendState};
use std::collections::BTreeMap;
/// Captured from HAProxy 2.6.12: a static server `disabled` in the configuration, a
/// dynamic server just added (0x01), one enabled and draining (0x08), one with checks
/// enabled (check state 6), an IPv6 one.
const STATE: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 web 1 static1 127.0.0.1 0 5 1 1 15 1 0 0 8 0 0 0 - 9 - 0 0 - - 0
3 web 2 rj-a 127.0.0.1 2 8 1 1 1 1 0 0 0 0 0 0 - 8001 - 0 0 - - 0
3 web 3 rj-b 127.0.0.1 0 1 1 1 1 1 0 0 0 0 0 0 - 8002 - 0 0 - - 0
3 web 4 rj-y 127.0.0.1 2 0 1 1 1 6 3 3 6 0 0 0 - 8101 - 0 0 - - 0
3 web 6 rj-e ::1 0 1 1 1 0 1 0 0 0 0 0 0 - 8005 - 0 0 - - 0

";

const STAT: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight
web,static1,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1
web,rj-a,0,0,1,1,,4,246,345,,0,,0,0,0,0,DRAIN,1
web,rj-y,2,3,5,5,,0,0,0,,0,,0,0,0,0,UP,1

";

#[test]
fn parses_captured_servers_state() {
    let s = parse_servers_state("show servers state web", STATE).unwrap();
    assert_eq!(s.len(), 5);
    assert_eq!(s[0].name, "static1");
    assert_eq!(s[0].admin_state, admin::FMAINT | admin::CMAINT);
    assert!(s[0].forced_maint());
    assert_eq!(s[1].name, "rj-a");
    assert_eq!(s[1].socket_addr(), Some("127.0.0.1:8001".parse().unwrap()));
    assert!(s[1].draining() && !s[1].in_maint());
    assert_eq!(s[1].op_state, 2);
    assert!(
        s[2].forced_maint(),
        "a just-added server is in forced maintenance"
    );
    assert_eq!(s[3].check_state, 6);
    assert_eq!(s[4].socket_addr(), Some("[::1]:8005".parse().unwrap()));
    assert_eq!(
        (s[4].backend_id, s[4].id, s[4].backend.as_str()),
        (3, 6, "web")
    );
}

#[test]
fn state_errors_are_refusals_or_parse_errors() {
    let e = parse_servers_state("show servers state nope", "Can't find backend.\n\n");
    assert!(
        matches!(e, Err(HaproxyError::Refused { ref answer, .. }) if answer == "Can't find backend.")
    );
    let bad = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_port\n3 web x s 1.2.3.4 0 0 80\n";
    assert!(matches!(
        parse_servers_state("c", bad),
        Err(HaproxyError::Parse { .. })
    ));
    let short = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_port\n3 web 1 s\n";
    assert!(matches!(
        parse_servers_state("c", short),
        Err(HaproxyError::Parse { .. })
    ));
}

#[test]
fn parses_stat_sessions() {
    let m = parse_stat_sessions("show stat web 4 -1", STAT).unwrap();
    assert_eq!(m["static1"], (0, 0));
    assert_eq!(m["rj-a"], (1, 0));
    assert_eq!(m["rj-y"], (5, 2));
    assert!(matches!(
        parse_stat_sessions("show stat x 4 -1", "No such proxy.\n"),
        Err(HaproxyError::Refused { .. })
    ));
}

fn backend(id: &str, addr: &str, state: BackendState) -> Backend {
    Backend {
        id: id.into(),
        addr: addr.parse().unwrap(),
        state,
    }
}

#[test]
fn plan_follows_the_table_and_skips_foreign_servers() {
    let mut servers = parse_servers_state("c", STATE).unwrap();
    servers[1].sessions = 0; // rj-a draining, idle
    let a = backend("a", "127.0.0.1:8001", BackendState::Serving);
    let b = backend("b", "127.0.0.1:8002", BackendState::Serving);
    let n = backend("n", "127.0.0.1:8009", BackendState::Serving);
    let d = backend("d", "127.0.0.1:8010", BackendState::Draining);
    let want: BTreeMap<String, &Backend> = [("a", &a), ("b", &b), ("n", &n), ("d", &d)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    // rj-b is in forced maintenance and not rejuv's: an operator's.
    let plan = plan_backend("rj-", false, &servers, &want, |_| false);
    assert_eq!(plan.operator_maint, vec!["rj-b".to_string()]);
    assert_eq!(
        plan.changes,
        vec![
            Change::Add {
                server: "rj-n".into(),
                addr: n.addr
            },
            Change::Ready {
                server: "rj-a".into()
            },
            // rj-y (ready) absent from the table: drain first.
            Change::Drain {
                server: "rj-y".into()
            },
            // rj-e in maintenance, absent, idle: delete.
            Change::Delete {
                server: "rj-e".into(),
                already_maint: true,
                readd: None
            },
        ]
    );
    assert!(
        !plan
            .changes
            .iter()
            .any(|c| format!("{c:?}").contains("static1")),
        "a static server is never touched"
    );
    // The same maintenance, remembered as rejuv's own: enabled.
    let plan = plan_backend("rj-", false, &servers, &want, |n| n == "rj-b");
    assert!(plan.operator_maint.is_empty());
    assert!(plan.changes.contains(&Change::Ready {
        server: "rj-b".into()
    }));
}

#[test]
fn address_change_drains_then_replaces() {
    let mut servers = parse_servers_state("c", STATE).unwrap();
    let moved = backend("y", "127.0.0.1:9999", BackendState::Serving);
    let want: BTreeMap<String, &Backend> = [("y".to_string(), &moved)].into();
    servers.retain(|s| s.name == "rj-y");
    let plan = plan_backend("rj-", false, &servers, &want, |_| false);
    assert_eq!(
        plan.changes,
        vec![Change::Drain {
            server: "rj-y".into()
        }]
    );
    servers[0].admin_state = admin::FDRAIN;
    servers[0].sessions = 1;
    let plan = plan_backend("rj-", false, &servers, &want, |_| false);
    assert!(plan.changes.is_empty(), "waits for the sessions to end");
    servers[0].sessions = 0;
    let plan = plan_backend("rj-", false, &servers, &want, |_| false);
    assert_eq!(
        plan.changes,
        vec![Change::Delete {
            server: "rj-y".into(),
            already_maint: false,
            readd: Some(moved.addr)
        }]
    );
}

#[test]
fn one_backend_per_service() {
    let cfg = HaproxyConfig::new(
        HaproxySocket::Tcp("127.0.0.1:1".parse().unwrap()),
        BTreeMap::from([("a".into(), "be".into()), ("b".into(), "be".into())]),
    );
    assert!(matches!(
        cfg.validate(),
        Err(HaproxyError::InvalidArgument {
            reason: "mapped to two services",
            ..
        })
    ));
}

#[test]
fn strict_names_addresses_and_commands() {
    for ok in ["web", "rj-web-s1-1", "be_web.v2", "9a"] {
        assert!(check_name("n", ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "a;b",
        "a b",
        "a\nb",
        "-x",
        "a/b",
        "a\\b",
        "é",
        &"x".repeat(101),
    ] {
        assert!(check_name("n", bad).is_err(), "{bad:?}");
    }
    assert!(check_addr(&"127.0.0.1:80".parse().unwrap()).is_ok());
    assert!(check_addr(&"[::1]:80".parse().unwrap()).is_ok());
    assert!(check_addr(&"[fe80::1%2]:80".parse().unwrap()).is_err());
    assert!(check_addr(&"127.0.0.1:0".parse().unwrap()).is_err());
    assert!(check_command("show info").is_ok());
    for bad in [
        "show info; shutdown sessions",
        "show info\n",
        "",
        "a\\;b",
        "x # y",
    ] {
        assert!(check_command(bad).is_err(), "{bad:?}");
    }
}
