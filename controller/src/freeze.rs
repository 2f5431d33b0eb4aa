//! Freeze windows: times when deployments to some environments are refused
//! (`[[freeze]]` in `controller.toml`).
//!
//! The deploy endpoint asks [`FreezeCalendar::admit`] (dry runs too): inside
//! a window it answers 409 naming the window and when it ends, unless the
//! request carries `override_freeze` from a token allowed to
//! ([`may_override`]: admin tokens), which is then recorded with the
//! deployment ([`Override::record`]). A non-admin override is a 403.
//!
//! A window is either one period or a recurring one:
//!
//! ```toml
//! [[freeze]]                      # one period, RFC 3339 times
//! environment = "prod*"
//! start = "2026-12-20T00:00:00Z"
//! end = "2027-01-04T08:00:00Z"     # end excluded
//! reason = "year-end freeze"
//!
//! [[freeze]]                      # daily, on some days
//! environment = "production"
//! days = ["mon", "tue", "wed", "thu", "fri"]
//! from = "18:00"
//! to = "08:00"                    # to <= from: ends the next morning
//! timezone = "+01:00"
//! reason = "no deploys at night"
//!
//! [[freeze]]                      # weekly span
//! environment = "*"
//! from = "fri 16:00"
//! to = "mon 08:00"
//! reason = "weekend"
//! ```
//!
//! Rules: `environment` is a glob (`*` any run of characters, `?` one).
//! A recurring window's `from`/`to` are both `HH:MM` (daily: on each of
//! `days`, default every day, starting that day; `to = "24:00"` is the end of
//! the day; no `from`/`to` means the whole day) or both `ddd HH:MM` (one
//! weekly span; `days` not allowed). `timezone` is `UTC` (default) or a
//! fixed offset `+HH:MM`/`-HH:MM`: named zones with daylight saving are not
//! supported, so the offset in force is written out. Times are half-open:
//! the start minute is frozen, the end minute is not.
//!
//! Invariant: no IO and no clock here; `now` is passed in.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

const DAY: u32 = 24 * 60;
const WEEK: u32 = 7 * DAY;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// One `[[freeze]]` table as written in `controller.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FreezeSpec {
    /// Environments frozen: a glob (`prod*`, `*`).
    pub environment: String,
    /// Why; shown in the 409 and recorded with an override.
    pub reason: String,
    /// One period's start (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// One period's end (RFC 3339), excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Days a daily window starts on (`mon`…`sun`); default every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// Recurring start: `HH:MM` (daily) or `ddd HH:MM` (weekly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Recurring end, excluded, same form as `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `UTC` or `+HH:MM`/`-HH:MM`, for `from`/`to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// When a window applies, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum When {
    /// `start <= now < end`.
    Period {
        start: OffsetDateTime,
        end: OffsetDateTime,
    },
    /// Spans of the week in minutes from Monday 00:00 at `offset`:
    /// `(start, length)`, a span may wrap past Sunday into Monday.
    Weekly {
        offset: UtcOffset,
        spans: Vec<(u32, u32)>,
    },
}

/// A freeze window, checked and ready to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Its position in the config (`[[freeze]]` number, from 0), to name it.
    pub index: usize,
    /// The environment glob.
    pub environment: String,
    /// Why.
    pub reason: String,
    /// The spec as written, shown in messages.
    pub spec: FreezeSpec,
    when: When,
}

impl Window {
    /// "freeze window 2 (prod*, weekend)": how a refusal names it.
    pub fn describe(&self) -> String {
        format!(
            "freeze window {} ({}, {})",
            self.index, self.environment, self.reason
        )
    }

    /// Whether deployments to `environment` are frozen at `now`.
    pub fn covers(&self, environment: &str, now: OffsetDateTime) -> bool {
        glob_match(&self.environment, environment) && self.is_on(now)
    }

    /// When the freeze in force at `now` lifts (the end of the period or
    /// of the recurring span `now` is in); `None` when it is not in force.
    /// Adjacent daily spans (every day 00:00–24:00) are not merged: the
    /// end of today's span is given.
    pub fn ends_at(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        match &self.when {
            When::Period { start, end } => (*start <= now && now < *end).then_some(*end),
            When::Weekly { offset, spans } => {
                let local = now.to_offset(*offset);
                let m = minute_of_week(local);
                let left = spans
                    .iter()
                    .filter_map(|&(start, len)| {
                        let into = (m + WEEK - start) % WEEK;
                        (into < len).then(|| len - into)
                    })
                    .max()?;
                let minute_start = local.replace_second(0).ok()?.replace_nanosecond(0).ok()?;
                Some(
                    (minute_start + time::Duration::minutes(i64::from(left)))
                        .to_offset(UtcOffset::UTC),
                )
            }
        }
    }

