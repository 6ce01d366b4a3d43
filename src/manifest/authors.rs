//! Who gets the grade: resolving the manifest's `authors` against the
//! pusher, and verifying each other name: in the pusher's group in the
//! roster (staff-made teams), or a member of the project who can push and
//! has pushed to it before (GitLab's members API plus the pushes labgrader
//! noted: membership alone is the pusher's doing, a push is the
//! teammate's). It never reads the tree nor decides a job's status.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::error::{MANIFEST_FILE, ManifestError, shorten};
use super::file::{Manifest, ManifestRules};
use super::roster::{Author, Roster, is_username};
use crate::event::{Project, Pusher};
use crate::gitlab::{GitlabApi, ProjectMember};

/// A name in `authors` that does not count, and why (shown to the pusher).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IgnoredAuthor {
    pub username: String,
    pub reason: String,
}

/// The outcome of resolving author names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Authors {
    /// The verified authors: everyone who gets the grade, the email and a
    /// quota charge. The pusher first unless the roster does not know them.
    pub known: Vec<Author>,
    /// Names that do not count, ignored and listed in the result.
    pub unknown: Vec<String>,
    /// The same names with the reason each was ignored.
    #[serde(default)]
    pub ignored: Vec<IgnoredAuthor>,
    /// How membership was verified: `gitlab` (the project's members),
    /// `roster` (the roster's `group` column), or `unverified` (neither
    /// configured: only the pusher counts).
    pub source: String,
}

impl Authors {
    fn ignore(&mut self, username: &str, reason: String) {
        let username = shorten(username);
        self.unknown.push(username.clone());
        self.ignored.push(IgnoredAuthor { username, reason });
    }

    /// One line for the pusher naming the authors who were not credited,
    /// or `None` when every listed author counts.
    pub fn ignored_note(&self) -> Option<String> {
        if self.ignored.is_empty() {
            return None;
        }
        let list: Vec<String> = self
            .ignored
            .iter()
            .map(|i| format!("{} ({})", i.username, i.reason))
            .collect();
        Some(format!(
            "not credited from {MANIFEST_FILE}: {}",
            list.join("; ")
        ))
    }

    /// Facts for `JobResult::extra` (`authors`, `unknown_authors`,
    /// `ignored_authors`, `authors_source`).
    pub fn to_extra(&self) -> BTreeMap<String, Value> {
        let mut m = BTreeMap::new();
        m.insert(
            "authors".into(),
            serde_json::to_value(&self.known).expect("authors serialize"),
        );
        m.insert(
            "unknown_authors".into(),
            Value::Array(self.unknown.iter().cloned().map(Value::String).collect()),
        );
        if !self.ignored.is_empty() {
            m.insert(
                "ignored_authors".into(),
                serde_json::to_value(&self.ignored).expect("ignored authors serialize"),
            );
        }
        m.insert("authors_source".into(), Value::String(self.source.clone()));
        m
    }
}

/// Where authors are verified.
#[derive(Debug, Clone)]
pub enum Directory {
    /// GitLab's members API (`GET /projects/:id/members/all`): a token is
    /// configured. The roster, when the assignment has one, still says who
    /// belongs to the course and gives names and addresses.
    Gitlab {
        api: Box<GitlabApi>,
        roster: Option<Roster>,
    },
    /// No token: the roster, and its `group` column for membership.
    Roster(Roster),
    /// Neither: only the pusher counts.
    Unverified,
}

impl Directory {
    /// GitLab when a token is configured, else the roster when the policy
    /// names one, else unverified. Loads the roster now (call per job:
    /// staff may edit it during the term).
    pub fn for_policy<'a>(
        rules: impl Into<ManifestRules<'a>>,
        gitlab: Option<GitlabApi>,
    ) -> Result<Directory, ManifestError> {
        let roster = match rules.into().roster {
            Some(path) => Some(Roster::load(path)?),
            None => None,
        };
        Ok(match (gitlab, roster) {
            (Some(api), roster) => Directory::Gitlab {
                api: Box::new(api),
                roster,
            },
            (None, Some(r)) => Directory::Roster(r),
            (None, None) => Directory::Unverified,
        })
    }

    fn source(&self) -> &'static str {
        match self {
            Directory::Gitlab { .. } => "gitlab",
            Directory::Roster(_) => "roster",
            Directory::Unverified => "unverified",
        }
    }

    fn roster(&self) -> Option<&Roster> {
        match self {
            Directory::Gitlab { roster, .. } => roster.as_ref(),
            Directory::Roster(r) => Some(r),
            Directory::Unverified => None,
        }
    }
}

/// Whether the roster puts `a` and `b` in one (non-empty) group.
fn same_group(r: &Roster, a: &str, b: &str) -> bool {
    matches!((r.group(a), r.group(b)), (Some(x), Some(y)) if x.eq_ignore_ascii_case(y))
}

