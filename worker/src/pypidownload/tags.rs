//! The guest's interpreter and platform as the host must see them.
//!
//! Resolution happens on the host, but every decision (which wheel installs, which
//! marker holds, which release accepts the interpreter) is about the guest. This module
//! holds that description ([`TargetEnv`]) and derives from it, in pure code, the ordered
//! list of compatible wheel tags (the same order as `packaging.tags.sys_tags()`, best
//! first) and the PEP 508 marker environment.

use std::collections::HashMap;
use std::str::FromStr;

use pep440_rs::Version;
use pep508_rs::{MarkerEnvironment, MarkerEnvironmentBuilder};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// The interpreter and platform of the guest a closure is resolved for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TargetEnv {
    /// Python `major.minor.micro`, e.g. `3.11.2`.
    pub python_full_version: String,
    /// glibc `(major, minor)` of the guest, e.g. `(2, 36)` for Debian bookworm.
    pub glibc: (u32, u32),
    /// Machine architecture as in wheel tags and `platform.machine()`, e.g. `x86_64`.
    pub arch: String,
}

impl Default for TargetEnv {
    /// CPython 3.11.2 on Debian bookworm x86_64 (glibc 2.36): the default guest image.
    fn default() -> Self {
        TargetEnv {
            python_full_version: "3.11.2".into(),
            glibc: (2, 36),
            arch: "x86_64".into(),
        }
    }
}

impl TargetEnv {
    /// A CPython Linux target from `3.11` or `3.11.4` (a bare `major.minor` gets micro 0,
    /// except 3.11 which gets bookworm's 3.11.2), keeping the default glibc and arch.
    pub fn cpython(python: &str) -> Result<Self> {
        let parts: Vec<&str> = python.trim().split('.').collect();
        let numbers: Option<Vec<u32>> = parts.iter().map(|part| part.parse().ok()).collect();
        let full = match numbers.as_deref() {
            Some([3, 11]) => "3.11.2".to_string(),
            Some([major, minor]) => format!("{major}.{minor}.0"),
            Some([major, minor, micro]) => format!("{major}.{minor}.{micro}"),
            _ => {
                return Err(Error::InvalidTarget(format!(
                    "python version {python:?} is not MAJOR.MINOR or MAJOR.MINOR.MICRO"
                )))
            }
        };
        if !full.starts_with("3.") {
            return Err(Error::InvalidTarget(format!(
                "python version {python:?}: only CPython 3 guests are supported"
            )));
        }
        Ok(TargetEnv {
            python_full_version: full,
            ..TargetEnv::default()
        })
    }

    /// `(major, minor)` of the interpreter.
    pub fn python_minor(&self) -> (u32, u32) {
        let mut parts = self
            .python_full_version
            .split('.')
            .map(|p| p.parse().unwrap_or(0));
        (parts.next().unwrap_or(3), parts.next().unwrap_or(0))
    }

    /// The interpreter as a PEP 440 version, for `Requires-Python` checks.
    pub fn python_version(&self) -> Version {
        Version::from_str(&self.python_full_version).unwrap_or_else(|_| Version::new([3, 0]))
    }

    /// Short description used in messages, e.g. `cp311 manylinux_2_36_x86_64`.
    pub fn describe(&self) -> String {
        let (major, minor) = self.python_minor();
        format!(
            "cp{major}{minor} manylinux_{}_{}_{}",
            self.glibc.0, self.glibc.1, self.arch
        )
    }

    /// Platform tags from most to least specific, as `packaging.tags.platform_tags()`.
    pub fn platform_tags(&self) -> Vec<String> {
        let arch = &self.arch;
        let lowest_minor = if arch == "x86_64" || arch == "i686" {
            5
        } else {
            17
        };
        let mut tags = Vec::new();
        if self.glibc.0 == 2 {
            for minor in (lowest_minor..=self.glibc.1).rev() {
                tags.push(format!("manylinux_2_{minor}_{arch}"));
                let legacy = match minor {
                    17 => Some("manylinux2014"),
                    12 => Some("manylinux2010"),
                    5 => Some("manylinux1"),
                    _ => None,
                };
                if let Some(legacy) = legacy {
                    let legacy_arches: &[&str] = match legacy {
                        "manylinux2014" => &[
                            "x86_64", "i686", "aarch64", "armv7l", "ppc64", "ppc64le", "s390x",
                        ],
                        _ => &["x86_64", "i686"],
                    };
                    if legacy_arches.contains(&arch.as_str()) {
                        tags.push(format!("{legacy}_{arch}"));
                    }
                }
            }
        }
        tags.push(format!("linux_{arch}"));
        tags
    }

