//! Playbook parsing, typing and checking.
//!
//! A playbook is read from YAML into an untyped tree (serde_norway errors
//! carry line/column), then each task is typed by hand so that task-level
//! errors can point at the task's own line (found by scanning the source, as
//! the YAML value tree carries no positions). Checking renders every template
//! against a *check context*: the real request vars and facts, placeholder
//! changeset and registered results, so undefined names and type errors show
//! up before anything runs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};
use vesemir_protocol::job::Changeset;

use super::modules::{ModuleArgs, KNOWN_MODULES};
use super::PlaybookError;

/// A position in a playbook file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub path: PathBuf,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

/// Fields of a registered result, available as `name.field` to later tasks.
pub(crate) const RESULT_FIELDS: &[&str] = &[
    "rc", "stdout", "stderr", "changed", "failed", "skipped", "status", "msg",
];

/// Task keys other than the module key.
const TASK_KEYS: &[&str] = &[
    "name",
    "when",
    "register",
    "timeout",
    "retries",
    "delay",
    "ignore_errors",
    "changed_when",
    "failed_when",
];

/// A parsed and typed playbook.
#[derive(Debug, Clone)]
pub(crate) struct Playbook {
    /// Where it was read from (for messages and relative `src` paths).
    pub path: PathBuf,
    /// `name:`, or the file name.
    pub name: String,
    /// Playbook vars in order (each may be a template over earlier ones).
    pub vars: Vec<(String, Value, Location)>,
    /// The source text, to locate keys for messages.
    pub text: String,
    /// Vars the request must supply, with where they were declared.
    pub requires: Vec<(String, Location)>,
    /// The tasks.
    pub tasks: Vec<Task>,
}

/// One task, typed but not rendered.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    /// Position in the playbook, from 0.
    pub index: u32,
    /// `name:` or `<module>`.
    pub name: String,
    /// Module name.
    pub module: String,
    /// Module arguments as written (string leaves are templates).
    pub args: Value,
    /// `when:` expression.
    pub when: Option<String>,
    /// `register:` name.
    pub register: Option<String>,
    /// `timeout:` (seconds or humantime, may be a template).
    pub timeout: Option<String>,
    /// Extra attempts after a failure.
    pub retries: u32,
    /// Pause between attempts.
    pub delay: Duration,
    /// A failure does not stop the play.
    pub ignore_errors: bool,
    /// Expression overriding `changed`.
    pub changed_when: Option<String>,
    /// Expression overriding `failed`.
    pub failed_when: Option<String>,
    /// Where the task starts.
    pub loc: Location,
    /// Source lines of the task, to locate keys within it.
    pub lines: (usize, usize),
}

/// The template environment: strict undefined, no autoescape.
pub(crate) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env
}

/// Line scanner giving positions of tasks and keys, since the YAML tree has none.
struct Source<'a> {
    lines: Vec<&'a str>,
}

impl<'a> Source<'a> {
    fn new(text: &'a str) -> Self {
        Source {
            lines: text.lines().collect(),
        }
    }

