//! Revoked certificates: their SHA-256 fingerprints, listed in the deployment file
//! (`[keys] revoked = ["sha256:…"]`) and checked on every TLS handshake, on both sides.
//!
//! A service keeps the list live ([`Revocations::watch`]): at a handshake, at most once a
//! second, it looks at the deployment file's modification time, size and inode (one `stat`)
//! and reads the list again when they changed; [`Revocations::reload`] reads it at once (the
//! services call it on SIGHUP). A file that no longer parses keeps the previous list in force
//! (and says so once). Each revoked certificate's refusal is logged once per list, however
//! often its holder retries. The same reading gives the data owners the file lists now
//! ([`Revocations::data_owners`]): alice and bob admit an owner added to the file without a
//! restart.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{EngineError, Result};
use crate::roles::Role;

/// The SHA-256 of a certificate's DER encoding, written `sha256:` and 64 hexadecimal digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Fingerprint {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Fingerprint(out)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Fingerprint {
    type Err = EngineError;

    /// `sha256:` then 64 hexadecimal digits, in either case, optionally in pairs separated by
    /// `:` (as `openssl x509 -fingerprint -sha256` prints them).
    fn from_str(text: &str) -> Result<Fingerprint> {
        let bad = |why: &str| {
            EngineError::Invalid(format!(
                "'{text}' is not a certificate fingerprint ({why}; expected 'sha256:' and 64 hex \
                 digits, as printed by `secure-serving keygen --fingerprint CERT.pem`)"
            ))
        };
        let hex = text
            .strip_prefix("sha256:")
            .or_else(|| text.strip_prefix("SHA256:"))
            .ok_or_else(|| bad("no 'sha256:' prefix"))?;
        let digits: Vec<u8> = hex.bytes().filter(|&b| b != b':').collect();
        if digits.len() != 64 {
            return Err(bad(&format!("{} hex digits", digits.len())));
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).map_err(|_| bad("not hexadecimal"))?;
            out[i] = u8::from_str_radix(pair, 16).map_err(|_| bad("not hexadecimal"))?;
        }
        Ok(Fingerprint(out))
    }
}

/// What identifies one version of the deployment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
    })
}

/// The deployment file a list is read from.
struct Source {
    path: PathBuf,
    /// The version the list in force was read from (or last failed to be read from).
    seen: Option<Stamp>,
    /// When the file was last looked at.
    checked: Instant,
}

