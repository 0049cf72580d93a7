//! Core metadata (`METADATA` in wheels, `PKG-INFO` in sdists, PEP 658 `.metadata` files)
//! read as data, never by running the package's build.
//!
//! This is the only source of dependencies the resolver trusts. Old sdists carry
//! metadata whose `Requires-Dist` is not authoritative (before metadata 2.2, or with
//! `Dynamic: Requires-Dist`, PEP 643); [`CoreMetadata::requirements_known`] says so and the
//! resolver flags those releases for a guest pass instead of guessing.

use std::str::FromStr;

use pep508_rs::{Requirement, VerbatimUrl};
use serde::Serialize;

/// The fields of core metadata PyTI uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CoreMetadata {
    /// `Metadata-Version`, e.g. `2.1`.
    pub metadata_version: String,
    /// `Name`.
    pub name: String,
    /// `Version`.
    pub version: String,
    /// `Summary`.
    pub summary: Option<String>,
    /// `License` (free text, often the whole licence).
    pub license: Option<String>,
    /// `License-Expression` (PEP 639 SPDX expression).
    pub license_expression: Option<String>,
    /// `Classifier`, in order.
    pub classifiers: Vec<String>,
    /// `Requires-Python`.
    pub requires_python: Option<String>,
    /// `Requires-Dist`, raw PEP 508 strings.
    pub requires_dist: Vec<String>,
    /// `Provides-Extra`, as written.
    pub provides_extra: Vec<String>,
    /// `Dynamic` (PEP 643), as written.
    pub dynamic: Vec<String>,
    /// `Description-Content-Type`.
    pub description_content_type: Option<String>,
    /// Length in bytes of the long description (header or body).
    pub description_length: usize,
}

impl CoreMetadata {
    /// Parses the RFC 822-style text; unknown fields are ignored, a missing `Name` or
    /// `Version` is an error.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut metadata = CoreMetadata::default();
        let (headers, body) = match text.find("\n\n") {
            Some(index) => (&text[..index], Some(&text[index + 2..])),
            None => (text, None),
        };
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in headers.lines() {
            let line = line.trim_end_matches('\r');
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = fields.last_mut() {
                    value.push('\n');
                    value.push_str(line.trim_start());
                }
                continue;
            }
            if let Some((key, value)) = line.split_once(':') {
                fields.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        for (key, value) in fields {
            match key.as_str() {
                "metadata-version" => metadata.metadata_version = value,
                "name" => metadata.name = value,
                "version" => metadata.version = value,
                "summary" => metadata.summary = Some(value),
                "license" => metadata.license = Some(value),
                "license-expression" => metadata.license_expression = Some(value),
                "classifier" => metadata.classifiers.push(value),
                "requires-python" => metadata.requires_python = Some(value),
                "requires-dist" => metadata.requires_dist.push(value),
                "provides-extra" => metadata.provides_extra.push(value),
                "dynamic" => metadata.dynamic.push(value),
                "description-content-type" => metadata.description_content_type = Some(value),
                "description" => metadata.description_length = value.len(),
                _ => {}
            }
        }
        if let Some(body) = body {
            if !body.trim().is_empty() {
                metadata.description_length = body.trim().len();
            }
        }
        if metadata.name.is_empty() || metadata.version.is_empty() {
            return Err("core metadata lacks Name or Version".into());
        }
        Ok(metadata)
    }

    /// Whether `Requires-Dist` can be trusted: always for wheels (the build already ran);
    /// for sdists only with metadata 2.2+ that does not mark it `Dynamic` (PEP 643).
    pub fn requirements_known(&self, from_sdist: bool) -> bool {
        if !from_sdist {
            return true;
        }
        let version: Vec<u32> = self
            .metadata_version
            .split('.')
            .map(|part| part.parse().unwrap_or(0))
            .collect();
        let at_least_2_2 = version.first().copied().unwrap_or(0) > 2
            || (version.first() == Some(&2) && version.get(1).copied().unwrap_or(0) >= 2);
        at_least_2_2
            && !self
                .dynamic
                .iter()
                .any(|field| field.eq_ignore_ascii_case("requires-dist"))
    }

