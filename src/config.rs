//! Reading the seed's INI configuration files (`[config] pyti_slave_root = ...`).
//!
//! Operators edit these by hand on many hosts, so every value is checked when the file
//! is read, unknown keys are refused (a typo must not silently fall back to a default),
//! and every error names the file, the section and the key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

/// A parsed INI file that remembers where it came from, for error messages.
#[derive(Debug, Clone)]
pub struct IniFile {
    path: PathBuf,
    sections: HashMap<String, HashMap<String, Option<String>>>,
}

impl IniFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text`; `path` is only used to name the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut ini = configparser::ini::Ini::new();
        let sections = ini
            .read(text.to_owned())
            .map_err(|message| Error::ConfigSyntax {
                path: path.to_owned(),
                message,
            })?;
        Ok(Self {
            path: path.to_owned(),
            sections,
        })
    }

    /// An empty file standing for "no configuration given": every option takes its default.
    pub fn empty(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            sections: HashMap::new(),
        }
    }

    /// `path` read and parsed, or an empty file (every default) when there is none.
    pub fn load_or_defaults(path: Option<&Path>) -> Result<Self> {
        match path {
            Some(path) => Self::load(path),
            None => Ok(Self::empty(Path::new("<defaults>"))),
        }
    }

    /// `log_format` of `section`: true for `json`, false for `text` (the default).
    pub fn log_json(&self, section: &str) -> Result<bool> {
        match self.get(section, "log_format") {
            None | Some("text") => Ok(false),
            Some("json") => Ok(true),
            Some(other) => Err(self.value_error(
                section,
                "log_format",
                format!("{other:?} is not text or json"),
            )),
        }
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of the sections whose name starts with `prefix` followed by a space, with the
    /// prefix removed: `[platform linux-debian]` gives `linux-debian` for `"platform"`.
    pub fn sections_named(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .sections
            .keys()
            .filter_map(|s| {
                s.strip_prefix(prefix)?
                    .strip_prefix(' ')
                    .map(|n| n.trim().to_owned())
            })
            .collect();
        names.sort();
        names
    }

    /// Refuses sections other than `allowed` (exact names) and `allowed_prefixes`
    /// (`platform` allows `[platform NAME]`).
    pub fn check_sections(&self, allowed: &[&str], allowed_prefixes: &[&str]) -> Result<()> {
        let mut names: Vec<&String> = self.sections.keys().collect();
        names.sort();
        for name in names {
            let known = allowed.contains(&name.as_str())
                || allowed_prefixes.iter().any(|p| {
                    name.strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with(' '))
                })
                || (name == "default" && self.sections[name].is_empty());
            if !known {
                let mut expected: Vec<String> = allowed.iter().map(|s| format!("[{s}]")).collect();
                expected.extend(allowed_prefixes.iter().map(|p| format!("[{p} NAME]")));
                return Err(Error::ConfigValue {
                    path: self.path.clone(),
                    section: name.clone(),
                    key: String::new(),
                    message: format!("unknown section; the sections are {}", expected.join(", ")),
                });
            }
        }
        Ok(())
    }

    /// Refuses keys of `section` that are not in `allowed`.
    pub fn check_keys(&self, section: &str, allowed: &[&str]) -> Result<()> {
        let Some(keys) = self.sections.get(section) else {
            return Ok(());
        };
        let mut keys: Vec<&String> = keys.keys().collect();
        keys.sort();
        for key in keys {
            if !allowed.contains(&key.as_str()) {
                return Err(self.value_error(
                    section,
                    key,
                    format!(
                        "unknown key; the keys of this section are {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The raw value of `key` in `section`; `None` when absent or empty.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .get(section)?
            .get(key)?
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    /// `key` parsed as `T`; `expected` describes valid values for the error message.
    pub fn get_parsed<T: FromStr>(
        &self,
        section: &str,
        key: &str,
        expected: &str,
    ) -> Result<Option<T>> {
        match self.get(section, key) {
            None => Ok(None),
            Some(raw) => raw
                .parse()
                .map(Some)
                .map_err(|_| self.value_error(section, key, format!("{raw:?} is not {expected}"))),
        }
    }

    /// `key` as a whole number between `min` and `max`.
    pub fn get_u64_in(&self, section: &str, key: &str, min: u64, max: u64) -> Result<Option<u64>> {
        let expected = format!("a whole number from {min} to {max}");
        match self.get_parsed::<u64>(section, key, &expected)? {
            Some(v) if !(min..=max).contains(&v) => Err(self.value_error(
                section,
                key,
                format!("{v} is out of range: expected {expected}"),
            )),
            other => Ok(other),
        }
    }

    /// `key` as a comma- or space-separated list.
    pub fn get_list(&self, section: &str, key: &str) -> Vec<String> {
        self.get(section, key)
            .map(|raw| {
                raw.split([',', ' ', '\t'])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `key` as `true` or `false`.
    pub fn get_bool(&self, section: &str, key: &str) -> Result<Option<bool>> {
        self.get_parsed(section, key, "true or false")
    }

    /// An error about `key` in `section` of this file.
    pub fn value_error(&self, section: &str, key: &str, message: String) -> Error {
        Error::ConfigValue {
            path: self.path.clone(),
            section: section.to_owned(),
            key: key.to_owned(),
            message,
        }
    }
}

/// The `cert`, `key` and `ca` of `section` (all three, or none: `None`).
pub fn tls_files(file: &IniFile, section: &str) -> Result<Option<crate::trust::TlsFiles>> {
    let keys = ["cert", "key", "ca"].map(|k| file.get(section, k));
    match keys {
        [None, None, None] => Ok(None),
        [Some(cert), Some(key), Some(ca)] => Ok(Some(crate::trust::TlsFiles {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
            ca: PathBuf::from(ca),
        })),
        _ => Err(file.value_error(
            section,
            "cert",
            "give cert, key and ca together (from `pyti ca init` and `pyti ca issue`)".to_owned(),
        )),
    }
}

/// The keys of `[tls]` for the connection to RabbitMQ.
pub const AMQP_TLS_KEYS: [&str; 3] = ["amqp_ca", "amqp_cert", "amqp_key"];

/// The TLS settings of the connection to RabbitMQ at `amqp_url`: for `amqps://`, the CA
/// `amqp_ca` (default: the farm CA, `ca`) and the client certificate `amqp_cert` and
/// `amqp_key` (default: the process's farm identity, `cert` and `key`, if any); for
/// `amqp://`, none (then none of the `amqp_` keys may be given).
pub fn amqp_tls(
    file: &IniFile,
    section: &str,
    farm: Option<&crate::trust::TlsFiles>,
    amqp_url: &str,
) -> Result<Option<crate::amqp::AmqpTls>> {
    let [ca, cert, key] = AMQP_TLS_KEYS.map(|k| file.get(section, k).map(PathBuf::from));
    if !amqp_url.starts_with("amqps://") {
        if ca.is_some() || cert.is_some() || key.is_some() {
            return Err(file.value_error(
                section,
                "amqp_ca",
                "amqp_ca, amqp_cert and amqp_key are for an amqps:// amqp_url".to_owned(),
            ));
        }
        return Ok(None);
    }
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => farm.map(|f| (f.cert.clone(), f.key.clone())),
        _ => {
            return Err(file.value_error(
                section,
                "amqp_cert",
                "give amqp_cert and amqp_key together".to_owned(),
            ))
        }
    };
    let Some(ca) = ca.or_else(|| farm.map(|f| f.ca.clone())) else {
        return Err(file.value_error(
            section,
            "amqp_ca",
            "an amqps:// amqp_url needs the CA of RabbitMQ's certificate: set amqp_ca (or cert, key and ca)".to_owned(),
        ));
    };
    Ok(Some(crate::amqp::AmqpTls { ca, identity }))
}

