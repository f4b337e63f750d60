//! Serial consoles and power relays of boards.

use super::user::Resolved;
use super::{DoctorError, Environment, Finding};
use crate::config::Config;

pub fn check(
    _cfg: Option<&Config>,
    _env: &Environment,
    _users: &[Resolved],
) -> Result<Vec<Finding>, DoctorError> {
    Ok(Vec::new())
}
