//! The operator commands over the outbox. Each returns the text to print;
//! the store's errors already name the row and the refused transition.

use std::collections::BTreeMap;

use anyhow::Context;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::table::{age, age_at, cells, relative, truncate, Table};
use super::{EnqueueArgs, LsArgs, RetryArgs, ShowArgs};
use crate::config::{redact_url, Settings};
use crate::model::{AttemptOutcome, OutboxRow, State, StatusBody};
use crate::ops;
use crate::store::{EnqueueParams, ListParams, Store, StoreError};

pub async fn migrate<S: Store>(store: &S, settings: &Settings) -> anyhow::Result<String> {
    store
        .migrate()
        .await
        .context("applying the database migrations")?;
    Ok(format!(
        "migrations applied to {}\n",
        redact_url(settings.database.url.expose_secret())
    ))
}

/// Checks that `instance` is configured here (in the file) or in the
/// instance table (disabled ones too: their rows wait). With none of either
/// (an operator box without tokens) the daemon that reads the row decides,
/// so this only warns.
pub async fn check_instance<S: Store>(
    store: &S,
    instance: &str,
    settings: &Settings,
) -> anyhow::Result<()> {
    let known = crate::ops::configured(store, &settings.instance_names())
        .await
        .context("reading the instance table")?;
    if known.is_empty() {
        tracing::warn!(
            instance,
            "no instances are configured here: cannot check --instance; \
             the daemon marks the row invalid if it does not know it"
        );
        return Ok(());
    }
    // The flag's name is the key: `--instance: …`.
    crate::config::check_configured(instance, &known).map_err(|e| anyhow::anyhow!("--{e}"))
}

/// The row's kind and payload from the flags, validated the way the daemon
/// validates rows, so a bad status is refused now rather than parked as
/// `invalid` later.
fn kind_and_payload(a: &EnqueueArgs) -> anyhow::Result<(String, String)> {
    if let Some((kind, payload)) = a.raw.given() {
        StatusBody::parse(&kind, &payload).context("--kind/--payload: not a valid status")?;
        return Ok((kind, payload));
    }
    let mut p = serde_json::Map::new();
    let kind = if let Some(text) = &a.text {
        p.insert("text".into(), json!(text));
        "text"
    } else {
        let (kind, url) = match (&a.image, &a.video, &a.voice) {
            (Some(u), _, _) => ("image", u),
            (_, Some(u), _) => ("video", u),
            (_, _, Some(u)) => ("voice", u),
            // clap's `content` group requires one of them.
            _ => anyhow::bail!("give one of --text, --image, --video, --voice or --kind"),
        };
        let mimetype = match &a.mimetype {
            Some(m) => m.clone(),
            None => guess_mimetype(url).map(str::to_string).with_context(|| {
                format!(
                    "--mimetype is required: cannot tell the type of `{url}` from its extension"
                )
            })?,
        };
        p.insert("file".into(), json!({"url": url, "mimetype": mimetype}));
        if let Some(c) = &a.caption {
            p.insert("caption".into(), json!(c));
        }
        kind
    };
    if let Some(c) = &a.background_color {
        p.insert("backgroundColor".into(), json!(c));
    }
    if let Some(f) = a.font {
        p.insert("font".into(), json!(f));
    }
    if !a.contacts.is_empty() {
        p.insert("contacts".into(), json!(a.contacts));
    }
    let payload = Value::Object(p).to_string();
    StatusBody::parse(kind, &payload).map_err(|e| {
        anyhow::anyhow!(
            "{} (flag {}): {}",
            e.field,
            flag_for_field(&e.field, kind),
            e.problem
        )
    })?;
    Ok((kind.to_string(), payload))
}

/// The flag that set a payload field, for error messages.
fn flag_for_field(field: &str, kind: &str) -> String {
    let f = field.trim_start_matches("payload.");
    match f {
        "text" => "--text".into(),
        "backgroundColor" => "--background-color".into(),
        "font" => "--font".into(),
        "caption" => "--caption".into(),
        "file.mimetype" => "--mimetype".into(),
        "file" | "file.url" => format!("--{kind}"),
        f if f.starts_with("contacts") => "--contact".into(),
        _ => format!("--{kind}"),
    }
}

