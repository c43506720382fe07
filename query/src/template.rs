//! Go's `text/template`, shared by LogQL's `line_format` and `label_format` stages and by the
//! labels and annotations of Prometheus alerting rules.
//!
//! One engine, two [`Dialect`]s. They parse the same language and differ in the functions that
//! exist (an unknown function is a parse error) and in a few rules:
//!
//! - **Loki** ([`Template::parse`], run by [`Template::render`]): dot is the entry's label set, read
//!   one label at a time (`.name`, a missing label is the empty string); `.` itself cannot be a
//!   value at the top of a template. Functions: Go `strings`, Sprig string, math, regex, encoding
//!   and date helpers, `__line__`, `__timestamp__`. Comparisons turn numeric strings into numbers.
//! - **Prometheus** ([`Template::parse_prometheus`], run by [`Template::execute`]): dot and the
//!   variables are [`Value`]s given in [`Data`]; `$labels`, `$value`, `$externalLabels` and
//!   `$externalURL` are declared in advance. Functions: the `funcMap` of Prometheus'
//!   `template/template.go` (`query`, `humanize`, ...); `query` calls back into a [`Host`].
//!   Comparisons are Go's (a string never equals a number), except that integers and floats
//!   compare by value where Go would refuse.
//!
//! The language: text and `{{ }}` actions with `{{-`/`-}}` trimming and `{{/* comments */}}`;
//! string, raw string, character, number, `true`/`false`/`nil` literals; pipelines, function calls
//! and parenthesized pipelines; `.`, `.a.b`, `$x.a.b`, `(pipeline).a.b` (a missing map key reads as
//! the zero value); variables (`$x := p`, `$x = p`, `$`), scoped as in Go; `if`/`else if`/`else`,
//! `with`/`else with`/`else`, `range` over lists, maps (in key order) and integers, with `else`,
//! `break` and `continue`; `define`, `template` and `block`; and the methods of times and durations
//! that Prometheus templates call (`Format`, `Unix`, `UnixMilli`, `Add`, `Sub`, `String`,
//! `Seconds`, ...).
//!
//! Not supported: custom delimiters, methods other than those, function values (`call` renders as
//! the empty string), `html/template` escaping, and Prometheus' native histograms.
//!
//! **Limits:** execution stops with an error after [`MAX_OUTPUT_BYTES`] of output (or a larger
//! intermediate string), [`MAX_CALL_DEPTH`] nested template calls, [`MAX_STEPS`] executed actions
//! and loop iterations, or nesting deeper than [`MAX_NESTING`] levels in the source; so no template
//! can hang the server or overflow its stack.
//!
//! - `lex`: text, actions and tokens.
//! - `parse`: the node tree, named templates, variable scopes.
//! - `exec`: execution, fields and methods, the limits.
//! - `funcs`: the builtins and the two function sets.
//! - `format`: Go's `fmt` verbs and printing of values, times and durations.

mod exec;
mod format;
mod funcs;
mod lex;
mod parse;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::template::exec::{Dot, Exec};
use crate::template::funcs::Env;
pub use crate::template::funcs::parse_prometheus_duration;
use crate::template::parse::Node;

pub(crate) use crate::template::format::go_quote;

/// The most output one execution may produce, in bytes.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// The deepest chain of `template` (and `tmpl`) calls.
pub const MAX_CALL_DEPTH: usize = 100;
/// The most actions and loop iterations one execution may run.
pub const MAX_STEPS: usize = 1_000_000;
/// The deepest nesting of control structures and parentheses in a template's source.
pub const MAX_NESTING: usize = 100;

/// Which functions a template may call and how it sees its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// LogQL's `line_format` and `label_format`.
    Loki,
    /// The labels and annotations of Prometheus alerting rules.
    Prometheus,
}

/// A template value.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A point in time, in nanoseconds since the Unix epoch (UTC).
    Time(i64),
    /// A span of time in nanoseconds (Go's `time.Duration`).
    Duration(i64),
    /// No value: an action prints it as `<no value>`, `printf "%v"` as `<nil>`.
    #[default]
    Nil,
    Map(BTreeMap<String, Value>),
    List(Vec<Value>),
}

impl Value {
    /// A map of strings, such as a label set.
    pub fn string_map(pairs: impl IntoIterator<Item = (String, String)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (k, Value::Str(v))).collect())
    }

    /// One sample of a query result as Prometheus templates see it: `{Labels: {..}, Value: v}`.
    pub fn sample(labels: impl IntoIterator<Item = (String, String)>, value: f64) -> Value {
        let mut m = BTreeMap::new();
        m.insert("Labels".to_string(), Value::string_map(labels));
        m.insert("Value".to_string(), Value::Float(value));
        Value::Map(m)
    }
}

/// Prints the value as a template action does (Go's `fmt.Sprint`; nil is `<no value>`).
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        format::write_value(&mut s, self);
        f.write_str(&s)
    }
}

