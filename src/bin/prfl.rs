//! The `prfl` command-line tool.
fn main() {}
