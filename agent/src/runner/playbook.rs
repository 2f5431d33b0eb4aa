//! Playbook parsing, typing and checking.
//!
//! A playbook is read from YAML into an untyped tree (serde_norway errors
//! carry line/column), then each task is typed by hand so that task-level
//! errors can point at the task's own line (found by scanning the source by
//! indentation, as the YAML value tree carries no positions). Checking
//! renders every template against a *check context*: the real request vars
//! and facts, placeholder changeset and registered results, so undefined
//! names and type errors show up before anything runs.
//!
//! Two shapes are read: vesemir's own mapping (`name`, `requires`, `vars`,
//! `tasks`, `handlers`) and an Ansible play list (`- hosts: …` with
//! `tasks:`), which must hold exactly one play. Play keys that mean nothing
//! on an agent (`hosts`, `become`, `gather_facts`, `connection`) are
//! accepted and ignored; every other Ansible keyword we do not implement is
//! refused by name with its position, never ignored.

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

/// Fields every registered result has, available as `name.field` to later
/// tasks (modules add their own, e.g. `stat`, `json`, `results`).
pub(crate) const RESULT_FIELDS: &[&str] = &[
    "rc",
    "stdout",
    "stderr",
    "stdout_lines",
    "stderr_lines",
    "changed",
    "failed",
    "skipped",
    "status",
    "msg",
];

/// Task keywords other than the module key.
const TASK_KEYS: &[&str] = &[
    "name",
    "when",
    "register",
    "timeout",
    "until",
    "retries",
    "delay",
    "ignore_errors",
    "changed_when",
    "failed_when",
    "loop",
    "with_items",
    "loop_control",
    "notify",
    "vars",
    "tags",
    "args",
    "become",
    "listen",
];

/// Keys that make a task a block.
const BLOCK_KEYS: &[&str] = &["block", "rescue", "always"];

/// Keys of a task list include.
const INCLUDE_KEYS: &[&str] = &["include_tasks", "import_tasks"];

/// Ansible task keywords vesemir does not implement: refused by name (a
/// silently ignored `delegate_to` or `run_once` would do the wrong thing).
const UNSUPPORTED_TASK_KEYS: &[&str] = &[
    "delegate_to",
    "delegate_facts",
    "run_once",
    "local_action",
    "become_user",
    "become_method",
    "become_flags",
    "environment",
    "no_log",
    "check_mode",
    "diff",
    "async",
    "poll",
    "throttle",
    "any_errors_fatal",
    "max_fail_percentage",
    "with_dict",
    "with_fileglob",
    "with_sequence",
    "with_together",
    "with_nested",
    "with_subelements",
    "with_list",
    "with_first_found",
    "with_lines",
    "include",
    "include_role",
    "import_role",
    "import_playbook",
    "debugger",
    "module_defaults",
    "collections",
    "connection",
    "remote_user",
    "port",
    "vars_files",
];

/// Play keys that have no effect on an agent (it runs where it is, as
/// itself, and its facts come from the agent) but are accepted so Ansible
/// playbooks run unchanged.
const IGNORED_PLAY_KEYS: &[&str] = &["hosts", "become", "gather_facts", "connection"];

/// A parsed and typed playbook (one play).
#[derive(Debug, Clone)]
pub(crate) struct Playbook {
    /// `name:`, or the file name.
    pub name: String,
    /// Playbook vars in order (each may be a template over earlier ones).
    pub vars: Vec<(String, Value, Location)>,
    /// Vars the request must supply, with where they were declared.
    pub requires: Vec<(String, Location)>,
    /// The tasks.
    pub tasks: Vec<Task>,
    /// Handlers, run once each at the end of the play when notified.
    pub handlers: Vec<Task>,
}

/// What a task does.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    /// Run one module.
    Module {
        /// Module name (without an `ansible.builtin.` prefix).
        module: String,
        /// Arguments as written (string leaves are templates).
        args: Value,
    },
    /// `block` with optional `rescue` and `always`.
    Block {
        /// Run in order.
        block: Vec<Task>,
        /// Run when a task of `block` failed; success clears the failure.
        rescue: Vec<Task>,
        /// Run whatever happened.
        always: Vec<Task>,
    },
    /// `include_tasks` / `import_tasks`, resolved when the playbook is read.
    Include {
        /// The included tasks.
        tasks: Vec<Task>,
        /// `include_tasks` counts as a task of its own (Ansible's recap
        /// shows it as ok); `import_tasks` does not.
        counted: bool,
    },
}

/// One task, typed but not rendered.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    /// Position in the playbook's walk order, from 0 (event index).
    pub index: u32,
    /// `name:` or `<module>`.
    pub name: String,
    /// What it does.
    pub body: Body,
    /// `when:` expressions, all of which must hold.
    pub when: Vec<String>,
    /// `register:` name.
    pub register: Option<String>,
    /// `timeout:` (seconds or humantime, may be a template).
    pub timeout: Option<String>,
    /// `until:`: repeat until this holds.
    pub until: Option<String>,
    /// Retries with `until` (Ansible: `retries` + 1 attempts, default 3).
    pub retries: u32,
    /// Pause between attempts (default 5s, as Ansible).
    pub delay: Duration,
    /// A failure does not stop the play.
    pub ignore_errors: bool,
    /// Expressions overriding `changed` (all must hold).
    pub changed_when: Option<String>,
    /// Expressions overriding `failed` (a list: all must hold, as Ansible).
    pub failed_when: Option<String>,
    /// `loop` / `with_items`: a list or a template giving one.
    pub loop_items: Option<Value>,
    /// `with_items` flattens one level of nested lists.
    pub flatten_items: bool,
    /// `loop_control.label`.
    pub loop_label: Option<String>,
    /// `loop_control.loop_var` (default `item`).
    pub loop_var: String,
    /// Handlers notified when the task changed something.
    pub notify: Vec<String>,
    /// Handler topics (`listen`), for handlers.
    pub listen: Vec<String>,
    /// Task-level vars, rendered just before the task.
    pub vars: Vec<(String, Value)>,
    /// Where the task starts.
    pub loc: Location,
    /// Where each of the task's own keys is.
    pub key_locs: BTreeMap<String, Location>,
    /// Where each module argument key is.
    pub arg_locs: BTreeMap<String, Location>,
}

impl Task {
    /// The location of one of the task's keys, or of the task.
    pub(crate) fn at(&self, key: &str) -> Location {
        self.key_locs
            .get(key)
            .cloned()
            .unwrap_or_else(|| self.loc.clone())
    }

    /// The module name, or `block` / `include_tasks`.
    pub(crate) fn kind(&self) -> &str {
        match &self.body {
            Body::Module { module, .. } => module,
            Body::Block { .. } => "block",
            Body::Include { counted: true, .. } => "include_tasks",
            Body::Include { .. } => "import_tasks",
        }
    }
}

