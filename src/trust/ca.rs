//! The farm CA (`pyti ca`): one self-signed CA per farm, and the certificates it issues.
//! The principal is carried in the certificate's DNS names, so any TLS stack checks it
//! and nothing else needs to be trusted:
//!
//! - the master: `master.pyti`
//! - a worker: `NAME.worker.pyti`
//! - a client: `NAME.client.pyti` and `ROLE.role.pyti`
//!
//! plus the host names and addresses given with `--dns`/`--ip`, for tools that check
//! the host they dialled. Keys are written with mode 0600; existing files are never
//! overwritten.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::{check_name, principal_from_names, Principal, Role, MASTER_NAME};

/// What a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// The farm's master.
    Master,
    /// The worker named so.
    Worker(String),
    /// A client with a role.
    Client(String, Role),
    /// RabbitMQ's server certificate for `amqps://` (`broker.pyti`): it names no farm
    /// principal, so it can act as nothing in the farm.
    Broker,
}

impl Subject {
    /// Its farm DNS names.
    pub fn names(&self) -> Vec<String> {
        match self {
            Subject::Master => vec![MASTER_NAME.to_owned()],
            Subject::Worker(name) => vec![format!("{name}.worker.pyti")],
            Subject::Client(name, role) => {
                vec![format!("{name}.client.pyti"), format!("{role}.role.pyti")]
            }
            Subject::Broker => vec!["broker.pyti".to_owned()],
        }
    }

    /// The file stem of its certificate and key in the CA directory.
    pub fn file_stem(&self) -> String {
        match self {
            Subject::Master => "master".to_owned(),
            Subject::Worker(name) => format!("worker-{name}"),
            Subject::Client(name, _) => format!("client-{name}"),
            Subject::Broker => "broker".to_owned(),
        }
    }
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct Issue {
    /// Who.
    pub subject: Subject,
    /// More DNS names (the host names clients dial).
    pub dns: Vec<String>,
    /// IP addresses clients dial.
    pub ips: Vec<IpAddr>,
    /// Days it stays valid.
    pub days: u32,
}

const CA_NAME: &str = "PyTI farm CA";

fn ca_params(days: u32) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    Ok(params)
}

/// Writes `contents` to a new file `path` with `mode`; an existing file is an error.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            format!(
                "cannot create {}: {e} (an existing file is never overwritten)",
                path.display()
            )
        })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `DIR/ca.pem` and `DIR/ca.key`: a new farm CA valid for `days`.
pub fn init(dir: &Path, days: u32) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = ca_params(days)?
        .self_signed(&key)
        .map_err(|e| e.to_string())?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok((cert_path, key_path))
}

/// Issues a certificate from the CA in `dir` (made by [`init`]): `DIR/<stem>.pem` and
/// `DIR/<stem>.key`.
pub fn issue(dir: &Path, what: &Issue) -> Result<(PathBuf, PathBuf), String> {
    if let Subject::Worker(name) | Subject::Client(name, _) = &what.subject {
        check_name(name)?;
    }
    let ca_key_path = dir.join("ca.key");
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(|e| {
        format!(
            "cannot read the CA key {}: {e} (create the CA with `pyti ca init {}`)",
            ca_key_path.display(),
            dir.display()
        )
    })?;
    let ca_key =
        KeyPair::from_pem(&ca_key_pem).map_err(|e| format!("{}: {e}", ca_key_path.display()))?;
    // The issuer: the CA's name and key, as `init` made them.
    let issuer = ca_params(1)?
        .self_signed(&ca_key)
        .map_err(|e| e.to_string())?;
    let mut names = what.subject.names();
    names.extend(what.dns.iter().cloned());
    let mut params = CertificateParams::new(names).map_err(|e| e.to_string())?;
    params
        .subject_alt_names
        .extend(what.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, what.subject.names()[0].clone());
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(what.days));
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params
        .signed_by(&key, &issuer, &ca_key)
        .map_err(|e| e.to_string())?;
    let stem = what.subject.file_stem();
    let (cert_path, key_path) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok((cert_path, key_path))
}

/// The principal and every DNS name of the PEM certificate at `path`.
pub fn info(path: &Path) -> Result<(Principal, Vec<String>), String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(path)
        .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| format!("{}: unreadable certificate: {e}", path.display()))?;
    let names: Vec<String> = cert.valid_dns_names().map(str::to_owned).collect();
    Ok((
        principal_from_names(names.iter().map(String::as_str)),
        names,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_farm_ca_issues_identities_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), 30).unwrap();
        assert!(
            init(dir.path(), 30).is_err(),
            "an existing CA is not overwritten"
        );
        let (cert, key) = issue(
            dir.path(),
            &Issue {
                subject: Subject::Client("ci".into(), Role::Submit),
                dns: vec![],
                ips: vec![],
                days: 1,
            },
        )
        .unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let (principal, names) = info(&cert).unwrap();
        assert_eq!(
            principal,
            Principal::Client {
                name: "ci".into(),
                role: Role::Submit
            }
        );
        assert_eq!(names, ["ci.client.pyti", "submit.role.pyti"]);
        let bad = Issue {
            subject: Subject::Worker("No_Good".into()),
            dns: vec![],
            ips: vec![],
            days: 1,
        };
        assert!(issue(dir.path(), &bad).unwrap_err().contains("No_Good"));
    }
}
