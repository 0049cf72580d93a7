//! The master's configuration, in the same INI style as the worker's.
//!
//! ```ini
//! [config]
//! listen = 127.0.0.1:50051
//! database = /var/lib/pyti-master/pyti.sqlite   ; or postgres://host/db
//!
//! [tls]                       ; from `pyti ca init` / `pyti ca issue DIR master`
//! cert = /etc/pyti/master.pem
//! key = /etc/pyti/master.key
//! ca = /etc/pyti/ca.pem
//! ; for amqp_url = amqps://...: RabbitMQ's CA and the client certificate to present
//! ; (defaults: ca, cert and key above)
//! amqp_ca = /etc/pyti/rabbitmq-ca.pem
//! amqp_cert = /etc/pyti/master.pem
//! amqp_key = /etc/pyti/master.key
//! ```
//!
//! Every option has a default that works on one machine, so a master starts with no file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pyti::config::{default_state_dir, running_as_root, IniFile};

use crate::error::Result;

const CONFIG_KEYS: [&str; 10] = [
    "pyti_master_root",
    "listen",
    "amqp_url",
    "queue_prefix",
    "database",
    "lease_s",
    "max_attempts",
    "index_url",
    "log_format",
    "insecure",
];

const TLS_KEYS: [&str; 6] = ["cert", "key", "ca", "amqp_ca", "amqp_cert", "amqp_key"];

/// The whole master configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MasterConfig {
    /// Where the default SQLite store lives. `PYTI_MASTER_ROOT` overrides it.
    /// Default: `/var/lib/pyti-master` for root, `~/.local/share/pyti-master` otherwise.
    pub root: PathBuf,
    /// Where `JobService` and `WorkerRegistry` listen. Default: `127.0.0.1:50051`.
    pub listen: SocketAddr,
    /// RabbitMQ. Default: `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub amqp_url: String,
    /// Prefix of every exchange and queue name. Default: `pyti`.
    pub queue_prefix: String,
    /// A SQLite file path or a `postgres://` URL. Default: `<root>/pyti.sqlite`.
    pub database: String,
    /// How long a running job's lease lasts without renewal. Default: 120 s.
    pub lease_s: u32,
    /// Attempts before a job goes to the dead queue. Default: 3.
    pub max_attempts: u32,
    /// PyPI simple index, to resolve omitted versions. Default: `https://pypi.org/simple`.
    pub index_url: String,
    /// `text` or `json` log lines. Default: `text`.
    pub log_json: bool,
    /// `[tls]`: the master's certificate and key and the farm CA; without it the master
    /// serves plaintext, unauthenticated, and only on loopback unless `insecure`.
    pub tls: Option<pyti::trust::TlsFiles>,
    /// `[tls] amqp_ca`, `amqp_cert`, `amqp_key` for an `amqps://` `amqp_url` (defaults:
    /// the farm CA and the master's certificate and key).
    pub amqp_tls: Option<pyti::amqp::AmqpTls>,
    /// Serve a non-loopback address without TLS anyway (loudly). Default: false.
    pub insecure: bool,
}

impl MasterConfig {
    /// Reads `path` (or takes every default when `None`), then applies `PYTI_MASTER_ROOT`.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let env = |k: &str| std::env::var(k).ok();
        Self::from_ini(&IniFile::load_or_defaults(path)?, &env)
    }

    /// Builds the configuration from a parsed file and an environment lookup.
    pub fn from_ini(file: &IniFile, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        file.check_sections(&["config", "tls"], &[])?;
        file.check_keys("config", &CONFIG_KEYS)?;
        file.check_keys("tls", &TLS_KEYS)?;
        let tls = pyti::config::tls_files(file, "tls")?;
        let insecure = file.get_bool("config", "insecure")?.unwrap_or(false);
        let c = "config";
        let root = env("PYTI_MASTER_ROOT")
            .filter(|r| !r.is_empty())
            .or_else(|| file.get(c, "pyti_master_root").map(str::to_owned))
            .map_or_else(
                || default_state_dir("pyti-master", running_as_root(), env),
                PathBuf::from,
            );
        let database = file.get(c, "database").map_or_else(
            || root.join("pyti.sqlite").display().to_string(),
            str::to_owned,
        );
        let log_json = file.log_json(c)?;
        let amqp_url = file
            .get(c, "amqp_url")
            .unwrap_or("amqp://guest:guest@127.0.0.1:5672/%2f")
            .to_owned();
        let amqp_tls = pyti::config::amqp_tls(file, "tls", tls.as_ref(), &amqp_url)?;
        Ok(Self {
            listen: file
                .get_parsed(c, "listen", "a socket address such as 127.0.0.1:50051")?
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50051))),
            amqp_url,
            amqp_tls,
            queue_prefix: file.get(c, "queue_prefix").unwrap_or("pyti").to_owned(),
            database,
            lease_s: file
                .get_u64_in(c, "lease_s", 5, 86_400)?
                .map_or(120, |v| v as u32),
            max_attempts: file
                .get_u64_in(c, "max_attempts", 1, 100)?
                .map_or(3, |v| v as u32),
            index_url: file
                .get(c, "index_url")
                .unwrap_or("https://pypi.org/simple")
                .to_owned(),
            log_json,
            root,
            tls,
            insecure,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MasterConfig> {
        MasterConfig::from_ini(
            &IniFile::parse(text, Path::new("master.ini")).unwrap(),
            &|_| None,
        )
    }

    #[test]
    fn defaults_work_on_one_machine() {
        let config = parse("").unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.max_attempts, 3);
        assert!(
            config.database.ends_with("pyti.sqlite"),
            "{}",
            config.database
        );
    }

    #[test]
    fn values_and_errors() {
        let config = parse("[config]\npyti_master_root = /srv/m\ndatabase = postgres://127.0.0.1/test\nlease_s = 30\n").unwrap();
        assert_eq!(config.root, PathBuf::from("/srv/m"));
        assert_eq!(config.database, "postgres://127.0.0.1/test");
        assert_eq!(config.lease_s, 30);
        let err = parse("[config]\nmax_attempts = 0\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "master.ini: [config] max_attempts: 0 is out of range: expected a whole number from 1 to 100");
        let err = parse("[config]\nlisten = x\n").unwrap_err().to_string();
        assert!(
            err.starts_with("master.ini: [config] listen: \"x\" is not a socket address"),
            "{err}"
        );
        let err = parse("[tls]\namqp_ca = /x.pem\n").unwrap_err().to_string();
        assert!(err.contains("amqps://"), "{err}");
        let err = parse("[config]\namqp_url = amqps://h/%2f\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("amqp_ca"), "{err}");
        let config = parse("[config]\namqp_url = amqps://h/%2f\n[tls]\ncert = /c.pem\nkey = /c.key\nca = /ca.pem\namqp_ca = /r.pem\n").unwrap();
        assert_eq!(
            config.amqp_tls,
            Some(pyti::amqp::AmqpTls {
                ca: "/r.pem".into(),
                identity: Some(("/c.pem".into(), "/c.key".into())),
            })
        );
        let err = parse("[platform x]\n").unwrap_err().to_string();
        assert!(err.contains("[platform x] : unknown section"), "{err}");
    }

    #[test]
    fn shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pyti_master.ini");
        MasterConfig::from_ini(&IniFile::load(&path).unwrap(), &|_| None).unwrap();
    }
}
