//! GitHub reachability, credentials and permissions.

use std::time::Duration;

use super::{DoctorError, Finding};
use crate::config::Config;

pub async fn check(
    _cfg: Option<&Config>,
    _offline: bool,
    _budget: Duration,
) -> Result<Vec<Finding>, DoctorError> {
    Ok(Vec::new())
}