    fn is_on(&self, now: OffsetDateTime) -> bool {
        match &self.when {
            When::Period { start, end } => *start <= now && now < *end,
            When::Weekly { offset, spans } => {
                let m = minute_of_week(now.to_offset(*offset));
                spans
                    .iter()
                    .any(|&(start, len)| (m + WEEK - start) % WEEK < len)
            }
        }
    }
}

fn minute_of_week(local: OffsetDateTime) -> u32 {
    u32::from(local.weekday().number_days_from_monday()) * DAY
        + u32::from(local.hour()) * 60
        + u32::from(local.minute())
}

/// Who may override a freeze: tokens of role `admin` (docs/API.md). A
/// deployer token that could override would make the freeze advisory.
pub fn may_override(role: &str) -> bool {
    role == "admin"
}

/// A deployment may go ahead despite a freeze: what to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override<'a> {
    /// The window overridden.
    pub window: &'a Window,
    /// The reason the request gave.
    pub reason: String,
    /// When the overridden freeze lifts.
    pub ends_at: Option<OffsetDateTime>,
}

impl Override<'_> {
    /// The record stored with the deployment: which window, why, who
    /// (token name) and when.
    pub fn record(&self, by: &str, now: OffsetDateTime) -> vesemir_api::FreezeOverrideView {
        vesemir_api::FreezeOverrideView {
            window: self.window.describe(),
            window_ends_at: self.ends_at.and_then(|t| rfc3339(t).ok()),
            reason: self.reason.clone(),
            by: by.to_string(),
            at: rfc3339(now).unwrap_or_default(),
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> Result<String, time::error::Format> {
    t.to_offset(UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
}

/// Why a deployment is refused (the API answers 409 with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Frozen {
    /// Frozen, and the request gave no override.
    #[error("deployments to {environment} are frozen by {window}{until}; to deploy anyway give \"override_freeze\": \"REASON\" in the request with an admin token (the override is recorded), or wait")]
    Refused {
        /// The environment asked for.
        environment: String,
        /// The window, described.
        window: String,
        /// " until TIME", or empty.
        until: String,
    },
    /// Frozen, and the request's token may not override.
    #[error("deployments to {environment} are frozen by {window}{until}, and only admin tokens may override a freeze: ask someone with an admin token to submit it with override_freeze, or wait")]
    NotAllowed {
        /// The environment asked for.
        environment: String,
        /// The window, described.
        window: String,
        /// " until TIME", or empty.
        until: String,
    },
}

/// A `[[freeze]]` table that cannot be used: which one and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[[freeze]] number {index} (from 0): {message}")]
pub struct FreezeError {
    /// Position in the config.
    pub index: usize,
    /// What is wrong and what to write.
    pub message: String,
}

/// Every freeze window of the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreezeCalendar {
    windows: Vec<Window>,
}

impl FreezeCalendar {
    /// Checks and parses the config's windows.
    pub fn new(specs: &[FreezeSpec]) -> Result<FreezeCalendar, FreezeError> {
        let windows = specs
            .iter()
            .enumerate()
            .map(|(index, s)| parse(index, s))
            .collect::<Result<_, _>>()?;
        Ok(FreezeCalendar { windows })
    }

    /// The first window freezing `environment` at `now`, if any.
    pub fn active(&self, environment: &str, now: OffsetDateTime) -> Option<&Window> {
        self.windows.iter().find(|w| w.covers(environment, now))
    }

    /// Whether a deployment to `environment` may start at `now`: `Ok(None)`
    /// outside any freeze, `Ok(Some(override))` inside one with a reason
    /// from a token allowed to override (record it), else why not.
    pub fn admit(
        &self,
        environment: &str,
        now: OffsetDateTime,
        override_reason: Option<&str>,
        may_override: bool,
    ) -> Result<Option<Override<'_>>, Frozen> {
        let Some(w) = self.active(environment, now) else {
            return Ok(None);
        };
        let ends_at = w.ends_at(now);
        let until = ends_at
            .and_then(|t| rfc3339(t).ok())
            .map(|t| format!(" until {t}"))
            .unwrap_or_default();
        let (environment, window) = (environment.to_string(), w.describe());
        match override_reason {
            None => Err(Frozen::Refused {
                environment,
                window,
                until,
            }),
            Some(_) if !may_override => Err(Frozen::NotAllowed {
                environment,
                window,
                until,
            }),
            Some(r) => Ok(Some(Override {
                window: w,
                reason: r.to_string(),
                ends_at,
            })),
        }
    }

    /// The windows, in config order.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }
}

