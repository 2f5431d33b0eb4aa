//! Task modules: typed arguments and their execution.
//!
//! Arguments are typed from the *rendered* JSON of a task's module key by
//! [`ModuleArgs::parse`]; the checker runs the same parse on the check
//! context's rendering, so type errors surface before anything runs.
//!
//! Architecture invariant: modules never touch the journal or the event
//! stream's framing; they report a [`ModuleOutput`] and emit log lines.

use std::path::{Path, PathBuf};
use std::time::Duration;

use minijinja::Environment;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vesemir_protocol::job::{JobEvent, LogStream, TaskStatus};

use super::RunnerConfig;
use vesemir_daemon::{parse_duration, BadDuration};

mod files;
mod logic;
mod net;
mod process;
mod systemd;
pub(crate) mod unarchive;

pub(crate) use net::redact_url;
pub(crate) use process::{run_process, tail, ProcessSpec};
pub(crate) use unarchive::unpack_into;

/// Every module a task may use.
pub(crate) const KNOWN_MODULES: &[&str] = &[
    "command",
    "shell",
    "get_url",
    "unarchive",
    "copy",
    "template",
    "file",
    "lineinfile",
    "stat",
    "systemd",
    "service",
    "wait_for",
    "uri",
    "http_check",
    "debug",
    "set_fact",
    "assert",
    "fail",
    "pause",
];

/// Arguments of `command` / `shell`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CommandArgs {
    /// argv for `command`; `["/bin/sh", "-c", cmd]` for `shell`.
    pub argv: Vec<String>,
    /// Working directory.
    pub chdir: Option<PathBuf>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Skip (ok, unchanged) when this path exists.
    pub creates: Option<PathBuf>,
    /// Skip (ok, unchanged) when this path does not exist.
    pub removes: Option<PathBuf>,
}

/// Arguments of `get_url`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GetUrlArgs {
    pub url: String,
    pub dest: PathBuf,
    /// From `checksum: "sha256:…"` (Ansible) or `sha256:` (vesemir shorthand).
    pub sha256: Option<String>,
    pub mode: Option<u32>,
    pub timeout: Duration,
    /// Download even when `dest` exists (Ansible's `force`).
    pub force: bool,
}

/// Arguments of `unarchive`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UnarchiveArgs {
    pub src: PathBuf,
    /// An existing directory the archive is extracted into (as Ansible).
    pub dest: PathBuf,
    pub strip_components: usize,
    /// `src` is on the host (true) or next to the playbook (false, Ansible's
    /// default: `files/` or the playbook's directory).
    pub remote_src: bool,
    /// Skip (ok) when this path exists.
    pub creates: Option<PathBuf>,
}

/// Arguments of `copy`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CopyArgs {
    pub content: Option<String>,
    pub src: Option<PathBuf>,
    pub dest: PathBuf,
    pub mode: Option<u32>,
    pub owner: Option<String>,
    pub group: Option<String>,
}

/// Arguments of `template`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TemplateArgs {
    pub src: PathBuf,
    pub dest: PathBuf,
    pub mode: Option<u32>,
    pub owner: Option<String>,
    pub group: Option<String>,
}

/// Desired state for `file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileState {
    Directory,
    Symlink,
    Absent,
    File,
    Touch,
}

/// Arguments of `file`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FileArgs {
    pub path: PathBuf,
    pub state: FileState,
    pub src: Option<PathBuf>,
    /// For links: replace a file, allow a dangling link (Ansible's `force`).
    pub force: bool,
    pub mode: Option<u32>,
    pub owner: Option<String>,
    pub group: Option<String>,
}

/// Desired state for `systemd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnitState {
    Started,
    Stopped,
    Restarted,
    Reloaded,
}

/// Arguments of `systemd`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SystemdArgs {
    pub name: Option<String>,
    pub state: Option<UnitState>,
    pub enabled: Option<bool>,
    pub daemon_reload: bool,
}

/// Arguments of `wait_for`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WaitForArgs {
    pub host: String,
    pub port: u16,
    /// true: wait until open; false: until closed.
    pub open: bool,
    pub timeout: Duration,
    pub delay: Duration,
}

/// Arguments of `http_check`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HttpCheckArgs {
    pub url: String,
    pub status: u16,
    pub body_contains: Option<String>,
    pub retries: u32,
    pub delay: Duration,
    pub timeout: Duration,
}

/// Arguments of `lineinfile`.
#[derive(Debug, Clone)]
pub(crate) struct LineinfileArgs {
    pub path: PathBuf,
    pub line: Option<String>,
    pub regexp: Option<regex::Regex>,
    /// true: present; false: absent.
    pub present: bool,
    pub create: bool,
    /// `insertafter`: None = EOF; Some(None) = BOF is not used; a regex.
    pub insert_after: Option<regex::Regex>,
    pub insert_before: Option<InsertBefore>,
    pub mode: Option<u32>,
}

