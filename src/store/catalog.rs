//! Image names and versions: one manifest file per version under `DATA/images/<name>/`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::durable;
use super::error::{IoContext, Result, StoreError};
use super::id::VersionId;
use super::manifest::{Manifest, ManifestError};
use super::Store;

const EXT: &str = "bcm";

/// One stored version of an image.
#[derive(Debug, Clone)]
pub struct Version {
    pub name: String,
    pub id: VersionId,
    pub path: PathBuf,
    pub manifest: Manifest,
}

/// A version file as found on disk, decoded or not.
#[derive(Debug)]
pub struct VersionFile {
    pub name: String,
    pub id: VersionId,
    pub path: PathBuf,
    pub manifest: Result<Manifest>,
}

/// The file beside a version's manifest (`ID.held`) that holds it back until approved.
const HELD: &str = "held";

/// True when the version whose manifest is `manifest_path` awaits staff approval.
pub fn awaiting_approval(manifest_path: &Path) -> bool {
    manifest_path.with_extension(HELD).exists()
}

pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

/// Splits `NAME[@VERSION]`.
pub fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (spec, None),
    }
}

impl Store {
    fn image_dir(&self, name: &str) -> PathBuf {
        self.images_dir().join(name)
    }

    pub fn image_names(&self) -> Result<Vec<String>> {
        let dir = self.images_dir();
        let mut names = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(e).ctx("listing", dir),
        };
        for entry in entries {
            let entry = entry.ctx("listing", &dir)?;
            if let Some(name) = entry.file_name().to_str() {
                if validate_name(name).is_ok() && entry.path().is_dir() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Every version file of `name`, oldest first (undecodable ones last).
    pub fn version_files(&self, name: &str) -> Result<Vec<VersionFile>> {
        validate_name(name)?;
        let dir = self.image_dir(name);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).ctx("listing", dir),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.ctx("listing", &dir)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(EXT) {
                continue;
            }
            let Some(id) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<VersionId>().ok())
            else {
                continue;
            };
            let manifest = load(&path, id);
            out.push(VersionFile {
                name: name.to_string(),
                id,
                path,
                manifest,
            });
        }
        // Creation times are whole seconds: two versions added within one second are ordered
        // by when their manifest files were written (nanoseconds), so `latest` is the last one.
        let written = |p: &Path| {
            fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        };
        out.sort_by_cached_key(|v| match &v.manifest {
            Ok(m) => (0, m.created, written(&v.path), v.id),
            Err(_) => (1, 0, 0, v.id),
        });
        Ok(out)
    }

    /// Where version `id` of `name` has its manifest.
    pub fn version_path(&self, name: &str, id: &VersionId) -> PathBuf {
        self.image_dir(name).join(format!("{id}.{EXT}"))
    }

    /// Version `id` of `name` alone (one file read and checked, not the image's others);
    /// `None` if the store has no such version.
    pub fn load_version(&self, name: &str, id: &VersionId) -> Result<Option<Manifest>> {
        validate_name(name)?;
        let path = self.version_path(name, id);
        if !path.exists() {
            return Ok(None);
        }
        load(&path, *id).map(Some)
    }

    /// Every (name, version id) with a manifest file, without reading them.
    pub fn version_ids(&self) -> Result<Vec<(String, VersionId)>> {
        let mut out = Vec::new();
        for name in self.image_names()? {
            let dir = self.image_dir(&name);
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).ctx("listing", dir),
            };
            for entry in entries {
                let path = entry.ctx("listing", &dir)?.path();
                if path.extension().and_then(|e| e.to_str()) != Some(EXT) {
                    continue;
                }
                if let Some(id) = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<VersionId>().ok())
                {
                    out.push((name.clone(), id));
                }
            }
        }
        Ok(out)
    }

    /// Decoded versions of `name`, oldest first; a damaged manifest is an error naming its file.
    pub fn versions(&self, name: &str) -> Result<Vec<Version>> {
        self.version_files(name)?
            .into_iter()
            .map(|f| {
                Ok(Version {
                    name: f.name,
                    id: f.id,
                    path: f.path,
                    manifest: f.manifest?,
                })
            })
            .collect()
    }

    /// All version files of all images.
    pub fn all_version_files(&self) -> Result<Vec<VersionFile>> {
        let mut out = Vec::new();
        for name in self.image_names()? {
            out.extend(self.version_files(&name)?);
        }
        Ok(out)
    }

    /// Version files matching `NAME[@VERSION]` (all of them without `@`), without decoding
    /// requirements, so a damaged version can still be named and removed.
    pub fn match_files(&self, spec: &str) -> Result<Vec<VersionFile>> {
        let (name, version) = split_spec(spec);
        let files = self.version_files(name)?;
        if files.is_empty() {
            return Err(StoreError::UnknownImage(name.to_string()));
        }
        let Some(version) = version else {
            return Ok(files);
        };
        let wanted = version.to_ascii_lowercase();
        let unknown = || StoreError::UnknownVersion {
            name: name.to_string(),
            version: version.to_string(),
        };
        if wanted == "latest" {
            // a capture waiting for staff approval is never `latest`
            let readable: Vec<VersionFile> =
                files.into_iter().filter(|f| f.manifest.is_ok()).collect();
            let any = !readable.is_empty();
            return match readable.into_iter().rfind(|f| !awaiting_approval(&f.path)) {
                Some(f) => Ok(vec![f]),
                None if any => Err(StoreError::NotApproved {
                    name: name.to_string(),
                }),
                None => Err(unknown()),
            };
        }
        if wanted.len() < 4 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(unknown());
        }
        let mut hits: Vec<VersionFile> = files
            .into_iter()
            .filter(|f| f.id.to_hex().starts_with(&wanted))
            .collect();
        match hits.len() {
            0 => Err(unknown()),
            1 => Ok(vec![hits.pop().unwrap()]),
            _ => Err(StoreError::AmbiguousVersion {
                name: name.to_string(),
                version: version.to_string(),
            }),
        }
    }

    /// The newest readable, approved version of `name` that `keep` accepts (by its id).
    pub fn newest_approved_where(
        &self,
        name: &str,
        keep: impl Fn(&VersionId) -> bool,
    ) -> Result<Option<Version>> {
        for f in self.version_files(name)?.into_iter().rev() {
            if awaiting_approval(&f.path) || !keep(&f.id) {
                continue;
            }
            if let Ok(manifest) = f.manifest {
                return Ok(Some(Version {
                    name: f.name,
                    id: f.id,
                    path: f.path,
                    manifest,
                }));
            }
        }
        Ok(None)
    }

    /// The version `NAME[@VERSION]` names: without `@`, the newest.
    pub fn resolve(&self, spec: &str) -> Result<Version> {
        let (name, version) = split_spec(spec);
        let file = if version.is_none() {
            self.match_files(&format!("{name}@latest"))?.pop().unwrap()
        } else {
            self.match_files(spec)?.pop().unwrap()
        };
        Ok(Version {
            name: file.name,
            id: file.id,
            path: file.path,
            manifest: file.manifest?,
        })
    }

    /// Holds version `id` of `name` back until staff approve it (`bootcast image approve`):
    /// it is not `latest` (so no task, push or recurring rule naming the image takes it) until
    /// then. Written before the version's manifest, so it is never `latest` for an instant.
    pub fn hold_for_approval(&self, name: &str, id: &VersionId) -> Result<()> {
        validate_name(name)?;
        let dir = self.image_dir(name);
        durable::create_dir_durable(&dir)?;
        durable::write_atomic(&dir.join(format!("{id}.{HELD}")), b"")
    }

    /// Approves the version `NAME@VERSION` names (it may become `latest`); approving an
    /// approved version changes nothing. Returns it.
    pub fn approve(&self, spec: &str) -> Result<Version> {
        if split_spec(spec).1.is_none() {
            return Err(StoreError::BadName(format!(
                "{spec}: name the version to approve, NAME@VERSION (`bootcast image list` shows the ones awaiting approval)"
            )));
        }
        let v = self.resolve(spec)?;
        let held = v.path.with_extension(HELD);
        match std::fs::remove_file(&held) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e).ctx("approving", held),
            _ => {}
        }
        Ok(v)
    }

    /// Writes a manifest durably; the version is visible from the rename on. The caller must
    /// have made every chunk it names durable first.
    pub(crate) fn write_manifest(&self, manifest: &Manifest) -> Result<VersionId> {
        validate_name(&manifest.name)?;
        let id = manifest.version_id();
        let dir = self.image_dir(&manifest.name);
        durable::create_dir_durable(&dir)?;
        durable::write_atomic(&dir.join(format!("{id}.{EXT}")), &manifest.encode())?;
        Ok(id)
    }

    /// Removes the versions `NAME[@VERSION]` names (every version without `@`). Chunks stay
    /// until `gc`.
    pub fn remove(&self, spec: &str) -> Result<Vec<VersionFile>> {
        let files = self.match_files(spec)?;
        let (name, _) = split_spec(spec);
        let dir = self.image_dir(name);
        for f in &files {
            fs::remove_file(&f.path).ctx("removing", &f.path)?;
            let _ = fs::remove_file(f.path.with_extension(HELD));
        }
        durable::sync_dir(&dir)?;
        if fs::remove_dir(&dir).is_ok() {
            durable::sync_dir(&self.images_dir())?;
        }
        Ok(files)
    }
}

fn load(path: &std::path::Path, id: VersionId) -> Result<Manifest> {
    let bytes = fs::read(path).ctx("reading manifest", path)?;
    let corrupt = |cause| StoreError::ManifestCorrupt {
        path: path.to_path_buf(),
        cause,
    };
    let (manifest, actual) = Manifest::decode(&bytes).map_err(corrupt)?;
    if actual != id {
        return Err(corrupt(ManifestError::NotCanonical(format!(
            "content hashes to version {actual}, file is named {id}"
        ))));
    }
    Ok(manifest)
}
