//! The pages' frame and HTTP answers: the layout (title, navigation, one
//! inline style sheet sized for a phone), the security headers every page
//! sends, and the few formatting helpers pages share (times, grades,
//! status badges).
//!
//! Every text a page shows goes through maud's `(…)`, which escapes it:
//! student strings (project names, test names, stdout) can never become
//! markup. The style sheet is allowed by its hash in the
//! Content-Security-Policy, so no inline script or other style can run.

use std::sync::LazyLock;

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use sha2::Digest;

/// The one style sheet (inline, allowed by hash). Narrow screens first.
const CSS: &str = "\
:root{color-scheme:light dark;--fg:#1b1f24;--muted:#5b6570;--line:#d5dae0;--bg:#fff;--card:#f5f7f9;\
--ok:#176b2c;--okbg:#e3f4e7;--bad:#a01c1c;--badbg:#fbe5e5;--wait:#7a5300;--waitbg:#fff3d6;--link:#0b57d0}\
@media (prefers-color-scheme:dark){:root{--fg:#e6e8eb;--muted:#9aa4ae;--line:#3a4149;--bg:#15181c;\
--card:#1e2227;--ok:#7fd493;--okbg:#173321;--bad:#f19a9a;--badbg:#3a1b1b;--wait:#f0c36b;--waitbg:#3a2e12;--link:#8ab4f8}}\
*{box-sizing:border-box}\
body{margin:0 auto;max-width:62rem;padding:1rem;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:var(--fg);background:var(--bg)}\
a{color:var(--link)}\
header.top{display:flex;flex-wrap:wrap;gap:.25rem 1rem;align-items:baseline;border-bottom:1px solid var(--line);padding-bottom:.5rem;margin-bottom:1rem}\
header.top .brand{font-weight:700}\
header.top nav a{margin-right:.75rem}\
h1{font-size:1.4rem;margin:.2rem 0 .6rem;overflow-wrap:anywhere}\
h2{font-size:1.1rem;margin:1.5rem 0 .5rem}\
.card{background:var(--card);border:1px solid var(--line);border-radius:.5rem;padding:.75rem 1rem;margin:.75rem 0}\
.card p{margin:.3rem 0}\
.label{font-size:.85rem;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}\
.grade{font-size:2.4rem;font-weight:700;line-height:1.1}\
.grade small{font-size:1rem;font-weight:400;color:var(--muted)}\
.badge{display:inline-block;padding:.05rem .5rem;border-radius:1rem;font-size:.85rem;font-weight:600;white-space:nowrap}\
.ok{color:var(--ok);background:var(--okbg)}.bad{color:var(--bad);background:var(--badbg)}.wait{color:var(--wait);background:var(--waitbg)}\
.muted{color:var(--muted)}\
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:.5rem 0}\
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0;overflow-wrap:anywhere}\
.scroll{overflow-x:auto}\
table{border-collapse:collapse;width:100%;font-size:.95rem}\
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}\
th{font-weight:600;color:var(--muted)}\
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
td.name{overflow-wrap:anywhere}\
code,pre{font-family:ui-monospace,'DejaVu Sans Mono',Menlo,Consolas,monospace;font-size:.9rem}\
pre{background:var(--card);border:1px solid var(--line);border-radius:.5rem;padding:.75rem;white-space:pre-wrap;overflow-wrap:anywhere;max-height:40rem;overflow-y:auto}\
details summary{cursor:pointer}\
form.filter{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end}\
form.filter label{display:flex;flex-direction:column;font-size:.85rem;color:var(--muted)}\
form.filter input,form.filter button{font:inherit;padding:.3rem .5rem}\
.bar{background:var(--link);height:1rem;border-radius:.2rem;min-width:1px}\
footer{margin-top:2rem;font-size:.85rem;color:var(--muted)}\
";

static CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(CSS));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; img-src 'self' data:; \
         form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
});

/// Which navigation a page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Student,
    Staff,
    Board,
}