impl PartialEq for LineinfileArgs {
    fn eq(&self, o: &Self) -> bool {
        let r = |x: &Option<regex::Regex>| x.as_ref().map(|r| r.as_str().to_string());
        self.path == o.path
            && self.line == o.line
            && r(&self.regexp) == r(&o.regexp)
            && self.present == o.present
            && self.create == o.create
            && r(&self.insert_after) == r(&o.insert_after)
            && self.insert_before == o.insert_before
            && self.mode == o.mode
    }
}

/// `insertbefore`: the first line, or before the last line matching.
#[derive(Debug, Clone)]
pub(crate) enum InsertBefore {
    Bof,
    Regex(regex::Regex),
}

impl PartialEq for InsertBefore {
    fn eq(&self, o: &Self) -> bool {
        match (self, o) {
            (InsertBefore::Bof, InsertBefore::Bof) => true,
            (InsertBefore::Regex(a), InsertBefore::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// Arguments of `uri`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UriArgs {
    pub url: String,
    pub method: String,
    pub body: Option<String>,
    pub json_body: bool,
    pub headers: Vec<(String, String)>,
    pub status_code: Vec<u16>,
    pub return_content: bool,
    pub timeout: Duration,
}

/// Typed arguments of one task's module.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ModuleArgs {
    Command(CommandArgs),
    Shell(CommandArgs),
    GetUrl(GetUrlArgs),
    Unarchive(UnarchiveArgs),
    Copy(CopyArgs),
    Template(TemplateArgs),
    File(FileArgs),
    Systemd(SystemdArgs),
    WaitFor(WaitForArgs),
    HttpCheck(HttpCheckArgs),
    Pause(Duration),
    Lineinfile(LineinfileArgs),
    /// `stat: path=…` (follow links: no, as Ansible's default).
    Stat(PathBuf),
    Uri(UriArgs),
    /// `debug`: the message (already rendered), or a variable to show.
    Debug {
        msg: Option<Value>,
        var: Option<String>,
    },
    /// `set_fact`: values for the context.
    SetFact(Vec<(String, Value)>),
    /// `assert`: each condition's text and value (rendered at run time).
    Assert {
        that: Vec<String>,
        fail_msg: Option<String>,
        success_msg: Option<String>,
    },
    /// `fail`: the message.
    Fail(String),
}

/// Typed access to a module's argument mapping; leftover keys are errors.
struct Fields {
    map: Map<String, Value>,
}

/// Why a module's arguments were refused (at check time and at run time:
/// the message is the task's failure message). Each says which argument
/// is wrong and what it takes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArgsError {
    /// The module key holds a scalar or a list where a mapping is needed.
    #[error("`{module}` takes a mapping of arguments")]
    NotAMapping { module: String },
    /// An argument that must be a scalar is a list or a mapping.
    #[error("`{key}` must be a string")]
    NotAString { key: String },
    /// A required argument is missing.
    #[error("`{key}` is required")]
    Required { key: String },
    /// A path argument is the empty string.
    #[error("`{key}` is empty")]
    Empty { key: String },
    /// A boolean argument is not one of Ansible's booleans.
    #[error("`{key}` must be true or false, not `{got}`")]
    NotABool { key: String, got: String },
    /// A numeric argument does not parse.
    #[error("`{key}` must be a number, not `{got}`")]
    NotANumber { key: String, got: String },
    /// A duration argument does not parse.
    #[error("`{key}`: {source}")]
    Duration { key: String, source: BadDuration },
    /// A mode argument is not octal.
    #[error("`{key}`: {source}")]
    Mode { key: String, source: BadMode },
    /// A regular expression argument does not compile.
    #[error("`{key}`: {source}")]
    Regex { key: String, source: regex::Error },
    /// An argument the module does not know (a typo, or not supported).
    #[error("unknown argument `{key}` for `{module}`")]
    UnknownArgument { key: String, module: String },
    /// A module name the runner has no implementation for.
    #[error("unknown module `{0}`")]
    UnknownModule(String),
    /// A free-form command line with an open quote.
    #[error("unterminated quote in `{0}`")]
    UnterminatedQuote(String),
    /// `pause`'s free form is not a duration.
    #[error(transparent)]
    PauseDuration(#[from] BadDuration),
    /// A module-specific rule (combinations, unsupported options); the
    /// message names the argument and the supported alternative.
    #[error("{0}")]
    Invalid(String),
}

impl From<&str> for ArgsError {
    fn from(m: &str) -> Self {
        ArgsError::Invalid(m.to_string())
    }
}

impl From<String> for ArgsError {
    fn from(m: String) -> Self {
        ArgsError::Invalid(m)
    }
}

/// A file mode that [`parse_mode`] could not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an octal file mode like \"0644\"")]
pub(crate) struct BadMode(String);

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Fields {
    fn new(v: &Value, module: &str) -> Result<Fields, ArgsError> {
        match v {
            Value::Object(m) => Ok(Fields { map: m.clone() }),
            Value::Null => Ok(Fields { map: Map::new() }),
            _ => Err(ArgsError::NotAMapping {
                module: module.to_string(),
            }),
        }
    }
    fn str(&mut self, k: &str) -> Result<Option<String>, ArgsError> {
        match self.map.remove(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => scalar(&v)
                .map(Some)
                .ok_or_else(|| ArgsError::NotAString { key: k.to_string() }),
        }
    }
    fn req(&mut self, k: &str) -> Result<String, ArgsError> {
        self.str(k)?
            .ok_or_else(|| ArgsError::Required { key: k.to_string() })
    }
    fn path(&mut self, k: &str) -> Result<Option<PathBuf>, ArgsError> {
        Ok(self.str(k)?.map(PathBuf::from))
    }
    fn req_path(&mut self, k: &str) -> Result<PathBuf, ArgsError> {
        let p = self.req(k)?;
        if p.is_empty() {
            return Err(ArgsError::Empty { key: k.to_string() });
        }
        Ok(PathBuf::from(p))
    }
    fn bool(&mut self, k: &str) -> Result<Option<bool>, ArgsError> {
        match self.str(k)?.as_deref() {
            None => Ok(None),
            Some("true" | "True" | "yes" | "on" | "1") => Ok(Some(true)),
            Some("false" | "False" | "no" | "off" | "0") => Ok(Some(false)),
            Some(o) => Err(ArgsError::NotABool {
                key: k.to_string(),
                got: o.to_string(),
            }),
        }
    }
    fn num<T: std::str::FromStr>(&mut self, k: &str) -> Result<Option<T>, ArgsError> {
        match self.str(k)? {
            None => Ok(None),
            Some(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| ArgsError::NotANumber {
                    key: k.to_string(),
                    got: s.clone(),
                }),
        }
    }
    fn duration(&mut self, k: &str) -> Result<Option<Duration>, ArgsError> {
        match self.str(k)? {
            None => Ok(None),
            Some(s) => parse_duration(&s)
                .map(Some)
                .map_err(|source| ArgsError::Duration {
                    key: k.to_string(),
                    source,
                }),
        }
    }
    fn mode(&mut self, k: &str) -> Result<Option<u32>, ArgsError> {
        match self.str(k)? {
            None => Ok(None),
            Some(s) => parse_mode(&s).map(Some).map_err(|source| ArgsError::Mode {
                key: k.to_string(),
                source,
            }),
        }
    }
    fn finish(self, module: &str) -> Result<(), ArgsError> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(ArgsError::UnknownArgument {
                key: k.clone(),
                module: module.to_string(),
            }),
        }
    }
}

