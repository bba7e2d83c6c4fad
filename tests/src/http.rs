//! The HTTP/1.1 side of the test servers that stand in for a webhook: each request's body
//! read in turn on one keep-alive connection, and answered when the test says so.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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
