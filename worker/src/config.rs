//! The worker's configuration: the seed's INI file plus what a farm needs.
//!
//! ```ini
//! [config]
//! pyti_slave_root = /var/lib/pyti   ; PYTI_SLAVE_ROOT in the environment overrides it
//! total_vms = 3
//! master = http://127.0.0.1:50051
//!
//! [platform linux-debian]
//! hypervisor = qemu:///system
//! vms = 2
//! variants = python3.11
//! ```
//!
//! Every option has a default that works on one machine, so a worker starts with no file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pyti::config::{default_state_dir, IniFile};
use pyti::model::names;

use crate::error::Result;
use crate::pypidownload::archive::ArchiveLimits;
use crate::pypidownload::Budgets;
use crate::vms::AcceleratorChoice;

const CONFIG_KEYS: [&str; 17] = [
    "pyti_slave_root",
    "total_vms",
    "worker_id",
    "master",
    "amqp_url",
    "queue_prefix",
    "listen",
    "advertise",
    "index_url",
    "log_format",
    "insecure",
    "max_closure_files",
    "max_download_bytes",
    "max_resolution_s",
    "max_archive_bytes",
    "max_archive_ratio",
    "cache_max_bytes",
];

const TLS_KEYS: [&str; 6] = ["cert", "key", "ca", "amqp_ca", "amqp_cert", "amqp_key"];

const PLATFORM_KEYS: [&str; 9] = [
    "hypervisor",
    "image",
    "vms",
    "memory_mib",
    "vcpus",
    "run_timeout_s",
    "variants",
    "accel",
    "io_disk_format",
];

/// The whole worker configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    /// Where images, the download cache, overlays and spooled results live.
    /// Default: `/var/lib/pyti` for root, `~/.local/share/pyti` otherwise.
    pub root: PathBuf,
    /// VMs this host runs at once over all platforms. Default: 3.
    pub total_vms: u32,
    /// This worker's name in the farm. Default: the host name.
    pub worker_id: String,
    /// The master's gRPC address. Default: `http://127.0.0.1:50051`.
    pub master: String,
    /// RabbitMQ. Default: `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub amqp_url: String,
    /// Prefix of every exchange and queue name. Default: `pyti`.
    pub queue_prefix: String,
    /// Where `WorkerControl` listens. Default: `127.0.0.1:50052`.
    pub listen: SocketAddr,
    /// The control address given to the master. Default: `http://` + `listen`.
    pub advertise: String,
    /// PyPI simple index (PEP 691). Default: `https://pypi.org/simple`.
    pub index_url: String,
    /// `text` or `json` log lines. Default: `text`.
    pub log_json: bool,
    /// What one job's download step may cost (`max_closure_files` 500,
    /// `max_download_bytes` 4 GiB, `max_resolution_s` 900, `max_archive_bytes` 1 GiB,
    /// `max_archive_ratio` 200).
    pub budgets: Budgets,
    /// Size the download cache is pruned back to after each download, least recently
    /// used first, never a file a running job uses. Default: 20 GiB.
    pub cache_max_bytes: u64,
    /// One entry per `[platform NAME]` section. Default: one `linux-debian` platform.
    pub platforms: Vec<PlatformConfig>,
    /// `[tls]`: this worker's certificate and key (`pyti ca issue DIR worker ID`) and
    /// the farm CA. With it, WorkerControl answers only the master, and the worker
    /// talks to the master over mutual TLS.
    pub tls: Option<pyti::trust::TlsFiles>,
    /// `[tls] amqp_ca`, `amqp_cert`, `amqp_key` for an `amqps://` `amqp_url` (defaults:
    /// the farm CA and this worker's certificate and key).
    pub amqp_tls: Option<pyti::amqp::AmqpTls>,
    /// Serve a non-loopback `listen` without TLS anyway (loudly). Default: false.
    pub insecure: bool,
}

/// How VMs are made for one platform.
#[derive(Debug, Clone, PartialEq)]
pub struct PlatformConfig {
    /// Platform identifier jobs ask for, e.g. `linux-debian`.
    pub name: String,
    /// libvirt connection URI. Default: `qemu:///system`.
    pub hypervisor: String,
    /// Base image; empty means the one `pyti-worker image build` makes. Default: empty.
    pub image: Option<PathBuf>,
    /// VM slots. Default: `total_vms`.
    pub vms: u32,
    /// Memory per VM. Default: 1024 MiB.
    pub memory_mib: u32,
    /// vCPUs per VM. Default: 1.
    pub vcpus: u32,
    /// Wall-time limit of one VM run. Default: 1800 s.
    pub run_timeout_s: u32,
    /// Variants the platform's VMs offer (jobs may ask for any subset). Default: none.
    pub variants: Vec<String>,
    /// Accelerator: `auto`, `kvm` or `tcg`. Default: `auto` (KVM only where it really works).
    pub accel: AcceleratorChoice,
    /// IO disk format the hypervisor wants: `raw`, `qcow2`, `vdi`, `vmdk`. Default: `raw`.
    pub io_disk_format: String,
}

