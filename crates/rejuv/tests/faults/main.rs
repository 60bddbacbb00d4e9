//! Fault injection with real processes: the whole loop (agents, builtin proxy, controller,
//! an aging sample service and a bounded load) while the network drops packets, an agent
//! hangs, the controller's disk fills up or its wall clock jumps. Scenarios that change
//! iptables rules or mounts re-run themselves inside `unshare -n -m` so nothing leaks into
//! the host or into another scenario. Every scenario checks the same invariants throughout
//! (see `invariants`).

#[path = "../integration/harness.rs"]
#[allow(dead_code)]
mod harness;

mod common;
mod invariants;

mod clock;
mod disk;
#[cfg(feature = "etcd")]
mod etcd;
mod hang;
mod network;
