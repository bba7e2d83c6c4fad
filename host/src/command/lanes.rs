//! A path's lanes: the commands of one device go out in order on one lane, with retries and
//! backoff; a lane keeps up to a window of commands in flight at once, confirmed in order
//! ([`Window`]).

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::{
    CommandError, CommandPath, Confirmer, Confirming, Failure, PathSettings, RateLimit, Transport,
};
use crate::event::Command;

struct Job {
    command: Command,
    done: Confirmer,
}

/// A path over a [`Transport`]: lanes of ordered delivery with retries.
pub struct Lanes {
    name: String,
    lanes: Vec<mpsc::Sender<Job>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Lanes {
    /// Starts the lanes' tasks on `runtime`.
    pub fn start<T: Transport>(
        name: &str,
        transport: T,
        settings: PathSettings,
        runtime: &tokio::runtime::Handle,
    ) -> Arc<Self> {
        let transport = Arc::new(transport);
        let limit = Arc::new(RateLimit::new(settings.rate_per_s));
        let lanes = (0..settings.lanes.max(1))
            .map(|_| {
                let (sender, receiver) = mpsc::channel(settings.queue.max(1));
                runtime.spawn(lane(
                    name.to_owned(),
                    transport.clone(),
                    limit.clone(),
                    settings,
                    receiver,
                ));
                sender
            })
            .collect();
        Arc::new(Lanes {
            name: name.to_owned(),
            lanes,
            hasher: Default::default(),
        })
    }
}

impl CommandPath for Lanes {
    fn name(&self) -> &str {
        &self.name
    }

    /// Each command goes to its lane's channel in turn, back to back: a lane woken by the
    /// first finds the others there, so the hand-over costs it one wake-up.
    fn enqueue_all(&self, commands: Vec<(Command, Confirmer)>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for (command, done) in commands {
                let lane =
                    (self.hasher.hash_one(&command.device.id) % self.lanes.len() as u64) as usize;
                if let Err(mpsc::error::SendError(job)) =
                    self.lanes[lane].send(Job { command, done }).await
                {
                    let _ = job.done.send(Err(CommandError {
                        path: self.name.clone(),
                        reason: "the path has stopped".into(),
                    }));
                }
            }
        })
    }
}

/// The commands a lane has taken and not yet settled, oldest first: the first
/// [`sent`](Self::sent) are in flight, the rest wait to go out behind them.
///
/// Order per device rests on one rule: an attempt goes out only after the latest attempt of
/// every command before it. So when the first fails and is tried again, every command behind
/// it is sent again too, after it, even one its peer had confirmed meanwhile (go-back-N): a
/// command seen twice is at-least-once delivery as before, a later command overtaken by an
/// earlier one would not be. A command's retries count only its own failures while it is
/// first; one failing behind the first waits until it is first to be judged.
struct Window {
    entries: VecDeque<Entry>,
    /// How many entries from the front are in flight.
    sent: usize,
    /// The connection those went out on (`None` when none are).
    connection: Option<u64>,
    /// Set when an entry behind the first could not be sent: nothing more goes out until the
    /// first is settled (it shared the connection that failed, and will say so).
    held: bool,
    /// The first's failed attempts so far, and the pause before its next.
    failures: u32,
    backoff: Duration,
}

/// A command of a [`Window`].
struct Entry {
    job: Job,
    /// Its attempt in flight, if it is sent.
    attempt: Option<Attempt>,
}

/// An attempt in flight: its confirmation to come, and when it is given up.
struct Attempt {
    confirmed: Confirming,
    deadline: tokio::time::Instant,
}

