//! QEMU binaries and `binfmt_misc` handlers.

use super::user::Resolved;
use super::{DoctorError, Environment, Finding};
use crate::config::Config;

pub fn check(
    _cfg: Option<&Config>,
    _env: &Environment,
    _users: &[Resolved],
    _deep: bool,
) -> Result<Vec<Finding>, DoctorError> {
    Ok(Vec::new())
}
