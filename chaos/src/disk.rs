//! A small tmpfs for the database, which can be filled to the last byte and freed again.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

pub struct SmallFs {
    dir: tempfile::TempDir,
    filler: PathBuf,
}

impl SmallFs {
    /// Mounts a tmpfs of `mb` MiB on a new temporary directory. Needs root (CAP_SYS_ADMIN).
    pub fn mount(mb: u64) -> anyhow::Result<SmallFs> {
        let dir = tempfile::Builder::new()
            .prefix("tally-chaos-fs-")
            .tempdir()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .context("cannot run mount")?;
        if !status.success() {
            bail!("cannot mount a tmpfs on {} (the disk-full fault needs root); run as root or pass --no-disk-full", dir.path().display());
        }
        let filler = dir.path().join("filler");
        Ok(SmallFs { dir, filler })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a filler file until the filesystem is full.
    pub fn fill(&self) -> anyhow::Result<u64> {
        let mut f = std::fs::File::create(&self.filler)?;
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Fill the tail smaller than a chunk too.
        while let Ok(n) = f.write(&chunk[..512]) {
            if n == 0 {
                break;
            }
            written += n as u64;
        }
        Ok(written)
    }

    /// Gives the space back.
    pub fn free(&self) {
        let _ = std::fs::remove_file(&self.filler);
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        self.free();
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
