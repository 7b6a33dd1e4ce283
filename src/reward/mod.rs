//! PAVRM: the process-aware latent reward model (method.md section 3).

pub mod dataset;
pub mod head;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod pool;
pub mod train;
