//! The C ABI (see include/prfl.h).
