//! The dashboard in a real headless browser (Debian's chromium, driven by
//! chromedriver over the W3C WebDriver HTTP protocol): the operator signs in
//! with the admin token, reads the counts, the activity and the rows that
//! need attention, and retries and cancels rows from the page.
//!
//! Chromium is required, not optional: without it the test fails and says
//! how to install it (`.ci/run` does). `STATUSD_SCREENSHOT=path` saves the
//! SQLite run's screenshot there (that is how `docs/dashboard.png` is made);
//! every run also leaves one in Cargo's test temp dir.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use statusd::model::{AttemptOutcome, State};
use statusd::sim::SimConfig;
use statusd::store::{AssignId, ClaimParams, Completion, Effect, Store, Transition};
use uuid::Uuid;

use crate::api::Api;
use crate::support::{spawn_app, text, TestDb};

const ADMIN_TOKEN: &str = "dash-SECRET-31";

crate::both_backends!(dashboard_shows_the_outbox_and_acts_on_rows);

async fn dashboard_shows_the_outbox_and_acts_on_rows<S: Store>(s: S, db: &TestDb) {
    let seeded = seed(&s).await;
    // The daemon is built for its context but not run: rows stay where the
    // test put them, so the page can be compared with the store.
    let app = spawn_app(
        s.clone(),
        &db.url,
        SimConfig::default(),
        &[("main", true), ("backup", true)],
        ADMIN_TOKEN,
    )
    .await;
    let base = app.base.clone();

    check_activity_api(&app.api(ADMIN_TOKEN), &seeded).await;

    let browser = Browser::start().await;
    browser.goto(&format!("{base}/")).await;
    browser
        .wait_for("!document.getElementById('login').hidden", "the token form")
        .await;

    // A wrong token is refused with a message; the right one connects.
    browser.type_into("#token", "not-the-token").await;
    browser.click("#token-save").await;
    let refused = browser
        .wait_for(
            "const e = document.getElementById('login-error'); return !e.hidden && e.textContent",
            "the refusal message",
        )
        .await;
    assert!(
        refused.as_str().unwrap_or("").contains("token"),
        "{refused}"
    );
    browser.type_into("#token", ADMIN_TOKEN).await;
    browser.click("#token-save").await;
    wait_refreshed(&browser, 1).await;
    assert_eq!(
        browser
            .js("return sessionStorage.getItem('statusd.adminToken')")
            .await,
        json!(ADMIN_TOKEN)
    );

    // Counts per instance and state are the store's summary.
    assert_counts_match(&browser, &s).await;
    let oldest = browser
        .js("return document.querySelector('td[data-instance=\"main\"][data-oldest-pending]').dataset.oldestPending")
        .await;
    assert!(
        oldest.as_str().unwrap_or("").parse::<f64>().is_ok(),
        "main has pending rows, so an oldest age: {oldest}"
    );

    // Activity over the last hour.
    let tiles = browser
        .js("const v = id => document.getElementById(id).dataset.value;
             return [v('posted-1h'), v('errors-1h'), v('error-rate'),
                     document.querySelectorAll('#chart g[data-bucket]').length,
                     document.querySelectorAll('#chart rect.bar-posted').length]")
        .await;
    assert_eq!(tiles[0], json!(seeded.posted_attempts.to_string()));
    assert_eq!(tiles[1], json!(seeded.error_attempts.to_string()));
    let rate = 100.0 * seeded.error_attempts as f64
        / (seeded.posted_attempts + seeded.error_attempts) as f64;
    assert_eq!(tiles[2], json!(format!("{rate:.2}")));
    assert!(
        tiles[3].as_u64().unwrap() >= 60,
        "one bar slot per minute: {tiles}"
    );
    assert!(
        tiles[4].as_u64().unwrap() >= 20,
        "posted bars drawn: {tiles}"
    );

    // The rows that need an operator, invalid ones included, with their
    // errors shown as text.
    let mut want = HashMap::from([
        (seeded.failed, "failed".to_string()),
        (seeded.in_doubt, "in_doubt".to_string()),
        (seeded.seen, "in_doubt".to_string()),
        (seeded.long_invalid, "invalid".to_string()),
    ]);
    want.extend(seeded.invalid.iter().map(|id| (*id, "invalid".to_string())));
    assert_eq!(attention(&browser).await, want);
    // Identical errors are one line with a count; its rows are folded away
    // until asked for.
    let group = browser
        .js("const g = document.querySelectorAll('tr[data-group]');
             return Array.from(g).map(tr => [tr.dataset.count, tr.dataset.state,
                tr.querySelector('td[data-field=\"last-error\"]').textContent,
                document.querySelectorAll('tr[data-member-of=\"' + tr.dataset.group + '\"]:not([hidden])').length])")
        .await;
    assert_eq!(
        group,
        json!([[
            seeded.invalid.len().to_string(),
            "invalid",
            INVALID_ERROR,
            0
        ]])
    );
    browser.click("button[data-toggle]").await;
    browser
        .wait_for(
            &format!(
                "return document.querySelectorAll('tr[data-member-of]:not([hidden])').length === {}",
                seeded.invalid.len()
            ),
            "the group's rows to unfold",
        )
        .await;
    // Each row shows a preview of its payload.
    let preview = browser
        .js(&format!(
            "return document.querySelector('tr[data-row-id=\"{}\"] td[data-field=\"preview\"]').textContent",
            seeded.failed
        ))
        .await;
    assert!(
        preview.as_str().unwrap_or("").starts_with("status number"),
        "{preview}"
    );
    // Long values (a 3,000-character error, a 2,000-character payload)
    // do not widen the page.
    let widths = browser
        .js("return [document.documentElement.scrollWidth, window.innerWidth]")
        .await;
    assert!(
        widths[0].as_u64().unwrap() <= widths[1].as_u64().unwrap(),
        "the page is wider than the window: {widths}"
    );
    let tall = browser
        .js(&format!(
            "return document.querySelector('tr[data-row-id=\"{}\"]').getBoundingClientRect().height",
            seeded.long_invalid
        ))
        .await;
    assert!(
        tall.as_f64().unwrap() < 200.0,
        "a long error makes a tall row: {tall}px"
    );
    // Paused instances, with why and since when (recorded in the store by
    // a daemon, here by hand).
    let paused = browser
        .js("return Array.from(document.querySelectorAll('#paused:not([hidden]) tr[data-paused-instance]'))
                .map(tr => [tr.dataset.pausedInstance, tr.querySelector('[data-field=\"why\"]').textContent,
                            tr.querySelector('[data-since]').textContent])")
        .await;
    assert_eq!(paused[0][0], json!("backup"), "{paused}");
    assert_eq!(paused[0][1], json!(PAUSE_REASON), "{paused}");
    assert!(paused[0][2].as_str().unwrap().ends_with(" ago"), "{paused}");
    // Each instance's provider capabilities, the evidence on hover; an
    // instance nothing was learned of shows `unknown`.
    let caps = browser
        .js("const c = (i, f) => document.querySelector('#instance-rows tr[data-instance=\"' + i + '\"] td[data-field=\"' + f + '\"]');
             return [c('main', 'supplied-ids').textContent, c('main', 'lookup-by-id').textContent,
                     c('main', 'engine').textContent, c('main', 'supplied-ids').title,
                     c('main', 'supplied-ids').querySelector('b') === null,
                     c('backup', 'supplied-ids').textContent, c('backup', 'engine').textContent]")
        .await;
    assert_eq!(caps[0], json!("no"), "{caps}");
    assert_eq!(caps[1], json!("unknown"), "{caps}");
    assert_eq!(caps[2], json!("NOWEB"), "{caps}");
    assert!(
        caps[3].as_str().unwrap().starts_with(CAPS_EVIDENCE),
        "{caps}"
    );
    assert_eq!(caps[4], json!(true), "evidence is text, never HTML");
    assert_eq!(caps[5], json!("unknown"), "{caps}");
    assert_eq!(caps[6], json!("–"), "{caps}");
    // Throughput over the minutes that had work, and the tile says so.
    let tp = browser
        .js("const t = document.getElementById('throughput');
             return [t.dataset.minutes, document.getElementById('throughput-window').textContent]")
        .await;
    assert_eq!(tp[0], json!(seeded.busy_minutes.to_string()), "{tp}");
    assert!(tp[1].as_str().unwrap().contains("with work"), "{tp}");
    let err = browser
        .js(&format!(
            "const td = document.querySelector('tr[data-row-id=\"{}\"] td[data-field=\"last-error\"]');
             return [td.textContent, td.querySelector('b') === null]",
            seeded.failed
        ))
        .await;
    assert_eq!(
        err,
        json!([format!("HTTP 400: {FAILED_ERROR}"), true]),
        "API text is shown as text, never parsed as HTML"
    );

    // The top of the page for the picture (unfolding the group scrolled).
    browser.js("window.scrollTo(0, 0); return true").await;
    save_screenshot(&browser, db).await;

    // Retry asks first: dismissed, nothing changes.
    browser
        .click(&format!(
            "tr[data-row-id=\"{}\"] button[data-action=\"retry\"]",
            seeded.failed
        ))
        .await;
    let question = browser.answer_confirm(false).await;
    assert!(question.contains(&seeded.failed.to_string()), "{question}");
    browser
        .wait_for(
            "return document.getElementById('flash').textContent.includes('not confirmed')",
            "the not-confirmed message",
        )
        .await;
    assert_eq!(
        s.get(seeded.failed).await.unwrap().unwrap().state,
        State::Failed
    );

    // Retry the failed row: it leaves the list, the counts follow the store.
    let before = browser.js("return document.body.dataset.refreshes").await;
    browser
        .click(&format!(
            "tr[data-row-id=\"{}\"] button[data-action=\"retry\"]",
            seeded.failed
        ))
        .await;
    browser.answer_confirm(true).await;
    browser
        .wait_for(
            &format!(
                "return document.body.dataset.refreshes !== {before} &&
                    !document.querySelector('tr[data-row-id=\"{}\"]')",
                seeded.failed
            ),
            "the retried row to leave the list",
        )
        .await;
    let flash = browser
        .js("return document.getElementById('flash').textContent")
        .await;
    assert!(
        flash.as_str().unwrap_or("").contains("now pending_upload"),
        "{flash}"
    );
    assert_eq!(
        s.get(seeded.failed).await.unwrap().unwrap().state,
        State::PendingUpload
    );
    assert_counts_match(&browser, &s).await;

    // The operator saw one parked row on the phone: Shown records it
    // posted (it is never sent again).
    let question = act_and_wait(&browser, seeded.seen, "confirm", "true").await;
    assert!(question.contains("saw it shown"), "{question}");
    let flash = browser
        .js("return document.getElementById('flash').textContent")
        .await;
    assert!(
        flash.as_str().unwrap_or("").contains("now posted"),
        "{flash}"
    );
    let seen = s.get(seeded.seen).await.unwrap().unwrap();
    assert_eq!(seen.state, State::Posted);
    assert_eq!(
        seen.last_error.as_deref(),
        Some(statusd::store::CONFIRMED_BY_OPERATOR)
    );
    assert_counts_match(&browser, &s).await;

    // Cancel the parked in-doubt row.
    let question = act_and_wait(
        &browser,
        seeded.in_doubt,
        "cancel",
        "document.querySelectorAll('tr[data-state=\"in_doubt\"]').length === 0",
    )
    .await;
    assert!(question.contains("never be sent"), "{question}");
    assert_eq!(
        s.get(seeded.in_doubt).await.unwrap().unwrap().state,
        State::Cancelled
    );
    assert_counts_match(&browser, &s).await;

    // The page refreshes on its own: a row enqueued behind its back shows up.
    let queued = count_cell(&browser, "backup", "queued").await;
    s.enqueue(text("backup", 9_000)).await.unwrap();
    browser
        .wait_for(
            &format!(
                "return document.querySelector('td[data-instance=\"backup\"][data-state=\"queued\"]')
                    .dataset.count === '{}'",
                queued + 1
            ),
            "the auto-refresh to show the new row",
        )
        .await;

    // Forgetting the token returns to the form.
    browser.click("#signout").await;
    browser
        .wait_for(
            "return !document.getElementById('login').hidden &&
                document.getElementById('app').hidden &&
                sessionStorage.getItem('statusd.adminToken') === null",
            "the token form after sign-out",
        )
        .await;

    browser.close().await;
    app.stop().await;
}

const FAILED_ERROR: &str = "payload.caption: <b>longer than 700 characters</b>";
const INVALID_ERROR: &str = "payload.text: is required";
/// Evidence with markup in it: shown as text.
const CAPS_EVIDENCE: &str = "a post supplying id <b>3EB0AA</b> was answered as 3EB0BB";

const PAUSE_REASON: &str = "HTTP 401: the access token was refused";

/// Clicks `action` on row `id`, accepts the page's question (returned),
/// and waits for the row to leave the list and `and` (a JS condition) to
/// hold.
async fn act_and_wait(browser: &Browser, id: Uuid, action: &str, and: &str) -> String {
    browser
        .click(&format!(
            "tr[data-row-id=\"{id}\"] button[data-action=\"{action}\"]"
        ))
        .await;
    let question = browser.answer_confirm(true).await;
    browser
        .wait_for(
            &format!("return !document.querySelector('tr[data-row-id=\"{id}\"]') && {and}"),
            &format!("the row to leave the list after {action}"),
        )
        .await;
    question
}

struct Seeded {
    failed: Uuid,
    in_doubt: Uuid,
    /// A second parked in-doubt row, which the operator saw shown.
    seen: Uuid,
    /// Invalid rows with one identical error.
    invalid: Vec<Uuid>,
    /// An invalid row with a 3,000-character error and payload.
    long_invalid: Uuid,
    /// Minutes from the first to the last minute with an attempt.
    busy_minutes: i64,
    posted_attempts: i64,
    error_attempts: i64,
}

/// An hour of history through the Store API only: rows posted across the
/// last hour (some after a retryable error), one failed, one parked
/// in-doubt, and some still queued or pending on two instances.
async fn seed<S: Store>(s: &S) -> Seeded {
    let batch: Vec<_> = (0..150)
        .map(|i| text(if i % 4 == 0 { "backup" } else { "main" }, i))
        .collect();
    assert_eq!(s.enqueue_many(&batch).await.unwrap(), 150);
    assign_all(s).await;
    let now = s.now().await.unwrap();
    let claim = ClaimParams {
        budgets: Vec::new(),
        owner: "seed".into(),
        limit: 1_000,
        lease: Duration::from_secs(60),
        skip_instances: vec![],
        fresh_ids: vec![],
    };
    let rows = s.claim(claim.clone()).await.unwrap();
    assert_eq!(rows.len(), 150);
    let (mut failed, mut in_doubt, mut seen) = (None, None, None);
    let (mut posted_attempts, mut error_attempts) = (0, 0);
    let mut done = Vec::new();
    for (k, row) in rows.iter().enumerate() {
        // A made-up but deterministic spread over the last 58 minutes.
        let secs_ago = 60 + ((k * k * 7 + k * 13) % 57) as i64 * 60 + (k * 17 % 60) as i64;
        let mut t = Transition::new(row.id, row.attempts, State::Posted);
        let outcome = match k {
            7 => {
                t.to = State::Failed;
                t.reason.http_status = Some(400);
                t.reason.error = Some(FAILED_ERROR.into());
                failed = Some(row.id);
                "permanent"
            }
            // Two parked in-doubt rows, with different errors (not folded
            // into one line).
            23 | 32 => {
                let (slot, error) = if k == 23 {
                    (&mut in_doubt, "timed out after the request was written")
                } else {
                    (&mut seen, "connection reset after the request was written")
                };
                t.to = State::InDoubt;
                t.reason.error = Some(error.into());
                t.effect = Effect::Park;
                *slot = Some(row.id);
                "in_doubt"
            }
            k if k % 9 == 4 => {
                t.to = State::PendingUpload;
                t.reason.http_status = Some(503);
                t.reason.error = Some("503 before processing".into());
                "retryable"
            }
            _ => {
                t.provider_id = row.message_id.clone();
                "posted"
            }
        };
        if outcome == "posted" {
            posted_attempts += 1;
        } else {
            error_attempts += 1;
        }
        done.push(Completion {
            transition: t,
            started_at: now - chrono::Duration::seconds(secs_ago),
            latency: Duration::from_millis(180 + (k as u64 * 37) % 400),
            outcome: outcome.parse().unwrap(),
        });
    }
    let mut done_starts: Vec<chrono::DateTime<chrono::Utc>> = done.iter().map(finished).collect();
    assert_eq!(s.complete(&done).await.unwrap(), 150);
    // The retryable ones go through on their second attempt.
    let again = s.claim(claim).await.unwrap();
    assert!(!again.is_empty());
    let done: Vec<Completion> = again
        .iter()
        .map(|row| {
            let mut t = Transition::new(row.id, row.attempts, State::Posted);
            t.provider_id = row.message_id.clone();
            Completion {
                transition: t,
                started_at: now - chrono::Duration::seconds(50),
                latency: Duration::from_millis(240),
                outcome: AttemptOutcome::Posted,
            }
        })
        .collect();
    posted_attempts += done.len() as i64;
    done_starts.extend(done.iter().map(finished));
    assert_eq!(s.complete(&done).await.unwrap(), again.len() as u64);
    // Still to do: pending rows on both instances, queued ones on `backup`.
    for i in 0..3 {
        s.enqueue(text("main", 1_000 + i)).await.unwrap();
        s.enqueue(text("backup", 2_000 + i)).await.unwrap();
    }
    assign_all(s).await;
    // Rows an upstream app got wrong: five the same way, one very long.
    let mut invalid = Vec::new();
    for i in 0..5 {
        let id = s.enqueue(text("main", 4_000 + i)).await.unwrap().id;
        assert!(s.mark_invalid(id, INVALID_ERROR).await.unwrap());
        invalid.push(id);
    }
    let long = s
        .enqueue(statusd::store::EnqueueParams {
            payload: serde_json::json!({ "text": "y".repeat(2_000) }).to_string(),
            ..text("main", 5_000)
        })
        .await
        .unwrap()
        .id;
    assert!(s.mark_invalid(long, &"z".repeat(3_000)).await.unwrap());
    for i in 0..4 {
        s.enqueue(text("backup", 3_000 + i)).await.unwrap();
    }
    s.set_instance_pause("backup", PAUSE_REASON).await.unwrap();
    // What main's provider was seen to do (a daemon records this).
    statusd::store::record_capabilities(
        s,
        &statusd::store::CapabilityChange {
            supplied_ids: Some(statusd::store::Known::No),
            engine: Some("NOWEB".into()),
            ..statusd::store::CapabilityChange::evidence("main", CAPS_EVIDENCE)
        },
    )
    .await
    .unwrap();
    // The seeded attempts' minutes, as the page's buckets count them.
    let minute = |t: chrono::DateTime<chrono::Utc>| t.timestamp().div_euclid(60);
    let mut starts: Vec<i64> = done_starts.iter().map(|t| minute(*t)).collect();
    starts.sort_unstable();
    let busy_minutes = starts.last().unwrap() - starts.first().unwrap() + 1;
    Seeded {
        failed: failed.unwrap(),
        in_doubt: in_doubt.unwrap(),
        seen: seen.unwrap(),
        invalid,
        long_invalid: long,
        busy_minutes,
        posted_attempts,
        error_attempts,
    }
}

/// When an attempt finished: the activity chart counts it in that minute.
fn finished(c: &Completion) -> chrono::DateTime<chrono::Utc> {
    c.started_at + chrono::Duration::from_std(c.latency).unwrap()
}

async fn assign_all<S: Store>(s: &S) {
    let ids: Vec<AssignId> = s
        .queued(10_000)
        .await
        .unwrap()
        .iter()
        .map(|r| AssignId {
            id: r.id,
            message_id: statusd::provider::ids::local_message_id(),
        })
        .collect();
    assert_eq!(s.assign_message_ids(&ids).await.unwrap(), ids.len() as u64);
}

/// `GET /v1/activity`: token-protected, one bucket per minute of the window.
async fn check_activity_api(api: &Api, seeded: &Seeded) {
    let anonymous = api.anonymous();
    let path = "/v1/activity?window=1h";
    assert_eq!(anonymous.get(path).await.code, 401);
    let r = api.get(path).await;
    assert_eq!(r.code, 200);
    let body = r.json();
    assert_eq!(body["window_secs"], 3600);
    assert_eq!(body["bucket_secs"], 60);
    let buckets = body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 61, "the partial first minute, 59, and now's");
    let sum = |k: &str| buckets.iter().map(|b| b[k].as_i64().unwrap()).sum::<i64>();
    assert_eq!(sum("posted"), seeded.posted_attempts);
    assert_eq!(sum("errors"), seeded.error_attempts);
    let r = api.get("/v1/activity?window=soon").await;
    assert_eq!(r.code, 400);
    assert!(r.text.contains("window"));
    let r = api.get("/v1/activity?window=30d&bucket=1s").await;
    assert_eq!(r.code, 400, "too many buckets");

    // The page and its assets come from the binary, under a strict policy.
    let page = anonymous.get("/").await;
    assert_eq!(page.code, 200);
    let csp = page.header("content-security-policy");
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    assert!(page.text.contains("dashboard.js"));
    for (path, kind) in [("dashboard.js", "javascript"), ("dashboard.css", "css")] {
        let r = anonymous.get(&format!("/{path}")).await;
        assert_eq!(r.code, 200);
        assert!(r.header("content-type").contains(kind));
    }
}

/// Every count cell equals the store's summary (0 where it has no row), and
/// every summary row has its cell.
async fn assert_counts_match<S: Store>(browser: &Browser, s: &S) {
    let cells = browser
        .js("return Array.from(document.querySelectorAll('td[data-instance][data-state]'))
                .map(td => [td.dataset.instance, td.dataset.state, td.dataset.count, td.textContent])")
        .await;
    let summary = s.summary().await.unwrap();
    let want: HashMap<(String, String), i64> = summary
        .iter()
        .map(|r| ((r.instance.clone(), r.state.as_str().to_string()), r.count))
        .collect();
    let mut seen = HashSet::new();
    for c in cells.as_array().unwrap() {
        let key = (
            c[0].as_str().unwrap().to_string(),
            c[1].as_str().unwrap().to_string(),
        );
        let shown: i64 = c[3].as_str().unwrap().replace(',', "").parse().unwrap();
        let expected = want.get(&key).copied().unwrap_or(0);
        assert_eq!(shown, expected, "cell {key:?}: page {c}, store {summary:?}");
        assert_eq!(c[2], json!(expected.to_string()));
        seen.insert(key);
    }
    for key in want.keys() {
        assert!(seen.contains(key), "no cell for {key:?}");
    }
    assert_eq!(seen.len(), 2 * State::ALL.len(), "two instances");
}

async fn count_cell(browser: &Browser, instance: &str, state: &str) -> i64 {
    browser
        .js(&format!(
            "return document.querySelector('td[data-instance=\"{instance}\"][data-state=\"{state}\"]').dataset.count"
        ))
        .await
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The attention list as the page shows it: row id → state.
async fn attention(browser: &Browser) -> HashMap<Uuid, String> {
    let rows = browser
        .js(
            "return Array.from(document.querySelectorAll('tr[data-row-id]'))
                .map(tr => [tr.dataset.rowId, tr.dataset.state])",
        )
        .await;
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().parse().unwrap(),
                r[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn wait_refreshed(browser: &Browser, n: u64) {
    browser
        .wait_for(
            &format!("return Number(document.body.dataset.refreshes || 0) >= {n}"),
            "the dashboard to load its data",
        )
        .await;
}

async fn save_screenshot(browser: &Browser, db: &TestDb) {
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let backend = if db.url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };
    let mut paths =
        vec![PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("dashboard-{backend}.png"))];
    if let (Ok(p), "sqlite") = (std::env::var("STATUSD_SCREENSHOT"), backend) {
        paths.push(PathBuf::from(p));
    }
    for p in paths {
        // Write then rename: the other backend's run may write at once.
        let tmp = p.with_extension(format!("{backend}.tmp"));
        std::fs::write(&tmp, &png).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &p).unwrap_or_else(|e| panic!("rename to {}: {e}", p.display()));
    }
}

/// A headless chromium behind its own chromedriver, spoken to over the W3C
/// WebDriver protocol with plain HTTP.
struct Browser {
    driver: Child,
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`
    session: String,
    profile: tempfile::TempDir,
}

const CHROMIUM: &str = "/usr/bin/chromium";

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

impl Browser {
    async fn start() -> Browser {
        let chromium = std::env::var("STATUSD_CHROMIUM").unwrap_or_else(|_| CHROMIUM.into());
        let driver_bin =
            std::env::var("STATUSD_CHROMEDRIVER").unwrap_or_else(|_| CHROMEDRIVER.into());
        for bin in [&chromium, &driver_bin] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: the dashboard test needs a real headless browser. \
                 Install it with `apt-get install -y chromium chromium-driver` \
                 (.ci/run does), or point STATUSD_CHROMIUM / STATUSD_CHROMEDRIVER at one."
            );
        }
        let profile = tempfile::tempdir().expect("temp dir for the browser profile");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = profile.path().join("chromedriver.log");
        let mut driver = Command::new(&driver_bin);
        crate::support::die_with_parent(&mut driver);
        let driver = driver
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {driver_bin}: {e}"));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let root = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            http,
            session: String::new(),
            profile,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = match browser.http.get(format!("{root}/status")).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .map(|v| v["value"]["ready"] == json!(true))
                    .unwrap_or(false),
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready on port {port}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let user_data = browser.profile.path().join("profile");
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage", "--window-size=1360,1280",
                        format!("--user-data-dir={}", user_data.display()),
                    ],
                },
            }},
        });
        let created = browser
            .call(
                reqwest::Method::POST,
                &format!("{root}/session"),
                Some(caps),
            )
            .await;
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {created}"));
        browser.session = format!("{root}/session/{id}");
        browser
    }

    /// One WebDriver command; a WebDriver error fails the test with its
    /// message. Returns the answer's `value`.
    async fn call(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method.clone(), url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {url}: {e}"));
        let status = res.status();
        let v: Value = res
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {url}: not JSON: {e}"));
        assert!(
            status.is_success(),
            "WebDriver {method} {url}: {status}: {}",
            v["value"]
        );
        v["value"].clone()
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("{}{path}", self.session), body)
            .await
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        // The reference is the object's only value (its key is a fixed UUID).
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element reference for {css}: {v}"))
            .to_string()
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/clear"),
            Some(json!({})),
        )
        .await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Runs a function body in the page and returns its result.
    async fn js(&self, body: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": body, "args": [] })),
        )
        .await
    }

    /// Polls `body` (a function body, or an expression) until it returns
    /// something truthy; fails naming `what` after 20 s.
    async fn wait_for(&self, body: &str, what: &str) -> Value {
        let body = if body.contains("return") {
            body.to_string()
        } else {
            format!("return {body}")
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.js(&body).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let page = self
                    .js("return document.body ? document.body.innerText : ''")
                    .await;
                panic!("timed out waiting for {what}; the page shows:\n{}", page);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Answers the page's `confirm()` (accept or dismiss) once it is open;
    /// returns its text. Fails if no dialog opens within 10 s.
    async fn answer_confirm(&self, accept: bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self
                .http
                .get(format!("{}/alert/text", self.session))
                .send()
                .await
                .expect("WebDriver alert/text");
            if r.status().is_success() {
                let text = r.json::<Value>().await.unwrap()["value"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let what = if accept { "accept" } else { "dismiss" };
                self.cmd(
                    reqwest::Method::POST,
                    &format!("/alert/{what}"),
                    Some(json!({})),
                )
                .await;
                return text;
            }
            assert!(Instant::now() < deadline, "no confirmation dialog opened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn screenshot(&self) -> Vec<u8> {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        base64_decode(v.as_str().expect("screenshot as base64"))
    }

    async fn close(mut self) {
        let session = std::mem::take(&mut self.session);
        if !session.is_empty() {
            self.call(reqwest::Method::DELETE, &session, None).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver takes its chromium down with it.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (the screenshot), without a crate for twenty lines.
fn base64_decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    }
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}
