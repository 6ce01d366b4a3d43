//! The course roster: `username,email[,name][,group]` with a header line,
//! read with the `csv` crate, and GitLab's username alphabet. It never
//! talks to GitLab.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use super::error::{ManifestError, shorten};

/// Rosters larger than this are refused (100 000 students fit easily).
pub const MAX_ROSTER: u64 = 16 << 20;

/// One known author.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Author {
    pub username: String,
    pub email: Option<String>,
    pub name: Option<String>,
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
        let records = records(text)?;
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

/// The records of `text` with the line each starts on, read by the `csv`
/// crate (`"` quoting, `""` inside quotes, CRLF or LF line ends, line
/// breaks inside quotes; rows may differ in length).
fn records(text: &str) -> Result<Vec<(usize, Vec<String>)>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut read = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| match e.position() {
            Some(p) => format!("line {}: {e}", p.line()),
            None => e.to_string(),
        })?;
        let (line, start) = rec
            .position()
            .map_or((0, 0), |p| (p.line() as usize, p.byte() as usize));
        read.push((line, start, rec));
    }
    let mut out = Vec::with_capacity(read.len());
    for (i, (line, start, rec)) in read.iter().enumerate() {
        let end = read.get(i + 1).map_or(text.len(), |next| next.1);
        out.push((*line, strict_fields(*line, &text[*start..end], rec)?));
    }
    Ok(out)
}

/// Kept beside the crate because `csv` is lenient where a roster must not
/// be: it keeps a stray quote as text and lets an unclosed quote swallow
/// the rest of the file (students silently dropped). `raw` is the record's
/// text as written; each field must appear in it plainly or quoted.
fn strict_fields(line: usize, raw: &str, rec: &csv::StringRecord) -> Result<Vec<String>, String> {
    let quoted = |v: &str| format!("\"{}\"", v.replace('"', "\"\""));
    let mut fields = Vec::with_capacity(rec.len());
    for f in rec {
        let field = if !f.contains('"') {
            if !raw.contains(f) && !raw.contains(&quoted(f.trim_end())) {
                return Err(format!("line {line}: text after a closing quote"));
            }
            f.to_string()
        } else if raw.contains(&quoted(f)) {
            f.to_string()
        } else {
            // Blanks before an opening quote: `csv` reads the quotes as text.
            let inner = f
                .trim()
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .filter(|i| !i.replace("\"\"", "").contains('"'));
            match inner {
                Some(i) => i.replace("\"\"", "\""),
                None => return Err(format!("line {line}: a quote in the middle of a field")),
            }
        };
        fields.push(field);
    }
    if raw.matches('"').count() % 2 == 1 {
        return Err(format!("line {line}: a quote is never closed"));
    }
    Ok(fields)
}

/// GitLab's username alphabet; anything else is never looked up.
pub fn is_username(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Blanks around a quoted field, and `""` inside one.
        let r =
            Roster::parse("username,email,name\n  \"dave\" ,d@x,\"D \"\"the\"\" K\"\n").unwrap();
        assert_eq!(r.get("dave").unwrap().name.as_deref(), Some("D \"the\" K"));
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
            (
                "username,email\n\"al\"ice,a@x\n",
                "line 2: text after a closing quote",
            ),
        ] {
            let e = Roster::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let e = Roster::load(Path::new("/nonexistent/roster.csv")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/roster.csv"), "{e}");
        assert!(crate::policy::admit::manifest_refusal(e).is_err());
    }
}