/// Octal mode from `"0644"`, `"644"` or `"0o644"` (YAML `0644` unquoted
/// reaches us as the digits 644 and is read as octal too).
pub(crate) fn parse_mode(s: &str) -> Result<u32, BadMode> {
    let t = s.trim();
    let t = t.strip_prefix("0o").unwrap_or(t);
    u32::from_str_radix(t, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| BadMode(s.to_string()))
}

/// Splits a free-form command line on whitespace, honouring simple quotes.
pub(crate) fn split_words(s: &str) -> Result<Vec<String>, ArgsError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => cur.extend(chars.next()),
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                cur.extend(chars.next());
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(ArgsError::UnterminatedQuote(s.to_string()));
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

fn command_args(v: &Value, shell: bool) -> Result<CommandArgs, ArgsError> {
    let module = if shell { "shell" } else { "command" };
    let (cmd, mut f) = match v {
        Value::Object(_) => {
            let mut f = Fields::new(v, module)?;
            let cmd = match (f.map.remove("cmd"), f.map.remove("argv")) {
                (Some(c), None) | (None, Some(c)) => c,
                (None, None) => return Err("`cmd` (or `argv`) is required".into()),
                (Some(_), Some(_)) => return Err("give `cmd` or `argv`, not both".into()),
            };
            (cmd, Some(f))
        }
        other => (other.clone(), None),
    };
    let argv = match (&cmd, shell) {
        (Value::String(s), true) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        (Value::String(s), false) => split_words(s)?,
        (Value::Array(a), false) => a
            .iter()
            .map(|x| scalar(x).ok_or_else(|| "argv items must be strings".to_string()))
            .collect::<Result<_, _>>()?,
        (Value::Array(_), true) => return Err("`shell` takes a command string".into()),
        (Value::Number(_) | Value::Bool(_), _) => {
            let s = scalar(&cmd).unwrap_or_default();
            if shell {
                vec!["/bin/sh".into(), "-c".into(), s]
            } else {
                vec![s]
            }
        }
        _ => return Err(format!("`{module}` takes a command string or a list").into()),
    };
    if argv.is_empty() || argv[0].is_empty() {
        return Err("empty command".into());
    }
    let mut out = CommandArgs {
        argv,
        chdir: None,
        env: Vec::new(),
        creates: None,
        removes: None,
    };
    if let Some(mut f) = f.take() {
        out.chdir = f.path("chdir")?;
        out.creates = f.path("creates")?;
        out.removes = f.path("removes")?;
        match f.map.remove("env") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let v = scalar(&v).ok_or_else(|| format!("env `{k}` must be a string"))?;
                    out.env.push((k, v));
                }
            }
            Some(_) => return Err("`env` must be a mapping".into()),
        }
        f.finish(module)?;
    }
    Ok(out)
}

