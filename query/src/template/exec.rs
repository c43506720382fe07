//! The executor: walks the tree with a dot and a stack of variables, under the output, depth and
//! step limits.

use std::borrow::Cow;

use regex::Regex;

use crate::template::format::{duration_string, go_format_time, time_string, to_str, type_name, write_value};
use crate::template::funcs::{self, Env, map_zero, truthy};
use crate::template::parse::{Cmd, Node, Operand, Pipeline, TemplateArg};
use crate::template::{Dialect, MAX_CALL_DEPTH, MAX_NESTING, MAX_OUTPUT_BYTES, MAX_STEPS, Template, Value};

/// Reads one label of Loki's label set.
type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

const LABELS_ERR: &str = "'.' (the whole label map) is not supported";

/// What dot (or a variable) holds: Loki's label set, read one label at a time through the lookup
/// function, or a value.
#[derive(Debug, Clone)]
pub(super) enum Dot {
    Labels,
    Val(Value),
}

enum Flow {
    Normal,
    Break,
    Continue,
}

pub(super) struct Exec<'a> {
    tpl: &'a Template,
    env: Env<'a>,
    lookup: Option<Lookup<'a>>,
    /// `$`: the data the running template started with.
    root: Dot,
    /// Other variables in scope, innermost last.
    vars: Vec<(String, Dot)>,
    calls: usize,
    nesting: usize,
    written: usize,
    steps: usize,
}

impl<'a> Exec<'a> {
    pub(super) fn new(
        tpl: &'a Template,
        env: Env<'a>,
        lookup: Option<Lookup<'a>>,
        root: Dot,
        vars: Vec<(String, Dot)>,
    ) -> Self {
        Exec { tpl, env, lookup, root, vars, calls: 0, nesting: 0, written: 0, steps: 0 }
    }

    /// Runs the main template with the root data as dot.
    pub(super) fn run_main(&mut self) -> Result<String, String> {
        let mut out = String::new();
        let (tpl, dot) = (self.tpl, self.root.clone());
        self.run(&tpl.nodes, &dot, &mut out)?;
        Ok(out)
    }

    fn emitted(&mut self, n: usize) -> Result<(), String> {
        self.written += n;
        if self.written > MAX_OUTPUT_BYTES {
            return Err(format!("template output exceeds the limit of {MAX_OUTPUT_BYTES} bytes"));
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(format!("template execution exceeds the limit of {MAX_STEPS} steps"));
        }
        Ok(())
    }

