//! PAVRM: the process-aware latent reward model (method.md section 3).
