//! The files services persist: one record per model, written atomically, versioned and
//! checksummed, and refused whole when anything is off.
//!
//! Layout (all integers little-endian): `b"SSRECORD"`, an 8-byte kind (`b"party\0\0\0"`,
//! `b"dealer\0\0"`), the format version (u64), then sections, each a byte length (u64) and its
//! bytes padded to 8, and last the SHA-256 of everything before it. A record is written to a
//! temporary file in the same directory, flushed to disk and renamed over its name, so a crash
//! leaves the old record or the new one, never half of one. Reading maps the file and checks the
//! magic, kind, version and checksum before any section is parsed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use aws_lc_rs::digest::{Context, SHA256};
use memmap2::Mmap;

use crate::error::{EngineError, Result};

/// The record format version this build writes and reads.
pub const FORMAT_VERSION: u64 = 1;

const MAGIC: &[u8; 8] = b"SSRECORD";
const CHECKSUM: usize = 32;

fn io_err(path: &Path, what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Invalid(format!("{}: cannot {what}: {e}", path.display()))
}

/// Writes one record (see the module documentation).
pub struct RecordWriter {
    out: BufWriter<tempfile::NamedTempFile>,
    hash: Context,
    path: PathBuf,
}

impl RecordWriter {
    /// File names of records being written start with this (in the record's directory).
    pub const TEMP_PREFIX: &'static str = ".record-";

    /// Start a record of `kind` that will replace `path` on [`RecordWriter::commit`].
    pub fn create(path: &Path, kind: &[u8; 8]) -> Result<RecordWriter> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(Self::TEMP_PREFIX)
            .tempfile_in(dir)
            .map_err(|e| io_err(dir, "create a file in", e))?;
        let mut w = RecordWriter {
            out: BufWriter::with_capacity(1 << 20, tmp),
            hash: Context::new(&SHA256),
            path: path.to_path_buf(),
        };
        w.raw(MAGIC)?;
        w.raw(kind)?;
        w.raw(&FORMAT_VERSION.to_le_bytes())?;
        Ok(w)
    }

    fn raw(&mut self, b: &[u8]) -> Result<()> {
        self.hash.update(b);
        self.out
            .write_all(b)
            .map_err(|e| io_err(&self.path, "write", e))
    }

    fn pad(&mut self, len: u64) -> Result<()> {
        let pad = (8 - len % 8) % 8;
        self.raw(&[0u8; 8][..pad as usize])
    }

    /// Append a byte section.
    pub fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.raw(&(b.len() as u64).to_le_bytes())?;
        self.raw(b)?;
        self.pad(b.len() as u64)
    }

    /// Append a section of `len` words, produced in blocks of `block` words (the last may be
    /// shorter) by `fill(first, block)`, so a large tensor is never copied whole.
    pub fn words(
        &mut self,
        len: usize,
        block: usize,
        fill: &mut dyn FnMut(usize, &mut [u64]) -> Result<()>,
    ) -> Result<()> {
        self.raw(&(8 * len as u64).to_le_bytes())?;
        let mut block = vec![0u64; len.min(block.max(1))];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(block.len());
            fill(at, &mut block[..n])?;
            for w in &mut block[..n] {
                *w = w.to_le();
            }
            self.raw(bytemuck::cast_slice(&block[..n]))?;
            at += n;
        }
        Ok(())
    }

    /// Write the checksum, flush to disk and atomically replace the record's path.
    pub fn commit(mut self) -> Result<()> {
        let sum = self.hash.clone().finish();
        self.out
            .write_all(sum.as_ref())
            .map_err(|e| io_err(&self.path, "write", e))?;
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| io_err(&self.path, "write", e.error().to_string()))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| io_err(&self.path, "flush", e))?;
        tmp.persist(&self.path)
            .map_err(|e| io_err(&self.path, "replace", e.error))?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

/// Give a committed record its final name (atomically, replacing any file there), and make the
/// rename durable.
pub fn rename_record(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| io_err(to, "rename a record to", e))?;
    if let Some(dir) = to.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Reads one record, checked whole before any section is returned.
pub struct RecordReader {
    map: Mmap,
    at: usize,
    end: usize,
    path: PathBuf,
}

