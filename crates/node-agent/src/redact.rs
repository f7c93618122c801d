//! Redaction of known secret values (the project's git token, the node's and the workspace's
//! callback tokens) from what an agent says, before it is stored or streamed.
//!
//! An agent can come across a secret (it can read the node's process table, or a user pastes
//! one into a prompt) and echo it. Every message the capture records goes through
//! [`Redactor::redact`]; streamed text goes through a [`StreamRedactor`], which holds back the
//! end of the text while it could still be the start of a secret, so a secret split across
//! chunks never goes out in pieces either.
//!
//! ```
//! use kiln_node::redact::Redactor;
//!
//! let redactor = Redactor::new(["tok-123456"]);
//! assert_eq!(redactor.redact("my token is tok-123456."), "my token is [redacted].");
//! let mut stream = redactor.stream();
//! assert_eq!(stream.push("is tok-1"), "is ");
//! assert_eq!(stream.push("23456!"), "[redacted]!");
//! ```

use std::sync::Arc;

use kiln_core::secret::REDACTED;

/// A set of secret values to replace with `[redacted]`. Cheap to clone.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so where two secrets start at the same place the longer one wins.
    secrets: Arc<[String]>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// Redacts `secrets` (empty values are ignored).
    #[must_use]
    pub fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Self {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .map(|s| s.as_ref().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self {
            secrets: secrets.into(),
        }
    }

    /// Whether there is nothing to redact.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The complete occurrences in `text`, left to right, not overlapping (at each place the
    /// longest secret that starts there).
    fn matches(&self, text: &str) -> Vec<(usize, usize)> {
        let mut found = Vec::new();
        let mut at = 0;
        while at < text.len() {
            let rest = &text[at..];
            match self.secrets.iter().find(|s| rest.starts_with(s.as_str())) {
                Some(secret) => {
                    found.push((at, at + secret.len()));
                    at += secret.len();
                }
                None => at += rest.chars().next().map_or(1, char::len_utf8),
            }
        }
        found
    }

    fn replace(text: &str, matches: &[(usize, usize)]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut from = 0;
        for &(start, end) in matches {
            out.push_str(&text[from..start]);
            out.push_str(REDACTED);
            from = end;
        }
        out.push_str(&text[from..]);
        out
    }

    /// `text` with every secret replaced by `[redacted]`.
    #[must_use]
    pub fn redact(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_owned();
        }
        Self::replace(text, &self.matches(text))
    }

    /// A redactor for text that arrives in pieces.
    #[must_use]
    pub fn stream(&self) -> StreamRedactor {
        StreamRedactor {
            redactor: self.clone(),
            pending: String::new(),
        }
    }

    /// How much of `text` can go out now: the end of it is held back while it could be the
    /// start of a secret (or is inside one).
    fn settled_len(&self, text: &str) -> usize {
        let longest = self.secrets.first().map_or(0, String::len);
        let mut cut = text.len();
        let earliest = text.len().saturating_sub(longest);
        for (i, _) in text.char_indices().filter(|(i, _)| *i >= earliest) {
            let tail = &text[i..];
            if self
                .secrets
                .iter()
                .any(|s| s.len() > tail.len() && s.starts_with(tail))
            {
                cut = i;
                break;
            }
        }
        for (start, end) in self.matches(text) {
            if start < cut && cut < end {
                cut = start;
            }
        }
        cut
    }
}

/// Redacts text that arrives in chunks (see [`Redactor::stream`]): what [`push`](Self::push)
/// returns, concatenated, is a prefix of the redacted whole, and never contains a secret or a
/// piece of one at its end.
#[derive(Debug)]
pub struct StreamRedactor {
    redactor: Redactor,
    pending: String,
}

impl StreamRedactor {
    /// Adds `chunk`; returns the redacted text that can go out now (possibly empty).
    pub fn push(&mut self, chunk: &str) -> String {
        if self.redactor.is_empty() {
            return chunk.to_owned();
        }
        self.pending.push_str(chunk);
        let cut = self.redactor.settled_len(&self.pending);
        let settled: String = self.pending.drain(..cut).collect();
        self.redactor.redact(&settled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_is_replaced_and_the_longest_secret_wins() {
        let r = Redactor::new(["abc", "abcdef", ""]);
        assert_eq!(r.redact("xabcdefyabcz"), "x[redacted]y[redacted]z");
        assert_eq!(Redactor::default().redact("abc"), "abc");
        assert_eq!(r.redact("ünïcödé abc"), "ünïcödé [redacted]");
    }

    /// Whatever the chunking, the streamed text is a prefix of the redacted whole and never
    /// holds a secret or the beginning of one at its end.
    #[test]
    fn streamed_pieces_never_leak_and_add_up_to_a_prefix() {
        let secrets = ["tok-SECRET-9", "CRET-9xx", "é€ok"];
        let r = Redactor::new(secrets);
        let text = "a tok-SECRET-9 b tok-SEC c CRET-9xx tok-SECRET-9xx é€ok é€ tok-SECRET-";
        let whole = r.redact(text);
        let chars: Vec<char> = text.chars().collect();
        for step in 1..=7 {
            let mut stream = r.stream();
            let mut out = String::new();
            for piece in chars.chunks(step) {
                let piece: String = piece.iter().collect();
                out.push_str(&stream.push(&piece));
                assert!(whole.starts_with(&out), "step {step}: {out:?} vs {whole:?}");
                for s in secrets {
                    assert!(!out.contains(s), "step {step}: {out:?}");
                    for n in 1..s.len() {
                        if s.is_char_boundary(n) && n >= 3 {
                            assert!(!out.ends_with(&s[..n]), "step {step}: {out:?}");
                        }
                    }
                }
            }
        }
    }
}