    /// Every `interpreter-abi-platform` tag the guest accepts, best first, as
    /// `packaging.tags.sys_tags()` orders them for CPython.
    pub fn compatible_tags(&self) -> Vec<String> {
        let (major, minor) = self.python_minor();
        let interpreter = format!("cp{major}{minor}");
        let platforms = self.platform_tags();
        let abi3_applies = major == 3 && minor >= 2;
        let mut tags = Vec::new();
        for platform in &platforms {
            tags.push(format!("{interpreter}-{interpreter}-{platform}"));
        }
        if abi3_applies {
            for platform in &platforms {
                tags.push(format!("{interpreter}-abi3-{platform}"));
            }
        }
        for platform in &platforms {
            tags.push(format!("{interpreter}-none-{platform}"));
        }
        if abi3_applies {
            for older in (2..minor).rev() {
                for platform in &platforms {
                    tags.push(format!("cp{major}{older}-abi3-{platform}"));
                }
            }
        }
        let py_range: Vec<String> = std::iter::once(format!("py{major}{minor}"))
            .chain(std::iter::once(format!("py{major}")))
            .chain((0..minor).rev().map(|older| format!("py{major}{older}")))
            .collect();
        for version in &py_range {
            for platform in &platforms {
                tags.push(format!("{version}-none-{platform}"));
            }
        }
        tags.push(format!("{interpreter}-none-any"));
        for version in &py_range {
            tags.push(format!("{version}-none-any"));
        }
        tags
    }

    /// The PEP 508 marker environment of the guest.
    pub fn marker_environment(&self) -> MarkerEnvironment {
        let (major, minor) = self.python_minor();
        let python_version = format!("{major}.{minor}");
        MarkerEnvironment::try_from(MarkerEnvironmentBuilder {
            implementation_name: "cpython",
            implementation_version: &self.python_full_version,
            os_name: "posix",
            platform_machine: &self.arch,
            platform_python_implementation: "CPython",
            platform_release: "",
            platform_system: "Linux",
            platform_version: "",
            python_full_version: &self.python_full_version,
            python_version: &python_version,
            sys_platform: "linux",
        })
        .expect("numeric python versions always parse")
    }
}

/// Ranks wheel tags for one target: lower is better, `None` means not installable.
#[derive(Debug, Clone)]
pub struct TagRanking {
    rank: HashMap<String, usize>,
}

impl TagRanking {
    /// Builds the ranking from the target's compatible tag list.
    pub fn new(target: &TargetEnv) -> Self {
        let rank = target
            .compatible_tags()
            .into_iter()
            .enumerate()
            .map(|(index, tag)| (tag, index))
            .collect();
        TagRanking { rank }
    }

    /// Best rank among the (expanded) tags of a wheel, or `None` if none fits.
    pub fn rank(&self, wheel: &WheelName) -> Option<usize> {
        wheel
            .tags()
            .iter()
            .filter_map(|tag| self.rank.get(tag).copied())
            .min()
    }
}

/// The parts of a wheel file name (PEP 427).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelName {
    /// Distribution name as written in the file name.
    pub name: String,
    /// Version as written in the file name.
    pub version: String,
    /// Optional build tag.
    pub build: Option<String>,
    /// Python tags (`py2.py3` gives two).
    pub python: Vec<String>,
    /// ABI tags.
    pub abi: Vec<String>,
    /// Platform tags.
    pub platform: Vec<String>,
}

impl WheelName {
    /// Parses `name-version(-build)?-python-abi-platform.whl`; `None` if not a wheel name.
    pub fn parse(filename: &str) -> Option<Self> {
        let stem = filename.strip_suffix(".whl")?;
        let parts: Vec<&str> = stem.split('-').collect();
        let (name, version, build, rest) = match parts.as_slice() {
            [name, version, python, abi, platform] => {
                (name, version, None, [python, abi, platform])
            }
            [name, version, build, python, abi, platform] => (
                name,
                version,
                Some(build.to_string()),
                [python, abi, platform],
            ),
            _ => return None,
        };
        let split = |s: &str| s.split('.').map(str::to_string).collect::<Vec<_>>();
        Some(WheelName {
            name: name.to_string(),
            version: version.to_string(),
            build,
            python: split(rest[0]),
            abi: split(rest[1]),
            platform: split(rest[2]),
        })
    }

