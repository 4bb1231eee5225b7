//! File-system helpers shared by every layer.

use std::io::Write;
use std::path::Path;

/// Replace `path` with `bytes` so that a crash leaves either the old or the
/// new content, never a mix or nothing: write a temporary file beside it,
/// fsync it, rename it over `path`, fsync the directory. Concurrent writers
/// each use their own temporary file; the last rename wins.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The largest secret file (password, identity, token file) cairn reads.
pub const MAX_SECRET_FILE: u64 = 64 << 10;

/// The content of a small file that should hold a secret or a short list
/// (a password file, an age identity, a token file), read without trusting
/// its size: a file longer than `limit` (`/dev/zero` named by mistake or by
/// a hostile plan) is refused after reading `limit + 1` bytes, instead of
/// read to the end of memory (an `InvalidData` error whose text says so).
/// A pipe is read like a file (`--password-file <(pass show cairn)`), and
/// like one it waits for its writer.
pub fn read_small(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!(
                "it is larger than {} KiB, too large for this file",
                limit >> 10
            ),
        ));
    }
    Ok(bytes)
}

/// [`read_small`] as UTF-8 text.
pub fn read_small_text(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read_small(path, limit)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "it is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        super::write_atomic(&p, b"one").unwrap();
        super::write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
