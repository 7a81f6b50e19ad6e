//! Deployment keys: a CA and one certificate and key per role (rcgen), written to and read from
//! a key directory.
//!
//! Directory layout: `ca.pem` (the deployment CA certificate, given to everyone), `ca.key` (the
//! CA's private key: keep it offline), and `<stem>.pem` / `<stem>.key` per role, with the stems
//! of [`Role::file_stem`]. Private keys are written with mode 0600.
//!
//! Certificates are valid from an hour before their issue (clocks of hosts differ a little) for
//! `[keys] validity_days` of the deployment file (default a year); the CA for
//! `ca_validity_days` (default ten years), and no certificate outlives its CA. With the CA's
//! key at hand, [`add_keys`] issues keys for roles that have none (a data owner added to the
//! deployment file) and [`renew_keys`] issues a role new ones, both leaving every other role's
//! keys as they are.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;

use super::revocation::Fingerprint;
use super::{Deployment, KeySettings, Role};
use crate::error::{EngineError, Result};
use crate::io::OutputFile;

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct Credentials {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PEM, PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<secret>")
            .finish()
    }
}

/// A deployment's CA and every role's credentials.
#[derive(Clone, Debug)]
pub struct KeySet {
    /// The deployment's name (bound into every certificate).
    pub deployment: String,
    /// The CA's certificate and key.
    pub ca: Credentials,
    /// Each role's credentials, in [`Deployment::roles`] order.
    pub members: Vec<(Role, Credentials)>,
}

impl KeySet {
    /// The credentials of `role`.
    pub fn credentials(&self, role: &Role) -> Option<&Credentials> {
        self.members.iter().find(|(r, _)| r == role).map(|(_, c)| c)
    }
}

fn rc(e: rcgen::Error) -> EngineError {
    EngineError::Invalid(format!("certificate generation failed: {e}"))
}

/// How far back a certificate's validity starts (clocks of hosts differ a little).
const BACKDATE: time::Duration = time::Duration::hours(1);

/// The CA's parameters for `deployment`.
fn ca_params(deployment: &str, not_after: OffsetDateTime) -> Result<CertificateParams> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca_common_name(deployment));
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = OffsetDateTime::now_utc() - BACKDATE;
    ca_params.not_after = not_after;
    Ok(ca_params)
}

fn ca_common_name(deployment: &str) -> String {
    format!("secure-serving deployment CA {deployment}")
}