impl ModuleArgs {
    /// Types the rendered arguments of module `module`.
    pub(crate) fn parse(module: &str, v: &Value) -> Result<ModuleArgs, ArgsError> {
        Ok(match module {
            "command" => ModuleArgs::Command(command_args(v, false)?),
            "shell" => ModuleArgs::Shell(command_args(v, true)?),
            "fail" | "debug" if v.is_string() => {
                let mut m = Map::new();
                m.insert("msg".into(), v.clone());
                return ModuleArgs::parse(module, &Value::Object(m));
            }
            "pause" => ModuleArgs::Pause(match v {
                Value::Object(_) => {
                    let mut f = Fields::new(v, module)?;
                    if f.map.contains_key("prompt") {
                        return Err(
                            "`prompt` is not supported by vesemir (an agent has no terminal)"
                                .into(),
                        );
                    }
                    let minutes = f
                        .num::<f64>("minutes")?
                        .map(|m| Duration::from_secs_f64(m * 60.0));
                    let d = match (f.duration("seconds")?, f.duration("duration")?, minutes) {
                        (Some(d), None, None) | (None, Some(d), None) | (None, None, Some(d)) => d,
                        _ => return Err("give one of `seconds`, `minutes` or `duration`".into()),
                    };
                    f.finish(module)?;
                    d
                }
                other => parse_duration(&scalar(other).ok_or("`pause` takes a duration")?)?,
            }),
            _ => {
                let mut f = Fields::new(v, module)?;
                let args = match module {
                    "get_url" => {
                        let sha256 = match (f.str("checksum")?, f.str("sha256")?) {
                            (Some(_), Some(_)) => {
                                return Err("give `checksum` or `sha256`, not both".into())
                            }
                            (Some(c), None) => match c.split_once(':') {
                                Some((alg, hex)) if alg.eq_ignore_ascii_case("sha256") => {
                                    Some(hex.trim().to_ascii_lowercase())
                                }
                                Some((alg, _)) => {
                                    return Err(format!(
                                        "`checksum` algorithm `{alg}` is not supported by vesemir; use `sha256:<hex>`"
                                    ).into())
                                }
                                None => {
                                    return Err(
                                        "`checksum` is `sha256:<hex>` (algorithm, colon, digest)".into()
                                    )
                                }
                            },
                            (None, Some(s)) => Some(
                                s.trim_start_matches("sha256:").trim().to_ascii_lowercase(),
                            ),
                            (None, None) => None,
                        };
                        if let Some(h) = &sha256 {
                            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                                return Err(format!("the sha256 digest `{h}` is not 64 hex digits").into());
                            }
                        }
                        ModuleArgs::GetUrl(GetUrlArgs {
                            url: f.req("url")?,
                            dest: f.req_path("dest")?,
                            sha256,
                            mode: f.mode("mode")?,
                            timeout: f.duration("timeout")?.unwrap_or(Duration::from_secs(600)),
                            force: f.bool("force")?.unwrap_or(false),
                        })
                    }
                    "unarchive" => {
                        for k in ["extra_opts", "exclude", "include", "keep_newer", "list_files", "owner", "group", "mode", "copy", "decrypt", "io_buffer_size", "validate_certs"] {
                            if f.map.contains_key(k) {
                                return Err(format!(
                                    "`{k}` is not supported by vesemir's unarchive (it extracts tar.gz itself, refusing unsafe entries; supported: src, dest, remote_src, creates, strip_components)"
                                ).into());
                            }
                        }
                        ModuleArgs::Unarchive(UnarchiveArgs {
                            src: f.req_path("src")?,
                            dest: f.req_path("dest")?,
                            strip_components: f.num("strip_components")?.unwrap_or(0),
                            remote_src: f.bool("remote_src")?.unwrap_or(false),
                            creates: f.path("creates")?,
                        })
                    }
                    "lineinfile" => {
                        let re = |f: &mut Fields, k: &str| -> Result<Option<regex::Regex>, ArgsError> {
                            f.str(k)?
                                .map(|p| regex::Regex::new(&p).map_err(|source| ArgsError::Regex { key: k.to_string(), source }))
                                .transpose()
                        };
                        let path = match f.path("path")? {
                            Some(p) => p,
                            None => f.path("dest")?.ok_or("`path` is required")?,
                        };
                        let regexp = match re(&mut f, "regexp")? {
                            Some(r) => Some(r),
                            None => re(&mut f, "regex")?,
                        };
                        let present = match f.str("state")?.as_deref() {
                            None | Some("present") => true,
                            Some("absent") => false,
                            Some(o) => return Err(format!("`state` must be present or absent, not `{o}`").into()),
                        };
                        let line = f.str("line")?;
                        if present && line.is_none() {
                            return Err("`line` is required with state=present".into());
                        }
                        if !present && line.is_none() && regexp.is_none() {
                            return Err("state=absent needs `line` or `regexp`".into());
                        }
                        let insert_after = match f.str("insertafter")?.as_deref() {
                            None | Some("EOF") => None,
                            Some(p) => Some(regex::Regex::new(p).map_err(|source| ArgsError::Regex { key: "insertafter".into(), source })?),
                        };
                        let insert_before = match f.str("insertbefore")?.as_deref() {
                            None => None,
                            Some("BOF") => Some(InsertBefore::Bof),
                            Some(p) => Some(InsertBefore::Regex(
                                regex::Regex::new(p).map_err(|source| ArgsError::Regex { key: "insertbefore".into(), source })?,
                            )),
                        };
                        if insert_after.is_some() && insert_before.is_some() {
                            return Err("give `insertafter` or `insertbefore`, not both".into());
                        }
                        ModuleArgs::Lineinfile(LineinfileArgs {
                            path,
                            line,
                            regexp,
                            present,
                            create: f.bool("create")?.unwrap_or(false),
                            insert_after,
                            insert_before,
                            mode: f.mode("mode")?,
                        })
                    }
                    "stat" => {
                        let p = f.req_path("path")?;
                        if let Some(true) = f.bool("follow")? {
                            return Err("`follow: true` is not supported by vesemir".into());
                        }
                        let _ = f.bool("get_checksum")?;
                        let _ = f.str("checksum_algorithm")?.map(|a| {
                            if a == "sha1" { Ok(()) } else { Err(ArgsError::Invalid(format!("checksum_algorithm `{a}` is not supported by vesemir (sha1)"))) }
                        }).transpose()?;
                        ModuleArgs::Stat(p)
                    }
                    "uri" => {
                        let body_format = f.str("body_format")?;
                        let json_body = match body_format.as_deref() {
                            None | Some("raw") => false,
                            Some("json") => true,
                            Some(o) => return Err(format!("`body_format` `{o}` is not supported by vesemir (raw, json)").into()),
                        };
                        let body = match f.map.remove("body") {
                            None | Some(Value::Null) => None,
                            Some(Value::String(s)) => Some(s),
                            Some(v) if json_body => Some(v.to_string()),
                            Some(_) => return Err("`body` must be a string unless body_format is json".into()),
                        };
                        let status_code = match f.map.remove("status_code") {
                            None | Some(Value::Null) => vec![200],
                            Some(Value::Array(a)) => a
                                .iter()
                                .map(|x| scalar(x).and_then(|s| s.trim().parse().ok()).ok_or("`status_code` lists HTTP status numbers"))
                                .collect::<Result<_, _>>()?,
                            Some(v) => scalar(&v)
                                .map(|s| s.split(',').map(|x| x.trim().parse::<u16>()).collect::<Result<Vec<_>, _>>())
                                .ok_or("`status_code` must be a number or a list")?
                                .map_err(|_| "`status_code` must be a number or a list")?,
                        };
                        let mut headers = Vec::new();
                        match f.map.remove("headers") {
                            None | Some(Value::Null) => {}
                            Some(Value::Object(m)) => {
                                for (k, v) in m {
                                    headers.push((k, scalar(&v).ok_or("header values must be strings")?));
                                }
                            }
                            Some(_) => return Err("`headers` must be a mapping".into()),
                        }
                        if let Some(false) = f.bool("validate_certs")? {
                            return Err("`validate_certs: false` is not supported by vesemir".into());
                        }
                        ModuleArgs::Uri(UriArgs {
                            url: f.req("url")?,
                            method: f.str("method")?.unwrap_or_else(|| "GET".into()).to_ascii_uppercase(),
                            body,
                            json_body,
                            headers,
                            status_code,
                            return_content: f.bool("return_content")?.unwrap_or(false),
                            timeout: f.duration("timeout")?.unwrap_or(Duration::from_secs(30)),
                        })
                    }
                    "debug" => {
                        let msg = f.map.remove("msg");
                        let var = f.map.remove("var");
                        let _ = f.num::<u32>("verbosity")?;
                        match (msg, var) {
                            (Some(_), Some(_)) => return Err("give `msg` or `var`, not both".into()),
                            (Some(m), None) => ModuleArgs::Debug { msg: Some(m), var: None },
                            (None, Some(v)) => ModuleArgs::Debug {
                                msg: None,
                                var: Some(scalar(&v).ok_or("`var` names a variable")?),
                            },
                            (None, None) => ModuleArgs::Debug {
                                msg: Some(Value::String("Hello world!".into())),
                                var: None,
                            },
                        }
                    }
                    "set_fact" => {
                        let _ = f.bool("cacheable")?;
                        let facts: Vec<(String, Value)> = std::mem::take(&mut f.map).into_iter().collect();
                        if facts.is_empty() {
                            return Err("`set_fact` needs at least one variable".into());
                        }
                        ModuleArgs::SetFact(facts)
                    }
                    "assert" => {
                        let that = match f.map.remove("that") {
                            Some(Value::Array(a)) => a
                                .iter()
                                .map(|x| scalar(x).ok_or("`that` lists conditions"))
                                .collect::<Result<Vec<_>, _>>()?,
                            Some(v) => vec![scalar(&v).ok_or("`that` is a condition or a list")?],
                            None => return Err("`that` is required".into()),
                        };
                        let fail_msg = match f.str("fail_msg")? {
                            Some(m) => Some(m),
                            None => f.str("msg")?,
                        };
                        let _ = f.bool("quiet")?;
                        ModuleArgs::Assert {
                            that,
                            fail_msg,
                            success_msg: f.str("success_msg")?,
                        }
                    }
                    "fail" => ModuleArgs::Fail(
                        f.str("msg")?.unwrap_or_else(|| "Failed as requested from task".into()),
                    ),
                    "copy" => {
                        let a = CopyArgs {
                            content: f.str("content")?,
                            src: f.path("src")?,
                            dest: f.req_path("dest")?,
                            mode: f.mode("mode")?,
                            owner: f.str("owner")?,
                            group: f.str("group")?,
                        };
                        if a.content.is_some() == a.src.is_some() {
                            return Err("give exactly one of `content` or `src`".into());
                        }
                        ModuleArgs::Copy(a)
                    }
                    "template" => ModuleArgs::Template(TemplateArgs {
                        src: f.req_path("src")?,
                        dest: f.req_path("dest")?,
                        mode: f.mode("mode")?,
                        owner: f.str("owner")?,
                        group: f.str("group")?,
                    }),
                    "file" => {
                        let path = match f.path("path")? {
                            Some(p) => p,
                            None => match f.path("dest")? {
                                Some(p) => p,
                                None => f.req_path("name")?,
                            },
                        };
                        if path.as_os_str().is_empty() {
                            return Err("`path` is empty".into());
                        }
                        let src = f.path("src")?;
                        if f.map.contains_key("recurse") {
                            return Err("`recurse` is not supported by vesemir".into());
                        }
                        let state = match f.str("state")?.as_deref() {
                            Some("directory") => FileState::Directory,
                            Some("link" | "symlink") => FileState::Symlink,
                            Some("absent") => FileState::Absent,
                            None | Some("file") => FileState::File,
                            Some("touch") => FileState::Touch,
                            Some(o) => {
                                return Err(format!(
                                "`state` must be directory, link, absent, file or touch, not `{o}`"
                            ).into())
                            }
                        };
                        if (state == FileState::Symlink) != src.is_some() {
                            return Err("`src` is required for, and only for, state=link".into());
                        }
                        ModuleArgs::File(FileArgs {
                            path,
                            state,
                            src,
                            force: f.bool("force")?.unwrap_or(false),
                            mode: f.mode("mode")?,
                            owner: f.str("owner")?,
                            group: f.str("group")?,
                        })
                    }
                    "systemd" | "service" => {
                        let a = SystemdArgs {
                            name: f.str("name")?,
                            state: match f.str("state")?.as_deref() {
                                None => None,
                                Some("started") => Some(UnitState::Started),
                                Some("stopped") => Some(UnitState::Stopped),
                                Some("restarted") => Some(UnitState::Restarted),
                                Some("reloaded") => Some(UnitState::Reloaded),
                                Some(o) => {
                                    return Err(format!(
                                "`state` must be started, stopped, restarted or reloaded, not `{o}`"
                            ).into())
                                }
                            },
                            enabled: f.bool("enabled")?,
                            daemon_reload: if module == "service" {
                                false
                            } else {
                                f.bool("daemon_reload")?.unwrap_or(false)
                            },
                        };
                        if a.name.is_none() && (a.state.is_some() || a.enabled.is_some()) {
                            return Err("`name` is required with `state` or `enabled`".into());
                        }
                        if a.name.is_none() && !a.daemon_reload {
                            return Err("nothing to do: give `name` and `state`/`enabled`, or `daemon_reload`".into());
                        }
                        ModuleArgs::Systemd(a)
                    }
                    "wait_for" if f.map.contains_key("path") || f.map.contains_key("search_regex") => {
                        return Err("`wait_for` with `path`/`search_regex` is not supported by vesemir (ports only)".into())
                    }
                    "wait_for" => ModuleArgs::WaitFor(WaitForArgs {
                        host: f.str("host")?.unwrap_or_else(|| "127.0.0.1".into()),
                        port: f.num("port")?.ok_or("`port` is required")?,
                        open: match f.str("state")?.as_deref() {
                            None | Some("started" | "open") => true,
                            Some("stopped" | "closed") => false,
                            Some(o) => {
                                return Err(format!(
                                    "`state` must be started/open or stopped/closed, not `{o}`"
                                ).into())
                            }
                        },
                        timeout: f.duration("timeout")?.unwrap_or(Duration::from_secs(300)),
                        delay: f.duration("delay")?.unwrap_or(Duration::ZERO),
                    }),
                    "http_check" => ModuleArgs::HttpCheck(HttpCheckArgs {
                        url: f.req("url")?,
                        status: f.num("status")?.unwrap_or(200),
                        body_contains: f.str("body_contains")?,
                        retries: f.num("retries")?.unwrap_or(10),
                        delay: f.duration("delay")?.unwrap_or(Duration::from_secs(1)),
                        timeout: f.duration("timeout")?.unwrap_or(Duration::from_secs(10)),
                    }),
                    other => return Err(ArgsError::UnknownModule(other.to_string())),
                };
                f.finish(module)?;
                args
            }
        })
    }

    /// Whether the module runs processes and handles stop requests itself
    /// (killing its process group); other modules are simply dropped.
    pub(crate) fn handles_stop(&self) -> bool {
        matches!(
            self,
            ModuleArgs::Command(_) | ModuleArgs::Shell(_) | ModuleArgs::Systemd(_)
        )
    }
}

