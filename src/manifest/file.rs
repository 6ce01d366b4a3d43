//! `labgrader.json`: reading it from the exported tree without following
//! a symlink, parsing and checking it against the assignment's rules, and
//! its facts for the result. It never looks up anyone nor runs anything.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::Value;

use super::error::{MANIFEST_FILE, MAX_MANIFEST, ManifestError, shorten};
use crate::config::ManifestPolicy;

/// More authors than this is a mistake, not a team.
pub const MAX_AUTHORS: usize = 20;

/// What the manifest and author checks need from the assignment's course
/// policy (`policy::ResolvedPolicy` converts into it), so that this module
/// never depends on the policy.
#[derive(Debug, Clone, Copy)]
pub struct ManifestRules<'a> {
    /// The student repository's name (the key of `[assignments.NAME]`).
    pub assignment: &'a str,
    pub manifest: ManifestPolicy,
    /// Roster CSV, resolved against the config file's directory.
    pub roster: Option<&'a Path>,
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
    pub fn load<'a>(
        tree_root: &Path,
        rules: impl Into<ManifestRules<'a>>,
    ) -> Result<Option<Manifest>, ManifestError> {
        let rules = rules.into();
        let Some(bytes) = read_manifest_file(tree_root)? else {
            return match rules.manifest {
                ManifestPolicy::Required => Err(ManifestError::Missing),
                ManifestPolicy::Optional => Ok(None),
            };
        };
        let m = Manifest::parse(&bytes)?;
        if let Some(a) = &m.assignment
            && !a.trim().eq_ignore_ascii_case(rules.assignment)
        {
            return Err(ManifestError::Invalid(format!(
                "names assignment `{}` but this repository is graded as `{}`",
                shorten(a),
                rules.assignment
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::ResolvedPolicy;

    fn policy(extra: &str) -> ResolvedPolicy {
        let c = Config::from_toml(&format!("[assignments.lab1]\n{extra}\n"), None).unwrap();
        ResolvedPolicy::for_project(&c, "lab1")
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
        assert!(crate::policy::admit::manifest_refusal(e).is_ok());
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
        assert!(crate::policy::admit::manifest_refusal(e).is_ok());
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
    fn manifest_extra_keeps_every_key() {
        let m = Manifest::parse(br#"{"authors": ["a"], "x": [1, 2], "description": "d"}"#).unwrap();
        let v = m.to_extra();
        assert_eq!(v["authors"][0], "a");
        assert_eq!(v["x"][1], 2);
        assert_eq!(v["description"], "d");
    }
}