/// The first pause before an attempt is repeated, doubled after each failure up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between two attempts at a command.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Window {
    fn new() -> Self {
        Window {
            entries: VecDeque::new(),
            sent: 0,
            connection: None,
            held: false,
            failures: 0,
            backoff: FIRST_BACKOFF,
        }
    }

    /// Settles the first command: confirmed, given up, or (after the backoff) sent again
    /// with everything behind it.
    async fn settle_first(&mut self, name: &str, retries: u32, result: Result<(), Failure>) {
        let failure = match result {
            Ok(()) => return self.finish(Ok(())),
            Err(failure) => failure,
        };
        let reason = failure.reason;
        if !failure.retryable {
            return self.finish(Err(CommandError {
                path: name.to_owned(),
                reason: format!("{reason} (not retried: the peer refused the command)"),
            }));
        }
        if self.failures >= retries {
            let attempts = self.failures + 1;
            return self.finish(Err(CommandError {
                path: name.to_owned(),
                reason: format!(
                    "{reason} (after {attempts} attempt{})",
                    if attempts == 1 { "" } else { "s" }
                ),
            }));
        }
        if let Some(first) = self.entries.front() {
            tracing::warn!(
                path = %name,
                device = %first.job.command.device.id,
                command = %first.job.command.name,
                resent_behind = self.sent.saturating_sub(1),
                "Command attempt {} failed, retrying in {} ms: {reason}",
                self.failures + 1,
                self.backoff.as_millis()
            );
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.failures += 1;
        // Go back: everything in flight goes out again, in order, after the first.
        for entry in &mut self.entries {
            entry.attempt = None;
        }
        self.sent = 0;
        self.connection = None;
        self.held = false;
    }

    /// Answers the first command with `result` and moves on to the next.
    fn finish(&mut self, result: Result<(), CommandError>) {
        let Some(first) = self.entries.pop_front() else {
            return;
        };
        let _ = first.job.done.send(result);
        self.sent = self.sent.saturating_sub(1);
        if self.sent == 0 {
            self.connection = None;
        }
        self.held = false;
        self.failures = 0;
        self.backoff = FIRST_BACKOFF;
    }
}

/// What a waiting lane woke up for.
enum Woke {
    /// The first command's attempt was settled.
    First(Result<(), Failure>),
    /// A new command, or `None`: the path has stopped.
    Job(Option<Job>),
}

/// One lane: takes commands in order, keeps up to `settings.window` of them in flight
/// ([`Window`]), and answers each once it is confirmed or given up, in order.
async fn lane<T: Transport>(
    name: String,
    transport: Arc<T>,
    limit: Arc<Option<RateLimit>>,
    settings: PathSettings,
    mut jobs: mpsc::Receiver<Job>,
) {
    let capacity = settings.window.max(1);
    let mut window = Window::new();
    let mut closed = false;
    // Fires no later than the first attempt's deadline. Attempts go out in order, so each
    // later first has a later deadline: the timer is left where it is when the first is
    // confirmed, and moved on when it fires early, rather than set for every attempt.
    let mut expiry = std::pin::pin!(tokio::time::sleep(Duration::from_secs(86_400 * 365)));
    loop {
        while !closed && window.entries.len() < capacity {
            match jobs.try_recv() {
                Ok(job) => window.entries.push_back(Entry { job, attempt: None }),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
            }
        }
        if window.entries.is_empty() {
            match jobs.recv().await {
                Some(job) => window.entries.push_back(Entry { job, attempt: None }),
                None => return,
            }
            continue;
        }
        if window.sent < window.entries.len() && !window.held {
            if let Some(limit) = limit.as_ref() {
                limit.wait().await;
            }
            let first = window.sent == 0;
            let sent = match transport.ready().await {
                Err(failure) => Err(failure),
                Ok(()) => {
                    let deadline = tokio::time::Instant::now() + settings.timeout;
                    let command = &window.entries[window.sent].job.command;
                    let mut send = std::pin::pin!(transport.send(command, window.connection));
                    // Most sends are taken at once (an MQTT link's queue has room): only one
                    // that has to wait is given a timer.
                    let sent = match futures::poll!(send.as_mut()) {
                        std::task::Poll::Ready(sent) => Ok(sent),
                        std::task::Poll::Pending => tokio::time::timeout_at(deadline, send).await,
                    };
                    match sent {
                        Ok(Ok(sent)) => Ok((sent, deadline)),
                        Ok(Err(failure)) => Err(failure),
                        Err(_) => Err(timed_out(settings.timeout)),
                    }
                }
            };
            match sent {
                Ok((sent, deadline)) => {
                    window.connection = Some(sent.connection);
                    window.entries[window.sent].attempt = Some(Attempt {
                        confirmed: sent.confirmed,
                        deadline,
                    });
                    window.sent += 1;
                }
                Err(failure) if first => {
                    window
                        .settle_first(&name, settings.retries, Err(failure))
                        .await;
                }
                // Refused: the command itself is wrong, and nothing behind it was sent yet.
                Err(failure) if !failure.retryable => {
                    if let Some(entry) = window.entries.remove(window.sent) {
                        let _ = entry.job.done.send(Err(CommandError {
                            path: name.clone(),
                            reason: format!(
                                "{} (not retried: the peer refused the command)",
                                failure.reason
                            ),
                        }));
                    }
                }
                Err(_) => window.held = true,
            }
            continue;
        }
        let can_take = !closed && window.entries.len() < capacity;
        let woke = {
            let Some(attempt) = window.entries.front_mut().and_then(|e| e.attempt.as_mut()) else {
                // Unreachable: with nothing in flight the first is sent above.
                window.held = false;
                continue;
            };
            if expiry.deadline() > attempt.deadline {
                expiry.as_mut().reset(attempt.deadline);
            }
            tokio::select! {
                biased;
                settled = &mut attempt.confirmed => Woke::First(settled),
                () = &mut expiry => {
                    if tokio::time::Instant::now() < attempt.deadline {
                        expiry.as_mut().reset(attempt.deadline);
                        continue;
                    }
                    Woke::First(Err(timed_out(settings.timeout)))
                }
                job = jobs.recv(), if can_take => Woke::Job(job),
            }
        };
        match woke {
            Woke::First(result) => window.settle_first(&name, settings.retries, result).await,
            Woke::Job(Some(job)) => window.entries.push_back(Entry { job, attempt: None }),
            Woke::Job(None) => closed = true,
        }
    }
}