impl RecordReader {
    /// Open and check the record at `path`: it must be a regular file holding a record of
    /// `kind` in this build's format version with a matching checksum.
    pub fn open(path: &Path, kind: &[u8; 8]) -> Result<RecordReader> {
        let bad = |why: String| EngineError::Format(format!("{}: {why}", path.display()));
        let file = File::open(path).map_err(|e| io_err(path, "open", e))?;
        let meta = file.metadata().map_err(|e| io_err(path, "read", e))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        if meta.len() < (24 + CHECKSUM) as u64 {
            return Err(bad(format!(
                "{} bytes: too short to be a record (truncated?)",
                meta.len()
            )));
        }
        // SAFETY: the map is read-only and private to this reader; a record is only ever
        // replaced by rename (a new inode), never rewritten in place.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, "map", e))?;
        if &map[..8] != MAGIC {
            return Err(bad("not a Secure Serving record (wrong magic)".into()));
        }
        if &map[8..16] != kind {
            return Err(bad(format!(
                "a record of kind '{}', expected '{}'",
                String::from_utf8_lossy(&map[8..16]).trim_end_matches('\0'),
                String::from_utf8_lossy(kind).trim_end_matches('\0')
            )));
        }
        let version = u64::from_le_bytes(map[16..24].try_into().expect("8 bytes"));
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {version}; this build reads version {FORMAT_VERSION}"
            )));
        }
        let end = map.len() - CHECKSUM;
        let sum = aws_lc_rs::digest::digest(&SHA256, &map[..end]);
        if sum.as_ref() != &map[end..] {
            return Err(bad(
                "checksum mismatch: the file is damaged or was changed; refused".into(),
            ));
        }
        Ok(RecordReader {
            map,
            at: 24,
            end,
            path: path.to_path_buf(),
        })
    }

    fn section(&mut self) -> Result<&[u8]> {
        let bad = |why: &str| EngineError::Format(format!("{}: {why}", self.path.display()));
        if self.end - self.at < 8 {
            return Err(bad("a section is missing"));
        }
        let len = u64::from_le_bytes(self.map[self.at..self.at + 8].try_into().expect("8"));
        let start = self.at + 8;
        let padded = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add((8 - l % 8) % 8).map(|p| (l, p)))
            .filter(|&(_, p)| p <= self.end - start);
        let Some((len, padded)) = padded else {
            return Err(bad("a section runs past the end of the record"));
        };
        self.at = start + padded;
        Ok(&self.map[start..start + len])
    }

    /// The next byte section.
    pub fn bytes(&mut self) -> Result<&[u8]> {
        self.section()
    }

    /// The next word section (8-aligned in the map).
    pub fn words(&mut self) -> Result<&[u64]> {
        let path = self.path.clone();
        let b = self.section()?;
        bytemuck::try_cast_slice(b)
            .map_err(|_| EngineError::Format(format!("{}: misaligned section", path.display())))
    }

    /// Check that every section was read.
    pub fn finish(&self) -> Result<()> {
        if self.at != self.end {
            return Err(EngineError::Format(format!(
                "{}: unexpected data after the last section",
                self.path.display()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path) {
        let mut w = RecordWriter::create(path, b"test\0\0\0\0").unwrap();
        w.bytes(b"hello").unwrap();
        w.words(300_000, 1 << 17, &mut |at, out| {
            for (i, o) in out.iter_mut().enumerate() {
                *o = (at + i) as u64 * 3;
            }
            Ok(())
        })
        .unwrap();
        w.commit().unwrap();
    }

    #[test]
    fn records_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.rec");
        write(&path);
        let mut r = RecordReader::open(&path, b"test\0\0\0\0").unwrap();
        assert_eq!(r.bytes().unwrap(), b"hello");
        let w = r.words().unwrap();
        assert_eq!(w.len(), 300_000);
        assert!(w.iter().enumerate().all(|(i, &v)| v == i as u64 * 3));
        r.finish().unwrap();
        drop(r);
        let e = RecordReader::open(&path, b"other\0\0\0").err().unwrap();
        assert!(
            e.to_string()
                .contains("a record of kind 'test', expected 'other'"),
            "{e}"
        );
        // One flipped bit anywhere, a truncation, a foreign file: refused whole.
        let good = std::fs::read(&path).unwrap();
        for (i, damaged) in [
            {
                let mut d = good.clone();
                d[1000] ^= 4;
                d
            },
            good[..good.len() - 100].to_vec(),
            b"not a record at all, just some text that is long enough to pass".to_vec(),
        ]
        .into_iter()
        .enumerate()
        {
            std::fs::write(&path, &damaged).unwrap();
            let e = RecordReader::open(&path, b"test\0\0\0\0").err().unwrap();
            let e = e.to_string();
            assert!(
                e.contains("checksum mismatch") || e.contains("wrong magic"),
                "case {i}: {e}"
            );
        }
        // Another version.
        let mut d = good.clone();
        d[16] = 9;
        std::fs::write(&path, &d).unwrap();
        let e = RecordReader::open(&path, b"test\0\0\0\0").err().unwrap();
        assert!(e.to_string().contains("format version 9"), "{e}");
    }
}
