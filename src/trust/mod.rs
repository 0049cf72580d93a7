//! Who may call what (DESIGN.md §9): the farm's identities, the one table from gRPC
//! method to allowed principals, and the one tower layer that enforces it on every
//! server (master and worker alike).
//!
//! A principal comes from the peer's certificate (issued by the farm CA, `pyti ca`,
//! the role and name carried in its DNS names) or from a bearer token (`pyti token`),
//! never from a request field. A server with no TLS configured on a loopback address
//! runs open ([`Principal::Open`]): one machine, as before there was any of this.

pub mod ca;
pub mod layer;
pub mod tls;
pub mod token;

use std::fmt;
use std::net::SocketAddr;

pub use layer::{AuthLayer, Authenticator, TokenLookup};
pub use tls::TlsFiles;

/// The DNS suffix of every farm identity.
pub const SUFFIX: &str = "pyti";
/// The DNS name of the master's certificate (what workers and clients verify).
pub const MASTER_NAME: &str = "master.pyti";

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Look at jobs, results and workers.
    Read,
    /// And submit and cancel jobs.
    Submit,
    /// And drain workers, cancel anything, manage tokens.
    Admin,
}

impl Role {
    /// Its name in certificates, tokens and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Submit => "submit",
            Role::Admin => "admin",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "read" => Ok(Role::Read),
            "submit" => Ok(Role::Submit),
            "admin" => Ok(Role::Admin),
            other => Err(format!("{other:?} is not a role: read, submit or admin")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling, as the auth layer established it (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A server running open (loopback, no TLS configured): anyone may do anything.
    Open,
    /// The master's certificate.
    Master,
    /// A worker's certificate naming it.
    Worker(String),
    /// A client certificate or token with its name and role.
    Client {
        /// Certificate or token name.
        name: String,
        /// What it may do.
        role: Role,
    },
    /// No credentials (or none that count).
    Anonymous,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Open => f.write_str("anyone (open server)"),
            Principal::Master => f.write_str("the master"),
            Principal::Worker(name) => write!(f, "worker {name}"),
            Principal::Client { name, role } => write!(f, "client {name} (role {role})"),
            Principal::Anonymous => f.write_str("an anonymous caller"),
        }
    }
}

impl Principal {
    /// Who a job this principal submits records as its submitter: `client:NAME` for a
    /// client certificate or token (the same name is the same client), `local` for
    /// anyone on an open server.
    pub fn owner(&self) -> String {
        match self {
            Principal::Open => "local".to_owned(),
            Principal::Master => "master".to_owned(),
            Principal::Worker(name) => format!("worker:{name}"),
            Principal::Client { name, .. } => format!("client:{name}"),
            Principal::Anonymous => "anonymous".to_owned(),
        }
    }

    /// Whether this principal may cancel a job `owner` (see [`Principal::owner`])
    /// submitted: on an open server and as an admin any job, as a `submit` client its
    /// own.
    pub fn may_cancel(&self, owner: &str) -> bool {
        match self {
            Principal::Open => true,
            Principal::Client { role, .. } => {
                *role == Role::Admin || (*role == Role::Submit && self.owner() == owner)
            }
            _ => false,
        }
    }

    /// The worker this principal may act as: the one its certificate names, or any
    /// (`None`) on an open server. `Err` for every other principal.
    pub fn worker_name(&self) -> Result<Option<&str>, String> {
        match self {
            Principal::Open => Ok(None),
            Principal::Worker(name) => Ok(Some(name)),
            other => Err(format!("{other} is not a worker")),
        }
    }
}

/// Who may call a method: the one table, deny by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Anyone, even without credentials.
    Everyone,
    /// Any authenticated principal.
    Authenticated,
    /// Clients with at least this role (and the master, for the worker's control plane).
    ClientRole(Role),
    /// Workers only.
    Workers,
    /// The master, and admin clients.
    MasterOrAdmin,
}

