//! `debug` and `assert`: modules that only look at the template context.

use serde_json::Value;

use super::{ModuleOutput, TaskEnv};
use crate::runner::ansible_jinja::python_str;
use crate::runner::playbook;

/// `debug`: logs the message or the variable's value; always ok.
pub(crate) async fn debug(
    msg: Option<&Value>,
    var: Option<&str>,
    env: &TaskEnv<'_>,
) -> ModuleOutput {
    let text = match (msg, var) {
        (Some(m), _) => show(m),
        (None, Some(v)) => match playbook::eval_value(env.templates, v, env.ctx) {
            Ok(x) => format!("{v}: {}", show(&x)),
            Err(_) => format!("{v}: VARIABLE IS NOT DEFINED!"),
        },
        (None, None) => String::new(),
    };
    for line in text.lines() {
        env.log(line.to_string()).await;
    }
    ModuleOutput::ok(text)
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => python_str(&minijinja::Value::from_serialize(other), true),
    }
}

/// `assert`: every condition holds, or the task fails naming the first
/// that does not.
pub(crate) fn assert(
    that: &[String],
    fail_msg: Option<&str>,
    success_msg: Option<&str>,
    env: &TaskEnv<'_>,
) -> ModuleOutput {
    for cond in that {
        match playbook::eval_bool(env.templates, cond, env.ctx) {
            Ok(true) => {}
            Ok(false) => {
                let mut o = ModuleOutput::failed(
                    fail_msg
                        .map(str::to_string)
                        .unwrap_or_else(|| "Assertion failed".to_string()),
                );
                o.extra
                    .insert("assertion".into(), Value::String(cond.clone()));
                o.extra.insert("evaluated_to".into(), Value::Bool(false));
                return o;
            }
            Err(e) => return ModuleOutput::failed(format!("assert: {e}")),
        }
    }
    ModuleOutput::ok(success_msg.unwrap_or("All assertions passed"))
}