/// The template environment: strict undefined, no autoescape, plus the
/// Ansible tests and filters playbooks commonly use.
pub(crate) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    // Ansible's templar uses trim_blocks (a block tag eats its newline).
    env.set_trim_blocks(true);
    // Python's str/list/dict methods (`version.split('.')`, `d.items()`).
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    super::ansible_jinja::register(&mut env);
    env
}

/// Line scanner giving positions of list items and keys by indentation,
/// since the YAML tree has none.
struct Source<'a> {
    lines: Vec<&'a str>,
}

/// Indentation and text of a line without a leading `- ` list marker.
fn split_line(l: &str) -> (usize, &str) {
    let t = l.trim_start();
    (l.len() - t.len(), t)
}

fn blank(t: &str) -> bool {
    t.is_empty() || t.starts_with('#') || t == "---"
}

impl<'a> Source<'a> {
    fn new(text: &'a str) -> Self {
        Source {
            lines: text.lines().collect(),
        }
    }

    /// Items of the first block list within [from, to): (start, end, column
    /// of the item's first key).
    fn list_items(&self, from: usize, to: usize) -> Vec<(usize, usize, usize)> {
        let to = to.min(self.lines.len());
        let mut starts: Vec<(usize, usize)> = Vec::new();
        let mut indent = None;
        let mut end = to;
        for i in from..to {
            let (ind, t) = split_line(self.lines[i]);
            if blank(t) {
                continue;
            }
            let is_item = t == "-" || t.starts_with("- ");
            match indent {
                None if is_item => {
                    indent = Some(ind);
                    let after = t[1..].len() - t[1..].trim_start().len();
                    starts.push((i, ind + 1 + after));
                }
                None => {}
                Some(x) if ind < x || (ind == x && !is_item) => {
                    end = i;
                    break;
                }
                Some(x) if ind == x => {
                    let after = t[1..].len() - t[1..].trim_start().len();
                    starts.push((i, ind + 1 + after));
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for (k, (s, col)) in starts.iter().enumerate() {
            let e = starts.get(k + 1).map(|x| x.0).unwrap_or(end);
            out.push((*s, e, *col));
        }
        out
    }

    /// `key:` at column `col` within [from, to): its line, and the lines of
    /// its value (following lines indented deeper than `col`).
    fn key_at(&self, from: usize, to: usize, col: usize, key: &str) -> Option<(usize, usize)> {
        let to = to.min(self.lines.len());
        for i in from..to {
            let l = self.lines[i];
            let (ind, mut t) = split_line(l);
            let mut c = ind;
            if i == from {
                if let Some(r) = t.strip_prefix('-') {
                    let r2 = r.trim_start();
                    c += 1 + (r.len() - r2.len());
                    t = r2;
                }
            }
            if c != col {
                continue;
            }
            if let Some(after) = t.strip_prefix(key) {
                if after.trim_start().starts_with(':') {
                    let mut end = i + 1;
                    while end < to {
                        let (ind2, t2) = split_line(self.lines[end]);
                        if !blank(t2) && ind2 <= col && !(ind2 == col && t2.starts_with("- ")) {
                            break;
                        }
                        end += 1;
                    }
                    return Some((i, end));
                }
            }
        }
        None
    }

    /// Keys (at column `col`) directly inside [from, to), with positions.
    fn keys_at(&self, from: usize, to: usize, col: usize) -> BTreeMap<String, (usize, usize)> {
        let mut out = BTreeMap::new();
        let to = to.min(self.lines.len());
        for i in from..to {
            let (ind, mut t) = split_line(self.lines[i]);
            let mut c = ind;
            if i == from {
                if let Some(r) = t.strip_prefix('-') {
                    let r2 = r.trim_start();
                    c += 1 + (r.len() - r2.len());
                    t = r2;
                }
            }
            if c != col || blank(t) {
                continue;
            }
            if let Some((k, _)) = t.split_once(':') {
                let k = k.trim().trim_matches(|ch| ch == '"' || ch == '\'');
                out.entry(k.to_string()).or_insert((i, c));
            }
        }
        out
    }

    /// The column of the first key of a mapping value spanning [from, to).
    fn first_key_col(&self, from: usize, to: usize) -> Option<(usize, usize)> {
        for i in from..to.min(self.lines.len()) {
            let (ind, t) = split_line(self.lines[i]);
            if !blank(t) {
                return Some((i, ind));
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

fn invalid(location: Location, message: impl std::fmt::Display) -> PlaybookError {
    PlaybookError::Invalid {
        location,
        message: message.to_string(),
    }
}

fn yaml_error(path: &Path, e: serde_norway::Error) -> PlaybookError {
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
}

/// Reading state shared by a playbook and the task files it includes.
struct Reader {
    /// Next task index.
    next_index: u32,
    /// Include depth, to refuse include cycles.
    depth: usize,
}

/// One file's text and where it is.
struct FileCtx<'a> {
    path: &'a Path,
    src: Source<'a>,
}

impl FileCtx<'_> {
    fn loc(&self, line: usize, col: usize) -> Location {
        loc(self.path, line, col)
    }
}

/// Parses playbook text; `path` is used for messages.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Playbook, PlaybookError> {
    let file = FileCtx {
        path,
        src: Source::new(text),
    };
    let root: serde_norway::Value =
        serde_norway::from_str(text).map_err(|e| yaml_error(path, e))?;
    let top = loc(path, 0, 0);
    // The play: the root mapping, or the one item of an Ansible play list.
    let (play, range, col) = match root {
        serde_norway::Value::Mapping(m) => (m, (0, file.src.lines.len()), 0),
        serde_norway::Value::Sequence(plays) => {
            let items = file.src.list_items(0, file.src.lines.len());
            if plays.len() != 1 {
                let l = items
                    .get(1)
                    .map(|(s, _, c)| file.loc(*s, *c))
                    .unwrap_or(top);
                return Err(invalid(
                    l,
                    format!(
                        "this play list has {} plays; vesemir runs one play per playbook file \
                         (split the plays into separate playbooks)",
                        plays.len()
                    ),
                ));
            }
            let (s, e, c) = items
                .first()
                .copied()
                .unwrap_or((0, file.src.lines.len(), 0));
            match plays.into_iter().next() {
                Some(serde_norway::Value::Mapping(m)) => (m, (s, e), c),
                _ => return Err(invalid(top, "a play must be a mapping with `tasks`")),
            }
        }
        _ => {
            return Err(invalid(
                top,
                "a playbook is a mapping with `name`, `vars` and `tasks`, or an Ansible \
                 play list (`- hosts: …` with `tasks:`)",
            ))
        }
    };
    let keys = file.src.keys_at(range.0, range.1, col);
    let key_loc = |key: &str| {
        keys.get(key)
            .map(|(l, c)| file.loc(*l, *c))
            .unwrap_or_else(|| file.loc(range.0, col))
    };
    let mut play = play;
    // serde_json's map is sorted; vars may build on earlier ones, so take
    // them from the (ordered) YAML mapping first.
    let ordered_vars = play.remove("vars");
    let play =
        yaml_to_json(serde_norway::Value::Mapping(play)).map_err(|m| invalid(top.clone(), m))?;
    let Value::Object(mut play) = play else {
        unreachable!("a mapping converts to an object")
    };
    for k in play.keys() {
        if IGNORED_PLAY_KEYS.contains(&k.as_str()) {
            continue;
        }
        if !["name", "requires", "tasks", "handlers"].contains(&k.as_str()) {
            return Err(invalid(
                key_loc(k),
                format!(
                    "play keyword `{k}` is not supported by vesemir (known: name, vars, requires, \
                     tasks, handlers; hosts, become, gather_facts and connection are accepted and \
                     have no effect on an agent)"
                ),
            ));
        }
    }
    for k in IGNORED_PLAY_KEYS {
        if let Some(v) = play.get(*k) {
            if (*k == "become" || *k == "gather_facts")
                && !matches!(v, Value::Bool(_) | Value::String(_) | Value::Null)
            {
                return Err(invalid(key_loc(k), format!("`{k}` must be true or false")));
            }
        }
    }
    let name = match play.remove("name") {
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        Some(Value::String(s)) => s,
        Some(_) => return Err(invalid(key_loc("name"), "`name` must be a string")),
    };
    let vars_at = keys.get("vars").copied();
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
    let var_keys = vars_at
        .and_then(|(l, c)| {
            let (_, end) = file.src.key_at(l, range.1, c, "vars")?;
            let (fl, fc) = file.src.first_key_col(l + 1, end)?;
            Some(file.src.keys_at(fl, end, fc))
        })
        .unwrap_or_default();
    let mut vars = Vec::new();
    for (k, v) in raw_vars {
        let l = var_keys
            .get(&k)
            .map(|(l, c)| file.loc(*l, *c))
            .unwrap_or_else(|| key_loc("vars"));
        if !is_identifier(&k) {
            return Err(invalid(
                l,
                format!("variable name `{k}` is not an identifier"),
            ));
        }
        vars.push((k, v, l));
    }
    let requires = match play.remove("requires") {
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
    let mut reader = Reader {
        next_index: 0,
        depth: 0,
    };
    let list_range = |key: &str| {
        keys.get(key)
            .and_then(|(l, c)| file.src.key_at(*l, range.1, *c, key))
            .map(|(s, e)| (s + 1, e))
    };
    let tasks = match play.remove("tasks") {
        Some(Value::Array(a)) => reader.tasks(&file, a, list_range("tasks"), key_loc("tasks"))?,
        None => return Err(invalid(top, "a playbook needs `tasks`")),
        Some(_) => return Err(invalid(key_loc("tasks"), "`tasks` must be a list")),
    };
    let handlers = match play.remove("handlers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => {
            reader.tasks(&file, a, list_range("handlers"), key_loc("handlers"))?
        }
        Some(_) => return Err(invalid(key_loc("handlers"), "`handlers` must be a list")),
    };
    let pb = Playbook {
        name,
        vars,
        requires,
        tasks,
        handlers,
    };
    check_notify(&pb)?;
    Ok(pb)
}

/// Every `notify` names a handler (by `name` or `listen`): Ansible errors
/// on an unknown one at run time; we do it before anything runs.
fn check_notify(pb: &Playbook) -> Result<(), PlaybookError> {
    fn walk(
        ts: &[Task],
        f: &mut dyn FnMut(&Task) -> Result<(), PlaybookError>,
    ) -> Result<(), PlaybookError> {
        for t in ts {
            f(t)?;
            match &t.body {
                Body::Block {
                    block,
                    rescue,
                    always,
                } => {
                    walk(block, f)?;
                    walk(rescue, f)?;
                    walk(always, f)?;
                }
                Body::Include { tasks, .. } => walk(tasks, f)?,
                Body::Module { .. } => {}
            }
        }
        Ok(())
    }
    let known: Vec<&str> = pb
        .handlers
        .iter()
        .flat_map(|h| std::iter::once(h.name.as_str()).chain(h.listen.iter().map(String::as_str)))
        .collect();
    let mut all = pb.tasks.clone();
    all.extend(pb.handlers.iter().cloned());
    walk(&all, &mut |t| {
        for n in &t.notify {
            if !known.contains(&n.as_str()) {
                return Err(invalid(
                    t.at("notify"),
                    format!(
                        "task {} ({}): notifies `{n}`, but no handler has that name or `listen` \
                         (handlers: {})",
                        t.index + 1,
                        t.name,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
        Ok(())
    })
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A module name without Ansible's collection prefix.
fn short_module(k: &str) -> &str {
    k.strip_prefix("ansible.builtin.")
        .or_else(|| k.strip_prefix("ansible.legacy."))
        .unwrap_or(k)
}

/// A scalar or a list of scalars as strings (`when`, `notify`, `tags`…).
fn string_list(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Null => Some(Vec::new()),
        Value::Array(a) => a.iter().map(scalar_string).collect(),
        other => scalar_string(other).map(|s| vec![s]),
    }
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(if *b { "true".into() } else { "false".into() }),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `a and b and c` for a list of conditions.
fn all_of(conds: &[String]) -> Option<String> {
    match conds {
        [] => None,
        [one] => Some(one.clone()),
        many => Some(
            many.iter()
                .map(|c| format!("({})", strip_braces(c)))
                .collect::<Vec<_>>()
                .join(" and "),
        ),
    }
}

/// `{{ x }}` → `x` for conditions written with braces.
pub(crate) fn strip_braces(expr: &str) -> &str {
    let t = expr.trim();
    t.strip_prefix("{{")
        .and_then(|s| s.strip_suffix("}}"))
        .map(str::trim)
        .unwrap_or(t)
}

/// Module arguments written as `k=v k2=v2` (Ansible's free form), for
/// modules whose free form is not a command. Quotes are honoured; a
/// `{{ … }}` template stays one word.
fn kv_args(s: &str) -> Result<Value, FreeFormError> {
    let mut out = Map::new();
    for (w, _) in template_words(s)? {
        let Some((k, v)) = w.split_once('=') else {
            return Err(FreeFormError::NotKeyValue(w));
        };
        out.insert(k.to_string(), Value::String(unquote(v)));
    }
    Ok(Value::Object(out))
}

fn unquote(v: &str) -> String {
    let b = v.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

/// Words of a free-form argument string with their byte spans; spaces
/// inside quotes or `{{ }}` / `{% %}` do not split.
/// A word and its byte span in the argument string.
type Word = (String, (usize, usize));

fn template_words(s: &str) -> Result<Vec<Word>, FreeFormError> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        let mut quote: Option<u8> = None;
        let mut braces = 0usize;
        while i < b.len() {
            let c = b[i];
            if let Some(q) = quote {
                if c == q {
                    quote = None;
                }
            } else if braces == 0 && c.is_ascii_whitespace() {
                break;
            } else if c == b'"' || c == b'\'' {
                quote = Some(c);
            } else if (c == b'{') && b.get(i + 1).is_some_and(|n| *n == b'{' || *n == b'%') {
                braces += 1;
                i += 1;
            } else if (c == b'}' || c == b'%') && b.get(i + 1) == Some(&b'}') && braces > 0 {
                braces -= 1;
                i += 1;
            }
            i += 1;
        }
        if quote.is_some() {
            return Err(FreeFormError::UnterminatedQuote(s.to_string()));
        }
        out.push((s[start..i].to_string(), (start, i)));
    }
    Ok(out)
}

/// Keys Ansible's `command`/`shell` accept inside their free form.
const COMMAND_FREE_FORM_KEYS: &[&str] = &["creates", "removes", "chdir"];

/// `command: touch x creates=x` → `{cmd: "touch x", creates: "x"}`; the
/// command text is kept as written, minus the extracted words.
fn command_free_form(s: &str) -> Result<Value, FreeFormError> {
    let words = template_words(s)?;
    let mut extracted = Map::new();
    let mut cut: Vec<(usize, usize)> = Vec::new();
    for (w, span) in &words {
        if let Some((k, v)) = w.split_once('=') {
            if COMMAND_FREE_FORM_KEYS.contains(&k) {
                extracted.insert(k.to_string(), Value::String(unquote(v)));
                cut.push(*span);
            } else if [
                "executable",
                "warn",
                "stdin",
                "stdin_add_newline",
                "strip_empty_ends",
            ]
            .contains(&k)
            {
                return Err(FreeFormError::Unsupported(k.to_string()));
            }
        }
    }
    if extracted.is_empty() {
        return Ok(Value::String(s.to_string()));
    }
    let mut cmd = String::new();
    let mut last = 0;
    for (a, b) in cut {
        cmd.push_str(&s[last..a]);
        last = b;
    }
    cmd.push_str(&s[last..]);
    extracted.insert("cmd".into(), Value::String(cmd.trim().to_string()));
    Ok(Value::Object(extracted))
}

impl Reader {
    /// Types a task list; `range` is the lines holding its items.
    fn tasks(
        &mut self,
        file: &FileCtx<'_>,
        raw: Vec<Value>,
        range: Option<(usize, usize)>,
        list_loc: Location,
    ) -> Result<Vec<Task>, PlaybookError> {
        let items = range
            .map(|(s, e)| file.src.list_items(s, e))
            .unwrap_or_default();
        let mut out = Vec::new();
        for (i, raw) in raw.into_iter().enumerate() {
            let (start, end, col) = items.get(i).copied().unwrap_or((
                list_loc.line - 1,
                list_loc.line,
                list_loc.column - 1,
            ));
            if let Some(t) = self.task(file, (start, end, col), raw, i)? {
                out.push(t);
            }
        }
        Ok(out)
    }

    fn task(
        &mut self,
        file: &FileCtx<'_>,
        (start, end, col): (usize, usize, usize),
        raw: Value,
        pos: usize,
    ) -> Result<Option<Task>, PlaybookError> {
        let here = file.loc(start, col);
        let keys = file.src.keys_at(start, end, col);
        let at = |key: &str| {
            keys.get(key)
                .map(|(l, c)| file.loc(*l, *c))
                .unwrap_or_else(|| here.clone())
        };
        let Value::Object(mut map) = raw else {
            return Err(invalid(
                here,
                format!("task {} must be a mapping with a module key", pos + 1),
            ));
        };
        let index = self.next_index;
        self.next_index += 1;
        let label = map
            .get("name")
            .and_then(Value::as_str)
            .map(|s| format!("task {} ({s})", index + 1))
            .unwrap_or_else(|| format!("task {}", index + 1));
        let mut modules = Vec::new();
        let mut is_block = false;
        let mut include = None;
        for k in map.keys() {
            let k = k.as_str();
            if TASK_KEYS.contains(&k) {
                continue;
            }
            if BLOCK_KEYS.contains(&k) {
                is_block = true;
                continue;
            }
            if INCLUDE_KEYS.contains(&short_module(k)) {
                include = Some(k.to_string());
                modules.push(k.to_string());
                continue;
            }
            if UNSUPPORTED_TASK_KEYS.contains(&k) {
                return Err(invalid(
                    at(k),
                    format!("{label}: keyword `{k}` is not supported by vesemir"),
                ));
            }
            if !KNOWN_MODULES.contains(&short_module(k)) {
                return Err(invalid(
                    at(k),
                    format!(
                        "{label}: unknown or unsupported module `{k}`; known modules: {}",
                        KNOWN_MODULES.join(", ")
                    ),
                ));
            }
            modules.push(k.to_string());
        }
        if is_block && !modules.is_empty() {
            return Err(invalid(
                at(&modules[0]),
                format!(
                    "{label}: a block cannot also run the module `{}`",
                    modules[0]
                ),
            ));
        }
        if is_block && !map.contains_key("block") {
            return Err(invalid(
                here,
                format!("{label}: `rescue`/`always` need a `block`"),
            ));
        }
        let string =
            |map: &Map<String, Value>, key: &str| -> Result<Option<String>, PlaybookError> {
                match map.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(v) => scalar_string(v).map(Some).ok_or_else(|| {
                        invalid(at(key), format!("{label}: `{key}` must be a scalar"))
                    }),
                }
            };
        let list = |map: &Map<String, Value>, key: &str| -> Result<Vec<String>, PlaybookError> {
            match map.get(key) {
                None => Ok(Vec::new()),
                Some(v) => string_list(v).ok_or_else(|| {
                    invalid(
                        at(key),
                        format!("{label}: `{key}` must be a string or a list of strings"),
                    )
                }),
            }
        };
        // Ansible's `never` tag: the task does not run unless asked for by
        // tag, and vesemir never selects tags.
        let tags = list(&map, "tags")?;
        let name = string(&map, "name")?;
        let register = string(&map, "register")?;
        if let Some(r) = &register {
            if !is_identifier(r) {
                return Err(invalid(
                    at("register"),
                    format!("{label}: register name `{r}` is not an identifier"),
                ));
            }
        }
        let until = all_of(&list(&map, "until")?);
        let retries = match string(&map, "retries")? {
            None => 3,
            Some(s) => s.parse::<u32>().map_err(|_| {
                invalid(
                    at("retries"),
                    format!("{label}: `retries` must be a number"),
                )
            })?,
        };
        if until.is_none() && map.contains_key("retries") {
            return Err(invalid(
                at("retries"),
                format!(
                    "{label}: `retries` without `until` does nothing in Ansible 2.14; write \
                     `until: <register> is succeeded` (with `register`) to retry a failing task"
                ),
            ));
        }
        let delay = match string(&map, "delay")? {
            None => Duration::from_secs(5),
            Some(s) => parse_duration(&s)
                .map_err(|m| invalid(at("delay"), format!("{label}: `delay`: {m}")))?,
        };
        let ignore_errors = match map.get("ignore_errors") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) if ["yes", "true", "True"].contains(&s.as_str()) => true,
            Some(Value::String(s)) if ["no", "false", "False"].contains(&s.as_str()) => false,
            Some(_) => {
                return Err(invalid(
                    at("ignore_errors"),
                    format!("{label}: `ignore_errors` must be true or false"),
                ))
            }
        };
        let timeout = string(&map, "timeout")?;
        if let Some(t) = &timeout {
            if !t.contains("{{") {
                parse_duration(t)
                    .map_err(|m| invalid(at("timeout"), format!("{label}: `timeout`: {m}")))?;
            }
        }
        let (loop_items, flatten_items) = match (map.get("loop"), map.get("with_items")) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    at("with_items"),
                    format!("{label}: give `loop` or `with_items`, not both"),
                ))
            }
            (Some(v), None) => (Some(v.clone()), false),
            (None, Some(v)) => (Some(v.clone()), true),
            (None, None) => (None, false),
        };
        if let Some(v) = &loop_items {
            if !matches!(v, Value::Array(_) | Value::String(_)) {
                return Err(invalid(
                    at(if flatten_items { "with_items" } else { "loop" }),
                    format!("{label}: a loop takes a list or a template giving one"),
                ));
            }
        }
        let (mut loop_label, mut loop_var) = (None, "item".to_string());
        match map.get("loop_control") {
            None | Some(Value::Null) => {}
            Some(Value::Object(lc)) => {
                for (k, v) in lc {
                    match (k.as_str(), scalar_string(v)) {
                        ("label", Some(s)) => loop_label = Some(s),
                        ("loop_var", Some(s)) if is_identifier(&s) => loop_var = s,
                        (k, _) => {
                            return Err(invalid(
                                at("loop_control"),
                                format!(
                                    "{label}: loop_control `{k}` is not supported by vesemir \
                                     (supported: label, loop_var)"
                                ),
                            ))
                        }
                    }
                }
            }
            Some(_) => {
                return Err(invalid(
                    at("loop_control"),
                    format!("{label}: `loop_control` must be a mapping"),
                ))
            }
        }
        if map.contains_key("loop_control") && loop_items.is_none() {
            return Err(invalid(
                at("loop_control"),
                format!("{label}: `loop_control` without `loop`"),
            ));
        }
        let vars = match map.get("vars") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(m)) => {
                let mut out = Vec::new();
                for (k, v) in m {
                    if !is_identifier(k) {
                        return Err(invalid(
                            at("vars"),
                            format!("{label}: variable name `{k}` is not an identifier"),
                        ));
                    }
                    out.push((k.clone(), v.clone()));
                }
                out
            }
            Some(_) => {
                return Err(invalid(
                    at("vars"),
                    format!("{label}: `vars` must be a mapping"),
                ))
            }
        };
        let notify = list(&map, "notify")?;
        let listen = list(&map, "listen")?;
        let key_locs: BTreeMap<String, Location> = keys
            .iter()
            .map(|(k, (l, c))| (k.clone(), file.loc(*l, *c)))
            .collect();
        let sub_range = |key: &str| -> Option<(usize, usize)> {
            let (l, c) = keys.get(key)?;
            file.src.key_at(*l, end, *c, key).map(|(s, e)| (s + 1, e))
        };
        let mut arg_locs = BTreeMap::new();
        let body = if is_block {
            for k in [
                "when",
                "register",
                "loop",
                "with_items",
                "until",
                "notify",
                "changed_when",
                "failed_when",
            ] {
                if map.contains_key(k) && k != "when" {
                    return Err(invalid(
                        at(k),
                        format!("{label}: `{k}` is not allowed on a block (put it on its tasks)"),
                    ));
                }
            }
            let mut part =
                |key: &str, map: &mut Map<String, Value>| -> Result<Vec<Task>, PlaybookError> {
                    match map.remove(key) {
                        None | Some(Value::Null) => Ok(Vec::new()),
                        Some(Value::Array(a)) => self.tasks(file, a, sub_range(key), at(key)),
                        Some(_) => Err(invalid(
                            at(key),
                            format!("{label}: `{key}` must be a list of tasks"),
                        )),
                    }
                };
            let block = part("block", &mut map)?;
            let rescue = part("rescue", &mut map)?;
            let always = part("always", &mut map)?;
            Body::Block {
                block,
                rescue,
                always,
            }
        } else if let Some(k) = include {
            let counted = short_module(&k) == "include_tasks";
            for kw in [
                "register",
                "loop",
                "with_items",
                "until",
                "notify",
                "changed_when",
                "failed_when",
            ] {
                if map.contains_key(kw) {
                    return Err(invalid(
                        at(kw),
                        format!("{label}: `{kw}` on `{k}` is not supported by vesemir"),
                    ));
                }
            }
            let file_name = match map.get(&k) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(m))
                    if m.len() == 1 && m.get("file").is_some_and(Value::is_string) =>
                {
                    m["file"].as_str().unwrap_or_default().to_string()
                }
                _ => {
                    return Err(invalid(
                        at(&k),
                        format!("{label}: `{k}` takes a file name (or `file:`)"),
                    ))
                }
            };
            if file_name.contains("{{") || file_name.contains("{%") {
                return Err(invalid(
                    at(&k),
                    format!(
                        "{label}: `{k}` with a templated file name is not supported by vesemir \
                         (the file is read when the playbook is checked)"
                    ),
                ));
            }
            let dir = file.path.parent().unwrap_or(Path::new("."));
            let fp = {
                let p = Path::new(&file_name);
                if p.is_absolute() {
                    p.to_path_buf()
                } else if dir.join("tasks").join(p).exists() && !dir.join(p).exists() {
                    dir.join("tasks").join(p)
                } else {
                    dir.join(p)
                }
            };
            if self.depth >= 8 {
                return Err(invalid(
                    at(&k),
                    format!("{label}: includes nested more than 8 deep (an include cycle?)"),
                ));
            }
            let text = std::fs::read_to_string(&fp)
                .map_err(|e| invalid(at(&k), format!("{label}: reading {}: {e}", fp.display())))?;
            let raw: serde_norway::Value =
                serde_norway::from_str(&text).map_err(|e| yaml_error(&fp, e))?;
            let raw = yaml_to_json(raw).map_err(|m| invalid(loc(&fp, 0, 0), m))?;
            let items = match raw {
                Value::Array(a) => a,
                Value::Null => Vec::new(),
                _ => return Err(invalid(loc(&fp, 0, 0), "a task file is a list of tasks")),
            };
            let inner = FileCtx {
                path: &fp,
                src: Source::new(&text),
            };
            self.depth += 1;
            let n = inner.src.lines.len();
            let tasks = self.tasks(&inner, items, Some((0, n)), loc(&fp, 0, 0));
            self.depth -= 1;
            Body::Include {
                tasks: tasks?,
                counted,
            }
        } else {
            let module = match modules.as_slice() {
                [m] => m.clone(),
                [] => {
                    return Err(invalid(
                        here,
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
            let short = short_module(&module).to_string();
            let mut args = map.get(&module).cloned().unwrap_or(Value::Null);
            if let Value::String(s) = &args {
                let converted = match short.as_str() {
                    "command" | "shell" => command_free_form(s),
                    "pause" | "set_fact" | "include_tasks" | "import_tasks" | "fail" | "assert" => {
                        Ok(args.clone())
                    }
                    "debug" | "file" | "copy" | "template" | "get_url" | "unarchive"
                    | "systemd" | "service" | "wait_for" | "uri" | "lineinfile" | "stat"
                    | "http_check" => kv_args(s),
                    _ => Ok(args.clone()),
                };
                args = converted
                    .map_err(|m| invalid(at(&module), format!("{label}: {short}: {m}")))?;
            }
            match map.get("args") {
                None | Some(Value::Null) => {}
                Some(Value::Object(extra)) => {
                    let mut merged = match args {
                        Value::Object(m) => m,
                        Value::String(s) if short == "command" || short == "shell" => {
                            let mut m = Map::new();
                            m.insert("cmd".into(), Value::String(s));
                            m
                        }
                        Value::Null => Map::new(),
                        _ => {
                            return Err(invalid(
                                at("args"),
                                format!("{label}: `args` cannot be merged into these arguments"),
                            ))
                        }
                    };
                    for (k, v) in extra {
                        merged.insert(k.clone(), v.clone());
                    }
                    args = Value::Object(merged);
                }
                Some(_) => {
                    return Err(invalid(
                        at("args"),
                        format!("{label}: `args` must be a mapping"),
                    ))
                }
            }
            if let Some((l, c)) = keys.get(&module) {
                if let Some((_, e)) = file.src.key_at(*l, end, *c, &module) {
                    if let Some((fl, fc)) = file.src.first_key_col(l + 1, e) {
                        for (k, (kl, kc)) in file.src.keys_at(fl, e, fc) {
                            arg_locs.insert(k, file.loc(kl, kc));
                        }
                    }
                }
            }
            Body::Module {
                module: short,
                args,
            }
        };
        if tags.iter().any(|t| t == "never") {
            return Ok(None);
        }
        let name = name.unwrap_or_else(|| match &body {
            Body::Module { module, .. } => module.clone(),
            Body::Block { .. } => "block".into(),
            Body::Include { counted: true, .. } => "include_tasks".into(),
            Body::Include { .. } => "import_tasks".into(),
        });
        Ok(Some(Task {
            index,
            name,
            body,
            when: list(&map, "when")?,
            register,
            timeout,
            until,
            retries,
            delay,
            ignore_errors,
            changed_when: all_of(&list(&map, "changed_when")?),
            failed_when: all_of(&list(&map, "failed_when")?),
            loop_items,
            flatten_items,
            loop_label,
            loop_var,
            notify,
            listen,
            vars,
            loc: here,
            key_locs,
            arg_locs,
        }))
    }
}

/// Task durations (`delay`, `timeout`, `pause`) are read by the one parser
/// of the workspace: a bare number is seconds, as Ansible reads them.
pub(crate) use vesemir_daemon::parse_duration;

/// Converts YAML to JSON (string keys only), so one value model is used inside.
fn yaml_to_json(v: serde_norway::Value) -> Result<Value, NonStringKey> {
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
                    other => return Err(NonStringKey(format!("{other:?}"))),
                };
                out.insert(k, yaml_to_json(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(t.value)?,
    })
}

/// Why free-form module arguments (`copy: src=a dest=b`,
/// `command: touch x creates=x`) could not be split.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FreeFormError {
    /// A word without `=` where only `key=value` words are allowed.
    #[error("`{0}` is not `key=value` (write the arguments as a mapping)")]
    NotKeyValue(String),
    /// A quote opened and not closed.
    #[error("unterminated quote in `{0}`")]
    UnterminatedQuote(String),
    /// A `command`/`shell` free-form key that Ansible has and vesemir not.
    #[error("`{0}=` is not supported by vesemir")]
    Unsupported(String),
}