/// What a Prometheus template may call back into.
pub trait Host {
    /// Runs an instant query (PromQL or LogQL, the host decides) at the evaluation time; each
    /// sample is a [`Value::sample`] map `{Labels: Map, Value: Float}`.
    ///
    /// # Errors
    ///
    /// A message for the template's error when the query fails.
    fn query(&self, q: &str) -> Result<Vec<Value>, String>;
}

/// The data of one [`Template::execute`].
#[derive(Default)]
pub struct Data<'a> {
    /// Dot at the start (for alerting rules, `{Labels, ExternalLabels, ExternalURL, Value}`).
    pub dot: Value,
    /// Variables visible at the top level as if declared there, such as `("$labels", Map)`,
    /// `("$value", Float)`, `("$externalLabels", Map)`, `("$externalURL", Str)`; the `$` may be
    /// left out.
    pub vars: Vec<(String, Value)>,
    /// Answers `query`; without one, `query` fails.
    pub host: Option<&'a dyn Host>,
    /// The evaluation time (`now`), in ms since the Unix epoch.
    pub now_ms: i64,
    /// `externalURL`.
    pub external_url: String,
    /// `pathPrefix`: the path of the external URL.
    pub path_prefix: String,
}

/// A parsed template, ready to be run many times.
#[derive(Debug, Clone)]
pub struct Template {
    dialect: Dialect,
    nodes: Vec<Node>,
    defines: HashMap<String, Vec<Node>>,
    literal: Option<String>,
}

impl Template {
    /// Parses a Loki (LogQL `line_format`/`label_format`) template.
    ///
    /// # Errors
    ///
    /// What is wrong and at which byte offset.
    pub fn parse(src: &str) -> Result<Template, String> {
        Template::parse_dialect(src, Dialect::Loki)
    }

    /// Parses a Prometheus alerting-rule template.
    ///
    /// # Errors
    ///
    /// What is wrong and at which byte offset.
    pub fn parse_prometheus(src: &str) -> Result<Template, String> {
        Template::parse_dialect(src, Dialect::Prometheus)
    }

    /// Parses a template of the given dialect.
    ///
    /// # Errors
    ///
    /// What is wrong and at which byte offset.
    pub fn parse_dialect(src: &str, dialect: Dialect) -> Result<Template, String> {
        let parsed = parse::parse(src, dialect)?;
        let literal = if parsed.nodes.iter().all(|n| matches!(n, Node::Text(_))) {
            let mut s = String::new();
            for n in &parsed.nodes {
                if let Node::Text(t) = n {
                    s.push_str(t);
                }
            }
            Some(s)
        } else {
            None
        };
        Ok(Template { dialect, nodes: parsed.nodes, defines: parsed.defines, literal })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// True when the template has no actions (it renders to constant text).
    pub fn is_literal(&self) -> bool {
        self.literal.is_some()
    }

    /// Renders the template for one log entry. `lookup(name)` gives the value of `.name`, `line`
    /// is the log line (`__line__`) and `ts_ns` the entry time in ns (`__timestamp__`).
    ///
    /// # Errors
    ///
    /// The first execution error, such as a failing function or an exceeded limit.
    pub fn render(&self, line: &str, ts_ns: i64, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        if let Some(s) = &self.literal {
            return Ok(s.clone());
        }
        let env =
            Env { line, ts: ts_ns, host: None, now_ms: ts_ns.div_euclid(1_000_000), external_url: "", path_prefix: "" };
        let mut vars = Vec::new();
        self.predeclare(&mut vars);
        Exec::new(self, env, Some(lookup), Dot::Labels, vars).run_main()
    }

    /// Runs the template on `data` (the way Prometheus expands alerting-rule templates).
    ///
    /// # Errors
    ///
    /// The first execution error, such as a failing function or query, or an exceeded limit.
    pub fn execute(&self, data: &Data) -> Result<String, String> {
        if let Some(s) = &self.literal {
            return Ok(s.clone());
        }
        let env = Env {
            line: "",
            ts: data.now_ms.saturating_mul(1_000_000),
            host: data.host,
            now_ms: data.now_ms,
            external_url: &data.external_url,
            path_prefix: &data.path_prefix,
        };
        let mut vars = Vec::new();
        self.predeclare(&mut vars);
        for (name, v) in &data.vars {
            let name = if name.starts_with('$') { name.clone() } else { format!("${name}") };
            vars.push((name, Dot::Val(v.clone())));
        }
        Exec::new(self, env, None, Dot::Val(data.dot.clone()), vars).run_main()
    }

    /// The variables the dialect declares in advance, as nil until given.
    fn predeclare(&self, vars: &mut Vec<(String, Dot)>) {
        if self.dialect == Dialect::Prometheus {
            vars.extend(parse::PROMETHEUS_VARS.iter().map(|v| (v.to_string(), Dot::Val(Value::Nil))));
        }
    }
}
