//! Cairn's data node: the HTTP/JSON API in front of the log and the store.
//!
//! - [`node`]: starting and stopping a node.
//! - `routes`: one module per group of routes of the README's API table
//!   ("HTTP API (v1)").
//! - `auth`: bearer tokens, roles, and sessions bound to who opened them.
//! - `error`: the JSON error contract.
//! - `extract`: bodies, JSON and query parameters, checked at the edge.
//! - `metrics`: Prometheus text at `/metrics`.
//! - [`http`]: serving connections within bounds (count, header and body
//!   timeouts, idle timeout).
//!
//! Handlers never write to the store themselves: every change is an [`Op`]
//! proposed through the log, which is what makes the same API replicated once
//! the log is.
//!
//! [`Op`]: cairn_storage::Op

mod auth;
mod console;
mod error;
mod extract;
pub mod http;
mod metrics;
pub mod node;
mod routes;
mod state;

pub use node::{Node, NodeConfig};
