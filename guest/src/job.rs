//! `job.json`: what the host writes on the IO disk for the guest.
//!
//! The host and the guest are built from the same commit but run on different machines,
//! so the one file that connects them is a shared type here rather than two copies
//! that drift. It carries the job spec, the recipe already resolved on the host (the
//! guest never looks recipes up), and the sha256 of every input file so the guest can
//! tell a damaged IO disk from a broken package.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::digest::sha256_file;
use crate::layout::{self, DIST_DIR, INPUT_DIRS, TOOLS_DIR, WHEELS_DIR};
use crate::recipe::{Recipe, RecipeError};

/// Version of the `job.json` format written by this build.
pub const JOB_SCHEMA_VERSION: u32 = 1;

/// Largest `job.json` the guest accepts.
pub const MAX_JOB_BYTES: usize = 1 << 20;

/// The job as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestJob {
    /// Always [`JOB_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The master's job id.
    pub job_id: String,
    /// Which attempt of the job this run is (1 for the first).
    pub attempt: u32,
    /// The project on PyPI.
    pub project_name: String,
    /// The version under test (resolved by the host, never empty here).
    pub project_version: String,
    /// The recipe the job asked for.
    pub recipe_identifier: String,
    /// The platform the job asked for.
    pub platform_identifier: String,
    /// Variants of the platform; `null` in JSON reads as empty.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub platform_variants: Vec<String>,
    /// The resolved recipe: tasks in order with their deadlines.
    pub recipe: Recipe,
    /// Every file under `dist/`, `wheels/` and `tools/` with its role and sha256.
    pub inputs: Vec<InputFile>,
    /// Hash of the guest image, copied into the results' platform.
    #[serde(default)]
    pub image_hash: Option<String>,
    /// Path of the ready virtualenv template inside the guest (copied per task).
    #[serde(default)]
    pub venv_template: Option<String>,
    /// The interpreter to use when there is no template (default `python3`).
    #[serde(default)]
    pub python: Option<String>,
    /// A secret of this run (hex), readable by the agent only: it goes back in the
    /// results and keys the MAC of the agent's console progress lines, so the host can
    /// tell the agent's own word from anything the package forged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// What an input file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputRole {
    /// The distribution under test, as a wheel (`dist/*.whl`).
    Wheel,
    /// The distribution under test, as an sdist (`dist/*.tar.gz`, `dist/*.zip`).
    Sdist,
    /// Part of the dependency closure (`wheels/`).
    Dependency,
    /// A tool the tasks need: pytest, pycodestyle, build backends (`tools/`).
    Tool,
}

/// One input file on the IO disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// Path relative to the IO disk's root with `/` separators, e.g. `dist/x-1.0.tar.gz`.
    pub path: String,
    /// What the file is for.
    pub role: InputRole,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
}

/// The job fields that the results repeat, so a results file names its job on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobIdentity {
    /// The master's job id.
    pub job_id: String,
    /// Which attempt.
    pub attempt: u32,
    /// The project on PyPI.
    pub project_name: String,
    /// The version tested.
    pub project_version: String,
    /// The recipe run.
    pub recipe_identifier: String,
    /// The platform.
    pub platform_identifier: String,
    /// Its variants.
    pub platform_variants: Vec<String>,
}

/// What is wrong with a `job.json` or with the inputs it describes.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// Which file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_JOB_BYTES`].
    #[error("job.json is {size} bytes; the limit is {MAX_JOB_BYTES}")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// Not JSON, a wrong type, or an unknown field (with the field's path).
    #[error("job.json does not parse: {0}")]
    Syntax(String),
    /// Parses, but a field is unacceptable.
    #[error("job.json field {field}: {problem}")]
    Invalid {
        /// Which field.
        field: String,
        /// What to fix.
        problem: String,
    },
    /// The embedded recipe is invalid.
    #[error("job.json: {0}")]
    Recipe(#[from] RecipeError),
}

fn null_as_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(deserializer)?.unwrap_or_default())
}