/// Common media types by extension; anything else needs `--mimetype`.
fn guess_mimetype(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "mp4" => "video/mp4",
        "3gp" => "video/3gpp",
        "mov" => "video/quicktime",
        "ogg" | "opus" | "oga" => "audio/ogg; codecs=opus",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "aac" => "audio/aac",
        _ => return None,
    })
}

pub async fn enqueue<S: Store>(
    store: &S,
    a: EnqueueArgs,
    settings: &Settings,
) -> anyhow::Result<String> {
    let (kind, payload) = kind_and_payload(&a)?;
    check_instance(store, &a.instance, settings).await?;
    let done = ops::enqueue(
        store,
        None::<Vec<&String>>,
        EnqueueParams {
            id: None,
            instance: a.instance.clone(),
            kind,
            payload,
            dedupe_key: a.dedupe_key.clone(),
            priority: a.priority,
            not_before: a.not_before,
        },
    )
    .await
    .with_context(|| format!("enqueuing a status for instance `{}`", a.instance))?;
    if a.json {
        return Ok(json_line(&json!({
            "id": done.id,
            "inserted": done.inserted,
            "deduplicated": !done.inserted,
        })));
    }
    Ok(if done.inserted {
        format!("enqueued {}\n", done.id)
    } else {
        format!(
            "deduplicated: dedupe key `{}` already belongs to {} (nothing inserted)\n",
            a.dedupe_key.as_deref().unwrap_or_default(),
            done.id
        )
    })
}

pub async fn ls<S: Store>(store: &S, a: LsArgs) -> anyhow::Result<String> {
    let now = store.now().await.context("reading the database clock")?;
    let rows = store
        .list(ListParams {
            state: a.state,
            instance: a.instance,
            since: a.since.map(|s| s.resolve(now)),
            limit: a.limit,
        })
        .await
        .context("listing statuses")?;
    let views = super::views::counts_of(store, &rows).await?;
    if a.json {
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| super::views::with_counts(row_json(r), r, &views))
            .collect();
        return Ok(json_line(&Value::Array(rows)));
    }
    let header = vec![
        "ID",
        "INSTANCE",
        "KIND",
        "STATE",
        "ATTEMPTS",
        "MESSAGE_ID",
        "AGE",
        "VIEWS",
        "LAST_ERROR",
    ];
    Ok(Table::listing(header, &rows, "no statuses match\n", |r| {
        let state = if r.parked_at.is_some() {
            format!("{} (parked)", r.state)
        } else {
            r.state.to_string()
        };
        cells![
            r.id,
            r.instance,
            r.kind,
            state,
            r.attempts,
            r.message_id.as_deref().unwrap_or("-"),
            age_at(now, r.created_at),
            super::views::cell(r, &views),
            truncate(r.last_error.as_deref().unwrap_or(""), 60),
        ]
    }))
}

/// A row as JSON, with its payload as JSON rather than a string of JSON
/// when it parses (rows written by others may not).
fn row_json(r: &OutboxRow) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let (Some(obj), Ok(p)) = (v.as_object_mut(), serde_json::from_str::<Value>(&r.payload)) {
        obj.insert("payload".into(), p);
    }
    v
}

