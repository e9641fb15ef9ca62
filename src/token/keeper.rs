//! One identity's token, kept by a task of its own: it reads the Secret, decides (with
//! `schedule`) whether a token is due, attempts it, writes the Secret through `ensure_child`,
//! takes an expired token out, and publishes the outcome; then it sleeps until the next due
//! time or until the identity reconcile tells it something (new settings, or just that it
//! looked, in case the Secret changed). Its run of failures lives here, in memory.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tokio::sync::watch;
use tracing::{info, warn};

use super::attempt::{Issued, Progress};
use super::issuer::{IdentityKey, Shared};
use super::report::{self, Attempting, Facts};
use super::schedule::{self, Failures, Held, Situation, Step, Why};
use super::secret::{self, TokenContent};
use super::want::{Version, Want};
use super::{Failure, Reason, TokenReport};
use crate::cluster::apply::{ChildState, ensure_child};
use crate::validate::parse_duration;

/// How long the first attempt for new settings may take before the status says it is under
/// way: a provider that answers at once costs one status write, one that does not is shown
/// as `TokenPending` meanwhile.
const PENDING_AFTER: Duration = Duration::from_secs(2);

/// The shortest sleep between two looks, so that a due time just passed is not a busy loop.
const MIN_WAIT: Duration = Duration::from_millis(200);

/// The last report of an identity's token and the wish it answers.
#[derive(Default)]
pub(super) struct Outcome(Mutex<Option<(Version, TokenReport)>>);

impl Outcome {
    /// The last report, if it answers `version`.
    pub(super) fn for_version(&self, version: &Version) -> Option<TokenReport> {
        let last = self.0.lock().expect("token outcome lock");
        last.as_ref()
            .filter(|(answered, _)| answered == version)
            .map(|(_, report)| report.clone())
    }

    /// Keeps `report`; true when it differs from the last one.
    fn replace(&self, version: Version, report: TokenReport) -> bool {
        let mut last = self.0.lock().expect("token outcome lock");
        let changed = last.as_ref().is_none_or(|(v, r)| *v != version || *r != report);
        *last = Some((version, report));
        changed
    }
}

/// Keeps `report` and wakes the identity's reconcile when it is news.
fn publish(shared: &Shared, outcome: &Outcome, key: &IdentityKey, want: &Want, report: TokenReport) {
    if outcome.replace(want.version(), report) {
        // The receiver is gone only while the controller stops.
        let _ = shared.wake.unbounded_send(key.clone());
    }
}

/// When a token is renewed, from the identity's settings.
struct Timing {
    min_validity: Duration,
    renew_before: Option<Duration>,
    /// Jitter per identity, stable across restarts.
    seed: String,
}

impl Timing {
    fn of(want: &Want) -> Self {
        let settings = &want.settings;
        let uid = want.uid();
        Self {
            min_validity: parse_duration(&settings.min_validity).unwrap_or(Duration::from_secs(300)),
            renew_before: settings.renew_before.as_deref().and_then(parse_duration),
            seed: if uid.is_empty() { want.key() } else { uid },
        }
    }

    fn renewal(&self, held: &Held) -> Timestamp {
        schedule::renewal_time(
            held.issued_at,
            held.expires_at,
            self.renew_before,
            self.min_validity,
            &self.seed,
        )
    }
}

/// What a look ended with.
enum Looked {
    /// Look again at this time (or only when told, for `None`).
    Until(Option<Timestamp>),
    /// The wish changed during an attempt: look again at once.
    Again,
    /// The issuer let the identity go.
    Stop,
}

/// How an attempt ended.
enum Attempted {
    Done(Result<Issued, Failure>),
    Replaced,
    Stop,
}

/// How a write of the Secret ended.
enum Written {
    /// Applied or already so; someone else may have written it meanwhile.
    Done {
        changed_meanwhile: bool,
    },
    Conflict,
    Rejected(String),
}

pub(super) struct Keeper {
    pub shared: Arc<Shared>,
    pub key: IdentityKey,
    pub wants: watch::Receiver<Arc<Want>>,
    pub outcome: Arc<Outcome>,
    pub failures: Option<Failures>,
}

