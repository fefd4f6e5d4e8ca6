//! Reading the small local files the agent is pointed at (its configuration, secret files, its state
//! file), so that a wrong path cannot hang or exhaust it: a FIFO would block the read (or its open) for
//! ever, a device such as `/dev/zero` or a runaway log would be read until memory runs out. Only a
//! regular file is read, and only up to a limit.

use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The whole of the regular file at `path`, if it holds at most `limit` bytes. Errors say what was
/// wrong with it in words a person can act on (the caller names the field).
pub fn read_small(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    // O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer. It does not change reads
    // of a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "something else"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {what}, not a regular file"),
        ));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("holds more than {} KiB", limit / 1024),
        ));
    }
    Ok(bytes)
}

/// [`read_small`], as UTF-8 text.
pub fn read_small_text(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read_small(path, limit)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, "  tok  \n").unwrap();
        assert_eq!(read_small_text(&small, 16).unwrap(), "  tok  \n");

        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 17]).unwrap();
        let e = read_small(&big, 16).unwrap_err();
        assert_eq!(e.to_string(), "holds more than 0 KiB");

        let e = read_small(Path::new("/dev/zero"), 1024).unwrap_err();
        assert_eq!(e.to_string(), "is a device, not a regular file");
        let e = read_small(dir.path(), 1024).unwrap_err();
        assert_eq!(e.to_string(), "is a directory, not a regular file");

        // A FIFO with no writer: refused at once instead of blocking the open (and then the read).
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) on a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_small(&fifo, 1024).unwrap_err();
        assert_eq!(e.to_string(), "is a FIFO, not a regular file");

        let latin1 = dir.path().join("latin1");
        std::fs::write(&latin1, [0xe9]).unwrap();
        assert_eq!(
            read_small_text(&latin1, 16).unwrap_err().to_string(),
            "is not UTF-8 text"
        );
    }
}
