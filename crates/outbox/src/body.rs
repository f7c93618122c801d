//! The wire body `{"messages":[...]}` and the content limit, shared by the flusher (which
//! cuts batches by the exact encoded size) and [`HttpMessageSink`](crate::HttpMessageSink).

use kiln_core::ChatMessage;
use serde::Serialize;

/// `{"messages":[` plus `]}`: the bytes a body adds around its comma-separated messages.
pub const BODY_OVERHEAD: usize = r#"{"messages":[]}"#.len();

#[derive(Serialize)]
struct Body<'a> {
    messages: &'a [ChatMessage],
}

/// Encodes a batch exactly as it is sent: `{"messages":[...]}` with each message in
/// kiln-core's camelCase JSON.
///
/// # Panics
/// Never: a `ChatMessage` always serializes.
#[must_use]
pub fn encode_body(messages: &[ChatMessage]) -> Vec<u8> {
    serde_json::to_vec(&Body { messages }).expect("a ChatMessage always serializes")
}

/// The encoded size of one message inside a body (without the separating comma).
#[must_use]
pub fn encoded_len(message: &ChatMessage) -> usize {
    serde_json::to_vec(message).map_or(0, |v| v.len())
}

/// The exact size of [`encode_body`] for messages of the given encoded sizes.
#[must_use]
pub fn body_len(message_lens: impl IntoIterator<Item = usize>) -> usize {
    let mut n = 0usize;
    let mut total = BODY_OVERHEAD;
    for len in message_lens {
        total += len;
        n += 1;
    }
    total + n.saturating_sub(1)
}

/// The marker that ends truncated content; `{omitted}` is the number of bytes cut.
pub const TRUNCATION_MARKER_PREFIX: &str = "\n\n[… message truncated by the outbox: ";

/// Cuts `content` to at most `max_bytes` bytes (on a character boundary), ending with a
/// visible marker that says how many bytes were cut. Content within the limit is returned
/// unchanged.
#[must_use]
pub fn truncate_content(content: &str, max_bytes: usize) -> Option<String> {
    if content.len() <= max_bytes {
        return None;
    }
    // The marker's own length depends on the number it prints; reserve for the widest.
    let widest_marker = marker(content.len()).len();
    let mut keep = max_bytes.saturating_sub(widest_marker);
    while keep > 0 && !content.is_char_boundary(keep) {
        keep -= 1;
    }
    let mut out = String::with_capacity(max_bytes);
    out.push_str(&content[..keep]);
    out.push_str(&marker(content.len() - keep));
    Some(out)
}

fn marker(omitted: usize) -> String {
    format!("{TRUNCATION_MARKER_PREFIX}{omitted} bytes omitted]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::{LifecycleClock, ManualClock, MessageId, Role, SessionId};

    fn msg(content: &str, seq: i64) -> ChatMessage {
        ChatMessage {
            id: MessageId::new(),
            session_id: SessionId::new(),
            role: Role::Assistant,
            content: content.into(),
            tool: None,
            seq: Some(seq),
            created_at: ManualClock::starting_at_epoch().now(),
        }
    }

    #[test]
    fn body_len_is_the_exact_encoded_size() {
        for n in 0..4 {
            let batch: Vec<_> = (0..n).map(|i| msg(&"x".repeat(i * 7), i as i64)).collect();
            let predicted = body_len(batch.iter().map(encoded_len));
            assert_eq!(predicted, encode_body(&batch).len(), "n={n}");
        }
        let body: serde_json::Value = serde_json::from_slice(&encode_body(&[msg("a", 1)])).unwrap();
        assert_eq!(body["messages"][0]["seq"], 1);
        assert!(body["messages"][0].get("sessionId").is_some());
    }

    #[test]
    fn truncation_fits_the_limit_and_says_so() {
        assert_eq!(truncate_content("short", 1000), None);
        let long = "é".repeat(10_000); // 20,000 bytes, two per char
        let cut = truncate_content(&long, 1001).unwrap();
        assert!(cut.len() <= 1001, "{}", cut.len());
        assert!(cut.len() > 900);
        assert!(cut.contains(TRUNCATION_MARKER_PREFIX));
        let omitted: usize = cut
            .rsplit(": ")
            .next()
            .unwrap()
            .trim_end_matches(" bytes omitted]")
            .parse()
            .unwrap();
        let kept = cut.find(TRUNCATION_MARKER_PREFIX).unwrap();
        assert_eq!(kept + omitted, long.len());
    }
}