/// Issue `role` a fresh key and a certificate valid until `not_after`, signed by `issuer`.
fn issue(
    deployment: &str,
    role: &Role,
    issuer: &Issuer<'_, KeyPair>,
    not_after: OffsetDateTime,
) -> Result<Credentials> {
    let name = role.subject_name(deployment);
    let mut params = CertificateParams::new(vec![name.clone()]).map_err(rc)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = OffsetDateTime::now_utc() - BACKDATE;
    params.not_after = not_after;
    let key = KeyPair::generate().map_err(rc)?;
    let cert = params.signed_by(&key, issuer).map_err(rc)?;
    Ok(Credentials {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Days from now.
fn days_from_now(days: u32) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::days(days.into())
}

/// Generate a fresh CA and a certificate for each of `roles` (OS randomness), with the default
/// validity ([`KeySettings::default`]: a year, the CA ten).
///
/// Each certificate carries its role's [`Role::subject_name`] as its only DNS name and is valid
/// for both TLS client and server authentication.
pub fn generate_keys(deployment: &str, roles: &[Role]) -> Result<KeySet> {
    generate_keys_with(deployment, roles, &KeySettings::default())
}

/// [`generate_keys`] with the validity periods of `settings`.
pub fn generate_keys_with(
    deployment: &str,
    roles: &[Role],
    settings: &KeySettings,
) -> Result<KeySet> {
    let ca_key = KeyPair::generate().map_err(rc)?;
    let ca_until = days_from_now(settings.ca_validity_days);
    let ca_params = ca_params(deployment, ca_until)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(rc)?;
    let ca = Credentials {
        cert_pem: ca_cert.pem(),
        key_pem: ca_key.serialize_pem(),
    };
    let issuer = Issuer::new(ca_params, ca_key);
    let until = days_from_now(settings.validity_days).min(ca_until);
    let mut members = Vec::with_capacity(roles.len());
    for role in roles {
        members.push((role.clone(), issue(deployment, role, &issuer, until)?));
    }
    Ok(KeySet {
        deployment: deployment.to_string(),
        ca,
        members,
    })
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Write `data` to `path` atomically ([`OutputFile`]: a fresh, exclusively created temporary
/// file, then a rename) with `mode` permissions set before the rename.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let out = OutputFile::create(path)?;
    out.set_mode(mode)?;
    out.commit(|w| w.write_all(data))
}

/// Generate keys for every role of `deployment` and write them to `dir` (created if missing).
///
/// Refuses, before writing anything, if any of the files exists, unless `force`. Returns the
/// paths written.
pub fn write_keys(deployment: &Deployment, dir: &Path, force: bool) -> Result<Vec<PathBuf>> {
    let roles = deployment.roles();
    let mut plan = vec![dir.join("ca.pem"), dir.join("ca.key")];
    for r in &roles {
        plan.push(dir.join(format!("{}.pem", r.file_stem())));
        plan.push(dir.join(format!("{}.key", r.file_stem())));
    }
    if !force {
        let existing: Vec<String> = plan
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(EngineError::Invalid(format!(
                "refusing to overwrite existing keys ({}); pass --force to replace them",
                existing.join(", ")
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    let keys = generate_keys_with(&deployment.name, &roles, &deployment.keys)?;
    let mut files = vec![
        (keys.ca.cert_pem.clone(), 0o644),
        (keys.ca.key_pem.clone(), 0o600),
    ];
    for (_, c) in &keys.members {
        files.push((c.cert_pem.clone(), 0o644));
        files.push((c.key_pem.clone(), 0o600));
    }
    for (path, (data, mode)) in plan.iter().zip(files) {
        write_atomic(path, data.as_bytes(), mode)?;
        tracing::info!(path = %path.display(), "wrote");
    }
    Ok(plan)
}

/// Read the CA certificate and `role`'s credentials from a key directory written by
/// [`write_keys`]. Returns `(ca_cert_pem, credentials)`. A missing directory or file is
/// reported with what to run.
pub fn read_credentials(dir: &Path, role: &Role) -> Result<(String, Credentials)> {
    if !dir.is_dir() {
        return Err(EngineError::Invalid(format!(
            "key directory {} does not exist: make the deployment's keys with `secure-serving \
             keygen --deployment DEPLOY.toml --out {}` (then give this host ca.pem and its own \
             .pem and .key), or say where they are with --keys DIR",
            dir.display(),
            dir.display()
        )));
    }
    let read = |name: String| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                EngineError::Invalid(format!(
                    "{} is missing: {role} needs ca.pem, {stem}.pem and {stem}.key from \
                     `secure-serving keygen` in {} (for a data owner added to the deployment \
                     file: `keygen --add`)",
                    p.display(),
                    dir.display(),
                    stem = role.file_stem()
                ))
            } else {
                io_at(&p)(source)
            }
        })
    };
    let ca = read("ca.pem".into())?;
    let cert_pem = read(format!("{}.pem", role.file_stem()))?;
    let key_pem = read(format!("{}.key", role.file_stem()))?;
    Ok((ca, Credentials { cert_pem, key_pem }))
}

/// The role `text` names in `deployment`: `alice`, `bob`, `dealer`, a data owner's name, or a
/// key file stem (`owner-NAME`, `client-NAME`).
pub fn find_role(deployment: &Deployment, text: &str) -> Result<Role> {
    let roles = deployment.roles();
    let found = roles.iter().find(|r| {
        r.file_stem() == text || matches!(r, Role::ModelOwner(n) | Role::Client(n) if n == text)
    });
    found.cloned().ok_or_else(|| {
        let names: Vec<String> = roles
            .iter()
            .map(|r| match r {
                Role::ModelOwner(n) | Role::Client(n) => n.clone(),
                r => r.file_stem(),
            })
            .collect();
        EngineError::Invalid(format!(
            "deployment '{}' has no role '{text}' (roles: {}); a new data owner is added to the \
             deployment file first, then given keys with `keygen --add`",
            deployment.name,
            names.join(", ")
        ))
    })
}

/// One certificate as `keygen` reports it.
#[derive(Clone, Debug)]
pub struct CertSummary {
    /// Its SHA-256 fingerprint (what `[keys] revoked` lists).
    pub fingerprint: Fingerprint,
    /// Its DNS names (a role's certificate has one, e.g. `clinic.client.demo`), or its common
    /// name when it has none (the CA).
    pub names: Vec<String>,
    /// Valid from (UTC).
    pub not_before: OffsetDateTime,
    /// Valid until (UTC).
    pub not_after: OffsetDateTime,
}

impl std::fmt::Display for CertSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}  {}  valid {} to {} (UTC)",
            self.fingerprint,
            self.names.join(", "),
            self.not_before.date(),
            self.not_after.date()
        )
    }
}

