//! Output files written atomically: a temporary file in the destination's directory, renamed
//! over the destination only once complete, so a failed or interrupted run leaves the previous
//! file intact. Creating the temporary file up front checks that the directory exists and is
//! writable before any work starts. A process killed outright (SIGKILL, power loss) can leave
//! the hidden temporary file `.NAME.XXXXXX.tmp` behind; the destination is never half-written.

use std::io::Write;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{EngineError, Result};

/// A destination whose content is committed atomically (dropped uncommitted: nothing changes).
pub struct OutputFile {
    path: PathBuf,
    tmp: NamedTempFile,
}

impl OutputFile {
    /// Check the destination and create the temporary file beside it (mode 0600 until
    /// [`OutputFile::set_mode`]).
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let dest = path.as_ref();
        let path = dest.display();
        let err = |detail: String| EngineError::Format(format!("{path}: {detail}"));
        if dest.as_os_str().is_empty() {
            return Err(EngineError::Invalid("the output path is empty".into()));
        }
        if dest.is_dir() {
            return Err(err("is a directory, not an output file".into()));
        }
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(err(format!(
                "the output directory {} does not exist",
                dir.display()
            )));
        }
        let name = dest
            .file_name()
            .ok_or_else(|| err("has no file name".into()))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| {
                err(format!(
                    "the output directory {} is not writable: {e}",
                    dir.display()
                ))
            })?;
        Ok(OutputFile {
            path: dest.to_path_buf(),
            tmp,
        })
    }

    /// Give the file `mode` permissions (Unix; the temporary file is created 0600, exclusively,
    /// so nothing else can have opened it).
    pub fn set_mode(&self, mode: u32) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            self.tmp
                .as_file()
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|source| EngineError::Io {
                    path: self.path.display().to_string(),
                    source,
                })?;
        }
        #[cfg(not(unix))]
        let _ = mode;
        Ok(())
    }

    /// The destination path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `content` with `write`, flush it to disk and rename it over the destination.
    pub fn commit(
        mut self,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<()> {
        let path = self.path.display().to_string();
        let io = |source| EngineError::Io {
            path: path.clone(),
            source,
        };
        {
            let mut w = std::io::BufWriter::new(self.tmp.as_file_mut());
            write(&mut w).map_err(io)?;
            w.flush().map_err(io)?;
        }
        self.tmp.as_file().sync_all().map_err(io)?;
        self.tmp.persist(&self.path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Commit predicted class indices as an int64 `.npy` `[N]`.
    pub fn commit_predictions(self, preds: &[i64]) -> Result<()> {
        self.commit(|w| encode_predictions(w, preds))
    }
}

/// Encode predictions as an int64 `.npy` into `w`.
fn encode_predictions(w: impl std::io::Write, preds: &[i64]) -> std::io::Result<()> {
    use ndarray_npy::WriteNpyExt;
    ndarray::Array1::from(preds.to_vec())
        .write_npy(w)
        .map_err(std::io::Error::other)
}
