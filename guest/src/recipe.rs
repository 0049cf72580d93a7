//! Recipes: named lists of tasks, written as TOML in the repository's `recipes/`.
//!
//! The host resolves a job's `recipe_identifier` to a [`Recipe`] at submit time (so an
//! unknown name is refused before anything runs) and writes the resolved recipe into
//! `job.json`; the guest only executes what it is given. The repository's recipes are
//! embedded here as defaults so a worker without a configuration directory still knows
//! them, and a directory of `<identifier>.toml` files can add or replace recipes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The recipes shipped in the repository, as (identifier, TOML text).
pub const EMBEDDED_RECIPES: &[(&str, &str)] = &[
    ("recipe", include_str!("../../recipes/recipe.toml")),
    ("install", include_str!("../../recipes/install.toml")),
    ("behaviour", include_str!("../../recipes/behaviour.toml")),
];

/// Longest deadline a single task may ask for (one day).
pub const MAX_TIMEOUT_S: u64 = 86_400;

/// The kinds of task a recipe can hold (DESIGN.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// pip install from the IO disk with a file-system snapshot before and after.
    Install,
    /// Import every top-level module the distribution installs.
    Import,
    /// Install and import under syscall tracing, with a verdict.
    Behaviour,
    /// The project's own test suite from the sdist, with pytest.
    Tests,
    /// pycodestyle and pyflakes over the sources.
    Quality,
    /// Static checks computed by the host; the guest only leaves a place for them.
    Metadata,
}

impl TaskKind {
    /// Every task kind, in the order of the full recipe.
    pub const ALL: [TaskKind; 6] = [
        TaskKind::Install,
        TaskKind::Import,
        TaskKind::Behaviour,
        TaskKind::Tests,
        TaskKind::Quality,
        TaskKind::Metadata,
    ];

    /// The stable name used in TOML, JSON and log file names.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Install => "install",
            TaskKind::Import => "import",
            TaskKind::Behaviour => "behaviour",
            TaskKind::Tests => "tests",
            TaskKind::Quality => "quality",
            TaskKind::Metadata => "metadata",
        }
    }

    /// The deadline a task gets when its recipe names none.
    pub fn default_timeout_s(self) -> u64 {
        match self {
            TaskKind::Install => 900,
            TaskKind::Import => 300,
            TaskKind::Behaviour => 1200,
            TaskKind::Tests => 1800,
            TaskKind::Quality => 600,
            TaskKind::Metadata => 60,
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One task of a resolved recipe with its deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// What the task does.
    pub kind: TaskKind,
    /// Wall-clock deadline of the whole task in seconds; default per kind.
    pub timeout_s: u64,
}

/// A resolved recipe, as it travels in `job.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The name jobs use (`recipe_identifier`), the TOML file's stem.
    pub identifier: String,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// Tasks in the order they run.
    pub tasks: Vec<TaskSpec>,
}

/// What is wrong with a recipe or a recipe lookup.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The job asked for a recipe nobody defined.
    #[error("unknown recipe {identifier:?}: known recipes are {}", known.join(", "))]
    Unknown {
        /// The identifier asked for.
        identifier: String,
        /// Every identifier that exists.
        known: Vec<String>,
    },
    /// The TOML text does not parse or has unknown keys.
    #[error("recipe {origin}: {message}")]
    Syntax {
        /// File name or `embedded:<identifier>`.
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The recipe parses but makes no sense.
    #[error("recipe {identifier:?}: {problem}")]
    Invalid {
        /// Which recipe.
        identifier: String,
        /// What to fix.
        problem: String,
    },
    /// A recipe directory could not be read.
    #[error("recipe directory {}: {source}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    #[serde(default)]
    description: String,
    #[serde(default)]
    task: Vec<TaskFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    kind: TaskKind,
    timeout_s: Option<u64>,
}

