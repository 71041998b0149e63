//! Reading configuration files: `--config PATH` names a file or a directory, and may repeat.
//!
//! A directory contributes its `*.yaml`, `*.yml` and `*.json` files (not recursively, like
//! `kubectl apply -f DIR`), in name order, skipping hidden entries such as the `..data` links of a
//! mounted ConfigMap. The loader also returns a fingerprint of what it read so the file watcher can
//! tell a real change from a touch.

use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

use super::issues::ConfigIssue;
use super::objects::ObjectSet;

/// Files named by `paths`, expanded and sorted per directory.
pub fn config_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Box<ConfigIssue>> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| read_error(path, &e))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| read_error(path, &e))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| is_config_file(p))
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn is_config_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    !hidden && matches!(extension, "yaml" | "yml" | "json") && path.is_file()
}

fn read_error(path: &Path, error: &std::io::Error) -> Box<ConfigIssue> {
    Box::new(ConfigIssue::error(
        "file",
        path.display().to_string(),
        "",
        format!("cannot read: {error}"),
    ))
}

/// What one load read: the objects, the problems, and a fingerprint of the bytes.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every object of every file.
    pub objects: ObjectSet,
    /// Problems found while parsing.
    pub issues: Vec<ConfigIssue>,
    /// Hash over file names and contents.
    pub fingerprint: u64,
}

/// Read and parse every file named by `paths`.
pub fn load(paths: &[PathBuf]) -> Loaded {
    let mut loaded = Loaded::default();
    let mut hasher = Xxh3::new();
    let files = match config_files(paths) {
        Ok(files) => files,
        Err(issue) => {
            loaded.issues.push(*issue);
            return loaded;
        }
    };
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                hasher.update(file.as_os_str().as_encoded_bytes());
                hasher.update(text.as_bytes());
                let issues = loaded.objects.add_yaml(&text, &file);
                loaded.issues.extend(issues);
            }
            Err(e) => loaded.issues.push(*read_error(&file, &e)),
        }
    }
    loaded.fingerprint = hasher.digest();
    loaded
}

/// Only the fingerprint of what [`load`] would read (cheap enough to poll every second).
pub fn fingerprint(paths: &[PathBuf]) -> Option<u64> {
    let mut hasher = Xxh3::new();
    for file in config_files(paths).ok()? {
        let bytes = std::fs::read(&file).ok()?;
        hasher.update(file.as_os_str().as_encoded_bytes());
        hasher.update(&bytes);
    }
    Some(hasher.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_expand_sorted_skipping_hidden_and_other_files() {
        let dir = std::env::temp_dir().join(format!("igw-load-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("..data")).unwrap();
        std::fs::write(
            dir.join("b.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: b}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("a.yml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n",
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), "not yaml").unwrap();
        std::fs::write(dir.join(".hidden.yaml"), "garbage: [").unwrap();
        let loaded = load(std::slice::from_ref(&dir));
        assert!(loaded.issues.is_empty(), "{:?}", loaded.issues);
        let names: Vec<_> = loaded.objects.iter().map(|d| d.object.key().name).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(
            fingerprint(std::slice::from_ref(&dir)),
            Some(loaded.fingerprint)
        );
        std::fs::write(
            dir.join("a.yml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: c}\n",
        )
        .unwrap();
        assert_ne!(
            fingerprint(std::slice::from_ref(&dir)),
            Some(loaded.fingerprint)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_paths_are_errors() {
        let loaded = load(&[PathBuf::from("/nonexistent/igw.yaml")]);
        assert_eq!(loaded.issues.len(), 1);
        assert!(loaded.issues[0].message.starts_with("cannot read"));
    }
}
