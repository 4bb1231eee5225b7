//! The status page's HTML, written with maud: every value goes in through
//! `(…)`, which escapes it, so snapshot tags, source names, paths and error
//! messages — text others can influence — never become markup. No script;
//! hover text is SVG `<title>` and HTML `title`.

use super::chart::{self, bytes, Sample, Unit};
use super::view::{Class, Kept, SourceView, View, Wal, KEPT_ROWS};
use crate::repo::SourceStatus;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use maud::{html, Markup, PreEscaped, DOCTYPE};

const STYLE: &str = include_str!("style.css");

/// Snapshots listed under "Which go next".
const GOING_ROWS: usize = 30;

fn time(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned_datetime(tz.clone())
        .strftime("%Y-%m-%d %H:%M")
        .to_string()
}

fn opt_time(t: Option<Timestamp>, tz: &TimeZone) -> String {
    t.map_or_else(|| "—".to_string(), |t| time(t, tz))
}

fn secs(ms: u64) -> String {
    Unit::Seconds.show(ms as f64 / 1000.0)
}

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
}

/// The login form; `failed` adds the (generic) message of a refused token.
pub fn login(failed: bool) -> Markup {
    layout(
        "cairn — log in",
        html! {
            main.login {
                h1 { "cairn" }
                p { "Log in with an API token of the plan (" code { "cairn plan token NAME" } " makes one)." }
                @if failed {
                    p.error role="alert" { "That token is not valid." }
                }
                form method="post" action="/login" {
                    label for="token" { "Token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    button type="submit" { "Log in" }
                }
            }
        },
    )
}

/// The status page.
pub fn page(v: &View) -> Markup {
    let tz = &v.tz;
    let s = &v.status;
    layout(
        &format!("cairn — {}", v.plan),
        html! {
            header {
                h1 { "cairn " span.plan { (v.plan) } }
                p.meta {
                    "on " (v.host) " · " (time(v.now, tz)) " (" (tz.iana_name().unwrap_or("local time")) ")"
                    @if let Some(r) = &s.running { " · " strong { "running: " (r) } }
                }
                form method="post" action="/logout" { button type="submit" { "Log out" } }
            }
            nav {
                a href="#sources" { "Sources" } a href="#runs" { "Runs" } a href="#retention" { "Retention" }
                a href="#proofs" { "Proofs" } a href="#wal" { "WAL" } a href="#storage" { "Storage" }
                a href="#alerts" { "Alerts" }
            }
            section #summary {
                dl.cards {
                    div { dt { "Runs" } dd { (s.runs) } }
                    div { dt { "Failed runs" } dd { (s.failed_runs) } }
                    div { dt { "Snapshots" } dd { (s.snapshots) } }
                    div { dt { "Last snapshot" } dd { (opt_time(s.last_snapshot_time, tz)) } }
                    div { dt { "Next restore test" } dd { (opt_time(s.next_restore_test, tz)) } }
                    @for sch in &s.schedules {
                        div { dt { "Schedule " (sch.name) } dd { (opt_time(sch.next_run, tz)) " " small { code { (sch.cron) } } } }
                    }
                }
            }
            section #sources {
                h2 { "Sources" }
                @for src in &v.sources { (source(src, tz)) }
            }
            (runs(v))
            (retention(v))
            (proofs(v))
            (wal(v))
            (storage(v))
            (alerts(v))
        },
    )
}

fn status_word(st: SourceStatus) -> &'static str {
    match st {
        SourceStatus::Complete => "complete",
        SourceStatus::Incomplete => "incomplete",
        SourceStatus::Failed => "failed",
    }
}