/// What a module reports.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ModuleOutput {
    /// Ok, Changed or Failed (Skipped is decided by the runner).
    pub status: Option<TaskStatus>,
    /// Exit code of the (last) process.
    pub rc: Option<i32>,
    /// One-line summary or error.
    pub msg: String,
    /// Captured stdout (bounded).
    pub stdout: String,
    /// Captured stderr (bounded).
    pub stderr: String,
    /// The module stopped because it was asked to (timeout or cancel).
    pub stopped: bool,
    /// A failed result that still changed something (a command that ran and
    /// exited non-zero): Ansible counts it `changed` when errors are ignored.
    pub changed_anyway: bool,
    /// Module-specific fields of the registered result (`stat`, `json`, …).
    pub extra: Map<String, Value>,
}

impl ModuleOutput {
    pub(crate) fn ok(msg: impl Into<String>) -> Self {
        Self::with(TaskStatus::Ok, msg)
    }
    pub(crate) fn changed(msg: impl Into<String>) -> Self {
        Self::with(TaskStatus::Changed, msg)
    }
    pub(crate) fn failed(msg: impl Into<String>) -> Self {
        Self::with(TaskStatus::Failed, msg)
    }
    fn with(status: TaskStatus, msg: impl Into<String>) -> Self {
        ModuleOutput {
            status: Some(status),
            msg: msg.into(),
            ..Default::default()
        }
    }
    /// The status, Failed when unset.
    pub(crate) fn status(&self) -> TaskStatus {
        self.status.unwrap_or(TaskStatus::Failed)
    }
}

