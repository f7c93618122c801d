//! Newline-delimited JSON-RPC over any tokio byte streams (a child's stdio, our own stdio).

use agent_client_protocol::Lines;
use futures::{Sink, Stream};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// A [`Lines`] transport reading messages from `reader` and writing them to `writer`.
pub fn lines_transport<R, W>(
    reader: R,
    writer: W,
) -> Lines<
    impl Sink<String, Error = std::io::Error> + Send + 'static,
    impl Stream<Item = std::io::Result<String>> + Send + 'static,
>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let incoming =
        futures::stream::unfold(BufReader::new(reader).lines(), |mut lines| async move {
            loop {
                match lines.next_line().await {
                    // Some agents print banners or logs on stdout: only JSON objects are messages.
                    Ok(Some(line)) if !line.trim_start().starts_with('{') => {
                        if !line.trim().is_empty() {
                            tracing::debug!(%line, "non-JSON line from the peer skipped");
                        }
                    }
                    Ok(Some(line)) => return Some((Ok(line), lines)),
                    Ok(None) => return None,
                    Err(e) => return Some((Err(e), lines)),
                }
            }
        });
    let outgoing = futures::sink::unfold(writer, |mut writer, line: String| async move {
        writer.write_all(line.as_bytes()).await?;
        writer.write_all(b"\n").await?;
        writer.flush().await?;
        Ok::<_, std::io::Error>(writer)
    });
    Lines::new(Box::pin(outgoing), Box::pin(incoming))
}
