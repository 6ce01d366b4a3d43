//! The documentation cannot drift from the code: `docs/reference.md` lists
//! exactly the config keys the code accepts, and every relative link in the
//! README and `docs/` points at a file and heading that exist. ("Your first
//! course" is run as a script by `tests/first_course.rs`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Lines outside fenced code blocks, with their line numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// `## `[section]`` headings of the reference, each with the keys of the
/// first column of its table.
fn documented_keys(reference: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut sections = BTreeMap::new();
    let mut current: Option<String> = None;
    for (_, line) in prose(reference) {
        if let Some(h) = line.strip_prefix("## ") {
            current = h
                .strip_prefix("`[")
                .and_then(|h| h.strip_suffix("]`"))
                .map(str::to_string);
            if let Some(s) = &current {
                sections.insert(s.clone(), BTreeSet::new());
            }
            continue;
        }
        let (Some(section), Some(row)) = (&current, line.strip_prefix("| `")) else {
            continue;
        };
        if let Some((key, _)) = row.split_once("` |") {
            sections.get_mut(section).unwrap().insert(key.to_string());
        }
    }
    sections
}

#[test]
fn the_reference_lists_every_config_key_and_no_other() {
    let reference = read(&root().join("docs/reference.md"));
    let documented = documented_keys(&reference);
    let code: BTreeMap<String, BTreeSet<String>> = labgrader::config::keys::all()
        .into_iter()
        .map(|s| {
            (
                s.section.to_string(),
                s.keys.iter().map(|k| k.to_string()).collect(),
            )
        })
        .collect();
    let mut problems = Vec::new();
    for (section, keys) in &code {
        let Some(doc) = documented.get(section) else {
            problems.push(format!(
                "section [{section}] has no \"## `[{section}]`\" table"
            ));
            continue;
        };
        for k in keys.difference(doc) {
            problems.push(format!(
                "[{section}] {k}: accepted by the code, not documented"
            ));
        }
        for k in doc.difference(keys) {
            problems.push(format!(
                "[{section}] {k}: documented, not accepted by the code"
            ));
        }
    }
    for section in documented.keys().filter(|s| !code.contains_key(*s)) {
        problems.push(format!(
            "[{section}]: documented, no such section in the code"
        ));
    }
    assert!(
        problems.is_empty(),
        "docs/reference.md and the config code disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_reference_shows_every_command() {
    use clap::CommandFactory;
    let reference = read(&root().join("docs/reference.md"));
    let missing: Vec<String> = labgrader::cli::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .filter(|name| name != "help" && !reference.contains(&format!("labgrader {name}")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/reference.md never shows `labgrader {missing:?}`"
    );
}

/// GitLab's and GitHub's heading anchors: lower case, punctuation other
/// than `-` and `_` dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .into_iter()
        .filter_map(|(_, l)| l.strip_prefix('#'))
        .map(|h| slug(h.trim_start_matches('#')))
        .collect()
}

/// `](target)` links of a Markdown text, outside code.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose(text) {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push((n, rest[..end].to_string()));
                rest = &rest[end..];
            }
        }
    }
    out
}

#[test]
fn every_relative_link_reaches_a_file_and_heading() {
    let mut pages = vec![root().join("README.md"), root().join("ARCHITECTURE.md")];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            pages.push(p);
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = read(page);
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            let here = format!("{}:{line}", page.strip_prefix(root()).unwrap().display());
            if !dest.exists() {
                broken.push(format!("{here}: {target}: no such file"));
                continue;
            }
            if !anchor.is_empty()
                && dest.extension().is_some_and(|x| x == "md")
                && !anchors(&read(&dest)).contains(anchor)
            {
                broken.push(format!("{here}: {target}: no such heading"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "broken links:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn slugs_are_gitlabs() {
    assert_eq!(
        slug(" Hook server (`labgrader hook`, the hook half of `labgrader serve`)"),
        "hook-server-labgrader-hook-the-hook-half-of-labgrader-serve"
    );
    assert_eq!(slug("Writing `test_all`"), "writing-test_all");
    assert_eq!(slug("`[spool]`"), "spool");
}
