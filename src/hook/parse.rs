//! GitLab webhook bodies → the ref updates labgrader may grade.
//!
//! Owns the reading of GitLab's payloads in both shapes: project hooks
//! (`Push Hook`, `Tag Push Hook`) and system hooks (`System Hook` with
//! `event_name` push, tag_push, repository_update, project_*). Pure: it
//! never touches the disk or the network and never decides eligibility
//! (tests namespace, test repository), only what the body says.
//!
//! The body is untrusted: it is parsed as a generic JSON value, every field
//! used is checked for type and form (SHAs are hex, paths are GitLab paths
//! without `..` or option-like components, refs start with `refs/`), and
//! every failure is a one-line [`ParseError`] the server answers with 400.

use serde_json::{Map, Value};

use crate::event::{EventKind, HookSource, Project, Pusher};

/// What one delivery asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Ref updates to consider for grading (push, tag_push,
    /// repository_update). `skipped` lists refs of the delivery that are
    /// not gradable (deletions, other refs), with why.
    Updates {
        source: HookSource,
        updates: Vec<RefUpdate>,
        skipped: Vec<Ignored>,
    },
    /// A project was created, destroyed, renamed or moved (system hook):
    /// cached answers about these paths are stale.
    ProjectChange {
        event_name: String,
        paths: Vec<String>,
    },
    /// Nothing to grade.
    Ignored(Ignored),
}

/// Why a delivery (or one ref of it) is not graded: a short metric label
/// and the sentence sent back to GitLab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub code: &'static str,
    pub reason: String,
}

impl Ignored {
    pub fn new(code: &'static str, reason: impl Into<String>) -> Ignored {
        Ignored {
            code,
            reason: reason.into(),
        }
    }
}

/// One ref moved from `before` to `after`: the unit that becomes a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    pub kind: EventKind,
    pub project: Project,
    pub pusher: Pusher,
    pub git_ref: String,
    pub before: String,
    pub after: String,
    /// The commit to grade: `checkout_sha` when the body has it (for an
    /// annotated tag `after` is the tag object), else `after`. A
    /// repository_update carries no `checkout_sha`, so for an annotated tag
    /// pushed only through it this is the tag object; the grader peels it
    /// (`<sha>^{commit}`).
    pub commit: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("missing X-Gitlab-Event header; is this a GitLab webhook?")]
    MissingEvent,
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is not a JSON object")]
    NotObject,
    #[error("field `{field}` is missing or not {expected}")]
    Field {
        field: String,
        expected: &'static str,
    },
    #[error("project path `{0}` is not a GitLab namespace/name path")]
    BadPath(String),
    #[error("`{field}` is `{value}`, not a 40 or 64 digit hex commit id")]
    BadSha { field: String, value: String },
    #[error("`{field}` is `{value}`, not a git ref (refs/...)")]
    BadRef { field: String, value: String },
    #[error("X-Gitlab-Event is `{header}` but the body's object_kind is `{kind}`")]
    KindMismatch { header: String, kind: String },
    #[error("system hook body has neither event_name nor object_kind")]
    NoEventName,
    #[error("repository_update has an empty `changes` list")]
    NoChanges,
}

/// Longest ref name accepted (git itself has no hard limit; GitLab's UI
/// stops far below this).
const MAX_REF: usize = 1024;