/// How often a handshake looks at the deployment file at most.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A live list of revoked certificates (see the module documentation).
pub struct Revocations {
    revoked: RwLock<HashSet<Fingerprint>>,
    /// The data owners of the deployment file as last read (`None` until it is read again).
    owners: RwLock<Option<Vec<Role>>>,
    source: Mutex<Option<Source>>,
    /// Revoked certificates whose refusal was logged since the list was last read.
    reported: Mutex<HashSet<Fingerprint>>,
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocations")
            .field("revoked", &self.len())
            .finish()
    }
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Revocations {
    /// A fixed list (nothing is reloaded until [`Self::watch`]).
    pub fn new(revoked: impl IntoIterator<Item = Fingerprint>) -> Arc<Revocations> {
        Arc::new(Revocations {
            revoked: RwLock::new(revoked.into_iter().collect()),
            owners: RwLock::new(None),
            source: Mutex::new(None),
            reported: Mutex::new(HashSet::new()),
        })
    }

    /// An empty list.
    pub fn none() -> Arc<Revocations> {
        Revocations::new([])
    }

    /// How many certificates are revoked.
    pub fn len(&self) -> usize {
        self.revoked.read().map(|r| r.len()).unwrap_or(0)
    }

    /// Whether no certificate is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep the list in step with the deployment file at `path` from now on: handshakes look at
    /// the file at most once every [`CHECK_EVERY`] and read it again when it changed. The list
    /// in force is taken to be the file's current version.
    pub fn watch(&self, path: &Path) {
        *guard(&self.source) = Some(Source {
            path: path.to_path_buf(),
            seen: stamp(path).ok(),
            checked: Instant::now(),
        });
    }

    /// Read the watched deployment file now (on SIGHUP); returns how many certificates are
    /// revoked. On error the previous list stays in force. Without a watched file, nothing
    /// happens.
    pub fn reload(&self) -> Result<usize> {
        let mut source = guard(&self.source);
        match source.as_mut() {
            Some(s) => {
                s.checked = Instant::now();
                s.seen = stamp(&s.path).ok();
                self.read(&s.path)
            }
            None => Ok(self.len()),
        }
    }

    /// Read the list from the deployment file at `path` and put it in force.
    fn read(&self, path: &Path) -> Result<usize> {
        let d = super::Deployment::load(path)?;
        if let Ok(mut o) = self.owners.write() {
            *o = Some(d.data_owners.clone());
        }
        let new: HashSet<Fingerprint> = d.keys.revoked.into_iter().collect();
        let n = new.len();
        if let Ok(mut r) = self.revoked.write() {
            if *r != new {
                // A new list: its refusals are logged afresh.
                *r = new;
                guard(&self.reported).clear();
            }
        }
        Ok(n)
    }

    /// Look at the watched file if [`CHECK_EVERY`] has passed, and read it again if it changed.
    fn refresh(&self) {
        let mut source = guard(&self.source);
        let Some(s) = source.as_mut() else { return };
        if s.checked.elapsed() < CHECK_EVERY {
            return;
        }
        s.checked = Instant::now();
        let now = stamp(&s.path).ok();
        if now.is_none() || now == s.seen {
            return;
        }
        s.seen = now;
        match self.read(&s.path) {
            Ok(n) => tracing::info!(
                file = %s.path.display(),
                revoked = n,
                "deployment file changed: revocation list reloaded"
            ),
            Err(e) => tracing::warn!(
                file = %s.path.display(),
                error = %e,
                "deployment file changed but cannot be read: the previous revocation list stays \
                 in force"
            ),
        }
    }

    /// The data owners of the watched deployment file as last read (looking for a newer
    /// version first, as a handshake does); `None` when the file was not read again since the
    /// service started (the deployment it started with is in force). Alice and bob admit the
    /// data owners listed here, so an owner added with `keygen --add` connects without a
    /// restart.
    pub fn data_owners(&self) -> Option<Vec<Role>> {
        self.refresh();
        self.owners.read().ok().and_then(|o| o.clone())
    }

    /// The fingerprint of `der` if that certificate is revoked (after looking for a newer
    /// list). The first refusal of each revoked certificate is logged as a warning, later ones
    /// (a peer retrying) at debug level only.
    pub fn check(&self, der: &[u8]) -> Option<Fingerprint> {
        self.refresh();
        let fp = Fingerprint::of_der(der);
        let revoked = self.revoked.read().map(|r| r.contains(&fp)).unwrap_or(true);
        if !revoked {
            return None;
        }
        if guard(&self.reported).insert(fp) {
            tracing::warn!(fingerprint = %fp, "revoked certificate refused (logged once per certificate until the list changes)");
        } else {
            tracing::debug!(fingerprint = %fp, "revoked certificate refused again");
        }
        Some(fp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_and_parse() {
        let fp = Fingerprint::of_der(b"certificate");
        let text = fp.to_string();
        assert!(
            text.starts_with("sha256:") && text.len() == 7 + 64,
            "{text}"
        );
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        // openssl's form: upper case, pairs separated by ':'.
        let pairs: Vec<String> = fp.0.iter().map(|b| format!("{b:02X}")).collect();
        let openssl = format!("SHA256:{}", pairs.join(":"));
        assert_eq!(openssl.parse::<Fingerprint>().unwrap(), fp);
        for (bad, why) in [
            ("ab12", "no 'sha256:' prefix"),
            ("sha256:ab12", "4 hex digits"),
            (&format!("sha256:{}", "g".repeat(64)), "not hexadecimal"),
        ] {
            let e = bad.parse::<Fingerprint>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("keygen --fingerprint"), "{e}");
        }
    }

    #[test]
    fn a_watched_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deploy.toml");
        let base = "name = \"t\"\n[alice]\naddress = \"127.0.0.1:1\"\n[bob]\naddress = \
                    \"127.0.0.1:2\"\n[dealer]\naddress = \"127.0.0.1:3\"\n";
        std::fs::write(&path, base).unwrap();
        let list = Revocations::none();
        list.watch(&path);
        let cert = b"a client's certificate";
        assert_eq!(list.check(cert), None);
        let fp = Fingerprint::of_der(cert);
        std::fs::write(&path, format!("{base}[keys]\nrevoked = [\"{fp}\"]\n")).unwrap();
        // Looked at again only after CHECK_EVERY; at once on reload (SIGHUP).
        assert_eq!(list.reload().unwrap(), 1);
        assert_eq!(list.check(cert), Some(fp));
        // A broken file keeps the list in force.
        std::fs::write(&path, "name = ").unwrap();
        std::thread::sleep(CHECK_EVERY + Duration::from_millis(50));
        assert_eq!(list.check(cert), Some(fp));
        std::fs::write(&path, base).unwrap();
        std::thread::sleep(CHECK_EVERY + Duration::from_millis(50));
        assert_eq!(list.check(cert), None);
    }
}