fn source(src: &SourceView, tz: &TimeZone) -> Markup {
    let st = &src.state;
    let day = |t: i64| {
        Timestamp::from_second(t)
            .map(|t| {
                t.to_zoned_datetime(tz.clone())
                    .strftime("%Y-%m-%d")
                    .to_string()
            })
            .unwrap_or_default()
    };
    let at = |f: &dyn Fn(&super::view::Point) -> f64| -> Vec<Sample> {
        src.points
            .iter()
            .map(|p| Sample {
                t: p.time.as_second(),
                v: f(p),
            })
            .collect()
    };
    let marks: Vec<i64> = src
        .failures
        .iter()
        .map(|f| f.time.as_second())
        .chain(
            src.points
                .iter()
                .filter(|p| p.status != SourceStatus::Complete)
                .map(|p| p.time.as_second()),
        )
        .collect();
    let run = if src.shared_runs { " (whole run)" } else { "" };
    html! {
        article.source data-source=(src.name) {
            h3 { (src.name) " " small { "(" (src.kind) ")" } }
            dl.facts {
                dt { "Last result" } dd class=(format!("r-{}", st.last_result)) { @if st.last_result.is_empty() { "—" } @else { (st.last_result) } }
                dt { "Last run" } dd { (opt_time(st.last_run, tz)) }
                dt { "Last success" } dd { (opt_time(st.last_success, tz)) @if let Some(id) = &st.last_success_snapshot { " (" code { (id) } ")" } }
                dt { "Next run" } dd { (opt_time(st.next_run, tz)) }
                @if let Some(e) = &st.last_error { dt { "Last error" } dd.error { (e) } }
            }
            div.charts {
                figure { figcaption { "Size" } (chart::line(&format!("{}: size", src.name), Unit::Bytes, &at(&|p| p.size as f64), &marks, &day)) }
                figure { figcaption { "Bytes added" (run) } (chart::line(&format!("{}: bytes added", src.name), Unit::Bytes, &at(&|p| p.bytes_added as f64), &marks, &day)) }
                figure { figcaption { "Duration" (run) } (chart::line(&format!("{}: duration", src.name), Unit::Seconds, &at(&|p| p.duration_ms as f64 / 1000.0), &marks, &day)) }
            }
            @if !src.failures.is_empty() {
                h4 { "Failures (" (src.failure_count) ")" }
                table.failures {
                    thead { tr { th { "Time" } th { "Snapshot" } th { "Error" } } }
                    tbody {
                        @for f in &src.failures {
                            tr.failure {
                                td { (time(f.time, tz)) }
                                td { @if let Some(id) = &f.snapshot { code { (id) } " (saved without it)" } @else { "no snapshot saved" } }
                                td.error { (f.error) }
                            }
                        }
                    }
                }
                @if src.failure_count > src.failures.len() { p.more { "… and " (src.failure_count - src.failures.len()) " older" } }
            }
        }
    }
}

fn runs(v: &View) -> Markup {
    let tz = &v.tz;
    html! {
        section #runs {
            h2 { "Runs" }
            @if v.runs.is_empty() { p.empty { "No runs yet." } }
            @else {
                table {
                    thead { tr { th { "Time" } th { "Snapshot" } th { "Outcome" } th { "Sources" } th { "Tags" } th.num { "Size" } th.num { "Added" } th.num { "Duration" } th { "Error" } } }
                    tbody {
                        @for r in &v.runs {
                            tr class=(format!("run run-{}", r.outcome)) {
                                td { (time(r.time, tz)) }
                                td { @if let Some(id) = &r.snapshot { code { (id) } } @else { "—" } }
                                td class=(format!("o-{}", r.outcome)) { (r.outcome) }
                                td { @for (i, (n, st)) in r.sources.iter().enumerate() { @if i > 0 { ", " } span class=(format!("s-{}", status_word(*st))) title=(status_word(*st)) { (n) } } }
                                td { (r.tags.join(", ")) }
                                td.num { @if r.snapshot.is_some() { (bytes(r.size)) } }
                                td.num { @if r.snapshot.is_some() { (bytes(r.bytes_added)) } }
                                td.num { @if r.snapshot.is_some() { (secs(r.duration_ms)) } }
                                td.error { @if let Some(e) = &r.error { (e) } }
                            }
                        }
                    }
                }
                @if v.run_count > v.runs.len() { p.more { "… and " (v.run_count - v.runs.len()) " older runs" } }
            }
        }
    }
}