impl Recipe {
    /// Parses a recipe's TOML text; `origin` names the file in error messages.
    pub fn from_toml(identifier: &str, text: &str, origin: &str) -> Result<Recipe, RecipeError> {
        let file: RecipeFile = toml::from_str(text).map_err(|error| RecipeError::Syntax {
            origin: origin.to_string(),
            message: error.to_string(),
        })?;
        let recipe = Recipe {
            identifier: identifier.to_string(),
            description: file.description,
            tasks: file
                .task
                .into_iter()
                .map(|task| TaskSpec {
                    kind: task.kind,
                    timeout_s: task.timeout_s.unwrap_or(task.kind.default_timeout_s()),
                })
                .collect(),
        };
        recipe.validate()?;
        Ok(recipe)
    }

    /// Checks the rules every recipe obeys: a sane identifier, at least one task, each
    /// kind at most once, deadlines between 1 s and [`MAX_TIMEOUT_S`], and `import`
    /// only after `install` (it imports what `install` installed).
    pub fn validate(&self) -> Result<(), RecipeError> {
        let invalid = |problem: String| RecipeError::Invalid {
            identifier: self.identifier.clone(),
            problem,
        };
        if !valid_identifier(&self.identifier) {
            return Err(invalid(
                "identifiers use lower-case letters, digits, '-' and '_' (1 to 64 characters)"
                    .to_string(),
            ));
        }
        if self.tasks.is_empty() {
            return Err(invalid("it has no [[task]]".to_string()));
        }
        let mut seen = Vec::new();
        for task in &self.tasks {
            if seen.contains(&task.kind) {
                return Err(invalid(format!("task {} appears twice", task.kind)));
            }
            if task.timeout_s == 0 || task.timeout_s > MAX_TIMEOUT_S {
                return Err(invalid(format!(
                    "task {} has timeout_s = {}; use 1 to {MAX_TIMEOUT_S}",
                    task.kind, task.timeout_s
                )));
            }
            if task.kind == TaskKind::Import && !seen.contains(&TaskKind::Install) {
                return Err(invalid(
                    "task import needs an install task before it".to_string(),
                ));
            }
            seen.push(task.kind);
        }
        Ok(())
    }
}