fn json_line(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// Operator input → row, with the one error message for "no such row".
async fn find<S: Store>(store: &S, key: &str) -> anyhow::Result<OutboxRow> {
    ops::find(store, key).await.map_err(|e| match e {
        e @ ops::OpError::NotFound(_) => anyhow::Error::new(e),
        e => anyhow::Error::new(e).context(format!("looking up `{key}`")),
    })
}

pub async fn show<S: Store>(store: &S, a: ShowArgs) -> anyhow::Result<String> {
    let row = find(store, &a.id).await?;
    let attempts = store
        .attempts(row.id)
        .await
        .with_context(|| format!("reading the attempts of {}", row.id))?;
    if a.json {
        let attempts: Vec<Value> = attempts
            .iter()
            .map(|at| {
                let mut v = serde_json::to_value(at).unwrap_or(Value::Null);
                if let Some(o) = v.as_object_mut() {
                    o.insert("counted".into(), json!(refund_note(&at.outcome) == "yes"));
                }
                v
            })
            .collect();
        let views = super::views::counts_of(store, std::slice::from_ref(&row)).await?;
        return Ok(json_line(&json!({
            "status": super::views::with_counts(row_json(&row), &row, &views),
            "attempts": attempts,
        })));
    }
    let now = store.now().await.context("reading the database clock")?;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| format!("{} ({})", t.to_rfc3339(), relative(now, t)))
            .unwrap_or_else(|| "-".into())
    };
    let mut out = String::new();
    let mut field = |k: &str, v: String| out += &format!("{k:<18} {v}\n");
    field("id", row.id.to_string());
    field("instance", row.instance.clone());
    field("kind", row.kind.clone());
    field(
        "state",
        match row.parked_at {
            Some(p) => format!(
                "{} (parked for an operator since {})",
                row.state,
                p.to_rfc3339()
            ),
            None => row.state.to_string(),
        },
    );
    field("message_id", opt(&row.message_id));
    field("provider_id", opt(&row.provider_id));
    field("dedupe_key", opt(&row.dedupe_key));
    field("priority", row.priority.to_string());
    field("attempts", row.attempts.to_string());
    field("reconcile_attempts", row.reconcile_attempts.to_string());
    field("not_before", time(row.not_before));
    // Rows not yet tried carry a "due since forever" placeholder.
    field(
        "next_attempt_at",
        time(row.next_attempt_at.filter(|t| *t > row.created_at)),
    );
    field(
        "lease",
        match (&row.lease_owner, row.lease_expires_at) {
            (Some(o), Some(t)) => format!("{o} until {}", t.to_rfc3339()),
            _ => "-".into(),
        },
    );
    field(
        "last_error",
        match (&row.last_error, row.last_http_status) {
            (Some(e), Some(h)) => format!("{e} (HTTP {h})"),
            (Some(e), None) => e.clone(),
            (None, _) => "-".into(),
        },
    );
    field("created_at", time(Some(row.created_at)));
    field("updated_at", time(Some(row.updated_at)));
    field("posted_at", time(row.posted_at));
    let views = super::views::counts_of(store, std::slice::from_ref(&row)).await?;
    field("views", super::views::line(&row, &views));
    let payload = serde_json::from_str::<Value>(&row.payload)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| row.payload.clone());
    out += &format!("payload\n{}", indent(&payload));
    if attempts.is_empty() {
        out += "\nno attempts yet\n";
    } else {
        // In time order: a refunded attempt's number is used again by the
        // next one (1, 1, 2), so the number alone does not order them.
        let mut attempts = attempts;
        attempts.sort_by_key(|a| (a.started_at, a.finished_at));
        let mut t = Table::new(vec![
            "#", "STARTED", "OUTCOME", "COUNTED", "HTTP", "LATENCY", "ERROR",
        ]);
        for at in &attempts {
            let http = at.http_status.map(|h| h.to_string());
            t.row(cells![
                at.attempt,
                at.started_at.to_rfc3339(),
                at.outcome,
                refund_note(&at.outcome),
                http.as_deref().unwrap_or("-"),
                format!("{} ms", at.latency_ms),
                truncate(at.error.as_deref().unwrap_or(""), 80),
            ]);
        }
        out += &format!("\nattempts\n{}", indent(&t.render()));
    }
    Ok(out)
}

