//! Integration tests of the agent's Docker layer against this machine's real Docker Engine
//! (`/var/run/docker.sock`), with images each test builds itself `FROM scratch`.
//! One binary, modules by theme; every test cleans up what it made, also when it fails.

mod common;
mod connect;
mod image;
mod lifecycle;