/// The registered result a module gives at check time: every common field,
/// plus the module's own (so `r.stat.exists` or `r.json` check).
pub(crate) fn placeholder_result(module: &str) -> Value {
    let mut v = serde_json::json!({
        "rc": 0, "stdout": "", "stderr": "", "stdout_lines": [], "stderr_lines": [],
        "changed": false, "failed": false, "skipped": false, "status": "ok", "msg": "",
    });
    let m = v.as_object_mut().expect("an object");
    match module {
        "stat" => {
            m.insert("stat".into(), files::stat_value(None));
        }
        "uri" => {
            m.insert("status".into(), Value::from(200));
            m.insert("json".into(), Value::Object(Map::new()));
            m.insert("content".into(), Value::String(String::new()));
            m.insert("url".into(), Value::String(String::new()));
        }
        "get_url" | "copy" | "template" | "unarchive" | "lineinfile" => {
            m.insert("dest".into(), Value::String(String::new()));
        }
        "file" => {
            m.insert("path".into(), Value::String(String::new()));
            m.insert("state".into(), Value::String(String::new()));
        }
        _ => {}
    }
    v
}

/// Everything a module may use while running.
pub(crate) struct TaskEnv<'a> {
    /// Runner configuration (systemctl path…).
    pub cfg: &'a RunnerConfig,
    /// Task position, for log events.
    pub index: u32,
    /// Where log lines go.
    pub events: &'a mpsc::Sender<JobEvent>,
    /// Fires on timeout or cancel.
    pub stop: &'a CancellationToken,
    /// Directory of the playbook, for relative `src` paths.
    pub playbook_dir: &'a Path,
    /// Template environment, for `template`.
    pub templates: &'a Environment<'static>,
    /// Template context, for `template`.
    pub ctx: &'a Map<String, Value>,
}

