//! The subcommands of `lumen`, one module each: its flags and what it runs.

pub mod agent;
pub mod auth;
pub mod backup;
pub mod config;
pub mod rules;
pub mod server;
