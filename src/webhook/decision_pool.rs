//! Where the pure decisions run: on blocking threads, a bounded number at once, each under a
//! deadline shorter than the API server's webhook timeout. A review that is costly to decide
//! (a pod of thousands of containers) then delays only itself: the async workers keep serving
//! every other review, and past the deadline the review is denied (fail closed) while the API
//! server is still waiting for an answer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// How long a decision may take, waiting for its turn included. The webhooks' timeout is
/// 10 s; a denial must reach the API server before it gives up.
pub const DECISION_DEADLINE: Duration = Duration::from_secs(5);

/// Decisions that run at once: a flood of costly reviews holds at most this many blocking
/// threads (and cores), however many connections send them.
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, |cores| cores.get().max(2))
}

/// The deadline passed (waiting for a turn, or deciding).
#[derive(Debug, PartialEq, Eq)]
pub struct TimedOut;

#[derive(Clone)]
pub struct DecisionPool {
    turns: Arc<Semaphore>,
    deadline: Duration,
}

impl Default for DecisionPool {
    fn default() -> Self {
        Self::new(default_concurrency(), DECISION_DEADLINE)
    }
}

impl DecisionPool {
    pub fn new(concurrency: usize, deadline: Duration) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(concurrency)),
            deadline,
        }
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Runs `decide` on a blocking thread once a turn is free, and waits for it until the
    /// deadline. A decision still running then keeps its turn until it ends, so decisions
    /// that never end cannot take more than the pool's threads. A decision that panics
    /// panics here, as it would have on the async worker.
    pub async fn run<T: Send + 'static>(&self, decide: impl FnOnce() -> T + Send + 'static) -> Result<T, TimedOut> {
        let turns = Arc::clone(&self.turns);
        let answered = tokio::time::timeout(self.deadline, async move {
            let turn = turns.acquire_owned().await.expect("the semaphore is never closed");
            tokio::task::spawn_blocking(move || {
                let answer = decide();
                drop(turn);
                answer
            })
            .await
        })
        .await;
        match answered {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(failed)) => std::panic::resume_unwind(failed.into_panic()),
            Err(_elapsed) => Err(TimedOut),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn a_quick_decision_is_answered() {
        let pool = DecisionPool::new(1, Duration::from_secs(1));
        assert_eq!(pool.run(|| 42).await, Ok(42));
    }

    #[tokio::test]
    async fn a_slow_decision_times_out_at_the_deadline() {
        let pool = DecisionPool::new(2, Duration::from_millis(100));
        let started = Instant::now();
        let answer = pool.run(|| std::thread::sleep(Duration::from_millis(600))).await;
        assert_eq!(answer, Err(TimedOut));
        let took = started.elapsed();
        assert!(took < Duration::from_millis(400), "answered after {took:?}");
    }

    #[tokio::test]
    async fn a_panicking_decision_panics_and_gives_its_turn_back() {
        let pool = DecisionPool::new(1, Duration::from_secs(1));
        let panicking = pool.clone();
        let joined = tokio::spawn(async move { panicking.run(|| -> u8 { panic!("decision bug") }).await }).await;
        assert!(joined.unwrap_err().is_panic());
        assert_eq!(pool.run(|| 1).await, Ok(1));
    }

    #[tokio::test]
    async fn decisions_past_their_deadline_keep_their_turn_and_others_wait_within_theirs() {
        let pool = DecisionPool::new(1, Duration::from_millis(100));
        let stuck = pool.run(|| std::thread::sleep(Duration::from_millis(800))).await;
        assert_eq!(stuck, Err(TimedOut));
        // The stuck decision still holds the only turn: the next one waits, within its own
        // deadline, and is not answered either.
        let started = Instant::now();
        assert_eq!(pool.run(|| 1).await, Err(TimedOut));
        assert!(started.elapsed() < Duration::from_millis(400));
        // Once the stuck decision ends, the turn is free again.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(pool.run(|| 2).await, Ok(2));
    }
}