    /// Line index of the top-level key `key:`.
    fn top_key(&self, key: &str) -> Option<usize> {
        self.lines.iter().position(|l| {
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
    }

    /// (start, end) line ranges of the items of the top-level `tasks:` list.
    fn task_ranges(&self) -> Vec<(usize, usize)> {
        let Some(start) = self.top_key("tasks") else {
            return Vec::new();
        };
        let mut starts = Vec::new();
        let mut indent = None;
        let mut end = self.lines.len();
        for (i, l) in self.lines.iter().enumerate().skip(start + 1) {
            let trimmed = l.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let ind = l.len() - trimmed.len();
            if ind == 0 && !trimmed.starts_with('-') {
                end = i;
                break;
            }
            if trimmed == "-" || trimmed.starts_with("- ") {
                match indent {
                    None => {
                        indent = Some(ind);
                        starts.push(i);
                    }
                    Some(x) if x == ind => starts.push(i),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        for (k, s) in starts.iter().enumerate() {
            out.push((*s, starts.get(k + 1).copied().unwrap_or(end)));
        }
        out
    }

    /// Line and column (0-based) of `key:` within lines [from, to).
    fn key_in(&self, from: usize, to: usize, key: &str) -> Option<(usize, usize)> {
        for i in from..to.min(self.lines.len()) {
            let l = self.lines[i];
            let mut rest = l.trim_start();
            let mut col = l.len() - rest.len();
            if let Some(r) = rest.strip_prefix("- ") {
                let r2 = r.trim_start();
                col += rest.len() - r2.len();
                rest = r2;
            }
            if let Some(after) = rest.strip_prefix(key) {
                if after.trim_start().starts_with(':') {
                    return Some((i, col));
                }
            }
        }
        None
    }
}

/// Reads and types a playbook (no template checks yet).
pub(crate) fn load(path: &Path) -> Result<Playbook, PlaybookError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlaybookError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

fn loc(path: &Path, line0: usize, col0: usize) -> Location {
    Location {
        path: path.to_path_buf(),
        line: line0 + 1,
        column: col0 + 1,
    }
}

fn invalid(location: Location, message: impl Into<String>) -> PlaybookError {
    PlaybookError::Invalid {
        location,
        message: message.into(),
    }
}

/// Parses playbook text; `path` is used for messages.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Playbook, PlaybookError> {
    let src = Source::new(text);
    let root: serde_norway::Value = serde_norway::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        invalid(
            Location {
                path: path.to_path_buf(),
                line,
                column,
            },
            format!("invalid YAML: {e}"),
        )
    })?;
    let top = loc(path, 0, 0);
    // serde_json's map is sorted here; vars may build on earlier ones, so
    // take them from the (ordered) YAML mapping first.
    let mut root = root;
    let ordered_vars = match &mut root {
        serde_norway::Value::Mapping(m) => m.remove("vars"),
        _ => None,
    };
    let root = yaml_to_json(root).map_err(|m| invalid(top.clone(), m))?;
    let Value::Object(mut root) = root else {
        return Err(invalid(
            top,
            "a playbook is a mapping with `name`, `vars` and `tasks`",
        ));
    };
    let key_loc = |key: &str| {
        src.top_key(key)
            .map(|l| loc(path, l, 0))
            .unwrap_or_else(|| top.clone())
    };
    for k in root.keys() {
        if !["name", "requires", "tasks"].contains(&k.as_str()) {
            return Err(invalid(
                key_loc(k),
                format!("unknown playbook key `{k}` (expected name, vars, requires, tasks)"),
            ));
        }
    }
    let name = match root.remove("name") {
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        Some(Value::String(s)) => s,
        Some(_) => return Err(invalid(key_loc("name"), "`name` must be a string")),
    };
    let vars_line = src.top_key("vars");
    let raw_vars: Vec<(String, Value)> = match ordered_vars {
        None | Some(serde_norway::Value::Null) => Vec::new(),
        Some(serde_norway::Value::Mapping(m)) => {
            let mut out = Vec::new();
            for (k, v) in m {
                let serde_norway::Value::String(k) = k else {
                    return Err(invalid(key_loc("vars"), "variable names must be strings"));
                };
                out.push((k, yaml_to_json(v).map_err(|e| invalid(key_loc("vars"), e))?));
            }
            out
        }
        Some(_) => return Err(invalid(key_loc("vars"), "`vars` must be a mapping")),
    };
    let mut vars = Vec::new();
    for (k, v) in raw_vars {
        let l = vars_line
            .and_then(|line| src.key_in(line + 1, src.lines.len(), &k))
            .map(|(l, c)| loc(path, l, c))
            .unwrap_or_else(|| key_loc("vars"));
        if !is_identifier(&k) {
            return Err(invalid(
                l,
                format!("variable name `{k}` is not an identifier"),
            ));
        }
        vars.push((k, v, l));
    }
    let requires = match root.remove("requires") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => {
            let l = key_loc("requires");
            let mut out = Vec::new();
            for v in a {
                match v {
                    Value::String(s) if is_identifier(&s) => out.push((s, l.clone())),
                    other => {
                        return Err(invalid(
                            l,
                            format!("`requires` lists variable names; got {other}"),
                        ))
                    }
                }
            }
            out
        }
        Some(_) => {
            return Err(invalid(
                key_loc("requires"),
                "`requires` must be a list of variable names",
            ))
        }
    };
    let tasks_loc = key_loc("tasks");
    let raw_tasks = match root.remove("tasks") {
        Some(Value::Array(a)) => a,
        None => return Err(invalid(top, "a playbook needs `tasks`")),
        Some(_) => return Err(invalid(tasks_loc, "`tasks` must be a list")),
    };
    let ranges = src.task_ranges();
    let mut tasks = Vec::new();
    for (i, raw) in raw_tasks.into_iter().enumerate() {
        let lines = ranges
            .get(i)
            .copied()
            .unwrap_or((tasks_loc.line - 1, tasks_loc.line));
        tasks.push(parse_task(path, &src, i as u32, lines, raw)?);
    }
    Ok(Playbook {
        path: path.to_path_buf(),
        name,
        vars,
        requires,
        tasks,
        text: text.to_string(),
    })
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_task(
    path: &Path,
    src: &Source<'_>,
    index: u32,
    lines: (usize, usize),
    raw: Value,
) -> Result<Task, PlaybookError> {
    let start = {
        let l = src.lines.get(lines.0).copied().unwrap_or("");
        let t = l.trim_start();
        let col = l.len() - t.len() + t.strip_prefix("- ").map(|_| 2).unwrap_or(0);
        loc(path, lines.0, col)
    };
    let at = |key: &str| {
        src.key_in(lines.0, lines.1, key)
            .map(|(l, c)| loc(path, l, c))
            .unwrap_or_else(|| start.clone())
    };
    let Value::Object(map) = raw else {
        return Err(invalid(
            start,
            format!("task {} must be a mapping with a module key", index + 1),
        ));
    };
    let label = map
        .get("name")
        .and_then(Value::as_str)
        .map(|s| format!("task {} ({s})", index + 1))
        .unwrap_or_else(|| format!("task {}", index + 1));
    let mut modules = Vec::new();
    for k in map.keys() {
        if TASK_KEYS.contains(&k.as_str()) {
            continue;
        }
        if !KNOWN_MODULES.contains(&k.as_str()) {
            return Err(invalid(
                at(k),
                format!(
                    "{label}: unknown module `{k}`; known modules: {}",
                    KNOWN_MODULES.join(", ")
                ),
            ));
        }
        modules.push(k.clone());
    }
    let module = match modules.as_slice() {
        [m] => m.clone(),
        [] => {
            return Err(invalid(
                start,
                format!(
                    "{label}: no module; use one of: {}",
                    KNOWN_MODULES.join(", ")
                ),
            ))
        }
        [_, second, ..] => {
            return Err(invalid(
                at(second),
                format!("{label}: more than one module ({})", modules.join(", ")),
            ))
        }
    };
    let string = |key: &str| -> Result<Option<String>, PlaybookError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(invalid(
                at(key),
                format!("{label}: `{key}` must be a scalar"),
            )),
        }
    };
    let name = string("name")?.unwrap_or_else(|| module.clone());
    let register = string("register")?;
    if let Some(r) = &register {
        if !is_identifier(r) {
            return Err(invalid(
                at("register"),
                format!("{label}: register name `{r}` is not an identifier"),
            ));
        }
    }
    let retries = match string("retries")? {
        None => 0,
        Some(s) => s.parse::<u32>().map_err(|_| {
            invalid(
                at("retries"),
                format!("{label}: `retries` must be a number"),
            )
        })?,
    };
    let delay = match string("delay")? {
        None => Duration::from_secs(1),
        Some(s) => parse_duration(&s)
            .map_err(|m| invalid(at("delay"), format!("{label}: `delay`: {m}")))?,
    };
    let ignore_errors = match map.get("ignore_errors") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(invalid(
                at("ignore_errors"),
                format!("{label}: `ignore_errors` must be true or false"),
            ))
        }
    };
    let timeout = string("timeout")?;
    if let Some(t) = &timeout {
        if !t.contains("{{") {
            parse_duration(t)
                .map_err(|m| invalid(at("timeout"), format!("{label}: `timeout`: {m}")))?;
        }
    }
    Ok(Task {
        index,
        name,
        args: map.get(&module).cloned().unwrap_or(Value::Null),
        module,
        when: string("when")?,
        register,
        timeout,
        retries,
        delay,
        ignore_errors,
        changed_when: string("changed_when")?,
        failed_when: string("failed_when")?,
        loc: start,
        lines,
    })
}