impl WorkerConfig {
    /// The VM slots this configuration asks for: `(name, platform)`, named
    /// `pyti-<worker>-<platform>-<n>` so a restarted worker finds its leftovers.
    pub fn slot_names(&self) -> Vec<(String, String)> {
        self.platforms
            .iter()
            .flat_map(|p| {
                crate::stateofvm::SlotPool::slot_names(
                    &format!("pyti-{}-", self.worker_id),
                    &p.name,
                    p.vms as usize,
                )
            })
            .collect()
    }

    /// Reads `path` (or takes every default when `None`), then applies the environment
    /// (`PYTI_SLAVE_ROOT`).
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let env = |k: &str| std::env::var(k).ok();
        Self::from_ini(&IniFile::load_or_defaults(path)?, &env)
    }

    /// Builds the configuration from a parsed file and an environment lookup.
    pub fn from_ini(file: &IniFile, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        file.check_sections(&["config", "tls"], &["platform"])?;
        file.check_keys("config", &CONFIG_KEYS)?;
        let c = "config";
        let root = env("PYTI_SLAVE_ROOT")
            .filter(|r| !r.is_empty())
            .or_else(|| file.get(c, "pyti_slave_root").map(str::to_owned))
            .map_or_else(
                || default_state_dir("pyti", pyti::config::running_as_root(), env),
                PathBuf::from,
            );
        let total_vms = file.get_u64_in(c, "total_vms", 1, 256)?.unwrap_or(3) as u32;
        let worker_id = match file.get(c, "worker_id") {
            Some(id) if names::is_valid_variant(id) => id.to_owned(),
            Some(id) => {
                return Err(file
                    .value_error(
                        c,
                        "worker_id",
                        format!(
                            "{id:?} is not a worker id (lower-case letters, digits, '.', '_', '-')"
                        ),
                    )
                    .into())
            }
            None => default_worker_id(),
        };
        let listen: SocketAddr = file
            .get_parsed(c, "listen", "a socket address such as 127.0.0.1:50052")?
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50052)));
        let advertise = file
            .get(c, "advertise")
            .map_or_else(|| format!("http://{listen}"), str::to_owned);
        let log_json = file.log_json(c)?;
        file.check_keys("tls", &TLS_KEYS)?;
        let tls = pyti::config::tls_files(file, "tls")?;
        if tls.is_some() {
            // The master checks the worker's certificate names this id.
            pyti::trust::check_name(&worker_id).map_err(|m| file.value_error(c, "worker_id", m))?;
        }
        let insecure = file.get_bool(c, "insecure")?.unwrap_or(false);
        let amqp_url = file
            .get(c, "amqp_url")
            .unwrap_or("amqp://guest:guest@127.0.0.1:5672/%2f")
            .to_owned();
        let amqp_tls = pyti::config::amqp_tls(file, "tls", tls.as_ref(), &amqp_url)?;
        let budgets = budgets_from_ini(file)?;
        let cache_max_bytes = file
            .get_u64_in(c, "cache_max_bytes", 1 << 20, u64::MAX)?
            .unwrap_or(DEFAULT_CACHE_MAX_BYTES);
        let mut platforms = Vec::new();
        let names = file.sections_named("platform");
        // Platforms that do not say share the host's VMs evenly.
        let share = (total_vms / u32::try_from(names.len().max(1)).unwrap_or(1)).max(1);
        for name in names {
            platforms.push(PlatformConfig::from_ini(file, &name, total_vms, share)?);
        }
        if platforms.is_empty() {
            platforms.push(PlatformConfig::defaults(
                pyti::model::jobspec::DEFAULT_PLATFORM,
                total_vms,
            ));
        }
        let slots: u32 = platforms.iter().map(|p| p.vms).sum();
        if slots > total_vms {
            return Err(file
                .value_error(
                    c,
                    "total_vms",
                    format!(
                        "the platforms' vms add up to {slots}, more than total_vms = {total_vms}: \
                         raise total_vms or lower a platform's vms"
                    ),
                )
                .into());
        }
        Ok(Self {
            root,
            total_vms,
            worker_id,
            master: file
                .get(c, "master")
                .unwrap_or("http://127.0.0.1:50051")
                .to_owned(),
            amqp_url,
            queue_prefix: file.get(c, "queue_prefix").unwrap_or("pyti").to_owned(),
            listen,
            advertise,
            index_url: file
                .get(c, "index_url")
                .unwrap_or("https://pypi.org/simple")
                .to_owned(),
            log_json,
            budgets,
            cache_max_bytes,
            platforms,
            tls,
            amqp_tls,
            insecure,
        })
    }
}