fn parse(index: usize, s: &FreezeSpec) -> Result<Window, FreezeError> {
    let bad = |message: String| FreezeError { index, message };
    if s.environment.is_empty() || s.environment.len() > 64 {
        return Err(bad(
            "environment: give a name or glob like \"prod*\" (1-64 characters)".into(),
        ));
    }
    if s.reason.trim().is_empty() {
        return Err(bad(
            "reason: say why deployments are frozen; it is shown to whoever is refused".into(),
        ));
    }
    let recurring = s.from.is_some() || s.to.is_some() || !s.days.is_empty();
    let when = match (&s.start, &s.end) {
        (Some(start), Some(end)) => {
            if recurring || s.timezone.is_some() {
                return Err(bad(
                    "give either start/end (one period) or days/from/to/timezone (recurring), not both"
                        .into(),
                ));
            }
            let at = |key: &str, v: &str| {
                OffsetDateTime::parse(v, &Rfc3339).map_err(|e| {
                    bad(format!(
                        "{key}: {v:?} is not an RFC 3339 time ({e}); write e.g. 2026-12-20T00:00:00Z"
                    ))
                })
            };
            let (start, end) = (at("start", start)?, at("end", end)?);
            if end <= start {
                return Err(bad("end must be after start".into()));
            }
            When::Period { start, end }
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(bad("give both start and end".into()));
        }
        (None, None) if !recurring => {
            return Err(bad(
                "says nothing about when: give start/end, or days and/or from/to".into(),
            ));
        }
        (None, None) => recurring_when(s).map_err(bad)?,
    };
    Ok(Window {
        index,
        environment: s.environment.clone(),
        reason: s.reason.clone(),
        spec: s.clone(),
        when,
    })
}

fn recurring_when(s: &FreezeSpec) -> Result<When, String> {
    let offset = parse_offset(s.timezone.as_deref().unwrap_or("UTC"))?;
    let from = s.from.as_deref().map(parse_point).transpose()?;
    let to = s.to.as_deref().map(parse_point).transpose()?;
    let spans = match (from, to) {
        (Some((Some(fd), fm)), Some((Some(td), tm))) => {
            if !s.days.is_empty() {
                return Err(
                    "days: not allowed with weekly from/to (\"fri 16:00\"); drop days or write from/to as HH:MM"
                        .into(),
                );
            }
            if fm >= DAY || tm >= DAY {
                return Err("from/to: a weekly time is at most 23:59".into());
            }
            let (start, end) = (fd * DAY + fm, td * DAY + tm);
            if start == end {
                return Err("from and to are the same time: the span would be empty".into());
            }
            vec![(start, (end + WEEK - start) % WEEK)]
        }
        (Some((None, _)), Some((Some(_), _))) | (Some((Some(_), _)), Some((None, _))) => {
            return Err(
                "from/to: write both as HH:MM (daily) or both as \"ddd HH:MM\" (weekly)".into(),
            );
        }
        (Some((Some(_), _)), None) | (None, Some((Some(_), _))) => {
            return Err("a weekly window needs both from and to".into());
        }
        (f, t) => {
            let fm = f.map_or(0, |(_, m)| m);
            let tm = t.map_or(DAY, |(_, m)| m);
            if fm >= DAY {
                return Err("from: at most 23:59".into());
            }
            let len = match tm.cmp(&fm) {
                std::cmp::Ordering::Greater => tm - fm,
                std::cmp::Ordering::Less => DAY - fm + tm,
                std::cmp::Ordering::Equal => {
                    return Err("from and to are the same time: the window would be empty".into())
                }
            };
            let days: Vec<u32> = if s.days.is_empty() {
                (0..7).collect()
            } else {
                s.days
                    .iter()
                    .map(|d| parse_day(d))
                    .collect::<Result<_, _>>()?
            };
            days.into_iter().map(|d| (d * DAY + fm, len)).collect()
        }
    };
    Ok(When::Weekly { offset, spans })
}