/// Parses `30` (seconds), `1.5`, or a humantime duration like `2m 30s`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration ({e})"))
}

/// Converts YAML to JSON (string keys only), so one value model is used inside.
fn yaml_to_json(v: serde_norway::Value) -> Result<Value, String> {
    use serde_norway::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(0.0))
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(s) => Value::Array(s.into_iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let k = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => return Err(format!("mapping keys must be strings, got {other:?}")),
                };
                out.insert(k, yaml_to_json(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(t.value)?,
    })
}

/// How strictly [`check`] treats things only known at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckMode {
    /// The request is complete: `requires` must be satisfied and `changeset`
    /// is defined only if the job has one.
    Run,
    /// Validate the playbook alone: required vars and the changeset are
    /// assumed present (with placeholder values).
    Lint,
}

/// Placeholder values used while checking.
fn placeholder_changeset() -> Value {
    serde_json::json!({
        "version": "0.0.0-check",
        "url": "http://check.invalid/changeset.tar.gz",
        "sha256": "0".repeat(64),
    })
}

fn placeholder_result() -> Value {
    serde_json::json!({
        "rc": 0, "stdout": "", "stderr": "", "changed": false, "failed": false,
        "skipped": false, "status": "ok", "msg": "",
    })
}

/// Renders the playbook vars over the base context (request vars win).
pub(crate) fn render_vars(
    env: &Environment<'_>,
    pb: &Playbook,
    ctx: &mut Map<String, Value>,
    request: &BTreeMap<String, String>,
) -> Result<(), PlaybookError> {
    for (k, v, l) in &pb.vars {
        if request.contains_key(k) {
            continue;
        }
        let rendered =
            render_value(env, v, ctx).map_err(|m| invalid(l.clone(), format!("var `{k}`: {m}")))?;
        ctx.insert(k.clone(), rendered);
    }
    Ok(())
}