/// A YAML mapping key that is not a scalar (JSON objects have string keys).
#[derive(Debug, thiserror::Error)]
#[error("mapping keys must be strings, got {0}")]
pub(crate) struct NonStringKey(String);

/// Whether an error is about an expression or a template (the message says
/// which, as the user wrote `when: x` or `"{{ x }}"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextKind {
    /// A bare expression (`when`, `changed_when`, `that`, …).
    Expression,
    /// A string with `{{ }}` / `{% %}` blocks.
    Template,
}

impl std::fmt::Display for TextKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TextKind::Expression => "expression",
            TextKind::Template => "template",
        })
    }
}

/// Why a template or an expression could not be rendered. The message
/// quotes the text as written, so the user can find it in the playbook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TemplateError {
    /// A variable the text uses is not defined: define it in `vars`, pass
    /// it as a request var or `register` it on an earlier task.
    #[error("undefined variable `{name}` in `{text}`")]
    Undefined {
        /// The dotted name (`r.stdout`) that is missing.
        name: String,
        /// The text it is used in.
        text: String,
    },
    /// The text does not compile, or its evaluation failed.
    #[error("{kind} `{text}`: {detail}")]
    Invalid {
        /// Expression or template.
        kind: TextKind,
        /// The text as written.
        text: String,
        /// minijinja's (or serde's) reason.
        detail: String,
    },
    /// The expression evaluates to an undefined value.
    #[error("{kind} `{text}` is undefined")]
    UndefinedValue {
        /// Expression or template.
        kind: TextKind,
        /// The text as written.
        text: String,
    },
    /// Several `{{ }}` blocks where one expression is expected.
    #[error("expression `{0}`: write one expression (`a and b`), not several `{{{{ }}}}` blocks")]
    SeveralBlocks(String),
    /// A loop's items are neither a list nor a template giving one.
    #[error("`{0}` is not a list")]
    NotAList(String),
}