    /// `Requires-Dist` parsed as PEP 508; unparsable lines are returned as errors so the
    /// caller can name them.
    pub fn requirements(&self) -> Vec<Result<Requirement<VerbatimUrl>, String>> {
        self.requires_dist
            .iter()
            .map(|line| {
                Requirement::<VerbatimUrl>::from_str(line)
                    .map_err(|e| format!("Requires-Dist {line:?}: {e}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUESTS: &str = "Metadata-Version: 2.1\r\nName: requests\r\nVersion: 2.32.3\r\n\
Summary: Python HTTP for Humans.\r\nLicense: Apache-2.0\r\n\
Classifier: License :: OSI Approved :: Apache Software License\r\n\
Classifier: Programming Language :: Python :: 3\r\nRequires-Python: >=3.8\r\n\
Description-Content-Type: text/markdown\r\n\
Requires-Dist: charset-normalizer<4,>=2\r\nRequires-Dist: idna<4,>=2.5\r\n\
Requires-Dist: PySocks!=1.5.7,>=1.5.6; extra == \"socks\"\r\nProvides-Extra: socks\r\n\
\r\n# Requests\r\n\r\nlong text\r\n";

    #[test]
    fn wheel_metadata_parses_with_crlf_and_body() {
        let text = REQUESTS.replace("\r\n", "\n");
        let metadata = CoreMetadata::parse(&text).unwrap();
        assert_eq!(metadata.name, "requests");
        assert_eq!(metadata.requires_dist.len(), 3);
        assert_eq!(metadata.classifiers.len(), 2);
        assert_eq!(metadata.requires_python.as_deref(), Some(">=3.8"));
        assert_eq!(metadata.provides_extra, vec!["socks"]);
        assert!(metadata.description_length > 10);
        assert!(metadata.requirements_known(false));
        assert!(metadata.requirements().iter().all(Result::is_ok));
        // CRLF headers end at the first blank line too.
        let crlf = CoreMetadata::parse(&REQUESTS.replace("\r\n\r\n", "\n\n")).unwrap();
        assert_eq!(crlf.version, "2.32.3");
    }

    #[test]
    fn continuation_lines_join_the_previous_field() {
        let metadata = CoreMetadata::parse(
            "Metadata-Version: 1.1\nName: docopt\nVersion: 0.6.2\nLicense: MIT\n\
Description: first\n        second line\nClassifier: A\n",
        )
        .unwrap();
        assert_eq!(metadata.description_length, "first\nsecond line".len());
        assert_eq!(metadata.classifiers, vec!["A"]);
    }

    #[test]
    fn sdist_requirements_are_authoritative_only_per_pep_643() {
        let base = "Name: a\nVersion: 1\n";
        let with = |extra: &str| CoreMetadata::parse(&format!("{extra}{base}")).unwrap();
        assert!(!with("Metadata-Version: 1.1\n").requirements_known(true));
        assert!(!with("Metadata-Version: 2.1\n").requirements_known(true));
        assert!(with("Metadata-Version: 2.2\n").requirements_known(true));
        assert!(with("Metadata-Version: 2.4\nDynamic: License\n").requirements_known(true));
        assert!(!with("Metadata-Version: 2.3\nDynamic: Requires-Dist\n").requirements_known(true));
        assert!(with("Metadata-Version: 1.0\n").requirements_known(false));
    }

    #[test]
    fn missing_name_and_bad_requirements_are_reported() {
        assert!(CoreMetadata::parse("Metadata-Version: 2.1\nVersion: 1\n").is_err());
        let metadata = CoreMetadata::parse("Name: a\nVersion: 1\nRequires-Dist: b >= \n").unwrap();
        let parsed = metadata.requirements();
        assert!(parsed[0].as_ref().unwrap_err().contains("b >="));
    }
}
