//! Reading what Python tools leave behind: a wheel's RECORD and top_level.txt, pytest's
//! junit XML and summary line, pycodestyle's and pyflakes' reports.
//!
//! Kept pure and apart from the task code so every format quirk is a unit test, not a
//! VM run.

use std::collections::BTreeMap;

use crate::results::{TestsMetrics, ToolCounts};

/// The first field of a RECORD line (CSV: the path may be quoted, with `""` for `"`).
fn record_path(line: &str) -> Option<String> {
    let line = line.trim_end_matches('\r');
    if let Some(rest) = line.strip_prefix('"') {
        let mut path = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    path.push('"');
                } else {
                    return Some(path);
                }
            } else {
                path.push(c);
            }
        }
        return None;
    }
    let path = line.split(',').next()?;
    (!path.is_empty()).then(|| path.to_string())
}

/// Every path listed in a RECORD file.
pub fn record_paths(record: &str) -> Vec<String> {
    record.lines().filter_map(record_path).collect()
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

/// The names of the `[console_scripts]` of an `entry_points.txt`, sorted, only those
/// that are plain file names.
pub fn console_scripts(entry_points: &str) -> Vec<String> {
    let mut in_section = false;
    let mut names = Vec::new();
    for line in entry_points.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == "[console_scripts]";
        } else if let Some((name, _)) = line.split_once('=').filter(|_| in_section) {
            let name = name.trim();
            let plain = !name.is_empty()
                && !name.starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if plain {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// The top-level modules a distribution installs: `top_level.txt` when it has entries,
/// otherwise the first components of its RECORD (packages, `.py` modules, extension
/// modules), sorted and without duplicates. Scripts (`../../bin/x`), metadata and data
/// directories, `.pth` files and names that are not identifiers are left out.
pub fn top_level_modules(top_level_txt: Option<&str>, record: &str) -> Vec<String> {
    let mut modules: Vec<String> = match top_level_txt {
        Some(text) if text.lines().any(|l| !l.trim().is_empty()) => text
            .lines()
            .filter_map(|l| l.trim().split('/').next())
            .filter(|name| is_identifier(name))
            .map(str::to_string)
            .collect(),
        _ => record_paths(record)
            .iter()
            .filter_map(|path| {
                let (first, rest) = match path.split_once('/') {
                    Some((first, rest)) => (first, Some(rest)),
                    None => (path.as_str(), None),
                };
                if first.ends_with(".dist-info")
                    || first.ends_with(".data")
                    || first == "__pycache__"
                {
                    return None;
                }
                let name = match rest {
                    Some(_) => first,
                    None if first.ends_with(".py") => first.trim_end_matches(".py"),
                    None if first.ends_with(".so") || first.ends_with(".pyd") => {
                        first.split('.').next().unwrap_or("")
                    }
                    None => return None,
                };
                is_identifier(name).then(|| name.to_string())
            })
            .collect(),
    };
    modules.sort();
    modules.dedup();
    modules
}

/// Canonical form of a project name (PEP 503): lower case, runs of `-_.` as one `-`.
pub fn canonical_name(name: &str) -> String {
    let mut out = String::new();
    let mut separator = false;
    for c in name.chars() {
        if c == '-' || c == '_' || c == '.' {
            separator = true;
            continue;
        }
        if separator && !out.is_empty() {
            out.push('-');
        }
        separator = false;
        out.extend(c.to_lowercase());
    }
    out
}

/// The project name in a `<name>-<version>.dist-info` directory name, canonical.
pub fn dist_info_project(dir_name: &str) -> Option<String> {
    let stem = dir_name.strip_suffix(".dist-info")?;
    let (name, _version) = stem.rsplit_once('-')?;
    Some(canonical_name(name))
}

/// The project name at the start of a wheel or sdist file name, canonical.
pub fn distribution_file_project(file_name: &str) -> Option<String> {
    let stem = file_name
        .strip_suffix(".whl")
        .or_else(|| file_name.strip_suffix(".tar.gz"))
        .or_else(|| file_name.strip_suffix(".zip"))?;
    let name = if file_name.ends_with(".whl") {
        stem.split('-').next()?
    } else {
        stem.rsplit_once('-')?.0
    };
    Some(canonical_name(name))
}

fn attribute(tag: &str, name: &str) -> Option<u64> {
    let marker = format!(" {name}=\"");
    let at = tag.find(&marker)? + marker.len();
    tag[at..].split('"').next()?.parse().ok()
}

/// Counts from pytest's junit XML (`<testsuite tests= failures= errors= skipped=>`,
/// summed over suites); `None` when there is no suite element.
pub fn junit_counts(xml: &str) -> Option<TestsMetrics> {
    let mut found = false;
    let (mut tests, mut failed, mut errors, mut skipped) = (0, 0, 0, 0);
    for (at, _) in xml.match_indices("<testsuite ") {
        let tag = xml[at..].split('>').next().unwrap_or("");
        found = true;
        tests += attribute(tag, "tests").unwrap_or(0);
        failed += attribute(tag, "failures").unwrap_or(0);
        errors += attribute(tag, "errors").unwrap_or(0);
        skipped += attribute(tag, "skipped").unwrap_or(0);
    }
    found.then(|| TestsMetrics {
        passed: tests.saturating_sub(failed + errors + skipped),
        failed,
        errors,
        skipped,
        source: "junit".to_string(),
        exit_code: None,
    })
}

/// Counts from pytest's final summary line (`1 failed, 2 passed, 1 skipped in 0.1s`),
/// the last such line in `output`.
pub fn summary_counts(output: &str) -> Option<TestsMetrics> {
    let line = output
        .lines()
        .rev()
        .map(|l| l.trim().trim_matches('=').trim())
        .find(|l| {
            l.contains(" in ")
                && ["passed", "failed", "error", "skipped", "no tests ran"]
                    .iter()
                    .any(|w| l.contains(w))
        })?;
    let mut metrics = TestsMetrics {
        passed: 0,
        failed: 0,
        errors: 0,
        skipped: 0,
        source: "summary".to_string(),
        exit_code: None,
    };
    let counts = line.rsplit_once(" in ").map_or(line, |(counts, _)| counts);
    for part in counts.split(',') {
        let mut words = part.split_whitespace();
        let (Some(number), Some(word)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(number) = number.parse::<u64>() else {
            continue;
        };
        match word {
            "passed" | "xpassed" => metrics.passed += number,
            "failed" => metrics.failed += number,
            "error" | "errors" => metrics.errors += number,
            "skipped" | "xfailed" => metrics.skipped += number,
            _ => {}
        }
    }
    Some(metrics)
}

/// Splits a checker's `path:row[:col]: message` line into the message; `None` for
/// source excerpts and carets that follow syntax errors.
fn finding(line: &str) -> Option<&str> {
    let mut search = 0;
    while let Some(offset) = line[search..].find(':') {
        let at = search + offset;
        let rest = &line[at + 1..];
        let row = rest.bytes().take_while(u8::is_ascii_digit).count();
        if at > 0 && row > 0 && rest.as_bytes().get(row) == Some(&b':') {
            let mut tail = &rest[row + 1..];
            let column = tail.bytes().take_while(u8::is_ascii_digit).count();
            if column > 0 && tail.as_bytes().get(column) == Some(&b':') {
                tail = &tail[column + 1..];
            }
            return Some(tail.trim());
        }
        search = at + 1;
    }
    None
}

/// pycodestyle's default output counted by code (`E225`, `W291`, ...).
pub fn pycodestyle_counts(output: &str) -> ToolCounts {
    let mut counts = ToolCounts::default();
    for message in output.lines().filter_map(finding) {
        let code = message.split_whitespace().next().unwrap_or("");
        if code.len() >= 2 && code.starts_with(['E', 'W', 'C']) {
            *counts.by_code.entry(code.to_string()).or_insert(0) += 1;
            counts.total += 1;
        }
    }
    counts
}

/// pyflakes' code for a message, following flake8's numbering where one exists.
pub fn pyflakes_code(message: &str) -> &'static str {
    const CODES: &[(&str, &str)] = &[
        ("imported but unused", "F401"),
        ("used; unable to detect undefined names", "F403"),
        ("may be undefined, or defined from star imports", "F405"),
        ("f-string is missing placeholders", "F541"),
        ("redefinition of unused", "F811"),
        ("undefined name", "F821"),
        ("is assigned to but never used", "F841"),
        ("is not defined", "F821"),
        ("syntax", "E999"),
    ];
    CODES
        .iter()
        .find(|(text, _)| message.contains(text))
        .map_or("F", |(_, code)| code)
}

/// pyflakes' output counted by code.
pub fn pyflakes_counts(output: &str) -> ToolCounts {
    let mut by_code: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0;
    for message in output.lines().filter_map(finding) {
        *by_code
            .entry(pyflakes_code(message).to_string())
            .or_insert(0) += 1;
        total += 1;
    }
    ToolCounts { total, by_code }
}

/// The quality score: `10 - 10 * (style + 5 * flakes) / lines`, floored at 0, two
/// decimals; 10 for no lines.
pub fn quality_score(style: u64, flakes: u64, lines: u64) -> f64 {
    if lines == 0 {
        return 10.0;
    }
    let penalty = 10.0 * (style as f64 + 5.0 * flakes as f64) / lines as f64;
    ((10.0 - penalty).max(0.0) * 100.0).round() / 100.0
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;

#[cfg(test)]
mod console_script_tests {
    use super::*;

    #[test]
    fn console_scripts_are_read_from_entry_points() {
        let text =
            "[console_scripts]\ndocopt-x = docopt:main\n../evil = x:y\n\n[gui_scripts]\ng = a:b\n";
        assert_eq!(console_scripts(text), ["docopt-x"]);
        assert!(console_scripts("[other]\na = b:c\n").is_empty());
    }
}