/// Renders every string leaf of `v` as a template.
pub(crate) fn render_value(
    env: &Environment<'_>,
    v: &Value,
    ctx: &Map<String, Value>,
) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(render_str(env, s, ctx)?),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render_value(env, x, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                out.insert(k.clone(), render_value(env, x, ctx)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// Renders one template string, with a message naming undefined variables.
pub(crate) fn render_str(
    env: &Environment<'_>,
    s: &str,
    ctx: &Map<String, Value>,
) -> Result<String, String> {
    if !s.contains("{{") && !s.contains("{%") {
        return Ok(s.to_string());
    }
    let tmpl = env
        .template_from_str(s)
        .map_err(|e| format!("template `{s}`: {}", describe(&e)))?;
    tmpl.render(ctx).map_err(|e| {
        // Name the culprit when minijinja only says "undefined value".
        match first_undefined(tmpl.undeclared_variables(true), ctx) {
            Some(name) if e.kind() == minijinja::ErrorKind::UndefinedError => {
                format!("undefined variable `{name}` in `{s}`")
            }
            _ => format!("template `{s}`: {}", describe(&e)),
        }
    })
}

/// Evaluates a `when`-style expression to a boolean.
pub(crate) fn eval_bool(
    env: &Environment<'_>,
    expr: &str,
    ctx: &Map<String, Value>,
) -> Result<bool, String> {
    let inner = expr.trim();
    let inner = inner
        .strip_prefix("{{")
        .and_then(|s| s.strip_suffix("}}"))
        .unwrap_or(inner);
    let e = env
        .compile_expression(inner)
        .map_err(|e| format!("expression `{expr}`: {}", describe(&e)))?;
    e.eval(ctx).map(|v| v.is_true()).map_err(|err| {
        match first_undefined(e.undeclared_variables(true), ctx) {
            Some(name) if err.kind() == minijinja::ErrorKind::UndefinedError => {
                format!("undefined variable `{name}` in `{expr}`")
            }
            _ => format!("expression `{expr}`: {}", describe(&err)),
        }
    })
}

/// The first dotted name not satisfied by the context (fields of registered
/// results and of `changeset` are checked; other values are open).
fn first_undefined(
    names: std::collections::HashSet<String>,
    ctx: &Map<String, Value>,
) -> Option<String> {
    let mut names: Vec<String> = names.into_iter().collect();
    names.sort();
    for n in names {
        let mut parts = n.split('.');
        let head = parts.next().unwrap_or_default();
        let Some(v) = ctx.get(head) else {
            return Some(n);
        };
        if let (Some(field), Value::Object(m)) = (parts.next(), v) {
            let closed = head == "changeset" || RESULT_FIELDS.iter().all(|f| m.contains_key(*f));
            if closed && !m.contains_key(field) {
                return Some(n);
            }
        }
    }
    None
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The base template context: request vars, changeset, facts.
pub(crate) fn base_context(
    request: &BTreeMap<String, String>,
    changeset: Option<&Changeset>,
    facts: &Value,
) -> Map<String, Value> {
    let mut ctx = Map::new();
    for (k, v) in request {
        ctx.insert(k.clone(), Value::String(v.clone()));
    }
    if let Some(c) = changeset {
        ctx.insert(
            "changeset".into(),
            serde_json::json!({"version": c.version, "url": c.url, "sha256": c.sha256}),
        );
    }
    ctx.insert("facts".into(), facts.clone());
    ctx
}

/// Checks everything that can be checked before running: vars render,
/// required vars present, each task's `when`, args (rendered and typed),
/// `timeout`, `changed_when`/`failed_when`, with registered names known only
/// after the task that registers them.
/// The agent trusts no request: values that playbooks join into paths are
/// checked here too, before anything runs (a `..` version would otherwise
/// make `releases/<version>` the base directory itself).
fn check_request_paths(
    request: &BTreeMap<String, String>,
    changeset: Option<&Changeset>,
) -> Result<(), PlaybookError> {
    if let Some(c) = changeset {
        if !vesemir_protocol::job::is_one_path_component(&c.version) {
            return Err(PlaybookError::UnsafeValue(format!(
                "changeset version {:?} is not one safe path component \
                 (letters, digits, '-', '_', '.', '+', not starting with '.')",
                c.version
            )));
        }
    }
    if let Some((k, _)) = request
        .iter()
        .find(|(_, v)| vesemir_protocol::job::climbs_out(v))
    {
        return Err(PlaybookError::UnsafeValue(format!(
            "variable `{k}` contains a `..` path component or a NUL byte"
        )));
    }
    Ok(())
}

pub(crate) fn check(
    pb: &Playbook,
    request: &BTreeMap<String, String>,
    changeset: Option<&Changeset>,
    facts: &Value,
    mode: CheckMode,
) -> Result<(), PlaybookError> {
    check_request_paths(request, changeset)?;
    let env = environment();
    let mut ctx = base_context(request, changeset, facts);
    for (name, l) in &pb.requires {
        if !request.contains_key(name) {
            match mode {
                CheckMode::Run => {
                    return Err(invalid(
                        l.clone(),
                        format!(
                        "required variable `{name}` was not given (pass it with --var {name}=…)"
                    ),
                    ))
                }
                CheckMode::Lint => {
                    ctx.insert(name.clone(), Value::String(format!("<{name}>")));
                }
            }
        }
    }
    if mode == CheckMode::Lint && changeset.is_none() {
        ctx.insert("changeset".into(), placeholder_changeset());
    }
    render_vars(&env, pb, &mut ctx, request)?;
    let source = Source::new(&pb.text);
    for t in &pb.tasks {
        let label = format!("task {} ({})", t.index + 1, t.name);
        let at = |key: &str| {
            source
                .key_in(t.lines.0, t.lines.1, key)
                .map(|(l, c)| loc(&pb.path, l, c))
                .unwrap_or_else(|| t.loc.clone())
        };
        if let Some(w) = &t.when {
            eval_bool(&env, w, &ctx)
                .map_err(|m| invalid(at("when"), format!("{label}: when: {m}")))?;
        }
        let args = render_value(&env, &t.args, &ctx).map_err(|m| {
            // Point at the argument key holding the template when we can find it.
            let l = arg_key_for(&t.args, &m)
                .and_then(|k| {
                    let from = source
                        .key_in(t.lines.0, t.lines.1, &t.module)
                        .map(|x| x.0)?;
                    source.key_in(from, t.lines.1, &k)
                })
                .map(|(l, c)| loc(&pb.path, l, c))
                .unwrap_or_else(|| at(&t.module));
            invalid(l, format!("{label}: {}: {m}", t.module))
        })?;
        ModuleArgs::parse(&t.module, &args)
            .map_err(|m| invalid(at(&t.module), format!("{label}: {}: {m}", t.module)))?;
        if let Some(to) = &t.timeout {
            let r = render_str(&env, to, &ctx)
                .and_then(|s| parse_duration(&s))
                .map_err(|m| invalid(at("timeout"), format!("{label}: timeout: {m}")))?;
            let _ = r;
        }
        if let Some(r) = &t.register {
            ctx.insert(r.clone(), placeholder_result());
        }
        for (key, expr) in [
            ("changed_when", &t.changed_when),
            ("failed_when", &t.failed_when),
        ] {
            if let Some(e) = expr {
                eval_bool(&env, e, &ctx)
                    .map_err(|m| invalid(at(key), format!("{label}: {key}: {m}")))?;
            }
        }
    }
    Ok(())
}

/// Which top-level argument key holds the template mentioned in `msg`.
fn arg_key_for(args: &Value, msg: &str) -> Option<String> {
    let Value::Object(m) = args else { return None };
    m.iter().find_map(|(k, v)| {
        let s = v.to_string();
        let inner = s.trim_matches('"');
        (!inner.is_empty() && msg.contains(inner)).then(|| k.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(text: &str) -> Result<(), String> {
        let path = Path::new("/nonexistent/pb.yml");
        let pb = parse(path, text).map_err(|e| e.to_string())?;
        check(&pb, &BTreeMap::new(), None, &Value::Null, CheckMode::Lint).map_err(|e| e.to_string())
    }

    #[test]
    fn errors_have_positions() {
        let cases: &[(&str, &str)] = &[
            (
                "tasks:\n  - name: a\n    command: [true\n",
                "pb.yml:4:1: invalid YAML",
            ),
            (
                "tasks:\n  - name: a\n    command: true\n  - name: b\n    frobnicate: x\n",
                "pb.yml:5:5: task 2 (b): unknown module `frobnicate`; known modules: command",
            ),
            (
                "tasks:\n  - name: a\n    shell: echo {{ nope }}\n",
                "pb.yml:3:5: task 1 (a): shell: undefined variable `nope`",
            ),
            (
                "tasks:\n  - name: a\n    command: true\n    when: r.rc == 0\n",
                "pb.yml:4:5: task 1 (a): when: undefined variable `r.rc`",
            ),
            (
                "tasks:\n  - command: true\n    register: r\n  - command: echo {{ r.bogus }}\n",
                "undefined variable `r.bogus`",
            ),
            ("tasks:\n  - name: a\n", "pb.yml:2:5: task 1 (a): no module"),
            (
                "tasks:\n  - name: a\n    command: true\n    shell: true\n",
                "pb.yml:4:5: task 1 (a): more than one module",
            ),
        ];
        for (text, want) in cases {
            let got = check_text(text).expect_err(text);
            assert!(
                got.contains(want),
                "for {text:?}\n got: {got}\nwant: {want}"
            );
        }
    }

    #[test]
    fn vars_build_on_earlier_vars_in_order() {
        check_text("vars:\n  zz: /srv\n  aa: \"{{ zz }}/x\"\ntasks:\n  - command: ls {{ aa }}\n")
            .unwrap();
        let e = check_text("vars:\n  aa: \"{{ zz }}/x\"\n  zz: /srv\ntasks: []\n").unwrap_err();
        assert!(
            e.contains("pb.yml:2:3: var `aa`: undefined variable `zz`"),
            "{e}"
        );
    }

    #[test]
    fn good_playbook_checks() {
        check_text(
            "name: x\nvars:\n  d: /tmp/{{ changeset.version }}\ntasks:\n  - command: echo {{ d }}\n    register: r\n    changed_when: r.rc == 0\n  - debug_ok: true\n",
        )
        .expect_err("debug_ok is not a module");
        check_text(
            "name: x\nvars:\n  d: /tmp/{{ changeset.version }}\ntasks:\n  - command: echo {{ d }}\n    register: r\n    changed_when: r.rc == 0\n  - shell: echo {{ r.stdout }}\n    when: not r.failed\n",
        )
        .unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
    }
}