    fn nest(&mut self) -> Result<(), String> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING * 3 {
            return Err(format!("template execution nested deeper than {} levels", MAX_NESTING * 3));
        }
        Ok(())
    }

    /// Runs a list of nodes; the variables it declares end with it.
    fn run(&mut self, nodes: &'a [Node], dot: &Dot, out: &mut String) -> Result<Flow, String> {
        self.nest()?;
        let mark = self.vars.len();
        let flow = self.run_nodes(nodes, dot, out)?;
        self.vars.truncate(mark);
        self.nesting -= 1;
        Ok(flow)
    }

    fn run_nodes(&mut self, nodes: &'a [Node], dot: &Dot, out: &mut String) -> Result<Flow, String> {
        for node in nodes {
            self.step()?;
            match node {
                Node::Text(t) => {
                    out.push_str(t);
                    self.emitted(t.len())?;
                }
                Node::Action(p) => {
                    let v = self.eval_cmds(p, dot)?;
                    if p.decl.is_empty() {
                        let before = out.len();
                        write_value(out, &v);
                        self.emitted(out.len() - before)?;
                    } else {
                        self.bind(p, v)?;
                    }
                }
                Node::If { with, branches, otherwise } => {
                    let mark = self.vars.len();
                    let mut taken = None;
                    for (cond, body) in branches {
                        let v = self.eval_cmds(cond, dot)?;
                        if !cond.decl.is_empty() {
                            self.bind(cond, v.clone())?;
                        }
                        if truthy(&v) {
                            taken = Some(if *with {
                                self.run(body, &Dot::Val(v), out)?
                            } else {
                                self.run(body, dot, out)?
                            });
                            break;
                        }
                    }
                    let flow = match taken {
                        Some(flow) => flow,
                        None => self.run(otherwise, dot, out)?,
                    };
                    self.vars.truncate(mark);
                    if !matches!(flow, Flow::Normal) {
                        return Ok(flow);
                    }
                }
                Node::Range { pipe, body, otherwise } => self.range(pipe, body, otherwise, dot, out)?,
                Node::Template { name, arg } => {
                    let data = match arg {
                        TemplateArg::None => Dot::Val(Value::Nil),
                        TemplateArg::Dot => dot.clone(),
                        TemplateArg::Pipe(p) => Dot::Val(self.eval_cmds(p, dot)?),
                    };
                    self.call_template(name, data, out)?;
                }
                Node::Break => return Ok(Flow::Break),
                Node::Continue => return Ok(Flow::Continue),
            }
        }
        Ok(Flow::Normal)
    }

    fn range(
        &mut self,
        pipe: &'a Pipeline,
        body: &'a [Node],
        otherwise: &'a [Node],
        dot: &Dot,
        out: &mut String,
    ) -> Result<(), String> {
        let v = self.eval_cmds(pipe, dot)?;
        if matches!(v, Value::Int(_)) && pipe.decl.len() > 1 {
            return Err("can't use two variables when ranging over an int".into());
        }
        let items: Box<dyn Iterator<Item = (Value, Value)>> = match v {
            Value::List(l) => Box::new(l.into_iter().enumerate().map(|(i, e)| (Value::Int(i as i64), e))),
            Value::Map(m) => Box::new(m.into_iter().map(|(k, e)| (Value::Str(k), e))),
            Value::Int(n) => Box::new((0..n.max(0)).map(|i| (Value::Int(i), Value::Int(i)))),
            Value::Nil => Box::new(std::iter::empty()),
            other => return Err(format!("range can't iterate over {}", to_str(&other))),
        };
        let mut any = false;
        for (key, elem) in items {
            any = true;
            self.step()?;
            let mark = self.vars.len();
            match pipe.decl.as_slice() {
                [e] => self.vars.push((e.clone(), Dot::Val(elem.clone()))),
                [k, e] => {
                    self.vars.push((k.clone(), Dot::Val(key)));
                    self.vars.push((e.clone(), Dot::Val(elem.clone())));
                }
                _ => {}
            }
            let flow = self.run(body, &Dot::Val(elem), out)?;
            self.vars.truncate(mark);
            if matches!(flow, Flow::Break) {
                break;
            }
        }
        if !any {
            self.run(otherwise, dot, out)?;
        }
        Ok(())
    }

    /// Runs the named template with `data` as dot and `$`, in a scope of its own.
    fn call_template(&mut self, name: &str, data: Dot, out: &mut String) -> Result<(), String> {
        let tpl = self.tpl;
        let body = tpl.defines.get(name).ok_or_else(|| format!("no such template {name:?}"))?;
        if self.calls >= MAX_CALL_DEPTH {
            return Err(format!("exceeded maximum template depth ({MAX_CALL_DEPTH})"));
        }
        self.calls += 1;
        let vars = std::mem::take(&mut self.vars);
        let root = std::mem::replace(&mut self.root, data.clone());
        let res = self.run(body, &data, out);
        (self.vars, self.root) = (vars, root);
        self.calls -= 1;
        res.map(|_| ())
    }

    /// Declares or assigns the pipeline's variable.
    fn bind(&mut self, p: &Pipeline, v: Value) -> Result<(), String> {
        let Some(name) = p.decl.first() else { return Ok(()) };
        if !p.assign {
            self.vars.push((name.clone(), Dot::Val(v)));
            return Ok(());
        }
        match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
            Some((_, slot)) => {
                *slot = Dot::Val(v);
                Ok(())
            }
            None => Err(format!("undefined variable {name:?}")),
        }
    }

    fn eval_cmds(&mut self, p: &Pipeline, dot: &Dot) -> Result<Value, String> {
        let mut prev: Option<Value> = None;
        for cmd in &p.cmds {
            prev = Some(self.eval_cmd(cmd, dot, prev)?);
        }
        Ok(prev.unwrap_or(Value::Nil))
    }

    fn eval_cmd(&mut self, cmd: &Cmd, dot: &Dot, piped: Option<Value>) -> Result<Value, String> {
        match &cmd.args[0] {
            Operand::Func(name) if *name == "and" || *name == "or" => {
                let n = cmd.args.len() - 1 + usize::from(piped.is_some());
                if n == 0 {
                    return Err(format!("wrong number of args for {name}: want at least 1 got 0"));
                }
                let want = *name == "or";
                let mut last = Value::Nil;
                for a in &cmd.args[1..] {
                    last = self.eval_operand(a, dot)?;
                    if truthy(&last) == want {
                        return Ok(last);
                    }
                }
                if let Some(p) = piped {
                    last = p;
                }
                Ok(last)
            }
            Operand::Func(name) => {
                let args = self.eval_args(&cmd.args[1..], dot, piped)?;
                self.call(name, args, cmd.regex.as_ref()).map_err(|e| format!("error calling {name}: {e}"))
            }
            op if op.is_chain() => {
                let args = self.eval_args(&cmd.args[1..], dot, piped)?;
                self.eval_chain(op, dot, Some(args))
            }
            op => {
                if piped.is_some() {
                    return Err("can't give argument to non-function".into());
                }
                self.eval_operand(op, dot)
            }
        }
    }

    fn eval_args(&mut self, ops: &[Operand], dot: &Dot, piped: Option<Value>) -> Result<Vec<Value>, String> {
        let mut vals = Vec::with_capacity(ops.len() + usize::from(piped.is_some()));
        for a in ops {
            vals.push(self.eval_operand(a, dot)?);
        }
        vals.extend(piped);
        Ok(vals)
    }

    fn eval_operand(&mut self, op: &Operand, dot: &Dot) -> Result<Value, String> {
        match op {
            Operand::Dot => match dot {
                Dot::Labels => Err(LABELS_ERR.into()),
                Dot::Val(v) => Ok(v.clone()),
            },
            Operand::Func(f) => self.call(f, Vec::new(), None).map_err(|e| format!("error calling {f}: {e}")),
            Operand::Lit(v) => Ok(v.clone()),
            Operand::Var(name, fields) if fields.is_empty() => match self.var(name)? {
                Dot::Labels => Err(LABELS_ERR.into()),
                Dot::Val(v) => Ok(v.clone()),
            },
            Operand::Sub(p, fields) if fields.is_empty() => {
                self.nest()?;
                let v = self.eval_cmds(p, dot);
                self.nesting -= 1;
                v
            }
            chain => self.eval_chain(chain, dot, None),
        }
    }

    fn var(&self, name: &str) -> Result<&Dot, String> {
        match self.vars.iter().rev().find(|(n, _)| n == name) {
            Some((_, d)) => Ok(d),
            None if name == "$" => Ok(&self.root),
            None => Err(format!("undefined variable {name:?}")),
        }
    }

    /// Evaluates `.a.b`, `$x.a.b` or `(p).a.b`; the last name is called as a method with `args`
    /// when there are any.
    fn eval_chain(&mut self, op: &Operand, dot: &Dot, args: Option<Vec<Value>>) -> Result<Value, String> {
        let args = args.unwrap_or_default();
        match op {
            Operand::Field(names) => self.fields_of(dot, names, args),
            Operand::Var(name, names) => {
                let base = self.var(name)?.clone();
                self.fields_of(&base, names, args)
            }
            Operand::Sub(p, names) => {
                self.nest()?;
                let base = self.eval_cmds(p, dot);
                self.nesting -= 1;
                walk(Cow::Owned(base?), names, &args)
            }
            _ => Err("can't give argument to non-function".into()),
        }
    }

    fn fields_of(&self, base: &Dot, names: &[String], args: Vec<Value>) -> Result<Value, String> {
        match base {
            Dot::Val(v) => walk(Cow::Borrowed(v), names, &args),
            Dot::Labels => {
                let (first, rest) = names.split_first().ok_or(LABELS_ERR)?;
                if rest.is_empty() && !args.is_empty() {
                    return Err(format!("{first} is not a method but has arguments"));
                }
                let found = self.lookup.and_then(|f| f(first));
                let v = match (found, self.tpl.dialect) {
                    (Some(s), _) => Value::Str(s),
                    // Loki renders a missing label as the empty string.
                    (None, Dialect::Loki) => Value::Str(String::new()),
                    (None, Dialect::Prometheus) => Value::Nil,
                };
                walk(Cow::Owned(v), rest, &args)
            }
        }
    }

    fn call(&mut self, name: &str, args: Vec<Value>, re: Option<&Regex>) -> Result<Value, String> {
        let v = match self.tpl.dialect {
            Dialect::Loki => funcs::call_loki(name, args, re, &self.env)?,
            Dialect::Prometheus if name == "tmpl" => {
                let [name, data]: [Value; 2] =
                    args.try_into().map_err(|a: Vec<Value>| format!("wrong number of args: want 2 got {}", a.len()))?;
                let Value::Str(name) = name else {
                    return Err(format!("wrong type for value; expected string; got {}", type_name(&name)));
                };
                let mut buf = String::new();
                self.call_template(&name, Dot::Val(data), &mut buf)?;
                Value::Str(buf)
            }
            Dialect::Prometheus => funcs::call_prometheus(name, args, re, &self.env)?,
        };
        if let Value::Str(s) = &v
            && s.len() > MAX_OUTPUT_BYTES
        {
            return Err(format!("result exceeds the limit of {MAX_OUTPUT_BYTES} bytes"));
        }
        Ok(v)
    }
}