fn parse_day(d: &str) -> Result<u32, String> {
    let d = d.trim().to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .position(|n| d == *n)
        .map(|i| i as u32)
        .ok_or_else(|| format!("days: {d:?} is not a day: use mon, tue, wed, thu, fri, sat, sun"))
}

/// `HH:MM` or `ddd HH:MM` → (day, minute of day); `24:00` allowed (as 1440).
fn parse_point(s: &str) -> Result<(Option<u32>, u32), String> {
    let s = s.trim();
    let (day, hm) = match s.split_once(' ') {
        Some((d, hm)) => (Some(parse_day(d)?), hm.trim()),
        None => (None, s),
    };
    let minutes = hm.split_once(':').and_then(|(h, m)| {
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (m < 60 && h < 24 || (h, m) == (24, 0)).then_some(h * 60 + m)
    });
    match minutes {
        Some(m) if hm.len() == 5 => Ok((day, m)),
        _ => Err(format!(
            "{s:?} is not a time: write HH:MM (e.g. 18:00) or \"ddd HH:MM\" (e.g. \"fri 16:00\")"
        )),
    }
}

fn parse_offset(tz: &str) -> Result<UtcOffset, String> {
    if tz.eq_ignore_ascii_case("utc") || tz == "Z" {
        return Ok(UtcOffset::UTC);
    }
    let parsed = (|| {
        let (sign, rest) = match tz.as_bytes().first()? {
            b'+' => (1i8, &tz[1..]),
            b'-' => (-1i8, &tz[1..]),
            _ => return None,
        };
        let (h, m) = rest.split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
        UtcOffset::from_hms(sign * h, sign * m, 0).ok()
    })();
    parsed.ok_or_else(|| {
        format!(
            "timezone: {tz:?} is not UTC or an offset like +01:00; named zones (with daylight \
             saving) are not supported, write the offset in force"
        )
    })
}

