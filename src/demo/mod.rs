//! `prfl demo`: the end-to-end run on the built-in procedural world.
