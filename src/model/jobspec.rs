//! The job a user asks for, in the seed's JSON format:
//!
//! ```json
//! { "project_name": "rarfile", "project_version": "4.2",
//!   "recipe_identifier": "recipe", "platform_identifier": "linux-debian",
//!   "platform_variants": null }
//! ```
//!
//! Job files are written by hand, so parsing reports every problem at once, with the
//! field and what to write instead, rather than stopping at the first.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, FieldError, Result};
use crate::model::names;
use crate::proto;

/// Recipe used when a job names none: the seed's full recipe.
pub const DEFAULT_RECIPE: &str = "recipe";
/// Platform used when a job names none.
pub const DEFAULT_PLATFORM: &str = "linux-debian";

const KNOWN_FIELDS: [&str; 5] = [
    "project_name",
    "project_version",
    "recipe_identifier",
    "platform_identifier",
    "platform_variants",
];

/// A validated, normalised job request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// PyPI project name in PEP 503 normal form.
    pub project_name: String,
    /// Normalised PEP 440 version; empty means the latest release.
    pub project_version: String,
    /// Recipe identifier (syntax checked; whether it exists is the recipe registry's call).
    pub recipe_identifier: String,
    /// Platform identifier, e.g. `linux-debian`.
    pub platform_identifier: String,
    /// Variants the VM must offer, sorted and without duplicates.
    pub platform_variants: Vec<String>,
}

impl JobSpec {
    /// Parses and validates a job file's text; `source_name` names it in errors.
    pub fn from_json(text: &str, source_name: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| syntax_error(text, &e, source_name))?;
        let Value::Object(object) = value else {
            return Err(Error::JobInvalid {
                source_name: source_name.to_owned(),
                errors: vec![FieldError {
                    field: "(root)",
                    message: format!(
                        "a job is a JSON object with the keys {}, not {}",
                        KNOWN_FIELDS.join(", "),
                        json_kind(&value)
                    ),
                }],
            });
        };
        Self::from_object(&object, source_name)
    }

    /// Builds a job from the shorthand `name` or `name==version`, with the given recipe,
    /// platform and variants (defaults when `None`).
    pub fn from_requirement(
        requirement: &str,
        recipe: Option<&str>,
        platform: Option<&str>,
        variants: &[String],
    ) -> Result<Self> {
        let (name, version) = match requirement.split_once("==") {
            Some((name, version)) => (name.trim(), version.trim()),
            None => (requirement.trim(), ""),
        };
        if name.contains(['<', '>', '=', '!', '~', ',', ';', '[']) {
            return Err(Error::JobInvalid {
                source_name: "<command line>".to_owned(),
                errors: vec![FieldError {
                    field: "project_name",
                    message: format!(
                        "{requirement:?}: give a project name, optionally with ==VERSION (ranges and extras are not jobs)"
                    ),
                }],
            });
        }
        Self::from_fields(
            Some(name),
            Some(version),
            recipe,
            platform,
            variants.iter().map(String::as_str).collect(),
            "<command line>",
        )
    }

    fn from_object(object: &Map<String, Value>, source_name: &str) -> Result<Self> {
        let mut errors = Vec::new();
        for key in object.keys() {
            if !KNOWN_FIELDS.contains(&key.as_str()) {
                let hint = closest_field(key)
                    .map(|k| format!("; did you mean {k:?}?"))
                    .unwrap_or_else(|| format!("; the keys are {}", KNOWN_FIELDS.join(", ")));
                errors.push(FieldError {
                    field: "(root)",
                    message: format!("unknown key {key:?}{hint}"),
                });
            }
        }
        let mut string_field = |field: &'static str| -> Option<&str> {
            match object.get(field) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.as_str()),
                Some(other) => {
                    errors.push(FieldError {
                        field,
                        message: format!("must be a string, not {}", json_kind(other)),
                    });
                    None
                }
            }
        };
        let name = string_field("project_name");
        let version = string_field("project_version");
        let recipe = string_field("recipe_identifier");
        let platform = string_field("platform_identifier");
        let mut variants = Vec::new();
        match object.get("platform_variants") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => variants.push(s.as_str()),
                        other => errors.push(FieldError {
                            field: "platform_variants",
                            message: format!("item {i} must be a string, not {}", json_kind(other)),
                        }),
                    }
                }
            }
            Some(other) => errors.push(FieldError {
                field: "platform_variants",
                message: format!(
                    "must be a list of strings or null, not {}",
                    json_kind(other)
                ),
            }),
        }
        if object.contains_key("project_name")
            && name.is_none()
            && errors.iter().all(|e| e.field != "project_name")
        {
            errors.push(FieldError {
                field: "project_name",
                message: "must not be null".to_owned(),
            });
        }
        match Self::from_fields(name, version, recipe, platform, variants, source_name) {
            Ok(spec) if errors.is_empty() => Ok(spec),
            Ok(_) => Err(Error::JobInvalid {
                source_name: source_name.to_owned(),
                errors,
            }),
            Err(Error::JobInvalid { errors: more, .. }) => {
                errors.extend(more);
                Err(Error::JobInvalid {
                    source_name: source_name.to_owned(),
                    errors,
                })
            }
            Err(other) => Err(other),
        }
    }

    /// Validates and normalises raw field values; every problem is reported.
    fn from_fields(
        name: Option<&str>,
        version: Option<&str>,
        recipe: Option<&str>,
        platform: Option<&str>,
        variants: Vec<&str>,
        source_name: &str,
    ) -> Result<Self> {
        let mut errors = Vec::new();
        let project_name = match name.map(str::trim) {
            None => {
                errors.push(FieldError {
                    field: "project_name",
                    message: "is required (the PyPI project to test, e.g. \"rarfile\")".to_owned(),
                });
                String::new()
            }
            Some("") => {
                errors.push(FieldError {
                    field: "project_name",
                    message: "must not be empty (the PyPI project to test, e.g. \"rarfile\")"
                        .to_owned(),
                });
                String::new()
            }
            Some(n) if !names::is_valid_project_name(n) => {
                errors.push(FieldError {
                    field: "project_name",
                    message: format!("{n:?} is not a valid PyPI project name (letters, digits, '.', '_', '-', starting and ending with a letter or digit)"),
                });
                String::new()
            }
            Some(n) => names::normalize_project_name(n),
        };
        let project_version = match version.map(str::trim) {
            None | Some("") => String::new(),
            Some(v) => match pep440_rs::Version::from_str(v) {
                Ok(parsed) => parsed.to_string(),
                Err(e) => {
                    errors.push(FieldError {
                        field: "project_version",
                        message: format!("{v:?} is not a PEP 440 version ({e}); leave it empty for the latest release"),
                    });
                    String::new()
                }
            },
        };
        let recipe_identifier = match recipe.map(str::trim) {
            None | Some("") => DEFAULT_RECIPE.to_owned(),
            Some(r) if names::is_valid_recipe_identifier(r) => r.to_owned(),
            Some(r) => {
                errors.push(FieldError {
                    field: "recipe_identifier",
                    message: format!("{r:?} is not a recipe identifier (lower-case letters, digits, '_' and '-', e.g. \"recipe\", \"install\")"),
                });
                String::new()
            }
        };
        let platform_identifier = match platform.map(str::trim) {
            None | Some("") => DEFAULT_PLATFORM.to_owned(),
            Some(p) if names::is_valid_platform(p) => p.to_owned(),
            Some(p) => {
                errors.push(FieldError {
                    field: "platform_identifier",
                    message: format!("{p:?} is not a platform identifier (lower-case words joined by '-', e.g. \"linux-debian\")"),
                });
                String::new()
            }
        };
        let mut platform_variants = Vec::new();
        for v in variants {
            let v = v.trim();
            if names::is_valid_variant(v) {
                platform_variants.push(v.to_owned());
            } else {
                errors.push(FieldError {
                    field: "platform_variants",
                    message: format!("{v:?} is not a variant (lower-case letters, digits, '.', '_', '-', '=', e.g. \"python3.11\")"),
                });
            }
        }
        platform_variants.sort();
        platform_variants.dedup();
        if errors.is_empty() {
            Ok(Self {
                project_name,
                project_version,
                recipe_identifier,
                platform_identifier,
                platform_variants,
            })
        } else {
            Err(Error::JobInvalid {
                source_name: source_name.to_owned(),
                errors,
            })
        }
    }

    /// `name==version`, or just `name` when the version is left to the farm.
    pub fn requirement(&self) -> String {
        if self.project_version.is_empty() {
            self.project_name.clone()
        } else {
            format!("{}=={}", self.project_name, self.project_version)
        }
    }

    /// The job as pretty JSON in the seed's format (`platform_variants` is always a list).
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a JobSpec always serialises")
    }
}

