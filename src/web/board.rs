//! Leaderboards, `GET /leaderboard/<assignment>`: opt-in per assignment
//! (`leaderboard = "KEY"`, `leaderboard_order = "asc" | "desc"` under
//! `[assignments.NAME]`), each student's best value of the key among their
//! graded jobs, ranked.
//!
//! The name shown is the student's GitLab namespace (its last part)
//! unless their latest graded job's `labgrader.json` says otherwise:
//! `"leaderboard_name": "Nick"` shows that text, `false`, `null` or `""`
//! hides the name ("anonymous"). A chosen name is always shown in quotes,
//! so that a bare name is a GitLab namespace: a student who chooses a
//! classmate's name cannot pass for them. Everything shown is escaped; a
//! name is cut to [`NAME_MAX`] characters on one line. An assignment
//! without a leaderboard answers 404.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use maud::html;

use super::data::Web;
use super::html::{self, Cache, Nav, num};
use crate::config::LeaderboardOrder;
use crate::gradebook::BoardRow;
use crate::text::one_line;

/// Characters of a display name kept.
pub const NAME_MAX: usize = 40;

/// One student's line.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    pub name: String,
    /// The student chose `name` (`leaderboard_name`): shown in quotes.
    pub chosen: bool,
    pub value: f64,
}

impl Web {
    pub(super) fn board_page(&self, assignment: &str) -> Response<Full<Bytes>> {
        let Some((conf, key)) = self
            .cfg
            .assignments
            .get(assignment)
            .and_then(|c| Some((c, c.leaderboard.as_deref()?)))
        else {
            let body = html! {
                h1 { "No leaderboard" }
                p { "This assignment has no leaderboard." }
            };
            return html::respond(
                StatusCode::NOT_FOUND,
                html::layout("No leaderboard", Nav::Board, None, body),
                Cache::Short,
            );
        };
        // One read per assignment per FRESH, however many ask (the lock is
        // held while reading, so a crowd arriving at once waits for it).
        let mut boards = self.boards.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, page)) = boards.get(assignment)
            && at.elapsed() < FRESH
        {
            return html::respond(StatusCode::OK, page.clone(), Cache::Short);
        }
        crate::metrics::inc(
            "labgrader_web_leaderboard_reads_total",
            "Leaderboards read from the gradebook (at most one per assignment per 30 s).",
            &[("assignment", assignment)],
        );
        let (rows, read) = match self.gradebook(|g| Ok(g.views().board_rows(assignment, key)?)) {
            Ok(r) => (r.unwrap_or_default(), true),
            Err(e) => {
                tracing::warn!(assignment, error = %e, "cannot read the leaderboard");
                (Vec::new(), false)
            }
        };
        let rows = course_rows(&self.cfg.gitlab, rows);
        let entries = rank(&rows, conf.leaderboard_order);
        let body = html! {
            h1 { "Leaderboard: " (assignment) }
            p.muted { "Each student's best " code { (key) } " ("
                (if conf.leaderboard_order == LeaderboardOrder::Asc { "lowest" } else { "highest" })
                " first). To hide your name, put " code { "\"leaderboard_name\": false" }
                " in your labgrader.json; to choose it, " code { "\"leaderboard_name\": \"…\"" }
                ". Names in quotes were chosen by their student; the others are GitLab namespaces." }
            @if entries.is_empty() { p { "No graded submission yet." } } @else {
                div.scroll { table #leaderboard {
                    thead { tr { th.num { "#" } th { "Student" } th.num { (key) } } }
                    tbody { @for (i, e) in entries.iter().enumerate() { tr {
                        td.num { (i + 1) }
                        @if e.chosen {
                            td.name.student.chosen { "“" (e.name) "”" }
                        } @else {
                            td.name.student { (e.name) }
                        }
                        td.num { (num(Some(e.value))) }
                    } } }
                } }
            }
        };
        let page = html::layout(&format!("Leaderboard {assignment}"), Nav::Board, None, body);
        if read {
            boards.insert(assignment.to_string(), (Instant::now(), page.clone()));
        }
        html::respond(StatusCode::OK, page, Cache::Short)
    }
}