/// Parse one delivery: `gitlab_event` is the `X-Gitlab-Event` header.
pub fn parse(gitlab_event: &str, body: &[u8]) -> Result<Delivery, ParseError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(ParseError::NotObject);
    };
    match gitlab_event {
        "Push Hook" | "Tag Push Hook" => {
            let expected = if gitlab_event == "Push Hook" {
                "push"
            } else {
                "tag_push"
            };
            if let Some(kind) = obj.get("object_kind").and_then(Value::as_str)
                && kind != expected
            {
                return Err(ParseError::KindMismatch {
                    header: gitlab_event.into(),
                    kind: kind.into(),
                });
            }
            push(&obj, HookSource::ProjectHook)
        }
        "System Hook" => {
            let name = obj
                .get("event_name")
                .or_else(|| obj.get("object_kind"))
                .and_then(Value::as_str)
                .ok_or(ParseError::NoEventName)?;
            match name {
                "push" | "tag_push" => push(&obj, HookSource::SystemHook),
                "repository_update" => repository_update(&obj),
                "project_create" | "project_destroy" | "project_rename" | "project_transfer"
                | "project_update" => {
                    let mut paths = Vec::new();
                    for key in ["path_with_namespace", "old_path_with_namespace"] {
                        if let Some(p) = obj.get(key).and_then(Value::as_str) {
                            paths.push(p.to_string());
                        }
                    }
                    Ok(Delivery::ProjectChange {
                        event_name: name.to_string(),
                        paths,
                    })
                }
                other => Ok(Delivery::Ignored(Ignored::new(
                    "not_push",
                    format!("system hook event `{}` is not a push", clip(other)),
                ))),
            }
        }
        other => Ok(Delivery::Ignored(Ignored::new(
            "not_push",
            format!("event `{}` is not a push", clip(other)),
        ))),
    }
}

/// A push or tag_push body (project-hook or system-hook shape).
fn push(obj: &Map<String, Value>, source: HookSource) -> Result<Delivery, ParseError> {
    let project = project(obj)?;
    let pusher = pusher(obj);
    let git_ref = git_ref(obj, "ref")?;
    let before = sha(obj, "before")?;
    let after = sha(obj, "after")?;
    let checkout = match obj.get("checkout_sha") {
        None | Some(Value::Null) => None,
        Some(_) => Some(sha(obj, "checkout_sha")?),
    };
    let commit = checkout.unwrap_or_else(|| after.clone());
    let update = RefUpdate {
        kind: kind_of(&git_ref),
        project,
        pusher,
        git_ref,
        before,
        after,
        commit,
    };
    Ok(match gradable(&update) {
        Some(skip) => Delivery::Ignored(skip),
        None => Delivery::Updates {
            source,
            updates: vec![update],
            skipped: vec![],
        },
    })
}

/// A repository_update system hook: every ref of one push, no push hook
/// fired when there were more than `push_event_hooks_limit` of them.
fn repository_update(obj: &Map<String, Value>) -> Result<Delivery, ParseError> {
    let project = project(obj)?;
    let pusher = pusher(obj);
    let changes = obj
        .get("changes")
        .and_then(Value::as_array)
        .ok_or_else(|| field("changes", "a list"))?;
    if changes.is_empty() {
        return Err(ParseError::NoChanges);
    }
    let mut updates = Vec::new();
    let mut skipped = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        let c = c
            .as_object()
            .ok_or_else(|| field(&format!("changes[{i}]"), "an object"))?;
        let at = |f: &str| format!("changes[{i}].{f}");
        let git_ref = git_ref_at(c, "ref", &at("ref"))?;
        let before = sha_at(c, "before", &at("before"))?;
        let after = sha_at(c, "after", &at("after"))?;
        let update = RefUpdate {
            kind: kind_of(&git_ref),
            project: project.clone(),
            pusher: pusher.clone(),
            git_ref,
            commit: after.clone(),
            before,
            after,
        };
        match gradable(&update) {
            Some(skip) => skipped.push(skip),
            None => updates.push(update),
        }
    }
    if updates.is_empty() {
        return Ok(Delivery::Ignored(Ignored::new(
            skipped[0].code,
            skipped
                .iter()
                .map(|s| s.reason.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        )));
    }
    Ok(Delivery::Updates {
        source: HookSource::SystemHook,
        updates,
        skipped,
    })
}

/// `Some(reason)` when this update is not something to grade.
fn gradable(u: &RefUpdate) -> Option<Ignored> {
    let is_tag = u.git_ref.starts_with("refs/tags/");
    if !is_tag && !u.git_ref.starts_with("refs/heads/") {
        return Some(Ignored::new(
            "other_ref",
            format!("{} is not a branch or tag", u.git_ref),
        ));
    }
    if is_zero(&u.after) {
        return Some(if is_tag {
            Ignored::new("tag_deletion", format!("tag deletion ({})", u.git_ref))
        } else {
            Ignored::new(
                "branch_deletion",
                format!("branch deletion ({})", u.git_ref),
            )
        });
    }
    None
}