/// Resolve and verify the authors of a submission to `project` (GitLab's
/// numeric id, or `namespace/name`).
///
/// No `authors` in the manifest: the pusher alone. Otherwise the pusher
/// must be listed (else [`ManifestError::PusherNotListed`], the student's
/// fault), and every other name counts only when the roster puts it in the
/// pusher's `group`, or (with a GitLab token) it is a member of the project
/// who can push to it AND is in `pushed` (the lower-cased users who pushed
/// to this project before: their consent; a Maintainer can add anyone as a
/// member). With a roster, every author must also be on it.
/// Names that do not count are ignored and listed with the reason.
/// Addresses: the roster's, else GitLab's `public_email`, and for the
/// pusher the push's own email; GitLab's private `email` is never read.
pub async fn resolve_authors(
    manifest: Option<&Manifest>,
    pusher: &Pusher,
    project: &Project,
    dir: &Directory,
    pushed: &BTreeSet<String>,
) -> Result<Authors, ManifestError> {
    // GitLab's numeric id when the hook had it; the path works as well.
    let project_key = project
        .id
        .map_or_else(|| project.path.clone(), |id| id.to_string());
    let project_key = project_key.as_str();
    let mut out = Authors {
        known: Vec::new(),
        unknown: Vec::new(),
        ignored: Vec::new(),
        source: dir.source().to_string(),
    };
    let pusher_name = pusher
        .username
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty());
    let listed = manifest.and_then(|m| m.authors.clone());
    if let Some(names) = &listed {
        let listed_pusher =
            pusher_name.is_some_and(|p| names.iter().any(|n| n.eq_ignore_ascii_case(p)));
        if !listed_pusher {
            return Err(ManifestError::PusherNotListed {
                pusher: pusher_name.map_or("unknown user".into(), shorten),
            });
        }
    }
    let roster = dir.roster();
    // The pusher: GitLab named them; the roster (when there is one) must
    // know them, and gives their address before the push's own.
    if let Some(p) = pusher_name {
        match roster {
            Some(r) => match r.get(p) {
                Some(a) => {
                    let mut a = a.clone();
                    if a.email.is_none() {
                        a.email = pusher.email.clone().filter(|e| !e.trim().is_empty());
                    }
                    if a.name.is_none() {
                        a.name = pusher.name.clone();
                    }
                    out.known.push(a);
                }
                None => out.ignore(p, "not in the course roster".into()),
            },
            None => out.known.push(Author {
                username: p.to_string(),
                email: pusher.email.clone().filter(|e| !e.trim().is_empty()),
                name: pusher.name.clone(),
            }),
        }
    }
    let Some(names) = listed else {
        return Ok(out);
    };
    let pusher_name = pusher_name.expect("checked above");
    let mut members: Option<Vec<ProjectMember>> = None;
    for name in names {
        if name.eq_ignore_ascii_case(pusher_name) {
            continue;
        }
        if !is_username(&name) {
            out.ignore(&name, "not a GitLab username".into());
            continue;
        }
        let on_roster = roster.map(|r| r.get(&name).cloned());
        if let Some(None) = on_roster {
            out.ignore(&name, "not in the course roster".into());
            continue;
        }
        // Staff-made teams count whichever way membership is checked.
        if let Some(Some(a)) = &on_roster
            && roster.is_some_and(|r| same_group(r, pusher_name, &name))
        {
            if !out
                .known
                .iter()
                .any(|k| k.username.eq_ignore_ascii_case(&a.username))
            {
                out.known.push(a.clone());
            }
            continue;
        }
        let found = match dir {
            Directory::Gitlab { api, .. } => {
                if members.is_none() {
                    members = Some(api.project_members(project_key).await?.ok_or_else(|| {
                        ManifestError::NoMembers {
                            project: project.path.clone(),
                        }
                    })?);
                }
                let all = members.as_deref().unwrap_or_default();
                match all.iter().find(|m| m.username.eq_ignore_ascii_case(&name)) {
                    None => Err(format!("not a member of {}", project.path)),
                    Some(m) if !m.can_push() => Err(format!(
                        "not a member of {} who can push to it (Developer or above)",
                        project.path
                    )),
                    Some(_) if !pushed.contains(&name.to_lowercase()) => Err(format!(
                        "has not pushed to {} yet: a teammate is credited once they have \
                         pushed to the project themselves (or staff put you in one roster group)",
                        project.path
                    )),
                    Some(m) => match on_roster.flatten() {
                        Some(a) => Ok(a),
                        None => {
                            // The address the user made public, never the
                            // private one an admin token would also show.
                            let public = api
                                .user(m.id)
                                .await?
                                .and_then(|u| u.public_address().map(str::to_string));
                            Ok(Author {
                                username: m.username.clone(),
                                email: public,
                                name: m.name.clone(),
                            })
                        }
                    },
                }
            }
            Directory::Roster(r) => {
                let a = on_roster.flatten().expect("checked above");
                match (r.has_groups(), r.group(pusher_name), r.group(&name)) {
                    (false, _, _) => Err(
                        "membership cannot be checked: the roster has no `group` column and no \
                         GitLab token is configured"
                            .into(),
                    ),
                    (true, Some(mine), Some(theirs)) if mine.eq_ignore_ascii_case(theirs) => Ok(a),
                    (true, None, _) => Err("you have no group in the course roster".into()),
                    (true, _, _) => Err("not in your group in the course roster".into()),
                }
            }
            Directory::Unverified => Err(
                "membership cannot be checked: no GitLab token and no roster are configured".into(),
            ),
        };
        match found {
            Ok(a) => {
                if !out
                    .known
                    .iter()
                    .any(|k| k.username.eq_ignore_ascii_case(&a.username))
                {
                    out.known.push(a);
                }
            }
            Err(reason) => out.ignore(&name, reason),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pusher(name: &str) -> Pusher {
        Pusher {
            id: Some(1),
            username: Some(name.into()),
            name: Some(format!("{name} Full")),
            email: Some(format!("{name}@push.example")),
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn project() -> Project {
        Project::from_path(Some(7), "course/team1/lab1").unwrap()
    }

    #[test]
    fn roster_group_column_decides_membership() {
        let dir = Directory::Roster(
            Roster::parse(
                "username,email,name,group\nalice,alice@uni,Alice,t1\nbob,,Bob,T1\n\
                 carol,carol@uni,Carol,t2\ndan,dan@uni,Dan,\n",
            )
            .unwrap(),
        );
        let m = Manifest::parse(
            br#"{"authors": ["alice", "bob", "carol", "dan", "mallory", "rm -rf /"]}"#,
        )
        .unwrap();
        let a = block_on(resolve_authors(
            Some(&m),
            &pusher("bob"),
            &project(),
            &dir,
            &BTreeSet::new(),
        ))
        .unwrap();
        let names: Vec<&str> = a.known.iter().map(|k| k.username.as_str()).collect();
        // The pusher first, then the verified classmates in the list's order.
        assert_eq!(names, ["bob", "alice"]);
        // Bob's roster row has no email: the push's email fills it.
        assert_eq!(a.known[0].email.as_deref(), Some("bob@push.example"));
        assert_eq!(a.known[1].email.as_deref(), Some("alice@uni"));
        assert_eq!(a.unknown, ["carol", "dan", "mallory", "rm -rf /"]);
        assert_eq!(
            a.ignored[0].reason,
            "not in your group in the course roster"
        );
        assert_eq!(a.ignored[2].reason, "not in the course roster");
        assert_eq!(a.ignored[3].reason, "not a GitLab username");
        assert_eq!(a.source, "roster");
        let extra = a.to_extra();
        assert_eq!(extra["unknown_authors"][0], "carol");
        assert_eq!(extra["ignored_authors"][1]["username"], "dan");
        let note = a.ignored_note().unwrap();
        assert!(
            note.starts_with("not credited from labgrader.json: carol (not in your group"),
            "{note}"
        );
    }

    #[test]
    fn roster_without_group_column_credits_the_pusher_only() {
        let dir = Directory::Roster(Roster::parse("username,email\nalice,a@x\nbob,b@x\n").unwrap());
        let m = Manifest::parse(br#"{"authors": ["alice", "bob"]}"#).unwrap();
        let a = block_on(resolve_authors(
            Some(&m),
            &pusher("alice"),
            &project(),
            &dir,
            &BTreeSet::new(),
        ))
        .unwrap();
        assert_eq!(a.known.len(), 1);
        assert_eq!(a.known[0].username, "alice");
        assert!(
            a.ignored[0].reason.contains("no `group` column"),
            "{:?}",
            a.ignored
        );
    }

    #[test]
    fn authors_default_to_pusher() {
        let a = block_on(resolve_authors(
            None,
            &pusher("alice"),
            &project(),
            &Directory::Unverified,
            &BTreeSet::new(),
        ))
        .unwrap();
        assert_eq!(a.known.len(), 1);
        assert_eq!(a.known[0].username, "alice");
        assert_eq!(a.known[0].email.as_deref(), Some("alice@push.example"));
        assert_eq!(a.source, "unverified");
        assert_eq!(a.ignored_note(), None);
    }

    #[test]
    fn unverified_classmates_are_ignored() {
        let m = Manifest::parse(br#"{"authors": ["alice", "bob"]}"#).unwrap();
        let a = block_on(resolve_authors(
            Some(&m),
            &pusher("alice"),
            &project(),
            &Directory::Unverified,
            &BTreeSet::new(),
        ))
        .unwrap();
        assert_eq!(a.known.len(), 1);
        assert_eq!(a.unknown, ["bob"]);
    }

    #[test]
    fn a_list_without_the_pusher_is_refused() {
        let dir = Directory::Roster(Roster::parse("username,email\nalice,a@x\n").unwrap());
        let m = Manifest::parse(br#"{"authors": ["prof", "mallory"]}"#).unwrap();
        let e = block_on(resolve_authors(
            Some(&m),
            &pusher("alice"),
            &project(),
            &dir,
            &BTreeSet::new(),
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "`authors` in labgrader.json does not list you (alice), who pushed this commit; \
             add your GitLab username to `authors`, or remove `authors` to submit alone"
        );
        assert!(crate::policy::admit::manifest_refusal(e).is_ok());
    }
}
