//! The test server that stands in for a webhook ([`Webhook`]), and its HTTP/1.1 side: each
//! request's body read in turn on one keep-alive connection, and answered when the test
//! says so.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::pulsar_broker::sequence;

/// One command a [`Webhook`] received: the device, the command's name, its `seq` param, and
/// when it arrived (in [`sequence`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub device: String,
    pub name: String,
    pub seq: Option<u64>,
    pub at: u64,
}

/// A local HTTP/1.1 server for the `webhook` command path: records every command posted to
/// it, and answers `200 OK` while open; closed, it holds every answer until it is opened, so
/// nothing it got is confirmed.
pub struct Webhook {
    pub address: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    open: watch::Sender<bool>,
}

impl Webhook {
    /// Serves on a free port of 127.0.0.1 from `runtime`, `open` or closed.
    pub fn start(runtime: &tokio::runtime::Handle, open: bool) -> Webhook {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let address = listener.local_addr().expect("address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (open, opened) = watch::channel(open);
        let recorded = seen.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((stream, _)) = listener.accept().await {
                let (recorded, opened) = (recorded.clone(), opened.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, recorded, opened).await;
                });
            }
        });
        Webhook {
            address,
            seen,
            open,
        }
    }

    /// The commands received so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many commands it received so far.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Answers again, what it holds first (`true`), or holds every answer from now on.
    pub fn open(&self, open: bool) {
        let _ = self.open.send(open);
    }
}

async fn serve(
    stream: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    mut open: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut requests = Requests::new(stream);
    while let Some(body) = requests.next().await? {
        let command: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_owned();
        seen.lock().unwrap().push(Seen {
            device: text(&command["device"]["id"]),
            name: text(&command["name"]),
            seq: command["params"]["seq"].as_u64(),
            at: sequence(),
        });
        if open.wait_for(|open| *open).await.is_err() {
            // The webhook is gone: hold the answer for good.
            std::future::pending::<()>().await;
        }
        requests.ok().await?;
    }
    Ok(())
}

/// The requests of one connection.
pub struct Requests {
    stream: BufReader<TcpStream>,
}

impl Requests {
    pub fn new(stream: TcpStream) -> Self {
        Requests {
            stream: BufReader::new(stream),
        }
    }

    /// The next request's body (its `content-length` bytes); `None` once the client closed
    /// the connection.
    pub async fn next(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Ok(None);
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok(Some(body))
    }

    /// Answers the request read last: `200 OK`, no body.
    pub async fn ok(&mut self) -> std::io::Result<()> {
        self.stream
            .get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
    }
}
