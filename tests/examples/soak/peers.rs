//! The soak's own peers: the relay in front of RabbitMQ, and a look into the MQTT link's
//! session.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use iotrules_tests::mosquitto::Mosquitto;
use tokio::sync::watch;

use crate::LOCAL;

/// A TCP relay in front of RabbitMQ that can be taken down: its connections are cut and new
/// ones refused until it is up again, which is what the connector sees of a node restart.
pub(crate) struct Relay {
    pub(crate) port: u16,
    pub(crate) cuts: watch::Sender<u64>,
    pub(crate) down: Arc<AtomicBool>,
}

impl Relay {
    pub(crate) async fn start(target: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let (cuts, cut_rx) = watch::channel(0u64);
        let down = Arc::new(AtomicBool::new(false));
        let refusing = down.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if refusing.load(Ordering::SeqCst) {
                    continue;
                }
                let mut cut = cut_rx.clone();
                cut.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut broker) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut broker) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Relay { port, cuts, down }
    }

    pub(crate) fn take_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    pub(crate) fn bring_up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// Connects as the generic link (its client id, a persistent session) and counts what
/// mosquitto still delivers to it within 3 s: messages the link never acknowledged.
pub(crate) async fn session_leftovers(mosquitto: &Mosquitto) -> u64 {
    let mut options = rumqttc::MqttOptions::new("iotrules-m", "127.0.0.1", mosquitto.port);
    options.set_credentials(LOCAL.0, LOCAL.1);
    options.set_clean_session(false);
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => return count,
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_)))) => count += 1,
            Ok(Ok(_)) => {}
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