/// How long a leaderboard read from the gradebook is shown (its
/// `Cache-Control: max-age` too).
const FRESH: Duration = Duration::from_secs(30);

/// A value and when it was first reached.
type Reached = (f64, Option<chrono::DateTime<chrono::Utc>>);
/// A display name, and whether the student chose it.
type Name = (String, bool);

/// The rows of the course's own students: with `[gitlab]
/// student_namespaces` set, a project elsewhere on the GitLab instance
/// (someone's personal namespace, a fork) that happens to share the
/// assignment's name never reaches the public page.
fn course_rows(gitlab: &crate::config::GitlabConfig, rows: Vec<BoardRow>) -> Vec<BoardRow> {
    if gitlab.student_namespaces.is_empty() {
        return rows;
    }
    rows.into_iter()
        .filter(|r| {
            r.project
                .rsplit_once('/')
                .is_some_and(|(ns, _)| gitlab.is_student_namespace(ns))
        })
        .collect()
}

/// Best value per project, ranked by `order` (ties: who got there
/// first); names from the latest job's manifest.
pub(super) fn rank(rows: &[BoardRow], order: LeaderboardOrder) -> Vec<Entry> {
    // project -> (best value and when it was reached, display name)
    let mut best: BTreeMap<&str, (Option<Reached>, Name)> = BTreeMap::new();
    for r in rows {
        let e = best
            .entry(r.project.as_str())
            .or_insert_with(|| (None, (default_name(&r.project), false)));
        // Rows come oldest first: the last manifest seen is the latest.
        e.1 = match r.name.as_deref() {
            None => (default_name(&r.project), false),
            Some("false" | "null" | "\"\"") => ("anonymous".into(), false),
            Some(json) => serde_json::from_str::<String>(json)
                .ok()
                .and_then(|s| chosen_name(&s))
                .map_or_else(|| ("anonymous".into(), false), |s| (s, true)),
        };
        let Some(v) = r.value else { continue };
        let better = match e.0 {
            None => true,
            Some((b, _)) => match order {
                LeaderboardOrder::Desc => v > b,
                LeaderboardOrder::Asc => v < b,
            },
        };
        if better {
            e.0 = Some((v, r.received_at));
        }
    }
    let mut list: Vec<(f64, Option<chrono::DateTime<chrono::Utc>>, Name)> = best
        .into_values()
        .filter_map(|(b, name)| b.map(|(v, t)| (v, t, name)))
        .collect();
    list.sort_by(|a, b| {
        let by_value = match order {
            LeaderboardOrder::Desc => b.0.total_cmp(&a.0),
            LeaderboardOrder::Asc => a.0.total_cmp(&b.0),
        };
        by_value.then(a.1.cmp(&b.1))
    });
    list.into_iter()
        .map(|(value, _, (name, chosen))| Entry {
            name,
            chosen,
            value,
        })
        .collect()
}

/// A chosen name as shown (between quotes the page adds), or `None` when
/// nothing visible is left. Characters that draw nothing or reorder what
/// follows (zero-width, bidi controls, other format characters) are
/// dropped, and double quotes become single ones: otherwise `x” alice “y`
/// would show a bare `alice` between two chosen names, and a
/// right-to-left override could move the closing quote.
fn chosen_name(s: &str) -> Option<String> {
    let invisible = |c: char| {
        matches!(c,
            '\u{AD}' | '\u{34F}' | '\u{61C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}'
            | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}'
            | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
    };
    let quote = |c: char| {
        matches!(c,
            '"' | '\u{201C}'..='\u{201F}' | '\u{2033}' | '\u{2036}' | '\u{275D}' | '\u{275E}'
            | '\u{2E42}' | '\u{301D}'..='\u{301F}' | '\u{FF02}' | '\u{AB}' | '\u{BB}')
    };
    let kept: String = s
        .chars()
        .filter(|c| !invisible(*c))
        .map(|c| if quote(c) { '\'' } else { c })
        .collect();
    let name = one_line(kept.trim(), NAME_MAX);
    (!name.trim().is_empty()).then_some(name)
}

