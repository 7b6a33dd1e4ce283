//! Interop with the paper's reference implementation (HY-Video-PRFL) and with the PyTorch
//! ecosystem (issue 18), one concern per module:
//! - [`pickle`]: a restricted, non-executing reader of the pickles inside torch state dicts;
//! - [`torch_file`]: torch's zip state-dict files (`torch.save(model.state_dict())`), read and
//!   written;
//! - [`reference_dataset`]: the reference's datasets (a `.list` of meta-JSON files naming `.npy`
//!   arrays) opened as a [`crate::reward::dataset::Dataset`];
//! - [`reference_reward`]: the reference's three reward-model files imported to and exported from
//!   a prfl reward checkpoint.

pub mod pickle;
pub mod reference_dataset;
pub mod reference_reward;
pub mod torch_file;

#[cfg(test)]
pub(crate) mod test_dir {
    use std::path::{Path, PathBuf};

    /// A fresh directory under the system temp dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(name: &str) -> TempDir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "prfl-interop-{name}-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