/// A whole page: `refresh` seconds makes it reload itself (a waiting or
/// running job); no script anywhere.
pub fn layout(title: &str, nav: Nav, refresh: Option<u64>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                @if let Some(s) = refresh {
                    meta http-equiv="refresh" content=(s);
                }
                title { (title) " · labgrader" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header.top {
                    span.brand { "labgrader" }
                    @if nav == Nav::Staff {
                        nav {
                            a href="/staff/" { "Overview" }
                            a href="/staff/queue" { "Queue" }
                            a href="/staff/jobs" { "Jobs" }
                            a href="/staff/assignments" { "Assignments" }
                        }
                    }
                }
                main { (body) }
                footer {
                    @if refresh.is_some() {
                        "This page reloads itself every " (refresh.unwrap_or(0)) " s until the job is done."
                    }
                }
            }
        }
    }
}

/// How long an answer may be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Carries a token or staff data: never stored.
    NoStore,
    /// Public (a leaderboard): a short while.
    Short,
}

/// An HTML answer with every security header.
pub fn respond(status: StatusCode, page: Markup, cache: Cache) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(page.into_string())));
    *resp.status_mut() = status;
    set_common(&mut resp, "text/html; charset=utf-8", cache);
    resp
}

/// A plain answer (CSV, or a bare refusal) with the same headers.
pub fn respond_bytes(
    status: StatusCode,
    ctype: &'static str,
    body: Vec<u8>,
    cache: Cache,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    set_common(&mut resp, ctype, cache);
    resp
}

fn set_common(resp: &mut Response<Full<Bytes>>, ctype: &'static str, cache: Cache) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if let Ok(v) = HeaderValue::from_str(&CSP) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(match cache {
            Cache::NoStore => "no-store",
            Cache::Short => "public, max-age=30",
        }),
    );
}

/// The same page for every job that cannot be shown (no such job, a
/// wrong, tampered or missing token): it says nothing about which.
pub fn not_found() -> Response<Full<Bytes>> {
    let body = html! {
        h1 { "Not found" }
        p { "There is no page here. If you followed a link from an email or a commit, "
            "copy the whole link: it ends with a long code after " code { "?t=" } "." }
    };
    respond(
        StatusCode::NOT_FOUND,
        layout("Not found", Nav::Student, None, body),
        Cache::NoStore,
    )
}

/// `2026-12-06 14:03 UTC`.
pub fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `3 min 20 s`, `45 s`, `2 h 5 min`.
pub fn span(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// A status as a coloured badge with words a student understands.
pub fn status_badge(status: &str) -> Markup {
    let (class, words) = match status {
        "graded" => ("ok", "graded"),
        "waiting" => ("wait", "waiting in the queue"),
        "running" => ("wait", "running"),
        "no_grade" => ("bad", "no grade"),
        "timeout" => ("bad", "timed out"),
        "memory_limit" => ("bad", "memory limit"),
        "workspace_limit" => ("bad", "workspace limit"),
        "disk_limit" => ("bad", "disk limit"),
        "output_limit" => ("bad", "output limit"),
        "invalid_manifest" => ("bad", "invalid labgrader.json"),
        "infra_error" => ("bad", "grader error"),
        "unknown" => ("wait", "no result yet"),
        "error" => ("bad", "error"),
        other => ("bad", other),
    };
    html! { span class=(format!("badge {class}")) { (words) } }
}

/// A number as grades are written, or an empty string.
pub fn num(v: Option<f64>) -> String {
    v.map(crate::result::format_grade).unwrap_or_default()
}

/// The first 12 characters of a commit id (GitLab shows 8).
pub fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_the_policy_has_the_sheets_hash() {
        let page = layout(
            "<script>alert(1)</script>",
            Nav::Student,
            None,
            html! { p { ("<img src=x onerror=alert(1)>") } },
        )
        .into_string();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img src=x"), "{page}");
        assert!(page.contains("&lt;script&gt;"));
        assert!(CSP.contains("style-src 'sha256-"));
        assert!(!CSP.contains("script-src"));
    }

    #[test]
    fn spans_read_well() {
        assert_eq!(span(45.2), "45 s");
        assert_eq!(span(200.0), "3 min 20 s");
        assert_eq!(span(7500.0), "2 h 5 min");
    }
}
