//! A TCP proxy between an MQTT client (the link under test) and a broker that can hold back
//! the broker's PUBACKs, and that counts the client's QoS 1 publishes still waiting for
//! theirs: how a test sees how many commands a link has in flight at once, without timing
//! anything.
//!
//! Every other packet passes as it is, in both directions. When the broker closes its side
//! (a restart), the proxy closes the client's, as the broker would have; PUBACKs held for a
//! connection that ended are dropped with it, as a lost connection drops them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy (on the runtime that started it; it stops when dropped).
pub struct Proxy {
    /// The port the client connects to, on 127.0.0.1.
    pub port: u16,
    hold: watch::Sender<bool>,
    tally: Arc<Mutex<Tally>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the proxy has seen of the client's QoS 1 publishes.
#[derive(Default)]
struct Tally {
    /// Publishes whose PUBACK has not reached the client, by connection and packet id: their
    /// payloads.
    unacked: HashMap<(u64, u16), Vec<u8>>,
    /// The most of them at any one time.
    most: usize,
    /// Connections accepted so far.
    connections: u64,
}

impl Proxy {
    /// Listens on a free port and forwards each connection to the broker on `broker_port`,
    /// holding PUBACKs while [`hold`](Self::hold) says so (from the start if `holding`).
    pub async fn start(broker_port: u16, holding: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let hold = watch::Sender::new(holding);
        let tally = Arc::new(Mutex::new(Tally::default()));
        let task = tokio::spawn({
            let hold = hold.clone();
            let tally = tally.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(broker) = TcpStream::connect(("127.0.0.1", broker_port)).await else {
                        continue;
                    };
                    let connection = {
                        let mut tally = tally.lock().unwrap();
                        tally.connections += 1;
                        tally.connections
                    };
                    tokio::spawn(forward(
                        connection,
                        client,
                        broker,
                        hold.subscribe(),
                        tally.clone(),
                    ));
                }
            }
        });
        Proxy {
            port,
            hold,
            tally,
            task,
        }
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Holds the broker's PUBACKs (`true`), or lets them and those held through (`false`).
    pub fn hold(&self, holding: bool) {
        self.hold.send_replace(holding);
    }

    /// The most QoS 1 publishes of the client waiting for their PUBACK at one time.
    pub fn most_unacked(&self) -> usize {
        self.tally.lock().unwrap().most
    }

    /// The payloads of the client's publishes waiting for their PUBACK now.
    pub fn unacked(&self) -> Vec<Vec<u8>> {
        self.tally
            .lock()
            .unwrap()
            .unacked
            .values()
            .cloned()
            .collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.tally.lock().unwrap().connections
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards one connection until either side closes it, then closes both.
async fn forward(
    connection: u64,
    client: TcpStream,
    broker: TcpStream,
    hold: watch::Receiver<bool>,
    tally: Arc<Mutex<Tally>>,
) {
    let (client_read, client_write) = client.into_split();
    let (broker_read, broker_write) = broker.into_split();
    tokio::select! {
        () = upstream(connection, client_read, broker_write, tally.clone()) => {}
        () = downstream(connection, broker_read, client_write, hold, tally.clone()) => {}
    }
    tally
        .lock()
        .unwrap()
        .unacked
        .retain(|(c, _), _| *c != connection);
}

/// Client → broker: passes every byte, noting each QoS 1 publish.
async fn upstream(
    connection: u64,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    tally: Arc<Mutex<Tally>>,
) {
    let mut frames = Frames::default();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        frames.buffer.extend_from_slice(&chunk[..n]);
        while let Some(frame) = frames.next() {
            if let Some((pkid, payload)) = qos1_publish(&frame) {
                let mut tally = tally.lock().unwrap();
                tally.unacked.insert((connection, pkid), payload);
                tally.most = tally.most.max(tally.unacked.len());
            }
        }
        if to.write_all(&chunk[..n]).await.is_err() {
            return;
        }
    }
}

/// Broker → client: passes every packet, holding PUBACKs back while told to.
async fn downstream(
    connection: u64,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hold: watch::Receiver<bool>,
    tally: Arc<Mutex<Tally>>,
) {
    let mut frames = Frames::default();
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let holding = *hold.borrow_and_update();
        let mut out = Vec::new();
        if !holding {
            for frame in held.drain(..) {
                passed_puback(connection, &frame, &tally);
                out.extend_from_slice(&frame);
            }
        }
        if !out.is_empty() && to.write_all(&out).await.is_err() {
            return;
        }
        tokio::select! {
            changed = hold.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            read = from.read(&mut chunk) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                frames.buffer.extend_from_slice(&chunk[..n]);
                let mut out = Vec::new();
                while let Some(frame) = frames.next() {
                    if frame[0] >> 4 == PUBACK {
                        if *hold.borrow() {
                            held.push(frame);
                            continue;
                        }
                        passed_puback(connection, &frame, &tally);
                    }
                    out.extend_from_slice(&frame);
                }
                if to.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    }
}

const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;

/// Notes that the client got the PUBACK `frame`.
fn passed_puback(connection: u64, frame: &[u8], tally: &Mutex<Tally>) {
    let body = &frame[frame.len() - 2..];
    let pkid = u16::from_be_bytes([body[0], body[1]]);
    tally.lock().unwrap().unacked.remove(&(connection, pkid));
}

/// The packet id and payload of a QoS 1 PUBLISH frame.
fn qos1_publish(frame: &[u8]) -> Option<(u16, Vec<u8>)> {
    if frame[0] >> 4 != PUBLISH || (frame[0] >> 1) & 3 != 1 {
        return None;
    }
    let (_, header) = remaining_length(frame)?;
    let body = &frame[header..];
    let topic = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let pkid = u16::from_be_bytes([body[2 + topic], body[3 + topic]]);
    Some((pkid, body[4 + topic..].to_vec()))
}

/// The remaining length of the frame starting `bytes`, and the fixed header's length; `None`
/// until enough bytes are there.
fn remaining_length(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut length = 0usize;
    for (i, byte) in bytes.iter().skip(1).take(4).enumerate() {
        length |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((length, i + 2));
        }
    }
    None
}

/// Bytes read and not yet cut into whole packets.
#[derive(Default)]
struct Frames {
    buffer: Vec<u8>,
}

impl Frames {
    /// The next whole packet, if it is all there.
    fn next(&mut self) -> Option<Vec<u8>> {
        let (length, header) = remaining_length(&self.buffer)?;
        if self.buffer.len() < header + length {
            return None;
        }
        Some(self.buffer.drain(..header + length).collect())
    }
}
