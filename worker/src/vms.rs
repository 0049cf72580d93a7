//! Virtual machines over libvirt: the seed's `pyti.vms`.
//!
//! A job's code only ever runs inside a VM the worker can destroy at any moment, so this
//! module offers exactly what the pipeline needs and no more: define a VM from a config
//! (or from a libvirt XML file, as the seed did), start it, wait with a deadline for the
//! guest to power itself off (destroying it past the deadline), stop, destroy, named
//! snapshots, and cleanup of what a killed worker left behind. The domain XML is decided
//! in `xml.rs` (pure); the functions here are thin shells around libvirt, each run on
//! tokio's blocking pool because libvirt calls block.

pub mod accel;
pub mod config;
pub mod overlay;
pub mod xml;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};

pub use accel::{Accelerator, AcceleratorChoice};
pub use config::{DirectKernelBoot, DiskFormat, DiskSpec, Hypervisor, VmConfig};
pub use overlay::Overlay;

/// How often `wait_for_poweroff` and `stop` ask libvirt for the domain state.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Everything that can go wrong while driving a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// libvirt refused or failed an operation.
    #[error("libvirt could not {operation} VM {vm}: {source}")]
    Libvirt {
        /// What was attempted (start, destroy, ...).
        operation: &'static str,
        /// The domain name.
        vm: String,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },
    /// The connection could not be opened.
    #[error("cannot connect to libvirt at {uri}: {source} (is libvirtd running? start it with `virtlogd -d; libvirtd -d`)")]
    Connect {
        /// The connection URI.
        uri: String,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },
    /// The guest did not power off before its deadline; it has been destroyed.
    #[error("VM {vm} did not power off within {waited:?}; it was destroyed")]
    Timeout {
        /// The domain name.
        vm: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The URI names a libvirt driver PyTI does not drive.
    #[error("unsupported libvirt URI {uri:?}: use qemu:///system, qemu:///session, vbox:///session or test:///default")]
    UnsupportedUri {
        /// The URI as given.
        uri: String,
    },
    /// A config field has a value that cannot work.
    #[error("VM config {vm:?}: field `{field}` {reason}")]
    InvalidConfig {
        /// The VM name.
        vm: String,
        /// The offending field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file the VM needs does not exist.
    #[error("{what} {path} does not exist")]
    MissingFile {
        /// What the file is for.
        what: &'static str,
        /// Where it was expected.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An external command (qemu-img) failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output.
        detail: String,
    },
    /// A blocking libvirt task panicked or was cancelled.
    #[error("libvirt task for VM {vm} did not finish: {detail}")]
    Task {
        /// The domain name (or URI for connection tasks).
        vm: String,
        /// The join error.
        detail: String,
    },
}

/// The power state of a domain, as far as PyTI cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Running (or blocked on I/O).
    Running,
    /// Paused by libvirt or an operator.
    Paused,
    /// Shutting down after an ACPI request.
    ShuttingDown,
    /// Not running: never started, powered off, or destroyed.
    ShutOff,
    /// Crashed (only reported when the domain is configured to preserve a crash).
    Crashed,
    /// Anything else libvirt reports (no state, suspended to memory).
    Other,
}

impl VmState {
    fn from_libvirt(state: DomainState) -> Self {
        match state {
            DomainState::Running | DomainState::Blocked => Self::Running,
            DomainState::Paused => Self::Paused,
            DomainState::Shutdown => Self::ShuttingDown,
            DomainState::Shutoff => Self::ShutOff,
            DomainState::Crashed => Self::Crashed,
            DomainState::NoState | DomainState::PMSuspended => Self::Other,
        }
    }

    /// True once the guest no longer runs.
    pub fn is_off(self) -> bool {
        matches!(self, Self::ShutOff | Self::Crashed)
    }
}

/// How `stop` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The guest was not running.
    AlreadyOff,
    /// The guest honoured the ACPI shutdown within the grace period.
    ShutDown,
    /// The grace period passed and the domain was destroyed.
    Destroyed,
}

struct ConnectionInner {
    uri: String,
    hypervisor: Hypervisor,
    connect: Connect,
}

/// An open libvirt connection, shared by all VMs made on it.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<ConnectionInner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("uri", &self.inner.uri)
            .finish()
    }
}