impl TaskEnv<'_> {
    /// Emits a runner log line for this task.
    pub(crate) async fn log(&self, line: impl Into<String>) {
        let _ = self
            .events
            .send(JobEvent::Log {
                index: self.index,
                stream: LogStream::Runner,
                line: line.into(),
            })
            .await;
    }

    /// A relative `src` as Ansible finds it: `<playbook dir>/<sub>/p`
    /// (`files/` for copy and unarchive, `templates/` for template), else
    /// `<playbook dir>/p`.
    pub(crate) fn resolve_in(&self, p: &Path, sub: &str) -> PathBuf {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        let in_sub = self.playbook_dir.join(sub).join(p);
        if in_sub.exists() {
            in_sub
        } else {
            self.playbook_dir.join(p)
        }
    }
}

/// Runs one module.
pub(crate) async fn run(args: &ModuleArgs, env: &TaskEnv<'_>) -> ModuleOutput {
    match args {
        ModuleArgs::Command(a) | ModuleArgs::Shell(a) => {
            if let Some(c) = &a.creates {
                if c.exists() {
                    return ModuleOutput::ok(format!("skipped, since {} exists", c.display()));
                }
            }
            if let Some(r) = &a.removes {
                if !r.exists() {
                    return ModuleOutput::ok(format!(
                        "skipped, since {} does not exist",
                        r.display()
                    ));
                }
            }
            let spec = ProcessSpec {
                argv: a.argv.clone(),
                chdir: a.chdir.clone(),
                env: a.env.clone(),
            };
            let out = run_process(&spec, env).await;
            let mut o = match out {
                Ok(p) => {
                    let mut o = if p.stopped {
                        ModuleOutput::failed("stopped")
                    } else if p.rc == Some(0) {
                        ModuleOutput::changed("")
                    } else {
                        ModuleOutput::failed(match p.rc {
                            Some(rc) => format!("non-zero return code {rc}"),
                            None => "killed by a signal".to_string(),
                        })
                    };
                    o.rc = p.rc;
                    o.changed_anyway = !p.stopped;
                    o.stdout = p.stdout;
                    o.stderr = p.stderr;
                    o.stopped = p.stopped;
                    o
                }
                Err(e) => ModuleOutput::failed(format!("cannot run `{}`: {e}", a.argv[0])),
            };
            if o.msg.is_empty() {
                o.msg = "rc=0".into();
            }
            o
        }
        ModuleArgs::GetUrl(a) => net::get_url(a, env).await,
        ModuleArgs::HttpCheck(a) => net::http_check(a, env).await,
        ModuleArgs::WaitFor(a) => net::wait_for(a, env).await,
        ModuleArgs::Unarchive(a) => unarchive::run(a, env).await,
        ModuleArgs::Copy(a) => files::copy(a, env).await,
        ModuleArgs::Template(a) => files::template(a, env).await,
        ModuleArgs::File(a) => files::file(a, env).await,
        ModuleArgs::Systemd(a) => systemd::run(a, env).await,
        ModuleArgs::Lineinfile(a) => files::lineinfile(a).await,
        ModuleArgs::Stat(p) => files::stat(p).await,
        ModuleArgs::Uri(a) => net::uri(a, env).await,
        ModuleArgs::Debug { msg, var } => logic::debug(msg.as_ref(), var.as_deref(), env).await,
        ModuleArgs::SetFact(_) => ModuleOutput::ok(""),
        ModuleArgs::Assert {
            that,
            fail_msg,
            success_msg,
        } => logic::assert(that, fail_msg.as_deref(), success_msg.as_deref(), env),
        ModuleArgs::Fail(msg) => ModuleOutput::failed(msg.clone()),
        ModuleArgs::Pause(d) => {
            tokio::time::sleep(*d).await;
            ModuleOutput::ok(format!("paused {}", humantime::format_duration(*d)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(module: &str, args: Value, expected: Result<ModuleArgs, &str>) {
        let got = ModuleArgs::parse(module, &args);
        match (got, expected) {
            (Ok(g), Ok(e)) => assert_eq!(g, e),
            (Err(g), Err(e)) => assert!(g.to_string().contains(e), "{g} !~ {e}"),
            (g, e) => panic!("{module} {args}: got {g:?}, expected {e:?}"),
        }
    }

    #[test]
    fn parses_args() {
        let cmd = |argv: &[&str]| CommandArgs {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            chdir: None,
            env: vec![],
            creates: None,
            removes: None,
        };
        check(
            "command",
            json!("echo 'a b' c"),
            Ok(ModuleArgs::Command(cmd(&["echo", "a b", "c"]))),
        );
        check(
            "command",
            json!(["ls", "-l"]),
            Ok(ModuleArgs::Command(cmd(&["ls", "-l"]))),
        );
        check(
            "shell",
            json!("echo $HOME | wc"),
            Ok(ModuleArgs::Shell(cmd(&[
                "/bin/sh",
                "-c",
                "echo $HOME | wc",
            ]))),
        );
        check(
            "command",
            json!({"cmd": "x", "bogus": 1}),
            Err("unknown argument `bogus`"),
        );
        check(
            "pause",
            json!("1s"),
            Ok(ModuleArgs::Pause(Duration::from_secs(1))),
        );
        check(
            "pause",
            json!({"seconds": 2}),
            Ok(ModuleArgs::Pause(Duration::from_secs(2))),
        );
        check(
            "file",
            json!({"path": "/x", "state": "link"}),
            Err("`src` is required"),
        );
        check("copy", json!({"dest": "/x"}), Err("exactly one of"));
        check(
            "wait_for",
            json!({"port": "http"}),
            Err("`port` must be a number"),
        );
        check(
            "copy",
            json!({"dest": "/x", "content": "", "mode": "0999"}),
            Err("octal"),
        );
        check(
            "systemd",
            json!({"state": "started"}),
            Err("`name` is required"),
        );
    }

    #[test]
    fn modes_and_words() {
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert!(parse_mode("rw").is_err());
        assert_eq!(split_words(r#"a "b c" d\ e"#).unwrap(), ["a", "b c", "d e"]);
        assert!(split_words("'x").is_err());
    }
}
