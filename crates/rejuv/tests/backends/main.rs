//! Integration tests of the agent's instance backends with real agent processes: adoption of
//! process and container instances after an agent restart, orphan clean-up, and the systemd
//! backend against a real systemd (PID 1 of a container this test starts).
//! One binary, modules by theme.

mod adopt_docker;
mod adopt_process;
mod common;
mod systemd;
