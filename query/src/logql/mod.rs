//! LogQL, Grafana Loki's query language: parsing ([`parse`]), log pipelines, and evaluation over the
//! store ([`Engine`]).
//!
//! - `ast`: the syntax tree, printed back canonically for `/loki/api/v1/format_query`.
//! - `parser`: lexer and recursive-descent parser with positioned errors.
//! - `extract`: line parsers (json, logfmt, pattern, unpack), durations, sizes, level detection.
//! - `template`: re-exports [`crate::template`], the Go templates of `line_format` and `label_format`.
//! - `pipeline`: one entry through the stages.
//! - `eval`: selections on every core, range and vector aggregations, binary operations.

pub mod ast;
pub mod eval;
pub mod extract;
pub mod parser;
pub mod pipeline;

#[cfg(test)]
mod tests;

pub use crate::template;
pub use ast::Expr;
pub use eval::{Direction, Engine, EntryOut, Limits, QueryError, QueryParams, QueryValue, Stats, StreamOut};
pub use parser::{ParseError, parse, parse_duration_ns};