/// Every method of every PyTI server, and who may call it. A method not listed is
/// refused to everyone but an open server.
pub const METHODS: &[(&str, Allowed)] = &[
    ("/grpc.health.v1.Health/Check", Allowed::Everyone),
    ("/grpc.health.v1.Health/Watch", Allowed::Everyone),
    // Reflection only describes the protocol (public in the repository), but an
    // unauthenticated caller has no use for it: any authenticated principal.
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Allowed::Authenticated,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Allowed::Authenticated,
    ),
    (
        "/pyti.v1.JobService/GetJob",
        Allowed::ClientRole(Role::Read),
    ),
    (
        "/pyti.v1.JobService/ListJobs",
        Allowed::ClientRole(Role::Read),
    ),
    (
        "/pyti.v1.JobService/WatchJob",
        Allowed::ClientRole(Role::Read),
    ),
    (
        "/pyti.v1.JobService/GetResults",
        Allowed::ClientRole(Role::Read),
    ),
    (
        "/pyti.v1.JobService/SubmitJob",
        Allowed::ClientRole(Role::Submit),
    ),
    (
        "/pyti.v1.JobService/CancelJob",
        Allowed::ClientRole(Role::Submit),
    ),
    ("/pyti.v1.WorkerRegistry/Register", Allowed::Workers),
    ("/pyti.v1.WorkerRegistry/StartJob", Allowed::Workers),
    ("/pyti.v1.WorkerRegistry/RenewLease", Allowed::Workers),
    ("/pyti.v1.WorkerRegistry/ReportResults", Allowed::Workers),
    (
        "/pyti.v1.WorkerRegistry/ListWorkers",
        Allowed::ClientRole(Role::Read),
    ),
    (
        "/pyti.v1.WorkerRegistry/DrainWorker",
        Allowed::ClientRole(Role::Admin),
    ),
    (
        "/pyti.v1.TokenService/CreateToken",
        Allowed::ClientRole(Role::Admin),
    ),
    (
        "/pyti.v1.TokenService/RevokeToken",
        Allowed::ClientRole(Role::Admin),
    ),
    (
        "/pyti.v1.TokenService/ListTokens",
        Allowed::ClientRole(Role::Admin),
    ),
    ("/pyti.v1.WorkerControl/GetCapacity", Allowed::MasterOrAdmin),
    (
        "/pyti.v1.WorkerControl/WatchCapacity",
        Allowed::MasterOrAdmin,
    ),
    ("/pyti.v1.WorkerControl/ListVms", Allowed::MasterOrAdmin),
    ("/pyti.v1.WorkerControl/CancelJob", Allowed::MasterOrAdmin),
    ("/pyti.v1.WorkerControl/Drain", Allowed::MasterOrAdmin),
];

/// Whether `principal` may call `method` (a gRPC path, `/package.Service/Method`).
pub fn allowed(method: &str, principal: &Principal) -> bool {
    if *principal == Principal::Open {
        return true;
    }
    let Some((_, rule)) = METHODS.iter().find(|(m, _)| *m == method) else {
        return false;
    };
    match (rule, principal) {
        (Allowed::Everyone, _) => true,
        (_, Principal::Anonymous) => false,
        (Allowed::Authenticated, _) => true,
        (Allowed::ClientRole(needed), Principal::Client { role, .. }) => role >= needed,
        (Allowed::Workers, Principal::Worker(_)) => true,
        (Allowed::MasterOrAdmin, Principal::Master) => true,
        (Allowed::MasterOrAdmin, Principal::Client { role, .. }) => *role == Role::Admin,
        _ => false,
    }
}

/// Whether a server on `addr` may run open (no TLS, no tokens): only on loopback.
/// `0.0.0.0` and `::` listen on every interface, so they are not loopback.
pub fn may_run_open(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The refusal of a server on `addr` that has no TLS configured.
pub fn open_refusal(addr: SocketAddr, what: &str) -> String {
    format!(
        "{what} would listen on {addr}, which is not a loopback address, with no TLS: \
         anyone who reaches it could register workers, forge results and cancel jobs. \
         Create the farm's certificates with `pyti ca init DIR` and `pyti ca issue`, and \
         set [tls] cert, key and ca in the configuration; or listen on 127.0.0.1; or set \
         [config] insecure = true to run unauthenticated anyway"
    )
}

/// Whether `what` may serve on `addr`: with TLS anywhere; without, on loopback, or
/// elsewhere only when `insecure` says so, with a loud warning.
pub fn check_listen(addr: SocketAddr, tls: bool, insecure: bool, what: &str) -> Result<(), String> {
    if tls || may_run_open(addr) {
        return Ok(());
    }
    if insecure {
        tracing::warn!(
            %addr,
            "INSECURE: {what} serves {addr} without TLS or authentication ([config] insecure = true): \
             anyone who reaches it can register workers, forge results, cancel and drain. \
             Use `pyti ca init` and [tls] instead."
        );
        return Ok(());
    }
    Err(open_refusal(addr, what))
}

/// Is `name` usable as a farm identity name (a DNS label: a-z, 0-9, '-', at most 63)?
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} cannot name a farm identity: use 1 to 63 of a-z, 0-9 and '-' (not at either end)"
        ))
    }
}

