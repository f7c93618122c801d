//! Keeps an agent's file requests inside its workspace.
//!
//! Every path an agent names is resolved against the workspace root and refused unless it
//! stays inside: `..` components are refused outright, absolute paths must lie under the
//! root, and the existing part of the path is canonicalized so a symlink cannot lead out.
//! Writes into `.git/` are refused as well (hooks there would run at commit time).

use std::path::{Component, Path, PathBuf};

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path leaves the workspace (by `..`, an absolute path elsewhere or a symlink).
    #[error("path {path:?} is outside the workspace")]
    OutsideWorkspace {
        /// The path as the agent gave it.
        path: String,
    },
    /// The path points into the repository's `.git` directory.
    #[error("path {path:?} is inside .git, which agents may not write")]
    GitInternals {
        /// The path as the agent gave it.
        path: String,
    },
    /// The path could not be inspected.
    #[error("path {path:?}: {message}")]
    Io {
        /// The path as the agent gave it.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// The root directory an agent may touch.
#[derive(Debug, Clone)]
pub struct WorkspaceRoot {
    root: PathBuf,
}

impl WorkspaceRoot {
    /// A guard for `root` (which must exist; it is canonicalized).
    ///
    /// # Errors
    /// The root cannot be canonicalized.
    pub fn new(root: &Path) -> std::io::Result<Self> {
        Ok(Self {
            root: root.canonicalize()?,
        })
    }

    /// The canonical root.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Resolves a path to read: it must exist and, with every symlink followed, stay inside.
    ///
    /// # Errors
    /// [`PathError`] when the path is refused or does not exist.
    pub fn resolve_read(&self, path: &Path) -> Result<PathBuf, PathError> {
        let joined = self.lexical(path)?;
        let real = joined.canonicalize().map_err(|e| PathError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        self.inside(&real, path)?;
        Ok(real)
    }

    /// Resolves a path to write: its deepest existing ancestor (symlinks followed) must be
    /// inside, and an existing target must not be a symlink leading out. Not under `.git`.
    ///
    /// # Errors
    /// [`PathError`] when the path is refused.
    pub fn resolve_write(&self, path: &Path) -> Result<PathBuf, PathError> {
        let joined = self.lexical(path)?;
        let relative = joined.strip_prefix(&self.root).unwrap_or(&joined);
        if relative.components().next() == Some(Component::Normal(".git".as_ref())) {
            return Err(PathError::GitInternals {
                path: path.display().to_string(),
            });
        }
        let mut existing = joined.as_path();
        let mut rest = Vec::new();
        loop {
            match existing.symlink_metadata() {
                Ok(_) => break,
                Err(_) => {
                    let Some(name) = existing.file_name() else {
                        return Err(outside(path));
                    };
                    rest.push(name.to_owned());
                    existing = existing.parent().ok_or_else(|| outside(path))?;
                }
            }
        }
        // A dangling symlink as target has metadata but cannot be canonicalized: refuse it.
        let real_existing = existing.canonicalize().map_err(|_| outside(path))?;
        self.inside(&real_existing, path)?;
        let mut resolved = real_existing;
        for name in rest.into_iter().rev() {
            resolved.push(name);
        }
        if resolved
            .strip_prefix(&self.root)
            .is_ok_and(|r| r.components().next() == Some(Component::Normal(".git".as_ref())))
        {
            return Err(PathError::GitInternals {
                path: path.display().to_string(),
            });
        }
        Ok(resolved)
    }

    /// Joins a relative path to the root and refuses `..` and foreign absolute paths.
    fn lexical(&self, path: &Path) -> Result<PathBuf, PathError> {
        if path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
        {
            return Err(outside(path));
        }
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.root.join(path)
        };
        // Absolute paths are compared after resolving the root's own symlinks (e.g. /tmp on
        // macOS); the existing part is checked again after canonicalization by the caller.
        if !joined.starts_with(&self.root) {
            return Err(outside(path));
        }
        Ok(joined)
    }

    fn inside(&self, real: &Path, original: &Path) -> Result<(), PathError> {
        if real.starts_with(&self.root) {
            Ok(())
        } else {
            Err(outside(original))
        }
    }
}

fn outside(path: &Path) -> PathError {
    PathError::OutsideWorkspace {
        path: path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_resolve_and_escapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside_dir = tempfile::tempdir().unwrap();
        std::fs::write(outside_dir.path().join("secret"), "s").unwrap();
        let root = WorkspaceRoot::new(dir.path()).unwrap();
        std::fs::create_dir(root.path().join("src")).unwrap();
        std::fs::write(root.path().join("src/lib.rs"), "x").unwrap();

        assert_eq!(
            root.resolve_read(Path::new("src/lib.rs")).unwrap(),
            root.path().join("src/lib.rs")
        );
        assert!(root.resolve_read(&root.path().join("src/lib.rs")).is_ok());
        assert_eq!(
            root.resolve_write(Path::new("new/dir/file.txt")).unwrap(),
            root.path().join("new/dir/file.txt")
        );

        for bad in ["../x", "src/../../x", "/etc/passwd"] {
            assert!(matches!(
                root.resolve_read(Path::new(bad)),
                Err(PathError::OutsideWorkspace { .. })
            ));
            assert!(matches!(
                root.resolve_write(Path::new(bad)),
                Err(PathError::OutsideWorkspace { .. })
            ));
        }
        assert!(
            root.resolve_read(&outside_dir.path().join("secret"))
                .is_err()
        );

        // Symlinks leading out are refused for reads and writes, even to new files below them.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside_dir.path(), root.path().join("link")).unwrap();
            std::os::unix::fs::symlink(
                outside_dir.path().join("secret"),
                root.path().join("secret-link"),
            )
            .unwrap();
            assert!(root.resolve_read(Path::new("link/secret")).is_err());
            assert!(root.resolve_write(Path::new("link/new.txt")).is_err());
            assert!(root.resolve_write(Path::new("secret-link")).is_err());
            assert!(root.resolve_read(Path::new("secret-link")).is_err());
        }
        assert!(matches!(
            root.resolve_write(Path::new(".git/hooks/pre-commit")),
            Err(PathError::GitInternals { .. })
        ));
    }
}