fn class_css(c: Class) -> String {
    format!("k-{}", c.name().replace(' ', "-"))
}

const LEGEND: [Class; 10] = [
    Class::Yearly,
    Class::Monthly,
    Class::Weekly,
    Class::Daily,
    Class::Hourly,
    Class::Last,
    Class::Within,
    Class::Tags,
    Class::Other,
    Class::Corrupted,
];

/// A year of days, a column per week (Monday on top), each day coloured
/// by the strongest rule that keeps a snapshot of it.
fn calendar(v: &View) -> Markup {
    let tz = &v.tz;
    let today = v.now.to_zoned_datetime(tz.clone()).date();
    let monday = today
        .checked_sub(jiff::Span::new().days(i64::from(today.weekday().to_monday_zero_offset())))
        .unwrap_or(today);
    let start = monday
        .checked_sub(jiff::Span::new().weeks(52))
        .unwrap_or(monday);
    let mut days: std::collections::BTreeMap<Date, Vec<&Kept>> = Default::default();
    for k in &v.retention.snapshots {
        let d = k.time.to_zoned_datetime(tz.clone()).date();
        if d >= start && d <= today {
            days.entry(d).or_default().push(k);
        }
    }
    const CELL: i64 = 12;
    const TOP: i64 = 16;
    const LEFT: i64 = 28;
    let width = LEFT + 53 * CELL + 4;
    let height = TOP + 7 * CELL + 4;
    let cells = (0..53 * 7).filter_map(|i| {
        let d = start.checked_add(jiff::Span::new().days(i)).ok()?;
        (d <= today).then_some((i, d))
    });
    html! {
        svg.calendar viewBox=(format!("0 0 {width} {height}")) role="img" aria-label="retention calendar" {
            @for (label, row) in [("Mon", 0), ("Wed", 2), ("Fri", 4)] {
                text.tick x="0" y=(TOP + row * CELL + 9) { (label) }
            }
            @for (i, d) in cells {
                @let (col, row) = (i / 7, i % 7);
                @let (x, y) = (LEFT + col * CELL, TOP + row * CELL);
                @if d.day() == 1 { text.tick x=(x) y="10" { (d.strftime("%b")) } }
                @if let Some(ks) = days.get(&d) {
                    @let best = ks.iter().map(|k| k.class).max().unwrap_or(Class::Removed);
                    @let next = ks.iter().any(|k| k.goes_next);
                    rect class=(format!("day {}{}", class_css(best), if next { " goes-next" } else { "" })) x=(x) y=(y) width="10" height="10" {
                        title {
                            (d) @for k in ks.iter().take(4) {
                                "\n" (k.snapshot) ": "
                                @if k.keep { (k.reasons.join("; ")) } @else { "not kept" }
                                @if k.goes_next { " — goes at the next run" }
                            }
                            @if ks.len() > 4 { "\n… " (ks.len() - 4) " more" }
                        }
                    }
                } @else {
                    rect.day.none x=(x) y=(y) width="10" height="10" { title { (d) ": no snapshot" } }
                }
            }
        }
    }
}

