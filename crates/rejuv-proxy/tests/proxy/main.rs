//! Integration tests of the builtin proxy: real HTTP on 127.0.0.1, real (tiny) backends,
//! reqwest or a hand-driven connection as the client. Modules by theme.

mod admin;
mod connections;
mod drain;
mod hold;
mod retry;
mod routing;
mod shutdown;
mod support;
