//! The stdio transport, checked line by line before rmcp sees it.
//!
//! rmcp drops a line that is not JSON without a word (so a client waits
//! for an answer that never comes), answers a request without its `params`
//! with "method not found", and leaves the `id` out of its "invalid
//! request" errors. JSON-RPC 2.0 asks for `-32700` (id `null`) for a line
//! that does not parse, `-32600` for a message that is not a request,
//! notification or response (with its id, else `null`), and `-32602` for
//! parameters a method needs that are missing. So every line from stdin
//! goes through [`classify`] first: a line it answers never reaches rmcp;
//! the others are passed on unchanged.
//!
//! Bounds: a line is at most [`MAX_LINE`] bytes (the rest of a longer line
//! is read and dropped, and the line answered with `-32600`); at most
//! [`QUEUED`] answers wait for a client that does not read its stdout,
//! after which stdin is no longer read until it does.

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream},
    sync::mpsc,
    task::JoinHandle,
};

/// Longest line read from the client, bytes.
pub const MAX_LINE: usize = 4 << 20;

/// Answers of this layer waiting to be written.
pub const QUEUED: usize = 64;

/// Bytes buffered between this layer and rmcp in each direction.
const PIPE: usize = 64 << 10;

/// Requests whose `params` MCP requires (the others may omit them).
const NEEDS_PARAMS: &[&str] = &[
    "initialize",
    "tools/call",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
];

/// A JSON-RPC error answer, as one line.
fn error(id: &Value, code: i64, message: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}).to_string()
}

/// The answer this layer gives to `line` itself, or `None` to pass the
/// line on to rmcp.
#[must_use]
pub fn classify(line: &[u8]) -> Option<String> {
    let Ok(v) = serde_json::from_slice::<Value>(line) else {
        return Some(error(
            &Value::Null,
            -32700,
            "Parse error: the line is not JSON; send one JSON-RPC 2.0 message per line",
        ));
    };
    let Value::Object(m) = &v else {
        return Some(error(
            &Value::Null,
            -32600,
            "Invalid Request: send one JSON-RPC 2.0 object per line (MCP has no batches)",
        ));
    };
    let id = match m.get("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id),
        Some(_) => {
            return Some(error(
                &Value::Null,
                -32600,
                "Invalid Request: the id must be a string or a number",
            ));
        }
    };
    let reply_id = id.cloned().unwrap_or(Value::Null);
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(error(
            &reply_id,
            -32600,
            "Invalid Request: add \"jsonrpc\": \"2.0\" to the message",
        ));
    }
    match m.get("method") {
        Some(Value::String(method)) => {
            let params = m.get("params");
            if params.is_some_and(|p| !p.is_object() && !p.is_array()) {
                return id.map(|id| error(id, -32602, "Invalid params: params must be an object"));
            }
            if params.is_none() && NEEDS_PARAMS.contains(&method.as_str()) {
                // A notification gets no answer, whatever is wrong with it.
                return id.map(|id| {
                    error(
                        id,
                        -32602,
                        &format!(
                            "Invalid params: {} needs params; see the MCP specification for its fields",
                            crate::text::sanitize(method, 64)
                        ),
                    )
                });
            }
            if method == "tools/call" && params.and_then(|p| p.get("name")).is_none_or(|n| !n.is_string()) {
                return id.map(|id| {
                    error(
                        id,
                        -32602,
                        "Invalid params: tools/call needs params.name, the tool to call (see tools/list)",
                    )
                });
            }
            None
        }
        Some(_) => Some(error(
            &reply_id,
            -32600,
            "Invalid Request: the method must be a string",
        )),
        None if id.is_some() && (m.contains_key("result") || m.contains_key("error")) => None,
        None => Some(error(
            &reply_id,
            -32600,
            "Invalid Request: a message needs a method (or, as a response, an id and a result or error)",
        )),
    }
}

/// One line read with a bound.
enum Line {
    /// A whole line (without its newline) is in the buffer.
    Text,
    /// The line was longer than [`MAX_LINE`]; it was read and dropped.
    TooLong,
    /// The client closed its side.
    Eof,
}

async fn read_line(r: &mut (impl AsyncBufRead + Unpin), buf: &mut Vec<u8>) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (too_long, buf.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::Eof,
                (false, false) => Line::Text,
            });
        }
        let newline = available.iter().position(|b| *b == b'\n');
        let take = newline.map_or(available.len(), |i| i + 1);
        if !too_long {
            if buf.len() + take > MAX_LINE + 1 {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&available[..take]);
            }
        }
        r.consume(take);
        if newline.is_some() {
            if too_long {
                return Ok(Line::TooLong);
            }
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Line::Text);
        }
    }
}

