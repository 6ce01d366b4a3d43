//! The web view: a student's result page (`GET /jobs/<job>?t=<token>`),
//! the staff pages (`/staff/…`, behind the staff token) and the opt-in
//! leaderboards (`/leaderboard/<assignment>`), served by the hook's
//! server when `[web] public_url` is set.
//!
//! Owns the pages and who may read which: a result page needs its job's
//! token ([`link`]), and anything that does not open (no such job, a wrong,
//! tampered or missing token) answers the same 404; staff pages need
//! `Authorization: Bearer <staff token>` (or HTTP Basic with it as the
//! password, so a browser can log in), compared in constant time, else
//! 401. Students see exactly what their email shows
//! ([`crate::deliver::hidden`]). It reads the gradebook (a read-only
//! connection) and the spool, and never writes either; the hook's own
//! routes are not its.
//!
//! The parent declares the children and holds the routing and the shared
//! state: `link` (tokens and result URLs), `html` (layout, headers,
//! formatting), `data` (read-only access to the gradebook and the queue),
//! `student` (the result page), `staff` (the staff pages) and `board`
//! (leaderboards), `query` (query strings), `pool` (the low-priority
//! threads pages are rendered on).

mod board;
mod data;
mod html;
pub mod link;
mod pool;
mod query;
mod staff;
mod student;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq;

pub use data::Web;
pub use link::{result_url, token, token_ok};
use query::Query;

/// Whether `path` is the web view's (the hook server sends it here).
pub fn handles(path: &str) -> bool {
    path == "/staff"
        || ["/jobs/", "/staff/", "/leaderboard/"]
            .iter()
            .any(|p| path.starts_with(p))
}

impl Web {
    /// Answer one request (the body, if any, is never read).
    pub async fn route<B>(self: Arc<Self>, req: Request<B>) -> Response<Full<Bytes>> {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            let mut r = html::respond_bytes(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                b"use GET\n".to_vec(),
                html::Cache::NoStore,
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let staff_ok = self.staff_ok(req.headers());
        let web = self.clone();
        let answer = self
            .renders
            .run(move || web.answer(&path, &query, staff_ok))
            .await;
        match answer {
            Some(r) => r,
            None => {
                tracing::error!("a web page panicked");
                html::respond_bytes(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    b"internal error\n".to_vec(),
                    html::Cache::NoStore,
                )
            }
        }
    }

    /// The page for `path` (blocking: SQLite and the spool).
    fn answer(&self, path: &str, query: &str, staff_ok: bool) -> Response<Full<Bytes>> {
        let q = Query::parse(query);
        if let Some(job) = path.strip_prefix("/jobs/") {
            return self.job_page(job, q.get("t").unwrap_or(""));
        }
        if let Some(a) = path.strip_prefix("/leaderboard/") {
            return self.board_page(a.trim_end_matches('/'));
        }
        if !staff_ok {
            return staff::unauthorized(self.staff.is_some());
        }
        let rest = path
            .strip_prefix("/staff")
            .unwrap_or("")
            .trim_start_matches('/');
        self.staff_page(rest, &q)
    }

    /// `Authorization: Bearer <token>` or `Basic <base64 user:token>`.
    fn staff_ok(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.staff else {
            return false;
        };
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or(("", ""));
        let given: Vec<u8> = if scheme.eq_ignore_ascii_case("bearer") {
            rest.trim().as_bytes().to_vec()
        } else if scheme.eq_ignore_ascii_case("basic") {
            use base64::Engine;
            let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(rest.trim()) else {
                return false;
            };
            match raw.iter().position(|&b| b == b':') {
                Some(i) => raw[i + 1..].to_vec(),
                None => return false,
            }
        } else {
            return false;
        };
        let want = expected.expose().as_bytes();
        want.len() == given.len() && bool::from(want.ct_eq(&given))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_its_paths_go_to_the_web_view() {
        assert!(handles("/jobs/X"));
        assert!(handles("/staff"));
        assert!(handles("/staff/queue"));
        assert!(handles("/leaderboard/lab1"));
        assert!(!handles("/hooks/gitlab"));
        assert!(!handles("/healthz"));
        assert!(!handles("/jobsX"));
    }
}