/// Default size of the download cache.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 20 << 30;

/// The download budgets of `[config]`, each key defaulting on its own.
fn budgets_from_ini(file: &IniFile) -> Result<Budgets> {
    let c = "config";
    let defaults = Budgets::default();
    let get = |key, min, max, default| -> Result<u64> {
        Ok(file.get_u64_in(c, key, min, max)?.unwrap_or(default))
    };
    Ok(Budgets {
        max_files: get("max_closure_files", 1, 1_000_000, defaults.max_files as u64)? as usize,
        max_bytes: get("max_download_bytes", 1 << 20, u64::MAX, defaults.max_bytes)?,
        max_resolution_s: get("max_resolution_s", 1, 86_400, defaults.max_resolution_s)?,
        archive: ArchiveLimits {
            max_bytes: get(
                "max_archive_bytes",
                1 << 20,
                u64::MAX,
                defaults.archive.max_bytes,
            )?,
            max_ratio: get(
                "max_archive_ratio",
                2,
                1_000_000,
                defaults.archive.max_ratio,
            )?,
        },
    })
}

impl PlatformConfig {
    /// A platform with every default.
    pub fn defaults(name: &str, total_vms: u32) -> Self {
        Self {
            name: name.to_owned(),
            hypervisor: "qemu:///system".to_owned(),
            image: None,
            vms: total_vms,
            memory_mib: 1024,
            vcpus: 1,
            run_timeout_s: 1800,
            variants: Vec::new(),
            accel: AcceleratorChoice::Auto,
            io_disk_format: "raw".to_owned(),
        }
    }

    fn from_ini(file: &IniFile, name: &str, total_vms: u32, default_vms: u32) -> Result<Self> {
        let section = format!("platform {name}");
        let s = section.as_str();
        file.check_keys(s, &PLATFORM_KEYS)?;
        if !names::is_valid_platform(name) {
            return Err(file
                .value_error(s, "", format!("{name:?} is not a platform identifier (lower-case words joined by '-', e.g. linux-debian)"))
                .into());
        }
        let defaults = Self::defaults(name, default_vms);
        let variants = file.get_list(s, "variants");
        if let Some(bad) = variants.iter().find(|v| !names::is_valid_variant(v)) {
            return Err(file
                .value_error(
                    s,
                    "variants",
                    format!(
                        "{bad:?} is not a variant (lower-case letters, digits, '.', '_', '-', '=')"
                    ),
                )
                .into());
        }
        let accel = match file.get(s, "accel") {
            None | Some("auto") => AcceleratorChoice::Auto,
            Some("kvm") => AcceleratorChoice::Kvm,
            Some("tcg") => AcceleratorChoice::Tcg,
            Some(other) => {
                return Err(file
                    .value_error(s, "accel", format!("{other:?} is not auto, kvm or tcg"))
                    .into())
            }
        };
        let io_disk_format = match file.get(s, "io_disk_format") {
            None => defaults.io_disk_format.clone(),
            Some(f @ ("raw" | "qcow2" | "vdi" | "vmdk")) => f.to_owned(),
            Some(other) => {
                return Err(file
                    .value_error(
                        s,
                        "io_disk_format",
                        format!("{other:?} is not raw, qcow2, vdi or vmdk"),
                    )
                    .into())
            }
        };
        Ok(Self {
            name: name.to_owned(),
            hypervisor: file
                .get(s, "hypervisor")
                .unwrap_or(&defaults.hypervisor)
                .to_owned(),
            image: file.get(s, "image").map(PathBuf::from),
            vms: file
                .get_u64_in(s, "vms", 0, u64::from(total_vms))?
                .map_or(defaults.vms, |v| v as u32),
            memory_mib: file
                .get_u64_in(s, "memory_mib", 128, 1 << 20)?
                .map_or(defaults.memory_mib, |v| v as u32),
            vcpus: file
                .get_u64_in(s, "vcpus", 1, 64)?
                .map_or(defaults.vcpus, |v| v as u32),
            run_timeout_s: file
                .get_u64_in(s, "run_timeout_s", 10, 7 * 24 * 3600)?
                .map_or(defaults.run_timeout_s, |v| v as u32),
            variants,
            accel,
            io_disk_format,
        })
    }
}

