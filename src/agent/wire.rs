//! How a request travels to an agent and its answer back, over the agent's Unix socket
//! or an SSH channel (through `ferry agent call`): one JSON line with the [`Call`],
//! then `input` raw bytes when the request streams a file; back, zero or more
//! [`Answer::Line`]s (a command's output as it comes) and one final answer. The same
//! types are compiled into both ends; an answer that does not parse is an error naming
//! the host, never skipped.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use crate::host::{Reply, Request};

/// Bumped when a request or reply changes shape: an agent speaking another protocol
/// is replaced (when older) or refused (when newer).
pub const PROTOCOL: u32 = 1;

/// The first line of every connection.
#[derive(Debug, Serialize, Deserialize)]
pub struct Call {
    pub protocol: u32,
    /// The app directory the request is about (`~/` allowed); empty for agent requests.
    pub app_dir: String,
    pub request: Request,
    /// Bytes of input following this line.
    #[serde(default)]
    pub input: u64,
    /// The caller's `PATH`: what commands started for this call find programs with (as
    /// they would in the caller's own shell).
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// A line of output, as it comes (a release_command's).
    Line(String),
    Done(Reply),
    /// The request could not be done: what was being done, and why.
    Failed {
        step: String,
        message: String,
    },
}

/// Writes one value as a JSON line.
pub async fn send<W: AsyncWrite + Unpin, T: Serialize>(out: &mut W, value: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line).await?;
    out.flush().await
}

/// Reads one JSON line; `None` at the end of the stream.
pub async fn receive<R: AsyncBufRead + Unpin, T: for<'de> Deserialize<'de>>(
    input: &mut R,
) -> std::io::Result<Option<T>> {
    let mut line = String::new();
    if input.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    serde_json::from_str(&line).map(Some).map_err(|e| {
        let shown: String = line.trim().chars().take(200).collect();
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a message of ferry's: `{shown}`: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_and_answers_round_trip() {
        let call = Call {
            protocol: PROTOCOL,
            app_dir: "~/ferry/hello".into(),
            request: Request::LogTail { id: "abc".into(), lines: 5, skip_checks: true },
            input: 0,
            path: None,
        };
        let mut buf = Vec::new();
        send(&mut buf, &call).await.unwrap();
        send(&mut buf, &Answer::Line("one".into())).await.unwrap();
        send(&mut buf, &Answer::Done(Reply::Lines(vec!["x".into()]))).await.unwrap();
        let mut reader = tokio::io::BufReader::new(&buf[..]);
        let back: Call = receive(&mut reader).await.unwrap().unwrap();
        assert_eq!(back.app_dir, "~/ferry/hello");
        assert!(matches!(back.request, Request::LogTail { lines: 5, .. }));
        assert!(matches!(receive(&mut reader).await.unwrap(), Some(Answer::Line(l)) if l == "one"));
        assert!(matches!(receive(&mut reader).await.unwrap(), Some(Answer::Done(Reply::Lines(_)))));
        assert!(receive::<_, Answer>(&mut reader).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_line_that_is_no_answer_is_an_error() {
        let mut reader = tokio::io::BufReader::new(&b"Segmentation fault\n"[..]);
        let err = receive::<_, Answer>(&mut reader).await.unwrap_err();
        assert!(err.to_string().contains("Segmentation fault"), "{err}");
    }
}