/// Whether an attempt counted towards `max_attempts`, from its outcome:
/// the dispatcher gives the attempt back when nothing of the row's fault
/// happened (see `transition_for`), and the next attempt reuses its number.
fn refund_note(outcome: &str) -> &'static str {
    match outcome.parse() {
        Ok(AttemptOutcome::Released) => "no: released unsent, refunded",
        Ok(AttemptOutcome::InstanceDown) => "no: instance down, refunded",
        Ok(AttemptOutcome::RateLimited) => "no: Retry-After, refunded",
        Ok(AttemptOutcome::Invalid) => "no: invalid row, refunded",
        _ => "yes",
    }
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

pub async fn stats<S: Store>(store: &S, as_json: bool) -> anyhow::Result<String> {
    let rows = store
        .summary()
        .await
        .context("reading the outbox summary")?;
    let pauses = store
        .instance_pauses()
        .await
        .context("reading the paused instances")?;
    let now = store.now().await.context("reading the database clock")?;
    // instance → counts per state, the oldest due row, and rows scheduled
    // for later (waiting by design, so not "oldest pending").
    #[derive(Default)]
    struct Per {
        counts: BTreeMap<State, i64>,
        oldest: Option<f64>,
        scheduled: i64,
    }
    let mut per: BTreeMap<&str, Per> = BTreeMap::new();
    for r in &rows {
        let e = per.entry(r.instance.as_str()).or_default();
        *e.counts.entry(r.state).or_default() += r.count;
        e.scheduled += r.scheduled;
        if let Some(a) = r.oldest_age_secs {
            e.oldest = Some(e.oldest.map_or(a, |b: f64| b.max(a)));
        }
    }
    for p in &pauses {
        per.entry(p.instance.as_str()).or_default();
    }
    let paused = |name: &str| pauses.iter().find(|p| p.instance == name);
    if as_json {
        let instances: Vec<Value> = per
            .iter()
            .map(|(name, p)| {
                json!({
                    "instance": name,
                    "counts": p.counts.iter().map(|(s, n)| (s.as_str(), *n)).collect::<BTreeMap<_, _>>(),
                    "total": p.counts.values().sum::<i64>(),
                    "oldest_pending_age_secs": p.oldest,
                    "scheduled": p.scheduled,
                    "paused": paused(name).map(|p| json!({"reason": p.reason, "since": p.since})),
                })
            })
            .collect();
        return Ok(json_line(&json!({ "instances": instances })));
    }
    if per.is_empty() {
        return Ok("the outbox is empty\n".into());
    }
    // Only the states that occur, in life-cycle order.
    let states: Vec<State> = State::ALL
        .into_iter()
        .filter(|s| rows.iter().any(|r| r.state == *s))
        .collect();
    let mut header = vec!["INSTANCE"];
    header.extend(states.iter().map(|s| s.as_str()));
    header.extend(["TOTAL", "SCHEDULED", "OLDEST_PENDING"]);
    let mut t = Table::new(header);
    for (name, p) in &per {
        let mut cells = vec![name.to_string()];
        cells.extend(
            states
                .iter()
                .map(|s| p.counts.get(s).copied().unwrap_or(0).to_string()),
        );
        cells.push(p.counts.values().sum::<i64>().to_string());
        cells.push(p.scheduled.to_string());
        cells.push(p.oldest.map(age).unwrap_or_else(|| "-".into()));
        t.row(cells);
    }
    let mut out = t.render();
    if !pauses.is_empty() {
        let mut t = Table::new(vec!["PAUSED INSTANCE", "SINCE", "WHY"]);
        for p in &pauses {
            t.row(vec![
                p.instance.clone(),
                format!("{} ({})", p.since.to_rfc3339(), relative(now, p.since)),
                truncate(&p.reason, 200),
            ]);
        }
        out += &format!("\n{}", t.render());
    }
    Ok(out)
}

/// The keys an operator gave: as typed, or `-` for standard input, one per
/// line (`statusd ls --state in_doubt --json | jq -r '.[].id' | statusd
/// confirm -`).
fn keys(given: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for k in given {
        if k == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading keys from standard input")?;
            out.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            );
        } else {
            out.push(k.clone());
        }
    }
    if out.is_empty() {
        anyhow::bail!("no row given (standard input was empty)");
    }
    Ok(out)
}