/// The host name, lower-cased, as a worker id; `worker` when it cannot be read.
fn default_worker_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| names::is_valid_variant(h))
        .unwrap_or_else(|| "worker".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<WorkerConfig> {
        WorkerConfig::from_ini(
            &IniFile::parse(text, Path::new("pyti_config")).unwrap(),
            env,
        )
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_seed_file_works() {
        let config = parse(
            "[config]\npyti_slave_root = /srv/pyti\ntotal_vms = 3\n",
            &no_env,
        )
        .unwrap();
        assert_eq!(config.root, PathBuf::from("/srv/pyti"));
        assert_eq!(config.total_vms, 3);
        assert_eq!(
            config.platforms,
            [PlatformConfig::defaults("linux-debian", 3)]
        );
        assert_eq!(config.listen.to_string(), "127.0.0.1:50052");
        assert_eq!(config.advertise, "http://127.0.0.1:50052");
    }

    #[test]
    fn environment_overrides_the_root() {
        let env = |k: &str| (k == "PYTI_SLAVE_ROOT").then(|| "/tmp/other".to_owned());
        let config = parse("[config]\npyti_slave_root = /srv/pyti\n", &env).unwrap();
        assert_eq!(config.root, PathBuf::from("/tmp/other"));
    }

    #[test]
    fn platform_sections() {
        let text = "[config]\ntotal_vms = 4\n[platform linux-debian]\nvms = 2\nvariants = python3.11, big\naccel = tcg\nmemory_mib = 768\n[platform linux-other]\nhypervisor = test:///default\n";
        let config = parse(text, &no_env).unwrap();
        assert_eq!(config.platforms.len(), 2);
        let debian = &config.platforms[0];
        assert_eq!(
            (debian.name.as_str(), debian.vms, debian.memory_mib),
            ("linux-debian", 2, 768)
        );
        assert_eq!(debian.variants, ["python3.11", "big"]);
        assert_eq!(debian.accel, AcceleratorChoice::Tcg);
        assert_eq!(config.platforms[1].hypervisor, "test:///default");
        assert_eq!(config.platforms[1].vms, 2);
    }

    #[test]
    fn bad_values_name_file_section_and_key() {
        let cases = [
            ("[config]\ntotal_vms = -1\n", "pyti_config: [config] total_vms: \"-1\" is not a whole number from 1 to 256"),
            ("[platform linux-debian]\naccel = fast\n", "pyti_config: [platform linux-debian] accel: \"fast\" is not auto, kvm or tcg"),
            ("[platform linux-debian]\nvms = 9\n", "pyti_config: [platform linux-debian] vms: 9 is out of range: expected a whole number from 0 to 3"),
            ("[config]\ntotal_vms = 2\n[platform a]\nvms = 2\n[platform b]\nvms = 1\n", "pyti_config: [config] total_vms: the platforms' vms add up to 3, more than total_vms = 2"),
            ("[config]\nlisten = nowhere\n", "pyti_config: [config] listen: \"nowhere\" is not a socket address such as 127.0.0.1:50052"),
            ("[platform linux_debian]\n", "pyti_config: [platform linux_debian] : \"linux_debian\" is not a platform identifier"),
            ("[config]\nslave_root = /x\n", "pyti_config: [config] slave_root: unknown key"),
        ];
        for (text, expected) in cases {
            let err = parse(text, &no_env).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn download_budgets_default_and_parse_each_on_its_own() {
        let config = parse("[config]\n", &no_env).unwrap();
        assert_eq!(config.budgets, Budgets::default());
        assert_eq!(config.cache_max_bytes, DEFAULT_CACHE_MAX_BYTES);
        let text = "[config]\nmax_closure_files = 40\nmax_resolution_s = 60\nmax_archive_ratio = 50\ncache_max_bytes = 1073741824\n";
        let config = parse(text, &no_env).unwrap();
        assert_eq!(config.budgets.max_files, 40);
        assert_eq!(config.budgets.max_resolution_s, 60);
        assert_eq!(config.budgets.archive.max_ratio, 50);
        assert_eq!(
            config.budgets.max_bytes,
            Budgets::default().max_bytes,
            "unset keys keep their default"
        );
        assert_eq!(config.cache_max_bytes, 1 << 30);
        let err = parse("[config]\nmax_archive_ratio = 1\n", &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[config] max_archive_ratio"), "{err}");
    }

    #[test]
    fn shipped_example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pyti_config"))
            {
                WorkerConfig::from_ini(&IniFile::load(&path).unwrap(), &no_env)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen > 0, "no example worker config found");
    }
}
