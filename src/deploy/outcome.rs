//! What a rollout came to: which instances changed, the first failure and its typed
//! cause, what could not be put back, which regions stayed behind their replica. The
//! user's message is made from these only at the edge (`finish`).

use crate::health::Failure;
use crate::report::Outcome;

use super::plan::Step;

/// Why a step of a rollout failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Cause {
    /// The instance did not become healthy.
    #[error("{}", health(.failure, .version))]
    Health { failure: Failure, version: String },
    /// The host could not do what it was asked (`step`: what it was).
    #[error("{step}: {message}")]
    Host { step: String, message: String },
    /// Another operation took the lock over (this one's lease looked stale).
    #[error(
        "the deploy lock was taken over by another operation (this one looked stale); stopped before changing more instances"
    )]
    LockLost,
    /// A host could not get the release.
    #[error("{reason}")]
    Shipping { host: String, reason: String },
    /// The canary answered too many requests with errors.
    #[error(
        "the canary answered {errors} of {answered} requests with an error, more than `canary_max_errors` ({max_errors}%) allows; it was removed, and the old instances served throughout"
    )]
    Canary { answered: u64, errors: u64, max_errors: u8 },
    #[error("internal error: {0}")]
    Internal(String),
}

fn health(failure: &Failure, version: &str) -> String {
    match failure {
        Failure::Exited { how } => {
            let how = how.as_ref().map(|h| format!("; {h}")).unwrap_or_default();
            format!("the process exited before it became healthy (version {version}{how})")
        }
        other => other.to_string(),
    }
}

/// A failed step, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    pub region: String,
    /// The host and instance, when the failure was one instance's.
    pub instance: Option<(String, String)>,
    pub version: String,
    pub cause: Cause,
}

impl StepFailure {
    /// A failure of the region as a whole (no one instance's).
    pub fn region(region: &str, version: &str, cause: Cause) -> Self {
        Self { region: region.to_string(), instance: None, version: version.to_string(), cause }
    }

    /// What the failure was, in one sentence.
    pub fn describe(&self) -> String {
        match &self.instance {
            None => format!("in region {}: {}", self.region, self.cause),
            Some((host, id)) => {
                format!("instance {id} in {} on `{host}` failed on {}: {}", self.region, self.version, self.cause)
            }
        }
    }

    /// What to do next, when it is more than reading the instance's log.
    pub fn hint(&self) -> Option<String> {
        match &self.cause {
            Cause::LockLost => {
                Some("`ferry lock status` shows who holds it now; `ferry status` shows where things stand".into())
            }
            Cause::Shipping { reason, .. } if reason.contains("different contents") => Some(
                "a version names one release forever: build the changed tree as a new version (`--version ...`)".into(),
            ),
            Cause::Shipping { .. } => Some(
                "fix the host (disk space: `df -h`, permissions) and run the deploy again: it ships only what is missing"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// A region left on its old version because its replica did not catch up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaBehind {
    pub region: String,
    pub replica: String,
    pub lag_bytes: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Default)]
pub struct Summary {
    /// Instances now healthy on the target version (changed by this rollout), with
    /// their ports.
    pub changed: Vec<(Step, u16)>,
    pub failure: Option<StepFailure>,
    /// Instances that could not be put back, and why.
    pub unrecovered: Vec<String>,
    pub reverted: usize,
    /// Regions not updated because their replica was behind.
    pub behind: Vec<ReplicaBehind>,
}

impl Summary {
    pub fn outcome(&self) -> Outcome {
        match (&self.failure, self.unrecovered.is_empty()) {
            (None, _) if self.behind.is_empty() => Outcome::Succeeded,
            (Some(_), true) if self.changed.is_empty() => Outcome::Reverted,
            _ => Outcome::Failed,
        }
    }

    pub fn merge_into(self, total: &mut Summary) {
        total.changed.extend(self.changed);
        total.unrecovered.extend(self.unrecovered);
        total.reverted += self.reverted;
        total.behind.extend(self.behind);
        if total.failure.is_none() {
            total.failure = self.failure;
        }
    }
}