impl GuestJob {
    /// Parses and validates `job.json` bytes (see [`GuestJob::validate`]).
    pub fn parse(bytes: &[u8]) -> Result<GuestJob, JobError> {
        if bytes.len() > MAX_JOB_BYTES {
            return Err(JobError::TooLarge { size: bytes.len() });
        }
        let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
        let job: GuestJob = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| JobError::Syntax(format!("at {}: {}", e.path(), e.inner())))?;
        job.validate()?;
        Ok(job)
    }

    /// Reads and parses `<io_dir>/job.json`.
    pub fn read(io_dir: &Path) -> Result<GuestJob, JobError> {
        let path = io_dir.join(layout::JOB_FILE);
        let bytes = std::fs::read(&path).map_err(|source| JobError::Io { path, source })?;
        GuestJob::parse(&bytes)
    }

    /// The file as the host writes it.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a GuestJob always serialises")
    }

    /// Checks the schema version, the recipe, and that every input path is a plain
    /// relative path in the directory its role belongs to, with a well-formed sha256.
    pub fn validate(&self) -> Result<(), JobError> {
        let invalid = |field: &str, problem: String| JobError::Invalid {
            field: field.to_string(),
            problem,
        };
        if self.schema_version != JOB_SCHEMA_VERSION {
            return Err(invalid(
                "schema_version",
                format!(
                    "is {}; this agent reads {JOB_SCHEMA_VERSION}",
                    self.schema_version
                ),
            ));
        }
        if self.job_id.is_empty() || self.job_id.len() > 128 {
            return Err(invalid("job_id", "must be 1 to 128 characters".to_string()));
        }
        if self.recipe.identifier != self.recipe_identifier {
            return Err(invalid(
                "recipe.identifier",
                format!(
                    "is {:?} but recipe_identifier is {:?}",
                    self.recipe.identifier, self.recipe_identifier
                ),
            ));
        }
        self.recipe.validate()?;
        for (index, input) in self.inputs.iter().enumerate() {
            let field = format!("inputs[{index}]");
            let Some((dir, name)) = input.path.split_once('/') else {
                return Err(invalid(
                    &field,
                    format!("path {:?} has no directory", input.path),
                ));
            };
            if !safe_file_name(name) {
                return Err(invalid(
                    &field,
                    format!("path {:?} is not a plain file name in {dir}/", input.path),
                ));
            }
            let expected_dir = match input.role {
                InputRole::Wheel | InputRole::Sdist => DIST_DIR,
                InputRole::Dependency => WHEELS_DIR,
                InputRole::Tool => TOOLS_DIR,
            };
            if dir != expected_dir {
                return Err(invalid(
                    &field,
                    format!(
                        "path {:?} has role {:?}, which lives in {expected_dir}/",
                        input.path, input.role
                    ),
                ));
            }
            if input.sha256.len() != 64
                || !input
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(invalid(
                    &field,
                    "sha256 must be 64 lower-case hex digits".into(),
                ));
            }
        }
        Ok(())
    }

    /// The job fields the results repeat.
    pub fn identity(&self) -> JobIdentity {
        JobIdentity {
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            project_name: self.project_name.clone(),
            project_version: self.project_version.clone(),
            recipe_identifier: self.recipe_identifier.clone(),
            platform_identifier: self.platform_identifier.clone(),
            platform_variants: self.platform_variants.clone(),
        }
    }

    /// The inputs with a given role.
    pub fn inputs_with(&self, role: InputRole) -> impl Iterator<Item = &InputFile> {
        self.inputs.iter().filter(move |input| input.role == role)
    }
}

fn safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255
}

/// The role a file in one of [`layout::INPUT_DIRS`] has, from its directory and name;
/// `None` for a file that is no distribution (e.g. a stray README in `dist/`).
pub fn role_for(dir: &str, file_name: &str) -> Option<InputRole> {
    let is_wheel = file_name.ends_with(".whl");
    let is_sdist = file_name.ends_with(".tar.gz") || file_name.ends_with(".zip");
    match dir {
        DIST_DIR if is_wheel => Some(InputRole::Wheel),
        DIST_DIR if is_sdist => Some(InputRole::Sdist),
        WHEELS_DIR if is_wheel || is_sdist => Some(InputRole::Dependency),
        TOOLS_DIR if is_wheel || is_sdist => Some(InputRole::Tool),
        _ => None,
    }
}