impl Connection {
    /// Opens `uri` (`qemu:///system`, `qemu:///session`, `vbox:///session`, `test:///default`).
    pub async fn open(uri: &str) -> Result<Self, VmError> {
        let hypervisor = Hypervisor::from_uri(uri)?;
        // libvirt prints every error to stderr by default; ours are returned as values.
        static QUIET: std::sync::Once = std::sync::Once::new();
        QUIET.call_once(virt::error::clear_error_callback);
        let owned = uri.to_owned();
        let connect = tokio::task::spawn_blocking(move || Connect::open(Some(&owned)))
            .await
            .map_err(|e| VmError::Task {
                vm: uri.to_owned(),
                detail: e.to_string(),
            })?
            .map_err(|source| VmError::Connect {
                uri: uri.to_owned(),
                source,
            })?;
        Ok(Self {
            inner: Arc::new(ConnectionInner {
                uri: uri.to_owned(),
                hypervisor,
                connect,
            }),
        })
    }

    /// The URI this connection was opened with.
    pub fn uri(&self) -> &str {
        &self.inner.uri
    }

    /// The libvirt driver behind the URI.
    pub fn hypervisor(&self) -> Hypervisor {
        self.inner.hypervisor
    }

    /// Runs `f` with the raw connection on the blocking pool.
    async fn blocking<T, F>(&self, label: &str, f: F) -> Result<T, VmError>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> Result<T, VmError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner.connect))
            .await
            .map_err(|e| VmError::Task {
                vm: label.to_owned(),
                detail: e.to_string(),
            })?
    }

    /// The accelerator QEMU guests get on this connection for `choice` (see `accel`).
    pub async fn accelerator(
        &self,
        choice: AcceleratorChoice,
    ) -> Result<(Accelerator, String), VmError> {
        if choice != AcceleratorChoice::Auto || self.hypervisor() != Hypervisor::Qemu {
            return Ok(accel::decide(choice, accel::host_kvm(), false));
        }
        let uri = self.uri().to_owned();
        self.blocking(&uri.clone(), move |connect| {
            let host = accel::host_kvm();
            let capabilities = connect
                .capabilities()
                .map_err(|source| VmError::Connect { uri, source })?;
            Ok(accel::decide(
                choice,
                host,
                accel::capabilities_offer_kvm(&capabilities),
            ))
        })
        .await
    }

    /// Names of all domains (running or only defined) on this connection.
    pub async fn domain_names(&self) -> Result<Vec<String>, VmError> {
        let uri = self.uri().to_owned();
        self.blocking(&uri.clone(), move |connect| {
            let domains = connect
                .list_all_domains(0)
                .map_err(|source| VmError::Connect { uri, source })?;
            Ok(domains.iter().filter_map(|d| d.name().ok()).collect())
        })
        .await
    }

    /// Destroys and undefines every domain whose name starts with `prefix` (what a killed
    /// worker with that prefix left behind); returns their names.
    pub async fn cleanup_stale(&self, prefix: &str) -> Result<Vec<String>, VmError> {
        let mut removed = Vec::new();
        for name in self.domain_names().await? {
            if name.starts_with(prefix) {
                let vm = VirtualMachine::attach(self, &name);
                vm.undefine().await?;
                info!(vm = %name, "Removed stale domain");
                removed.push(name);
            }
        }
        Ok(removed)
    }
}

/// What `cleanup_leftovers` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Domains destroyed and undefined.
    pub domains: Vec<String>,
    /// Overlay files deleted.
    pub overlays: Vec<PathBuf>,
}

/// Removes what a killed worker left behind (call at startup, before the pool is used):
/// domains whose names start with `prefix`, and `prefix*.qcow2` overlays in `overlay_dir`.
/// Base images are never touched, so nothing else needs repair.
pub async fn cleanup_leftovers(
    connection: &Connection,
    overlay_dir: &Path,
    prefix: &str,
) -> Result<Leftovers, VmError> {
    let domains = connection.cleanup_stale(prefix).await?;
    let overlays = overlay::stale_overlays(overlay_dir, prefix);
    for path in &overlays {
        tokio::fs::remove_file(path)
            .await
            .map_err(|source| VmError::Io {
                path: path.clone(),
                source,
            })?;
        info!(overlay = %path.display(), "Removed stale overlay");
    }
    Ok(Leftovers { domains, overlays })
}

