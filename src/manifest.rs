//! The submission manifest: `labgrader.json` at the top of the student's
//! tree, and the authors it names.
//!
//! Owns reading and checking the manifest, reading the course roster CSV,
//! and verifying the authors it names. The manifest is the student's claim,
//! never proof: the pusher must be among the authors, and any other name
//! counts only when it is a member of the student's project (GitLab's
//! members API when a token is configured, else the roster's `group`
//! column). Names that are not are ignored and listed with the reason; an
//! author's address is only ever one the course or the user made known
//! (roster, GitLab's `public_email`, the push's own email), never a
//! private one.
//! The manifest is hostile input: it is opened with `O_NOFOLLOW` from the
//! exported tree (a symlink to /etc/shadow is refused, never followed),
//! must be a regular file of at most [`MAX_MANIFEST`] bytes, and every
//! error message names the file, and for JSON errors the line and column,
//! because it is emailed to the pusher. It never runs anything, never
//! touches the spool, and never decides a grade.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::ManifestPolicy;
use crate::event::{Project, Pusher};
use crate::gitlab::{GitlabApi, GitlabError, ProjectMember};
use crate::policy::ResolvedPolicy;

pub const MANIFEST_FILE: &str = "labgrader.json";
/// Larger manifests are refused (a manifest is a few lines).
pub const MAX_MANIFEST: u64 = 64 * 1024;
/// More authors than this is a mistake, not a team.
pub const MAX_AUTHORS: usize = 20;
/// Rosters larger than this are refused (100 000 students fit easily).
pub const MAX_ROSTER: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{MANIFEST_FILE} is required for this assignment: add it at the top of the repository")]
    Missing,
    #[error("{MANIFEST_FILE} is a symbolic link; commit it as a regular file")]
    Symlink,
    #[error("{MANIFEST_FILE} is not a regular file")]
    NotAFile,
    #[error("{MANIFEST_FILE} is {size} bytes; it may be at most {MAX_MANIFEST} bytes")]
    TooLarge { size: u64 },
    /// JSON syntax or encoding error, with serde_json's position.
    #[error("{MANIFEST_FILE} line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// Well-formed JSON that breaks a rule (wrong type, wrong assignment…).
    #[error("{MANIFEST_FILE}: {0}")]
    Invalid(String),
    #[error(
        "`authors` in {MANIFEST_FILE} does not list you ({pusher}), who pushed this commit; \
         add your GitLab username to `authors`, or remove `authors` to submit alone"
    )]
    PusherNotListed { pusher: String },
    /// The grader could not read the exported tree (its own fault).
    #[error("cannot read {MANIFEST_FILE}: {0}")]
    Io(std::io::Error),
    /// The course's roster is broken (staff must fix it).
    #[error("roster {path}: {message}")]
    Roster { path: PathBuf, message: String },
    /// The user lookup failed (retry later).
    #[error("cannot look up authors on GitLab: {0}")]
    Lookup(#[from] GitlabError),
    /// The token cannot see the project's members (staff must fix it).
    #[error(
        "GitLab answered 404 to the members of {project}: give the GitLab token (credential \
         gitlab-token, or gitlab.token_file) read access to the student projects"
    )]
    NoMembers { project: String },
}

impl ManifestError {
    /// True when the submission is at fault: the job ends with status
    /// `invalid_manifest` and this message goes to the pusher. False for
    /// the grader's or the staff's problems (I/O, roster, GitLab down):
    /// treat those as infrastructure errors, never charged to the student.
    pub fn is_student_fault(&self) -> bool {
        !matches!(
            self,
            ManifestError::Io(_)
                | ManifestError::Roster { .. }
                | ManifestError::Lookup(_)
                | ManifestError::NoMembers { .. }
        )
    }
}

/// A parsed, checked `labgrader.json`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Manifest {
    pub assignment: Option<String>,
    /// As written (trimmed, duplicates removed); `None` = the pusher.
    pub authors: Option<Vec<String>>,
    pub description: Option<String>,
    /// Every other top-level key, kept for the result.
    pub other: BTreeMap<String, Value>,
}

