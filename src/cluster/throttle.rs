//! Task pod events come in bursts: a DAG run starts, or fails, hundreds of pods at once, and
//! each pod changes phase several times. Every event would reconcile its identity and write
//! its status. Throttled, an identity is looked at no more than once per period for its
//! pods: the first event at once, all later ones in the period together when it ends.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use futures::stream::FusedStream;
use futures::{Stream, StreamExt};
use tokio::time::Instant;

struct State<T, K, F> {
    input: futures::stream::Fuse<futures::stream::BoxStream<'static, T>>,
    period: Duration,
    key: F,
    /// When each key was last let through (kept for one period).
    passed: HashMap<K, Instant>,
    /// The latest item of each key held back, and when it is let through.
    held: HashMap<K, (Instant, T)>,
}

/// Lets items through at most once per `period` for each `key`; the items of a key held back
/// are merged into the latest of them, which comes out when the period ends. Ends when
/// `input` ends and nothing is held.
pub(crate) fn per_key<S, T, K, F>(input: S, period: Duration, key: F) -> impl Stream<Item = T> + Send
where
    S: Stream<Item = T> + Send + 'static,
    T: Send + 'static,
    K: Hash + Eq + Clone + Send + 'static,
    F: Fn(&T) -> K + Send + 'static,
{
    let state: State<T, K, F> = State {
        input: input.boxed().fuse(),
        period,
        key,
        passed: HashMap::new(),
        held: HashMap::new(),
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            let now = Instant::now();
            let due = state
                .held
                .iter()
                .find(|(_, (at, _))| *at <= now)
                .map(|(k, _)| k.clone());
            if let Some((key, (_, item))) = due.and_then(|key| state.held.remove_entry(&key)) {
                state.passed.insert(key, now);
                return Some((item, state));
            }
            let next_due = state.held.values().map(|(at, _)| *at).min();
            if state.input.is_terminated() {
                // What is held still comes out; then the stream ends.
                sleep_until(Some(next_due?)).await;
                continue;
            }
            tokio::select! {
                () = sleep_until(next_due) => {}
                item = state.input.next() => {
                    // The end of the input is handled at the top of the loop.
                    let Some(item) = item else { continue };
                    let key = (state.key)(&item);
                    let (now, period) = (Instant::now(), state.period);
                    if let Some((_, held)) = state.held.get_mut(&key) {
                        *held = item;
                        continue;
                    }
                    match state.passed.get(&key) {
                        Some(at) if now < *at + period => {
                            let at = *at + period;
                            state.held.insert(key, (at, item));
                        }
                        _ => {
                            state.passed.retain(|_, at| now < *at + period);
                            state.passed.insert(key, now);
                            return Some((item, state));
                        }
                    }
                }
            }
        }
    })
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items with the (paused, virtual) time they arrive at, in ms; what comes out and when.
    async fn run(arrivals: &[(u64, &'static str)], period_ms: u64) -> Vec<(u64, &'static str)> {
        let start = Instant::now();
        let (sender, receiver) = futures::channel::mpsc::unbounded();
        let arrivals = arrivals.to_vec();
        tokio::spawn(async move {
            for (at, item) in arrivals {
                tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                sender.unbounded_send(item).unwrap();
            }
        });
        per_key(receiver, Duration::from_millis(period_ms), |item: &&str| *item)
            .map(|item| (start.elapsed().as_millis() as u64, item))
            .collect()
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_passes_at_once_and_a_burst_comes_out_once_when_the_period_ends() {
        let burst: Vec<(u64, &str)> = (0..1000).map(|i| (i, "a")).collect();
        assert_eq!(run(&burst, 2000).await, [(0, "a"), (2000, "a")]);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_throttled_apart_and_quiet_keys_pass_at_once() {
        let arrivals = [(0, "a"), (10, "b"), (20, "a"), (500, "b"), (3000, "a"), (6000, "b")];
        assert_eq!(
            run(&arrivals, 1000).await,
            [(0, "a"), (10, "b"), (1000, "a"), (1010, "b"), (3000, "a"), (6000, "b")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn held_items_come_out_even_while_others_keep_arriving() {
        // "b" keeps arriving every 100 ms; "a" must still come out when its period ends.
        let mut arrivals = vec![(0, "a"), (50, "a")];
        arrivals.extend((1..30).map(|i| (i * 100, "b")));
        assert_eq!(
            run(&arrivals, 1000).await,
            [(0, "a"), (100, "b"), (1000, "a"), (1100, "b"), (2100, "b"), (3100, "b")]
        );
    }
}
