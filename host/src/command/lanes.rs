//! A path's lanes: the commands of one device go out in order on one lane, each attempt
//! confirmed before the next, with retries and backoff.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{CommandError, CommandPath, Confirmation, Failure, PathSettings, RateLimit, Transport};
use crate::event::Command;

struct Job {
    command: Command,
    done: oneshot::Sender<Result<(), CommandError>>,
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

    fn enqueue(&self, command: Command) -> Confirmation {
        let lane = (self.hasher.hash_one(&command.device.id) % self.lanes.len() as u64) as usize;
        let (done, confirmation) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) =
            self.lanes[lane].blocking_send(Job { command, done })
        {
            let _ = job.done.send(Err(CommandError {
                path: self.name.clone(),
                reason: "the path has stopped".into(),
            }));
        }
        confirmation
    }
}

async fn lane<T: Transport>(
    name: String,
    transport: Arc<T>,
    limit: Arc<Option<RateLimit>>,
    settings: PathSettings,
    mut jobs: mpsc::Receiver<Job>,
) {
    while let Some(job) = jobs.recv().await {
        let mut attempt = 0;
        let mut backoff = Duration::from_millis(50);
        let result = loop {
            if let Some(limit) = limit.as_ref() {
                limit.wait().await;
            }
            let failure = match transport.ready().await {
                Err(failure) => failure,
                Ok(()) => {
                    match tokio::time::timeout(settings.timeout, transport.deliver(&job.command))
                        .await
                    {
                        Ok(Ok(())) => break Ok(()),
                        Ok(Err(failure)) => failure,
                        Err(_) => Failure::retry(format!(
                            "no confirmation within {} ms",
                            settings.timeout.as_millis()
                        )),
                    }
                }
            };
            let reason = failure.reason;
            if !failure.retryable {
                break Err(CommandError {
                    path: name.clone(),
                    reason: format!("{reason} (not retried: the peer refused the command)"),
                });
            }
            if attempt >= settings.retries {
                let attempts = attempt + 1;
                break Err(CommandError {
                    path: name.clone(),
                    reason: format!(
                        "{reason} (after {attempts} attempt{})",
                        if attempts == 1 { "" } else { "s" }
                    ),
                });
            }
            tracing::warn!(
                path = %name,
                device = %job.command.device.id,
                command = %job.command.name,
                "Command attempt {} failed, retrying in {} ms: {reason}",
                attempt + 1,
                backoff.as_millis()
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            attempt += 1;
        };
        let _ = job.done.send(result);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
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
}