/// The last part of the project's namespace (`course/alice/lab1` → alice).
fn default_name(project: &str) -> String {
    let ns = project.rsplit_once('/').map_or(project, |(ns, _)| ns);
    one_line(ns.rsplit('/').next().unwrap_or(ns), NAME_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(project: &str, value: Option<f64>, name: Option<&str>, at: i64) -> BoardRow {
        BoardRow {
            project: project.into(),
            received_at: chrono::DateTime::from_timestamp(at, 0),
            value,
            name: name.map(str::to_string),
        }
    }

    #[test]
    fn best_value_per_student_in_the_configured_order() {
        let rows = [
            row("c/alice/lab", Some(3.0), None, 1),
            row("c/alice/lab", Some(9.0), None, 2),
            row("c/bob/lab", Some(5.0), Some("\"Bobby <b>\""), 3),
            row("c/carol/lab", Some(1.0), Some("false"), 4),
            row("c/dave/lab", None, None, 5),
        ];
        let desc = rank(&rows, LeaderboardOrder::Desc);
        let names: Vec<_> = desc.iter().map(|e| (e.name.as_str(), e.value)).collect();
        assert_eq!(
            names,
            [("alice", 9.0), ("Bobby <b>", 5.0), ("anonymous", 1.0)]
        );
        let asc = rank(&rows, LeaderboardOrder::Asc);
        assert_eq!(asc[0].name, "anonymous");
        assert_eq!(
            asc[1],
            Entry {
                name: "alice".into(),
                chosen: false,
                value: 3.0
            }
        );
    }

    #[test]
    fn only_the_course_namespaces_reach_the_board_when_they_are_listed() {
        let rows = || {
            vec![
                row("course/alice/lab1", Some(3.0), None, 1),
                row("mallory/lab1", Some(9.0), None, 2),
                row("course2/eve/lab1", Some(9.0), None, 3),
            ]
        };
        let mut gitlab = crate::config::GitlabConfig::default();
        assert_eq!(course_rows(&gitlab, rows()).len(), 3, "no list: every row");
        gitlab.student_namespaces = vec!["course".into()];
        let kept: Vec<String> = course_rows(&gitlab, rows())
            .into_iter()
            .map(|r| r.project)
            .collect();
        assert_eq!(kept, ["course/alice/lab1"]);
    }

    /// The attack: a chosen name that passes for a classmate's bare
    /// GitLab name, by closing the page's quotes itself, reordering them
    /// with a bidi override, or hiding in invisible characters.
    #[test]
    fn a_chosen_name_cannot_break_out_of_its_quotes() {
        let shown = |name: &str| {
            let json = serde_json::to_string(name).unwrap();
            let rows = [row("c/mallory/lab", Some(1.0), Some(&json), 1)];
            let e = &rank(&rows, LeaderboardOrder::Desc)[0];
            (e.name.clone(), e.chosen)
        };
        assert_eq!(
            shown("x\u{201D} alice \u{201C}y"),
            ("x' alice 'y".into(), true)
        );
        assert_eq!(shown("\"alice\""), ("'alice'".into(), true));
        assert_eq!(shown("\u{202E}ecila\u{202C}"), ("ecila".into(), true));
        assert_eq!(shown("\u{2067}alice\u{2069}"), ("alice".into(), true));
        assert_eq!(shown("al\u{200B}ice\u{FEFF}"), ("alice".into(), true));
        // Nothing visible left: anonymous, not an empty pair of quotes.
        assert_eq!(
            shown("\u{200B}\u{3164} \u{115F}"),
            ("anonymous".into(), false)
        );
        assert_eq!(shown("Zoë 🚀"), ("Zoë 🚀".into(), true));
    }

    #[test]
    fn the_latest_manifest_decides_the_name() {
        let rows = [
            row("c/alice/lab", Some(3.0), Some("\"Ace\""), 1),
            row("c/alice/lab", Some(1.0), Some("\"\""), 2),
        ];
        assert_eq!(rank(&rows, LeaderboardOrder::Desc)[0].name, "anonymous");
        let chosen = &rank(&rows[..1], LeaderboardOrder::Desc)[0];
        assert_eq!((chosen.name.as_str(), chosen.chosen), ("Ace", true));
    }
}
