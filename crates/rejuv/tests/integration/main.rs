//! Integration tests of the whole loop with real processes on loopback: `rejuv agent`,
//! `rejuv proxy` and `rejuv controller`, an aging sample service, and a bounded load.

mod harness;

mod alert_block;
mod alerts;
mod dashboard;
mod errors;
mod etcd;
mod failover;
mod failures;
mod hijack;
mod hostile_agent;
mod join;
mod lost_store;
mod operator;
mod reload;
mod resume;
mod roles;
mod scrape;
mod why;
mod workflow;
