//! Unit tests of the loader.