impl From<JobSpec> for proto::JobSpec {
    fn from(spec: JobSpec) -> Self {
        Self {
            project_name: spec.project_name,
            project_version: spec.project_version,
            recipe_identifier: spec.recipe_identifier,
            platform_identifier: spec.platform_identifier,
            platform_variants: spec.platform_variants,
        }
    }
}

impl TryFrom<proto::JobSpec> for JobSpec {
    type Error = Error;

    /// Validates a job that arrived over gRPC with the same rules as a job file.
    fn try_from(spec: proto::JobSpec) -> Result<Self> {
        Self::from_fields(
            Some(&spec.project_name),
            Some(&spec.project_version),
            Some(&spec.recipe_identifier),
            Some(&spec.platform_identifier),
            spec.platform_variants.iter().map(String::as_str).collect(),
            "<request>",
        )
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The known key within two edits of `key`, if any (typos like `project_nmae`).
fn closest_field(key: &str) -> Option<&'static str> {
    KNOWN_FIELDS
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// Turns a serde_json syntax error into one with line, column and, for the mistakes
/// people make when they write JSON like Python (the seed's own example writes `Null`),
/// the fix.
fn syntax_error(text: &str, error: &serde_json::Error, source_name: &str) -> Error {
    let (line, column) = (error.line(), error.column());
    let word = text
        .lines()
        .nth(line.saturating_sub(1))
        .map(|l| word_at(l, column))
        .unwrap_or_default();
    let hint = match word.as_str() {
        "Null" | "NULL" | "None" | "nil" => Some(format!("{word} is not JSON: write null")),
        "True" | "TRUE" => Some(format!("{word} is not JSON: write true")),
        "False" | "FALSE" => Some(format!("{word} is not JSON: write false")),
        _ if text.trim().is_empty() => Some("the file is empty".to_owned()),
        _ => None,
    };
    let message = error.to_string();
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_owned();
    Error::JobSyntax {
        source_name: source_name.to_owned(),
        line,
        column,
        message,
        hint,
    }
}

/// The identifier-like word covering (1-based) `column` of `line`, or just before it.
fn word_at(line: &str, column: usize) -> String {
    let chars: Vec<char> = line.chars().collect();
    let is_word = |c: &char| c.is_ascii_alphanumeric() || *c == '_';
    let mut end = column.min(chars.len());
    while end < chars.len() && is_word(&chars[end]) {
        end += 1;
    }
    let mut start = end;
    while start > 0 && is_word(&chars[start - 1]) {
        start -= 1;
    }
    chars[start..end].iter().collect()
}

#[cfg(test)]
mod tests;
