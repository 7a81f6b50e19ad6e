//! Deployment keys: a CA and one certificate and key per role (rcgen), written to and read from
//! a key directory.
//!
//! Directory layout: `ca.pem` (the deployment CA certificate, given to everyone), `ca.key` (the
//! CA's private key: keep it offline), and `<stem>.pem` / `<stem>.key` per role, with the stems
//! of [`Role::file_stem`]. Private keys are written with mode 0600.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::{Deployment, Role};
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

/// Generate a fresh CA and a certificate for each of `roles` (OS randomness).
///
/// Each certificate carries its role's [`Role::subject_name`] as its only DNS name and is valid
/// for both TLS client and server authentication.
pub fn generate_keys(deployment: &str, roles: &[Role]) -> Result<KeySet> {
    let ca_key = KeyPair::generate().map_err(rc)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("secure-serving deployment CA {deployment}"),
    );
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(rc)?;
    let ca = Credentials {
        cert_pem: ca_cert.pem(),
        key_pem: ca_key.serialize_pem(),
    };
    let issuer = Issuer::new(ca_params, ca_key);
    let mut members = Vec::with_capacity(roles.len());
    for role in roles {
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
        let key = KeyPair::generate().map_err(rc)?;
        let cert = params.signed_by(&key, &issuer).map_err(rc)?;
        members.push((
            role.clone(),
            Credentials {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
        ));
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
    let keys = generate_keys(&deployment.name, &roles)?;
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
/// [`write_keys`]. Returns `(ca_cert_pem, credentials)`.
pub fn read_credentials(dir: &Path, role: &Role) -> Result<(String, Credentials)> {
    let read = |name: String| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(io_at(&p))
    };
    let ca = read("ca.pem".into())?;
    let cert_pem = read(format!("{}.pem", role.file_stem()))?;
    let key_pem = read(format!("{}.key", role.file_stem()))?;
    Ok((ca, Credentials { cert_pem, key_pem }))
}
