//! GitHub emulator, fake actions runner release, and the shared support of the integration tests.

pub mod emulator;
pub mod fake_runner;
pub mod support;