fn kind_of(git_ref: &str) -> EventKind {
    if git_ref.starts_with("refs/tags/") {
        EventKind::TagPush
    } else {
        EventKind::Push
    }
}

fn is_zero(sha: &str) -> bool {
    sha.bytes().all(|b| b == b'0')
}

fn field(name: &str, expected: &'static str) -> ParseError {
    ParseError::Field {
        field: name.to_string(),
        expected,
    }
}

fn project(obj: &Map<String, Value>) -> Result<Project, ParseError> {
    let p = obj
        .get("project")
        .and_then(Value::as_object)
        .ok_or_else(|| field("project", "an object"))?;
    let path = p
        .get("path_with_namespace")
        .and_then(Value::as_str)
        .ok_or_else(|| field("project.path_with_namespace", "a string"))?;
    // The project hook has project.id; the documented system hook only the
    // top-level project_id.
    let id = p
        .get("id")
        .and_then(Value::as_u64)
        .or_else(|| obj.get("project_id").and_then(Value::as_u64));
    if !valid_project_path(path) {
        return Err(ParseError::BadPath(clip(path)));
    }
    Project::from_path(id, path).ok_or_else(|| ParseError::BadPath(clip(path)))
}

/// GitLab paths: components of letters, digits, `_`, `-`, `.`; never `.`
/// or `..`, never starting with `-` (it ends up in URLs and git's argv).
pub fn valid_project_path(path: &str) -> bool {
    path.len() <= 1024
        && path.contains('/')
        && path.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && !c.starts_with('-')
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        })
}

fn pusher(obj: &Map<String, Value>) -> Pusher {
    let s = |k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty() && *v != "[REDACTED]")
            .map(|v| crate::text::one_line(v, 256))
    };
    Pusher {
        id: obj.get("user_id").and_then(Value::as_u64),
        username: s("user_username"),
        name: s("user_name"),
        email: s("user_email"),
    }
}

fn sha(obj: &Map<String, Value>, key: &str) -> Result<String, ParseError> {
    sha_at(obj, key, key)
}

fn sha_at(obj: &Map<String, Value>, key: &str, label: &str) -> Result<String, ParseError> {
    let v = obj
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| field(label, "a string"))?;
    if !crate::git::is_full_sha(v) {
        return Err(ParseError::BadSha {
            field: label.to_string(),
            value: clip(v),
        });
    }
    Ok(v.to_ascii_lowercase())
}

fn git_ref(obj: &Map<String, Value>, key: &str) -> Result<String, ParseError> {
    git_ref_at(obj, key, key)
}

fn git_ref_at(obj: &Map<String, Value>, key: &str, label: &str) -> Result<String, ParseError> {
    let v = obj
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| field(label, "a string"))?;
    let ok = v.starts_with("refs/")
        && v.len() > 5
        && v.len() <= MAX_REF
        && !v.contains("..")
        && !v
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'\\');
    if !ok {
        return Err(ParseError::BadRef {
            field: label.to_string(),
            value: clip(v),
        });
    }
    Ok(v.to_string())
}