impl Keeper {
    /// Keeps the token until the issuer lets the identity go (drops its sender).
    pub(super) async fn run(mut self) {
        let mut api_errors = 0;
        while self.wants.has_changed().is_ok() {
            let want = self.wants.borrow_and_update().clone();
            let next = match self.look(&want).await {
                Ok(Looked::Stop) => return,
                Ok(Looked::Again) => {
                    api_errors = 0;
                    continue;
                }
                Ok(Looked::Until(at)) => {
                    api_errors = 0;
                    at
                }
                Err(error) => {
                    api_errors += 1;
                    let delay = schedule::retry_delay(api_errors, self.shared.retry, &want.key());
                    warn!(identity = %want.key(), secret = %want.secret_name, %error, retry_in_ms = delay.as_millis() as u64, "the token Secret could not be read or written");
                    Some(later(delay))
                }
            };
            if !self.wait(next).await {
                return;
            }
        }
    }

    /// Sleeps until `at` or until the reconcile says something; false once let go.
    async fn wait(&mut self, at: Option<Timestamp>) -> bool {
        let due = async {
            match at {
                Some(at) => tokio::time::sleep(until(at).max(MIN_WAIT)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            told = self.wants.changed() => told.is_ok(),
            () = due => true,
        }
    }

    async fn look(&mut self, want: &Want) -> Result<Looked, kube::Error> {
        let secrets: Api<Secret> = Api::namespaced(self.shared.client.clone(), &want.namespace());
        let existing = secrets.get_opt(&want.secret_name).await?;
        if existing
            .as_ref()
            .is_some_and(|found| !secret::is_managed(found, &want.identity))
        {
            self.publish(want, TokenReport::conflict(&want.secret_name));
            return Ok(Looked::Until(None));
        }
        if !want.exposed_to.is_empty() {
            return self.withhold(want, existing.as_ref()).await;
        }
        let timing = Timing::of(want);
        let mut held = existing.as_ref().and_then(secret::held);
        let mut token_type = existing.as_ref().map(secret::token_type);
        let step = schedule::next_step(&Situation {
            held: held.as_ref(),
            renewal: held.as_ref().map(|h| timing.renewal(h)),
            inputs: &want.inputs,
            failures: self.failures.as_ref(),
            now: Timestamp::now(),
            policy: self.shared.retry,
            jitter_seed: &timing.seed,
        });
        let mut look_again = false;
        if let Step::Refresh(why) = step {
            let (attempted, told_meanwhile) = self.attempt(want, &timing, held.as_ref()).await;
            look_again |= told_meanwhile;
            match attempted {
                Attempted::Stop => return Ok(Looked::Stop),
                Attempted::Replaced => return Ok(Looked::Again),
                Attempted::Done(Err(failure)) => self.failed(want, why, failure),
                Attempted::Done(Ok(issued)) => {
                    let lifetime = jiff::SignedDuration::try_from(issued.granted.lifetime).unwrap_or_default();
                    let fresh = Held {
                        issued_at: issued.requested_at,
                        expires_at: issued.requested_at.checked_add(lifetime).unwrap_or(Timestamp::MAX),
                        inputs: want.inputs.clone(),
                        has_token: true,
                    };
                    let content = TokenContent {
                        access_token: Some(issued.granted.access_token.secret()),
                        token_type: &issued.granted.token_type,
                        issued_at: fresh.issued_at,
                        expires_at: fresh.expires_at,
                        inputs: &want.inputs,
                        removed_at: None,
                    };
                    match self.write(want, &content).await? {
                        Written::Done { changed_meanwhile } => {
                            look_again |= changed_meanwhile;
                            self.issued(want, why, &fresh);
                            held = Some(fresh);
                            token_type = Some(issued.granted.token_type);
                        }
                        Written::Conflict => {
                            self.publish(want, TokenReport::conflict(&want.secret_name));
                            return Ok(Looked::Until(None));
                        }
                        Written::Rejected(message) => self.failed(want, why, Failure::new(Reason::ApiError, message)),
                    }
                }
            }
        }
        // An expired token is taken out of the Secret rather than handed to pods.
        let now = Timestamp::now();
        if let Some(expired) = held.as_ref().filter(|h| h.has_token && now >= h.expires_at) {
            let blank = TokenContent {
                access_token: None,
                token_type: token_type.as_deref().unwrap_or("Bearer"),
                issued_at: expired.issued_at,
                expires_at: expired.expires_at,
                inputs: &expired.inputs,
                removed_at: Some(now),
            };
            if let Written::Done { changed_meanwhile } = self.write(want, &blank).await? {
                look_again |= changed_meanwhile;
                info!(identity = %want.key(), secret = %want.secret_name, expired_at = %secret::rfc3339(expired.expires_at), "removed the expired token from its Secret");
                held = held.map(|h| Held { has_token: false, ..h });
            }
        }
        let valid_until = held.as_ref().filter(|h| h.has_token).map(|h| h.expires_at.as_second());
        self.shared
            .metrics
            .token_expiry(&self.key.namespace, &self.key.name, valid_until);
        let failures = self.failures.as_ref().filter(|f| f.inputs == want.inputs);
        let facts = Facts {
            secret_name: &want.secret_name,
            held: held.as_ref(),
            renewal: held.as_ref().map(|h| timing.renewal(h)),
            retry: failures.map(|f| {
                let valid_until = held.as_ref().filter(|h| h.has_token).map(|h| h.expires_at);
                schedule::retry_at(f, self.shared.retry, &timing.seed, valid_until)
            }),
            failures,
            min_validity: timing.min_validity,
            now,
        };
        let next = if look_again { Some(now) } else { facts.next_look() };
        self.publish(want, report::describe(&facts));
        Ok(Looked::Until(next))
    }

    /// Keeps the token out of a Secret that pods other than the identity's own name: takes
    /// out one that is there, writes none, and says why. The reconcile tells the keeper when
    /// those pods are gone; the token is then requested as for a Secret without one.
    async fn withhold(&mut self, want: &Want, existing: Option<&Secret>) -> Result<Looked, kube::Error> {
        let pods = want.exposed_to.join(", ");
        if let Some(held) = existing.and_then(secret::held).filter(|h| h.has_token) {
            let token_type = existing.map(secret::token_type).unwrap_or_default();
            let blank = TokenContent {
                access_token: None,
                token_type: &token_type,
                issued_at: held.issued_at,
                expires_at: held.expires_at,
                inputs: &held.inputs,
                removed_at: Some(Timestamp::now()),
            };
            match self.write(want, &blank).await? {
                Written::Done { .. } => {
                    warn!(identity = %want.key(), secret = %want.secret_name, %pods, "took the token out of its Secret: pods that are not the identity's own name it");
                }
                Written::Conflict => {
                    self.publish(want, TokenReport::conflict(&want.secret_name));
                    return Ok(Looked::Until(None));
                }
                Written::Rejected(message) => {
                    warn!(identity = %want.key(), secret = %want.secret_name, %pods, %message, "the token could not be taken out of its Secret");
                    self.publish(want, TokenReport::exposed(&want.secret_name, &want.exposed_to));
                    return Ok(Looked::Until(Some(later(self.shared.retry.first))));
                }
            }
        }
        self.shared
            .metrics
            .token_expiry(&self.key.namespace, &self.key.name, None);
        self.publish(want, TokenReport::exposed(&want.secret_name, &want.exposed_to));
        Ok(Looked::Until(None))
    }

    /// One attempt, given up for new settings. The first attempt for new settings is reported
    /// as pending once it has taken `PENDING_AFTER`. Also says whether the reconcile looked
    /// meanwhile (the Secret may have changed).
    async fn attempt(&mut self, want: &Want, timing: &Timing, held: Option<&Held>) -> (Attempted, bool) {
        let shared = self.shared.clone();
        let progress = Progress::new();
        let since = Timestamp::now();
        let attempt = shared.providers.attempt(want, &progress);
        tokio::pin!(attempt);
        let pending_after = tokio::time::sleep(PENDING_AFTER);
        tokio::pin!(pending_after);
        let (mut reported_pending, mut told) = (false, false);
        enum Event {
            Ended(Result<Issued, Failure>),
            TakesLong,
            Told(bool),
        }
        loop {
            let event = tokio::select! {
                outcome = &mut attempt => Event::Ended(outcome),
                () = &mut pending_after, if !reported_pending => Event::TakesLong,
                open = self.wants.changed() => Event::Told(open.is_ok()),
            };
            match event {
                Event::Ended(outcome) => return (Attempted::Done(outcome), told),
                Event::TakesLong => {
                    reported_pending = true;
                    if self.outcome.for_version(&want.version()).is_none() {
                        let facts = Facts {
                            secret_name: &want.secret_name,
                            held,
                            renewal: None,
                            retry: None,
                            failures: None,
                            min_validity: timing.min_validity,
                            now: Timestamp::now(),
                        };
                        let attempting = Attempting {
                            issuer: &want.settings.issuer_url,
                            since,
                            waiting_for: progress.stage().waiting_for(),
                            deadline: shared.providers.deadline(),
                        };
                        self.publish(want, report::pending(&facts, &attempting));
                    }
                }
                Event::Told(false) => return (Attempted::Stop, told),
                Event::Told(true) if self.wants.borrow().version() != want.version() => {
                    return (Attempted::Replaced, told);
                }
                Event::Told(true) => told = true,
            }
        }
    }

    /// Writes the Secret as a child of the identity: ownership-checked, by server-side apply,
    /// its versions known to the Secret watch so that winflow's own write is no news.
    async fn write(&self, want: &Want, content: &TokenContent<'_>) -> Result<Written, kube::Error> {
        let desired = secret::token_secret(&want.identity, &want.secret_name, content);
        let secrets: Api<Secret> = Api::namespaced(self.shared.client.clone(), &want.namespace());
        let versions = &self.shared.versions;
        let written = ensure_child(&secrets, &desired, Some(versions)).await?;
        Ok(match written.state {
            ChildState::UpToDate | ChildState::Applied => Written::Done {
                changed_meanwhile: versions.take_changed_meanwhile(&desired),
            },
            ChildState::Conflict(_) => Written::Conflict,
            ChildState::Rejected(message) | ChildState::PrerequisiteMissing(message) => Written::Rejected(message),
        })
    }

    fn issued(&mut self, want: &Want, why: Why, fresh: &Held) {
        self.failures = None;
        self.shared.metrics.token_refreshed("success");
        info!(
            identity = %want.key(),
            secret = %want.secret_name,
            expires_at = %secret::rfc3339(fresh.expires_at),
            lifetime_seconds = fresh.expires_at.duration_since(fresh.issued_at).as_secs(),
            why = why.describe(),
            "token refreshed"
        );
    }

    fn failed(&mut self, want: &Want, why: Why, failure: Failure) {
        self.shared.metrics.token_refreshed(failure.reason.as_str());
        let run = Failures::after(self.failures.take(), &failure, &want.inputs, Timestamp::now());
        warn!(
            identity = %want.key(),
            reason = failure.reason.as_str(),
            attempt = run.count,
            why = why.describe(),
            "token refresh failed: {}",
            failure.message
        );
        self.failures = Some(run);
    }

    fn publish(&self, want: &Want, report: TokenReport) {
        publish(&self.shared, &self.outcome, &self.key, want, report);
    }
}

fn until(at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default()
}

fn later(delay: Duration) -> Timestamp {
    let delay = jiff::SignedDuration::try_from(delay).unwrap_or(jiff::SignedDuration::MAX);
    Timestamp::now().checked_add(delay).unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::ConditionState;

    fn report(reason: Reason) -> TokenReport {
        TokenReport {
            condition: ConditionState::new("TokenReady", true, reason, "m"),
            status: None,
        }
    }

    fn version(inputs: &str) -> Version {
        let identity = crate::fixtures::key_vault_with_token();
        let settings = identity.spec.token.clone().unwrap();
        Want {
            secret_name: secret::secret_name(&settings, "payroll-export"),
            inputs: inputs.to_owned(),
            credentials: Err(Failure::new(Reason::SecretMissing, String::new())),
            identity,
            settings,
            exposed_to: Vec::new(),
        }
        .version()
    }

    #[test]
    fn an_outcome_answers_only_its_own_wish_and_says_when_it_is_news() {
        let outcome = Outcome::default();
        assert_eq!(outcome.for_version(&version("v1")), None);
        assert!(outcome.replace(version("v1"), report(Reason::TokenIssued)));
        assert_eq!(outcome.for_version(&version("v1")), Some(report(Reason::TokenIssued)));
        assert_eq!(
            outcome.for_version(&version("v2")),
            None,
            "new settings, no outcome yet"
        );
        assert!(
            !outcome.replace(version("v1"), report(Reason::TokenIssued)),
            "the same again"
        );
        assert!(outcome.replace(version("v1"), report(Reason::Backoff)));
        assert!(
            outcome.replace(version("v2"), report(Reason::Backoff)),
            "an answer to new settings"
        );
    }
}