impl Manifest {
    /// Parse and check manifest bytes.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let v: Value = serde_json::from_slice(bytes).map_err(syntax_error)?;
        let Value::Object(map) = v else {
            return Err(ManifestError::Invalid(
                "must hold a JSON object, e.g. {\"authors\": [\"alice\"]}".into(),
            ));
        };
        let mut m = Manifest::default();
        for (k, v) in map {
            match k.as_str() {
                "assignment" => m.assignment = Some(string_field("assignment", v)?),
                "description" => m.description = Some(string_field("description", v)?),
                "authors" => m.authors = authors_field(v)?,
                _ => {
                    m.other.insert(k, v);
                }
            }
        }
        Ok(m)
    }

    /// Read `labgrader.json` from the root of an exported student tree
    /// (before the tests are laid over it) and check it against the
    /// assignment's policy. `Ok(None)`: absent and optional.
    pub fn load(
        tree_root: &Path,
        policy: &ResolvedPolicy,
    ) -> Result<Option<Manifest>, ManifestError> {
        let Some(bytes) = read_manifest_file(tree_root)? else {
            return match policy.manifest {
                ManifestPolicy::Required => Err(ManifestError::Missing),
                ManifestPolicy::Optional => Ok(None),
            };
        };
        let m = Manifest::parse(&bytes)?;
        if let Some(a) = &m.assignment
            && !a.trim().eq_ignore_ascii_case(&policy.assignment)
        {
            return Err(ManifestError::Invalid(format!(
                "names assignment `{}` but this repository is graded as `{}`",
                shorten(a),
                policy.assignment
            )));
        }
        Ok(Some(m))
    }

    /// Facts for `JobResult::extra`: `manifest` (every key as written).
    pub fn to_extra(&self) -> Value {
        let mut map = serde_json::Map::new();
        if let Some(a) = &self.assignment {
            map.insert("assignment".into(), Value::String(a.clone()));
        }
        if let Some(a) = &self.authors {
            map.insert(
                "authors".into(),
                Value::Array(a.iter().cloned().map(Value::String).collect()),
            );
        }
        if let Some(d) = &self.description {
            map.insert("description".into(), Value::String(d.clone()));
        }
        for (k, v) in &self.other {
            map.insert(k.clone(), v.clone());
        }
        Value::Object(map)
    }
}

fn syntax_error(e: serde_json::Error) -> ManifestError {
    // serde_json's text ends with " at line L column C"; we say it first.
    let text = e.to_string();
    let message = match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    ManifestError::Syntax {
        line: e.line(),
        column: e.column(),
        message,
    }
}

fn string_field(key: &str, v: Value) -> Result<String, ManifestError> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(ManifestError::Invalid(format!(
            "`{key}` must be a string, not {}",
            kind(&other)
        ))),
    }
}