/// Untrusted text echoed in an answer: one line, at most 80 characters.
fn clip(s: &str) -> String {
    crate::text::one_line(s, 80)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ZERO_SHA;

    const A: &str = "95790bf891e76fee5e1747ab589903a6a1f80f22";
    const B: &str = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7";

    fn body(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn push_body(path: &str, git_ref: &str, after: &str) -> Vec<u8> {
        body(serde_json::json!({
            "object_kind": "push", "ref": git_ref, "before": A, "after": after,
            "checkout_sha": after, "user_id": 4, "user_username": "js",
            "user_email": "", "project": {"id": 15, "path_with_namespace": path}
        }))
    }

    #[test]
    fn project_push_becomes_one_update() {
        let d = parse("Push Hook", &push_body("a/b/c/repo", "refs/heads/main", B)).unwrap();
        let Delivery::Updates { updates, .. } = d else {
            panic!("{d:?}")
        };
        let u = &updates[0];
        assert_eq!(u.project.namespace, "a/b/c");
        assert_eq!(u.project.name, "repo");
        assert_eq!(u.commit, B);
        assert_eq!(u.pusher.email, None, "empty email is no email");
        assert_eq!(u.kind, EventKind::Push);
    }

    #[test]
    fn deletion_is_ignored() {
        let d = parse("Push Hook", &push_body("a/r", "refs/heads/x", ZERO_SHA)).unwrap();
        assert!(matches!(
            d,
            Delivery::Ignored(Ignored {
                code: "branch_deletion",
                ..
            })
        ));
        let d = parse("Push Hook", &push_body("a/r", "refs/tags/v1", ZERO_SHA)).unwrap();
        assert!(matches!(
            d,
            Delivery::Ignored(Ignored {
                code: "tag_deletion",
                ..
            })
        ));
    }

    #[test]
    fn bad_fields_name_the_field() {
        let e = parse("Push Hook", b"[1]").unwrap_err();
        assert_eq!(e, ParseError::NotObject);
        let e = parse("Push Hook", b"{").unwrap_err();
        assert!(matches!(e, ParseError::NotJson(_)));
        let e = parse("Push Hook", &push_body("a/r", "refs/heads/x", "xyz")).unwrap_err();
        assert!(e.to_string().contains("`after`"), "{e}");
        let e = parse("Push Hook", &push_body("../r", "refs/heads/x", B)).unwrap_err();
        assert!(matches!(e, ParseError::BadPath(_)), "{e}");
        let e = parse("Push Hook", &push_body("a/-r", "refs/heads/x", B)).unwrap_err();
        assert!(matches!(e, ParseError::BadPath(_)), "{e}");
        let e = parse("Push Hook", &push_body("a/r", "main", B)).unwrap_err();
        assert!(matches!(e, ParseError::BadRef { .. }), "{e}");
        let e = parse("Push Hook", br#"{"ref":"refs/heads/a"}"#).unwrap_err();
        assert!(e.to_string().contains("`project`"), "{e}");
    }

    #[test]
    fn repository_update_lists_every_gradable_ref() {
        let b = body(serde_json::json!({
            "event_name": "repository_update", "user_id": 1, "project_id": 3,
            "project": {"path_with_namespace": "s/lab"},
            "changes": [
                {"before": A, "after": B, "ref": "refs/heads/a"},
                {"before": A, "after": ZERO_SHA, "ref": "refs/heads/gone"},
                {"before": ZERO_SHA, "after": B, "ref": "refs/tags/v1"},
                {"before": A, "after": B, "ref": "refs/merge-requests/1/head"}
            ]
        }));
        let Delivery::Updates {
            updates,
            skipped,
            source,
        } = parse("System Hook", &b).unwrap()
        else {
            panic!()
        };
        assert_eq!(source, HookSource::SystemHook);
        assert_eq!(updates.len(), 2);
        assert_eq!(updates[0].project.id, Some(3));
        assert_eq!(updates[1].kind, EventKind::TagPush);
        assert_eq!(skipped.len(), 2);
    }

    #[test]
    fn system_events_that_are_not_pushes() {
        let d = parse("System Hook", br#"{"event_name":"user_create"}"#).unwrap();
        assert!(matches!(
            d,
            Delivery::Ignored(Ignored {
                code: "not_push",
                ..
            })
        ));
        let d = parse(
            "System Hook",
            br#"{"event_name":"project_rename","path_with_namespace":"r/x-test","old_path_with_namespace":"r/y"}"#,
        )
        .unwrap();
        assert_eq!(
            d,
            Delivery::ProjectChange {
                event_name: "project_rename".into(),
                paths: vec!["r/x-test".into(), "r/y".into()]
            }
        );
        assert_eq!(
            parse("System Hook", b"{}").unwrap_err(),
            ParseError::NoEventName
        );
    }
}