/// `*` matches any run of characters, `?` any one; everything else itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matcher with one backtrack point (the last `*`).
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn spec(toml_text: &str) -> FreezeSpec {
        toml::from_str(toml_text).expect("spec parses")
    }

    /// `(environment, now, frozen?)` rows against one window.
    fn check(window: &str, rows: &[(&str, OffsetDateTime, bool)]) {
        let cal = FreezeCalendar::new(&[spec(window)]).expect("valid window");
        for (env, now, want) in rows {
            assert_eq!(
                cal.active(env, *now).is_some(),
                *want,
                "{env} at {now} against {window}"
            );
        }
    }

    #[test]
    fn one_period() {
        check(
            r#"environment = "prod*"
               reason = "year end"
               start = "2026-12-20T00:00:00Z"
               end = "2027-01-04T08:00:00+01:00""#,
            &[
                ("production", datetime!(2026-12-19 23:59:59 UTC), false),
                ("production", datetime!(2026-12-20 00:00 UTC), true),
                ("prod-eu", datetime!(2027-01-01 12:00 UTC), true),
                ("staging", datetime!(2027-01-01 12:00 UTC), false),
                // 08:00+01:00 is 07:00 UTC, excluded.
                ("production", datetime!(2027-01-04 06:59 UTC), true),
                ("production", datetime!(2027-01-04 07:00 UTC), false),
            ],
        );
    }

    #[test]
    fn daily_across_midnight() {
        // 2026-12-04 is a Friday.
        check(
            r#"environment = "production"
               reason = "nights"
               days = ["mon", "tue", "wed", "thu", "fri"]
               from = "18:00"
               to = "08:00""#,
            &[
                ("production", datetime!(2026-12-04 17:59 UTC), false),
                ("production", datetime!(2026-12-04 18:00 UTC), true),
                ("production", datetime!(2026-12-04 23:59 UTC), true),
                // Friday night runs into Saturday morning…
                ("production", datetime!(2026-12-05 07:59 UTC), true),
                ("production", datetime!(2026-12-05 08:00 UTC), false),
                // …but Saturday evening is not listed.
                ("production", datetime!(2026-12-05 20:00 UTC), false),
                ("production", datetime!(2026-12-06 03:00 UTC), false),
                // Sunday early morning is not, Monday early morning is not
                // (Sunday is not listed), Monday evening is.
                ("production", datetime!(2026-12-07 03:00 UTC), false),
                ("production", datetime!(2026-12-07 19:00 UTC), true),
                ("prod", datetime!(2026-12-07 19:00 UTC), false),
            ],
        );
    }

    #[test]
    fn whole_days_and_offsets() {
        check(
            r#"environment = "*"
               reason = "weekend"
               days = ["sat", "sun"]
               timezone = "+02:00""#,
            &[
                // Friday 22:00 UTC is Saturday 00:00 at +02:00.
                ("any", datetime!(2026-12-04 21:59 UTC), false),
                ("any", datetime!(2026-12-04 22:00 UTC), true),
                ("other", datetime!(2026-12-06 21:59 UTC), true),
                ("any", datetime!(2026-12-06 22:00 UTC), false),
            ],
        );
        check(
            r#"environment = "staging"
               reason = "backup"
               from = "23:00"
               to = "24:00""#,
            &[
                ("staging", datetime!(2026-12-08 22:59 UTC), false),
                ("staging", datetime!(2026-12-08 23:59 UTC), true),
                ("staging", datetime!(2026-12-09 00:00 UTC), false),
            ],
        );
    }

    #[test]
    fn weekly_span_across_the_weekend() {
        check(
            r#"environment = "prod?"
               reason = "weekend"
               from = "fri 16:00"
               to = "mon 08:00""#,
            &[
                ("prod1", datetime!(2026-12-04 15:59 UTC), false),
                ("prod1", datetime!(2026-12-04 16:00 UTC), true),
                ("prod2", datetime!(2026-12-05 12:00 UTC), true),
                ("prod2", datetime!(2026-12-06 23:59 UTC), true),
                ("prod2", datetime!(2026-12-07 07:59 UTC), true),
                ("prod2", datetime!(2026-12-07 08:00 UTC), false),
                ("prod2", datetime!(2026-12-09 12:00 UTC), false),
                ("prod12", datetime!(2026-12-05 12:00 UTC), false),
            ],
        );
        // Within the week, not wrapping.
        check(
            r#"environment = "x"
               reason = "r"
               from = "tue 10:00"
               to = "tue 11:00"
               timezone = "-05:00""#,
            &[
                ("x", datetime!(2026-12-08 14:59 UTC), false),
                ("x", datetime!(2026-12-08 15:00 UTC), true),
                ("x", datetime!(2026-12-08 16:00 UTC), false),
            ],
        );
    }

    #[test]
    fn first_matching_window_is_named() {
        let cal = FreezeCalendar::new(&[
            spec("environment = \"staging\"\nreason = \"a\"\ndays = [\"fri\"]"),
            spec("environment = \"prod*\"\nreason = \"weekend\"\nfrom = \"fri 16:00\"\nto = \"mon 08:00\""),
        ])
        .unwrap();
        let w = cal
            .active("production", datetime!(2026-12-05 12:00 UTC))
            .unwrap();
        assert_eq!(w.index, 1);
        assert_eq!(w.describe(), "freeze window 1 (prod*, weekend)");
        assert!(cal
            .active("production", datetime!(2026-12-08 12:00 UTC))
            .is_none());
    }

    #[test]
    fn refusals_name_the_window_and_its_end() {
        let cal = FreezeCalendar::new(&[
            spec("environment = \"prod*\"\nreason = \"weekend\"\nfrom = \"fri 16:00\"\nto = \"mon 08:00\"\ntimezone = \"+01:00\""),
            spec("environment = \"staging\"\nreason = \"move\"\nstart = \"2026-12-01T00:00:00Z\"\nend = \"2026-12-10T12:00:00Z\""),
        ])
        .unwrap();
        let sat = datetime!(2026-12-05 12:34:56 UTC);
        let e = cal.admit("production", sat, None, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "deployments to production are frozen by freeze window 0 (prod*, weekend) until \
             2026-12-07T07:00:00Z; to deploy anyway give \"override_freeze\": \"REASON\" \
             in the request with an admin token (the override is recorded), or wait"
        );
        assert!(matches!(
            cal.admit("production", sat, Some("INC-42 hotfix"), false),
            Err(Frozen::NotAllowed { .. })
        ));
        let o = cal
            .admit("production", sat, Some("INC-42 hotfix"), true)
            .unwrap()
            .unwrap();
        assert_eq!((o.window.index, o.reason.as_str()), (0, "INC-42 hotfix"));
        assert_eq!(
            o.record("admin", sat),
            vesemir_api::FreezeOverrideView {
                window: "freeze window 0 (prod*, weekend)".into(),
                window_ends_at: Some("2026-12-07T07:00:00Z".into()),
                reason: "INC-42 hotfix".into(),
                by: "admin".into(),
                at: "2026-12-05T12:34:56Z".into(),
            }
        );
        assert!(may_override("admin") && !may_override("deployer") && !may_override(""));
        // Outside the window an override is not needed and nothing is recorded.
        let tue = datetime!(2026-12-08 12:00 UTC);
        assert_eq!(cal.admit("production", tue, Some("x"), true), Ok(None));
        assert_eq!(cal.admit("production", tue, None, false), Ok(None));
        // A period ends at its end.
        let e = cal
            .admit("staging", tue, None, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("until 2026-12-10T12:00:00Z"), "{e}");
        // A daily span crossing midnight ends the next morning.
        let nights = FreezeCalendar::new(&[spec(
            "environment = \"p\"\nreason = \"n\"\nfrom = \"18:00\"\nto = \"08:00\"",
        )])
        .unwrap();
        let w = &nights.windows()[0];
        assert_eq!(
            w.ends_at(datetime!(2026-12-04 23:10:30 UTC)),
            Some(datetime!(2026-12-05 08:00 UTC))
        );
        assert_eq!(w.ends_at(datetime!(2026-12-05 12:00 UTC)), None);
        // Sunday night into Monday wraps the week.
        assert_eq!(
            w.ends_at(datetime!(2026-12-06 19:00 UTC)),
            Some(datetime!(2026-12-07 08:00 UTC))
        );
    }

    #[test]
    fn bad_windows_say_what_to_write() {
        for (text, want) in [
            ("environment = \"p\"\nreason = \"r\"", "says nothing about when"),
            ("environment = \"p\"\nreason = \" \"\ndays = [\"sat\"]", "reason"),
            ("environment = \"p\"\nreason = \"r\"\nstart = \"2026-01-01T00:00:00Z\"", "both start and end"),
            ("environment = \"p\"\nreason = \"r\"\nstart = \"2026-01-02T00:00:00Z\"\nend = \"2026-01-01T00:00:00Z\"", "after start"),
            ("environment = \"p\"\nreason = \"r\"\nstart = \"tomorrow\"\nend = \"2026-01-01T00:00:00Z\"", "RFC 3339"),
            ("environment = \"p\"\nreason = \"r\"\nstart = \"2026-01-01T00:00:00Z\"\nend = \"2026-01-02T00:00:00Z\"\ndays = [\"sat\"]", "not both"),
            ("environment = \"p\"\nreason = \"r\"\ndays = [\"saturday\"]", "not a day"),
            ("environment = \"p\"\nreason = \"r\"\nfrom = \"6pm\"", "not a time"),
            ("environment = \"p\"\nreason = \"r\"\nfrom = \"25:00\"", "not a time"),
            ("environment = \"p\"\nreason = \"r\"\nfrom = \"8:00\"", "not a time"),
            ("environment = \"p\"\nreason = \"r\"\nfrom = \"08:00\"\nto = \"08:00\"", "same time"),
            ("environment = \"p\"\nreason = \"r\"\nfrom = \"fri 16:00\"\nto = \"08:00\"", "both as HH:MM"),
            ("environment = \"p\"\nreason = \"r\"\nfrom = \"fri 16:00\"", "needs both"),
            ("environment = \"p\"\nreason = \"r\"\nfrom = \"fri 16:00\"\nto = \"mon 08:00\"\ndays = [\"fri\"]", "days: not allowed"),
            ("environment = \"p\"\nreason = \"r\"\ndays = [\"sat\"]\ntimezone = \"Europe/Paris\"", "named zones"),
        ] {
            let e = FreezeCalendar::new(&[spec(text)]).unwrap_err();
            assert_eq!(e.index, 0);
            assert!(e.message.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("*", "", true),
            ("*", "prod", true),
            ("prod*", "prod", true),
            ("prod*", "production", true),
            ("prod*", "preprod", false),
            ("*prod", "preprod", true),
            ("p?od", "prod", true),
            ("p?od", "pod", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} vs {n}");
        }
    }
}