fn authors_field(v: Value) -> Result<Option<Vec<String>>, ManifestError> {
    let list = match v {
        Value::Null => return Ok(None),
        Value::Array(a) => a,
        other => {
            return Err(ManifestError::Invalid(format!(
                "`authors` must be a list of GitLab usernames, e.g. [\"alice\", \"bob\"], not {}",
                kind(&other)
            )));
        }
    };
    if list.len() > MAX_AUTHORS {
        return Err(ManifestError::Invalid(format!(
            "`authors` lists {} names; at most {MAX_AUTHORS} are allowed",
            list.len()
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, v) in list.into_iter().enumerate() {
        let Value::String(s) = v else {
            return Err(ManifestError::Invalid(format!(
                "`authors` entry {} must be a username in quotes, not {}",
                i + 1,
                kind(&v)
            )));
        };
        let s = s.trim().trim_start_matches('@').to_string();
        if s.is_empty() {
            return Err(ManifestError::Invalid(format!(
                "`authors` entry {} is empty",
                i + 1
            )));
        }
        if !out.iter().any(|o| o.eq_ignore_ascii_case(&s)) {
            out.push(s);
        }
    }
    // An empty list means nobody; read it as "the pusher", like no key.
    Ok((!out.is_empty()).then_some(out))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Student text quoted in a message: one line, at most 80 characters.
fn shorten(s: &str) -> String {
    let one: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one.chars().count() > 80 {
        format!("{}…", one.chars().take(80).collect::<String>())
    } else {
        one
    }
}

/// Read the manifest's bytes without following a symlink; `None` if absent.
fn read_manifest_file(tree_root: &Path) -> Result<Option<Vec<u8>>, ManifestError> {
    let path = tree_root.join(MANIFEST_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(ManifestError::Symlink),
        Err(e) => return Err(ManifestError::Io(e)),
    };
    let meta = file.metadata().map_err(ManifestError::Io)?;
    if !meta.is_file() {
        return Err(ManifestError::NotAFile);
    }
    if meta.len() > MAX_MANIFEST {
        return Err(ManifestError::TooLarge { size: meta.len() });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_MANIFEST + 1)
        .read_to_end(&mut bytes)
        .map_err(ManifestError::Io)?;
    if bytes.len() as u64 > MAX_MANIFEST {
        return Err(ManifestError::TooLarge {
            size: bytes.len() as u64,
        });
    }
    Ok(Some(bytes))
}

/// One known author.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Author {
    pub username: String,
    pub email: Option<String>,
    pub name: Option<String>,
}

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

/// The course roster: `username,email[,name][,group]` with a header line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    /// Keyed by lower-cased username.
    users: BTreeMap<String, Author>,
    /// Lower-cased username → group (team), when the roster has a `group`
    /// column and the cell is not empty.
    groups: BTreeMap<String, String>,
    /// Whether the header names a `group` column.
    has_groups: bool,
}

impl Roster {
    pub fn load(path: &Path) -> Result<Roster, ManifestError> {
        let err = |message: String| ManifestError::Roster {
            path: path.to_path_buf(),
            message,
        };
        let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let mut bytes = Vec::new();
        file.take(MAX_ROSTER + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| err(format!("cannot read it: {e}")))?;
        if bytes.len() as u64 > MAX_ROSTER {
            return Err(err(format!("larger than {MAX_ROSTER} bytes")));
        }
        let text = String::from_utf8(bytes).map_err(|_| err("is not UTF-8 text".into()))?;
        Roster::parse(&text).map_err(err)
    }

    /// Parse roster text. Columns are found by the header's names
    /// (`username` and `email` required, `name` optional, others ignored).
    pub fn parse(text: &str) -> Result<Roster, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let records = parse_csv(text)?;
        let mut it = records
            .into_iter()
            .filter(|(_, r)| !(r.len() == 1 && r[0].trim().is_empty()));
        let Some((_, header)) = it.next() else {
            return Err("is empty; expected a header line `username,email,name`".into());
        };
        let col = |name: &str| {
            header
                .iter()
                .position(|h| h.trim().eq_ignore_ascii_case(name))
        };
        let (Some(ucol), Some(ecol)) = (col("username"), col("email")) else {
            return Err(format!(
                "line 1: header must name the columns `username` and `email` (and optionally `name`); found `{}`",
                header.join(",")
            ));
        };
        let ncol = col("name");
        let gcol = col("group");
        let mut users = BTreeMap::new();
        let mut groups = BTreeMap::new();
        for (line, rec) in it {
            let get = |i: usize| rec.get(i).map(|s| s.trim()).filter(|s| !s.is_empty());
            let Some(username) = get(ucol) else {
                return Err(format!("line {line}: no username"));
            };
            if !is_username(username) {
                return Err(format!(
                    "line {line}: `{}` is not a GitLab username",
                    shorten(username)
                ));
            }
            let author = Author {
                username: username.to_string(),
                email: get(ecol).map(str::to_string),
                name: ncol.and_then(get).map(str::to_string),
            };
            if users.insert(username.to_lowercase(), author).is_some() {
                return Err(format!("line {line}: username `{username}` appears twice"));
            }
            if let Some(g) = gcol.and_then(get) {
                groups.insert(username.to_lowercase(), g.to_string());
            }
        }
        Ok(Roster {
            users,
            groups,
            has_groups: gcol.is_some(),
        })
    }

    pub fn get(&self, username: &str) -> Option<&Author> {
        self.users.get(&username.to_lowercase())
    }

    /// The user's group (team) from the `group` column, if any.
    pub fn group(&self, username: &str) -> Option<&str> {
        self.groups
            .get(&username.to_lowercase())
            .map(String::as_str)
    }

    /// Whether the roster has a `group` column (membership can be checked).
    pub fn has_groups(&self) -> bool {
        self.has_groups
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// RFC 4180 records with the line each starts on: `"` quoting, `""`
/// inside quotes, CRLF or LF line ends, line breaks inside quotes.
fn parse_csv(text: &str) -> Result<Vec<(usize, Vec<String>)>, String> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut line = 1usize;
    let mut start_line = 1usize;
    let mut in_quotes = false;
    let mut quoted_field = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.trim().is_empty() && !quoted_field => {
                field.clear();
                in_quotes = true;
                quoted_field = true;
            }
            '"' => return Err(format!("line {line}: a quote in the middle of a field")),
            ',' => {
                record.push(std::mem::take(&mut field));
                quoted_field = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push((start_line, std::mem::take(&mut record)));
                quoted_field = false;
                line += 1;
                start_line = line;
            }
            _ if quoted_field && !c.is_whitespace() => {
                return Err(format!("line {line}: text after a closing quote"));
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err(format!("line {start_line}: a quote is never closed"));
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push((start_line, record));
    }
    Ok(records)
}

/// GitLab's username alphabet; anything else is never looked up.
pub fn is_username(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
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
    pub fn for_policy(
        policy: &ResolvedPolicy,
        gitlab: Option<GitlabApi>,
    ) -> Result<Directory, ManifestError> {
        let roster = match &policy.roster {
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

/// Resolve and verify the authors of a submission to `project` (GitLab's
/// numeric id, or `namespace/name`).
///
/// No `authors` in the manifest: the pusher alone. Otherwise the pusher
/// must be listed (else [`ManifestError::PusherNotListed`], the student's
/// fault), and every other name counts only when it is a member of the
/// project who can push to it (GitLab), or has the pusher's group in the
/// roster (no token). With a roster, every author must also be on it.
/// Names that do not count are ignored and listed with the reason.
/// Addresses: the roster's, else GitLab's `public_email`, and for the
/// pusher the push's own email; GitLab's private `email` is never read.
pub async fn resolve_authors(
    manifest: Option<&Manifest>,
    pusher: &Pusher,
    project: &Project,
    dir: &Directory,
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
    use crate::config::Config;

    fn policy(extra: &str) -> ResolvedPolicy {
        let c = Config::from_toml(&format!("[assignments.lab1]\n{extra}\n"), None).unwrap();
        ResolvedPolicy::for_project(&c, "lab1")
    }

    fn pusher(name: &str) -> Pusher {
        Pusher {
            id: Some(1),
            username: Some(name.into()),
            name: Some(format!("{name} Full")),
            email: Some(format!("{name}@push.example")),
        }
    }

    #[test]
    fn parses_known_and_other_keys() {
        let m = Manifest::parse(
            br#"{"assignment": "lab1", "authors": ["alice", " bob ", "ALICE", "@carol"],
                 "description": "our lab", "language": "rust", "extra": {"n": 1}}"#,
        )
        .unwrap();
        assert_eq!(m.assignment.as_deref(), Some("lab1"));
        assert_eq!(m.authors.unwrap(), ["alice", "bob", "carol"]);
        assert_eq!(m.description.as_deref(), Some("our lab"));
        assert_eq!(m.other["language"], "rust");
        assert_eq!(m.other["extra"]["n"], 1);
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let e = Manifest::parse(b"{\n  \"authors\": [\"alice\"]\n  \"description\": \"x\"\n}")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "labgrader.json line 3, column 3: expected `,` or `}`"
        );
        assert!(e.is_student_fault());
        let e = Manifest::parse(b"").unwrap_err().to_string();
        assert!(e.starts_with("labgrader.json line 1, column 0: "), "{e}");
        let e = Manifest::parse(b"{\"a\": \"\xff\"}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn bom_is_tolerated() {
        assert!(Manifest::parse(b"\xEF\xBB\xBF{}").is_ok());
    }

    #[test]
    fn wrong_shapes_are_explained() {
        for (text, want) in [
            ("[1]", "must hold a JSON object"),
            ("{\"authors\": \"alice\"}", "`authors` must be a list"),
            (
                "{\"authors\": [\"alice\", 3]}",
                "`authors` entry 2 must be a username",
            ),
            ("{\"authors\": [\" \"]}", "`authors` entry 1 is empty"),
            (
                "{\"assignment\": 3}",
                "`assignment` must be a string, not a number",
            ),
            (
                "{\"description\": []}",
                "`description` must be a string, not a list",
            ),
        ] {
            let e = Manifest::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(e.starts_with("labgrader.json: "), "{e}");
        }
        let many: Vec<String> = (0..21).map(|i| format!("\"u{i}\"")).collect();
        let e = Manifest::parse(format!("{{\"authors\": [{}]}}", many.join(",")).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 20"), "{e}");
    }

    #[test]
    fn empty_or_null_authors_mean_the_pusher() {
        assert_eq!(Manifest::parse(b"{\"authors\": []}").unwrap().authors, None);
        assert_eq!(
            Manifest::parse(b"{\"authors\": null}").unwrap().authors,
            None
        );
    }

    #[test]
    fn load_optional_required_and_wrong_assignment() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::load(d.path(), &policy("")).unwrap(), None);
        let e = Manifest::load(d.path(), &policy("manifest = \"required\"")).unwrap_err();
        assert!(matches!(e, ManifestError::Missing));
        assert!(e.to_string().contains("required"), "{e}");
        std::fs::write(d.path().join(MANIFEST_FILE), "{\"assignment\": \"lab2\"}").unwrap();
        let e = Manifest::load(d.path(), &policy(""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`lab2`") && e.contains("`lab1`"), "{e}");
        std::fs::write(d.path().join(MANIFEST_FILE), "{\"assignment\": \"LAB1\"}").unwrap();
        assert!(Manifest::load(d.path(), &policy("")).unwrap().is_some());
    }

    #[test]
    fn symlinked_manifest_is_refused_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let secret = d.path().join("secret.json");
        std::fs::write(&secret, "{\"authors\": [\"root\"]}").unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::os::unix::fs::symlink(&secret, tree.join(MANIFEST_FILE)).unwrap();
        let e = Manifest::load(&tree, &policy("")).unwrap_err();
        assert!(matches!(e, ManifestError::Symlink), "{e}");
        assert!(e.is_student_fault());
        // A dangling link too.
        std::fs::remove_file(tree.join(MANIFEST_FILE)).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", tree.join(MANIFEST_FILE)).unwrap();
        assert!(matches!(
            Manifest::load(&tree, &policy("")).unwrap_err(),
            ManifestError::Symlink
        ));
    }

    #[test]
    fn oversized_or_directory_manifest_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let big = format!(
            "{{\"description\": \"{}\"}}",
            "x".repeat(MAX_MANIFEST as usize)
        );
        std::fs::write(d.path().join(MANIFEST_FILE), big).unwrap();
        let e = Manifest::load(d.path(), &policy("")).unwrap_err();
        assert!(matches!(e, ManifestError::TooLarge { .. }), "{e}");
        std::fs::remove_file(d.path().join(MANIFEST_FILE)).unwrap();
        std::fs::create_dir(d.path().join(MANIFEST_FILE)).unwrap();
        assert!(matches!(
            Manifest::load(d.path(), &policy("")).unwrap_err(),
            ManifestError::NotAFile
        ));
    }

    #[test]
    fn roster_format() {
        let r = Roster::parse(
            "\u{feff}Username,Email,Name\r\nalice,alice@uni.example,\"Liddell, Alice\"\r\n\r\nbob,,\n\"carol\",carol@uni.example\n",
        )
        .unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(
            r.get("ALICE").unwrap(),
            &Author {
                username: "alice".into(),
                email: Some("alice@uni.example".into()),
                name: Some("Liddell, Alice".into()),
            }
        );
        assert_eq!(r.get("bob").unwrap().email, None);
        assert_eq!(
            r.get("carol").unwrap().email.as_deref(),
            Some("carol@uni.example")
        );
        // Columns found by name, in any order.
        let r = Roster::parse("email,username\nx@y,xavier\n").unwrap();
        assert_eq!(r.get("xavier").unwrap().email.as_deref(), Some("x@y"));
    }

    #[test]
    fn roster_errors_name_the_line() {
        for (text, want) in [
            ("", "is empty"),
            ("alice,alice@x\n", "line 1: header"),
            (
                "username,email\nalice,a@x\nalice,b@x\n",
                "line 3: username `alice` appears twice",
            ),
            ("username,email\n,a@x\n", "line 2: no username"),
            (
                "username,email\n\"al ice\",a@x\n",
                "line 2: `al ice` is not a GitLab username",
            ),
            (
                "username,email\n\"alice,a@x\n",
                "line 2: a quote is never closed",
            ),
            (
                "username,email\nal\"ice,a@x\n",
                "line 2: a quote in the middle",
            ),
        ] {
            let e = Roster::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let e = Roster::load(Path::new("/nonexistent/roster.csv")).unwrap_err();
        assert!(!e.is_student_fault());
        assert!(e.to_string().contains("/nonexistent/roster.csv"), "{e}");
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
        let a = block_on(resolve_authors(Some(&m), &pusher("bob"), &project(), &dir)).unwrap();
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
        ))
        .unwrap_err();
        assert!(e.is_student_fault());
        assert_eq!(
            e.to_string(),
            "`authors` in labgrader.json does not list you (alice), who pushed this commit; \
             add your GitLab username to `authors`, or remove `authors` to submit alone"
        );
    }

    #[test]
    fn manifest_extra_keeps_every_key() {
        let m = Manifest::parse(br#"{"authors": ["a"], "x": [1, 2], "description": "d"}"#).unwrap();
        let v = m.to_extra();
        assert_eq!(v["authors"][0], "a");
        assert_eq!(v["x"][1], 2);
        assert_eq!(v["description"], "d");
    }
}