/// The principal the DNS names of a farm certificate make (see [`ca`]).
pub fn principal_from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Principal {
    let mut found = Vec::new();
    let mut role = None;
    for name in names {
        let name = name.to_ascii_lowercase();
        if name == MASTER_NAME {
            found.push(Principal::Master);
        } else if let Some(worker) = name.strip_suffix(".worker.pyti") {
            if check_name(worker).is_ok() {
                found.push(Principal::Worker(worker.to_owned()));
            }
        } else if let Some(client) = name.strip_suffix(".client.pyti") {
            if check_name(client).is_ok() {
                found.push(Principal::Client {
                    name: client.to_owned(),
                    role: Role::Read,
                });
            }
        } else if let Some(r) = name.strip_suffix(".role.pyti") {
            role = Role::parse(r).ok();
        }
    }
    // Exactly one identity, or none at all: a certificate naming two is not ours.
    match (found.len(), found.pop()) {
        (1, Some(Principal::Client { name, .. })) => match role {
            Some(role) => Principal::Client { name, role },
            None => Principal::Anonymous,
        },
        (1, Some(principal)) => principal,
        _ => Principal::Anonymous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(role: Role) -> Principal {
        Principal::Client {
            name: "ci".into(),
            role,
        }
    }

    #[test]
    fn the_table_denies_by_default_and_ranks_roles() {
        let submit = "/pyti.v1.JobService/SubmitJob";
        let drain = "/pyti.v1.WorkerRegistry/DrainWorker";
        let report = "/pyti.v1.WorkerRegistry/ReportResults";
        assert!(!allowed(submit, &Principal::Anonymous));
        assert!(!allowed(submit, &client(Role::Read)));
        assert!(allowed(submit, &client(Role::Submit)));
        assert!(!allowed(drain, &client(Role::Submit)));
        assert!(allowed(drain, &client(Role::Admin)));
        assert!(!allowed(report, &client(Role::Admin)));
        assert!(allowed(report, &Principal::Worker("w".into())));
        assert!(!allowed(
            "/pyti.v1.WorkerControl/Drain",
            &Principal::Worker("w".into())
        ));
        assert!(allowed("/pyti.v1.WorkerControl/Drain", &Principal::Master));
        assert!(allowed(
            "/grpc.health.v1.Health/Check",
            &Principal::Anonymous
        ));
        assert!(!allowed(
            "/pyti.v1.JobService/Unknown",
            &client(Role::Admin)
        ));
        assert!(allowed("/pyti.v1.JobService/Unknown", &Principal::Open));
    }

    #[test]
    fn certificate_names_make_one_principal() {
        assert_eq!(principal_from_names(["master.pyti"]), Principal::Master);
        assert_eq!(
            principal_from_names(["w1.worker.pyti", "host.example"]),
            Principal::Worker("w1".into())
        );
        assert_eq!(
            principal_from_names(["ci.client.pyti", "submit.role.pyti"]),
            client(Role::Submit)
        );
        assert_eq!(
            principal_from_names(["ci.client.pyti"]),
            Principal::Anonymous
        );
        assert_eq!(
            principal_from_names(["master.pyti", "w1.worker.pyti"]),
            Principal::Anonymous
        );
        assert_eq!(
            principal_from_names(["broker.pyti", "localhost"]),
            Principal::Anonymous,
            "RabbitMQ's certificate is nobody in the farm"
        );
        assert!(check_name("Bad_Name").is_err());
        assert!(check_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn submit_clients_cancel_their_own_jobs_only() {
        let alice = Principal::Client {
            name: "alice".into(),
            role: Role::Submit,
        };
        let bob = Principal::Client {
            name: "bob".into(),
            role: Role::Submit,
        };
        let owner = alice.owner();
        assert!(alice.may_cancel(&owner));
        assert!(!bob.may_cancel(&owner));
        assert!(!bob.may_cancel(""), "a job recorded before owners were");
        assert!(client(Role::Admin).may_cancel(&owner));
        assert!(!client(Role::Read).may_cancel(&client(Role::Read).owner()));
        assert!(Principal::Open.may_cancel(&owner));
        assert!(!Principal::Worker("alice".into()).may_cancel(&owner));
        assert_ne!(Principal::Worker("alice".into()).owner(), owner);
    }

    #[test]
    fn only_loopback_runs_open() {
        assert!(may_run_open("127.0.0.1:1".parse().unwrap()));
        assert!(may_run_open("[::1]:1".parse().unwrap()));
        assert!(!may_run_open("0.0.0.0:1".parse().unwrap()));
        assert!(!may_run_open("10.1.2.3:1".parse().unwrap()));
    }
}
