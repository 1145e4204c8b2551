//! A minimal QMP client: one JSON object per line over the VM's control
//! socket. Asynchronous events QEMU interleaves are skipped; each command
//! waits for its own `return` or `error`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket never came up or the connection broke.
    #[error("qmp connection")]
    Io(#[from] std::io::Error),
    /// QEMU answered with an error.
    #[error("{class}: {desc}")]
    Command {
        /// QMP error class.
        class: String,
        /// Its description.
        desc: String,
    },
    /// QEMU sent something that is not QMP.
    #[error("unexpected qmp message: {0}")]
    Protocol(String),
}

/// An open QMP session.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects (retrying until `deadline` while QEMU creates the socket)
    /// and negotiates capabilities.
    pub async fn connect(socket: &Path, deadline: Instant) -> Result<Self, Error> {
        let stream = loop {
            match UnixStream::connect(socket).await {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(Error::Io(e)),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let (r, w) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(Error::Protocol(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Value, Error> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            if line.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(&line)
                .map_err(|_| Error::Protocol(line.trim().to_owned()));
        }
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, Error> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        self.writer.write_all(&bytes).await?;
        loop {
            let reply = self.read_message().await?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(Error::Command {
                    class: err["class"].as_str().unwrap_or("Unknown").to_owned(),
                    desc: err["desc"].as_str().unwrap_or_default().to_owned(),
                });
            }
            return Err(Error::Protocol(reply.to_string()));
        }
    }

    /// The run state (`running`, `paused`, `inmigrate`, `postmigrate`, …).
    pub async fn status(&mut self) -> Result<String, Error> {
        let v = self.execute("query-status", None).await?;
        Ok(v["status"].as_str().unwrap_or_default().to_owned())
    }
}
