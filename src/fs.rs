//! Opening the files a caller names (checkpoints, shards, config and index JSON, reward and
//! training checkpoints, save-directory manifests, datasets, LoRA and interop files).
//!
//! Only regular files are read, and never in a way that can block: a FIFO, a device, a socket
//! or a directory where a file is expected is an error at once. Opening a FIFO for reading
//! would otherwise wait for a writer forever, and a save directory's manifest can name any file
//! in it, so a hostile directory could freeze the host. The type is checked twice: on the path
//! before opening (a clear error without touching the file) and on the open handle (the path
//! may have been replaced in between); the open itself is non-blocking on unix, so even a FIFO
//! swapped in between the two checks cannot hang it.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// What a non-regular file is, for the error message.
fn kind_name(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    "not a regular file"
}

fn not_regular(path: &Path, meta: &Metadata) -> Error {
    Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} where a regular file is expected (only regular files are read)",
                kind_name(meta)
            ),
        ),
    )
}

/// Opens `path` for reading if it is a regular file (symbolic links are followed), else an
/// [`Error::Io`] naming what it is. Never blocks (see the module docs).
pub fn open_regular(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta));
    }
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK makes opening a FIFO return at once; on a regular file it changes nothing.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta));
    }
    Ok(file)
}

/// The whole contents of the regular file `path` (see [`open_regular`]).
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    let mut file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

/// The contents of the regular file `path` as UTF-8 text (see [`open_regular`]).
pub fn read_regular_to_string(path: &Path) -> Result<String> {
    let mut file = open_regular(path)?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| Error::io(path, e))?;
    Ok(text)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn fifo_directory_and_device_are_refused_at_once() {
        let dir = std::env::temp_dir().join(format!("prfl-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("pipe.safetensors");
        mkfifo(&fifo);
        let e = open_regular(&fifo).unwrap_err().to_string();
        assert!(e.contains("FIFO") && e.contains("pipe.safetensors"), "{e}");
        let e = read_regular_to_string(&dir).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        let e = read_regular(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a device"), "{e}");
        let file = dir.join("ok.json");
        std::fs::write(&file, "{}").unwrap();
        assert_eq!(read_regular_to_string(&file).unwrap(), "{}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
