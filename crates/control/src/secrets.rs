//! Files that hold secrets: the database (signing key, account key, endpoint keys, master
//! tokens), the `api_key` file, the instances' folders. They belong to the user running
//! `ferry control` alone: folders 0700, files 0600, whatever the umask was and whatever mode
//! an earlier version left them in. Looser modes found at start are tightened with a warning;
//! a file or folder that cannot be tightened (owned by someone else) stops the start with an
//! error naming it, rather than running with secrets others can read.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write as _;
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::Path;

/// Mode of a folder that holds secrets.
pub const DIR_MODE: u32 = 0o700;
/// Mode of a file that holds secrets.
pub const FILE_MODE: u32 = 0o600;

/// Why a secret's file or folder could not be made private.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}: {source}")]
pub struct SecretsError {
    path: String,
    what: &'static str,
    source: std::io::Error,
}

fn err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SecretsError + 'a {
    move |source| SecretsError {
        path: path.display().to_string(),
        what,
        source,
    }
}

/// Creates `dir` (and its parents, 0700) if missing; tightens it to 0700 if it exists looser.
pub fn private_dir(dir: &Path) -> Result<(), SecretsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(err(dir, "creating the folder"))?;
    tighten(dir, DIR_MODE)
}

/// Makes sure `path` exists as a file only its owner can read (creating it empty if missing,
/// tightening it if looser); SQLite then gives its `-wal` and `-shm` files the same mode.
pub fn private_file(path: &Path) -> Result<(), SecretsError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(err(path, "creating the file"))?;
    tighten(path, FILE_MODE)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = Path::new(&side);
        if side.exists() {
            tighten(side, FILE_MODE)?;
        }
    }
    Ok(())
}

/// Writes `secret` and a newline to `path`, which ends up 0600 even if it existed looser.
pub fn write_private(path: &Path, secret: &str) -> Result<(), SecretsError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_dir(dir)?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(err(path, "opening"))?;
    // Before the secret goes in: an existing file keeps its old mode through open().
    tighten(path, FILE_MODE)?;
    writeln!(f, "{secret}").map_err(err(path, "writing"))
}

/// A secret value held in memory (an API key): its `Debug` prints `***` and it has no
/// `Display`, so it cannot reach a log line or an error message by accident. The one way to
/// read it is [`Secret::expose`], at the point where it goes on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value` (surrounding whitespace, such as a key file's newline, removed).
    pub fn new(value: &str) -> Secret {
        Secret(value.trim().to_owned())
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Removes group and other permissions from `path` if it has any.
fn tighten(path: &Path, mode: u32) -> Result<(), SecretsError> {
    let meta = std::fs::metadata(path).map_err(err(path, "reading its mode"))?;
    let current = meta.mode() & 0o777;
    if current & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, Permissions::from_mode(mode)).map_err(err(
        path,
        "it is readable by others and could not be made private",
    ))?;
    tracing::warn!(
        path = %path.display(),
        was = format!("{current:o}"),
        now = format!("{mode:o}"),
        "tightened the permissions of a file holding secrets"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-secrets-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new(" key-123\n");
        assert_eq!(s.expose(), "key-123");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", Some(s)), "Some(***)");
    }

    #[test]
    fn new_dir_and_files_are_private() {
        let d = temp("new").join("state");
        private_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
        let db = d.join("control.db");
        private_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        let key = d.join("api_key");
        write_private(&key, "k").unwrap();
        assert_eq!(mode(&key), 0o600);
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "k\n");
        std::fs::remove_dir_all(d.parent().unwrap()).unwrap();
    }

    #[test]
    fn loose_existing_modes_are_tightened() {
        let d = temp("loose");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, Permissions::from_mode(0o755)).unwrap();
        let db = d.join("control.db");
        let wal = d.join("control.db-wal");
        let key = d.join("api_key");
        for f in [&db, &wal, &key] {
            std::fs::write(f, "x").unwrap();
            std::fs::set_permissions(f, Permissions::from_mode(0o644)).unwrap();
        }
        private_dir(&d).unwrap();
        private_file(&db).unwrap();
        write_private(&key, "secret").unwrap();
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&wal), 0o600);
        assert_eq!(mode(&key), 0o600);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
