//! The parser: turns the lexer's items into a tree of nodes and the named templates, checking
//! function names, variable scopes and the placement of `else`, `end`, `break` and `continue`.

use std::collections::HashMap;

use regex::Regex;

use crate::template::lex::{Item, Tok, Token, lex, perr};
use crate::template::{Dialect, MAX_NESTING, Value, funcs};

#[derive(Debug, Clone)]
pub(super) enum Node {
    Text(String),
    /// Prints the pipeline's value, unless the pipeline declares or assigns variables.
    Action(Pipeline),
    /// `if` (or `with`, which also sets dot) with its `else if`/`else with` branches.
    If {
        with: bool,
        branches: Vec<(Pipeline, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
    Range {
        pipe: Pipeline,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
    /// `{{template "name" arg}}`, and the call half of `{{block}}`.
    Template {
        name: String,
        arg: TemplateArg,
    },
    Break,
    Continue,
}

#[derive(Debug, Clone)]
pub(super) enum TemplateArg {
    None,
    /// Dot passed on as it is (for Loki, the label set).
    Dot,
    Pipe(Pipeline),
}

#[derive(Debug, Clone)]
pub(super) struct Pipeline {
    /// Variables declared (`:=`) or assigned (`=`); two only in `range`.
    pub(super) decl: Vec<String>,
    pub(super) assign: bool,
    pub(super) cmds: Vec<Cmd>,
}

#[derive(Debug, Clone)]
pub(super) struct Cmd {
    pub(super) args: Vec<Operand>,
    /// Pre-compiled regex when the pattern argument is a literal.
    pub(super) regex: Option<Regex>,
}

#[derive(Debug, Clone)]
pub(super) enum Operand {
    Dot,
    /// `.a.b`
    Field(Vec<String>),
    /// `$x.a.b`
    Var(String, Vec<String>),
    Func(&'static str),
    Lit(Value),
    /// `(pipeline).a.b`
    Sub(Box<Pipeline>, Vec<String>),
}

impl Operand {
    /// True for the operands Go may call as a method (a field chain).
    pub(super) fn is_chain(&self) -> bool {
        match self {
            Operand::Field(_) => true,
            Operand::Var(_, f) | Operand::Sub(_, f) => !f.is_empty(),
            _ => false,
        }
    }
}

/// The main template and the named ones.
pub(super) struct Parsed {
    pub(super) nodes: Vec<Node>,
    pub(super) defines: HashMap<String, Vec<Node>>,
}

/// Variables a Prometheus alerting template may use without declaring them (Prometheus declares
/// them in a prefix it adds to every template).
pub(super) const PROMETHEUS_VARS: [&str; 4] = ["$labels", "$value", "$externalLabels", "$externalURL"];

enum Term {
    Eof,
    End,
    /// `{{else ...}}`: the tokens after `else` and the offset of the action.
    Else(Vec<Token>, usize),
}

pub(super) fn parse(src: &str, dialect: Dialect) -> Result<Parsed, String> {
    let mut vars = vec!["$".to_string()];
    if dialect == Dialect::Prometheus {
        vars.extend(PROMETHEUS_VARS.iter().map(|v| v.to_string()));
    }
    let mut p = Parser {
        items: lex(src)?.into_iter(),
        dialect,
        vars,
        defines: HashMap::new(),
        nesting: 0,
        ranges: 0,
        rebound: 0,
        in_define: false,
    };
    let (nodes, _) = p.list()?;
    Ok(Parsed { nodes, defines: p.defines })
}

struct Parser {
    items: std::vec::IntoIter<Item>,
    dialect: Dialect,
    /// Variables in scope, innermost last.
    vars: Vec<String>,
    defines: HashMap<String, Vec<Node>>,
    /// Control structures (and named templates) open around the current list.
    nesting: usize,
    /// `range` bodies open around the current list (where `break` and `continue` may go).
    ranges: usize,
    /// `with` and `range` bodies open around the current list (where dot is no longer the root).
    rebound: usize,
    in_define: bool,
}

impl Parser {
    /// In Loki, dot at the top of the main template is the label set, which cannot be a value.
    fn dot_is_labels(&self) -> bool {
        self.dialect == Dialect::Loki && !self.in_define && self.rebound == 0
    }

    fn enter(&mut self, pos: usize) -> Result<(), String> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(perr(pos, format!("template nested deeper than {MAX_NESTING} levels")));
        }
        Ok(())
    }

    fn list(&mut self) -> Result<(Vec<Node>, Term), String> {
        let mut nodes = Vec::new();
        while let Some(item) = self.items.next() {
            let (toks, pos) = match item {
                Item::Text(t) => {
                    nodes.push(Node::Text(t));
                    continue;
                }
                Item::Action(toks, pos) => (toks, pos),
            };
            let keyword = match toks.first() {
                None => return Err(perr(pos, "missing value for command")),
                Some(Token { tok: Tok::Ident(w), .. }) => w.clone(),
                Some(_) => String::new(),
            };
            match keyword.as_str() {
                "if" | "with" => nodes.push(self.cond(keyword == "with", &toks[1..], pos)?),
                "range" => nodes.push(self.range(&toks[1..], pos)?),
                "else" => {
                    if self.nesting == 0 {
                        return Err(perr(pos, "unexpected {{else}}"));
                    }
                    return Ok((nodes, Term::Else(toks[1..].to_vec(), pos)));
                }
                "end" => {
                    if self.nesting == 0 {
                        return Err(perr(pos, "unexpected {{end}}"));
                    }
                    if toks.len() > 1 {
                        return Err(perr(toks[1].pos, "unexpected token in end"));
                    }
                    return Ok((nodes, Term::End));
                }
                "define" => {
                    if self.nesting > 0 {
                        return Err(perr(pos, "unexpected {{define}}: named templates go at the top level"));
                    }
                    let (name, rest) = template_name(&toks[1..], pos, "define")?;
                    if let Some(t) = rest.first() {
                        return Err(perr(t.pos, "unexpected token in define"));
                    }
                    let body = self.template_body(pos)?;
                    self.add_define(name, body, pos)?;
                }
                "template" | "block" => {
                    let (name, rest) = template_name(&toks[1..], pos, &keyword)?;
                    let arg = match rest {
                        [] => TemplateArg::None,
                        [Token { tok: Tok::Dot, .. }] => TemplateArg::Dot,
                        _ => TemplateArg::Pipe(self.pipeline(rest, pos, &keyword, 0)?),
                    };
                    if keyword == "block" {
                        let body = self.template_body(pos)?;
                        self.add_define(name.clone(), body, pos)?;
                    }
                    nodes.push(Node::Template { name, arg });
                }
                "break" | "continue" => {
                    if self.ranges == 0 {
                        return Err(perr(pos, format!("{{{{{keyword}}}}} outside {{{{range}}}}")));
                    }
                    if toks.len() > 1 {
                        return Err(perr(toks[1].pos, format!("unexpected token in {keyword}")));
                    }
                    nodes.push(if keyword == "break" { Node::Break } else { Node::Continue });
                }
                _ => nodes.push(Node::Action(self.pipeline(&toks, pos, "command", 1)?)),
            }
        }
        Ok((nodes, Term::Eof))
    }

    /// The `{{else}}` part and `{{end}}` of a control structure whose body ended with `term`.
    fn rest_of(&mut self, term: Term, pos: usize) -> Result<Vec<Node>, String> {
        match term {
            Term::End => Ok(Vec::new()),
            Term::Else(rest, _) if !rest.is_empty() => Err(perr(rest[0].pos, "unexpected token after else")),
            Term::Else(_, _) => match self.list()? {
                (body, Term::End) => Ok(body),
                (_, Term::Else(_, p)) => Err(perr(p, "expected end; found {{else}}")),
                (_, Term::Eof) => Err(perr(pos, "unexpected EOF: missing {{end}}")),
            },
            Term::Eof => Err(perr(pos, "unexpected EOF: missing {{end}}")),
        }
    }

    fn cond(&mut self, with: bool, toks: &[Token], pos: usize) -> Result<Node, String> {
        self.enter(pos)?;
        let mark = self.vars.len();
        let ctx = if with { "with" } else { "if" };
        let mut cond = self.pipeline(toks, pos, ctx, 1)?;
        let mut branches = Vec::new();
        let otherwise = loop {
            self.rebound += usize::from(with);
            let (body, term) = self.list()?;
            self.rebound -= usize::from(with);
            branches.push((cond, body));
            match term {
                // `{{else if}}` in an if, `{{else with}}` in a with.
                Term::Else(rest, p) if matches!(rest.first(), Some(Token { tok: Tok::Ident(w), .. }) if w == ctx) => {
                    cond = self.pipeline(&rest[1..], p, ctx, 1)?;
                }
                term => break self.rest_of(term, pos)?,
            }
        };
        self.vars.truncate(mark);
        self.nesting -= 1;
        Ok(Node::If { with, branches, otherwise })
    }

    fn range(&mut self, toks: &[Token], pos: usize) -> Result<Node, String> {
        self.enter(pos)?;
        let mark = self.vars.len();
        let pipe = self.pipeline(toks, pos, "range", 2)?;
        if pipe.assign {
            return Err(perr(pos, "range can only declare variables, not assign them"));
        }
        self.ranges += 1;
        self.rebound += 1;
        let (body, term) = self.list()?;
        self.ranges -= 1;
        self.rebound -= 1;
        let otherwise = self.rest_of(term, pos)?;
        self.vars.truncate(mark);
        self.nesting -= 1;
        Ok(Node::Range { pipe, body, otherwise })
    }

    /// The body of a `define` or `block`, up to its `{{end}}`: a scope of its own, where only `$`
    /// is declared.
    fn template_body(&mut self, pos: usize) -> Result<Vec<Node>, String> {
        self.enter(pos)?;
        let vars = std::mem::replace(&mut self.vars, vec!["$".to_string()]);
        let saved = (self.ranges, self.rebound, self.in_define);
        (self.ranges, self.rebound, self.in_define) = (0, 0, true);
        let (body, term) = self.list()?;
        self.vars = vars;
        (self.ranges, self.rebound, self.in_define) = saved;
        self.nesting -= 1;
        match term {
            Term::End => Ok(body),
            Term::Else(_, p) => Err(perr(p, "unexpected {{else}}")),
            Term::Eof => Err(perr(pos, "unexpected EOF: missing {{end}}")),
        }
    }

    /// Registers a named template; as in Go, an empty body never replaces a definition and two
    /// non-empty ones conflict.
    fn add_define(&mut self, name: String, body: Vec<Node>, pos: usize) -> Result<(), String> {
        let empty = |b: &[Node]| b.iter().all(|n| matches!(n, Node::Text(t) if t.trim().is_empty()));
        match self.defines.get(&name) {
            Some(old) if !empty(old) && !empty(&body) => {
                Err(perr(pos, format!("template: multiple definition of template {name:?}")))
            }
            Some(_) if empty(&body) => Ok(()),
            _ => {
                self.defines.insert(name, body);
                Ok(())
            }
        }
    }

    /// Parses a whole pipeline, with up to `max_decl` leading variables (`$x :=`, `$x =`,
    /// `$i, $e :=`); declared variables come into scope after it.
    fn pipeline(&mut self, toks: &[Token], pos: usize, ctx: &str, max_decl: usize) -> Result<Pipeline, String> {
        if toks.is_empty() {
            return Err(perr(pos, format!("missing value for {ctx}")));
        }
        let var = |t: Option<&Token>| match t.map(|t| &t.tok) {
            Some(Tok::Var(name, fields)) if fields.is_empty() => Some(name.clone()),
            _ => None,
        };
        let (mut decl, mut assign, mut i) = (Vec::new(), false, 0);
        if max_decl > 0
            && let Some(first) = var(toks.first())
        {
            match toks.get(1).map(|t| &t.tok) {
                Some(Tok::Declare | Tok::Assign) => {
                    assign = toks[1].tok == Tok::Assign;
                    decl.push(first);
                    i = 2;
                }
                Some(Tok::Comma) => {
                    if max_decl < 2 {
                        return Err(perr(toks[1].pos, format!("too many declarations in {ctx}")));
                    }
                    let second = var(toks.get(2)).ok_or_else(|| perr(toks[1].pos, "expected a variable after ','"))?;
                    match toks.get(3).map(|t| &t.tok) {
                        Some(Tok::Declare) => {}
                        Some(Tok::Assign) => assign = true,
                        _ => return Err(perr(toks[1].pos, "expected := after the range variables")),
                    }
                    decl.extend([first, second]);
                    i = 4;
                }
                _ => {}
            }
        }
        if assign && let Some(v) = decl.iter().find(|v| !self.vars.contains(v)) {
            return Err(perr(pos, format!("undefined variable {v:?}")));
        }
        if i >= toks.len() {
            return Err(perr(pos, format!("missing value for {ctx}")));
        }
        let mut p = self.commands(toks, &mut i, false, pos, 0)?;
        if i < toks.len() {
            return Err(perr(toks[i].pos, "unexpected token"));
        }
        if !assign {
            self.vars.extend(decl.iter().cloned());
        }
        p.decl = decl;
        p.assign = assign;
        Ok(p)
    }

    /// Parses commands separated by `|` from `toks[*i..]`, up to the end or (inside parentheses) the
    /// closing `)`.
    fn commands(
        &mut self,
        toks: &[Token],
        i: &mut usize,
        in_paren: bool,
        open: usize,
        depth: usize,
    ) -> Result<Pipeline, String> {
        let mut cmds = Vec::new();
        loop {
            let cmd_pos = toks.get(*i).map_or(open, |t| t.pos);
            let mut args = Vec::new();
            let mut closed = false;
            let mut piped = false;
            while *i < toks.len() {
                let t = &toks[*i];
                *i += 1;
                match &t.tok {
                    Tok::Pipe => {
                        piped = true;
                        break;
                    }
                    Tok::RParen => {
                        if !in_paren {
                            return Err(perr(t.pos, "unexpected right paren"));
                        }
                        closed = true;
                        break;
                    }
                    Tok::LParen => {
                        if depth + 1 > MAX_NESTING {
                            return Err(perr(t.pos, format!("template nested deeper than {MAX_NESTING} levels")));
                        }
                        let sub = self.commands(toks, i, true, t.pos, depth + 1)?;
                        let fields = match toks.get(*i) {
                            Some(Token { tok: Tok::Chain(f), .. }) => {
                                *i += 1;
                                f.clone()
                            }
                            _ => Vec::new(),
                        };
                        args.push(Operand::Sub(Box::new(sub), fields));
                    }
                    Tok::Field(n) => args.push(Operand::Field(n.clone())),
                    Tok::Chain(_) => return Err(perr(t.pos, "unexpected field access")),
                    Tok::Lit(v) => args.push(Operand::Lit(v.clone())),
                    Tok::Ident(n) => match funcs::lookup(self.dialect, n) {
                        Some(f) => args.push(Operand::Func(f)),
                        None => return Err(perr(t.pos, format!("function {n:?} not defined"))),
                    },
                    Tok::Dot => {
                        if self.dot_is_labels() {
                            return Err(perr(t.pos, "'.' (the whole label map) is not supported"));
                        }
                        args.push(Operand::Dot);
                    }
                    Tok::Var(v, fields) => {
                        if !self.vars.contains(v) {
                            return Err(perr(t.pos, format!("undefined variable {v:?}")));
                        }
                        if v == "$" && fields.is_empty() && self.dialect == Dialect::Loki && !self.in_define {
                            return Err(perr(t.pos, "'$' (the whole label map) is not supported"));
                        }
                        args.push(Operand::Var(v.clone(), fields.clone()));
                    }
                    Tok::Declare | Tok::Assign => return Err(perr(t.pos, "unexpected variable declaration")),
                    Tok::Comma => return Err(perr(t.pos, "unexpected ','")),
                }
            }
            if args.is_empty() {
                return Err(perr(cmd_pos, "missing command"));
            }
            let is_func = matches!(args[0], Operand::Func(_));
            if !is_func {
                if args.len() > 1 && !args[0].is_chain() {
                    return Err(perr(cmd_pos, "can't give argument to non-function"));
                }
                if !cmds.is_empty() && matches!(args[0], Operand::Lit(_) | Operand::Dot) {
                    return Err(perr(cmd_pos, format!("non executable command in pipeline stage {}", cmds.len() + 1)));
                }
                if matches!(args[0], Operand::Lit(Value::Nil)) {
                    return Err(perr(cmd_pos, "nil is not a command"));
                }
            }
            let mut regex = None;
            if let (Operand::Func(f), Some(Operand::Lit(Value::Str(pat)))) = (&args[0], args.get(1))
                && funcs::is_regex_func(self.dialect, f)
            {
                match Regex::new(pat) {
                    Ok(re) => regex = Some(re),
                    // Prometheus reports a bad pattern when the template runs, not when it loads.
                    Err(_) if self.dialect == Dialect::Prometheus => {}
                    Err(e) => return Err(perr(cmd_pos, format!("invalid regex {pat:?}: {e}"))),
                }
            }
            cmds.push(Cmd { args, regex });
            if piped {
                continue;
            }
            if in_paren && !closed {
                return Err(perr(open, "unclosed left paren"));
            }
            return Ok(Pipeline { decl: Vec::new(), assign: false, cmds });
        }
    }
}

/// The quoted name after `define`, `template` or `block`, and the tokens after it.
fn template_name<'t>(toks: &'t [Token], pos: usize, ctx: &str) -> Result<(String, &'t [Token]), String> {
    match toks.first() {
        Some(Token { tok: Tok::Lit(Value::Str(name)), .. }) => Ok((name.clone(), &toks[1..])),
        _ => Err(perr(pos, format!("expected a quoted template name in {ctx}"))),
    }
}