/// One libvirt domain driven by PyTI.
#[derive(Debug, Clone)]
pub struct VirtualMachine {
    connection: Connection,
    name: String,
    accelerator: Option<Accelerator>,
}

fn libvirt(operation: &'static str, vm: &str) -> impl FnOnce(virt::error::Error) -> VmError {
    let vm = vm.to_owned();
    move |source| VmError::Libvirt {
        operation,
        vm,
        source,
    }
}

impl VirtualMachine {
    /// Defines (persistently, not started) the VM described by `config` on `connection`,
    /// choosing KVM or TCG for QEMU connections.
    pub async fn define(connection: &Connection, config: &VmConfig) -> Result<Self, VmError> {
        config.validate()?;
        // Collected, not a lazy iterator: closures in a chain held across an await make
        // the future fail the `Send` bound of `tokio::spawn`.
        let files: Vec<(&'static str, PathBuf)> = config
            .hard_disk
            .iter()
            .chain(&config.extra_disks)
            .map(|d| ("disk image", d.path.clone()))
            .chain(config.iso.iter().map(|p| ("ISO image", p.clone())))
            .chain(config.kernel.iter().flat_map(|k| {
                std::iter::once(("kernel", k.kernel.clone()))
                    .chain(k.initrd.iter().map(|p| ("initrd", p.clone())))
            }))
            .collect();
        if connection.hypervisor() != Hypervisor::Test {
            for (what, path) in files {
                if !path.exists() {
                    return Err(VmError::MissingFile { what, path });
                }
            }
        }
        let (accelerator, reason) = connection.accelerator(config.accelerator).await?;
        let domain_type = xml::DomainType::for_hypervisor(connection.hypervisor(), accelerator);
        let definition = xml::domain_xml(config, domain_type);
        let mut vm = Self::define_from_xml(connection, definition).await?;
        if connection.hypervisor() == Hypervisor::Qemu {
            info!(vm = %vm.name, ?accelerator, %reason, "Accelerator chosen");
            vm.accelerator = Some(accelerator);
        }
        Ok(vm)
    }

    /// Defines the VM from a libvirt domain XML file (the seed's second way to make one).
    pub async fn define_from_xml_file(
        connection: &Connection,
        path: &Path,
    ) -> Result<Self, VmError> {
        let definition = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| VmError::Io {
                path: path.to_owned(),
                source,
            })?;
        Self::define_from_xml(connection, definition).await
    }

    /// Defines the VM from domain XML text.
    pub async fn define_from_xml(
        connection: &Connection,
        definition: String,
    ) -> Result<Self, VmError> {
        let label = connection.uri().to_owned();
        let name = connection
            .blocking(connection.uri(), move |connect| {
                let domain = connect
                    .define_domain_xml(&definition)
                    .map_err(libvirt("define", &label))?;
                domain.name().map_err(libvirt("name", &label))
            })
            .await?;
        Ok(Self::attach(connection, &name))
    }

    /// A handle on an existing domain by name (nothing is checked until it is used).
    pub fn attach(connection: &Connection, name: &str) -> Self {
        Self {
            connection: connection.clone(),
            name: name.to_owned(),
            accelerator: None,
        }
    }

    /// The domain name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The accelerator chosen at `define` (QEMU only).
    pub fn accelerator(&self) -> Option<Accelerator> {
        self.accelerator
    }

    /// Runs `f` on the domain, on the blocking pool.
    async fn with_domain<T, F>(&self, f: F) -> Result<T, VmError>
    where
        T: Send + 'static,
        F: FnOnce(&Domain, &str) -> Result<T, VmError> + Send + 'static,
    {
        let name = self.name.clone();
        self.connection
            .blocking(&self.name, move |connect| {
                let domain = connect
                    .lookup_domain_by_name(&name)
                    .map_err(libvirt("look up", &name))?;
                f(&domain, &name)
            })
            .await
    }

    /// Boots the VM.
    pub async fn start(&self) -> Result<(), VmError> {
        self.with_domain(|domain, name| {
            domain.create().map(|_| ()).map_err(libvirt("start", name))
        })
        .await?;
        info!(vm = %self.name, "VM started");
        Ok(())
    }