fn retention(v: &View) -> Markup {
    let tz = &v.tz;
    let r = &v.retention;
    let kept: Vec<&Kept> = r.snapshots.iter().filter(|k| k.keep).collect();
    let going: Vec<&Kept> = r
        .snapshots
        .iter()
        .filter(|k| !k.keep || k.goes_next)
        .collect();
    html! {
        section #retention {
            h2 { "Retention calendar" }
            p { "Rules: " code { (r.rules) } " · " (kept.len()) " of " (r.snapshots.len()) " snapshots kept"
                @if let Some(t) = r.next_run { " · next run " (time(t, tz)) } }
            @if !r.keeps_nothing.is_empty() {
                p.error { "The rules keep no good copy of " (r.keeps_nothing.join(", ")) ": retention refuses to run." }
            }
            (calendar(v))
            p.legend {
                @for c in LEGEND { span class=(format!("swatch {}", class_css(c))) {} (c.name()) " " }
                span.swatch.goes-next {} "goes at the next run"
            }
            h3 { "Which go next" }
            @if going.is_empty() { p.empty #goes-next { "None: the next run (if it succeeds) removes nothing." } }
            @else {
                ul #goes-next {
                    @for k in going.iter().take(GOING_ROWS) {
                        li { code { (k.snapshot) } " " (time(k.time, tz)) ": "
                            @if k.keep { "kept now (" (k.reasons.join("; ")) "), removed after the next run" }
                            @else { "not kept (" (k.reasons.join("; ")) "), removed at the next retention" } }
                    }
                }
            }
            @if going.len() > GOING_ROWS { p.more { "… and " (going.len() - GOING_ROWS) " older" } }
            h3 { "Kept snapshots" }
            table #kept {
                thead { tr { th { "Snapshot" } th { "Time" } th { "Kept by" } } }
                tbody {
                    @for k in kept.iter().take(KEPT_ROWS) {
                        tr.kept { td { code { (k.snapshot) } } td { (time(k.time, tz)) } td { span class=(format!("swatch {}", class_css(k.class))) {} (k.reasons.join("; ")) } }
                    }
                }
            }
            @if kept.len() > KEPT_ROWS { p.more { "… and " (kept.len() - KEPT_ROWS) " older" } }
        }
    }
}

