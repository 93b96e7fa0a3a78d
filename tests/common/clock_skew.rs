//! A wall clock a test can step, for a process it starts: `tests/faults/clock_skew.c`, built
//! here with the system C compiler (the one Rust links with) and preloaded into the process
//! (`LD_PRELOAD`). The offset lives in a file the process maps, so a step takes effect at once.

use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;

use tempfile::TempDir;

pub struct ClockSkew {
    dir: TempDir,
    file: std::fs::File,
}

impl ClockSkew {
    /// Builds the preload library; the clock starts true (offset 0).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/faults/clock_skew.c");
        let status = std::process::Command::new(std::env::var("CC").unwrap_or("cc".to_string()))
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(dir.path().join("libclockskew.so"))
            .arg(&source)
            .status()
            .expect("a C compiler (cc) builds tests/faults/clock_skew.c");
        assert!(status.success(), "cc failed on {}", source.display());
        let path = dir.path().join("offset");
        std::fs::write(&path, 0i64.to_le_bytes()).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        Self { dir, file }
    }

    /// The environment that makes a process follow this clock.
    pub fn env(&self) -> Vec<(String, String)> {
        let path = |name: &str| self.dir.path().join(name).to_str().unwrap().to_string();
        vec![
            ("LD_PRELOAD".to_string(), path("libclockskew.so")),
            ("DDS_CLOCK_SKEW_FILE".to_string(), path("offset")),
        ]
    }

    /// Sets the clock to true time plus `ms` (negative: behind), in one write of 8 bytes.
    pub fn set(&self, ms: i64) {
        self.file.write_all_at(&ms.to_le_bytes(), 0).unwrap();
    }
}