/// Runs an operator action on each row the keys name (id, message id or
/// dedupe key), one after the other, and says what it did: `ID: before ->
/// after` per row. A refused row does not stop the others; then the done
/// ones are printed and the command fails naming each refusal.
async fn act<S: Store, Fut>(
    store: &S,
    given: &[String],
    action: &str,
    f: impl Fn(OutboxRow) -> Fut,
) -> anyhow::Result<String>
where
    Fut: std::future::Future<Output = Result<ops::Change, ops::OpError>>,
{
    let keys = keys(given)?;
    let (mut done, mut refused) = (String::new(), Vec::new());
    for key in &keys {
        let res = async {
            let row = find(store, key).await?;
            let c = f(row.clone())
                .await
                .map_err(|e| op_error(e, &row, action))?;
            anyhow::Ok(format!("{}: {} -> {}\n", row.id, row.state, c.after.state))
        }
        .await;
        match res {
            Ok(line) => done += &line,
            Err(e) if keys.len() == 1 => return Err(e),
            Err(e) => refused.push(format!("{key}: {e:#}")),
        }
    }
    if refused.is_empty() {
        return Ok(done);
    }
    super::print_out(&done)?;
    anyhow::bail!(
        "{} of {} not done:\n  {}",
        refused.len(),
        keys.len(),
        refused.join("\n  ")
    )
}

pub async fn retry<S: Store>(store: &S, a: RetryArgs) -> anyhow::Result<String> {
    let action = if a.force_resend {
        "force-resend"
    } else {
        "retry"
    };
    act(store, &a.ids, action, |row| {
        ops::retry(store, row, a.force_resend)
    })
    .await
}

pub async fn cancel<S: Store>(store: &S, keys: &[String]) -> anyhow::Result<String> {
    act(store, keys, "cancel", |row| ops::cancel(store, row)).await
}

/// `statusd confirm`: in-doubt rows the operator saw shown → `posted`.
pub async fn confirm<S: Store>(store: &S, keys: &[String]) -> anyhow::Result<String> {
    act(store, keys, "confirm", |row| ops::confirm(store, row)).await
}

/// `statusd delete`: asks the row's instance to take the status down, then
/// records `deleted`.
pub async fn delete<S: Store>(store: &S, key: &str, settings: &Settings) -> anyhow::Result<String> {
    let row = find(store, key).await?;
    let instances = crate::app::wawp_registry(settings, store).await?;
    let c = ops::delete(store, &instances.snapshot().running, row.clone())
        .await
        .map_err(|e| op_error(e, &row, "delete"))?;
    Ok(format!("{}: {} -> {}\n", row.id, row.state, c.after.state))
}

fn op_error(e: ops::OpError, row: &OutboxRow, action: &str) -> anyhow::Error {
    match e {
        ops::OpError::Store(e) => transition_error(e, row, action),
        other => anyhow::Error::new(other),
    }
}

/// A refused operator action, with a hint at what would be allowed.
fn transition_error(e: StoreError, row: &OutboxRow, action: &str) -> anyhow::Error {
    if !matches!(e, StoreError::NotAllowed { .. }) {
        return anyhow::Error::new(e).context(format!("{action} of {}", row.id));
    }
    let hint = match (&e, row.state) {
        (StoreError::NotAllowed { .. }, State::InDoubt) if action == "retry" && row.parked_at.is_none() => {
            " (the reconciler is still resolving it; wait, or use --force-resend if the provider cannot tell)"
        }
        (StoreError::NotAllowed { .. }, State::Uploading) => {
            " (a daemon holds its lease; wait for the outcome)"
        }
        (StoreError::NotAllowed { .. }, State::Posted) => " (it is shown already)",
        (StoreError::NotAllowed { .. }, _) if action == "confirm" => {
            " (only a status in doubt is confirmed: the others' outcome is known)"
        }
        _ => "",
    };
    anyhow::anyhow!("{e}{hint}")
}