/// The failure of an attempt not confirmed within the path's time-out.
fn timed_out(timeout: Duration) -> Failure {
    Failure::retry(format!("no confirmation within {} ms", timeout.as_millis()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::sync::oneshot;

    use super::*;
    use crate::command::Sent;
    use crate::event::{Device, Json};

    /// Fails every attempt the way it was told to, counting the attempts.
    struct Refusing {
        failure: Failure,
        attempts: Arc<AtomicU32>,
    }

    impl Transport for Refusing {
        async fn deliver(&self, _: &Command) -> Result<(), Failure> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            Err(self.failure.clone())
        }
    }

    fn attempts_until_given_up(failure: Failure, retries: u32) -> (u32, CommandError) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let attempts = Arc::new(AtomicU32::new(0));
        let transport = Refusing {
            failure,
            attempts: attempts.clone(),
        };
        let settings = PathSettings {
            lanes: 1,
            queue: 1,
            timeout: Duration::from_secs(5),
            retries,
            rate_per_s: 0.0,
            window: 1,
        };
        let path = Lanes::start("out", transport, settings, runtime.handle());
        let command = Command {
            via: Some("out".into()),
            device: Device::new("d1"),
            name: "switch".into(),
            params: Json::null(),
            reply_to: None,
        };
        let confirmation = path.enqueue(command);
        let error = runtime
            .block_on(confirmation)
            .unwrap()
            .expect_err("every attempt fails");
        (attempts.load(Ordering::SeqCst), error)
    }

    #[test]
    fn a_retryable_failure_is_tried_again_up_to_the_retries() {
        let (attempts, error) = attempts_until_given_up(Failure::retry("answered 503"), 2);
        assert_eq!(attempts, 3);
        assert_eq!(error.reason, "answered 503 (after 3 attempts)");
    }

    #[test]
    fn a_refused_command_is_not_tried_again() {
        let (attempts, error) = attempts_until_given_up(Failure::permanent("answered 400"), 2);
        assert_eq!(attempts, 1);
        assert_eq!(
            error.reason,
            "answered 400 (not retried: the peer refused the command)"
        );
    }

    /// A pipelining transport whose peer the test plays: it records every send (the
    /// connection and the command's name) and holds each confirmation for the test to give.
    #[derive(Clone)]
    struct Scripted {
        script: Arc<std::sync::Mutex<Script>>,
        /// Sends so far, refused ones included, for the test to await.
        tried: Arc<tokio::sync::watch::Sender<usize>>,
    }

    #[derive(Default)]
    struct Script {
        connection: u64,
        sent: Vec<(u64, String)>,
        unconfirmed: Vec<(String, oneshot::Sender<Result<(), Failure>>)>,
    }

    impl Scripted {
        fn new() -> Self {
            Scripted {
                script: Arc::new(std::sync::Mutex::new(Script {
                    connection: 1,
                    ..Script::default()
                })),
                tried: Arc::new(tokio::sync::watch::Sender::new(0)),
            }
        }

        fn sent(&self) -> Vec<(u64, String)> {
            self.script.lock().unwrap().sent.clone()
        }

        /// Answers the unconfirmed attempt of `name` with `result`.
        fn answer(&self, name: &str, result: Result<(), Failure>) {
            let mut script = self.script.lock().unwrap();
            let at = script
                .unconfirmed
                .iter()
                .position(|(n, _)| n == name)
                .expect("an attempt in flight");
            let (_, done) = script.unconfirmed.remove(at);
            let _ = done.send(result);
        }

        /// Waits until `count` sends were tried (a lane that never tries them fails the test
        /// after 30 s rather than hanging it).
        fn await_tries(&self, runtime: &tokio::runtime::Runtime, count: usize) {
            let mut tried = self.tried.subscribe();
            let tries = tried.wait_for(|n| *n >= count);
            runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(30), tries).await })
                .unwrap_or_else(|_| panic!("{count} sends never came: {:?}", self.sent()))
                .expect("the transport is alive");
        }
    }

    impl Transport for Scripted {
        async fn deliver(&self, command: &Command) -> Result<(), Failure> {
            self.send(command, None).await?.confirmed.await
        }

        async fn send(&self, command: &Command, on: Option<u64>) -> Result<Sent, Failure> {
            let result = {
                let mut script = self.script.lock().unwrap();
                let connection = script.connection;
                if on.is_some_and(|on| on != connection) {
                    Err(Failure::retry("that connection was lost"))
                } else {
                    script.sent.push((connection, command.name.clone()));
                    let (done, answer) = oneshot::channel();
                    script.unconfirmed.push((command.name.clone(), done));
                    Ok(Sent {
                        connection,
                        confirmed: Box::pin(async move {
                            answer
                                .await
                                .unwrap_or_else(|_| Err(Failure::retry("the test ended")))
                        }),
                    })
                }
            };
            self.tried.send_modify(|n| *n += 1);
            result
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap()
    }

    /// One lane of `window` over `transport`, retrying twice.
    fn one_lane(
        transport: Scripted,
        window: usize,
        runtime: &tokio::runtime::Runtime,
    ) -> Arc<Lanes> {
        timing_out(transport, window, Duration::from_secs(60), runtime)
    }

    /// One lane of `window` over `transport` whose attempts time out after `timeout`,
    /// retrying twice.
    fn timing_out(
        transport: Scripted,
        window: usize,
        timeout: Duration,
        runtime: &tokio::runtime::Runtime,
    ) -> Arc<Lanes> {
        let settings = PathSettings {
            lanes: 1,
            queue: 16,
            timeout,
            retries: 2,
            rate_per_s: 0.0,
            window,
        };
        Lanes::start("out", transport, settings, runtime.handle())
    }

    fn named(name: &str) -> Command {
        Command {
            via: Some("out".into()),
            device: Device::new("d1"),
            name: name.into(),
            params: Json::null(),
            reply_to: None,
        }
    }

    fn on(connection: u64, names: &[&str]) -> Vec<(u64, String)> {
        names
            .iter()
            .map(|n| (connection, (*n).to_owned()))
            .collect()
    }

    #[test]
    fn a_lane_sends_its_window_before_the_first_confirmation_and_answers_in_order() {
        let runtime = runtime();
        let peer = Scripted::new();
        let path = one_lane(peer.clone(), 3, &runtime);
        let mut confirmations: Vec<_> = ["c0", "c1", "c2", "c3"]
            .into_iter()
            .map(|name| path.enqueue(named(name)))
            .collect();
        peer.await_tries(&runtime, 3);
        assert_eq!(peer.sent(), on(1, &["c0", "c1", "c2"]));
        // The peer confirms the second first: it is answered only after the first, and the
        // window moves on only when the first is confirmed.
        peer.answer("c1", Ok(()));
        assert!(confirmations[1].try_recv().is_err());
        peer.answer("c0", Ok(()));
        peer.await_tries(&runtime, 4);
        assert_eq!(peer.sent(), on(1, &["c0", "c1", "c2", "c3"]));
        peer.answer("c2", Ok(()));
        peer.answer("c3", Ok(()));
        for confirmation in confirmations {
            assert_eq!(runtime.block_on(confirmation).unwrap(), Ok(()));
        }
    }

    #[test]
    fn a_failed_first_attempt_sends_the_whole_window_again_in_order() {
        let runtime = runtime();
        let peer = Scripted::new();
        let path = one_lane(peer.clone(), 3, &runtime);
        let confirmations: Vec<_> = ["c0", "c1", "c2"]
            .into_iter()
            .map(|name| path.enqueue(named(name)))
            .collect();
        peer.await_tries(&runtime, 3);
        // The peer confirmed c1 and c2 but not c0: sending c0 again alone would put it after
        // them, so they go again too, behind it.
        peer.answer("c1", Ok(()));
        peer.answer("c2", Ok(()));
        peer.answer("c0", Err(Failure::retry("no PUBACK")));
        peer.await_tries(&runtime, 6);
        assert_eq!(peer.sent(), on(1, &["c0", "c1", "c2", "c0", "c1", "c2"]));
        for name in ["c0", "c1", "c2"] {
            peer.answer(name, Ok(()));
        }
        for confirmation in confirmations {
            assert_eq!(runtime.block_on(confirmation).unwrap(), Ok(()));
        }
    }

    #[test]
    fn a_lane_sends_nothing_on_a_new_connection_before_what_the_old_one_cut_off() {
        let runtime = runtime();
        let peer = Scripted::new();
        let path = one_lane(peer.clone(), 3, &runtime);
        let mut confirmations: Vec<_> = ["c0", "c1"]
            .into_iter()
            .map(|name| path.enqueue(named(name)))
            .collect();
        peer.await_tries(&runtime, 2);
        // The connection is replaced while c0 and c1 wait on it; c2 must not go out on the
        // new one ahead of them.
        peer.script.lock().unwrap().connection = 2;
        confirmations.push(path.enqueue(named("c2")));
        peer.await_tries(&runtime, 3);
        peer.answer("c0", Err(Failure::retry("the connection was lost")));
        peer.answer("c1", Err(Failure::retry("the connection was lost")));
        peer.await_tries(&runtime, 6);
        let mut expected = on(1, &["c0", "c1"]);
        expected.extend(on(2, &["c0", "c1", "c2"]));
        assert_eq!(peer.sent(), expected);
        for name in ["c0", "c1", "c2"] {
            peer.answer(name, Ok(()));
        }
        for confirmation in confirmations {
            assert_eq!(runtime.block_on(confirmation).unwrap(), Ok(()));
        }
    }

    #[test]
    fn a_command_given_up_in_the_window_leaves_the_others_to_be_confirmed() {
        let runtime = runtime();
        let peer = Scripted::new();
        let path = one_lane(peer.clone(), 2, &runtime);
        let first = path.enqueue(named("c0"));
        let second = path.enqueue(named("c1"));
        for round in 1..=3 {
            peer.await_tries(&runtime, 2 * round);
            peer.answer("c1", Ok(()));
            peer.answer("c0", Err(Failure::retry("no PUBACK")));
        }
        let error = runtime.block_on(first).unwrap().expect_err("given up");
        assert_eq!(error.reason, "no PUBACK (after 3 attempts)");
        // c1 went out after c0's last attempt: it needs no further send.
        assert_eq!(runtime.block_on(second).unwrap(), Ok(()));
        assert_eq!(peer.sent().len(), 6);
    }

    /// Blocks until `seconds` after `start`.
    fn at(start: std::time::Instant, seconds: f64) {
        let until = start + Duration::from_secs_f64(seconds);
        std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()));
    }

    #[test]
    fn an_attempt_is_given_up_at_its_own_deadline_not_at_an_earlier_one_s() {
        let runtime = runtime();
        let peer = Scripted::new();
        let path = timing_out(peer.clone(), 2, Duration::from_secs(4), &runtime);
        let start = std::time::Instant::now();
        let first = path.enqueue(named("a"));
        peer.await_tries(&runtime, 1);
        at(start, 1.0);
        let second = path.enqueue(named("b"));
        peer.await_tries(&runtime, 2);
        // a is confirmed; b, sent a second after it, is still within its time at a's
        // deadline (4 s) and is confirmed before its own (5 s).
        at(start, 1.2);
        peer.answer("a", Ok(()));
        at(start, 4.5);
        peer.answer("b", Ok(()));
        assert_eq!(runtime.block_on(first).unwrap(), Ok(()));
        assert_eq!(runtime.block_on(second).unwrap(), Ok(()));
        assert_eq!(peer.sent(), on(1, &["a", "b"]), "nothing was sent again");
    }

    #[test]
    fn an_attempt_never_confirmed_is_given_up_after_the_timeout_and_tried_again() {
        let runtime = runtime();
        let peer = Scripted::new();
        let timeout = Duration::from_millis(300);
        let path = timing_out(peer.clone(), 2, timeout, &runtime);
        let start = std::time::Instant::now();
        let confirmation = path.enqueue(named("c"));
        let error = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), confirmation).await })
            .expect("given up within 30 s")
            .unwrap()
            .unwrap_err();
        assert_eq!(
            error.reason,
            "no confirmation within 300 ms (after 3 attempts)"
        );
        assert_eq!(peer.sent(), on(1, &["c", "c", "c"]));
        assert!(
            start.elapsed() >= timeout * 3,
            "given up after {:?}, before three timeouts",
            start.elapsed()
        );
    }
}