    /// The current power state.
    pub async fn state(&self) -> Result<VmState, VmError> {
        self.with_domain(|domain, name| {
            let (state, _reason) = domain.state().map_err(libvirt("read the state of", name))?;
            Ok(VmState::from_libvirt(state.unwrap_or(DomainState::NoState)))
        })
        .await
    }

    /// Pulls the plug; a VM that is not running is left as it is.
    pub async fn destroy(&self) -> Result<(), VmError> {
        self.with_domain(|domain, name| {
            if domain.is_active().map_err(libvirt("query", name))? {
                domain.destroy().map_err(libvirt("destroy", name))?;
            }
            Ok(())
        })
        .await
    }

    /// Asks the guest to shut down (ACPI) and destroys it if it is still running after `grace`.
    pub async fn stop(&self, grace: Duration) -> Result<StopOutcome, VmError> {
        if self.state().await?.is_off() {
            return Ok(StopOutcome::AlreadyOff);
        }
        let asked = self
            .with_domain(|domain, name| domain.shutdown().map_err(libvirt("shut down", name)))
            .await;
        if let Err(error) = asked {
            warn!(vm = %self.name, %error, "ACPI shutdown refused; destroying");
        } else if self.poll_until_off(Instant::now() + grace).await? {
            return Ok(StopOutcome::ShutDown);
        }
        self.destroy().await?;
        Ok(StopOutcome::Destroyed)
    }

    /// Polls until the guest is off (true) or `deadline` passes (false).
    async fn poll_until_off(&self, deadline: Instant) -> Result<bool, VmError> {
        loop {
            if self.state().await?.is_off() {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
        }
    }

    /// Waits for the guest to power itself off; past `deadline` the VM is destroyed and
    /// `VmError::Timeout` returned (the wall-time cap of a run).
    pub async fn wait_for_poweroff(&self, deadline: Instant) -> Result<(), VmError> {
        let started = Instant::now();
        if self.poll_until_off(deadline).await? {
            return Ok(());
        }
        self.destroy().await?;
        warn!(vm = %self.name, "VM passed its deadline and was destroyed");
        Err(VmError::Timeout {
            vm: self.name.clone(),
            waited: started.elapsed(),
        })
    }

    /// Takes a named libvirt snapshot (internal, so the image must be qcow2 for QEMU).
    pub async fn create_snapshot(&self, name: &str, description: &str) -> Result<(), VmError> {
        let definition = xml::snapshot_xml(name, description);
        self.with_domain(move |domain, vm| {
            domain
                .create_snapshot_xml(&definition, 0)
                .map(|_| ())
                .map_err(libvirt("snapshot", vm))
        })
        .await
    }

    /// Reverts the VM to the named snapshot (the seed's `rollback`).
    pub async fn rollback(&self, name: &str) -> Result<(), VmError> {
        let snapshot = name.to_owned();
        self.with_domain(move |domain, vm| {
            let found = Domain::lookup_snapshot_by_name(domain, &snapshot, 0)
                .map_err(libvirt("find the snapshot of", vm))?;
            found.revert(0).map_err(libvirt("revert", vm))
        })
        .await
    }

    /// Names of the VM's snapshots.
    pub async fn list_snapshots(&self) -> Result<Vec<String>, VmError> {
        self.with_domain(|domain, vm| {
            let snapshots = domain
                .list_all_snapshots(0)
                .map_err(libvirt("list the snapshots of", vm))?;
            Ok(snapshots.iter().filter_map(|s| s.name().ok()).collect())
        })
        .await
    }

    /// Destroys the VM if it runs and removes its definition and snapshot metadata
    /// (disk files are the caller's). A domain that no longer exists is fine.
    pub async fn undefine(&self) -> Result<(), VmError> {
        let name = self.name.clone();
        self.connection
            .blocking(&self.name, move |connect| {
                let Ok(domain) = connect.lookup_domain_by_name(&name) else {
                    return Ok(());
                };
                if domain.is_active().map_err(libvirt("query", &name))? {
                    domain.destroy().map_err(libvirt("destroy", &name))?;
                }
                if domain.is_persistent().unwrap_or(false) {
                    let flags = virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                        | virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE;
                    domain
                        .undefine_flags(flags)
                        .map_err(libvirt("undefine", &name))?;
                }
                Ok(())
            })
            .await
    }
}