static NIL: Value = Value::Nil;
static EMPTY: Value = Value::Str(String::new());

/// A field read without copying: a map key, or anything of nil (nil).
fn field_ref<'v>(v: &'v Value, name: &str) -> Option<&'v Value> {
    match v {
        Value::Map(m) => Some(m.get(name).unwrap_or(match map_zero(m) {
            Value::Nil => &NIL,
            _ => &EMPTY,
        })),
        Value::Nil => Some(&NIL),
        _ => None,
    }
}

/// Follows `names` from `v`; the last one is a method call when `args` is not empty.
fn walk(mut cur: Cow<'_, Value>, names: &[String], args: &[Value]) -> Result<Value, String> {
    for (k, name) in names.iter().enumerate() {
        let a = if k + 1 == names.len() { args } else { &[] };
        cur = match cur {
            Cow::Borrowed(v) => match field_ref(v, name).filter(|_| a.is_empty()) {
                Some(f) => Cow::Borrowed(f),
                None => Cow::Owned(method(v, name, a)?),
            },
            Cow::Owned(Value::Map(mut m)) if a.is_empty() => Cow::Owned(match m.remove(name) {
                Some(f) => f,
                None => map_zero(&m),
            }),
            Cow::Owned(v) => match field_ref(&v, name).filter(|_| a.is_empty()) {
                Some(f) => Cow::Owned(f.clone()),
                None => Cow::Owned(method(&v, name, a)?),
            },
        };
    }
    Ok(cur.into_owned())
}

