//! Files complete under their hidden temporary names, made visible
//! together by renames and then made durable; removed if never committed.
//! Invariant: a file of a [`Pending`] is either hidden and whole, or
//! renamed into place; a rename that fails leaves the rest hidden and
//! removes them.

use std::{
    collections::BTreeSet,
    fs::File,
    path::{Path, PathBuf},
};

use super::Written;
use crate::archive::ArchiveError;

/// Complete files under their temporary names, waiting to be renamed
/// into place together. Dropped without [`Pending::commit`], they are
/// removed.
#[derive(Debug, Default)]
pub struct Pending {
    pub(super) root: PathBuf,
    pub(super) files: Vec<Written>,
}

impl Pending {
    /// Adds another sink's files.
    pub fn extend(&mut self, mut other: Pending) {
        if self.root.as_os_str().is_empty() {
            self.root = std::mem::take(&mut other.root);
        }
        self.files.append(&mut other.files);
    }

    /// The files waiting.
    #[must_use]
    pub fn files(&self) -> &[Written] {
        &self.files
    }

    /// Renames every file into place, then makes the new names durable.
    /// A rename that fails leaves the files not yet renamed hidden (and
    /// removes them).
    pub fn commit(mut self) -> Result<(), ArchiveError> {
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        let files = std::mem::take(&mut self.files);
        for (i, w) in files.iter().enumerate() {
            if let Err(e) = std::fs::rename(&w.tmp, &w.path) {
                self.files = files[i..].to_vec();
                return Err(ArchiveError::write(&w.path, e));
            }
            let mut d = w.path.parent();
            while let Some(dir) = d {
                if !dirs.insert(dir.to_path_buf()) || dir == self.root {
                    break;
                }
                d = dir.parent();
            }
        }
        for dir in &dirs {
            sync_dir(dir);
        }
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        for w in &self.files {
            let _ = std::fs::remove_file(&w.tmp);
        }
    }
}

/// Makes a directory's entries (new names) durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