/// What a certificate (DER) says about itself.
pub fn summarize(der: &[u8]) -> Result<CertSummary> {
    let bad = |e: String| EngineError::Invalid(format!("not an X.509 certificate: {e}"));
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names = cert
            .subject()
            .iter_common_name()
            .filter_map(|c| c.as_str().ok().map(str::to_string))
            .collect();
    }
    Ok(CertSummary {
        fingerprint: Fingerprint::of_der(der),
        names,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// The first certificate of a PEM file and what it says about itself (for
/// `keygen --fingerprint`).
pub fn summarize_file(path: &Path) -> Result<CertSummary> {
    let text = std::fs::read(path).map_err(io_at(path))?;
    let der = CertificateDer::pem_slice_iter(&text)
        .next()
        .ok_or_else(|| {
            EngineError::Invalid(format!(
                "{}: no certificate (a PEM file with a CERTIFICATE block, such as \
                 keys/client-NAME.pem; not a .key file)",
                path.display()
            ))
        })?
        .map_err(|e| EngineError::Invalid(format!("{}: {e}", path.display())))?;
    summarize(&der).map_err(|e| match e {
        EngineError::Invalid(m) => EngineError::Invalid(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// One role's keys issued by [`add_keys`] or [`renew_keys`].
#[derive(Clone, Debug)]
pub struct Issued {
    /// The role.
    pub role: Role,
    /// Its certificate file.
    pub cert: PathBuf,
    /// Its private key file.
    pub key: PathBuf,
    /// The new certificate.
    pub summary: CertSummary,
}

/// The deployment CA of a key directory, ready to sign.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    not_after: OffsetDateTime,
}

/// Load the CA of `dir` (`ca.pem` and `ca.key`) and check that it is `deployment`'s, that the
/// key is the certificate's, and that it has not expired.
fn load_ca(deployment: &Deployment, dir: &Path) -> Result<Ca> {
    let invalid = EngineError::Invalid;
    let (pem_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if !pem_path.exists() {
        return Err(invalid(format!(
            "{} is missing: --add and --renew sign with the deployment's existing CA; to make a \
             new deployment, run `keygen` without them",
            pem_path.display()
        )));
    }
    if !key_path.exists() {
        return Err(invalid(format!(
            "{} is missing: --add and --renew sign with the CA's private key; run them on the \
             machine that keeps ca.key (offline), with --out naming its key directory (or make \
             a new CA and keys for every role with `keygen --force`)",
            key_path.display()
        )));
    }
    let pem = std::fs::read(&pem_path).map_err(io_at(&pem_path))?;
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| invalid(format!("{}: no certificate", pem_path.display())))?
        .map_err(|e| invalid(format!("{}: {e}", pem_path.display())))?;
    let key_pem = std::fs::read_to_string(&key_path).map_err(io_at(&key_path))?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| invalid(format!("{}: not a private key: {e}", key_path.display())))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
        invalid(format!(
            "{}: not an X.509 certificate: {e}",
            pem_path.display()
        ))
    })?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(invalid(format!(
            "{} is not the key of {} (they come from different keygen runs)",
            key_path.display(),
            pem_path.display()
        )));
    }
    let want = ca_common_name(&deployment.name);
    let cn: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .filter_map(|c| c.as_str().ok())
        .collect();
    if cn != [want.as_str()] {
        return Err(invalid(format!(
            "{} is not the CA of deployment '{}' (its name is '{}'): use the key directory made \
             for this deployment file",
            pem_path.display(),
            deployment.name,
            cn.join(", ")
        )));
    }
    let not_after = cert.validity().not_after.to_datetime();
    if not_after <= OffsetDateTime::now_utc() + time::Duration::days(1) {
        return Err(invalid(format!(
            "the deployment CA in {} expires on {} (UTC): make a new CA and keys for every role \
             with `keygen --force`",
            pem_path.display(),
            not_after.date()
        )));
    }
    let issuer = Issuer::from_ca_cert_der(&der, key).map_err(rc)?;
    Ok(Ca {
        issuer,
        der: der.into_owned(),
        not_after,
    })
}

/// Check that `cert_pem` chains to `ca` and names `role` (the same check a peer makes).
fn verify_issued(ca: &Ca, deployment: &str, role: &Role, cert_pem: &str) -> Result<()> {
    let bad = |e: String| EngineError::Invalid(format!("the certificate issued to {role}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).map_err(|e| bad(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| bad(e.to_string()))?;
    let der =
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let name =
        ServerName::try_from(role.subject_name(deployment)).map_err(|e| bad(e.to_string()))?;
    verifier
        .verify_server_cert(&der, &[], &name, &[], UnixTime::now())
        .map_err(|e| bad(format!("does not verify against the CA: {e}")))?;
    Ok(())
}

/// Issue `role` new keys with `ca` and write them over its files in `dir`.
fn issue_into(deployment: &Deployment, dir: &Path, ca: &Ca, role: &Role) -> Result<Issued> {
    let until = days_from_now(deployment.keys.validity_days).min(ca.not_after);
    let creds = issue(&deployment.name, role, &ca.issuer, until)?;
    verify_issued(ca, &deployment.name, role, &creds.cert_pem)?;
    let cert = dir.join(format!("{}.pem", role.file_stem()));
    let key = dir.join(format!("{}.key", role.file_stem()));
    write_atomic(&key, creds.key_pem.as_bytes(), 0o600)?;
    write_atomic(&cert, creds.cert_pem.as_bytes(), 0o644)?;
    tracing::info!(path = %cert.display(), "wrote");
    let der = CertificateDer::from_pem_slice(creds.cert_pem.as_bytes())
        .map_err(|e| EngineError::Invalid(format!("{}: {e}", cert.display())))?;
    Ok(Issued {
        role: role.clone(),
        cert,
        key,
        summary: summarize(&der)?,
    })
}

/// Issue keys, signed by the CA in `dir` (`ca.pem`, `ca.key`), to every role of `deployment`
/// that has none there (a data owner added to the deployment file). Other roles' files are not
/// touched. Refuses, before writing anything, a role with only one of its two files.
pub fn add_keys(deployment: &Deployment, dir: &Path) -> Result<Vec<Issued>> {
    let ca = load_ca(deployment, dir)?;
    let mut missing = Vec::new();
    for role in deployment.roles() {
        let stem = role.file_stem();
        let (cert, key) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        match (cert.exists(), key.exists()) {
            (true, true) => {}
            (false, false) => missing.push(role),
            (has_cert, _) => {
                let (there, absent) = if has_cert { (cert, key) } else { (key, cert) };
                return Err(EngineError::Invalid(format!(
                    "{} exists but {} does not: renew {role} with `keygen --renew {}`, or \
                     remove {} and run --add again",
                    there.display(),
                    absent.display(),
                    stem,
                    there.display()
                )));
            }
        }
    }
    missing
        .iter()
        .map(|role| issue_into(deployment, dir, &ca, role))
        .collect()
}

/// Issue new keys to each of `roles`, signed by the CA in `dir`, replacing their files there
/// (the old certificate stays valid until it expires: revoke it in the deployment file if its
/// key may have leaked). Other roles' files are not touched.
pub fn renew_keys(deployment: &Deployment, dir: &Path, roles: &[Role]) -> Result<Vec<Issued>> {
    let ca = load_ca(deployment, dir)?;
    roles
        .iter()
        .map(|role| issue_into(deployment, dir, &ca, role))
        .collect()
}