fn want_args(name: &str, args: &[Value], n: usize) -> Result<(), String> {
    if args.len() != n {
        return Err(format!("wrong number of args for {name}: want {n} got {}", args.len()));
    }
    Ok(())
}

/// The methods of Go's `time.Time` and `time.Duration` that templates use.
fn method(v: &Value, name: &str, args: &[Value]) -> Result<Value, String> {
    match v {
        Value::Map(_) => Err(format!("{name} is not a method but has arguments")),
        Value::Time(t) => {
            let t = *t;
            let n_args = match name {
                "Format" | "Add" | "Sub" | "Before" | "After" | "Equal" => 1,
                _ => 0,
            };
            want_args(name, args, n_args)?;
            let other = |want: &str| -> Result<i64, String> {
                match (&args[0], want) {
                    (Value::Time(u), "time") | (Value::Duration(u), "duration") | (Value::Int(u), "duration") => Ok(*u),
                    (a, _) => Err(format!("wrong type for value; expected time.{want}; got {}", type_name(a))),
                }
            };
            Ok(match name {
                "Format" => match &args[0] {
                    Value::Str(layout) => Value::Str(go_format_time(layout, t)),
                    a => return Err(format!("wrong type for value; expected string; got {}", type_name(a))),
                },
                "String" => Value::Str(time_string(t)),
                "Unix" => Value::Int(t.div_euclid(1_000_000_000)),
                "UnixMilli" => Value::Int(t.div_euclid(1_000_000)),
                "UnixMicro" => Value::Int(t.div_euclid(1_000)),
                "UnixNano" => Value::Int(t),
                "UTC" | "Local" => Value::Time(t),
                "Add" => Value::Time(t.saturating_add(other("duration")?)),
                "Sub" => Value::Duration(t.saturating_sub(other("time")?)),
                "Before" => Value::Bool(t < other("time")?),
                "After" => Value::Bool(t > other("time")?),
                "Equal" => Value::Bool(t == other("time")?),
                _ => return Err(format!("can't evaluate field {name} in type time.Time")),
            })
        }
        Value::Duration(d) => {
            want_args(name, args, 0)?;
            let d = *d;
            Ok(match name {
                "String" => Value::Str(duration_string(d)),
                "Seconds" => Value::Float(d as f64 / 1e9),
                "Minutes" => Value::Float(d as f64 / 60e9),
                "Hours" => Value::Float(d as f64 / 3600e9),
                "Milliseconds" => Value::Int(d / 1_000_000),
                "Microseconds" => Value::Int(d / 1_000),
                "Nanoseconds" => Value::Int(d),
                "Abs" => Value::Duration(d.saturating_abs()),
                _ => return Err(format!("can't evaluate field {name} in type time.Duration")),
            })
        }
        other => Err(format!("can't evaluate field {name} in type {}", type_name(other))),
    }
}
