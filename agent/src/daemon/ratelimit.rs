//! GitHub's rate limits as the daemon waits them out: no call before the time GitHub gave
//! (`retry-after`, or `x-ratelimit-reset` once `x-ratelimit-remaining` is 0), instead of
//! retrying on the backoff schedule into a limit that cannot have reset yet (GitHub may ban
//! integrations that keep calling while limited).

use std::time::Duration;

use crate::github::GithubError;
use crate::runner::RunnerError;

/// How long GitHub asked for no calls, if `err` is a rate limit.
pub fn pause_github(err: &GithubError) -> Option<Duration> {
    let at = err.retry_at()?;
    let left = at - time::OffsetDateTime::now_utc();
    Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
}

/// [`pause_github`] for a lifecycle error.
pub fn pause(err: &RunnerError) -> Option<Duration> {
    match err {
        RunnerError::Github { source, .. } => pause_github(source),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_pauses_until_its_reset_and_other_errors_do_not() {
        let limited = GithubError::RateLimited {
            url: "https://api.github.com/repos/o/r/actions/runners".to_owned(),
            status: 403,
            message: "API rate limit exceeded for user ID 1.".to_owned(),
            reset_at: time::OffsetDateTime::now_utc() + time::Duration::seconds(120),
        };
        let pause = pause_github(&limited).unwrap();
        assert!(pause > Duration::from_secs(110) && pause <= Duration::from_secs(120));
        let past = GithubError::RateLimited {
            url: "https://api.github.com/repos/o/r/actions/runners".to_owned(),
            status: 429,
            message: String::new(),
            reset_at: time::OffsetDateTime::now_utc() - time::Duration::seconds(5),
        };
        assert_eq!(pause_github(&past), Some(Duration::ZERO));
    }
}