fn proofs(v: &View) -> Markup {
    let tz = &v.tz;
    let s = &v.status;
    html! {
        section #proofs {
            h2 { "Proofs (restore tests)" }
            @if let Some(l) = &s.last_restore_test {
                p #last-test { "Last restore test: " strong class=(format!("o-{}", l.outcome)) { (l.outcome) } " at " (opt_time(l.time, tz))
                    @if let Some(id) = &l.snapshot { " of " code { (id) } }
                    @if !l.detail.is_empty() { " — " span.error { (l.detail) } } }
            } @else { p #last-test { "No restore test yet." } }
            p { "Passed " (s.restore_tests.passed) ", failed " (s.restore_tests.failed) ", skipped " (s.restore_tests.skipped)
                " · next " (opt_time(s.next_restore_test, tz)) " · " (v.never_proven) " snapshot(s) never proven" }
            @if !v.corrupted.is_empty() || !v.damaged.is_empty() {
                h3 { "Corrupted or unreadable" }
                ul.error #corrupted {
                    @for (id, t, d) in &v.corrupted { li { code { (id) } " (" (time(*t, tz)) "): its restore test failed — " (d) } }
                    @for (id, e) in &v.damaged { li { code { (id) } ": cannot be read — " (e) } }
                }
            }
            @if !v.proofs.is_empty() {
                table #proof-table {
                    thead { tr { th { "Snapshot" } th { "Taken" } th { "Proven" } th { "Outcome" } th { "Sources" } th { "Detail" } } }
                    tbody {
                        @for p in &v.proofs {
                            tr.proof {
                                td { code { (p.snapshot) } }
                                td { (time(p.snapshot_time, tz)) }
                                td { (time(p.proof.time, tz)) }
                                @if p.proof.passed { td.o-passed { "passed" } } @else { td.o-failed { "failed" } }
                                td { (p.proof.sources.join(", ")) }
                                td.error { (p.proof.detail) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn wal_row(w: &Wal, tz: &TimeZone) -> Markup {
    let a = w.archive.as_ref();
    let server = a.and_then(|a| a.server.as_ref());
    html! {
        article.wal {
            h3 { (w.source) }
            dl.facts {
                dt { "Restorable" }
                dd { @if let Some((from, to)) = w.window { (time(from, tz)) " to " (time(to, tz)) @if w.approximate { " (approximately)" } }
                     @else { "no physical base backup yet" }
                     @if let Some(g) = &w.gap { " — " span.error { "segment " code { (g) } " is missing" } } }
                dt { "Last archived" }
                dd { @if let Some(s) = server { code { (s.last_archived_wal.as_deref().unwrap_or("none")) } " at " (opt_time(s.last_archived_time, tz)) } @else { "—" } }
                dt { "Newest in the repository" } dd { code { (a.and_then(|a| a.repository_newest_wal.as_deref()).unwrap_or("—")) } }
                dt { "Waiting" } dd { @if let Some(l) = a.and_then(|a| a.lag_seconds) { (secs(l * 1000)) " for the oldest" } @else { "unknown" } }
                @if a.is_some_and(|a| a.failing) { dt { "Archiving" } dd.error { "fails at " code { (server.and_then(|s| s.last_failed_wal.as_deref()).unwrap_or("?")) } } }
                @if let Some(e) = a.and_then(|a| a.error.as_deref()) { dt { "Check" } dd.error { (e) } }
            }
        }
    }
}

fn wal(v: &View) -> Markup {
    html! {
        section #wal {
            h2 { "WAL archive" }
            @if v.wal.is_empty() { p.empty { "The plan has no physical PostgreSQL source." } }
            @for w in &v.wal { (wal_row(w, &v.tz)) }
        }
    }
}

fn storage(v: &View) -> Markup {
    let tz = &v.tz;
    html! {
        section #storage {
            h2 { "Storage" }
            @match &v.status.storage {
                None => { p.empty { "Not measured yet." } }
                Some(st) => {
                    p { (st.describe()) " · " (st.files) " files · measured " (opt_time(st.measured_at, tz)) }
                    @if let Some(p) = st.percent {
                        @let level = if p >= v.storage_critical { "critical" } else if p >= v.storage_warning { "warning" } else { "ok" };
                        svg.bar viewBox="0 0 400 28" role="img" aria-label=(format!("storage {p:.1}% used")) {
                            rect.track x="0" y="4" width="400" height="14" {}
                            rect class=(format!("fill {level}")) x="0" y="4" width=(format!("{:.1}", p.clamp(0.0, 100.0) * 4.0)) height="14" {}
                            line.warn x1=(v.storage_warning * 4.0) y1="0" x2=(v.storage_warning * 4.0) y2="22" { title { "storage-warning " (v.storage_warning) "%" } }
                            line.crit x1=(v.storage_critical * 4.0) y1="0" x2=(v.storage_critical * 4.0) y2="22" { title { "critical above " (v.storage_critical) "%" } }
                        }
                        p.legend { (format!("{p:.1}")) "% used · warning at " (v.storage_warning) "% · critical above " (v.storage_critical) "%" }
                    }
                }
            }
        }
    }
}

fn alerts(v: &View) -> Markup {
    let tz = &v.tz;
    html! {
        section #alerts {
            h2 { "Alerts" }
            @if v.alerts.is_empty() { p.empty { "No alerts." } }
            @else {
                table {
                    thead { tr { th { "Time" } th { "Kind" } th { "Subject" } th { "Delivery" } } }
                    tbody {
                        @for a in &v.alerts {
                            tr.alert { td { (time(a.time, tz)) } td { (a.what) } td { (a.detail) } td { (a.outcome) } }
                        }
                    }
                }
            }
        }
    }
}

/// The page when the repository cannot be read.
pub fn failure(error: &str, hint: Option<&str>) -> Markup {
    layout(
        "cairn — error",
        html! {
            main {
                h1 { "cairn" }
                p.error role="alert" { "The status page cannot be shown: " (error) }
                @if let Some(h) = hint { p { "hint: " (h) } }
                p { "The daemon's log has the details; " code { "GET /status" } " shows what it knows without the repository." }
            }
        },
    )
}
