//! Integration tests of the sample service and the load generator, over real HTTP on
//! 127.0.0.1 port 0. One binary, modules by theme. (RSS growth has its own binary, `rss.rs`,
//! because it measures the whole process.)

mod common;
mod loadgen;
mod process;
mod service;
