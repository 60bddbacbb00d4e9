//! Integration tests of the agent: real agents on loopback port 0, real service processes.
//! One binary, modules by theme.

mod api;
mod common;
mod connections;
mod instances;
mod isolation;
mod rejuvenation;
