//! keygate: an API-key authentication gateway.
//!
//! The data plane lives in [`proxy`] and [`auth`], keys and users in [`store`], connection handling in [`server`], configuration in
//! [`config`], and the status listener in [`status`]. [`app`] wires them together.

pub mod admin;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod echo;
pub mod events;
pub mod proxy;
pub mod server;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod usage;