fn valid_identifier(identifier: &str) -> bool {
    !identifier.is_empty()
        && identifier.len() <= 64
        && identifier
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Every recipe known to a host: the embedded defaults plus a directory's overrides.
#[derive(Debug, Clone)]
pub struct RecipeBook {
    recipes: BTreeMap<String, Recipe>,
}

impl RecipeBook {
    /// The recipes embedded from the repository's `recipes/`.
    pub fn embedded() -> RecipeBook {
        let recipes = EMBEDDED_RECIPES
            .iter()
            .map(|(identifier, text)| {
                let origin = format!("embedded:{identifier}");
                let recipe = Recipe::from_toml(identifier, text, &origin)
                    .expect("the repository's recipes are valid (tested)");
                (identifier.to_string(), recipe)
            })
            .collect();
        RecipeBook { recipes }
    }

    /// The embedded recipes, then every `<identifier>.toml` in `dir` added or replacing
    /// the embedded one of the same name. Other files are ignored; a bad recipe file is
    /// an error naming the file.
    pub fn with_overrides(dir: &Path) -> Result<RecipeBook, RecipeError> {
        let mut book = RecipeBook::embedded();
        let io = |source| RecipeError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .map(|entry| entry.map(|entry| entry.path()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        paths.sort();
        for path in paths {
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let Some(identifier) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|source| RecipeError::Io {
                path: path.clone(),
                source,
            })?;
            let recipe = Recipe::from_toml(identifier, &text, &path.display().to_string())?;
            book.recipes.insert(identifier.to_string(), recipe);
        }
        Ok(book)
    }

    /// The recipe called `identifier`, or an error listing the known ones.
    pub fn get(&self, identifier: &str) -> Result<&Recipe, RecipeError> {
        self.recipes
            .get(identifier)
            .ok_or_else(|| RecipeError::Unknown {
                identifier: identifier.to_string(),
                known: self.identifiers(),
            })
    }

    /// Every known identifier, sorted.
    pub fn identifiers(&self) -> Vec<String> {
        self.recipes.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_recipes_parse_with_their_tasks_in_order() {
        let book = RecipeBook::embedded();
        assert_eq!(book.identifiers(), vec!["behaviour", "install", "recipe"]);
        let kinds = |id: &str| -> Vec<TaskKind> {
            book.get(id).unwrap().tasks.iter().map(|t| t.kind).collect()
        };
        assert_eq!(kinds("recipe"), TaskKind::ALL.to_vec());
        assert_eq!(kinds("install"), vec![TaskKind::Install, TaskKind::Import]);
        assert_eq!(kinds("behaviour"), vec![TaskKind::Behaviour]);
        let full = book.get("recipe").unwrap();
        assert_eq!(full.tasks[0].timeout_s, 900);
        assert_eq!(
            full.tasks[5].timeout_s,
            TaskKind::Metadata.default_timeout_s()
        );
    }

    #[test]
    fn unknown_recipe_lists_the_known_ones() {
        let error = RecipeBook::embedded().get("full").unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown recipe \"full\": known recipes are behaviour, install, recipe"
        );
    }

    #[test]
    fn timeout_defaults_per_kind_and_explicit_values_win() {
        let text = "[[task]]\nkind = \"install\"\n[[task]]\nkind = \"tests\"\ntimeout_s = 5\n";
        let recipe = Recipe::from_toml("quick", text, "quick.toml").unwrap();
        assert_eq!(recipe.tasks[0].timeout_s, 900);
        assert_eq!(recipe.tasks[1].timeout_s, 5);
    }

    #[test]
    fn invalid_recipes_say_what_is_wrong() {
        let cases = [
            ("", "no [[task]]"),
            (
                "[[task]]\nkind = \"install\"\n[[task]]\nkind = \"install\"\n",
                "appears twice",
            ),
            (
                "[[task]]\nkind = \"import\"\n",
                "needs an install task before it",
            ),
            (
                "[[task]]\nkind = \"tests\"\ntimeout_s = 0\n",
                "timeout_s = 0",
            ),
            (
                "[[task]]\nkind = \"tests\"\ntimeout_s = 86401\n",
                "timeout_s = 86401",
            ),
        ];
        for (text, expected) in cases {
            let error = Recipe::from_toml("r", text, "r.toml")
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
        let error = Recipe::from_toml("Bad Name", "[[task]]\nkind=\"install\"\n", "x")
            .unwrap_err()
            .to_string();
        assert!(error.contains("identifiers use"), "{error}");
    }

    #[test]
    fn unknown_keys_and_kinds_are_syntax_errors_naming_the_file() {
        for text in [
            "[[task]]\nkind = \"install\"\ntimeout = 3\n",
            "[[task]]\nkind = \"fuzz\"\n",
            "name = \"x\"\n",
        ] {
            let error = Recipe::from_toml("r", text, "dir/r.toml").unwrap_err();
            assert!(matches!(error, RecipeError::Syntax { .. }), "{text:?}");
            assert!(
                error.to_string().starts_with("recipe dir/r.toml: "),
                "{error}"
            );
        }
    }

    #[test]
    fn a_directory_adds_and_replaces_recipes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("install.toml"),
            "[[task]]\nkind = \"install\"\ntimeout_s = 10\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("lint.toml"),
            "[[task]]\nkind = \"quality\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("README"), "not a recipe").unwrap();
        let book = RecipeBook::with_overrides(dir.path()).unwrap();
        assert_eq!(
            book.identifiers(),
            vec!["behaviour", "install", "lint", "recipe"]
        );
        assert_eq!(book.get("install").unwrap().tasks.len(), 1);
        assert_eq!(book.get("install").unwrap().tasks[0].timeout_s, 10);

        std::fs::write(dir.path().join("broken.toml"), "[[task]]\n").unwrap();
        let error = RecipeBook::with_overrides(dir.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains("broken.toml"), "{error}");
    }

    #[test]
    fn recipes_round_trip_through_json() {
        let recipe = RecipeBook::embedded().get("recipe").unwrap().clone();
        let json = serde_json::to_string(&recipe).unwrap();
        assert!(
            json.contains("\"kind\":\"install\",\"timeout_s\":900"),
            "{json}"
        );
        let back: Recipe = serde_json::from_str(&json).unwrap();
        assert_eq!(back, recipe);
    }
}