/// True when this process runs as root (the owner of `/proc/self` is the effective user).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The default directory for a PyTI process's state: `/var/lib/<name>` for root,
/// `$XDG_DATA_HOME/<name>` (or `~/.local/share/<name>`) otherwise.
pub fn default_state_dir(
    name: &str,
    is_root: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> PathBuf {
    if is_root {
        return PathBuf::from("/var/lib").join(name);
    }
    if let Some(data) = env("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(data).join(name);
    }
    match env("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(".local/share").join(name),
        _ => std::env::temp_dir().join(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ini(text: &str) -> IniFile {
        IniFile::parse(text, Path::new("/etc/pyti/pyti_config")).unwrap()
    }

    #[test]
    fn reads_values_and_sections() {
        let file = ini("[config]\npyti_slave_root = /srv/pyti\ntotal_vms = 3\n\n[platform linux-debian]\nvms = 2\nvariants = python3.11, big\n");
        assert_eq!(file.get("config", "pyti_slave_root"), Some("/srv/pyti"));
        assert_eq!(
            file.get_u64_in("config", "total_vms", 1, 64).unwrap(),
            Some(3)
        );
        assert_eq!(file.sections_named("platform"), ["linux-debian"]);
        assert_eq!(
            file.get_list("platform linux-debian", "variants"),
            ["python3.11", "big"]
        );
        assert_eq!(file.get("config", "missing"), None);
        file.check_sections(&["config"], &["platform"]).unwrap();
        file.check_keys("config", &["pyti_slave_root", "total_vms"])
            .unwrap();
    }

    #[test]
    fn errors_name_file_section_and_key() {
        let file = ini("[config]\ntotal_vms = three\n");
        let err = file
            .get_u64_in("config", "total_vms", 1, 64)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "/etc/pyti/pyti_config: [config] total_vms: \"three\" is not a whole number from 1 to 64");
        let file = ini("[config]\ntotal_vms = 0\n");
        let err = file
            .get_u64_in("config", "total_vms", 1, 64)
            .unwrap_err()
            .to_string();
        assert!(err.contains("0 is out of range"), "{err}");
        let file = ini("[config]\ntotal_vm = 3\n");
        let err = file
            .check_keys("config", &["total_vms"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[config] total_vm: unknown key"), "{err}");
        let file = ini("[confg]\nx = 1\n");
        let err = file
            .check_sections(&["config"], &["platform"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[confg] : unknown section"), "{err}");
    }

    #[test]
    fn log_format_and_defaults() {
        assert!(!ini("[config]\n").log_json("config").unwrap());
        assert!(ini("[config]\nlog_format = json\n")
            .log_json("config")
            .unwrap());
        let err = ini("[config]\nlog_format = xml\n")
            .log_json("config")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/etc/pyti/pyti_config: [config] log_format: \"xml\" is not text or json"
        );
        let defaults = IniFile::load_or_defaults(None).unwrap();
        assert_eq!(defaults.path(), Path::new("<defaults>"));
        assert_eq!(defaults.get("config", "total_vms"), None);
    }

    #[test]
    fn missing_file_is_named() {
        let err = IniFile::load(Path::new("/nonexistent/pyti_config"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/nonexistent/pyti_config: cannot read configuration"),
            "{err}"
        );
    }

    #[test]
    fn state_dir_defaults() {
        assert_eq!(
            default_state_dir("pyti", true, &|_| None),
            PathBuf::from("/var/lib/pyti")
        );
        let user = |k: &str| match k {
            "USER" => Some("ann".to_owned()),
            "HOME" => Some("/home/ann".to_owned()),
            _ => None,
        };
        assert_eq!(
            default_state_dir("pyti", false, &user),
            PathBuf::from("/home/ann/.local/share/pyti")
        );
    }
}