/// Describes every distribution file in `dist/`, `wheels/` and `tools/` of an IO
/// directory (missing directories are empty), sorted by path, with their sha256.
/// This is how the host fills [`GuestJob::inputs`].
pub fn describe_inputs(io_dir: &Path) -> Result<Vec<InputFile>, JobError> {
    let mut inputs = Vec::new();
    for dir in INPUT_DIRS {
        let path = io_dir.join(dir);
        let entries = match std::fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(JobError::Io { path, source }),
        };
        for entry in entries {
            let entry = entry.map_err(|source| JobError::Io {
                path: path.clone(),
                source,
            })?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Some(role) = role_for(dir, &name) else {
                continue;
            };
            let file = entry.path();
            let sha256 =
                sha256_file(&file).map_err(|source| JobError::Io { path: file, source })?;
            inputs.push(InputFile {
                path: format!("{dir}/{name}"),
                role,
                sha256,
            });
        }
    }
    inputs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::RecipeBook;

    fn job() -> GuestJob {
        GuestJob {
            schema_version: 1,
            job_id: "job-1".into(),
            attempt: 1,
            project_name: "rarfile".into(),
            project_version: "4.0".into(),
            recipe_identifier: "install".into(),
            platform_identifier: "debian-12-amd64".into(),
            platform_variants: vec![],
            recipe: RecipeBook::embedded().get("install").unwrap().clone(),
            inputs: vec![InputFile {
                path: "dist/rarfile-4.0.tar.gz".into(),
                role: InputRole::Sdist,
                sha256: "a".repeat(64),
            }],
            image_hash: None,
            venv_template: None,
            python: None,
            nonce: None,
        }
    }

    #[test]
    fn round_trips_and_accepts_null_variants() {
        let text = job().to_json_pretty();
        assert_eq!(GuestJob::parse(text.as_bytes()).unwrap(), job());
        let with_null = text.replace("\"platform_variants\": []", "\"platform_variants\": null");
        assert_ne!(with_null, text);
        assert_eq!(GuestJob::parse(with_null.as_bytes()).unwrap(), job());
    }

    #[test]
    fn rejects_unknown_fields_and_wrong_versions() {
        let text = job().to_json_pretty().replacen('{', "{\"surprise\": 1,", 1);
        assert!(matches!(
            GuestJob::parse(text.as_bytes()),
            Err(JobError::Syntax(_))
        ));
        let mut wrong = job();
        wrong.schema_version = 2;
        let error = GuestJob::parse(wrong.to_json_pretty().as_bytes()).unwrap_err();
        assert!(error.to_string().contains("schema_version"), "{error}");
        let big = vec![b' '; MAX_JOB_BYTES + 1];
        assert!(matches!(
            GuestJob::parse(&big),
            Err(JobError::TooLarge { .. })
        ));
    }

    #[test]
    fn rejects_input_paths_that_escape_or_sit_in_the_wrong_directory() {
        let cases = [
            (
                "dist/../../etc/passwd",
                InputRole::Sdist,
                "not a plain file name",
            ),
            ("dist/..", InputRole::Sdist, "not a plain file name"),
            ("x.whl", InputRole::Wheel, "has no directory"),
            ("wheels/x.whl", InputRole::Wheel, "lives in dist/"),
            ("dist/x.whl", InputRole::Tool, "lives in tools/"),
        ];
        for (path, role, expected) in cases {
            let mut bad = job();
            bad.inputs[0].path = path.into();
            bad.inputs[0].role = role;
            let error = bad.validate().unwrap_err().to_string();
            assert!(error.contains(expected), "{path}: {error}");
        }
        let mut bad = job();
        bad.inputs[0].sha256 = "A".repeat(64);
        assert!(bad.validate().unwrap_err().to_string().contains("sha256"));
    }

    #[test]
    fn recipe_must_match_the_identifier() {
        let mut bad = job();
        bad.recipe_identifier = "recipe".into();
        let error = bad.validate().unwrap_err().to_string();
        assert!(error.contains("recipe.identifier"), "{error}");
    }

    #[test]
    fn jobs_match_the_json_schema() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../schemas/job.schema.json")).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut full = job();
        full.image_hash = Some("abc".into());
        full.venv_template = Some("/opt/pyti/venv".into());
        full.python = Some("/usr/bin/python3".into());
        for job in [job(), full] {
            let value = serde_json::to_value(&job).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{errors:?}");
        }
        let mut bad = serde_json::to_value(job()).unwrap();
        bad["inputs"][0]["path"] = serde_json::json!("dist/a/b");
        assert!(!validator.is_valid(&bad));
    }

    #[test]
    fn roles_follow_directory_and_extension() {
        assert_eq!(
            role_for("dist", "a-1-py3-none-any.whl"),
            Some(InputRole::Wheel)
        );
        assert_eq!(role_for("dist", "a-1.tar.gz"), Some(InputRole::Sdist));
        assert_eq!(role_for("dist", "a-1.zip"), Some(InputRole::Sdist));
        assert_eq!(role_for("dist", "README"), None);
        assert_eq!(
            role_for("wheels", "b-2.tar.gz"),
            Some(InputRole::Dependency)
        );
        assert_eq!(
            role_for("tools", "pytest-8-py3-none-any.whl"),
            Some(InputRole::Tool)
        );
        assert_eq!(role_for("results", "x.whl"), None);
    }

    #[test]
    fn describes_inputs_with_their_hashes() {
        let io = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(io.path().join("dist")).unwrap();
        std::fs::create_dir_all(io.path().join("tools")).unwrap();
        std::fs::write(io.path().join("dist/a-1.tar.gz"), b"abc").unwrap();
        std::fs::write(io.path().join("dist/notes.txt"), b"x").unwrap();
        std::fs::write(io.path().join("tools/t-1-py3-none-any.whl"), b"").unwrap();
        let inputs = describe_inputs(io.path()).unwrap();
        assert_eq!(
            inputs,
            vec![
                InputFile {
                    path: "dist/a-1.tar.gz".into(),
                    role: InputRole::Sdist,
                    sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
                        .into(),
                },
                InputFile {
                    path: "tools/t-1-py3-none-any.whl".into(),
                    role: InputRole::Tool,
                    sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                        .into(),
                },
            ]
        );
    }
}