impl TemplateError {
    fn invalid(kind: TextKind, text: &str, e: &minijinja::Error) -> Self {
        TemplateError::Invalid {
            kind,
            text: text.to_string(),
            detail: describe(e),
        }
    }

    /// The same error reported against the template the expression came
    /// from (`"{{ x }}"` is evaluated as the expression `x`).
    fn in_template(self) -> Self {
        match self {
            TemplateError::Invalid { text, detail, .. } => TemplateError::Invalid {
                kind: TextKind::Template,
                text,
                detail,
            },
            TemplateError::UndefinedValue { text, .. } => TemplateError::UndefinedValue {
                kind: TextKind::Template,
                text,
            },
            other => other,
        }
    }

    /// Whether the error is about something undefined (rather than a
    /// syntax or type error).
    pub(crate) fn is_undefined(&self) -> bool {
        match self {
            TemplateError::Undefined { .. } | TemplateError::UndefinedValue { .. } => true,
            TemplateError::Invalid { detail, .. } => detail.contains("undefined"),
            TemplateError::SeveralBlocks(_) | TemplateError::NotAList(_) => false,
        }
    }
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
) -> Result<Value, TemplateError> {
    Ok(match v {
        Value::String(s) => render_native(env, s, ctx)?,
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

/// Renders a string leaf as Ansible 2.14 does: a template that is one
/// `{{ expression }}` keeps a list, mapping or boolean value; everything
/// else (numbers included) becomes a string.
pub(crate) fn render_native(
    env: &Environment<'_>,
    s: &str,
    ctx: &Map<String, Value>,
) -> Result<Value, TemplateError> {
    let t = s.trim();
    let single = t.starts_with("{{")
        && t.ends_with("}}")
        && t[2..t.len() - 2].find("}}").is_none()
        && t[2..t.len() - 2].find("{{").is_none();
    if single {
        let v = eval_value(env, &t[2..t.len() - 2], ctx).map_err(TemplateError::in_template)?;
        if matches!(v, Value::Array(_) | Value::Object(_) | Value::Bool(_)) {
            return Ok(v);
        }
    }
    let out = render_str(env, s, ctx)?;
    Ok(match out.as_str() {
        "True" => Value::Bool(true),
        "False" => Value::Bool(false),
        _ => Value::String(out),
    })
}

/// Evaluates an expression to a JSON value.
pub(crate) fn eval_value(
    env: &Environment<'_>,
    expr: &str,
    ctx: &Map<String, Value>,
) -> Result<Value, TemplateError> {
    let e = env
        .compile_expression(expr.trim())
        .map_err(|e| TemplateError::invalid(TextKind::Expression, expr, &e))?;
    let v =
        e.eval(ctx).map_err(
            |err| match first_undefined(e.undeclared_variables(true), ctx) {
                Some(name) if err.kind() == minijinja::ErrorKind::UndefinedError => {
                    TemplateError::Undefined {
                        name,
                        text: expr.to_string(),
                    }
                }
                _ => TemplateError::invalid(TextKind::Expression, expr, &err),
            },
        )?;
    if v.is_undefined() {
        return Err(TemplateError::UndefinedValue {
            kind: TextKind::Expression,
            text: expr.to_string(),
        });
    }
    serde_json::to_value(&v).map_err(|e| TemplateError::Invalid {
        kind: TextKind::Expression,
        text: expr.to_string(),
        detail: e.to_string(),
    })
}

/// Renders one template string, with a message naming undefined variables.
pub(crate) fn render_str(
    env: &Environment<'_>,
    s: &str,
    ctx: &Map<String, Value>,
) -> Result<String, TemplateError> {
    if !s.contains("{{") && !s.contains("{%") {
        return Ok(s.to_string());
    }
    let tmpl = env
        .template_from_str(s)
        .map_err(|e| TemplateError::invalid(TextKind::Template, s, &e))?;
    tmpl.render(ctx).map_err(|e| {
        // Name the culprit when minijinja only says "undefined value".
        match first_undefined(tmpl.undeclared_variables(true), ctx) {
            Some(name) if e.kind() == minijinja::ErrorKind::UndefinedError => {
                TemplateError::Undefined {
                    name,
                    text: s.to_string(),
                }
            }
            _ => TemplateError::invalid(TextKind::Template, s, &e),
        }
    })
}

/// Evaluates a `when`-style expression to a boolean.
pub(crate) fn eval_bool(
    env: &Environment<'_>,
    expr: &str,
    ctx: &Map<String, Value>,
) -> Result<bool, TemplateError> {
    let inner = expr.trim();
    let inner = inner
        .strip_prefix("{{")
        .and_then(|s| s.strip_suffix("}}"))
        .unwrap_or(inner);
    // minijinja's expression lexer panics ("empty lexer stack") on a stray
    // `}}` (found by fuzzing: `{{ a }} and {{ b }}` strips to `a }} and {{ b`).
    if ["{{", "}}", "{%", "%}", "{#", "#}"]
        .iter()
        .any(|d| inner.contains(d))
    {
        return Err(TemplateError::SeveralBlocks(expr.to_string()));
    }
    let e = env
        .compile_expression(inner)
        .map_err(|e| TemplateError::invalid(TextKind::Expression, expr, &e))?;
    e.eval(ctx).map(|v| v.is_true()).map_err(|err| {
        match first_undefined(e.undeclared_variables(true), ctx) {
            Some(name) if err.kind() == minijinja::ErrorKind::UndefinedError => {
                TemplateError::Undefined {
                    name,
                    text: expr.to_string(),
                }
            }
            _ => TemplateError::invalid(TextKind::Expression, expr, &err),
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
    check_tasks(&env, &pb.tasks, &mut ctx)?;
    let mut hctx = ctx.clone();
    check_tasks(&env, &pb.handlers, &mut hctx)
}

/// Checks tasks in order, growing `ctx` with what they register or set.
fn check_tasks(
    env: &Environment<'_>,
    tasks: &[Task],
    ctx: &mut Map<String, Value>,
) -> Result<(), PlaybookError> {
    for t in tasks {
        check_task(env, t, ctx)?;
    }
    Ok(())
}

fn check_task(
    env: &Environment<'_>,
    t: &Task,
    ctx: &mut Map<String, Value>,
) -> Result<(), PlaybookError> {
    let label = format!("task {} ({})", t.index + 1, t.name);
    let mut local = ctx.clone();
    for (k, v) in &t.vars {
        let r = render_value(env, v, &local)
            .map_err(|m| invalid(t.at("vars"), format!("{label}: var `{k}`: {m}")))?;
        local.insert(k.clone(), r);
    }
    if let Some(items) = &t.loop_items {
        let key = if t.flatten_items {
            "with_items"
        } else {
            "loop"
        };
        let items = loop_items(env, items, t.flatten_items, &local)
            .map_err(|m| invalid(t.at(key), format!("{label}: {key}: {m}")))?;
        // Check with the first item (a loop over a registered result has a
        // placeholder list at check time).
        let item = items
            .into_iter()
            .next()
            .unwrap_or(Value::String("<item>".into()));
        local.insert(t.loop_var.clone(), item);
        if let Some(l) = &t.loop_label {
            render_str(env, l, &local).map_err(|m| {
                invalid(
                    t.at("loop_control"),
                    format!("{label}: loop_control.label: {m}"),
                )
            })?;
        }
    }
    for w in &t.when {
        check_eval(env, w, &local)
            .map_err(|m| invalid(t.at("when"), format!("{label}: when: {m}")))?;
    }
    let mut module_name = None;
    match &t.body {
        Body::Module { module, args } => {
            let rendered = match render_value(env, args, &local) {
                Ok(r) => Some(r),
                // A `uri` result's `json` is only known at run time.
                Err(m) if m.is_undefined() && args.to_string().contains(".json") => None,
                Err(m) => {
                    let l = arg_key_for(args, &m.to_string())
                        .and_then(|k| t.arg_locs.get(&k).cloned())
                        .unwrap_or_else(|| t.at(module_key(t)));
                    return Err(invalid(l, format!("{label}: {module}: {m}")));
                }
            };
            if let Some(rendered) = rendered {
                let parsed = ModuleArgs::parse(module, &rendered)
                    .map_err(|m| invalid(t.at(module_key(t)), format!("{label}: {module}: {m}")))?;
                if let ModuleArgs::SetFact(facts) = &parsed {
                    for (k, v) in facts {
                        ctx.insert(k.clone(), v.clone());
                        local.insert(k.clone(), v.clone());
                    }
                }
            }
            module_name = Some(module.clone());
        }
        Body::Block {
            block,
            rescue,
            always,
        } => {
            check_tasks(env, block, ctx)?;
            let mut rctx = ctx.clone();
            rctx.insert(
                "ansible_failed_result".into(),
                super::modules::placeholder_result("command"),
            );
            rctx.insert(
                "ansible_failed_task".into(),
                serde_json::json!({"name": ""}),
            );
            check_tasks(env, rescue, &mut rctx)?;
            for (k, v) in rctx {
                ctx.entry(k).or_insert(v);
            }
            check_tasks(env, always, ctx)?;
        }
        Body::Include { tasks, .. } => check_tasks(env, tasks, ctx)?,
    }
    if let Some(to) = &t.timeout {
        let bad =
            |m: &dyn std::fmt::Display| invalid(t.at("timeout"), format!("{label}: timeout: {m}"));
        let s = render_str(env, to, &local).map_err(|m| bad(&m))?;
        parse_duration(&s).map_err(|m| bad(&m))?;
    }
    if let Some(r) = &t.register {
        let module = module_name.as_deref().unwrap_or("command");
        let mut v = super::modules::placeholder_result(module);
        if t.loop_items.is_some() {
            let mut one = v.clone();
            if let Value::Object(m) = &mut one {
                m.insert(
                    t.loop_var.clone(),
                    local.get(&t.loop_var).cloned().unwrap_or(Value::Null),
                );
                m.insert(
                    "item".into(),
                    local.get(&t.loop_var).cloned().unwrap_or(Value::Null),
                );
            }
            if let Value::Object(m) = &mut v {
                m.insert("results".into(), Value::Array(vec![one]));
            }
        }
        if t.until.is_some() {
            if let Value::Object(m) = &mut v {
                m.insert("attempts".into(), Value::from(1));
            }
        }
        ctx.insert(r.clone(), v.clone());
        local.insert(r.clone(), v);
    }
    for (key, expr) in [
        ("until", &t.until),
        ("changed_when", &t.changed_when),
        ("failed_when", &t.failed_when),
    ] {
        if let Some(e) = expr {
            check_eval(env, e, &local)
                .map_err(|m| invalid(t.at(key), format!("{label}: {key}: {m}")))?;
        }
    }
    Ok(())
}

/// [`eval_bool`] at check time. The content of a `uri` result's `json` is
/// only known at run time, so an undefined field below `.json` is checked
/// then, not now.
fn check_eval(
    env: &Environment<'_>,
    expr: &str,
    ctx: &Map<String, Value>,
) -> Result<bool, TemplateError> {
    match eval_bool(env, expr, ctx) {
        Err(e) if expr.contains(".json") && e.is_undefined() => Ok(true),
        other => other,
    }
}

/// The key the module was written under (`file` or `ansible.builtin.file`).
fn module_key(t: &Task) -> &str {
    let kind = t.kind();
    t.key_locs
        .keys()
        .find(|k| short_module(k) == kind)
        .map(String::as_str)
        .unwrap_or(kind)
}

/// The items of a loop: a literal list (its string leaves templates) or a
/// template evaluating to a list. `with_items` flattens one level.
pub(crate) fn loop_items(
    env: &Environment<'_>,
    items: &Value,
    flatten: bool,
    ctx: &Map<String, Value>,
) -> Result<Vec<Value>, TemplateError> {
    let v = render_value(env, items, ctx)?;
    let list = match v {
        Value::Array(a) => a,
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Array(a)) => a,
            _ => return Err(TemplateError::NotAList(s)),
        },
        other => return Err(TemplateError::NotAList(other.to_string())),
    };
    if !flatten {
        return Ok(list);
    }
    let mut out = Vec::new();
    for x in list {
        match x {
            Value::Array(a) => out.extend(a),
            other => out.push(other),
        }
    }
    Ok(out)
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

    /// Found by the `template` fuzz target: minijinja panicked on this.
    #[test]
    fn stray_braces_in_an_expression_are_an_error_not_a_panic() {
        let e = eval_bool(&environment(), "{{ a }} and {{ b }}", &Map::new()).unwrap_err();
        assert!(e.to_string().contains("one expression"), "{e}");
        assert_eq!(
            eval_bool(&environment(), "{{ 1 < 2 }}", &Map::new()),
            Ok(true)
        );
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
                "pb.yml:5:5: task 2 (b): unknown or unsupported module `frobnicate`; known modules: command",
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
