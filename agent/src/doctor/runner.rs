//! Runner directories, registrations and units.

use super::{Environment, Finding};
use crate::config::Config;

pub fn check(_cfg: Option<&Config>, _env: &Environment) -> Vec<Finding> {
    Vec::new()
}