    /// Every `python-abi-platform` combination the name declares.
    pub fn tags(&self) -> Vec<String> {
        let mut tags = Vec::new();
        for python in &self.python {
            for abi in &self.abi {
                for platform in &self.platform {
                    tags.push(format!("{python}-{abi}-{platform}"));
                }
            }
        }
        tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pep508_rs::Requirement;

    #[test]
    fn tag_order_matches_packaging_for_cpython_311_bookworm() {
        let tags = TargetEnv::default().compatible_tags();
        assert_eq!(tags[0], "cp311-cp311-manylinux_2_36_x86_64");
        assert_eq!(tags[1], "cp311-cp311-manylinux_2_35_x86_64");
        assert_eq!(tags.last().unwrap(), "py30-none-any");
        let position = |tag: &str| tags.iter().position(|t| t == tag).unwrap();
        assert!(
            position("cp311-cp311-manylinux_2_17_x86_64")
                < position("cp311-cp311-manylinux2014_x86_64")
        );
        assert_eq!(
            position("cp311-cp311-manylinux2014_x86_64"),
            position("cp311-cp311-manylinux_2_17_x86_64") + 1
        );
        assert!(
            position("cp311-cp311-linux_x86_64") < position("cp311-abi3-manylinux_2_36_x86_64")
        );
        assert!(position("cp311-none-linux_x86_64") < position("cp310-abi3-manylinux_2_36_x86_64"));
        assert!(position("cp32-abi3-linux_x86_64") < position("py311-none-manylinux_2_36_x86_64"));
        assert!(position("py30-none-linux_x86_64") < position("cp311-none-any"));
        assert_eq!(position("cp311-none-any") + 1, position("py311-none-any"));
        assert_eq!(position("py311-none-any") + 1, position("py3-none-any"));
        assert!(!tags.iter().any(|t| t.contains("cp312")));
        assert!(!tags.iter().any(|t| t.contains("manylinux_2_4_")));
        // 32 glibc versions, 3 legacy aliases and linux_x86_64.
        assert_eq!(TargetEnv::default().platform_tags().len(), 32 + 3 + 1);
    }

    #[test]
    fn aarch64_starts_at_glibc_2_17_and_has_only_the_2014_alias() {
        let target = TargetEnv {
            arch: "aarch64".into(),
            ..TargetEnv::default()
        };
        let platforms = target.platform_tags();
        assert_eq!(
            platforms.iter().rev().nth(1).unwrap(),
            "manylinux2014_aarch64"
        );
        assert!(!platforms
            .iter()
            .any(|p| p.contains("manylinux1") || p.contains("2010")));
    }

    #[test]
    fn wheel_names_parse_and_rank() {
        let ranking = TagRanking::new(&TargetEnv::default());
        let numpy = WheelName::parse(
            "numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        )
        .unwrap();
        assert_eq!(numpy.platform.len(), 2);
        let pure = WheelName::parse("requests-2.32.3-py3-none-any.whl").unwrap();
        let universal = WheelName::parse("six-1.16.0-py2.py3-none-any.whl").unwrap();
        assert!(ranking.rank(&numpy).unwrap() < ranking.rank(&pure).unwrap());
        assert_eq!(ranking.rank(&pure), ranking.rank(&universal));
        for foreign in [
            "numpy-2.1.0-cp312-cp312-manylinux_2_17_x86_64.whl",
            "numpy-2.1.0-cp311-cp311-win_amd64.whl",
            "numpy-2.1.0-cp311-cp311-macosx_14_0_arm64.whl",
            "numpy-2.1.0-cp311-cp311-musllinux_1_1_x86_64.whl",
            "x-1-cp311-cp311-manylinux_2_38_x86_64.whl",
            "x-1-py2-none-any.whl",
        ] {
            assert_eq!(
                ranking.rank(&WheelName::parse(foreign).unwrap()),
                None,
                "{foreign}"
            );
        }
        let built = WheelName::parse("pkg-1.0-2-py3-none-any.whl").unwrap();
        assert_eq!(built.build.as_deref(), Some("2"));
        assert_eq!(WheelName::parse("pkg-1.0.tar.gz"), None);
        assert_eq!(WheelName::parse("pkg-1.0-py3.whl"), None);
    }

    #[test]
    fn markers_evaluate_for_the_guest() {
        let env = TargetEnv::default().marker_environment();
        let holds = |text: &str| {
            Requirement::<pep508_rs::VerbatimUrl>::from_str(text)
                .unwrap()
                .evaluate_markers(&env, &[])
        };
        assert!(holds("a; python_version >= '3.8'"));
        assert!(!holds("a; python_version < '3.10'"));
        assert!(holds(
            "a; sys_platform == 'linux' and platform_machine == 'x86_64'"
        ));
        assert!(!holds("a; sys_platform == 'win32'"));
        assert!(holds("a; platform_python_implementation == 'CPython'"));
        assert!(!holds("a; extra == 'socks'"));
        assert!(holds("a; python_full_version >= '3.11.1'"));
    }

    #[test]
    fn python_versions_parse_or_fail_clearly() {
        assert_eq!(
            TargetEnv::cpython("3.11").unwrap().python_full_version,
            "3.11.2"
        );
        assert_eq!(
            TargetEnv::cpython("3.12").unwrap().python_full_version,
            "3.12.0"
        );
        assert_eq!(TargetEnv::cpython("3.9.18").unwrap().python_minor(), (3, 9));
        assert!(TargetEnv::cpython("three").is_err());
        assert!(TargetEnv::cpython("2.7").is_err());
        assert_eq!(
            TargetEnv::default().describe(),
            "cp311 manylinux_2_36_x86_64"
        );
    }
}