/// The client's stdin, checked: answers what it must, passes the rest to
/// `to_rmcp`, and closes it at the end of the input.
async fn pump_input(input: impl AsyncRead + Unpin, mut to_rmcp: DuplexStream, answers: mpsc::Sender<String>) {
    let mut input = BufReader::new(input);
    let mut buf = Vec::new();
    loop {
        let reply = match read_line(&mut input, &mut buf).await {
            Err(_) | Ok(Line::Eof) => break,
            Ok(Line::TooLong) => Some(error(
                &Value::Null,
                -32600,
                &format!(
                    "Invalid Request: the line is longer than {} MiB; send smaller messages",
                    MAX_LINE >> 20
                ),
            )),
            Ok(Line::Text) if buf.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Line::Text) => classify(&buf),
        };
        if let Some(reply) = reply {
            if answers.send(reply).await.is_err() {
                break;
            }
        } else {
            buf.push(b'\n');
            if to_rmcp.write_all(&buf).await.is_err() {
                break;
            }
        }
    }
    let _ = to_rmcp.shutdown().await;
}

/// rmcp's output and this layer's answers to `output`, whole lines each;
/// ends when rmcp closes its side.
async fn pump_output(
    from_rmcp: DuplexStream,
    mut answers: mpsc::Receiver<String>,
    mut output: impl AsyncWrite + Unpin,
) {
    let mut lines = BufReader::new(from_rmcp).lines();
    loop {
        let line = tokio::select! {
            biased;
            line = lines.next_line() => match line {
                Ok(Some(line)) => line,
                _ => break,
            },
            Some(answer) = answers.recv() => answer,
        };
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        if output.write_all(&bytes).await.is_err() || output.flush().await.is_err() {
            return;
        }
    }
    while let Ok(answer) = answers.try_recv() {
        let mut bytes = answer.into_bytes();
        bytes.push(b'\n');
        if output.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = output.flush().await;
}

/// Puts the checking layer between `input`/`output` (the process's stdio)
/// and rmcp: returns the pair rmcp reads and writes, and the task that
/// ends once rmcp's last answer is written (await it before exiting).
pub fn guard(
    input: impl AsyncRead + Unpin + Send + 'static,
    output: impl AsyncWrite + Unpin + Send + 'static,
) -> ((DuplexStream, DuplexStream), JoinHandle<()>) {
    let (to_rmcp, rmcp_reads) = tokio::io::duplex(PIPE);
    let (rmcp_writes, from_rmcp) = tokio::io::duplex(PIPE);
    let (answers_tx, answers_rx) = mpsc::channel(QUEUED);
    tokio::spawn(pump_input(input, to_rmcp, answers_tx));
    let done = tokio::spawn(pump_output(from_rmcp, answers_rx, output));
    ((rmcp_reads, rmcp_writes), done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> Option<(Value, i64)> {
        let v: Value = serde_json::from_str(&classify(line.as_bytes())?).ok()?;
        Some((v["id"].clone(), v["error"]["code"].as_i64()?))
    }

    #[test]
    fn each_malformed_message_gets_its_json_rpc_error() {
        assert_eq!(code("this is not json"), Some((Value::Null, -32700)));
        assert_eq!(code("[1, 2"), Some((Value::Null, -32700)));
        assert_eq!(code("[]"), Some((Value::Null, -32600)));
        assert_eq!(code(r#"{"id": 7}"#), Some((json!(7), -32600)));
        assert_eq!(code(r#"{"jsonrpc": "2.0", "id": 7}"#), Some((json!(7), -32600)));
        assert_eq!(
            code(r#"{"jsonrpc": "2.0", "id": "a", "method": "tools/call"}"#),
            Some((json!("a"), -32602))
        );
        assert_eq!(
            code(r#"{"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": 5}"#),
            Some((json!(3), -32602))
        );
        assert_eq!(
            code(r#"{"jsonrpc": "2.0", "method": "tools/call"}"#),
            None,
            "a notification"
        );
        assert_eq!(
            code(r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}"#),
            None
        );
        assert_eq!(code(r#"{"jsonrpc": "2.0", "id": 1, "result": {}}"#), None);
    }
}
